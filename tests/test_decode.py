"""Decoding: the KV-cache loop against a full recompute, EOS, samplers, batching."""

from __future__ import annotations

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solutions import evaluate
from solutions.evaluate import (
    EOS_TOKEN,
    PAD_TOKEN,
    Sampler,
    decode,
    make_predictions,
    resolve_sampler,
    sample_logits,
)
from solutions.model import Model, init_params
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_LLM_PG2, TINY_RESOLUTION, randomize

PROMPT_LENGTHS = (6, 3, 5)  # ragged: every row pads a different amount
PADDED_LEN = 7
DECODE_LEN = 8
TINY_LLMS = {"pg1": TINY_LLM_PG1, "pg2": TINY_LLM_PG2}


@functools.cache
def _tiny_model(name: str):
    """(model, randomized params), built once per session."""
    model = Model(img=TINY_IMG, llm=TINY_LLMS[name])
    params = randomize(init_params(model, TINY_RESOLUTION))
    # A random tied token table favours its longest rows: greedy decoding then
    # repeats one token whatever the input. Rows of one length make the output
    # follow the input, so comparing token sequences catches more mistakes.
    table = np.asarray(params["llm"]["embedder"]["input_embedding"])
    table = 0.2 * table / np.linalg.norm(table, axis=1, keepdims=True)
    params["llm"]["embedder"]["input_embedding"] = jnp.asarray(table)
    return model, params


@pytest.fixture(scope="module", params=sorted(TINY_LLMS))
def tiny_model(request):
    """(model, randomized params) of the tiny PG1- and PG2-style models."""
    return _tiny_model(request.param)


@pytest.fixture(scope="module")
def pg1_model():
    """The tiny PG1-style model alone, for tests about the loop rather than the model."""
    return _tiny_model("pg1")


