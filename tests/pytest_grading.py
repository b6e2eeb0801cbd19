"""The pytest side of grading, loaded early (`-p tests.pytest_grading` in pyproject's addopts)
so that `--impl` is known however pytest is started: the option, and a scoreboard."""

from __future__ import annotations

import re


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        choices=("lessons", "solutions"),
        default="lessons",
        help="what the graded lesson tests run against: your lessons (default) or the reference",
    )


_SCORES: dict[int, dict[str, list[str]]] = {}  # lesson -> exercise -> outcomes of its tests


def pytest_runtest_logreport(report):
    lesson = _lesson_of(report.nodeid)
    if lesson is None or (report.when != "call" and report.outcome == "passed"):
        return
    exercise = report.nodeid.split("::")[-1].split("_")[1:3]
    if len(exercise) == 2:
        name = "_".join(exercise)
        _SCORES.setdefault(lesson, {}).setdefault(name, []).append(report.outcome)


def _lesson_of(nodeid: str) -> int | None:
    match = re.search(r"tests/lessons/test_lesson(\d+)\.py::", nodeid)
    return int(match[1]) if match else None


def pytest_terminal_summary(terminalreporter, config):
    """A scoreboard after any run that graded lessons: exercises passed per lesson."""
    if not _SCORES:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"scoreboard (graded against: {config.getoption('impl')})")
    total_done = total = 0
    for lesson in sorted(_SCORES):
        exercises = _SCORES[lesson]
        done = sum(all(o == "passed" for o in outcomes) for outcomes in exercises.values())
        total_done, total = total_done + done, total + len(exercises)
        bar = "#" * done + "." * (len(exercises) - done)
        write(f"lesson {lesson}: {done}/{len(exercises)} exercises  [{bar}]")
    write(f"all graded: {total_done}/{total} exercises")
