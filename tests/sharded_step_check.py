"""Sharding checks on 8 simulated CPU devices; prints one JSON object.

`tests/test_sharding.py` runs this in a fresh process, because the device
count must be fixed before JAX starts (pytest has started it long before):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/sharded_step_check.py

It trains the tiny model one SGD step twice from the same parameters, once
on one device and once FSDP-sharded over all 8 with the batch split 8 ways,
and reports what the test asserts on.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from conftest import TINY_IMG, TINY_LLM_PG1, TINY_RESOLUTION, randomize

from solutions.model import Model, init_params
from solutions.sharding import (
    infer_param_sharding,
    make_mesh,
    param_names,
    shard_batch,
    shard_params,
)
from solutions.train import cast_params, make_update_fn, trainable_mask

# The image tower stays whole on every device, the rest is FSDP-split, so the
# check sees both tactics. Tiny arrays are split too (no size threshold).
RULES = [("img/.*", "replicate"), (".*", "fsdp")]
BATCH_SIZE = 8
LEARNING_RATE = 0.1


def make_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    suffix = [0] * 4 + [1] * 8
    return {
        "image": rng.uniform(-1, 1, (BATCH_SIZE, TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(
            np.float32
        ),
        "text": rng.integers(3, 96, (BATCH_SIZE, 12)).astype(np.int32),
        "mask_ar": np.array([suffix] * BATCH_SIZE, np.int32),
        "mask_loss": np.array([suffix] * BATCH_SIZE, np.int32),
    }


def describe(tree) -> dict[str, dict]:
    """Per leaf: full shape, PartitionSpec and the shapes of this process's shards."""
    return {
        name: {
            "shape": list(x.shape),
            "spec": [None if a is None else str(a) for a in x.sharding.spec],
            "shard_shapes": [list(s.data.shape) for s in x.addressable_shards],
            "dtype": str(x.dtype),
        }
        for name, x in zip(param_names(tree), jax.tree.leaves(tree), strict=True)
    }


def main() -> dict:
    mesh = make_mesh()
    model = Model(img=TINY_IMG, llm=TINY_LLM_PG1)
    params = jax.device_get(randomize(init_params(model, TINY_RESOLUTION)))
    shardings = infer_param_sharding(params, mesh, RULES, min_shard_bytes=0)
    batch = make_batch()
    mask = trainable_mask(params, "all")
    single_update_fn = make_update_fn(model, mask)
    sharded_update_fn = make_update_fn(model, mask, param_shardings=shardings)

    on_one_device = jax.device_put(params, jax.devices()[0])
    single, single_loss = single_update_fn(on_one_device, batch, LEARNING_RATE)

    sharded_params = shard_params(params, shardings)
    placed = describe(sharded_params)
    sharded_batch = shard_batch(batch, mesh)
    sharded, sharded_loss = sharded_update_fn(sharded_params, sharded_batch, LEARNING_RATE)
    after_step = describe(sharded)

    single, sharded = jax.device_get((single, sharded))
    diffs = [
        np.max(np.abs(a - b))
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True)
    ]
    try:
        shard_batch({"text": batch["text"][:6]}, mesh)
        uneven_batch_error = None
    except ValueError as error:
        uneven_batch_error = str(error)

    cast = cast_params(params, trainable_mask(params, "attn"), jnp.bfloat16, shardings)
    return {
        "device_count": jax.device_count(),
        "mesh_size": mesh.size,
        "mesh_axes": list(mesh.axis_names),
        "placed": placed,
        "after_step": after_step,
        "batch_shard_shapes": [
            list(s.data.shape) for s in sharded_batch["image"].addressable_shards
        ],
        "single_loss": float(single_loss),
        "sharded_loss": float(sharded_loss),
        "max_param_diff": float(max(diffs)),
        "max_param_change": float(
            max(
                np.max(np.abs(a - b))
                for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single), strict=True)
            )
        ),
        "uneven_batch_error": uneven_batch_error,
        "cast": describe(cast),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
