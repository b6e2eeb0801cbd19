"""Spreading parameters and batches over devices (lesson 4).

PaliGemma 3B holds about 2.9 billion numbers: 11.7 GB in float32. One 16 GB
GPU can hold that once, but not that plus gradients and activations. With
several devices, FSDP ("fully sharded data parallel") gives each device a
1/N slice of every big array; `jax.jit` gathers the slices a layer needs when
it runs and splits the batch the same N ways. The same code runs on 1 device
(nothing is split), 8 GPUs, or many hosts.

    mesh = make_mesh()                                   # every device, axis "data"
    shardings = infer_param_sharding(params, mesh)       # FSDP by default
    params = shard_params(params, shardings)             # leaf by leaf
    batch = shard_batch(batch, mesh)                     # rows split over devices

Rules pick a tactic per parameter by name, as big_vision's `infer_sharding`:
a list of `(regex, tactic)` pairs matched against slash-joined names such as
`llm/layers/attn/q_einsum/w`; the first match wins, unmatched names are
replicated.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DEFAULT_RULES",
    "TACTICS",
    "data_sharding",
    "flatten_like",
    "fsdp_axis",
    "infer_param_sharding",
    "infer_param_specs",
    "initialize_distributed",
    "is_multi_process_env",
    "make_mesh",
    "param_names",
    "shard_batch",
    "shard_params",
    "tree_map_with_names",
]

# FSDP for everything, as the reference fine-tuning notebook does.
DEFAULT_RULES: tuple[tuple[str, str], ...] = ((".*", "fsdp"),)
TACTICS = ("fsdp", "replicate")
# Arrays this small are cheaper to copy to every device than to gather on use
# (big_vision's default threshold).
DEFAULT_MIN_SHARD_BYTES = 4 * 2**20


# -- names ---------------------------------------------------------------------


def tree_map_with_names(fn: Callable[[str, Any], Any], tree, *rest):
    """Maps `fn(name, leaf, *rest_leaves)` over a tree, with slash-joined names.

    A leaf at `params["llm"]["layers"]["attn"]["q_einsum"]["w"]` gets the name
    `"llm/layers/attn/q_einsum/w"`, as in big_vision checkpoints.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf, *more: fn(_path_name(path), leaf, *more), tree, *rest
    )


