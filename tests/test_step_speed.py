"""The accelerator speed check: its figures add up, and the real 3B inputs are right."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from capstone.tools import step_speed
from capstone.tools.memory import abstract_inputs
from solutions.model import Model


def test_bench_config_runs_and_the_share_of_peak_adds_up(capsys):
    assert step_speed.main(["--models", "bench", "--steps", "2", "--peak-tflops", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (run,) = report["runs"]
    assert report["peak_tflops"] == 0.5
    assert run["model"] == "bench" and run["steps_per_s"] > 0
    assert run["examples_per_s"] == pytest.approx(8 * run["steps_per_s"])
    assert run["step_tflop"] > 0 and jnp.isfinite(run["loss"])
    achieved_tflops = run["step_tflop"] * run["steps_per_s"]
    assert run["share_of_peak"] == pytest.approx(achieved_tflops / 0.5)


def test_unknown_accelerators_get_no_share_and_known_ones_their_peak():
    assert step_speed.peak_tflops("cpu") is None
    assert step_speed.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert step_speed.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert step_speed.peak_tflops("Tesla T4") == 65.0


def test_real_3b_weights_are_drawn_in_their_final_dtypes_without_allocating():
    """The notebook's step for PaliGemma 3B-224: attention weights in float32, every other
    weight in bfloat16, shapes as the checkpoint's (checked by eval_shape only)."""
    config, resolution = step_speed.config_and_resolution("paligemma-3b-pt-224")
    model = Model(**config)
    params, mask, batch, _ = abstract_inputs(model, resolution, 8, 128, "attn", jnp.bfloat16)
    drawn = jax.eval_shape(step_speed.random_like, params)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), drawn) == jax.tree.map(
        lambda a: (a.shape, a.dtype), params
    )
    q = drawn["llm"]["layers"]["attn"]["q_einsum"]["w"]
    assert q.shape == (18, 8, 2048, 256) and q.dtype == jnp.float32
    assert drawn["llm"]["layers"]["mlp"]["linear"].dtype == jnp.bfloat16
    tokens = jax.eval_shape(step_speed.random_like, batch, 1)["text"]
    assert tokens.shape == (8, 128) and tokens.dtype == jnp.int32
