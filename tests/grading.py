"""Grading the lessons: load a learner's exercises, run their checks, say what went wrong.

A lesson (`lessons/NN_topic.py`, paired with `.ipynb`) has three kinds of
tagged cells that matter here:

    # %% tags=["setup"]      imports and constants the exercises need
    # %% tags=["exercise"]   top-level functions, bodies `raise NotImplementedError(...)`
    # %% tags=["check"]      check("ex5_1"): runs exercise 5.1's graded tests in place

`load_lesson(5)` executes only the setup and exercise cells, in order, in a
fresh module, so grading never runs a lesson's training cells. The graded
tests live in `tests/lessons/test_lessonNN.py`; each takes `impl`, a namespace
holding the exercise functions (the learner's, or the reference ones from
`solutions/` with `pytest --impl solutions`), so the same test grades both.

Failure messages teach: `expect_equal`, `expect_close`, `expect_true` and
`expect_raises` raise an `AssertionError` that says what was checked, what was
expected, what came back, and a hint.

Verdicts tell the truth about where the work is: an exercise that calls an
unfinished one names that one (`unfinished_exercise`), and `check()` and the
scoreboard say which of the two lesson files pytest grades and where the other
one holds a different version of an exercise (`version_notes`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pathlib
import re
import tempfile
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
LESSONS_DIR = ROOT / "lessons"
STRICT_ENV = "COURSE_STRICT_CHECKS"  # set to 1: a failing check cell raises (lesson runs in CI)
EXERCISE_ID = re.compile(r"^ex(\d+)_(\d+)$")
# What every stub raises: NotImplementedError("Exercise 7.3").
STUB_MESSAGE = re.compile(r"Exercise (\d+)\.(\d+)")


class LessonError(Exception):
    """A lesson file that cannot be found, read or executed for grading."""


# ----------------------------------------------------------------------------- lesson files


def lesson_paths(number: int) -> tuple[pathlib.Path, pathlib.Path]:
    """(`.py`, `.ipynb`) of lesson `number`; the `.py` must exist."""
    found = sorted(LESSONS_DIR.glob(f"{number:02d}_*.py"))
    if not found:
        raise LessonError(f"no lesson {number}: expected {LESSONS_DIR}/{number:02d}_<topic>.py")
    return found[0], found[0].with_suffix(".ipynb")


def lesson_source(number: int) -> pathlib.Path:
    """The file to grade: the `.ipynb` when it is newer than the `.py` (a learner who works in
    Jupyter saves there), otherwise the `.py`."""
    py, ipynb = lesson_paths(number)
    if ipynb.exists() and ipynb.stat().st_mtime > py.stat().st_mtime:
        return ipynb
    return py


def read_cells(path: pathlib.Path) -> list[tuple[set[str], str]]:
    """(tags, source) of every code cell of a jupytext `.py` or a `.ipynb`, in order."""
    import jupytext

    try:
        notebook = jupytext.read(path)
    except Exception as err:  # jupytext raises many kinds; all mean "cannot read this file"
        raise LessonError(f"{path}: cannot be read as a notebook ({err})") from err
    return [
        (set(cell.metadata.get("tags", [])), cell.source)
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]


def graded_cells(path: pathlib.Path) -> list[tuple[str, str]]:
    """("setup" | "exercise", source) of the cells grading runs, in order."""
    kept = []
    for tags, source in read_cells(path):
        for kind in ("setup", "exercise"):
            if kind in tags:
                kept.append((kind, source))
                break
    return kept


def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions a cell defines."""
    tree = ast.parse(source)
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]


def exercise_names(number: int, path: pathlib.Path | None = None) -> list[str]:
    """The functions a lesson's exercise cells define, in order."""
    path = path or lesson_paths(number)[0]
    return [
        name
        for kind, source in graded_cells(path)
        if kind == "exercise"
        for name in defined_functions(source)
    ]


def load_lesson(number: int, path: pathlib.Path | None = None) -> types.ModuleType:
    """Executes the setup and exercise cells of a lesson in a fresh module and returns it."""
    path = path or lesson_source(number)
    module = types.ModuleType(f"lesson{number:02d}", f"Exercises of {path.name}")
    module.__file__ = str(path)
    for index, (kind, source) in enumerate(graded_cells(path), start=1):
        try:
            code = compile(source, f"{path.name} ({kind} cell {index})", "exec")
            exec(code, module.__dict__)  # noqa: S102 - running the learner's own lesson is the point
        except Exception as err:
            raise LessonError(
                f"{path}: the {kind} cell {index} fails before any test runs: "
                f"{type(err).__name__}: {err}. Fix that cell (run it in Jupyter to see the "
                "traceback), then grade again."
            ) from err
    return module


