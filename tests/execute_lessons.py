"""Runs lessons top to bottom with the reference solutions swapped in, and times each one.

    python -m tests.execute_lessons                    # all nine
    python -m tests.execute_lessons 5 7                # some of them
    python -m tests.execute_lessons --out build/lessons   # keep the executed notebooks

Every exercise cell is replaced by an import of the same functions from
`solutions/`; every other cell runs as written, check cells included (with
COURSE_STRICT_CHECKS=1 a failing check stops the lesson). This proves each
lesson works for a learner who solved every exercise, and that it fits its
time budget on a laptop CPU. Exits non-zero when a lesson fails or runs over.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests import grading

LESSON_BUDGET_S = 180.0  # each lesson, on a 2-core CPU
TOTAL_BUDGET_S = 900.0  # the nine together


def swapped_notebook(number: int) -> nbformat.NotebookNode:
    """Lesson `number` (from its `.py`) with each exercise cell importing the reference."""
    py, _ = grading.lesson_paths(number)
    notebook = jupytext.read(py)
    modules = grading.graded_test_module(number).SOLUTIONS
    for cell in notebook.cells:
        if cell.cell_type == "code" and "exercise" in cell.metadata.get("tags", []):
            names = grading.defined_functions(cell.source)
            reference = grading.load_solutions(names, modules)
            imports = [f"from {getattr(reference, n).__module__} import {n}" for n in names]
            cell.source = "\n".join(["# the reference solution, swapped in", *imports])
    return notebook


def execute(number: int, out: pathlib.Path | None) -> float:
    """Runs one lesson in a fresh kernel (cwd: lessons/); returns its wall time in seconds."""
    notebook = swapped_notebook(number)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(grading.LESSONS_DIR)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            py, _ = grading.lesson_paths(number)
            nbformat.write(notebook, out / f"{py.stem}.ipynb")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", type=int, default=list(range(1, 10)))
    parser.add_argument("--out", type=pathlib.Path, help="write the executed notebooks here")
    args = parser.parse_args(argv)
    os.environ[grading.STRICT_ENV] = "1"  # the kernels inherit it
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    rows, failed = [], False
    for number in args.lessons:
        name = grading.lesson_paths(number)[0].stem
        print(f"running {name} ...", flush=True)
        try:
            seconds = execute(number, args.out)
            status = "ok" if seconds <= LESSON_BUDGET_S else f"over {LESSON_BUDGET_S:.0f} s"
        except CellExecutionError as err:
            seconds, status = float("nan"), "FAILED"
            print(str(err)[-3000:], file=sys.stderr)
        failed |= status != "ok"
        rows.append((name, seconds, status))
        print(f"  {name}: {seconds:.1f} s  {status}", flush=True)
    total = sum(s for _, s, _ in rows if s == s)
    print("\nlesson                 seconds  status")
    for name, seconds, status in rows:
        print(f"{name:<22} {seconds:7.1f}  {status}")
    over = total > TOTAL_BUDGET_S and len(args.lessons) == 9
    print(f"{'total':<22} {total:7.1f}  {'over the 15 min budget' if over else 'ok'}")
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
