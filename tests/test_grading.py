"""The grader proves itself: every lesson has real exercises whose graded tests pass on the
reference (`pytest --impl solutions` runs them) and fail on the untouched stubs (checked here)."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys

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


# ----------------------------------------------------------------------------- a learner's copy

# 1.2 as a learner might get it nearly right: every flag handled, a count of 0 accepted.
WRONG_XLA_FLAGS = """def xla_flags_with_device_count(flags: str, count: int) -> str:
    kept = [flag for flag in flags.split() if flag.split("=")[0] != DEVICE_COUNT_FLAG]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])
"""


def _lesson_with(number: int, sources: dict[int, str]):
    """Lesson `number` read from this checkout, exercise cell k's source replaced by
    sources[k]: what a learner's file holds after they pasted code into those cells."""
    notebook = jupytext.read(grading.lesson_paths(number)[0])
    cells = [c for c in notebook.cells if "exercise" in c.metadata.get("tags", [])]
    for k, source in sources.items():
        cells[k - 1].source = source
    return notebook


@pytest.fixture
def learner_copy(tmp_path):
    """A learner's copy of the course: the grader, the graded tests of lessons 1 and 7, and
    those two lessons as a learner left them (the reference modules come from this checkout).

    Lesson 1: 1.1 solved and 1.2 wrong in both files; 1.3 solved only in the .ipynb, which was
    saved last; 1.4 solved only in the .py. Lesson 7 (its .py saved last): 7.4 solved, but it
    calls 7.3, still a stub.
    """
    from solutions import environment, train

    copy = tmp_path / "course"
    for name in ("pyproject.toml", *(f"tests/{n}" for n in ("__init__.py", "conftest.py"))):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(grading.ROOT / name, copy / name)
    for name in ("grading.py", "pytest_grading.py"):
        shutil.copy(grading.ROOT / "tests" / name, copy / "tests" / name)
    (copy / "tests" / "lessons").mkdir()
    for name in ("__init__.py", "conftest.py", "test_lesson01.py", "test_lesson07.py"):
        shutil.copy(grading.ROOT / "tests" / "lessons" / name, copy / "tests" / "lessons" / name)
    lessons = copy / "lessons"
    lessons.mkdir()
    solved_1_1 = inspect.getsource(environment.devices_per_kind)
    py = _lesson_with(
        1, {1: solved_1_1, 2: WRONG_XLA_FLAGS, 4: inspect.getsource(environment.write_kaggle_json)}
    )
    ipynb = _lesson_with(
        1,
        {
            1: solved_1_1,
            2: WRONG_XLA_FLAGS,
            3: inspect.getsource(environment.find_kaggle_credentials),
        },
    )
    jupytext.write(py, lessons / "01_environment.py", fmt="py:percent")
    jupytext.write(ipynb, lessons / "01_environment.ipynb")
    jupytext.write(
        _lesson_with(7, {4: inspect.getsource(train.cosine_schedule)}),
        lessons / "07_training.py",
        fmt="py:percent",
    )
    shutil.copy(grading.lesson_paths(7)[1], lessons / "07_training.ipynb")
    for name, seconds in (("01_environment.py", 1), ("01_environment.ipynb", 2)):
        os.utime(lessons / name, (1_700_000_000 + seconds,) * 2)
    for name, seconds in (("07_training.ipynb", 1), ("07_training.py", 2)):
        os.utime(lessons / name, (1_700_000_000 + seconds,) * 2)
    return copy


