"""Runs lessons top to bottom with the reference solutions swapped in, and times each one.

    python -m tests.execute_lessons                    # all nine
    python -m tests.execute_lessons 5 7                # some of them
    python -m tests.execute_lessons --out build/lessons   # keep the executed notebooks

Every exercise cell is replaced by an import of the same functions from
`solutions/`; every other cell runs as written, check cells included (with
COURSE_STRICT_CHECKS=1 a failing check stops the lesson). This proves each
lesson works for a learner who solved every exercise, and that it fits its
time budget on a laptop CPU. Exits non-zero when a lesson fails or runs over.

The notebooks are run by nbval, as its users run theirs: `pytest --nbval-lax`
on the swapped notebooks, one pytest item per cell, a fresh kernel per
notebook. nbval validates but keeps nothing, so `KeepOutputs` writes each
cell's outputs back into its notebook for the website (`make docs`), and
times each notebook: the lessons run once, not once to check and once more
for their outputs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import jupytext
import nbformat
import pytest

from tests import grading

LESSON_BUDGET_S = 180.0  # each lesson, on a 2-core CPU
TOTAL_BUDGET_S = 900.0  # the nine together
CELL_TIMEOUT_S = 600


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


class KeepOutputs:
    """A pytest plugin for an nbval run: each cell's outputs go back into its notebook, which
    is written out after its last cell; a failed cell skips the rest of its notebook; and the
    wall time of each notebook, kernel start included, is kept in `seconds`.

    It reads three things of nbval's cell items: `cell` (the notebook's cell), `test_outputs`
    (the list nbval fills from the kernel's messages) and the notebook's `get_kernel_message`,
    wrapped to apply `clear_output`, which nbval ignores (lesson 7 redraws its loss curve).
    """

    def __init__(self):
        self.seconds: dict[pathlib.Path, float] = {}
        self.failed: set[pathlib.Path] = set()
        self._started: dict[pathlib.Path, float] = {}

    @staticmethod
    def _is_cell(item) -> bool:
        return hasattr(item, "cell") and hasattr(item, "test_outputs")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if not self._is_cell(item):
            return
        path = item.parent.path
        self._started.setdefault(path, time.perf_counter())
        if path in self.failed:
            pytest.skip("an earlier cell of this lesson failed")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        if not self._is_cell(item):
            yield
            return
        notebook = item.parent
        receive = notebook.get_kernel_message
        clear_before_next = False

        def get_kernel_message(*args, **kwargs):
            nonlocal clear_before_next
            while True:
                message = receive(*args, **kwargs)
                kind = message["msg_type"]
                if kind == "clear_output":
                    if message["content"].get("wait"):  # clear when the next output arrives
                        clear_before_next = True
                    else:
                        item.test_outputs.clear()
                    continue
                if clear_before_next and kind in ("stream", "display_data", "execute_result"):
                    item.test_outputs.clear()
                    clear_before_next = False
                return message

        notebook.get_kernel_message = get_kernel_message
        try:
            yield
        finally:
            del notebook.get_kernel_message  # the method again

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if call.when != "call" or not self._is_cell(item):
            return
        item.cell.execution_count = item.cell_num + 1
        item.cell.outputs = list(item.test_outputs or [])
        for output in item.cell.outputs:
            if output.output_type == "execute_result":  # nbval runs cells outside the history
                output.execution_count = item.cell.execution_count
        if outcome.get_result().failed:
            self.failed.add(item.parent.path)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item, nextitem):
        if not self._is_cell(item) or (nextitem is not None and nextitem.parent is item.parent):
            return
        path = item.parent.path
        self.seconds[path] = time.perf_counter() - self._started[path]
        nbformat.write(item.parent.nb, path)


def run_notebooks(paths: list[pathlib.Path]) -> tuple[int, KeepOutputs]:
    """`pytest --nbval-lax` on `paths`, keeping their outputs; (pytest's exit code, plugin)."""
    keep = KeepOutputs()
    args = [
        "--nbval-lax",
        "--nbval-current-env",  # this Python's kernel, whatever kernels are installed
        f"--nbval-cell-timeout={CELL_TIMEOUT_S}",
        *("-p", "no:cacheprovider", "-q"),
        # pytest itself was imported before its plugins (jupyter's anyio): nothing to rewrite
        *("-W", "ignore::pytest.PytestAssertRewriteWarning"),
        *map(str, paths),
    ]
    return pytest.main(args, plugins=[keep]), keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", type=int, default=list(range(1, 10)))
    parser.add_argument("--out", type=pathlib.Path, help="write the executed notebooks here")
    args = parser.parse_args(argv)
    # The kernels inherit these: strict checks, inline figures, and this checkout's code first
    # (an editable install elsewhere must not answer `import solutions`).
    os.environ[grading.STRICT_ENV] = "1"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(grading.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or pathlib.Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for number in args.lessons:
            path = out / f"{grading.lesson_paths(number)[0].stem}.ipynb"
            nbformat.write(swapped_notebook(number), path)
            paths.append(path.resolve())
        exit_code, keep = run_notebooks(paths)
    rows = []
    for path in paths:
        seconds = keep.seconds.get(path, float("nan"))
        if path in keep.failed or path not in keep.seconds:
            status = "FAILED"
        else:
            status = "ok" if seconds <= LESSON_BUDGET_S else f"over {LESSON_BUDGET_S:.0f} s"
        rows.append((path.stem, seconds, status))
    total = sum(s for _, s, _ in rows if s == s)
    print("\nlesson                 seconds  status")
    for name, seconds, status in rows:
        print(f"{name:<22} {seconds:7.1f}  {status}")
    over = total > TOTAL_BUDGET_S and len(args.lessons) == 9
    print(f"{'total':<22} {total:7.1f}  {'over the 15 min budget' if over else 'ok'}")
    failed = exit_code != 0 or any(status != "ok" for _, _, status in rows)
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
