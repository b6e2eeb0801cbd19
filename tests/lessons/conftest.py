"""The `impl` fixture: the exercise functions a graded test calls.

Each `test_lessonNN.py` names its lesson (`LESSON = 5`) and where the reference
functions live (`SOLUTIONS = ("solutions.preprocess",)`); `--impl` picks the
learner's lesson (default) or the reference.
"""

from __future__ import annotations

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
    """Short reports for learners: an unfinished exercise is one line, a wrong answer is the
    teaching message (expected, got, hint) rather than a traceback into the test."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not report.failed or not hasattr(item.module, "LESSON"):
        return
    error = call.excinfo.value
    if isinstance(error, NotImplementedError):
        report.longrepr = f"{error} is not done yet: write its code in the lesson, then grade again"
    elif isinstance(error, AssertionError):
        report.longrepr = f"{item.name}:\n  {error}"
