"""Training: the masked loss, what trains, the schedule, the update step, NaN guard."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from solutions.configs import CHECKPOINTS
from solutions.model import Model, count_params, init_params, param_shapes
from solutions.sharding import param_names
from solutions.train import (
    NonFiniteLossError,
    TrainingInterrupted,
    cast_params,
    cosine_schedule,
    init_train_state,
    loss_fn,
    make_update_fn,
    train_steps,
    trainable_mask,
    warmup_steps,
)
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_RESOLUTION, randomize

MODEL = Model(img=TINY_IMG, llm=TINY_LLM_PG1)


@pytest.fixture(scope="module")
def params():
    """Randomised tiny-model parameters (built once: init compiles slowly on CPU)."""
    return randomize(init_params(MODEL, TINY_RESOLUTION))


@pytest.fixture(scope="module")
def batch():
    """Two examples: a 4-token prefix (not in the loss) and an 8-token suffix."""
    rng = np.random.default_rng(0)
    suffix = [0] * 4 + [1] * 8
    return {
        "image": rng.uniform(-1, 1, (2, TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(np.float32),
        "text": rng.integers(3, 96, (2, 12)).astype(np.int32),
        "mask_ar": np.array([suffix] * 2, np.int32),
        "mask_loss": np.array([suffix] * 2, np.int32),
    }


@functools.cache
def sgd_update_fn(strategy: str):
    """One jitted SGD step per strategy, shared by the tests (each compiles in seconds)."""
    shapes = param_shapes(MODEL, TINY_RESOLUTION)
    return make_update_fn(MODEL, trainable_mask(shapes, strategy))


def fresh_copy(tree):
    """A copy the update step may donate (the fixture's arrays must survive)."""
    return jax.tree.map(jnp.copy, tree)


def as_numpy(tree) -> dict[str, np.ndarray]:
    return dict(zip(param_names(tree), (np.asarray(x) for x in jax.tree.leaves(tree)), strict=True))


# -- what trains ---------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, prefix", [("attn", "llm/layers/attn/"), ("llm", "llm/"), ("all", "")]
)
def test_trainable_mask_selects_by_name(strategy, prefix):
    shapes = param_shapes(MODEL, TINY_RESOLUTION)
    names, mask_leaves = param_names(shapes), jax.tree.leaves(trainable_mask(shapes, strategy))
    mask = dict(zip(names, mask_leaves, strict=True))
    assert all(type(m) is bool for m in mask.values())
    expected = {name: name.startswith(prefix) for name in mask}
    assert mask == expected
    assert any(mask.values())


def test_attn_strategy_trains_the_real_attention_weights():
    """PaliGemma 2 3B: 26 layers of width 2304 with 8 query heads, 4 key/value
    heads of 256: q (8), k and v (2 x 4) and the output (8) make 24 head-sized
    D x H matrices per layer."""
    shapes = param_shapes(Model(**CHECKPOINTS["paligemma2-3b-pt-224"].config), 224)
    mask = trainable_mask(shapes, "attn")
    trainable = [
        x for x, m in zip(jax.tree.leaves(shapes), jax.tree.leaves(mask), strict=True) if m
    ]
    assert count_params(trainable) == 26 * 2304 * 256 * 24


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ValueError, match="'attn', 'llm', 'all'"):
        trainable_mask({"llm": {"w": jnp.zeros(1)}}, "attention")


# -- the loss ------------------------------------------------------------------


class BigramModel:
    """A stand-in model: the logits after token x are row x of a table."""

    def apply(self, variables, image, text, mask_ar, train=False):
        assert train and text.shape == mask_ar.shape
        self.seen_text = np.asarray(text)
        return variables["params"]["table"][text], {}


def numpy_loss(table, text, mask_loss):
    """The masked loss by hand, token by token, in float64."""
    example_losses = []
    for row, row_mask in zip(text, mask_loss, strict=True):
        total, count = 0.0, 0
        for t in range(len(row) - 1):
            if row_mask[t + 1]:
                logits = table[row[t]].astype(np.float64)
                log_norm = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
                total -= logits[row[t + 1]] - log_norm
                count += 1
        example_losses.append(total / max(count, 1))
    return np.mean(example_losses)


