"""What every course command does with a user's mistake: one line, exit code 2.

    @cli.command
    def main(argv: list[str] | None = None) -> int:
        parser = cli.ArgumentParser(description=__doc__.split("\\n\\n")[0])
        ...

The course raises errors whose messages name the file, line or flag at fault
and the fix (`DataError`, `CheckpointMismatchError`, `DownloadError`, a
missing file...). Under a traceback of 5 to 24 frames such a message is easy
to miss, so a command prints it alone on stderr and exits with 2, the code
argparse gives a bad flag. Anything else is a bug and keeps its traceback.
`--debug` anywhere on the command line shows the traceback of every error,
for a bug report.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from solutions.downloads import DownloadError

# The kinds of error the course raises for bad input: files that are missing, damaged or
# unwritable (OSError), values that do not fit (ValueError: DataError, CheckpointMismatchError,
# HFConversionError, ...), a loss that blew up (FloatingPointError) and failed downloads.
USER_ERRORS = (OSError, ValueError, FloatingPointError, DownloadError)
USER_ERROR_EXIT = 2  # argparse's exit code for a bad flag
INTERRUPTED_EXIT = 130  # a shell's code for a command stopped by Ctrl-C (128 + SIGINT)
DEBUG_FLAG = "--debug"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors and the `--debug` flag.

    argparse prints its whole usage (a dozen lines for finetune) above a bad
    flag's error; the error itself names the flag, and `--help` lists them all.
    `--debug` stays out of `--help`: it is for reporting bugs, documented in
    docs/troubleshooting.md.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help=argparse.SUPPRESS)

    def error(self, message: str):
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message}\n")


def _prog() -> str:
    return os.path.basename(sys.argv[0])  # as argparse names the command in its errors


def command(main: Callable[[list[str]], int]) -> Callable[[list[str] | None], int]:
    """Wraps a command's `main(argv) -> exit code`: the course's errors become one line
    `<command>: error: <message>` on stderr and exit code 2, as argparse prints a bad flag;
    Ctrl-C becomes `<command>: interrupted` and exit code 130;
    with `--debug` in argv they propagate with their traceback."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            return main(argv)
        except USER_ERRORS as error:
            if DEBUG_FLAG in argv:
                raise
            print(f"{_prog()}: error: {error}", file=sys.stderr)
            return USER_ERROR_EXIT
        except KeyboardInterrupt:
            if DEBUG_FLAG in argv:
                raise
            print(f"{_prog()}: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT

    return run
