"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import os
import pathlib


def write_atomic(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Writes `data` to `path` through a temporary file in the same folder and a
    rename: readers see the old file or the new one, never a partial one.

    Creates missing parent folders; removes the temporary file if writing fails.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