def test_loss_matches_hand_computed_numpy():
    rng = np.random.default_rng(1)
    table = rng.normal(0, 2, (7, 7)).astype(np.float32)
    text = rng.integers(0, 7, (3, 6)).astype(np.int32)
    # Row 0: 3 counted tokens; row 1: 1 (its mean must not be diluted by
    # row 0's count); row 2: none (counts as 0, not NaN).
    mask_loss = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 0], [0] * 6], np.int32)
    batch = {
        "image": np.zeros((3, 2, 2, 3), np.float32),
        "text": text,
        "mask_ar": mask_loss,
        "mask_loss": mask_loss,
    }
    model = BigramModel()
    loss = loss_fn({"table": jnp.asarray(table)}, batch, model=model)
    np.testing.assert_array_equal(model.seen_text, text[:, :-1])
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, numpy_loss(table, text, mask_loss), rtol=1e-6)


# -- the schedule --------------------------------------------------------------


def test_warmup_rounds_like_big_vision():
    assert warmup_steps(31) == 3  # 3.1
    assert warmup_steps(65) == 6  # 6.5 rounds to even
    assert warmup_steps(3) == 1  # 0.3 still warms up for one step
    assert warmup_steps(65, 0.0) == 0


def test_cosine_schedule_values():
    # 31 steps, 3 of warmup: the cosine covers steps 3..31 (28 steps).
    lr = functools.partial(cosine_schedule, total_steps=31, base_lr=0.2)
    expected = {
        0: 0.0,
        1: 0.2 / 3,  # warmup is linear
        3: 0.2,  # peak
        10: 0.2 * (0.5 + math.sqrt(2) / 4),  # a quarter in: 0.5 * (1 + cos(pi / 4))
        17: 0.1,  # halfway
        31: 0.0,  # the end
        40: 0.0,  # and after it
    }
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, abs=1e-7), step
    assert lr(5).dtype == jnp.float32


def test_cosine_schedule_half_step_warmup_and_jit():
    """The notebook's 64 steps (total_steps=65): warmup 6.5 rounds to 6."""
    lr = functools.partial(cosine_schedule, total_steps=65, base_lr=0.03)
    assert float(lr(3)) == pytest.approx(0.015)
    assert float(lr(6)) == pytest.approx(0.03)
    steps = jnp.arange(66)
    np.testing.assert_allclose(jax.jit(jax.vmap(lr))(steps), [lr(int(s)) for s in steps])
    no_warmup = cosine_schedule(0, total_steps=10, base_lr=0.5, warmup_fraction=0.0)
    assert float(no_warmup) == pytest.approx(0.5)


