"""The grader proves itself: every lesson has real exercises whose graded tests pass on the
reference (`pytest --impl solutions` runs them) and fail on the untouched stubs (checked here)."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess

import jupytext
import pytest

from tests import grading

LESSONS = range(1, 10)
STUB = re.compile(r'raise NotImplementedError\("Exercise (\d+)\.(\d+)"\)')


def _untouched(number: int) -> bool:
    """True when the lesson's `.py` equals the committed one (a learner's edits are theirs)."""
    py, _ = grading.lesson_paths(number)
    result = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", str(py)], cwd=grading.ROOT, capture_output=True
    )
    return result.returncode in (0, 128)  # 128: not a git checkout, nothing to compare with


def _exercise_cells(number: int) -> list[tuple[str, str | None]]:
    """(exercise cell source, the check cell right after it or None)."""
    py, _ = grading.lesson_paths(number)
    cells = grading.read_cells(py)
    found = []
    for i, (tags, source) in enumerate(cells):
        if "exercise" in tags:
            after = cells[i + 1] if i + 1 < len(cells) else (set(), "")
            found.append((source, after[1] if "check" in after[0] else None))
    return found


@pytest.mark.parametrize("number", LESSONS)
def test_lesson_has_three_graded_exercises_each_checked_in_place(number):
    cells = _exercise_cells(number)
    assert len(cells) >= 3, f"lesson {number} has {len(cells)} exercise cells; it needs three"
    for k, (source, check_cell) in enumerate(cells, start=1):
        ids = {tuple(map(int, m)) for m in STUB.findall(source)}
        assert ids == {(number, k)}, (
            f"lesson {number}, exercise cell {k}: its functions must raise "
            f'NotImplementedError("Exercise {number}.{k}"), found {sorted(ids)}'
        )
        assert check_cell is not None and check_cell.strip() == f'check("ex{number}_{k}")', (
            f"lesson {number}: exercise {k} must be followed by a check cell "
            f'`check("ex{number}_{k}")`, found {check_cell!r}'
        )
        assert grading.exercise_tests(f"ex{number}_{k}"), f"no graded tests for ex{number}_{k}"


@pytest.mark.parametrize("number", LESSONS)
def test_stub_signatures_equal_the_reference(number):
    stubs = grading.load_lesson(number, grading.lesson_paths(number)[0])
    names = grading.exercise_names(number)
    reference = grading.load_solutions(names, grading.graded_test_module(number).SOLUTIONS)
    for name in names:
        want = inspect.signature(getattr(reference, name))
        got = inspect.signature(getattr(stubs, name))
        shape = [(p.name, p.kind, p.default) for p in want.parameters.values()]
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == shape, (
            f"lesson {number}: {name}{got} differs from the reference {name}{want}"
        )


@pytest.mark.parametrize("number", LESSONS)
def test_every_graded_test_fails_on_the_untouched_lesson(number):
    if not _untouched(number):
        pytest.skip(f"lesson {number} holds your edits; this check runs on the committed lesson")
    stubs = grading.load_lesson(number, grading.lesson_paths(number)[0])
    module = grading.graded_test_module(number)
    tests = [fn for name, fn in vars(module).items() if name.startswith("test_ex")]
    assert tests, f"tests/lessons/test_lesson{number:02d}.py has no graded tests"
    passed_on_stub = []
    for fn in tests:
        try:
            grading.run_test(fn, stubs)
        except NotImplementedError:
            continue
        except Exception as err:  # any other outcome means the test did not reach the stub
            passed_on_stub.append(f"{fn.__name__} ({type(err).__name__}: {err})")
        else:
            passed_on_stub.append(f"{fn.__name__} (passed)")
    assert not passed_on_stub, (
        "these graded tests do not fail with NotImplementedError on the untouched stubs, "
        f"so they do not check the learner's code: {passed_on_stub}"
    )


@pytest.mark.parametrize("number", LESSONS)
def test_py_and_ipynb_hold_the_same_cells(number):
    py, ipynb = grading.lesson_paths(number)
    assert ipynb.exists(), f"{ipynb} is missing: run `jupytext --sync {py}`"
    if not _untouched(number):
        pytest.skip(f"lesson {number} holds your edits")

    def cells(path):
        return [
            (c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
            for c in jupytext.read(path).cells
        ]

    assert cells(py) == cells(ipynb), f"{py.name} and {ipynb.name} differ: run `jupytext --sync`"


def test_a_failing_check_teaches(capsys):
    """check() prints expected, got and the hint for a wrong answer, and returns nothing (a
    notebook would show a stray value under the verdict)."""

    def wrong(*args, **kwargs):
        return None

    test = grading.exercise_tests("ex1_1")[0]
    names = grading.exercise_names(1)
    assert grading.check("ex1_1", {name: wrong for name in names}) is None
    out = capsys.readouterr().out
    assert "❌ Exercise 1.1" in out and "expected" in out, (test.__name__, out)


def test_grading_reads_the_notebook_when_it_was_saved_after_the_py(tmp_path, monkeypatch):
    """A learner who works in Jupyter is graded on the .ipynb; an older one is ignored."""
    py, ipynb = grading.lesson_paths(6)
    monkeypatch.setattr(grading, "LESSONS_DIR", tmp_path)
    notebook = jupytext.read(py)
    for cell in notebook.cells:  # solve exercise 6.4 in the notebook only
        if "exercise" in cell.metadata.get("tags", []) and "def batches(" in cell.source:
            cell.source = "from solutions.data import batches"
    shutil.copy(py, tmp_path / py.name)
    jupytext.write(notebook, tmp_path / ipynb.name)
    os.utime(tmp_path / py.name, (1, 1))  # the .py is older

    assert grading.lesson_source(6) == tmp_path / ipynb.name
    solved = grading.load_lesson(6)
    for fn in grading.exercise_tests("ex6_4"):
        grading.run_test(fn, solved)

    os.utime(tmp_path / ipynb.name, (0, 0))  # now the .py is newer: its stub is graded
    assert grading.lesson_source(6) == tmp_path / py.name
    with pytest.raises(NotImplementedError):
        grading.run_test(grading.exercise_tests("ex6_4")[0], grading.load_lesson(6))
