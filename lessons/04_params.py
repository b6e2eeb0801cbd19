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
# # Lesson 4: Parameters: loading, precision and sharding
#
# A model is code plus numbers. Lesson 3 built the code; this lesson is about the
# numbers: how a PaliGemma checkpoint stores its three billion parameters on disk,
# how they become the nested tree the model reads, which of them we train, in which
# precision they live, and how several devices can share them.
#
# ## What you will learn
#
# - what is inside a big_vision `.npz` checkpoint, and how flat names such as
#   `llm/layers/attn/q_einsum/w` become a tree and back;
# - why bfloat16 arrays come out of `np.load` as `|V2`, and how to get them back;
# - how many bytes fine-tuning really needs: frozen parameters in 16 bits, trained
#   ones in float32, and what `capstone.tools.memory` measures for one training step;
# - how a checkpoint trained at 224 pixels serves 448 (resampling position embeddings);
# - how FSDP splits every big array across devices, and how to load a model one
#   parameter at a time.
#
# **Time:** about 45 minutes. The cells run in under a minute on a laptop CPU: the
# 3B model appears only as shapes (`jax.eval_shape`), the arrays we load are the
# course's tiny PaliGemma.

# %% tags=["setup"]
import math
from collections.abc import Mapping, Sequence

import numpy as np

from tests.grading import check

# %%
# isort: split
import os
import pathlib
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import solutions
from capstone.tools.memory import GIB, training_step_memory
from solutions.checkpoints import TINY_ASSETS, load_tiny
from solutions.configs import CHECKPOINTS
from solutions.downloads import checkpoint_on_disk
from solutions.model import Model, count_params, param_shapes
from solutions.params import CheckpointMismatchError, load_params, param_summary, save_params
from solutions.sharding import infer_param_specs, param_names
from solutions.train import cast_params, trainable_mask

# %% [markdown]
# ## What is inside a checkpoint
#
# big_vision writes checkpoints with plain numpy: `np.savez(path, **arrays)`. An
# `.npz` file is a zip archive holding one `.npy` file per array, and each array is
# named by its place in the parameter tree, parts joined by `/`. The shipped tiny
# model is such a file:

# %%
TINY_CHECKPOINT = TINY_ASSETS / "params.npz"
with zipfile.ZipFile(TINY_CHECKPOINT) as archive:
    members = archive.infolist()
print(f"{TINY_CHECKPOINT.name}: {len(members)} arrays, {TINY_CHECKPOINT.stat().st_size:,} bytes")
for member in members[:6]:
    print(f"  {member.filename:60} {member.file_size:>9,} bytes")
print("  ...")

# %% [markdown]
# Each `.npy` member starts with a short text header (dtype and shape) followed by
# the raw bytes. Reading only the headers tells us every name, shape and dtype
# without loading a single number: the same cell takes milliseconds on a 6 GB file.


# %%
def npz_headers(path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, stored dtype)} of every array in an .npz, reading headers only."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            with archive.open(member) as npy:
                major, _ = np.lib.format.read_magic(npy)
                read = np.lib.format.read_array_header_1_0
                if major != 1:
                    read = np.lib.format.read_array_header_2_0
                shape, _, dtype = read(npy)
            headers[member.filename.removesuffix(".npy")] = (shape, dtype)
    return headers


tiny_headers = npz_headers(TINY_CHECKPOINT)
for name in list(tiny_headers)[-5:]:
    shape, dtype = tiny_headers[name]
    print(f"{name:45} {dtype.str:5} {shape}")

# %% [markdown]
# Every dtype reads `|V2`: "raw records of 2 bytes". The tiny model is stored in
# **bfloat16**, and numpy has no bfloat16 type of its own, so `np.save` writes the
# bytes with this anonymous dtype. bfloat16 is simply the top half of a float32
# (same sign and exponent, 7 instead of 23 mantissa bits), so the records read
# back exactly once viewed with the right dtype, `ml_dtypes.bfloat16`, which is
# what JAX uses:

# %%
with np.load(TINY_CHECKPOINT) as npz:
    raw = npz["llm/final_norm/scale"]
as_bfloat16 = raw.view(jnp.bfloat16)
print("stored:", raw.dtype, raw[:3])
print("viewed:", as_bfloat16.dtype, as_bfloat16[:3])