@pytest.fixture(scope="module")
def ragged_batch():
    """Three right-padded prompts: a 2-token full-attention prefix, then causal tokens."""
    rng = np.random.default_rng(1)
    batch = len(PROMPT_LENGTHS)
    real = np.arange(PADDED_LEN)[None, :] < np.array(PROMPT_LENGTHS)[:, None]
    return {
        "image": rng.uniform(-1, 1, (batch, TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(
            np.float32
        ),
        "text": np.where(real, rng.integers(3, 96, (batch, PADDED_LEN)), 0).astype(np.int32),
        "mask_ar": np.where(real, [[0, 0] + [1] * (PADDED_LEN - 2)], 0).astype(np.int32),
        "mask_input": real.astype(np.int32),
    }


def naive_greedy(model, params, batch, max_decode_len):
    """Greedy tokens without a cache and without EOS: one full forward per new token.

    Each row's sequence grows in a fixed-size buffer: its prompt, then the
    tokens chosen so far, then padding that `input_mask` hides from attention,
    so the whole forward compiles once.

    Returns int32[B, max_decode_len].
    """
    lengths = batch["mask_input"].sum(axis=1)
    rows = np.arange(len(lengths))
    size = batch["text"].shape[1] + max_decode_len
    in_prompt = np.arange(size)[None, :] < lengths[:, None]
    text = np.zeros((len(rows), size), np.int32)
    text[:, : batch["text"].shape[1]] = batch["text"]
    text = np.where(in_prompt, text, 0)
    mask_ar = np.ones((len(rows), size), np.int32)  # generated tokens are causal
    mask_ar[:, : batch["mask_ar"].shape[1]] = batch["mask_ar"]
    mask_ar = np.where(in_prompt, mask_ar, 1)

    @jax.jit
    def forward(text, input_mask):
        logits, _ = model.apply(
            {"params": params}, batch["image"], text, mask_ar, input_mask=input_mask
        )
        return logits

    for step in range(max_decode_len):
        ends = lengths + step  # where this step's token goes
        logits = forward(text, np.arange(size)[None, :] < ends[:, None])
        text[rows, ends] = np.argmax(logits[rows, ends - 1], axis=-1)
    return text[rows[:, None], lengths[:, None] + np.arange(max_decode_len)]


def cut_at_eos(tokens, eos_token):
    """`decode`'s convention: each row keeps its first EOS, PAD_TOKEN after it."""
    after_eos = np.cumsum(np.cumsum(tokens == eos_token, axis=1), axis=1) > 1
    return np.where(after_eos, PAD_TOKEN, tokens)


def steps_needed(tokens, eos_token):
    """Tokens the longest row needs: up to and including its first EOS, else all."""
    hits = tokens == eos_token
    return int(np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, tokens.shape[1]).max())


@pytest.fixture(scope="module")
def free_run(tiny_model, ragged_batch):
    """The reference greedy tokens of `ragged_batch`, int32[3, DECODE_LEN], EOS ignored."""
    model, params = tiny_model
    return naive_greedy(model, params, ragged_batch, DECODE_LEN)


# -- cached greedy decode == full recompute ---------------------------------------


def test_cached_decode_matches_full_recompute_for_ragged_prompts(
    tiny_model, ragged_batch, free_run
):
    model, params = tiny_model
    tokens = decode(params, ragged_batch, model=model, max_decode_len=DECODE_LEN)
    assert tokens.dtype == np.int32 and tokens.shape == (3, DECODE_LEN)
    np.testing.assert_array_equal(tokens, cut_at_eos(free_run, EOS_TOKEN))


def test_unrolled_layers_decode_the_same_tokens(tiny_model, ragged_batch, free_run):
    """Fully unrolled towers (the path that slices layer weights once, outside
    the token loop) give the same greedy tokens as the scanned ones."""
    model, params = tiny_model
    unrolled = Model(
        img={**model.img, "scan_unroll": TINY_IMG["depth"]},
        llm={**model.llm, "scan_unroll": model.llm["depth"]},
    )
    tokens = decode(params, ragged_batch, model=unrolled, max_decode_len=DECODE_LEN)
    np.testing.assert_array_equal(tokens, cut_at_eos(free_run, EOS_TOKEN))


# -- EOS and early stopping ---------------------------------------------------------


def test_eos_ends_its_row_and_pads_the_rest(tiny_model, ragged_batch, free_run):
    """Declare as EOS a token a row first produces mid-way: that row stops there."""
    model, params = tiny_model
    row, step = next(
        (row, i)
        for row, i in itertools.product(range(len(PROMPT_LENGTHS)), range(1, DECODE_LEN))
        if free_run[row, i] not in free_run[row, :i]
    )
    eos = int(free_run[row, step])
    tokens, num_steps = decode(
        params,
        ragged_batch,
        model=model,
        max_decode_len=DECODE_LEN,
        eos_token=eos,
        return_num_steps=True,
    )
    np.testing.assert_array_equal(tokens[row, : step + 1], free_run[row, : step + 1])
    assert (tokens[row, step + 1 :] == PAD_TOKEN).all()
    np.testing.assert_array_equal(tokens, cut_at_eos(free_run, eos))
    assert num_steps == steps_needed(free_run, eos)


def test_loop_stops_once_every_row_emitted_eos(tiny_model, ragged_batch, free_run):
    """All rows identical, EOS = their first greedy token: one step even with room for 1000."""
    model, params = tiny_model
    same = {k: np.repeat(v[:1], 3, axis=0) for k, v in ragged_batch.items()}
    first = int(free_run[0, 0])
    tokens, num_steps = decode(
        params, same, model=model, max_decode_len=1000, eos_token=first, return_num_steps=True
    )
    assert num_steps == 1
    assert (tokens[:, 0] == first).all() and (tokens[:, 1:] == PAD_TOKEN).all()


def test_loop_runs_to_the_length_without_eos(tiny_model, ragged_batch, free_run):
    model, params = tiny_model
    unused = next(t for t in range(96) if t not in free_run)
    tokens, num_steps = decode(
        params,
        ragged_batch,
        model=model,
        max_decode_len=DECODE_LEN,
        eos_token=unused,
        return_num_steps=True,
    )
    assert num_steps == DECODE_LEN
    np.testing.assert_array_equal(tokens, free_run)


def test_repeated_calls_compile_once(pg1_model, ragged_batch, monkeypatch):
    """Same shapes and sampler, different seeds: the decode is traced once."""
    model, params = pg1_model
    traces = []
    original = evaluate._decode_tokens

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_decode_tokens", counting)
    for seed in range(3):  # a length no other test uses, so nothing is cached yet
        decode(params, ragged_batch, model=model, max_decode_len=3, sampler="sample", seed=seed)
    assert len(traces) == 1


def test_new_sampler_settings_compile_nothing(pg1_model, ragged_batch):
    """Greedy, then new temperatures, top-k and top-p: one compiled decoder serves all,
    as the app's sliders need (the settings are traced values)."""
    model, params = pg1_model
    length = 5  # a length no other test uses, so the first call compiles
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    decode(params, ragged_batch, model=model, max_decode_len=length)
    settings = [dict(temperature=0.7), dict(top_k=3), dict(top_p=0.5), dict(top_k=2, top_p=0.9)]
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for seed, options in enumerate(settings):
            decode(
                params,
                ragged_batch,
                model=model,
                max_decode_len=length,
                sampler="sample",
                seed=seed,
                **options,
            )
        decode(params, ragged_batch, model=model, max_decode_len=length, sampler="greedy")
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []
    compiled = evaluate._compiled_decode(evaluate._ByIdentity(model), length, EOS_TOKEN)
    assert compiled._cache_size() == 1


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")
def test_decode_compiler_options_reach_the_compiler(pg1_model, ragged_batch):
    """The decoder's XLA:CPU scheduler option changes the compiled program's order.

    jax passes an option name it does not check against what the compiler reads:
    this catches an option that compiles but has stopped doing anything.
    """
    model, params = pg1_model
    length = 4
    arrays = evaluate._checked_batch(ragged_batch)
    args = (params, *arrays, jax.random.PRNGKey(0), evaluate.Sampler().knobs())
    decode_tokens = functools.partial(
        evaluate._decode_tokens, model=model, max_decode_len=length, eos_token=EOS_TOKEN
    )

    def schedule(jitted) -> list[str]:
        """The compiled program's instruction names, in the order they run."""
        return re.findall(
            r"^\s*(?:ROOT )?%([\w.-]+) = ", jitted.lower(*args).compile().as_text(), re.M
        )

    with_options = jax.jit(decode_tokens, compiler_options=evaluate.DECODE_COMPILER_OPTIONS)
    assert schedule(with_options) != schedule(jax.jit(decode_tokens))
    compiled = evaluate._compiled_decode(evaluate._ByIdentity(model), length, EOS_TOKEN)
    assert schedule(compiled) == schedule(with_options)


# -- samplers -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 6, 50])
def test_traced_top_k_filters_as_a_static_one(k):
    logits = jnp.array([[0.3, 2.0, -1.0, 1.5, 0.9, 1.8], [1.0, 1.0, 0.5, 0.5, 2.0, -3.0]])
    traced = jax.jit(evaluate.keep_top_k)(logits, jnp.int32(k))
    np.testing.assert_array_equal(traced, evaluate.keep_top_k(logits, k))


@pytest.mark.parametrize(
    "sampler",
    [Sampler(temperature=1.0, top_k=1), Sampler(temperature=1.0, top_p=1e-6), Sampler(1e-5)],
    ids=["top_k=1", "top_p=1e-6", "temperature=1e-5"],
)
def test_degenerate_samplers_equal_greedy(sampler):
    logits = 3 * jax.random.normal(jax.random.PRNGKey(3), (64, 96))
    greedy = sample_logits(logits, None, Sampler())
    for seed in range(3):
        sampled = sample_logits(logits, jax.random.PRNGKey(seed), sampler)
        np.testing.assert_array_equal(sampled, greedy)


def test_decode_with_top_k_1_equals_greedy_decode(pg1_model, ragged_batch):
    model, params = pg1_model
    greedy = decode(params, ragged_batch, model=model, max_decode_len=DECODE_LEN)
    for seed in (0, 1):
        sampled = decode(
            params,
            ragged_batch,
            model=model,
            max_decode_len=DECODE_LEN,
            sampler="topk(k=1)",
            seed=seed,
        )
        np.testing.assert_array_equal(sampled, greedy)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(temperature=1.5, top_k=20, top_p=0.95)],
    ids=["plain", "combined"],
)
def test_sampling_is_seeded(pg1_model, ragged_batch, options):
    model, params = pg1_model

    def sample(seed):
        return decode(
            params,
            ragged_batch,
            model=model,
            max_decode_len=DECODE_LEN,
            sampler="sample",
            seed=seed,
            **options,
        )

    np.testing.assert_array_equal(sample(7), sample(7))
    assert any(not np.array_equal(sample(7), sample(seed)) for seed in range(3))


