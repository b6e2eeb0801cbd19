"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import glob
import os
import pathlib


def temporary_path(path: str | os.PathLike) -> pathlib.Path:
    """The hidden file an atomic write of `path` goes through: `.<name>.<pid>.tmp` beside it.

    The process id keeps two writers of one file apart, and tells
    `remove_stale_temporaries` whose file it is.
    """
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
    """Deletes the temporaries of `path` that writers which no longer run left behind.

    A write killed midway (SIGKILL, a power cut) never reaches its clean-up,
    and its `.<name>.<pid>.tmp` would stay forever, as large as the file. One
    whose process still runs is kept: it may be writing right now.

    Returns:
      The paths removed.
    """
    path = pathlib.Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _process_runs(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover: this write replaces it
    if os.name != "posix":
        return True  # no cheap, harmless test elsewhere (os.kill would end the process)
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def write_atomic(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Writes `data` to `path` through a temporary file in the same folder and a
    rename: readers see the old file or the new one, never a partial one.

    Creates missing parent folders; removes the temporary file if writing fails,
    and those that killed writers of `path` left behind.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
