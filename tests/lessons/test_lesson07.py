"""Graded checks for lesson 7 (training): one test per behaviour, named test_ex7_K_<what>."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solutions.configs import get_checkpoint
from solutions.model import Model, param_shapes
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_RESOLUTION
from tests.grading import expect_close, expect_equal, expect_raises

LESSON = 7
SOLUTIONS = ("solutions.train", "solutions.lora")
pytestmark = pytest.mark.lesson7

TINY_MODEL = Model(img=TINY_IMG, llm=TINY_LLM_PG1)


@functools.cache
def tiny_params():
    """Random parameters for TINY_MODEL, drawn by numpy (no compilation)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda leaf: jnp.asarray(0.2 * rng.standard_normal(leaf.shape), leaf.dtype),
        param_shapes(TINY_MODEL, TINY_RESOLUTION),
    )


@functools.cache
def tiny_logits():
    """The tiny model's forward pass, compiled once (run op by op it takes seconds)."""
    return jax.jit(
        lambda params, image, text, mask_ar: TINY_MODEL.apply(
            {"params": params}, image, text, mask_ar
        )[0]
    )


@functools.cache
def jitted_loss(loss_fn):
    """`loss_fn` compiled for TINY_MODEL, once per function (every test uses one batch shape)."""
    return jax.jit(functools.partial(loss_fn, model=TINY_MODEL))


def named_leaves(tree) -> dict:
    """{"llm/layers/attn/q_einsum/w": leaf, ...} for any nested dict."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(key.key for key in path): leaf for path, leaf in flat}


# ----------------------------------------------------------------------------- 7.1 trainable_mask


def test_ex7_1_marks_exactly_the_named_parameters(impl):
    shapes = param_shapes(TINY_MODEL, TINY_RESOLUTION)
    prefixes = {"attn": "llm/layers/attn/", "llm": "llm/", "all": ""}
    for strategy, prefix in prefixes.items():
        mask = impl.trainable_mask(shapes, strategy)
        expect_equal(
            jax.tree.structure(mask),
            jax.tree.structure(shapes),
            what=f"tree structure of trainable_mask(params, {strategy!r})",
            hint="map over the parameter tree so the mask has one leaf per parameter",
        )
        got = named_leaves(mask)
        want = {name: name.startswith(prefix) for name in named_leaves(shapes)}
        wrong = sorted(
            name
            for name in want
            if not isinstance(got[name], bool | np.bool_) or got[name] != want[name]
        )
        expect_equal(
            wrong,
            [],
            what=f"parameters marked wrongly with strategy {strategy!r} (leaves: True or False)",
            hint=f"a parameter trains when its slash-joined name starts with {prefix!r}",
        )


def test_ex7_1_default_strategy_is_attention(impl):
    shapes = param_shapes(TINY_MODEL, TINY_RESOLUTION)
    trained = sorted(name for name, on in named_leaves(impl.trainable_mask(shapes)).items() if on)
    want = sorted(name for name in named_leaves(shapes) if name.startswith("llm/layers/attn/"))
    expect_equal(
        trained,
        want,
        what="parameters trained by trainable_mask(params) with the default strategy",
        hint='the default strategy is "attn": the decoder\'s attention weights only',
    )


def test_ex7_1_real_paligemma_trains_170m_attention_weights(impl):
    shapes = param_shapes(Model(**get_checkpoint("paligemma-3b-pt-224").config), 224)
    mask = named_leaves(impl.trainable_mask(shapes, "attn"))
    trained = sum(
        int(np.prod(leaf.shape)) for name, leaf in named_leaves(shapes).items() if mask[name]
    )
    # Gemma 2B: 18 layers, width 2048, 8 query heads, 1 key/value head, head size 256.
    layers, width, heads, head_dim = 18, 2048, 8, 256
    query = layers * heads * width * head_dim
    key_value = layers * 2 * 1 * width * head_dim
    output = layers * heads * head_dim * width
    expect_equal(
        trained,
        query + key_value + output,
        what="trainable parameters of PaliGemma 3B with strategy 'attn'",
        hint="q_einsum, kv_einsum and attn_vec_einsum of llm/layers/attn train; nothing else",
    )


def test_ex7_1_unknown_strategy_is_refused(impl):
    shapes = param_shapes(TINY_MODEL, TINY_RESOLUTION)
    expect_raises(
        ValueError,
        impl.trainable_mask,
        shapes,
        "attention",
        what='trainable_mask(params, "attention")',
        hint="raise ValueError naming the known strategies (look them up in STRATEGIES)",
    )


# ----------------------------------------------------------------------------- 7.2 loss_fn


def make_batch(suffix_lengths, prefix_len=3, seqlen=10, seed=0):
    """A batch of len(suffix_lengths) rows: prefix, suffix (ending in EOS 1), then padding 0."""
    rng = np.random.default_rng(seed)
    rows = len(suffix_lengths)
    text = np.zeros((rows, seqlen), np.int32)
    mask_ar = np.zeros((rows, seqlen), np.int32)
    for row, suffix_len in enumerate(suffix_lengths):
        end = prefix_len + suffix_len
        text[row, :end] = rng.integers(3, TINY_LLM_PG1["vocab_size"], end)
        text[row, end - 1] = 1
        mask_ar[row, prefix_len:end] = 1
    image = rng.uniform(-1, 1, (rows, TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(np.float32)
    return {"image": image, "text": text, "mask_ar": mask_ar, "mask_loss": mask_ar.copy()}


def numpy_example_losses(params, batch):
    """Each row's mean negative log-likelihood of its suffix tokens, float64[B]."""
    text = batch["text"]
    logits = tiny_logits()(params, batch["image"], text[:, :-1], batch["mask_ar"][:, :-1])
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows, steps = np.indices(text[:, 1:].shape)
    nll = -logp[rows, steps, text[:, 1:]]
    counted = batch["mask_loss"][:, 1:]
    return (nll * counted).sum(axis=1) / np.maximum(counted.sum(axis=1), 1)


