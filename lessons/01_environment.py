# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 1: The environment
#
# Before a single weight is downloaded, the fine-tuning notebook settles three
# things: which accelerators JAX will compute on, that TensorFlow (used only to
# resize images) keeps its hands off them, and that Kaggle will recognise us when
# we ask for the gated PaliGemma checkpoint. This lesson does the same, and
# everything in it works on a laptop without a GPU and without a network.
#
# ## What you will learn
#
# - what JAX calls a *device* and a *backend*, and how to ask which ones you have;
# - why TensorFlow must be told to hide the GPUs, and what happens otherwise;
# - how to pretend a CPU is 8 devices, so multi-device code runs on a laptop, and
#   why that setting has to come before JAX starts;
# - where Kaggle credentials come from, and how to store a key so only you can read it.
#
# **Time:** about 30 minutes. Every cell runs in seconds on a laptop CPU.

# %% tags=["setup"]
import json
import os
import pathlib
from collections.abc import Iterable, Mapping

from solutions.environment import (  # constants your solutions will use
    DEVICE_COUNT_FLAG,  # noqa: F401
    KAGGLE_SETTINGS_URL,
    PALIGEMMA_LICENSE_PAGES,
)
from tests.grading import check

# %%
# isort: split
import stat
import subprocess
import sys
import tempfile
import textwrap
import types

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

# %% [markdown]
# ## Devices and backends
#
# JAX compiles every computation with XLA for one *backend*: `cpu`, `gpu` (CUDA or
# ROCm) or `tpu`. A backend offers one or more *devices*, the chips that hold
# arrays and run the compiled code. At start-up JAX picks the best backend it can
# find (TPU, then GPU, then CPU) unless the variable `JAX_PLATFORMS` names one.
#
# Each device is an object with a few useful attributes: `id`, `platform` (the
# backend's name), `device_kind` (the chip's model, such as
# `"NVIDIA H100 80GB HBM3"` or `"TPU v5 lite"`; on a CPU simply `"cpu"`) and
# `process_index` (which host owns it, when several machines work together).

# %%
print("JAX version    :", jax.__version__)
print("default backend:", jax.default_backend())
print("devices        :", jax.devices())
for device in jax.devices():
    print(
        f"  id={device.id}  platform={device.platform}  kind={device.device_kind!r}  "
        f"process={device.process_index}"
    )

# %% [markdown]
# Arrays live on a device. A new array goes to the first device of the default
# backend; `jax.device_put` moves one elsewhere, and a computation runs where its
# inputs are.

# %%
x = jnp.arange(6.0)
print("x lives on:", x.devices())
y = jax.device_put(x, jax.devices()[-1]) * 2
print("y = 2x    :", y, "on", y.devices())

# %% [markdown]
# ### Exercise 1.1: count the devices of each kind
#
# A summary such as `{"NVIDIA A100": 8}` answers "what am I running on?" at a
# glance, and is the first thing worth printing in any training log. Write
# `devices_per_kind`: it takes any sequence of devices (real ones from
# `jax.devices()`, or any objects with a `device_kind` attribute) and counts them
# by `device_kind`, keeping the kinds in the order they first appear.


# %% tags=["exercise"]
def devices_per_kind(devices: Iterable) -> dict[str, int]:
    """How many devices of each kind, e.g. {"cpu": 8} or {"NVIDIA H100 80GB HBM3": 1}.

    Args:
      devices: JAX devices (`jax.devices()`), or anything with a `device_kind` string.
    Returns:
      device kind -> count, kinds in the order they first appear.
    """
    # Hint: a plain dict already remembers the order in which its keys first arrived; what is left
    # is adding one to a count that may not exist yet, without a special case for a new kind.
    raise NotImplementedError("Exercise 1.1")


