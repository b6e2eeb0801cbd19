"""`solutions.files`: the one atomic writer every file of the course goes through."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from solutions import files


def test_atomic_open_streams_into_the_file(tmp_path):
    path = tmp_path / "deep" / "folder" / "arrays.npz"
    with files.atomic_open(path) as file:
        np.savez(file, x=np.arange(3))
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["arrays.npz"]


def test_a_failing_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with files.atomic_open(path) as file:
            file.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_the_bytes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    files.write_atomic(tmp_path / "a.txt", "text")
    assert events[:2] == ["fsync", "rename"], events


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_mode_is_exact_whatever_the_umask(tmp_path, mode):
    old_umask = os.umask(0o077)
    path = tmp_path / "secret"
    try:
        with files.atomic_open(path, mode=mode) as file:
            file.write(b"key")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_without_a_mode_a_new_file_follows_the_umask(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = files.write_atomic(tmp_path / "plain", b"bytes")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_text_that_cannot_be_encoded_writes_nothing(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        files.write_atomic(path, "bad \ud800")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.txt"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "checkpoint.npz"
    leftover = path.with_name(f".{path.name}.999999999.tmp")  # no such process
    leftover.write_bytes(b"partial")
    files.write_atomic(path, b"whole")
    assert not leftover.exists() and path.read_bytes() == b"whole"