def test_every_step_draws_fresh_noise(pg1_model, ragged_batch):
    """At a huge temperature every token is about uniform: reused noise would repeat one."""
    model, params = pg1_model
    tokens = decode(
        params,
        ragged_batch,
        model=model,
        max_decode_len=DECODE_LEN,
        sampler="sample",
        temperature=1e6,
        eos_token=-1,  # an id no token has: rows never stop early
    )
    assert all(len(set(row)) > DECODE_LEN // 2 for row in tokens.tolist()), tokens


def _draws(logits, sampler, num=400):
    keys = jax.random.split(jax.random.PRNGKey(0), num)
    draw = jax.jit(jax.vmap(lambda key: sample_logits(logits, key, sampler)))
    return set(np.asarray(draw(keys)).ravel().tolist())


def test_top_k_samples_only_the_k_best():
    logits = jnp.array([[0.3, 2.0, -1.0, 1.5, 0.9, 1.8]])
    best_three = set(np.argsort(-np.asarray(logits[0]))[:3].tolist())
    assert _draws(logits, Sampler(temperature=1.0, top_k=3)) == best_three


@pytest.mark.parametrize("top_p", [0.4, 0.7, 0.9])
def test_nucleus_keeps_the_smallest_set_reaching_p(top_p):
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.log(jnp.array([probs], jnp.float32))
    order = np.argsort(-probs)
    mass_above = np.cumsum(probs[order]) - probs[order]
    expected = set(order[mass_above < top_p].tolist())
    assert _draws(logits, Sampler(temperature=1.0, top_p=top_p)) == expected


def test_temperature_spreads_or_sharpens_the_draws():
    logits = jnp.array([[3.0, 0.0, 0.0, 0.0]])
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)

    def share_of_best(t):
        draws = jax.vmap(lambda key: sample_logits(logits, key, Sampler(temperature=t)))(keys)
        return float(jnp.mean(draws == 0))

    # Softmax probability of token 0 at temperature t: e^(3/t) / (e^(3/t) + 3).
    for t in (0.5, 1.0, 4.0):
        expected = np.exp(3 / t) / (np.exp(3 / t) + 3)
        assert abs(share_of_best(t) - expected) < 0.03, t


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("greedy", Sampler()),
        ("temperature(t=0.7)", Sampler(temperature=0.7)),
        ("topk(k=40)", Sampler(temperature=1.0, top_k=40)),
        ("topk(k=40, t=0.8)", Sampler(temperature=0.8, top_k=40)),
        ("nucleus(p=0.9)", Sampler(temperature=1.0, top_p=0.9)),
        ("nucleus(0.9)", Sampler(temperature=1.0, top_p=0.9)),
    ],
)
def test_sampler_strings(spec, expected):
    assert resolve_sampler(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("beam(4)", "Unknown sampler"),
        ("topk(q=3)", "Bad arguments"),
        ("nucleus(p=1.5)", "top_p"),
        ("temperature(t=-1)", "temperature"),
        ("topk(", "Cannot read sampler"),
    ],
)
def test_bad_sampler_strings_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_sampler(spec)