# %% tags=["check"]
check("ex1_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 1.1</summary>
#
# ```python
# counts[device.device_kind] = counts.get(device.device_kind, 0) + 1
# ```
#
# </details>

# %% [markdown]
# ## TensorFlow stays off the GPU
#
# The course resizes images with `tf.image.resize`, exactly as big_vision does,
# so TensorFlow is imported next to JAX. Both want the GPU: JAX reserves 75% of
# its memory at the first operation (`XLA_PYTHON_CLIENT_MEM_FRACTION` changes
# that), and TensorFlow, the first time it touches a GPU, maps nearly all of
# what is left. Whichever comes second runs out of memory, often with an error
# that does not mention the other one.
#
# TensorFlow's work here is small and runs fine on the CPU, so the fix is to hide
# the GPUs from it before it uses them: `tf.config.set_visible_devices([], "GPU")`.
# It must happen before TensorFlow's first operation, because the device list is
# fixed from then on (`solutions.preprocess` does it as it imports TensorFlow).
# The course installs `tensorflow-cpu`, which has no GPU support at all; the
# line still matters when a full `tensorflow` is installed, as on Colab.
# (Importing TensorFlow takes a few seconds and prints a line or two about
# oneDNN on stderr; they are harmless.)

# %%
import tensorflow as tf  # noqa: E402 (imported here, where it is explained)

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError as err:  # a second run of this cell: TensorFlow is already initialised
    print("TensorFlow's devices are already fixed:", err)
print("TensorFlow", tf.__version__)
print("GPUs on this machine, as TensorFlow sees them:", tf.config.list_physical_devices("GPU"))
print("devices TensorFlow will use                  :", tf.config.get_visible_devices())

# %% [markdown]
# On a GPU, this cell shows how much memory JAX holds. It runs only when JAX's
# backend is a GPU.

# %%
if jax.default_backend() == "gpu":
    stats = jax.devices()[0].memory_stats()
    print(f"JAX may use {stats['bytes_limit'] / 2**30:.1f} GiB of this GPU;")
    print(f"arrays occupy {stats['bytes_in_use'] / 2**20:.1f} MiB of it now.")
else:
    print(f"Skipped: JAX's backend is {jax.default_backend()!r}, not a GPU.")

# %% [markdown]
# ## Eight devices on one CPU
#
# Real fine-tuning spreads a batch over several accelerators (lesson 4). To write
# and test that code on a laptop, XLA can split the CPU into several devices:
# the flag `--xla_force_host_platform_device_count=8` in the variable `XLA_FLAGS`
# turns one CPU into 8 devices. They share the same cores, so nothing gets
# faster, but every sharding decision is exercised exactly as on 8 GPUs.
#
# `XLA_FLAGS` often holds other flags already (dump folders, debugging options),
# so setting it means editing a space-separated list without losing what is there.
#
# ### Exercise 1.2: set the device count in XLA_FLAGS
#
# Write `xla_flags_with_device_count(flags, count)`: return `flags` with the
# device-count flag set to `count`. Drop any earlier device-count flag, keep
# every other flag in its order, put the new one last, separate flags by single
# spaces. A count below 1 is a mistake: raise `ValueError`.


# %% tags=["exercise"]
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
    # Hint: treat XLA_FLAGS as a list of words: keep every word whose name (the part before `=`) is
    # not DEVICE_COUNT_FLAG, add the new flag, join them back. Splitting with no argument already
    # ignores runs of spaces.
    raise NotImplementedError("Exercise 1.2")


# %% tags=["check"]
check("ex1_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 1.2</summary>
#
# ```python
# kept = [flag for flag in flags.split() if flag.split("=")[0] != DEVICE_COUNT_FLAG]
# return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])
# ```
#
# </details>

# %% [markdown]
# XLA reads `XLA_FLAGS` once, when JAX creates its CPU backend: at the first
# `jax.devices()` or the first array. This kernel's JAX started long ago (the
# cells above made arrays), so setting the variable here would change nothing.
# A fresh Python process started with the variable in its environment gets 8
# devices. The script below shards a 16-element array over all devices, two
# elements each, and reports which device holds which elements. `JAX_PLATFORMS=cpu`
# makes it use the CPU even on a machine with a GPU, since the flag splits only the CPU.

# %%
SHARD_SCRIPT = """
import json
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

mesh = jax.make_mesh((jax.device_count(),), ("data",))
x = jax.device_put(jnp.arange(16), NamedSharding(mesh, PartitionSpec("data")))
print(json.dumps({
    "kinds": [device.device_kind for device in jax.devices()],
    "shards": [[shard.device.id, shard.data.tolist()] for shard in x.addressable_shards],
}))
"""


def run_python(script: str, extra_env: dict[str, str]) -> dict:
    """Runs `script` in a fresh Python process with `extra_env` added; returns its JSON output."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra_env}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


flags = xla_flags_with_device_count(os.environ.get("XLA_FLAGS", ""), 8)
print("XLA_FLAGS =", flags)
simulated = run_python(SHARD_SCRIPT, {"XLA_FLAGS": flags})
print("the new process sees", len(simulated["kinds"]), "devices")
for device_id, values in simulated["shards"]:
    print(f"  device {device_id} holds {values}")

# %% [markdown]
# And the trap: setting the variable *after* JAX has started does nothing. No
# error, no warning, just one device.

# %%
TOO_LATE_SCRIPT = f"""
import json, os
import jax
before = jax.device_count()
os.environ["XLA_FLAGS"] = {flags!r}
print(json.dumps({{"before": before, "after": jax.device_count()}}))
"""
print("flag set after JAX started:", run_python(TOO_LATE_SCRIPT, {}))

# %% [markdown]
# The picture: on the left, what each process had to compute on; on the right,
# the 16 elements of the sharded array, coloured by the device that holds them.
# Each device holds a contiguous block: that is what `PartitionSpec("data")`
# asks for along the array's only axis.

# %%
simulated_devices = [types.SimpleNamespace(device_kind=kind) for kind in simulated["kinds"]]
labels, counts, colours = [], [], []
for origin, devices, colour in (
    ("this kernel", jax.devices(), "tab:gray"),
    ("with XLA_FLAGS", simulated_devices, "tab:blue"),
):
    for kind, count in devices_per_kind(devices).items():
        labels.append(f"{origin}\n{kind}")
        counts.append(count)
        colours.append(colour)

owner = np.zeros(16, int)
for device_id, values in simulated["shards"]:
    owner[values] = device_id

fig, (left, right) = plt.subplots(
    1, 2, figsize=(11, 2.8), gridspec_kw={"width_ratios": [1, 2.6]}, layout="constrained"
)
left.bar(labels, counts, color=colours)
left.set_ylabel("devices")
left.set_title("devices per kind")
right.imshow(owner[None, :], cmap="tab10", vmin=0, vmax=9, aspect="auto")
for index, device_id in enumerate(owner):
    right.text(index, 0, f"{index}\ndev {device_id}", ha="center", va="center", fontsize=8)
right.set_yticks([])
right.set_xticks([])
right.set_title("jnp.arange(16) sharded over 8 CPU devices")
plt.show()

# %% [markdown]
# ## Kaggle credentials
#
# The PaliGemma checkpoints live on Kaggle and are *gated*: Kaggle hands them only
# to an account that has accepted the license on the model's page, and only to a
# program that proves it acts for that account with an API key. You create the key
# on your Kaggle settings page ("Create New Token"), which downloads `kaggle.json`:
# `{"username": "...", "key": "..."}`.
#
# `kagglehub`, the library that downloads the checkpoint in lesson 2, finds the
# key in one of two places, in this order:
#
# 1. the variables `KAGGLE_USERNAME` and `KAGGLE_KEY` (the fine-tuning notebook sets
#    them from Colab's secrets), used when both are non-empty;
# 2. the file `kaggle.json` in `~/.kaggle/`, or in the folder named by
#    `KAGGLE_CONFIG_DIR` when that is set.
#
# (Recent versions also read a newer kind of token from `KAGGLE_API_TOKEN`; the
# course sticks to the classic username and key, which every version accepts.)
#
# ### Exercise 1.3: which credentials will be used?
#
# Write `find_kaggle_credentials(environ, home)` to answer that question without
# any network: return `"environment"` for case 1, the path of `kaggle.json` as a
# string for case 2, and otherwise raise `FileNotFoundError` with a message that
# tells a beginner exactly what to do: name both variables, the full path where
# the file was looked for, the page that creates a token (`KAGGLE_SETTINGS_URL`)
# and the license pages (`PALIGEMMA_LICENSE_PAGES`). Taking the environment and
# the home folder as arguments keeps the function pure, so it can be tested
# with made-up ones.


# %% tags=["exercise"]
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
    # Hint: a missing variable and an empty one mean the same here, and both are falsy. Decide the
    # folder first (KAGGLE_CONFIG_DIR wins over home/.kaggle), then look for the file in it; the
    # error message reuses that same path.
    raise NotImplementedError("Exercise 1.3")


# %% tags=["check"]
check("ex1_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 1.3</summary>
#
# ```python
# folder = pathlib.Path(environ.get("KAGGLE_CONFIG_DIR") or home / ".kaggle")
# path = folder / "kaggle.json"
# ```
#
# </details>

# %% [markdown]
# Here is the answer for this machine. The key itself is never printed: a
# notebook's output is easily shared, and a key in it is a leaked key.

# %%
try:
    print("Kaggle credentials come from:", find_kaggle_credentials(os.environ, pathlib.Path.home()))
except FileNotFoundError as err:
    print(textwrap.fill(str(err), 100))

# %% [markdown]
# ### Exercise 1.4: store the key so only you can read it
#
# On a shared machine, `kaggle.json` must be readable by its owner only: mode
# `0o600` (`-rw-------`). Kaggle's own command-line tool warns about anything
# looser. Changing the mode *after* writing leaves a moment in which the key is
# readable by everyone; the safe way creates the file with mode `0o600` from the
# start. Write `write_kaggle_json(folder, username, key)`:
#
# - refuse an empty (or blank) username or key with `ValueError`, before writing;
# - create `folder` if needed, with mode `0o700`;
# - write the JSON to a temporary file in `folder`, created with
#   `os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)`, and rename it to
#   `kaggle.json` with `os.replace` (an old kaggle.json, whatever its mode, is
#   replaced by the new file, and a crash leaves the old one whole);
# - return the path of `kaggle.json`.


# %% tags=["exercise"]
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
    # Hint: os.open hands back a bare file descriptor, not a Python file object: json.dump needs the
    # second. Whatever goes wrong, no temporary file may stay behind.
    raise NotImplementedError("Exercise 1.4")


# %% tags=["check"]
check("ex1_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 1.4</summary>
#
# ```python
# fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
# try:
#     with os.fdopen(fd, "w", encoding="utf-8") as file:
#         json.dump({"username": username, "key": key}, file)
#     os.replace(tmp, path)
# finally:
#     tmp.unlink(missing_ok=True)
# ```
#
# </details>

# %% [markdown]
# Try it on a made-up key in a temporary folder (your real `~/.kaggle` is not
# touched), then let `find_kaggle_credentials` find it through `KAGGLE_CONFIG_DIR`.

# %%
with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp) / ".kaggle"
    path = write_kaggle_json(folder, "learner", "not-a-real-key")
    print(stat.filemode(folder.stat().st_mode), folder)
    print(stat.filemode(path.stat().st_mode), path)
    environ = {"KAGGLE_CONFIG_DIR": str(folder)}
    print("found:", find_kaggle_credentials(environ, pathlib.Path(tmp) / "nobody"))

# %% [markdown]
# To set up your own key for lesson 2: create a token at the settings page, then
# run `write_kaggle_json(pathlib.Path.home() / ".kaggle", "<your name>", "<your key>")`
# once (or move the downloaded file to `~/.kaggle/kaggle.json` and
# `chmod 600` it). Then accept the license on the model page with the same account.

# %%
print("create a token at:", KAGGLE_SETTINGS_URL)
for page in PALIGEMMA_LICENSE_PAGES:
    print("accept the license at:", page)

# %% [markdown]
# ## What you built
#
# - `devices_per_kind`: what JAX will compute on, in one line of a log;
# - `xla_flags_with_device_count`: 8 CPU devices for testing multi-device code,
#   set before JAX starts or not at all;
# - `find_kaggle_credentials`: kagglehub's search order, with an error that says
#   what to do;
# - `write_kaggle_json`: a secret written with the right mode from its first byte.
#
# And one line that is not a function: `tf.config.set_visible_devices([], "GPU")`,
# which keeps TensorFlow from taking the GPU memory JAX needs.
#
# ## Go further
#
# 1. Run the sharding script with `count=3`. What does `jax.device_put` say, and why
#    can 16 elements not be split over 3 devices this way?
# 2. `jax.devices()` and `jax.local_devices()` give the same list here. On a TPU pod
#    with 4 hosts they differ: how, and which one does a data loader need?
# 3. Set `XLA_PYTHON_CLIENT_PREALLOCATE=false` on a GPU machine and watch
#    `memory_stats()` after creating a large array. What do you gain, and what can
#    you lose?
# 4. Why is taking `environ` and `home` as arguments better for testing than reading
#    `os.environ` and `Path.home()` inside `find_kaggle_credentials`?
