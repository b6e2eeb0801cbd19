"""The `impl` fixture: the exercise functions a graded test calls.

Each `test_lessonNN.py` names its lesson (`LESSON = 5`) and where the reference
functions live (`SOLUTIONS = ("solutions.preprocess",)`); `--impl` picks the
learner's lesson (default) or the reference.
"""

from __future__ import annotations

import re

import pytest

from tests import grading

_LOADED: dict[tuple[int, str], object] = {}


@pytest.fixture
def impl(request):
    """The exercise functions of this module's lesson, loaded once per lesson and impl."""
    module = request.module
    choice = request.config.getoption("impl")
    key = (module.LESSON, choice)
    if key not in _LOADED:
        try:
            _LOADED[key] = grading.load_impl(module.LESSON, module.SOLUTIONS, choice)
        except grading.LessonError as err:
            _LOADED[key] = err
    loaded = _LOADED[key]
    if isinstance(loaded, Exception):
        pytest.fail(str(loaded), pytrace=False)
    return loaded


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Short reports for learners: an unfinished exercise is one line that names it (the test's
    own, or an earlier one its code calls), a wrong answer is the teaching message (expected,
    got, hint) rather than a traceback into the test. The scoreboard reads which stub a test
    met from the report's `unfinished` property."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not report.failed or not hasattr(item.module, "LESSON"):
        return
    error = call.excinfo.value
    missing = grading.unfinished_exercise(error)
    label = _exercise_label(item.name)
    if missing is not None and label is not None:
        report.user_properties.append(("unfinished", missing))
        report.longrepr = grading.unfinished_message(label, missing, "then grade again.")
    elif isinstance(error, AssertionError):
        report.longrepr = f"{item.name}:\n  {error}"


def _exercise_label(test_name: str) -> str | None:
    """ "test_ex7_4_runs_inside_jit" -> "7.4"."""
    match = re.match(r"test_ex(\d+)_(\d+)_", test_name)
    return f"{match[1]}.{match[2]}" if match else None
