"""How every course command reads its settings, and answers a mistake: one line, exit 2.

    @dataclasses.dataclass
    class Settings:
        steps: int = cli.setting(100, "training steps", least=1)

    @cli.command
    def main(argv: list[str] | None = None) -> int:
        parser = cli.ArgumentParser(description=__doc__.split("\\n\\n")[0])
        settings, _ = cli.parse_settings(parser, Settings, argv)
        ...

A command's knobs are one typed dataclass: each field declares its flag
(`steps` -> `--steps`), type, default, help and the values it accepts, once.
Library code takes the dataclass, never argparse's namespace, so a test or a
lesson builds the same settings with `Settings(steps=5)`.

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
import dataclasses
import functools
import math
import os
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Sequence

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


# -- settings dataclasses as flags ------------------------------------------------------


def setting(
    default,
    help: str | None = None,  # noqa: A002 - argparse's name for it
    *,
    choices: Sequence | None = None,
    least: float | None = None,
    hidden: bool = False,
):
    """A settings field: its default, the help `--help` shows, the `choices` it takes or the
    `least` value it accepts (checked when flags are read); `hidden` keeps it out of --help."""
    metadata = {"help": help, "choices": choices, "least": least, "hidden": hidden}
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """`num_scenes` -> `--num-scenes`."""
    return "--" + field_name.replace("_", "-")


def _value_type(annotation) -> type:
    """The type a flag's text is converted to: `int | None` -> int, `pathlib.Path` -> Path."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if annotation not in (int, float, str, bool, pathlib.Path):
        raise TypeError(f"settings fields are int, float, str, bool or Path, not {annotation}")
    return annotation


def add_settings_flags(parser: argparse.ArgumentParser, settings_class) -> None:
    """One flag per field of a settings dataclass, typed, defaulted and documented like it.
    A bool field is a switch that turns it on."""
    hints = typing.get_type_hints(settings_class)
    for field in dataclasses.fields(settings_class):
        meta = field.metadata
        kind = _value_type(hints[field.name])
        help_text = argparse.SUPPRESS if meta.get("hidden") else meta.get("help")
        if help_text not in (None, argparse.SUPPRESS) and field.default is not None:
            help_text += f" (default: {field.default})"
        if kind is bool:
            parser.add_argument(flag_name(field.name), action="store_true", help=help_text)
            continue
        parser.add_argument(
            flag_name(field.name),
            type=kind,
            default=field.default,
            choices=meta.get("choices"),
            help=help_text,
        )


def check_settings(settings) -> None:
    """Raises ValueError naming the flag, for a number below its field's `least` or a float
    that is NaN or infinite."""
    for field in dataclasses.fields(settings):
        value, least = getattr(settings, field.name), field.metadata.get("least")
        at_least = "" if least is None else f" at least {least}"
        of_at_least = "" if least is None else f" of at least {least}"
        if isinstance(value, float) and not (
            math.isfinite(value) and value >= (-math.inf if least is None else least)
        ):
            raise ValueError(
                f"{flag_name(field.name)} must be a finite number{of_at_least}, not {value}"
            )
        if least is not None and value is not None and value < least:
            raise ValueError(f"{flag_name(field.name)} must be{at_least}, not {value}")


def parse_settings(parser: argparse.ArgumentParser, settings_class, argv: list[str]):
    """Declares the flags of `settings_class` on `parser`, reads `argv` and returns
    (the checked settings, argparse's namespace for any other flags the parser has);
    a bad value ends the command with one line, as a bad flag does."""
    add_settings_flags(parser, settings_class)
    args = parser.parse_args(argv)
    settings = settings_class(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(settings_class)}
    )
    try:
        check_settings(settings)
    except ValueError as error:
        parser.error(str(error))
    return settings, args
