"""Graded checks for lesson 1 (the environment): one test per behaviour, named test_ex1_K_<what>."""

import builtins
import contextlib
import io
import json
import os
import pathlib
import stat
import types
from collections import Counter
from unittest import mock

import jax
import pytest

from tests.grading import expect_equal, expect_raises, expect_true

LESSON = 1
SOLUTIONS = ("solutions.environment",)
pytestmark = pytest.mark.lesson1

FLAG = "--xla_force_host_platform_device_count"


def fake_device(kind: str, platform: str = "gpu"):
    return types.SimpleNamespace(device_kind=kind, platform=platform, id=0)


# ----------------------------------------------------------------------------- 1.1 devices


def test_ex1_1_counts_each_kind_in_first_seen_order(impl):
    devices = [
        fake_device("NVIDIA A100"),
        fake_device("cpu", "cpu"),
        fake_device("NVIDIA A100"),
        fake_device("NVIDIA H100"),
        fake_device("NVIDIA A100"),
    ]
    got = impl.devices_per_kind(devices)
    expect_equal(
        got,
        {"NVIDIA A100": 3, "cpu": 1, "NVIDIA H100": 1},
        what="devices per kind",
        hint="count by each device's `device_kind` attribute",
    )
    expect_equal(
        list(got),
        ["NVIDIA A100", "cpu", "NVIDIA H100"],
        what="order of the kinds",
        hint="a plain dict keeps keys in the order they were first inserted",
    )


def test_ex1_1_reads_real_jax_devices(impl):
    got = impl.devices_per_kind(jax.devices())
    want = dict(Counter(device.device_kind for device in jax.devices()))
    expect_equal(got, want, what="devices per kind of jax.devices()", hint="use `device_kind`")
    expect_equal(impl.devices_per_kind([]), {}, what="no devices", hint="start from an empty dict")


# ----------------------------------------------------------------------------- 1.2 XLA_FLAGS


def test_ex1_2_sets_the_count_on_empty_flags(impl):
    got = impl.xla_flags_with_device_count("", 8)
    expect_equal(got, f"{FLAG}=8", what="XLA_FLAGS from nothing", hint="no leading space")


def test_ex1_2_keeps_other_flags_in_order(impl):
    got = impl.xla_flags_with_device_count("--xla_dump_to=/tmp/dump  --xla_cpu_fast_math", 4)
    expect_equal(
        got,
        f"--xla_dump_to=/tmp/dump --xla_cpu_fast_math {FLAG}=4",
        what="flags joined by single spaces, the count last",
        hint="split on whitespace, keep the other flags, append the count flag, join with ' '",
    )


def test_ex1_2_replaces_an_earlier_count(impl):
    got = impl.xla_flags_with_device_count(f"{FLAG}=2 --xla_dump_to=/tmp/d {FLAG}=3", 8)
    expect_equal(
        got,
        f"--xla_dump_to=/tmp/d {FLAG}=8",
        what="XLA_FLAGS after replacing the count",
        hint="drop every flag whose name (the part before '=') is the device-count flag",
    )


def test_ex1_2_rejects_counts_below_one(impl):
    for bad in (0, -2):
        expect_raises(
            ValueError,
            impl.xla_flags_with_device_count,
            "",
            bad,
            what=f"count={bad}",
            hint="a process needs at least one device: raise ValueError",
        )


# ----------------------------------------------------------------------------- 1.3 credentials


def write_json(path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_ex1_3_variables_come_first(impl, tmp_path):
    write_json(tmp_path / ".kaggle" / "kaggle.json", {"username": "u", "key": "k"})
    environ = {"KAGGLE_USERNAME": "learner", "KAGGLE_KEY": "0123"}
    got = impl.find_kaggle_credentials(environ, tmp_path)
    expect_equal(
        got,
        "environment",
        what="source when both variables and kaggle.json exist",
        hint="kagglehub reads KAGGLE_USERNAME and KAGGLE_KEY before the file",
    )


def test_ex1_3_finds_kaggle_json_in_home(impl, tmp_path):
    path = tmp_path / ".kaggle" / "kaggle.json"
    write_json(path, {"username": "u", "key": "k"})
    for environ in ({}, {"KAGGLE_USERNAME": "learner", "KAGGLE_KEY": ""}):
        got = impl.find_kaggle_credentials(environ, tmp_path)
        expect_equal(
            got,
            str(path),
            what=f"source with variables {environ} and a kaggle.json",
            hint="both variables must be non-empty; otherwise return str(home/.kaggle/kaggle.json)",
        )


def test_ex1_3_kaggle_config_dir_moves_the_file(impl, tmp_path):
    write_json(tmp_path / "home" / ".kaggle" / "kaggle.json", {"username": "u", "key": "k"})
    elsewhere = tmp_path / "secrets" / "kaggle.json"
    write_json(elsewhere, {"username": "u", "key": "k"})
    environ = {"KAGGLE_CONFIG_DIR": str(elsewhere.parent)}
    got = impl.find_kaggle_credentials(environ, tmp_path / "home")
    expect_equal(
        got,
        str(elsewhere),
        what="source with KAGGLE_CONFIG_DIR set",
        hint="KAGGLE_CONFIG_DIR replaces home/.kaggle as the folder of kaggle.json",
    )


def test_ex1_3_error_says_how_to_fix_it(impl, tmp_path):
    error = expect_raises(
        FileNotFoundError,
        impl.find_kaggle_credentials,
        {"KAGGLE_USERNAME": "learner"},
        tmp_path,
        what="no key anywhere",
        hint="raise FileNotFoundError when neither source is there",
    )
    message = str(error)
    expected_path = str(tmp_path / ".kaggle" / "kaggle.json")
    for phrase in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        expected_path,
        "https://www.kaggle.com/settings",
        "https://www.kaggle.com/models/google/paligemma",
    ):
        expect_true(
            phrase in message,
            what=f"the error message names {phrase!r} (it was: {message!r})",
            hint="name both ways to give the key, the file's full path, the page that creates "
            "a token (KAGGLE_SETTINGS_URL) and the license pages (PALIGEMMA_LICENSE_PAGES)",
        )