def param_names(tree) -> list[str]:
    """The slash-joined names of a tree's leaves, in `jax.tree.leaves` order."""
    return [_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


# -- devices -------------------------------------------------------------------


def is_multi_process_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was launched as one of several JAX processes.

    Looks for an explicit coordinator (`JAX_COORDINATOR_ADDRESS`), a SLURM job
    step with more than one task, or an Open MPI launch of more than one rank.
    """
    environ = os.environ if environ is None else environ
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(environ.get(count_var, "1") or "1") > 1:
            return True
    return False


def initialize_distributed(**kwargs) -> bool:
    """Connects the processes of a multi-host run; a no-op on one machine.

    Call it once, first thing, before any other JAX call. On a cluster every
    host runs the same script, and `jax.distributed.initialize()` lets the
    processes find each other. Under SLURM or Open MPI it reads the coordinator
    and process ids by itself; elsewhere pass them, e.g.
    `initialize_distributed(coordinator_address="10.0.0.1:1234", num_processes=2,
    process_id=0)`. Afterwards `jax.devices()` lists the devices of every host,
    so `make_mesh()` spans them all.

    Returns:
      True when it initialised the distributed runtime.
    """
    if not (kwargs or is_multi_process_env()) or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device; got an empty list.")
    return Mesh(np.asarray(devices), (axis,))


def _mesh_axes(mesh: Mesh):
    """The mesh axes as one PartitionSpec entry: all of them split one dimension."""
    names = tuple(mesh.axis_names)
    return names[0] if len(names) == 1 else names


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec(_mesh_axes(mesh)))


# -- parameters ----------------------------------------------------------------


def fsdp_axis(shape: Sequence[int], num_shards: int) -> int | None:
    """The dimension FSDP splits: the largest one divisible by `num_shards`.

    Ties go to the earlier dimension. None when no dimension divides evenly
    (the array is then replicated). E.g. `fsdp_axis((26, 2304, 9216), 8) == 2`.
    """
    candidates = [i for i, size in enumerate(shape) if size % num_shards == 0]
    if not candidates:
        return None
    return max(candidates, key=lambda i: (shape[i], -i))


def _fsdp_spec(x, num_shards: int, axes, min_shard_bytes: int) -> PartitionSpec:
    nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    axis = fsdp_axis(x.shape, num_shards) if nbytes > min_shard_bytes else None
    if axis is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * axis), axes)


def _check_rules(rules: Sequence[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    compiled = []
    for pattern, tactic in rules:
        if tactic not in TACTICS:
            raise ValueError(
                f"Unknown sharding tactic {tactic!r} for pattern {pattern!r}; "
                f"use one of {', '.join(TACTICS)}."
            )
        compiled.append((re.compile(pattern), tactic))
    return compiled


def infer_param_specs(
    params,
    num_shards: int,
    rules: Sequence[tuple[str, str]] = DEFAULT_RULES,
    *,
    axes: str | tuple[str, ...] = "data",
    min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES,
):
    """A PartitionSpec per parameter, from name rules (no devices needed).

    Args:
      params: tree of arrays or `jax.ShapeDtypeStruct`s (only shape and dtype
        are read, so `param_shapes` of a real-size model works).
      num_shards: how many devices share each array.
      rules: `(regex, tactic)` pairs; a name takes the tactic of the first
        regex that matches it (`re.match`, from the start of the name).
        "fsdp" splits the largest dimension divisible by `num_shards`
        (replicates if none is); "replicate" keeps a full copy per device.
        Names no rule matches are replicated.
      axes: the mesh axis name(s) that FSDP splits over.
      min_shard_bytes: arrays of at most this many bytes are replicated.
    Returns:
      A tree like `params` of `PartitionSpec`s.
    """
    compiled = _check_rules(rules)

    def spec(name, x):
        tactic = next((t for pattern, t in compiled if pattern.match(name)), "replicate")
        if tactic == "fsdp":
            return _fsdp_spec(x, num_shards, axes, min_shard_bytes)
        return PartitionSpec()

    return tree_map_with_names(spec, params)


def infer_param_sharding(
    params,
    mesh: Mesh,
    rules: Sequence[tuple[str, str]] = DEFAULT_RULES,
    *,
    min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES,
):
    """A `NamedSharding` per parameter on `mesh` (see `infer_param_specs`)."""
    specs = infer_param_specs(
        params, mesh.size, rules, axes=_mesh_axes(mesh), min_shard_bytes=min_shard_bytes
    )
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def shard_params(params, shardings):
    """Places each parameter on its sharding, one leaf at a time.

    One leaf at a time keeps the peak memory at the final size plus one array:
    each leaf is moved and finished before the next starts. When several hosts
    run, each passes the same full values and keeps only its devices' slices.

    Args:
      params: tree of arrays (numpy or jax).
      shardings: a tree with the same structure, of `jax.sharding.Sharding`s.
    Returns:
      The tree of placed `jax.Array`s.
    """
    leaves, treedef = jax.tree.flatten(params)
    targets = flatten_like(treedef, shardings, "shardings")
    for i, sharding in enumerate(targets):
        leaves[i] = jax.device_put(leaves[i], sharding)
        leaves[i].block_until_ready()
    return jax.tree.unflatten(treedef, leaves)


def flatten_like(treedef, tree, what: str) -> list:
    """`tree`'s leaves in the order of `treedef`'s; a clear error if it differs."""
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{what}` must have the same tree structure as the parameters: {error}"
        ) from error


def shard_batch(batch, mesh: Mesh):
    """Splits every array of a host batch along its first axis over `mesh`.

    With several processes, each passes its own rows (its share of the global
    batch) and gets back one global array.

    Args:
      batch: dict of numpy arrays with a leading batch axis, e.g.
        `{"image": float32[B, H, W, 3], "text": int32[B, T], ...}`.
      mesh: the device mesh; this process's share of it must divide B.
    Returns:
      The same dict of `jax.Array`s sharded by `data_sharding(mesh)`.
    """
    sharding = data_sharding(mesh)
    local_devices = mesh.local_mesh.size

    def put(name, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"Batch field {name!r} has shape {x.shape}; its first axis must split evenly "
                f"over this process's {local_devices} devices. Use a batch size that is a "
                f"multiple of {local_devices}."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return tree_map_with_names(put, batch)
