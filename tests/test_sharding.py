"""Sharding: FSDP rules by name, meshes, and a real 8-device training step."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from solutions.configs import CHECKPOINTS
from solutions.model import Model, param_shapes
from solutions.sharding import (
    data_sharding,
    fsdp_axis,
    infer_param_specs,
    initialize_distributed,
    is_multi_process_env,
    make_mesh,
    param_names,
    shard_params,
    tree_map_with_names,
)

TESTS_DIR = pathlib.Path(__file__).resolve().parent
NUM_DEVICES = 8


# -- names ---------------------------------------------------------------------


def test_names_are_slash_joined_paths():
    tree = {"llm": {"layers": {"attn": {"w": 1}}, "final_norm": {"scale": 2}}, "img": {"b": 3}}
    assert param_names(tree) == ["img/b", "llm/final_norm/scale", "llm/layers/attn/w"]
    assert tree_map_with_names(lambda name, x: f"{name}={x}", tree)["llm"]["layers"]["attn"] == {
        "w": "llm/layers/attn/w=1"
    }


# -- which axis FSDP splits ----------------------------------------------------


@pytest.mark.parametrize(
    "shape, shards, expected",
    [
        ((26, 2304, 9216), 8, 2),  # the largest axis
        ((10, 8), 4, 1),  # 10 is larger but 4 does not divide it
        ((16, 16), 8, 0),  # a tie goes to the earlier axis
        ((3, 5), 8, None),  # nothing divides: replicate
        ((7,), 1, 0),  # one device divides anything
    ],
)
def test_fsdp_axis(shape, shards, expected):
    assert fsdp_axis(shape, shards) == expected


def test_fsdp_specs_of_the_real_3b_model():
    """PaliGemma 2 3B over 8 devices, big_vision's 4 MiB threshold."""
    shapes = param_shapes(Model(**CHECKPOINTS["paligemma2-3b-pt-224"].config), 224)
    specs = dict(
        zip(param_names(shapes), jax.tree.leaves(infer_param_specs(shapes, 8)), strict=True)
    )
    # [257152, 2304]: 257152 = 8 * 32144, and it is the larger axis.
    assert specs["llm/embedder/input_embedding"] == PartitionSpec("data")
    # [26, 9216, 2304]: the MLP's hidden axis.
    assert specs["llm/layers/mlp/linear"] == PartitionSpec(None, "data")
    # [26, 2304] float32 is 234 KiB: too small to be worth splitting.
    assert specs["llm/layers/pre_attention_norm/scale"] == PartitionSpec()
    # [1, 256, 1152] float32 is 1.1 MiB: also replicated.
    assert specs["img/pos_embedding"] == PartitionSpec()
    for name, x in zip(param_names(shapes), jax.tree.leaves(shapes), strict=True):
        for size, axis in zip(x.shape, specs[name], strict=False):
            assert axis is None or size % 8 == 0, name


def test_rules_first_match_wins_and_unmatched_are_replicated():
    params = {
        "img": {"kernel": jnp.zeros((8, 16))},
        "llm": {"embedder": {"input_embedding": jnp.zeros((32, 8))}, "w": jnp.zeros((8, 24))},
    }
    rules = [("llm/embedder/.*", "replicate"), ("llm/.*", "fsdp")]
    specs = infer_param_specs(params, 8, rules, min_shard_bytes=0)
    assert specs["llm"]["embedder"]["input_embedding"] == PartitionSpec()
    assert specs["llm"]["w"] == PartitionSpec(None, "data")
    assert specs["img"]["kernel"] == PartitionSpec()  # no rule matches "img/…"


def test_unknown_tactic_names_the_choices():
    with pytest.raises(ValueError, match="'shard_all'.*fsdp, replicate"):
        infer_param_specs({"w": jnp.zeros(8)}, 8, [(".*", "shard_all")])


# -- devices -------------------------------------------------------------------


