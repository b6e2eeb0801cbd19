"""`capstone.cli`'s settings dataclasses: one declaration gives the flag, its type, default,
help and the values it accepts."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from capstone import cli


@dataclasses.dataclass
class Knobs:
    steps: int = cli.setting(10, "training steps", least=1)
    rate: float = cli.setting(0.5, "peak learning rate", least=0)
    kind: str = cli.setting("attn", "what trains", choices=("attn", "llm"))
    out: pathlib.Path | None = cli.setting(None, "run folder")
    quiet: bool = cli.setting(False, "print less")
    secret: int = cli.setting(3, hidden=True)


def parse(argv):
    return cli.parse_settings(cli.ArgumentParser(prog="knobs"), Knobs, argv)[0]


def test_defaults_and_typed_values():
    assert parse([]) == Knobs()
    knobs = parse(["--steps", "7", "--rate", "0.25", "--kind", "llm", "--out", "runs/x", "--quiet"])
    assert knobs == Knobs(7, 0.25, "llm", pathlib.Path("runs/x"), True, 3)
    assert isinstance(knobs.out, pathlib.Path) and isinstance(knobs.steps, int)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be at least 1, not 0"),
        (["--rate", "-0.1"], "--rate must be a finite number of at least 0, not -0.1"),
        (["--rate", "nan"], "--rate must be a finite number of at least 0, not nan"),
        (["--rate", "inf"], "--rate must be a finite number of at least 0, not inf"),
        (["--kind", "lora"], "argument --kind: invalid choice: 'lora'"),
        (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    ],
)
def test_values_out_of_range_end_with_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    assert stop.value.code == cli.USER_ERROR_EXIT
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("knobs: error: ")
    assert message in line, line


def test_help_lists_each_setting_with_its_default_and_hides_the_hidden(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS training steps (default: 10)" in text
    assert "--kind {attn,llm} what trains (default: attn)" in text
    assert "--secret" not in text


def test_settings_built_in_code_are_checked_the_same_way():
    with pytest.raises(ValueError, match="--steps must be at least 1, not -2"):
        cli.check_settings(Knobs(steps=-2))
    cli.check_settings(Knobs(steps=1, rate=0.0))  # the bounds themselves are allowed


def test_a_field_type_flags_cannot_carry_is_refused():
    @dataclasses.dataclass
    class Bad:
        sizes: list = cli.setting(None, "sizes")

    with pytest.raises(TypeError, match="int, float, str, bool or Path"):
        cli.add_settings_flags(cli.ArgumentParser(), Bad)
