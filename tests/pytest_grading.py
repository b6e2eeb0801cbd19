"""The pytest side of grading, loaded early (`-p tests.pytest_grading` in pyproject's addopts)
so that `--impl` is known however pytest is started: the option, and a scoreboard.

The scoreboard gives partial credit, as otter or nbgrader do: the checks passed per exercise
(`5.2 6/7`), which exercises are not started or wait on an earlier one, the file graded for
each lesson, and a warning where the lesson's other file holds a different version of an
exercise (only the newer of `.py` and `.ipynb` is graded).
"""

from __future__ import annotations

import re
import textwrap


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        choices=("lessons", "solutions"),
        default="lessons",
        help="what the graded lesson tests run against: your lessons (default) or the reference",
    )


# lesson -> exercise number -> test node id -> (outcome, the exercise whose stub it met or None)
_SCORES: dict[int, dict[int, dict[str, tuple[str, str | None]]]] = {}
_WORST_FIRST = ("failed", "skipped", "passed")  # a test's outcome is its worst phase's
GRADED_TEST = re.compile(r"tests/lessons/test_lesson(\d+)\.py::test_ex(\d+)_(\d+)_")


def pytest_runtest_logreport(report):
    match = GRADED_TEST.search(report.nodeid)
    if match is None or (report.when != "call" and report.outcome == "passed"):
        return
    lesson, number = int(match[1]), int(match[3])
    tests = _SCORES.setdefault(lesson, {}).setdefault(number, {})
    unfinished = dict(report.user_properties).get("unfinished")
    old = tests.get(report.nodeid)
    if old is None or _WORST_FIRST.index(report.outcome) < _WORST_FIRST.index(old[0]):
        tests[report.nodeid] = (report.outcome, unfinished or (old and old[1]))


def exercise_score(label: str, tests: dict[str, tuple[str, str | None]]) -> tuple[int, int, str]:
    """(checks passed, checks counted, e.g. "5.2 6/7") for one exercise; a skipped check (one
    that cannot run on this machine) does not count."""
    counted = [(outcome, stub) for outcome, stub in tests.values() if outcome != "skipped"]
    passed = sum(outcome == "passed" for outcome, _ in counted)
    text = f"{label} {passed}/{len(counted)}"
    stubs = {stub for _, stub in counted if stub}
    earlier = sorted(stubs - {label})
    if counted and passed == len(counted):
        text += " ✓"
    elif earlier:
        text += f" waits on {', '.join(earlier)}"
    elif stubs:
        text += " not started"
    return passed, len(counted), text


def scoreboard_lines(scores, impl: str) -> list[str]:
    """The scoreboard's lines for `scores` (as `_SCORES` holds them), graded against `impl`."""
    from tests import grading  # here, not at import: pytest loads this plugin for every run

    lines = []
    done_total = exercises_total = passed_total = counted_total = 0
    for lesson in sorted(scores):
        results = [
            exercise_score(f"{lesson}.{number}", scores[lesson][number])
            for number in sorted(scores[lesson])
        ]
        done = sum(0 < counted == passed for passed, counted, _ in results)
        done_total, exercises_total = done_total + done, exercises_total + len(results)
        passed_total += sum(passed for passed, _, _ in results)
        counted_total += sum(counted for _, counted, _ in results)
        if impl == "solutions":
            source = "the reference, " + ", ".join(grading.graded_test_module(lesson).SOLUTIONS)
        else:
            source = grading.graded_file_note(lesson)
        bar = "#" * done + "." * (len(results) - done)
        count = f"{done}/{len(results)} exercises [{bar}]"
        lines.append(f"lesson {lesson}: {count}, graded from {source}")
        lines.extend(_packed([text for _, _, text in results]))
        if impl == "lessons":
            for note in grading.version_notes(lesson):
                lines.extend(textwrap.wrap(note, 100, initial_indent="  ", subsequent_indent="   "))
    lines.append(
        f"all graded: {done_total}/{exercises_total} exercises done, "
        f"{passed_total}/{counted_total} checks pass"
    )
    return lines


def _packed(items: list[str], width: int = 100) -> list[str]:
    """`items` on indented lines of at most `width` characters, never splitting one."""
    lines = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += "   " + item
        else:
            lines.append("  " + item)
    return lines


def pytest_terminal_summary(terminalreporter, config):
    """A scoreboard after any run that graded lessons."""
    if not _SCORES:
        return
    impl = config.getoption("impl")
    terminalreporter.section(f"scoreboard (graded against: {impl})")
    for line in scoreboard_lines(_SCORES, impl):
        terminalreporter.write_line(line)