value = np.float32(as_bfloat16[0])
top_half = value.view(np.uint32) >> 16
print(f"float32 {value} has bits {value.view(np.uint32):032b}; top 16: {top_half:016b}")
print(f"the stored record:                               {raw[:1].view(np.uint16)[0]:016b}")

# %% [markdown]
# ## From flat names to a tree, and back
#
# The model wants a nested dict, `params["llm"]["layers"]["attn"]["q_einsum"]["w"]`;
# the file has flat names. Converting between the two is the heart of loading and
# saving.
#
# ### Exercise 4.1: flatten a parameter tree
#
# Write `flatten_params`: a nested dict of arrays becomes a flat dict whose keys
# join the path with `/`. Anything that is not a mapping is a leaf, kept as it is.


# %% tags=["exercise"]
def flatten_params(tree: Mapping, prefix: str = "") -> dict:
    """Nested dict -> flat dict keyed by slash names.

    `{"img": {"head": {"bias": b}}}` becomes `{"img/head/bias": b}`, and with
    `prefix="params"` it becomes `{"params/img/head/bias": b}`. Leaves (arrays,
    `jax.ShapeDtypeStruct`s: anything that is not a `Mapping`) are kept as they are.

    Args:
      tree: nested mappings whose leaves are arrays.
      prefix: put before every name (with a `/`); "" for none.
    Returns:
      dict {slash name: leaf}.
    """
    # Hint: the tree is nested, so the function calls itself: a child that is a Mapping is flattened
    # with its own name as the prefix, anything else is a leaf stored under its name. Mind the first
    # level, where there is no prefix to join.
    raise NotImplementedError("Exercise 4.1")