def test_ex7_2_matches_the_per_example_suffix_mean(impl):
    params, batch = tiny_params(), make_batch([6, 3, 7])
    got = jitted_loss(impl.loss_fn)(params, batch)
    expect_close(
        got,
        np.float32(numpy_example_losses(params, batch).mean()),
        what="loss of a batch of 3 captions of 6, 3 and 7 tokens",
        hint="feed text[:, :-1], score text[:, 1:] with mask_loss[:, 1:]; average each example "
        "over its own suffix tokens, then average the examples",
        atol=1e-4,
        rtol=1e-4,
    )


def test_ex7_2_an_example_without_suffix_counts_zero(impl):
    params, batch = tiny_params(), make_batch([5, 4, 6])
    batch["mask_loss"][1] = 0  # nothing to learn in the second example
    got = jitted_loss(impl.loss_fn)(params, batch)
    if np.isfinite(np.asarray(got, np.float64)).all():
        # A finite but wrong loss is not a division by zero: most often the shift is off by
        # one, which the first check of 7.2 names; here only the empty example is new.
        hint = (
            "the example without counted tokens adds 0, and the mean is still over all 3 "
            "examples; if the check of the per-example mean fails too, fix that first (targets "
            "text[:, 1:], counted where mask_loss[:, 1:] is 1)"
        )
    else:
        hint = (
            "an example without counted tokens divides 0 by 0: divide each example's sum by "
            "max(its token count, 1), so that it adds 0"
        )
    expect_close(
        got,
        np.float32(numpy_example_losses(params, batch)[[0, 2]].sum() / 3),
        what="loss when the second example has no counted token",
        hint=hint,
        atol=1e-4,
        rtol=1e-4,
    )


def test_ex7_2_is_a_float32_scalar(impl):
    params, batch = tiny_params(), make_batch([4, 6, 2])
    loss = jitted_loss(impl.loss_fn)(params, batch)
    expect_equal(
        (loss.shape, str(loss.dtype)),
        ((), "float32"),
        what="shape and dtype of the loss",
        hint="reduce to one number with jnp.mean; compute the log-softmax in float32",
    )


# ----------------------------------------------------------------------------- 7.3 warmup_steps


def test_ex7_3_rounds_the_fraction_of_the_steps(impl):
    # (total_steps, warmup_fraction) -> steps; Python's round() sends a half to the even side.
    cases = {(100, 0.1): 10, (64, 0.1): 6, (65, 0.1): 6, (75, 0.1): 8, (10, 1.0): 10}
    for (total, fraction), want in cases.items():
        expect_equal(
            impl.warmup_steps(total, fraction),
            want,
            what=f"warmup_steps({total}, {fraction})",
            hint="round(warmup_fraction * total_steps) with Python's round",
        )


def test_ex7_3_any_warmup_lasts_at_least_one_step(impl):
    cases = {(4, 0.1): 1, (10, 0.0): 0, (0, 0.5): 0}
    for (total, fraction), want in cases.items():
        expect_equal(
            impl.warmup_steps(total, fraction),
            want,
            what=f"warmup_steps({total}, {fraction})",
            hint="a non-zero warmup rounds up to at least 1 step; no warmup stays 0",
        )


def test_ex7_3_default_fraction_is_a_tenth(impl):
    expect_equal(
        impl.warmup_steps(200),
        20,
        what="warmup_steps(200)",
        hint="warmup_fraction defaults to 0.1",
    )


def test_ex7_3_fraction_outside_0_1_is_refused(impl):
    for fraction in (-0.1, 1.5):
        expect_raises(
            ValueError,
            impl.warmup_steps,
            100,
            fraction,
            what=f"warmup_steps(100, {fraction})",
            hint="raise ValueError when warmup_fraction is not in [0, 1]",
        )


# ----------------------------------------------------------------------------- 7.4 cosine_schedule


def hand_schedule(step, total, base, warmup):
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    ramp = min(1.0, step / warmup) if warmup else 1.0
    return base * 0.5 * (1 + math.cos(math.pi * progress)) * ramp


