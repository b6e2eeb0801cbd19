"""Lesson 1: the machine the course runs on, checked before anything is downloaded.

Four questions, each answered without a network:

    which accelerators does JAX see?         devices_per_kind(jax.devices())
    how do I simulate 8 devices on a CPU?    XLA_FLAGS=xla_flags_with_device_count(flags, 8)
    where will Kaggle's key come from?       find_kaggle_credentials(os.environ, Path.home())
    how do I store that key safely?          write_kaggle_json(folder, username, key)

XLA reads `XLA_FLAGS` once, when JAX starts its CPU backend, so the device count
must be in the environment before the first `jax.devices()` (or any array) of
a process. (TensorFlow, used only for image ops, is kept off the GPUs where it
is imported: `solutions.preprocess`.)
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Mapping

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
KAGGLE_SETTINGS_URL = "https://www.kaggle.com/settings"
# Both model families are gated: each needs its license accepted once per Kaggle account.
PALIGEMMA_LICENSE_PAGES = (
    "https://www.kaggle.com/models/google/paligemma",
    "https://www.kaggle.com/models/google/paligemma-2",
)


def devices_per_kind(devices: Iterable) -> dict[str, int]:
    """How many devices of each kind, e.g. {"cpu": 8} or {"NVIDIA H100 80GB HBM3": 1}.

    Args:
      devices: JAX devices (`jax.devices()`), or anything with a `device_kind` string.
    Returns:
      device kind -> count, kinds in the order they first appear.
    """
    counts: dict[str, int] = {}
    for device in devices:
        counts[device.device_kind] = counts.get(device.device_kind, 0) + 1
    return counts


def xla_flags_with_device_count(flags: str, count: int) -> str:
    """`flags` (the value of XLA_FLAGS) with the host device count set to `count`.

    XLA_FLAGS holds space-separated `--name=value` flags. Any earlier
    `--xla_force_host_platform_device_count=...` is dropped, every other flag is
    kept in its order, and `--xla_force_host_platform_device_count=<count>`
    goes last. E.g. ("--xla_dump_to=/tmp/x", 8) ->
    "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8".

    Raises:
      ValueError: `count` is not a positive int.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r}: the number of simulated devices must be an int >= 1")
    kept = [flag for flag in flags.split() if flag.split("=")[0] != DEVICE_COUNT_FLAG]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])


def find_kaggle_credentials(environ: Mapping[str, str], home: pathlib.Path) -> str:
    """Says which Kaggle credentials kagglehub will use, looking only at variables and files.

    Kagglehub looks in this order:
      1. the variables KAGGLE_USERNAME and KAGGLE_KEY, when both are set and non-empty;
      2. the file kaggle.json in the folder $KAGGLE_CONFIG_DIR if that is set,
         else in `home`/.kaggle.

    Args:
      environ: the environment variables (`os.environ`).
      home: the user's home folder (`pathlib.Path.home()`).
    Returns:
      "environment" for 1, or the path of the kaggle.json file for 2 (a str).
    Raises:
      FileNotFoundError: neither is there. The message names both ways to provide
        the key, the page that creates one, and the license pages to accept.
    """
    username, key = environ.get("KAGGLE_USERNAME"), environ.get("KAGGLE_KEY")
    if username and key:
        return "environment"
    folder = pathlib.Path(environ.get("KAGGLE_CONFIG_DIR") or home / ".kaggle")
    path = folder / "kaggle.json"
    if path.is_file():
        return str(path)
    half_set = ""
    if username or key:
        present, missing = ("KAGGLE_USERNAME", "KAGGLE_KEY")[:: 1 if username else -1]
        half_set = f" ({present} is set but {missing} is not: both are needed)"
    raise FileNotFoundError(
        f"No Kaggle credentials: neither KAGGLE_USERNAME and KAGGLE_KEY{half_set} nor {path}. "
        f"Create an API token at {KAGGLE_SETTINGS_URL} ('Create New Token'), then either set "
        f"both variables or save the token as {path} (see write_kaggle_json). Also accept the "
        f"license with that account at {' and '.join(PALIGEMMA_LICENSE_PAGES)}."
    )


def write_kaggle_json(folder: pathlib.Path, username: str, key: str) -> pathlib.Path:
    """Saves a Kaggle API key as `folder`/kaggle.json, readable by its owner only.

    The file holds {"username": ..., "key": ...} and has mode 0o600 from the
    moment it exists: it is written under a temporary name created with that
    mode and then renamed over any older kaggle.json, so the key is never
    readable by other users, not even briefly, and a crash leaves the old file
    whole. A missing `folder` is created with mode 0o700. (On Windows the
    modes are ignored; the file is still written.)

    Returns:
      The path of kaggle.json.
    Raises:
      ValueError: `username` or `key` is empty.
    """
    if not username.strip() or not key.strip():
        raise ValueError("write_kaggle_json: username and key must both be non-empty")
    folder = pathlib.Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    tmp = folder / f".kaggle.json.{os.getpid()}.tmp"
    # O_EXCL: a file already there (perhaps someone else's) is never reused with its old mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump({"username": username, "key": key}, file)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
