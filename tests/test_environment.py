"""solutions.environment against the real thing: kagglehub's own credential lookup, and XLA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import kagglehub.config
import pytest

from solutions.environment import (
    find_kaggle_credentials,
    write_kaggle_json,
    xla_flags_with_device_count,
)

VARIABLES = (
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "KAGGLE_CONFIG_DIR",
    "KAGGLE_KERNEL_RUN_TYPE",
)


@pytest.fixture
def home(monkeypatch, tmp_path):
    """An empty home folder, no Kaggle variables, nothing cached in kagglehub."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(kagglehub.config, "_kaggle_credentials", None)
    # kagglehub fixed its default folder (~/.kaggle) when it was imported.
    monkeypatch.setattr(
        kagglehub.config, "DEFAULT_KAGGLE_CREDENTIALS_FOLDER", str(home / ".kaggle")
    )
    return home


def kagglehub_username() -> str | None:
    credentials = kagglehub.config.get_kaggle_credentials()
    return None if credentials is None else credentials.username


@pytest.mark.parametrize(
    "variables, file_in",
    [
        ({"KAGGLE_USERNAME": "from-env", "KAGGLE_KEY": "k"}, "home"),
        ({"KAGGLE_USERNAME": "from-env", "KAGGLE_KEY": ""}, "home"),
        ({"KAGGLE_USERNAME": "from-env"}, "config_dir"),
        ({}, "config_dir"),
        ({"KAGGLE_KEY": "k"}, None),
        ({}, None),
    ],
)
def test_agrees_with_kagglehub(monkeypatch, home, variables, file_in):
    config_dir = home / "elsewhere"
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    if file_in == "home":
        monkeypatch.delenv("KAGGLE_CONFIG_DIR")
        write_kaggle_json(home / ".kaggle", "from-file", "k")
    elif file_in == "config_dir":
        write_kaggle_json(config_dir, "from-file", "k")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    try:
        source = find_kaggle_credentials(os.environ, home)
    except FileNotFoundError:
        source = None
    expected = {"environment": "from-env", None: None}.get(source, "from-file")
    assert kagglehub_username() == expected, source


def test_kaggle_json_is_what_kagglehub_reads(home):
    write_kaggle_json(home / ".kaggle", "learner", "0123abcd")
    credentials = kagglehub.config.get_kaggle_credentials()
    assert (credentials.username, credentials.key) == ("learner", "0123abcd")
    assert json.loads((home / ".kaggle" / "kaggle.json").read_text()) == {
        "username": "learner",
        "key": "0123abcd",
    }


def test_the_count_is_an_int():
    with pytest.raises(ValueError, match="count=2.0"):
        xla_flags_with_device_count("", 2.0)


@pytest.mark.slow
def test_xla_accepts_the_flags():
    """A fresh process started with the flags sees that many CPU devices, other flags kept."""
    flags = xla_flags_with_device_count("--xla_backend_optimization_level=0", 3)
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.device_count())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3"]