def load_solutions(names: Iterable[str], modules: Iterable[str]) -> types.SimpleNamespace:
    """The reference functions `names`, each from the first of `modules` that has it."""
    loaded = [importlib.import_module(m) for m in modules]
    found = {}
    for name in names:
        owner = next((m for m in loaded if hasattr(m, name)), None)
        if owner is None:
            raise LessonError(
                f"no reference for {name!r} in {', '.join(m.__name__ for m in loaded)}"
            )
        found[name] = getattr(owner, name)
    return types.SimpleNamespace(**found)


def load_impl(number: int, modules: Iterable[str], impl: str) -> types.SimpleNamespace:
    """What the graded tests of lesson `number` call: "lessons" (the learner's) or "solutions"."""
    if impl == "solutions":
        return load_solutions(exercise_names(number), modules)
    if impl == "lessons":
        return types.SimpleNamespace(**vars(load_lesson(number)))
    raise ValueError(f"impl={impl!r}: use 'lessons' or 'solutions'")


# ----------------------------------------------------------------------------- which file counts


def _shown(path: pathlib.Path) -> str:
    """`path` relative to the course root when it is inside it (what a learner recognises)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def graded_file_note(number: int) -> str:
    """The file pytest grades for lesson `number`, and why, e.g.
    "lessons/07_training.ipynb (saved after 07_training.py)"."""
    py, ipynb = lesson_paths(number)
    graded = lesson_source(number)
    if graded == ipynb:
        return f"{_shown(ipynb)} (saved after {py.name})"
    if ipynb.exists():
        return f"{_shown(py)} ({ipynb.name} is not newer)"
    return _shown(py)


def exercise_sources(number: int, path: pathlib.Path) -> dict[str, str]:
    """Exercise label ("7.3") -> source of its cell; the k-th exercise cell is exercise N.k."""
    sources = [source for kind, source in graded_cells(path) if kind == "exercise"]
    return {f"{number}.{k}": source for k, source in enumerate(sources, start=1)}


def _is_stub(source: str, label: str) -> bool:
    return f'raise NotImplementedError("Exercise {label}")' in source


def _same_code(a: str | None, b: str | None) -> bool:
    """Equal up to trailing spaces and blank lines, which a notebook round trip may change."""

    def lines(source):
        return None if source is None else [line.rstrip() for line in source.strip().splitlines()]

    return lines(a) == lines(b)


def version_notes(number: int, labels: Iterable[str] | None = None) -> list[str]:
    """Warnings for the exercises (all, or `labels` such as "7.3") whose cell differs between
    lesson `number`'s `.py` and `.ipynb`, saying which file is graded and what that means.

    Only the newer file is graded, so work saved in the other one silently does not count:
    these lines are how a learner finds out.
    """
    py, ipynb = lesson_paths(number)
    if not ipynb.exists():
        return []
    graded = lesson_source(number)
    other = ipynb if graded == py else py
    try:
        ours, theirs = exercise_sources(number, graded), exercise_sources(number, other)
    except LessonError:
        return []  # an unreadable file is reported when it is loaded
    wanted = set(ours) | set(theirs) if labels is None else set(labels)
    kinds: dict[str, list[str]] = {"lost": [], "stub": [], "differs": []}
    for label in sorted(wanted, key=lambda text: tuple(map(int, text.split(".")))):
        mine, elsewhere = ours.get(label), theirs.get(label)
        if _same_code(mine, elsewhere):
            continue
        if mine is None or _is_stub(mine, label):
            kinds["lost"].append(label)
        elif elsewhere is None or _is_stub(elsewhere, label):
            kinds["stub"].append(label)
        else:
            kinds["differs"].append(label)
    why = f"only {graded.name} is graded (it was saved last)"
    notes = []
    if kinds["lost"]:
        notes.append(
            f"⚠ your work on exercise {', '.join(kinds['lost'])} is in {other.name}, which is not "
            f"graded: {why} and holds the stub. Copy your code into {graded.name}, or save "
            f"{other.name} after it."
        )
    if kinds["differs"]:
        notes.append(
            f"⚠ {other.name} holds a different version of exercise {', '.join(kinds['differs'])}"
            f": {why}, so that version does not count."
        )
    if kinds["stub"]:
        notes.append(
            f"ℹ {other.name} still holds the stub of exercise {', '.join(kinds['stub'])}: "
            f"{why}, so keep working there."
        )
    return notes


# ----------------------------------------------------------------------------- graded tests


def graded_test_module(number: int) -> types.ModuleType:
    """`tests/lessons/test_lessonNN.py`."""
    return importlib.import_module(f"tests.lessons.test_lesson{number:02d}")


def exercise_tests(exercise: str) -> list[Callable]:
    """The graded test functions of one exercise, e.g. "ex5_1" -> test_ex5_1_*."""
    number = parse_exercise_id(exercise)[0]
    module = graded_test_module(number)
    return [
        fn
        for name, fn in vars(module).items()
        if name.startswith(f"test_{exercise}_") and callable(fn)
    ]


def parse_exercise_id(exercise: str) -> tuple[int, int]:
    """ "ex5_1" -> (5, 1)."""
    match = EXERCISE_ID.match(exercise)
    if not match:
        raise ValueError(f"exercise id {exercise!r}: use the form 'ex5_1' (lesson 5, exercise 1)")
    return int(match[1]), int(match[2])


def unfinished_exercise(error: BaseException) -> str | None:
    """The exercise whose untouched stub raised `error` ("7.3"), read from the message every
    stub raises, `NotImplementedError("Exercise 7.3")`; None for any other error.

    A test of 7.4 can meet 7.3's stub when the learner's 7.4 calls 7.3: the verdict must
    then name 7.3, not send the learner back to a 7.4 that is already written.
    """
    if not isinstance(error, NotImplementedError):
        return None
    match = STUB_MESSAGE.fullmatch(str(error).strip())
    return f"{match[1]}.{match[2]}" if match else None


def unfinished_message(label: str, missing: str, then: str) -> str:
    """What to do when exercise `label`'s test met the stub of exercise `missing`."""
    if missing == label:
        return (
            f"Exercise {label} is not done yet: replace the `raise NotImplementedError(...)` "
            f"with your code, {then}"
        )
    return (
        f"Exercise {label} uses exercise {missing}, which is not done yet: finish {missing} "
        f"first, {then}"
    )


