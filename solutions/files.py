"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: readers see the old file or the whole new
    one, never a partial one, even after a crash or a power cut.

        with atomic_open("runs/x/checkpoint.npz") as file:
            np.savez(file, **arrays)

    The bytes go to a temporary file beside `path` (`temporary_path`), reach the disk
    (fsync), and only then are renamed over `path`. If the block raises, the temporary
    file is removed and `path` is left as it was. Missing parent folders are made;
    temporaries that killed writers of `path` left behind are removed first.

    Args:
      path: the file to write.
      mode: its permission bits, e.g. 0o600 for a secret, set from the moment the
        temporary file exists; default: a new file's usual mode (0o666 less the umask).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # our own pid's leftover too, so O_EXCL below can succeed
    tmp = temporary_path(path)
    # O_EXCL: a file already there (perhaps someone else's) is never reused with its old mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(file.fileno(), mode)  # exactly `mode`, whatever the umask
            yield file
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_folder(folder: pathlib.Path) -> None:
    """Makes a rename in `folder` survive a power cut (POSIX: fsync the directory)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Writes `data` (a str is written as UTF-8) to `path` atomically (`atomic_open`):
    readers see the old file or the new one, never a partial one.

    Args:
      path: the file to write; missing parent folders are made.
      data: its whole contents.
    Returns:
      `path` as a `pathlib.Path`.
    Raises:
      UnicodeEncodeError: a str that is not valid text (a lone surrogate); nothing written.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data  # fails before any write
    with atomic_open(path) as file:
        file.write(payload)
    return pathlib.Path(path)


@contextlib.contextmanager
def atomic_folder(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """A folder to fill that appears at `out_dir` only whole: the files are written into a
    hidden temporary folder beside it, which is renamed to `out_dir` when the block ends
    without error (an old `out_dir` is set aside first, then deleted), and removed if not.

    Raises:
      FileExistsError: `out_dir` exists and `overwrite` is False.
    """
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp_dir
        if out_dir.exists():
            old_dir = tmp_dir.with_name(tmp_dir.name + ".old")
            out_dir.rename(old_dir)
            tmp_dir.rename(out_dir)
            shutil.rmtree(old_dir)
        else:
            tmp_dir.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