def test_knobs_without_sample_are_refused():
    with pytest.raises(ValueError, match="sampler='sample'"):
        resolve_sampler("greedy", top_k=40)
    assert resolve_sampler("sample", temperature=0.5, top_p=0.9) == Sampler(0.5, 0, 0.9)


# -- input validation ---------------------------------------------------------------


def test_left_padded_prompts_are_refused(pg1_model, ragged_batch):
    model, params = pg1_model
    flipped = {**ragged_batch, "mask_input": ragged_batch["mask_input"][:, ::-1]}
    with pytest.raises(ValueError, match=r"rows \[0, 1, 2\].*right-padded"):
        decode(params, flipped, model=model, max_decode_len=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: {k: v for k, v in b.items() if k != "mask_input"}, "lacks \\['mask_input'\\]"),
        (lambda b: {**b, "mask_ar": b["mask_ar"][:, :-1]}, "mask_ar"),
        (lambda b: {**b, "text": b["text"][:2]}, "batch\\['text'\\]"),
        (lambda b: {**b, "image": b["image"][..., :1]}, "batch\\['image'\\]"),
        (lambda b: {**b, "text": b["text"].astype(np.float32)}, "integer token ids"),
    ],
    ids=["missing", "mask-shape", "batch-size", "channels", "float-text"],
)
def test_inconsistent_batches_are_refused(pg1_model, ragged_batch, change, message):
    model, params = pg1_model
    with pytest.raises(ValueError, match=message):
        decode(params, change(ragged_batch), model=model, max_decode_len=2)