def test_make_mesh_over_local_devices():
    mesh = make_mesh()
    assert mesh.size == jax.device_count() and mesh.axis_names == ("data",)
    assert make_mesh(jax.devices()[:1], axis="batch").axis_names == ("batch",)
    assert data_sharding(mesh).spec == PartitionSpec("data")
    with pytest.raises(ValueError, match="at least one device"):
        make_mesh([])


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ],
)
def test_multi_process_detection(environ, expected):
    assert is_multi_process_env(environ) is expected


def test_initialize_distributed_is_a_no_op_on_one_machine(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert initialize_distributed() is False
    assert jax.process_count() == 1


def test_shard_params_wants_matching_trees():
    mesh = make_mesh()
    with pytest.raises(ValueError, match="same tree structure"):
        shard_params({"a": np.zeros(2), "b": np.zeros(2)}, {"a": data_sharding(mesh)})


# -- eight devices, in a fresh process -------------------------------------------


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    """Runs tests/sharded_step_check.py on 8 simulated CPU devices."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": (
            f"{os.environ.get('XLA_FLAGS', '')} "
            f"--xla_force_host_platform_device_count={NUM_DEVICES} "
            # Both runs compare under the same flags; this one halves compile time.
            "--xla_backend_optimization_level=0"
        ).strip(),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(TESTS_DIR.parent), os.environ.get("PYTHONPATH")])
        ),
    }
    result = subprocess.run(
        [sys.executable, str(TESTS_DIR / "sharded_step_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mesh_spans_eight_devices(eight_devices):
    assert eight_devices["device_count"] == NUM_DEVICES
    assert eight_devices["mesh_size"] == NUM_DEVICES
    assert eight_devices["mesh_axes"] == ["data"]


@pytest.mark.slow
def test_fsdp_really_splits_the_arrays(eight_devices):
    placed = eight_devices["placed"]
    split = 0
    for name, leaf in placed.items():
        shape, spec = leaf["shape"], leaf["spec"]
        assert len(leaf["shard_shapes"]) == NUM_DEVICES, name
        if name.startswith("img/"):  # the "replicate" rule: a full copy per device
            assert spec == [] and all(s == shape for s in leaf["shard_shapes"]), name
            continue
        axis = fsdp_axis(shape, NUM_DEVICES)
        assert axis is not None, name  # every tiny decoder array has a dimension of 8k
        expected = [n // NUM_DEVICES if i == axis else n for i, n in enumerate(shape)]
        assert spec == [None] * axis + ["data"], name
        assert all(s == expected for s in leaf["shard_shapes"]), (name, leaf["shard_shapes"])
        split += 1
    assert split >= 8


@pytest.mark.slow
def test_sharded_step_matches_one_device(eight_devices):
    result = eight_devices
    assert result["sharded_loss"] == pytest.approx(result["single_loss"], rel=1e-6)
    # The step really moved the parameters, and both runs moved them alike.
    assert result["max_param_change"] > 1e-3
    assert result["max_param_diff"] < 1e-5


@pytest.mark.slow
def test_step_keeps_the_parameter_layout(eight_devices):
    before, after = eight_devices["placed"], eight_devices["after_step"]
    for name in before:
        assert after[name]["spec"] == before[name]["spec"], name
        assert after[name]["shard_shapes"] == before[name]["shard_shapes"], name


@pytest.mark.slow
def test_batch_rows_are_split(eight_devices):
    assert eight_devices["batch_shard_shapes"] == [[1, 16, 16, 3]] * NUM_DEVICES
    assert "multiple of 8" in eight_devices["uneven_batch_error"]


@pytest.mark.slow
def test_cast_params_keeps_shardings(eight_devices):
    placed, cast = eight_devices["placed"], eight_devices["cast"]
    for name, leaf in cast.items():
        assert leaf["shard_shapes"] == placed[name]["shard_shapes"], name
        trainable = name.startswith("llm/layers/attn/")
        assert leaf["dtype"] == ("float32" if trainable else "bfloat16"), name