# ----------------------------------------------------------------------------- 1.4 kaggle.json


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ex1_4_writes_username_and_key(impl, tmp_path):
    folder = tmp_path / "new" / ".kaggle"
    got = impl.write_kaggle_json(folder, "learner", "0123abcd")
    expect_equal(got, folder / "kaggle.json", what="returned path", hint="folder / 'kaggle.json'")
    content = json.loads((folder / "kaggle.json").read_text())
    expect_equal(
        content,
        {"username": "learner", "key": "0123abcd"},
        what="kaggle.json's content",
        hint='json.dump({"username": username, "key": key}, file)',
    )
    if os.name == "posix":
        expect_equal(
            oct(mode_of(folder)),
            oct(0o700),
            what="mode of the folder it created",
            hint="folder.mkdir(mode=0o700, parents=True, exist_ok=True)",
        )


def test_ex1_4_only_the_owner_can_read_it(impl, tmp_path):
    path = impl.write_kaggle_json(tmp_path, "learner", "0123abcd")
    if os.name == "posix":
        expect_equal(
            oct(mode_of(path)),
            oct(0o600),
            what="mode of kaggle.json",
            hint="create the file with os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)",
        )


@contextlib.contextmanager
def modes_at_opening(folder):
    """Within the block, records (file name, mode) for every file inside `folder` at the moment
    it is opened for writing, whichever call opens it (`open`, `Path.open`/`write_text`,
    `os.open`), under the usual umask 0o022: a file made readable by others, even for an
    instant before a chmod, is caught with the mode it was born with."""
    folder = pathlib.Path(folder).resolve()
    real_open, real_os_open = builtins.open, os.open
    seen = []

    def record(name, fd):
        path = pathlib.Path(os.path.abspath(os.fsdecode(name)))
        if path.is_relative_to(folder):
            seen.append((path.name, stat.S_IMODE(os.fstat(fd).st_mode)))

    def os_open(name, flags, *args, **kwargs):
        fd = real_os_open(name, flags, *args, **kwargs)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and isinstance(name, str | os.PathLike):
            record(name, fd)
        return fd

    def any_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        if set(mode) & set("wax+") and isinstance(file, str | os.PathLike):
            record(file, opened.fileno())
        return opened

    old_umask = os.umask(0o022)
    try:
        with (
            mock.patch.object(os, "open", os_open),
            mock.patch.object(builtins, "open", any_open),
            mock.patch.object(io, "open", any_open),
        ):
            yield seen
    finally:
        os.umask(old_umask)


def test_ex1_4_is_never_readable_by_others_not_even_briefly(impl, tmp_path):
    folder = tmp_path / ".kaggle"
    with modes_at_opening(tmp_path) as seen:
        impl.write_kaggle_json(folder, "learner", "0123abcd")
    if os.name == "posix":
        loose = [f"{name} ({stat.filemode(mode)})" for name, mode in seen if mode & 0o077]
        expect_equal(
            loose,
            [],
            what="files others could read at the moment they were opened to write the key",
            hint="a chmod after writing comes too late: create the file with its final mode, "
            "os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), then os.replace it",
        )


def test_ex1_4_replaces_a_readable_old_file(impl, tmp_path):
    old = tmp_path / "kaggle.json"
    old.write_text('{"username": "old", "key": "old"}')
    old.chmod(0o644)
    impl.write_kaggle_json(tmp_path, "learner", "new-key")
    expect_equal(
        json.loads(old.read_text())["key"],
        "new-key",
        what="key after writing over an old kaggle.json",
        hint="replace the old file (os.replace) instead of appending to it",
    )
    expect_equal(
        sorted(os.listdir(tmp_path)),
        ["kaggle.json"],
        what="files left in the folder",
        hint="a temporary file must be renamed to kaggle.json, not left behind",
    )
    if os.name == "posix":
        expect_equal(
            oct(mode_of(old)),
            oct(0o600),
            what="mode after replacing a 0o644 kaggle.json",
            hint="opening the old file keeps its old mode: write a new file with 0o600 and "
            "rename it over the old one",
        )


def test_ex1_4_refuses_an_empty_key(impl, tmp_path):
    for username, key in (("learner", ""), ("", "0123"), ("learner", "  ")):
        expect_raises(
            ValueError,
            impl.write_kaggle_json,
            tmp_path,
            username,
            key,
            what=f"username={username!r}, key={key!r}",
            hint="check both are non-empty after .strip() before writing anything",
        )
    expect_equal(os.listdir(tmp_path), [], what="files written", hint="raise before writing")