def test_max_decode_len_must_be_positive(pg1_model, ragged_batch):
    model, params = pg1_model
    with pytest.raises(ValueError, match="max_decode_len"):
        decode(params, ragged_batch, model=model, max_decode_len=0)


# -- make_predictions -----------------------------------------------------------------


def _examples(num):
    """`num` single examples with different images and prompt lengths."""
    rng = np.random.default_rng(2)
    for i in range(num):
        length = 2 + i % 4
        real = np.arange(PADDED_LEN) < length
        yield {
            "image": rng.uniform(-1, 1, (TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(np.float32),
            "text": np.where(real, rng.integers(3, 96, PADDED_LEN), 0).astype(np.int32),
            "mask_ar": np.zeros(PADDED_LEN, np.int32),
            "mask_input": real.astype(np.int32),
            "mask_loss": np.zeros(PADDED_LEN, np.int32),  # extra keys are ignored
        }


def test_make_predictions_pads_the_last_batch_and_keeps_order(pg1_model):
    model, params = pg1_model
    examples = list(_examples(7))
    results = make_predictions(
        params,
        examples,
        model=model,
        batch_size=4,
        max_decode_len=5,
        postprocess=lambda tokens: " ".join(map(str, tokens)),
        progress=False,
    )
    assert len(results) == 7
    everything = {k: np.stack([e[k] for e in examples]) for k in evaluate.BATCH_KEYS}
    expected = decode(params, everything, model=model, max_decode_len=5)
    for (image, text), example, tokens in zip(results, examples, expected, strict=True):
        np.testing.assert_array_equal(image, example["image"])
        assert text == " ".join(map(str, tokens))


def test_make_predictions_reads_only_num_examples(pg1_model):
    model, params = pg1_model
    stream = _examples(10)
    results = make_predictions(
        params,
        stream,
        model=model,
        batch_size=4,
        max_decode_len=5,
        postprocess=lambda tokens: tokens.tolist(),
        num_examples=5,
        progress=False,
    )
    assert len(results) == 5
    assert len(list(itertools.islice(stream, 10))) == 5  # the other five are still unread


# -- Hugging Face parity --------------------------------------------------------------


def _hf_greedy(hf_model, batch, row, max_new_tokens):
    """transformers' greedy `generate` for one unpadded row, padded like `decode`'s output."""
    import torch

    length = int(batch["mask_input"][row].sum())
    num_image_tokens = (TINY_RESOLUTION // TINY_IMG["patch_size"]) ** 2
    image_token = hf_model.config.image_token_index
    input_ids = [image_token] * num_image_tokens + batch["text"][row, :length].tolist()
    # 0: full-attention prefix (image tokens and mask_ar == 0), 1: causal suffix.
    token_type_ids = [0] * num_image_tokens + batch["mask_ar"][row, :length].tolist()
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=torch.tensor([input_ids]),
            token_type_ids=torch.tensor([token_type_ids]),
            attention_mask=torch.ones((1, len(input_ids)), dtype=torch.long),
            pixel_values=torch.tensor(batch["image"][row : row + 1].transpose(0, 3, 1, 2)),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=EOS_TOKEN,
            pad_token_id=PAD_TOKEN,
        )
    new_tokens = out[0, len(input_ids) :].numpy()
    return np.pad(new_tokens, (0, max_new_tokens - len(new_tokens)), constant_values=PAD_TOKEN)


@pytest.mark.parity
def test_greedy_tokens_match_transformers_generate(tiny_model, ragged_batch):
    """Our batched, ragged, cached decode against transformers' `generate`, row by row."""
    torch = pytest.importorskip(
        "torch", reason="needs the parity extra: pip install -e '.[parity]'"
    )
    transformers = pytest.importorskip("transformers", reason="needs the parity extra")
    from solutions.hf import to_hf_config, to_hf_state_dict

    model, params = tiny_model
    config = {"img": model.img, "llm": model.llm}
    hf_config = transformers.PaliGemmaConfig(**to_hf_config(config, resolution=TINY_RESOLUTION))
    hf_model = transformers.PaliGemmaForConditionalGeneration(hf_config).eval()
    state_dict = to_hf_state_dict(params, config, resolution=TINY_RESOLUTION)
    hf_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})

    ours = decode(params, ragged_batch, model=model, max_decode_len=DECODE_LEN)
    for row in range(len(PROMPT_LENGTHS)):
        np.testing.assert_array_equal(
            ours[row], _hf_greedy(hf_model, ragged_batch, row, DECODE_LEN)
        )