def run_test(fn: Callable, impl: Any) -> None:
    """Calls one graded test outside pytest, giving it `impl` and, if it asks, `tmp_path`."""
    wanted = inspect.signature(fn).parameters
    unknown = set(wanted) - {"impl", "tmp_path"}
    if unknown:
        raise TypeError(f"{fn.__name__} asks for fixtures {sorted(unknown)}; only impl, tmp_path")
    if "tmp_path" not in wanted:
        fn(impl=impl)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fn(impl=impl, tmp_path=pathlib.Path(tmp))


def check(exercise: str, namespace: dict | None = None) -> None:
    """Runs one exercise's graded tests against the caller's functions and prints a verdict.

    In a lesson: `check("ex5_1")` right after the exercise cell. `namespace`
    defaults to the caller's globals (the notebook's). With
    COURSE_STRICT_CHECKS=1 a failure raises instead of only printing.
    """
    if namespace is None:
        namespace = inspect.currentframe().f_back.f_globals
    verdict(exercise, namespace)


def verdict(exercise: str, namespace: dict) -> bool:
    """What `check` prints; returns True when every graded test of `exercise` passes.

    The verdict counts the checks that pass, names the exercise whose stub stopped them (this
    one, or an earlier one it calls), and ends with the file pytest grades for this lesson.
    """
    lesson, number = parse_exercise_id(exercise)
    label = f"{lesson}.{number}"
    impl = types.SimpleNamespace(**namespace)
    tests = exercise_tests(exercise)
    if not tests:
        raise LessonError(f"no graded tests named test_{exercise}_* in tests/lessons")
    passed, failures, missing = 0, [], None
    for fn in tests:
        what = fn.__name__.removeprefix(f"test_{exercise}_").replace("_", " ")
        try:
            run_test(fn, impl)
        except NotImplementedError as err:
            missing = unfinished_exercise(err)
            if missing is not None:  # a stub: nothing after it can pass either
                break
            failures.append(f"✗ {what}: your code raised NotImplementedError: {err}")
        except AssertionError as err:
            failures.append(f"✗ {what}: {err}")
        except Exception as err:  # the learner's code crashed: show it as feedback
            failures.append(f"✗ {what}: your code raised {type(err).__name__}: {err}")
        else:
            passed += 1
    if missing is not None:
        then = "run that cell, then this one." if missing == label else "then run this check again."
        print(f"⏳ {unfinished_message(label, missing, then)}")
    elif failures:
        print(f"❌ Exercise {label}: {passed}/{len(tests)} checks pass")
        print("\n".join(failures))
    else:
        print(f"✅ Exercise {label}: all {len(tests)} checks pass")
    for line in _file_lines(lesson, label):
        print(line)
    if missing is not None:
        _maybe_raise(f"exercise {missing} is not implemented")
    elif failures:
        _maybe_raise("\n".join(failures))
    return missing is None and not failures