def test_ex7_4_warms_up_then_decays_to_zero(impl):
    # 101 steps with 10% warmup: round(10.1) = 10 warmup steps, then 91 of cosine decay.
    landmarks = {0: 0.0, 5: 0.015, 10: 0.03, 55.5: 0.015, 101: 0.0, 120: 0.0}
    for step, want in landmarks.items():
        got = impl.cosine_schedule(step, total_steps=101, base_lr=0.03)
        expect_close(
            got,
            np.float32(want),
            what=f"cosine_schedule({step}, total_steps=101, base_lr=0.03)",
            hint="0 at step 0, base_lr after the warmup, half of it midway through the decay, "
            "0 from total_steps on",
            atol=1e-7,
        )
    for step in (3, 33, 77):
        expect_close(
            impl.cosine_schedule(step, total_steps=101, base_lr=0.03),
            np.float32(hand_schedule(step, 101, 0.03, 10)),
            what=f"cosine_schedule({step}, total_steps=101, base_lr=0.03)",
            hint="base_lr * 0.5 * (1 + cos(pi * progress)) * min(1, step / warmup)",
            atol=1e-7,
        )


def test_ex7_4_without_warmup_starts_at_the_base_rate(impl):
    for step in (0, 20, 50):
        expect_close(
            impl.cosine_schedule(step, total_steps=50, base_lr=2.0, warmup_fraction=0.0),
            np.float32(hand_schedule(step, 50, 2.0, 0)),
            what=f"cosine_schedule({step}, total_steps=50, base_lr=2.0, warmup_fraction=0.0)",
            hint="with no warmup steps skip the ramp (and never divide by 0)",
            atol=1e-6,
        )


def test_ex7_4_runs_inside_jit_as_float32(impl):
    schedule = jax.jit(lambda step: impl.cosine_schedule(step, total_steps=101, base_lr=0.03))
    got = schedule(jnp.int32(33))
    expect_equal(
        (got.shape, str(got.dtype)),
        ((), "float32"),
        what="shape and dtype of the jitted schedule",
        hint="compute with jax.numpy (jnp.cos, jnp.clip, jnp.minimum) and return float32",
    )
    expect_close(
        got,
        np.float32(hand_schedule(33, 101, 0.03, 10)),
        what="jitted cosine_schedule(33, total_steps=101, base_lr=0.03)",
        hint="inside jit the step is a traced array: no Python min/max or math.cos on it",
        atol=1e-7,
    )


def test_ex7_4_all_warmup_is_refused(impl):
    expect_raises(
        ValueError,
        impl.cosine_schedule,
        0,
        total_steps=5,
        base_lr=0.1,
        warmup_fraction=1.0,
        what="cosine_schedule(0, total_steps=5, base_lr=0.1, warmup_fraction=1.0)",
        hint="raise ValueError when the warmup takes all of total_steps",
    )


# -- exercise 7.5: a LoRA layer ------------------------------------------------------


def _lora_case(seed: int = 0, m: int = 5, d_in: int = 6, d_out: int = 4, r: int = 2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d_in)).astype(np.float32)
    w = rng.normal(size=(d_in, d_out)).astype(np.float32)
    a = rng.normal(size=(d_in, r)).astype(np.float32)
    b = rng.normal(size=(r, d_out)).astype(np.float32)
    return x, w, a, b


def test_ex7_5_adds_the_scaled_low_rank_update(impl):
    x, w, a, b = _lora_case()
    got = impl.lora_linear(x, w, a, b, 0.5)
    expect_close(
        np.asarray(got),
        x @ w + 0.5 * x @ a @ b,
        what="lora_linear(x, w, a, b, scale=0.5)",
        hint="x @ w plus scale times (x @ a) @ b",
        atol=1e-4,
    )


def test_ex7_5_with_b_zero_is_the_frozen_layer(impl):
    x, w, a, b = _lora_case(seed=1)
    expect_close(
        np.asarray(impl.lora_linear(x, w, a, np.zeros_like(b), 2.0)),
        x @ w,
        what="lora_linear with b = 0 (a fresh adapter)",
        hint="a fresh adapter adds nothing: the update is scale * (x @ a) @ b",
        atol=1e-5,
    )


def test_ex7_5_reads_a_bfloat16_weight_and_answers_in_float32(impl):
    x, w, a, b = _lora_case(seed=2)
    w16 = jnp.asarray(w, jnp.bfloat16)
    got = impl.lora_linear(jnp.asarray(x), w16, jnp.asarray(a), jnp.asarray(b), 1.0)
    expect_equal(
        str(jnp.asarray(got).dtype),
        "float32",
        what="dtype of lora_linear's output for a bfloat16 weight",
        hint="cast x and w to float32 before the matmuls",
    )
    want = x @ np.asarray(w16, np.float32) + x @ a @ b
    expect_close(np.asarray(got), want, what="lora_linear with a bfloat16 w", hint="", atol=1e-4)


def test_ex7_5_equals_the_merged_weight(impl):
    x, w, a, b = _lora_case(seed=3, r=3)
    expect_close(
        np.asarray(impl.lora_linear(x, w, a, b, 0.25)),
        x @ (w + 0.25 * a @ b),
        what="lora_linear against x @ (w + scale * a @ b)",
        hint="the two forms are the same sum; check the scale and which side a and b go",
        atol=1e-4,
    )