@pytest.mark.slow
def test_the_scoreboard_of_a_learner_copy_tells_the_truth(learner_copy):
    # The copy's own grader and tests, and this checkout's reference modules.
    path = [str(grading.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop(grading.STRICT_ENV, None)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
            *("tests/lessons/test_lesson01.py", "tests/lessons/test_lesson07.py"),
            *("-k", "ex1_ or ex7_3 or ex7_4"),
        ],
        cwd=learner_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    board = " ".join(out.split("scoreboard (graded against: lessons)", 1)[1].split())
    expected = [
        "lesson 1: 2/4 exercises [##..], graded from lessons/01_environment.ipynb "
        "(saved after 01_environment.py)",
        "  1.1 2/2 ✓   1.2 3/4   1.3 4/4 ✓   1.4 0/5 not started",
        "  ⚠ your work on exercise 1.4 is in 01_environment.py, which is not graded: only "
        "01_environment.ipynb is graded (it was saved last) and holds the stub.",
        "  ℹ 01_environment.py still holds the stub of exercise 1.3:",
        "lesson 7: 0/2 exercises [..], graded from lessons/07_training.py "
        "(07_training.ipynb is not newer)",
        "  7.3 0/4 not started   7.4 0/4 waits on 7.3",
        "all graded: 2/6 exercises done, 9/23 checks pass",
    ]
    for line in expected:  # compared with spaces and line breaks normalised
        line = " ".join(line.split())
        assert line in board, f"{line!r} not in the scoreboard:\n{out}"
    assert "Exercise 7.4 uses exercise 7.3, which is not done yet: finish 7.3 first" in out, out
    assert "count=0: expected ValueError to be raised, got no error." in out, out


def test_check_in_a_learner_copy_tells_the_truth(learner_copy, monkeypatch, capsys):
    monkeypatch.setattr(grading, "ROOT", learner_copy)
    monkeypatch.setattr(grading, "LESSONS_DIR", learner_copy / "lessons")

    def said(exercise, namespace):
        grading.check(exercise, namespace)
        return capsys.readouterr().out

    graded_1 = "📄 pytest grades lessons/01_environment.ipynb (saved after 01_environment.py)"
    in_jupyter = vars(grading.load_lesson(1))  # the kernel ran the notebook, the graded file
    out = said("ex1_1", in_jupyter)
    assert out.splitlines() == ["✅ Exercise 1.1: all 2 checks pass", graded_1], out

    out = said("ex1_2", in_jupyter)
    assert out.startswith("❌ Exercise 1.2: 3/4 checks pass\n✗ rejects counts below one:"), out
    assert graded_1 in out and "⚠" not in out, out

    out = said("ex1_3", in_jupyter)
    assert out.startswith("✅ Exercise 1.3: all 4 checks pass\n"), out
    assert "ℹ 01_environment.py still holds the stub of exercise 1.3" in out, out

    lost = "⚠ your work on exercise 1.4 is in 01_environment.py, which is not graded"
    out = said("ex1_4", in_jupyter)
    assert out.startswith("⏳ Exercise 1.4 is not done yet: replace the"), out
    assert lost in out, out

    # A kernel that ran the .py (an editor's interactive window) passes 1.4, and is told that
    # pytest will not see it.
    in_editor = vars(grading.load_lesson(1, learner_copy / "lessons" / "01_environment.py"))
    out = said("ex1_4", in_editor)
    assert out.startswith("✅ Exercise 1.4: all 5 checks pass\n") and lost in out, out

    out = said("ex7_4", vars(grading.load_lesson(7)))
    assert out.splitlines()[0] == (
        "⏳ Exercise 7.4 uses exercise 7.3, which is not done yet: finish 7.3 first, "
        "then run this check again."
    ), out
    assert "📄 pytest grades lessons/07_training.py (07_training.ipynb is not newer)" in out, out


def test_a_skipped_check_does_not_count_against_an_exercise():
    """A check that cannot run here (file modes off POSIX) neither passes nor fails."""
    from tests.pytest_grading import exercise_score

    tests = {"mode": ("skipped", None), "content": ("passed", None), "old file": ("passed", None)}
    assert exercise_score("1.4", tests) == (2, 2, "1.4 2/2 ✓")
    tests["content"] = ("failed", None)
    assert exercise_score("1.4", tests) == (1, 2, "1.4 1/2")
