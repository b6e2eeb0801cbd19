"""`solutions.lora`: adapters that start at the base model, merge exactly, and train alone."""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solutions import lora
from solutions.model import Model, init_params
from solutions.train import cast_params, make_update_fn, train_steps
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_LLM_PG2, TINY_RESOLUTION, randomize

LLMS = {
    "pg1": TINY_LLM_PG1,  # q_einsum + kv_einsum (one key/value head)
    "pg2": TINY_LLM_PG2,  # grouped-query attention, softcaps, post-norms
    "mha": {**TINY_LLM_PG1, "num_kv_heads": 4},  # qkv_einsum: every head its own k/v
}


@pytest.fixture(scope="module", params=sorted(LLMS))
def tiny(request):
    model = Model(img=TINY_IMG, llm=LLMS[request.param])
    return model, randomize(init_params(model, TINY_RESOLUTION))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return {
        "image": rng.uniform(-1, 1, (2, TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(np.float32),
        "text": rng.integers(3, 96, (2, 10)).astype(np.int32),
        "mask_ar": np.array([[0] * 4 + [1] * 6] * 2, np.int32),
        "mask_loss": np.array([[0] * 4 + [1] * 6] * 2, np.int32),
    }


def logits(model, variables, batch):
    out, _ = model.apply(variables, batch["image"], batch["text"], batch["mask_ar"])
    return np.asarray(out)


def random_adapters(params, config, seed=1):
    """Adapters with B random too, so the update is not zero."""
    adapters = lora.init_adapters(params, config, seed=seed)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), adapters)


@pytest.mark.parametrize("targets", sorted(lora.TARGETS))
def test_fresh_adapters_leave_the_model_as_it_was(tiny, batch, targets):
    model, params = tiny
    config = lora.LoraConfig(rank=3, alpha=6.0, targets=targets)
    adapters = lora.init_adapters(params, config)
    assert all(not np.any(b) for _, b in lora.adapter_pairs(adapters).values())  # B = 0
    adapted = logits(model, {"params": params, "lora": lora.scaled(adapters, config.scale)}, batch)
    np.testing.assert_array_equal(adapted, logits(model, {"params": params}, batch))


@pytest.mark.parametrize("targets", sorted(lora.TARGETS))
def test_merged_weights_give_the_adapted_models_logits(tiny, batch, targets):
    model, params = tiny
    config = lora.LoraConfig(rank=2, alpha=3.0, targets=targets)
    adapters = random_adapters(params, config)
    adapted = logits(model, {"params": params, "lora": lora.scaled(adapters, config.scale)}, batch)
    merged = logits(model, {"params": lora.merge_adapters(params, adapters, config)}, batch)
    base = logits(model, {"params": params}, batch)
    assert np.abs(adapted - base).max() > 1e-2  # the update does change the model
    np.testing.assert_allclose(merged, adapted, atol=2e-5, rtol=1e-5)


def test_each_weights_update_is_a_times_b_in_its_own_layout():
    """The update of every adaptable weight, written out by hand for one layer."""
    rng = np.random.default_rng(0)
    n, k, d, h, f, r = 4, 2, 6, 3, 5, 2

    def pair(a_shape, b_shape):
        return rng.normal(size=a_shape), rng.normal(size=b_shape)

    a, b = pair((d, r), (r, n, h))
    expected = np.einsum("dr,rnh->ndh", a, b)  # q: [N, D, H] from D inputs
    np.testing.assert_allclose(lora.lora_delta(a, b, "attn/q_einsum/w", 3), expected, rtol=1e-5)
    a, b = pair((2, d, r), (2, r, k, h))
    expected = np.stack([np.einsum("dr,rkh->kdh", a[c], b[c]) for c in range(2)])
    np.testing.assert_allclose(lora.lora_delta(a, b, "attn/kv_einsum/w", 4), expected, rtol=1e-5)
    a, b = pair((n, h, r), (r, d))
    expected = np.einsum("nhr,rd->nhd", a, b)  # attn_vec: [N, H, D] from N*H inputs
    delta = lora.lora_delta(a, b, "attn/attn_vec_einsum/w", 3)
    np.testing.assert_allclose(delta, expected, rtol=1e-5)
    a, b = pair((2, d, r), (2, r, f))
    expected = np.stack([a[c] @ b[c] for c in range(2)])  # gate and up, each [D, F]
    np.testing.assert_allclose(lora.lora_delta(a, b, "mlp/gating_einsum", 3), expected, rtol=1e-5)
    a, b = pair((f, r), (r, d))
    np.testing.assert_allclose(lora.lora_delta(a, b, "mlp/linear", 2), a @ b, rtol=1e-5)
    # With the layers stacked on a leading axis, each layer gets its own update.
    a, b = pair((3, f, r), (3, r, d))
    stacked = lora.lora_delta(a, b, "mlp/linear", 2)
    np.testing.assert_allclose(stacked, np.stack([a[i] @ b[i] for i in range(3)]), rtol=1e-5)


def test_adapter_sizes_are_rank_times_inputs_plus_outputs():
    model = Model(img=TINY_IMG, llm=TINY_LLM_PG1)
    shapes = jax.eval_shape(lambda: init_params(model, TINY_RESOLUTION))
    config = lora.LoraConfig(rank=4, targets="attn+mlp")
    adapters = lora.init_adapters(shapes, config)
    depth, d, n, k, h, f = 2, 32, 4, 1, 8, 64
    per_layer = {
        "q": 4 * (d + n * h),
        "k and v": 2 * 4 * (d + k * h),
        "o": 4 * (n * h + d),
        "gate and up": 2 * 4 * (d + f),
        "down": 4 * (f + d),
    }
    assert lora.count_adapter_params(adapters) == depth * sum(per_layer.values())
    names = set(flax.traverse_util.flatten_dict(adapters, sep="/"))
    assert "llm/layers/attn/kv_einsum/w_a" in names and "llm/layers/mlp/linear_b" in names
    assert not any(name.startswith("img/") for name in names)  # the image tower is left alone


def test_training_moves_the_adapters_alone_and_lowers_the_loss(batch):
    model = Model(img=TINY_IMG, llm=TINY_LLM_PG2)
    params = randomize(init_params(model, TINY_RESOLUTION))
    config = lora.LoraConfig(rank=4, alpha=8.0, targets="attn+mlp")
    tree = {"base": params, "lora": lora.init_adapters(params, config)}
    trainable = lora.trainable_adapters(tree)
    state = cast_params(tree, trainable, frozen_dtype=jnp.bfloat16)
    frozen_before = jax.tree.map(np.asarray, state["base"])
    update_fn = make_update_fn(lora.LoraModel(model, config), trainable)
    state, losses = train_steps(update_fn, state, [batch] * 30, lambda step: 0.1)
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["lora"]))
    for name, (before, after) in zip(
        flax.traverse_util.flatten_dict(frozen_before, sep="/"),
        zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state["base"]), strict=True),
        strict=True,
    ):
        assert after.dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(np.asarray(after), before, err_msg=name)
    assert any(np.any(np.asarray(b)) for _, b in lora.adapter_pairs(state["lora"]).values())


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rank": 0}, "rank must be a whole number of at least 1, not 0"),
        ({"alpha": 0.0}, "alpha must be a finite number above 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number above 0"),
        ({"targets": "mlp"}, "targets must be one of"),
    ],
)
def test_bad_settings_are_refused_with_the_field_and_what_it_takes(fields, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(lora.LoraConfig(), **fields)