def test_cosine_schedule_rejects_all_warmup():
    with pytest.raises(ValueError, match="total_steps=1"):
        cosine_schedule(0, total_steps=1, base_lr=0.1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        cosine_schedule(0, total_steps=10, base_lr=0.1, warmup_fraction=10)


# -- the update step -----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["attn", "llm", "all"])
def test_update_changes_exactly_the_trainable_params(strategy, params, batch):
    before = as_numpy(params)
    names, mask_leaves = param_names(params), jax.tree.leaves(trainable_mask(params, strategy))
    mask = dict(zip(names, mask_leaves, strict=True))
    update_fn = sgd_update_fn(strategy)
    state = fresh_copy(params)
    for _ in range(2):
        state, loss = update_fn(state, batch, 0.1)
    after = as_numpy(state)
    assert np.isfinite(loss)
    for name, is_trainable in mask.items():
        if is_trainable:
            assert not np.array_equal(after[name], before[name]), f"{name} did not train"
        else:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        assert after[name].dtype == before[name].dtype


def test_update_reuses_the_donated_buffers(params, batch):
    """Frozen leaves pass through and trainable ones update in place (the NaN
    guard's select included): the step needs no second copy of the model."""
    state = fresh_copy(params)
    buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    new_state, _ = sgd_update_fn("attn")(state, batch, 0.1)
    assert all(x.is_deleted() for x in jax.tree.leaves(state))
    assert [x.unsafe_buffer_pointer() for x in jax.tree.leaves(new_state)] == buffers


def test_tiny_model_overfits_one_batch(params, batch):
    update_fn = sgd_update_fn("all")
    state, losses = train_steps(update_fn, fresh_copy(params), [batch] * 60, lambda step: 0.3)
    assert losses[0] > 2.0, losses[0]  # ~log(96) at the start: it did have to learn
    assert losses[-1] < 0.05, losses[-10:]


def test_adam_first_step_moves_each_weight_by_the_learning_rate(params, batch):
    """Adam's first update is m/sqrt(v) = g/|g|: every weight moves by about
    the learning rate, whatever its gradient's size; then the loss falls."""
    optimizer = optax.adam(1.0)
    mask = trainable_mask(params, "attn")
    update_fn = make_update_fn(MODEL, mask, optimizer)
    state = init_train_state(fresh_copy(params), mask, optimizer)
    assert sorted(optax.tree_utils.tree_get(state.opt_state, "mu")) == sorted(
        name for name in param_names(params) if name.startswith("llm/layers/attn/")
    )
    before = as_numpy(params)
    state, first_loss = update_fn(state, batch, 1e-3)
    after = as_numpy(state.params)
    for name in before:
        moved = np.abs(after[name] - before[name])
        if name.startswith("llm/layers/attn/"):
            assert moved.max() <= 1e-3 * 1.001, name
            assert np.median(moved) > 0.9e-3, name
        else:
            assert moved.max() == 0, name
    state, losses = train_steps(update_fn, state, [batch] * 20, lambda step: 1e-2)
    assert losses[-1] < 0.5 * float(first_loss)


# -- NaN guard -----------------------------------------------------------------


def test_non_finite_loss_stops_and_keeps_the_last_good_params(params, batch):
    update_fn = sgd_update_fn("attn")
    bad_batch = {**batch, "image": np.full_like(batch["image"], np.nan)}

    expected = fresh_copy(params)
    for _ in range(2):
        expected, _ = update_fn(expected, batch, 0.1)
    expected = as_numpy(expected)

    with pytest.raises(NonFiniteLossError, match="step 3.*Lower the learning rate") as caught:
        train_steps(update_fn, fresh_copy(params), [batch, batch, bad_batch, batch], lambda s: 0.1)
    error = caught.value
    assert error.step == 3 and math.isnan(error.loss)
    assert len(error.losses) == 2 and all(map(math.isfinite, error.losses))
    kept = as_numpy(error.state)
    for name, value in expected.items():
        np.testing.assert_array_equal(kept[name], value, err_msg=name)


def test_on_step_sees_every_step_and_can_end_training(params, batch):
    update_fn = sgd_update_fn("attn")
    seen = []

    def on_step(step, state, learning_rate, loss):
        seen.append((step, learning_rate, loss, sorted(param_names(state))))
        return step == 7  # stop after the third step

    state, losses = train_steps(
        update_fn,
        fresh_copy(params),
        [batch] * 10,
        lambda s: 0.01 * s,
        first_step=5,
        on_step=on_step,
    )
    assert [row[0] for row in seen] == [5, 6, 7]
    assert [row[1] for row in seen] == pytest.approx([0.05, 0.06, 0.07])
    assert [row[2] for row in seen] == losses
    assert all(row[3] == sorted(param_names(params)) for row in seen)


def test_ctrl_c_hands_back_the_state_of_the_last_step_done(params, batch):
    update_fn = sgd_update_fn("attn")
    expected = fresh_copy(params)
    for _ in range(2):
        expected, _ = update_fn(expected, batch, 0.1)
    expected = as_numpy(expected)

    def two_batches_then_ctrl_c():
        yield batch
        yield batch
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        train_steps(update_fn, fresh_copy(params), two_batches_then_ctrl_c(), lambda s: 0.1)
    error = caught.value
    assert isinstance(error, KeyboardInterrupt)  # uncaught, it stops a program as Ctrl-C does
    assert error.step == 2 and len(error.losses) == 2
    kept = as_numpy(error.state)
    for name, value in expected.items():
        np.testing.assert_array_equal(kept[name], value, err_msg=name)


# -- mixed precision -----------------------------------------------------------


@pytest.mark.parametrize("frozen_dtype", [jnp.bfloat16, jnp.float16])
def test_cast_params_dtypes(frozen_dtype, params):
    mask = trainable_mask(params, "attn")
    host_params = jax.tree.map(np.asarray, params)
    cast = cast_params(host_params, mask, frozen_dtype)
    for name, x, trainable in zip(
        param_names(cast), jax.tree.leaves(cast), jax.tree.leaves(mask), strict=True
    ):
        assert isinstance(x, jax.Array), name
        assert x.dtype == (jnp.float32 if trainable else frozen_dtype), name


def test_mixed_precision_step_keeps_dtypes_and_frozen_bits(params, batch):
    mask = trainable_mask(params, "attn")
    cast = cast_params(fresh_copy(params), mask, jnp.bfloat16)
    before = as_numpy(cast)
    full_precision_loss = loss_fn(params, batch, model=MODEL)
    state, loss = sgd_update_fn("attn")(cast, batch, 0.1)
    after = as_numpy(state)
    np.testing.assert_allclose(loss, full_precision_loss, rtol=0.05)
    for name, is_trainable in zip(param_names(params), jax.tree.leaves(mask), strict=True):
        assert after[name].dtype == before[name].dtype, name
        if not is_trainable:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_cast_params_wants_a_matching_mask(params):
    with pytest.raises(ValueError, match="`trainable` must have the same tree structure"):
        cast_params(params, {"llm": True})