def _file_lines(lesson: int, label: str) -> list[str]:
    """The graded file of `lesson`, and a warning when the other file holds another `label`."""
    try:
        return [f"📄 pytest grades {graded_file_note(lesson)}", *version_notes(lesson, [label])]
    except LessonError:  # no lesson file to point at (a namespace graded on its own)
        return []


def _maybe_raise(message: str) -> None:
    if os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(message)


# ----------------------------------------------------------------------------- teaching asserts


def _fail(what: str, expected: str, got: str, hint: str, detail: str = "") -> None:
    lines = [f"{what}: expected {expected}, got {got}."]
    if detail:
        lines.append(detail)
    if hint:
        lines.append(f"Hint: {hint}")
    raise AssertionError("\n  ".join(lines))


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expect_equal(got: Any, want: Any, *, what: str, hint: str = "") -> None:
    """Fails unless `got == want` (arrays: same shape and every element equal)."""
    if isinstance(want, np.ndarray) or isinstance(got, np.ndarray) or hasattr(got, "shape"):
        expect_close(got, want, what=what, hint=hint, atol=0, rtol=0)
        return
    if got != want:
        _fail(what, _short(want), _short(got), hint)


def expect_true(condition: Any, *, what: str, hint: str = "") -> None:
    """Fails unless `condition` is true; `what` says what should have held."""
    if not condition:
        _fail(what, "it to hold", "it did not", hint)


def expect_raises(
    exception: type[BaseException], fn: Callable, *args, what: str, hint: str = "", **kwargs
) -> BaseException:
    """Calls `fn(*args, **kwargs)`, fails unless it raises `exception`; returns the error."""
    try:
        fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except exception as err:
        return err
    except Exception as err:
        _fail(what, f"{exception.__name__}", f"{type(err).__name__}: {err}", hint)
    _fail(what, f"{exception.__name__} to be raised", "no error", hint)
    raise AssertionError("unreachable")  # _fail always raises


def expect_close(
    got: Any, want: Any, *, what: str, hint: str = "", atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    """Fails unless arrays match: shape first, then kind of dtype (int/float/bool), then values
    within `atol + rtol * |want|`; the message shows the worst element."""
    if got is None:
        _fail(what, "an array", "None", hint or "did you forget to `return` the result?")
    got_array, want_array = np.asarray(got), np.asarray(want)
    if got_array.shape != want_array.shape:
        _fail(what, f"shape {want_array.shape}", f"shape {got_array.shape}", hint)
    if _dtype_kind(got_array) != _dtype_kind(want_array):
        _fail(
            what,
            f"{_dtype_kind(want_array)} values ({want_array.dtype})",
            f"{_dtype_kind(got_array)} values ({got_array.dtype})",
            hint,
        )
    if got_array.size == 0:
        return
    got_f = got_array.astype(np.float64)
    want_f = want_array.astype(np.float64)
    bad = ~np.isclose(got_f, want_f, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        with np.errstate(invalid="ignore"):  # inf - inf where both are -inf: not a difference
            distance = np.nan_to_num(np.abs(got_f - want_f), nan=0.0, posinf=np.finfo(float).max)
        worst = np.unravel_index(np.argmax(np.where(bad, distance, -1)), bad.shape)
        where = f"[{', '.join(map(str, worst))}]" if got_array.ndim else ""
        _fail(
            what,
            f"{want_array[worst]!r} at {where or 'the value'}",
            f"{got_array[worst]!r}",
            hint,
            f"{int(bad.sum())} of {bad.size} values differ (tolerance {atol} + {rtol}*|want|)",
        )


def _dtype_kind(array: np.ndarray) -> str:
    if array.dtype == bool:
        return "bool"
    if np.issubdtype(array.dtype, np.integer):
        return "integer"
    if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
        return "float"
    return str(array.dtype)