# %% tags=["check"]
check("ex4_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 4.1</summary>
#
# ```python
# name = f"{prefix}/{key}" if prefix else key
# ```
#
# </details>

# %% [markdown]
# ### Exercise 4.2: rebuild the tree
#
# Write `unflatten_params`, the inverse: split each name on `/` and create the
# nested dicts along the way.


# %% tags=["exercise"]
def unflatten_params(flat: Mapping) -> dict:
    """Flat dict keyed by slash names -> nested dict; undoes `flatten_params`.

    `{"img/head/bias": b, "img/head/kernel": k}` becomes
    `{"img": {"head": {"bias": b, "kernel": k}}}`.

    Args:
      flat: {slash name: leaf}.
    Returns:
      The nested dict, leaves kept as they are.
    """
    # Hint: each name is a path: walk down from the root one key at a time, creating the dicts that
    # do not exist yet, and put the value in the last one.
    raise NotImplementedError("Exercise 4.2")


# %% tags=["check"]
check("ex4_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 4.2</summary>
#
# ```python
# for name, value in flat.items():
#     *parents, leaf = name.split("/")
#     node = tree
#     for key in parents:
#         node = node.setdefault(key, {})
#     node[leaf] = value
# ```
#
# </details>

# %% [markdown]
# Together they turn the file's flat arrays into the model's tree. Viewing the raw
# records as bfloat16 on the way, the tree is ready for `model.apply`:

# %%
with np.load(TINY_CHECKPOINT) as npz:
    flat = {name: npz[name].view(jnp.bfloat16) for name in npz.files}
tree = unflatten_params(flat)
print("top level:", list(tree), "| llm:", list(tree["llm"]))
print("round trip keeps every name:", flatten_params(tree).keys() == flat.keys())

# %% [markdown]
# ## `load_params` and `save_params`
#
# `solutions.params` wraps all of this, with the care a real checkpoint needs:
#
# - `save_params(params, path)` writes big_vision's layout, bfloat16 included, to
#   a temporary file first and renames it at the end, so a crash never leaves half
#   a checkpoint behind;
# - `load_params(path)` reads it back and views `|V2` as bfloat16;
# - training checkpoints keep the parameters under `params/`, next to optimizer
#   state: loading keeps only `params/...` and drops the prefix;
# - `path.npz:img` returns only one sub-tree.

# %%
tiny_model, resolution, tiny_params, tokenizer = load_tiny()
workdir = pathlib.Path(tempfile.mkdtemp())

save_params(tiny_params, workdir / "copy.npz")
copy = load_params(workdir / "copy.npz")
print("dtype after a round trip:", copy["llm"]["final_norm"]["scale"].dtype)

# A training checkpoint: parameters under params/, something else beside them.
training_arrays = flatten_params(tiny_params, prefix="params")
training_arrays["opt/step"] = np.array(100)
np.savez(workdir / "training.npz", **training_arrays)
print("params/ prefix dropped:", list(load_params(workdir / "training.npz")))
print("only the image tower:", list(load_params(f"{workdir / 'copy.npz'}:img")))

# %% [markdown]
# Most important, `load_params(path, like=shapes)` checks every name and shape
# against the model before anything else happens, and explains what does not fit.
# Here the tiny checkpoint is loaded into a model that has one decoder layer too
# many:

# %%
wrong_model = Model(img=tiny_model.img, llm={**tiny_model.llm, "depth": 4})
try:
    load_params(TINY_CHECKPOINT, like=param_shapes(wrong_model, resolution))
except CheckpointMismatchError as error:
    print(error)

# %% [markdown]
# ## The names of a real checkpoint
#
# The 3B checkpoints follow the same layout. `param_shapes` gives the tree the model
# expects, without allocating it; here are its ten biggest arrays. The decoder's
# feed-forward and the 257,152-row embedding table dominate.

# %%
pg1 = CHECKPOINTS["paligemma-3b-pt-224"]
real_model = Model(**pg1.config)
real_shapes = param_shapes(real_model, pg1.resolution)
rows = sorted(param_summary(real_shapes), key=lambda row: -math.prod(row[1]))
print(f"{'name':70} {'shape':>24} {'millions':>9}")
for name, shape, _ in rows[:10]:
    print(f"{name:70} {str(shape):>24} {math.prod(shape) / 1e6:9.1f}")
print(f"{len(rows)} arrays, {count_params(real_shapes):,} parameters")

# %% [markdown]
# With the real checkpoint on disk (lesson 2 downloads it), the headers alone show
# that the file and the model agree, name for name and shape for shape.

# %%
real_path = checkpoint_on_disk(pg1.name)
if real_path is None:
    print(f"{pg1.name} is not on disk: skipped comparing its headers with the model's shapes.")
else:
    headers = npz_headers(real_path)
    names = {name.removeprefix("params/"): shape for name, (shape, _) in headers.items()}
    expected = {name: shape for name, shape, _ in param_summary(real_shapes)}
    print(f"{real_path.name}: {len(names)} arrays; match the model: {names == expected}")

# %% [markdown]
# ## What trains: the trainable mask
#
# The reference fine-tuning recipe trains only the decoder's attention weights
# (`llm/layers/attn/...`) and freezes everything else. That is enough to teach the
# model a new captioning style, and it is what fits a 16 GB GPU.
# `solutions.train.trainable_mask` marks the trained parameters by name:

# %%
total = count_params(real_shapes)
for strategy in ("attn", "llm", "all"):
    mask = trainable_mask(real_shapes, strategy)
    trained = sum(
        x.size
        for x, t in zip(jax.tree.leaves(real_shapes), jax.tree.leaves(mask), strict=True)
        if t
    )
    print(f"trainable={strategy!r:7} {trained / 1e6:8.1f} M parameters = {trained / total:6.1%}")

# %% [markdown]
# ## Precision: 16 bits for the frozen, 32 for the trained
#
# A parameter in float32 takes 4 bytes; in bfloat16 (or float16) 2. The recipe keeps
# frozen parameters in 16 bits, since they are only read, and trained ones in
# float32, since small updates added to a bfloat16 number would round away. Plain
# SGD keeps no optimizer state, and gradients exist only for the trained
# parameters. The arithmetic for PaliGemma 1 3B:

# %%
attn_mask = trainable_mask(real_shapes, "attn")
trained = sum(
    x.size
    for x, t in zip(jax.tree.leaves(real_shapes), jax.tree.leaves(attn_mask), strict=True)
    if t
)
frozen = total - trained
plans = {
    "everything float32": total * 4,
    "frozen 16-bit, attention float32": frozen * 2 + trained * 4,
    "  + float32 gradients of attention": frozen * 2 + trained * 4 + trained * 4,
}
for label, size in plans.items():
    print(f"{label:38} {size / GIB:6.2f} GiB")

# %% [markdown]
# Activations come on top: they depend on the batch and the sequence length.
# `capstone.tools.memory` compiles one real training step for abstract inputs and asks
# XLA how much memory the program needs, without allocating any of it
# (a few seconds on a CPU):

# %%
report = training_step_memory(pg1.config, pg1.resolution, batch_size=8, seqlen=128)
parts = {
    "parameters": report["params"],
    "batch": report["batch"],
    "temporaries\n(activations, gradients)": report["temp"],
    "peak": report["peak"],
}
plt.figure(figsize=(6, 3))
plt.barh(list(parts), [size / GIB for size in parts.values()])
plt.axvline(15, color="red", linestyle="--", label="a 16 GB T4 (15 GiB usable)")
plt.gca().invert_yaxis()
plt.xlabel("GiB")
plt.title(f"one training step of {pg1.name}, batch 8, 128 tokens")
plt.legend(loc="lower right")
plt.show()

# %% [markdown]
# On one device, `cast_params` applies this plan while placing the parameters:
# leaf by leaf, trained ones to float32, frozen ones to bfloat16.

# %%
placed = cast_params(tiny_params, trainable_mask(tiny_params, "attn"))
for name, x in list(zip(param_names(placed), jax.tree.leaves(placed), strict=True))[-8:]:
    print(f"{name:45} {x.dtype}")

# %% [markdown]
# ## Another resolution: resampling the position embedding
#
# Every parameter of PaliGemma is independent of the image size except one: the
# image tower's position embedding `img/pos_embedding` `[1, N, D]` holds one vector
# per patch of the grid, 16 x 16 = 256 at 224 pixels. At 448 pixels the grid is
# 32 x 32. To start a 448 model from a 224 checkpoint, treat the embedding as a
# 16 x 16 image with D channels and resize it to 32 x 32 with bilinear
# interpolation, the corner cells staying where they are ("align corners"): new
# cell `k` of `M` along an axis sits at old coordinate `k (n − 1) / (M − 1)`,
# between two old cells, and mixes them by its distance to each.
#
# ### Exercise 4.3: resample a position embedding
#
# Write `resample_posemb`. It works in numpy (loading happens on the host).


# %% tags=["exercise"]
def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    """Resizes a learned position embedding for another image resolution.

    The N tokens are a sqrt(N) x sqrt(N) grid of patches, row by row; each of the
    D channels is resized as an image with bilinear interpolation, the corners of
    the old and new grids lining up: a constant grid stays constant and a linear
    ramp stays the same ramp.

    Args:
      posemb: float[1, N, D] with N a square number.
      num_tokens: M, the new number of tokens, a square number.
    Returns:
      float[1, M, D] of the same dtype (computed in float32).
    Raises:
      ValueError: N or M is not a square number.
    """
    # Hint: with the corners aligned, new position k along an axis sits at old coordinate k * (n -
    # 1) / (m - 1): mix the two old rows around it by the fractional part. The interpolation is
    # separable, so resize one axis of the grid, then the other.
    raise NotImplementedError("Exercise 4.3")


# %% tags=["check"]
check("ex4_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 4.3</summary>
#
# ```python
# coords = np.linspace(0, n - 1, m)
# below = np.floor(coords).astype(int)
# above = np.minimum(below + 1, n - 1)
# weight = coords - below  # mix: take(grid, below) * (1 - w) + take(grid, above) * w
# ```
#
# </details>

# %% [markdown]
# The tiny model's position embedding is a 3 x 3 grid (96 pixels, 32-pixel
# patches). Resampled to 6 x 6, as a 192-pixel model would need, each channel
# keeps its picture, only finer:

# %%
posemb = np.asarray(tiny_params["img"]["pos_embedding"], np.float32)
side = math.isqrt(posemb.shape[1])
larger = resample_posemb(posemb, (2 * side) ** 2)
print("before:", posemb.shape, " after:", larger.shape)

figure, axes = plt.subplots(2, 4, figsize=(9, 4.6))
for column, channel in enumerate((0, 1, 2, 3)):
    for row, (grid, grid_side) in enumerate(((posemb, side), (larger, 2 * side))):
        axes[row, column].imshow(grid[0, :, channel].reshape(grid_side, grid_side))
        axes[row, column].set_title(f"channel {channel}, {grid_side} x {grid_side}", fontsize=8)
        axes[row, column].axis("off")
plt.show()

# %% [markdown]
# `load_params(path, like=shapes)` does this by itself when the checkpoint's grid
# and the model's differ, as it appends fresh rows to the embedding table when the
# model's vocabulary is larger.
#
# ## Sharding: one model, several devices
#
# On one GPU every array lives whole on that device. With several, JAX can split
# an array into slices, one per device. A **mesh** names the devices, here a single
# axis `"data"` over all of them, and a `PartitionSpec` says which array dimension
# goes along which mesh axis: `PartitionSpec(None, "data")` splits the second
# dimension across the devices and keeps the first whole.
#
# The reference recipe uses **FSDP** (fully sharded data parallel): *every* big
# array is split over all devices, each device keeping 1/N of it; when a layer runs,
# `jax.jit` gathers the full weight for a moment, and the batch is split the same N
# ways. Parameter memory per device falls by N. The rule per array: split its
# largest dimension that divides evenly by N; if none does, keep a full copy on each
# device (replicate). (Arrays under 4 MiB are replicated anyway: gathering them
# costs more than it saves.)
#
# ### Exercise 4.4: which dimension to split
#
# Write `fsdp_axis`.


# %% tags=["exercise"]
def fsdp_axis(shape: Sequence[int], num_shards: int) -> int | None:
    """The dimension FSDP splits: the largest one divisible by `num_shards`.

    Ties go to the earlier dimension. None when no dimension divides evenly
    (the array is then replicated). E.g. `fsdp_axis((26, 2304, 9216), 8) == 2`.

    Args:
      shape: the array's shape.
      num_shards: the number of devices that share the array.
    Returns:
      The index of the dimension to split, or None.
    """
    # Hint: first the candidates (the dimensions that split evenly), then the best of them. What key
    # makes a tie go to the earlier dimension?
    raise NotImplementedError("Exercise 4.4")


# %% tags=["check"]
check("ex4_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 4.4</summary>
#
# ```python
# candidates = [i for i, size in enumerate(shape) if size % num_shards == 0]
# return max(candidates, key=lambda i: (shape[i], -i), default=None)
# ```
#
# </details>

# %% [markdown]
# `solutions.sharding.infer_param_specs` applies this rule to every parameter by
# name (and to no device at all: it reads only shapes). For the 3B model on 8
# devices:

# %%
specs = infer_param_specs(real_shapes, 8)
spec_by_name = dict(zip(param_names(real_shapes), jax.tree.leaves(specs), strict=True))
for name, shape, _ in rows[:6]:
    axis = fsdp_axis(shape, 8)
    per_device = tuple(n // 8 if i == axis else n for i, n in enumerate(shape))
    print(f"{name:58} {str(spec_by_name[name]):28} per device {per_device}")

# %% [markdown]
# And the parameter memory per device, frozen in 16 bits and attention in float32,
# as the number of devices grows:


# %%
def bytes_per_device(shapes, trainable, num_devices: int) -> int:
    """Parameter bytes on each device under FSDP (frozen 2 bytes, trained 4)."""
    specs = infer_param_specs(shapes, num_devices)
    total_bytes = 0
    for x, is_trained, spec in zip(
        jax.tree.leaves(shapes),
        jax.tree.leaves(trainable),
        jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)),
        strict=True,
    ):
        size = x.size * (4 if is_trained else 2)
        total_bytes += size // num_devices if any(spec) else size
    return total_bytes


device_counts = [1, 2, 4, 8, 16]
per_device = [bytes_per_device(real_shapes, attn_mask, n) / GIB for n in device_counts]
plt.figure(figsize=(5, 3))
plt.bar([str(n) for n in device_counts], per_device)
plt.xlabel("devices")
plt.ylabel("GiB of parameters per device")
plt.title(f"{pg1.name} under FSDP")
plt.show()

# %% [markdown]
# To see real shards we need several devices. JAX can pretend a CPU is several
# devices (`--xla_force_host_platform_device_count`), but only if told before it
# starts, and this notebook's JAX is running already. So a short script runs in a
# fresh Python process with 4 simulated devices, FSDP-shards the tiny model with
# `shard_params`, and reports what each device holds.

# %%
SHARDING_SCRIPT = """
import jax
from solutions.checkpoints import load_tiny
from solutions.sharding import infer_param_sharding, make_mesh, param_names, shard_params

_, _, params, _ = load_tiny()
mesh = make_mesh()
shardings = infer_param_sharding(params, mesh, min_shard_bytes=0)  # split even tiny arrays
placed = shard_params(params, shardings)
print(f"{jax.device_count()} devices, mesh axes {mesh.axis_names}")
for name, x in zip(param_names(placed), jax.tree.leaves(placed)):
    if name.startswith(("llm/embedder", "llm/layers/mlp", "llm/final_norm")):
        shards = [shard.data.shape for shard in x.addressable_shards]
        spec = str(x.sharding.spec)
        print(f"{name:30} {str(x.shape):16} {spec:26} {len(shards)} shards of {shards[0]}")
"""
environment = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "PYTHONPATH": str(pathlib.Path(solutions.__file__).resolve().parent.parent),
}
result = subprocess.run(
    [sys.executable, "-c", SHARDING_SCRIPT], env=environment, capture_output=True, text=True
)
print(result.stdout or result.stderr[-2000:])

# %% [markdown]
# The full FSDP training step, checked to match a one-device step number for number,
# is `tests/sharded_step_check.py`; lesson 7 uses the same shardings in its update
# function.
#
# ## Loading one parameter at a time
#
# The 3B checkpoint is about 6 GB in 16 bits. Reading it all into memory, then
# converting, then copying to the device would hold two or three copies at once.
# Two habits avoid that:
#
# - an `.npz` is read lazily: `np.load` opens the zip index, and each array is read
#   only when asked for, so a loop over names holds one array at a time;
# - placing on devices goes leaf by leaf too (`cast_params`, `shard_params`): each
#   array is cast, sent and finished before the next one starts, so the devices
#   never see a second full copy.
#
# `tracemalloc` counts the bytes numpy allocates. Reading the tiny checkpoint whole
# versus one array at a time (here, just summing each array's bytes):

# %%
tracemalloc.start()
whole = load_params(TINY_CHECKPOINT)
_, peak_whole = tracemalloc.get_traced_memory()
del whole
tracemalloc.stop()

tracemalloc.start()
streamed_bytes = 0
with np.load(TINY_CHECKPOINT) as npz:
    for name in npz.files:
        streamed_bytes += npz[name].nbytes  # read, used, dropped before the next one
_, peak_streamed = tracemalloc.get_traced_memory()
tracemalloc.stop()

largest = max(math.prod(shape) * dtype.itemsize for shape, dtype in tiny_headers.values())
print(
    f"read in all:   {streamed_bytes / 2**20:5.2f} MiB, the largest array {largest / 2**20:.2f} MiB"
)
print(f"all at once:    peak {peak_whole / 2**20:5.2f} MiB")
print(f"one at a time:  peak {peak_streamed / 2**20:5.2f} MiB")

# %% [markdown]
# For the 3B model the same loop keeps the host's peak near its largest array
# (`llm/layers/mlp/gating_einsum`, 1.2 billion numbers: 2.25 GiB in 16 bits)
# instead of the whole 5.4 GiB file.
#
# ## What you built
#
# - `flatten_params` / `unflatten_params`: between the file's slash names and the
#   model's tree;
# - `resample_posemb`: one checkpoint, any resolution;
# - `fsdp_axis`: the rule that lets N devices share a model.
#
# Along the way: `|V2` is bfloat16 in disguise; the attention-only recipe trains
# under 6% of the parameters; 16-bit frozen weights halve the memory; and streaming
# keeps one array in memory at a time.
#
# ## Go further
#
# 1. A float16 frozen weight can overflow where a bfloat16 one cannot. Why? Which
#    GPUs force float16 on you?
# 2. Adam keeps two float32 numbers per trained parameter. How much memory would it
#    add with `trainable="attn"`? With `"all"`?
# 3. With 3 devices, which arrays of the 3B model can FSDP not split? (Try
#    `fsdp_axis` on the shapes above.)
# 4. `resample_posemb` interpolates between learned vectors. Why might a model
#    still need some fine-tuning at the new resolution?
