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
# # Lesson 8: Decoding and evaluation
#
# A trained PaliGemma gives, for every position, a probability for each possible next token.
# Turning that into a caption is *decoding*; saying how good the caption is, *evaluation*.
# This lesson opens both boxes on the course's tiny PaliGemma.
#
# **What you will learn**
#
# - why decoding keeps a key/value cache: the prompt is run once, then one token at a time;
# - how the next token is picked: greedy, temperature, top-k and nucleus (top-p) sampling;
# - how a whole dataset is captioned in batches (`make_predictions`);
# - how captions are scored: CIDEr, which rewards saying what the references say, and object F1,
#   which checks the shapes a caption names against the true scene.
#
# **Time:** about 30 minutes with the exercises; the cells run in about a minute on a laptop CPU.

# %% tags=["setup"]
import functools
import math
import pathlib
import re  # noqa: F401 (exercise 8.3 uses it)
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from solutions import data, scenes
from solutions.checkpoints import load_tiny
from solutions.configs import get_checkpoint
from solutions.evaluate import EOS_TOKEN, Sampler, decode, make_predictions, sample_logits
from solutions.model import Model, param_shapes
from solutions.preprocess import postprocess_tokens
from tests.grading import check

# %% [markdown]
# ## The model and the prompts
#
# The shipped tiny PaliGemma, in float32, and 8 validation scenes of lesson 6 with long captions.
# For decoding, an example is its image and its *prompt*: `caption en\n` as tokens, right-padded
# (real tokens first, then padding) to a fixed length, so every batch has one shape.

# %%
model, resolution, params, tokenizer = load_tiny()
params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)

PROMPT_LEN = 16
workdir = pathlib.Path(tempfile.mkdtemp(prefix="lesson08-"))
paths = scenes.write_dataset(workdir, n_train=0, n_val=8, n_test=0, caption="long")
val_set = data.read_jsonl(paths["val"])
prompts = list(
    data.validation_examples(val_set, tokenizer=tokenizer, seqlen=PROMPT_LEN, image_size=resolution)
)
batch = next(data.batches(prompts, len(prompts)))
for key, value in batch.items():
    print(f"{key:10s} {value.dtype}{list(value.shape)}")
print("prompt tokens:", [tokenizer.id_to_piece(int(t)) for t in batch["text"][0, :6]], "...")

# What decoding needs, for the first two images: the demos below compare ways to decode them.
pair = {key: batch[key][:2] for key in ("image", "text", "mask_ar", "mask_input")}

# %% [markdown]
# ## Decoding, the slow way
#
# The model reads a sequence and returns, at every position, logits for the next token. So one
# way to write a caption is: run the whole sequence (image tokens, prompt, the caption so far),
# take the logits at the last real position, pick the most likely token (*greedy*), append it,
# and run everything again.
#
# The sequence buffer below has room for the prompt and the new tokens; `input_mask` hides the
# slots not written yet, so every step has the same shapes and compiles once.

# %%
MAX_DECODE_LEN = 48


@jax.jit
def greedy_next_token(params, image, text, mask_ar, lengths):
    """int32[B]: the argmax after each row's `lengths` real tokens, from a full forward pass."""
    input_mask = jnp.arange(text.shape[1])[None, :] < lengths[:, None]
    logits, _ = model.apply({"params": params}, image, text, mask_ar, input_mask=input_mask)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return jnp.argmax(last, axis=-1).astype(jnp.int32)


def naive_greedy(params, batch, max_decode_len):
    """int32[B, max_decode_len]: greedy tokens, recomputing the whole sequence at every step."""
    rows, prompt_len = batch["text"].shape
    text = np.zeros((rows, prompt_len + max_decode_len), np.int32)
    mask_ar = np.zeros_like(text)
    text[:, :prompt_len], mask_ar[:, :prompt_len] = batch["text"], batch["mask_ar"]
    lengths = batch["mask_input"].sum(axis=1).astype(np.int32)
    generated = np.zeros((rows, max_decode_len), np.int32)
    for step in range(max_decode_len):
        token = np.asarray(greedy_next_token(params, batch["image"], text, mask_ar, lengths))
        # The new token fills the first free slot: real tokens stay contiguous.
        text[np.arange(rows), lengths], mask_ar[np.arange(rows), lengths] = token, 1
        generated[:, step] = token
        lengths += 1
    return generated


naive_tokens = naive_greedy(params, pair, MAX_DECODE_LEN)
print("tokens:", list(naive_tokens.shape))
print("first caption:", postprocess_tokens(naive_tokens[0], tokenizer=tokenizer))

# %% [markdown]
# Every step redoes all the work of the steps before: with N image tokens and a prompt of P,
# new token t needs the model run over N + P + t - 1 positions (this version even runs the whole
# buffer every time, to keep one shape), and all of it but the last position was computed
# before.
#
# ## The key/value cache
#
# In a decoder, the only thing a position passes on to later positions is its attention *key*
# and *value* in each layer, and a causal model never changes them afterwards. So they can be
# kept: a **KV cache**, one slot per position, preallocated for the prompt plus every token
# still to come.
#
# - **Prefill**: run the image and prompt once, with the prefix-LM attention mask, and write their
#   keys and values into the cache. Out come the logits of the first new token.
# - **Extend**: embed one token per row, compute its query, key and value, write the key and
#   value at the row's next slot, and attend to the cache. Out come the logits of the next token.
#
# Here are both on the tiny model (`Model.prefill_cache` and `Model.extend_cache`, applied with
# `mutable=["cache"]` because they write to it):


# %%
@functools.partial(jax.jit, static_argnames="cache_size")
def prefill(params, batch, cache_size):
    (x, input_mask, mask_ar), _ = model.apply(
        {"params": params},
        batch["image"],
        batch["text"],
        input_mask=batch["mask_input"],
        mask_ar=batch["mask_ar"],
        method="embed_image_and_text",
    )
    logits, state = model.apply(
        {"params": params},
        x,
        input_mask,
        mask_ar,
        cache_size=cache_size,
        method="prefill_cache",
        mutable=["cache"],
    )
    return logits, state["cache"]


# The old cache is donated: its buffers take the new one, so the extend writes in place.
@functools.partial(jax.jit, donate_argnames="cache")
def extend(params, cache, token):
    x = model.apply({"params": params}, token[:, None], method="embed_text")
    logits, state = model.apply(
        {"params": params, "cache": cache}, x, method="extend_cache", mutable=["cache"]
    )
    return logits, state["cache"]


num_image_tokens = (resolution // model.img["patch_size"]) ** 2
cache_size = num_image_tokens + PROMPT_LEN + MAX_DECODE_LEN
first_logits, cache = prefill(params, pair, cache_size)
for path, value in jax.tree_util.tree_flatten_with_path(cache)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    print(f"{name:28s} {value.dtype}{list(value.shape)}")
print("next_position after prefill:", cache["next_position"])
print("logits of the first new token:", list(first_logits.shape))

# %% [markdown]
# `k_cache` and `v_cache` are `[L, B, S, K, H]`: layers (stacked, as the parameters are), batch,
# slots (image tokens + prompt + new tokens), key/value heads, head size. `next_position` is each
# row's count of real tokens: the slot its next token goes to. The prompt's padding slots are
# overwritten by the new tokens as they come, and each step attends only to slots up to its own.
# The scan over layers carries the whole cache and each layer writes its own slots into it, in
# place; `extend` donates the cache it is given, so no step copies it.
#
# On a real PaliGemma the cache is large. `jax.eval_shape` traces the prefill of the 3B models
# without computing anything, so we can read the sizes (float32 here; bfloat16 halves them):


# %%
def cache_megabytes(checkpoint_name, new_tokens=64, prompt_len=16):
    """Size of one image's KV cache for a released checkpoint, from shapes alone."""
    info = get_checkpoint(checkpoint_name)
    real_model = Model(**info.config)
    image = jax.ShapeDtypeStruct((1, info.resolution, info.resolution, 3), jnp.float32)
    text = jax.ShapeDtypeStruct((1, prompt_len), jnp.int32)

    def real_prefill(params, image, text):
        (x, input_mask, mask_ar), _ = real_model.apply(
            {"params": params}, image, text, method="embed_image_and_text"
        )
        cache_size = x.shape[1] + new_tokens
        return real_model.apply(
            {"params": params},
            x,
            input_mask,
            mask_ar,
            cache_size=cache_size,
            method="prefill_cache",
            mutable=["cache"],
        )[1]["cache"]

    shapes = jax.eval_shape(real_prefill, param_shapes(real_model, info.resolution), image, text)
    print(f"{checkpoint_name:22s} k_cache {list(shapes['llm']['k_cache'].shape)}")
    return sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes)) / 1e6


names = [
    "paligemma-3b-pt-224",
    "paligemma-3b-pt-896",
    "paligemma2-3b-pt-224",
    "paligemma2-3b-pt-896",
]
sizes = {name: cache_megabytes(name) for name in names}
figure, ax = plt.subplots(figsize=(6, 2.6))
bars = ax.barh(list(sizes), list(sizes.values()), color="tab:purple")
ax.bar_label(bars, fmt="%.0f MB")
ax.set(xlabel="MB per image (float32)", title="KV cache: prompt + 64 new tokens")
plt.show()

# %% [markdown]
# PaliGemma 2 has 26 layers to PaliGemma 1's 18 and keeps 4 key/value heads where PaliGemma 1
# keeps one (grouped-query attention), and at 896 pixels the image alone is 4096 tokens: the
# cache grows with all three.
#
# With prefill and extend, greedy decoding is a short loop. It is the same computation as the
# slow way, so it must pick the same tokens:


# %%
def cached_greedy(params, batch, max_decode_len):
    """Greedy decoding with one prefill and one extend per token.

    Returns:
      (int32[B, max_decode_len] tokens, float32[B, max_decode_len, V] the logits each token was
      picked from).
    """
    logits, cache = prefill(params, batch, cache_size)
    generated, seen = [], []
    for _ in range(max_decode_len):
        token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        generated.append(token)
        seen.append(logits[:, 0])
        logits, cache = extend(params, cache, token)
    return np.stack(generated, axis=1), np.stack(seen, axis=1)


def cut_after_eos(tokens):
    """Padding (0) after each row's first EOS, as `decode` writes it."""
    after_eos = np.cumsum(tokens == EOS_TOKEN, axis=1) - (tokens == EOS_TOKEN) > 0
    return np.where(after_eos, 0, tokens)


cached_tokens, cached_logits = cached_greedy(params, pair, MAX_DECODE_LEN)
same = np.mean(np.all(cut_after_eos(cached_tokens) == cut_after_eos(naive_tokens), axis=1))
print(f"rows identical to the slow way: {same:.0%}")

# %% [markdown]
# (Identical up to rounding: both add the same numbers, but in a different order, so on a near
# tie the two could in principle pick different tokens.)
#
# `solutions.evaluate.decode` is this loop compiled whole: a `jax.lax.while_loop` carries the
# cache, the tokens and a "done" flag per row, and stops as soon as every row has written EOS,
# so no token travels back to Python in between.

# %%
decoded = decode(params, pair, model=model, max_decode_len=MAX_DECODE_LEN)
same = np.mean(np.all(decoded == cut_after_eos(cached_tokens), axis=1))
print(f"rows identical to the cached loop: {same:.0%}")

# %% [markdown]
# All three are compiled now, so a second call of each measures the decoding alone. `decode`
# may stop early (when every row has written EOS), so the fair unit is time per generated token.


# %%
def milliseconds_per_token(generate):
    """Runs `generate() -> number of tokens generated per row` and times it."""
    start = time.perf_counter()
    steps = generate()
    return 1000 * (time.perf_counter() - start) / steps


def decode_steps():
    _, steps = decode(
        params, pair, model=model, max_decode_len=MAX_DECODE_LEN, return_num_steps=True
    )
    return steps


timings = {
    "recompute\neverything": milliseconds_per_token(
        lambda: naive_greedy(params, pair, MAX_DECODE_LEN).shape[1]
    ),
    "KV cache,\nPython loop": milliseconds_per_token(
        lambda: cached_greedy(params, pair, MAX_DECODE_LEN)[0].shape[1]
    ),
    "KV cache,\ncompiled loop": milliseconds_per_token(decode_steps),
}
positions = np.arange(1, MAX_DECODE_LEN + 1)
figure, (work_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 3), layout="constrained")
work_ax.plot(positions, num_image_tokens + PROMPT_LEN + positions - 1, label="recompute everything")
work_ax.plot(positions, np.ones_like(positions), label="with the KV cache")
work_ax.set(xlabel="new token", ylabel="positions run", title="Work per new token", yscale="log")
work_ax.legend()
bars = time_ax.bar(list(timings), list(timings.values()), color="tab:green")
time_ax.bar_label(bars, fmt="%.1f ms")
time_ax.set(ylabel="ms per token", title=f"Measured here, {len(decoded)} images at once")
plt.show()

# %% [markdown]
# ## Picking the next token
#
# Greedy decoding always takes the most likely token: deterministic, and usually the best choice
# for captions. *Sampling* draws the token from the softmax of the logits instead, which gives
# varied text; three knobs shape the distribution first.
#
# **Temperature** divides the logits: below 1 the distribution sharpens toward greedy, above 1
# it flattens. A trained model is sure of most tokens, so we look where it hesitated most:
# the greedy step of the first caption whose distribution has the highest entropy.

# %%
tokens_0, logits_0 = cached_tokens[0], cached_logits[0]
length = int(np.argmax(tokens_0 == EOS_TOKEN)) + 1 if EOS_TOKEN in tokens_0 else len(tokens_0)
probs_0 = np.asarray(jax.nn.softmax(logits_0[:length], axis=-1))
entropy = -np.sum(probs_0 * np.log(np.maximum(probs_0, 1e-30)), axis=-1)
step = int(np.argmax(entropy))
so_far = postprocess_tokens(tokens_0[:step], tokenizer=tokenizer)
print(f"least certain step: new token {step + 1}, after {so_far!r} (entropy {entropy[step]:.2f})")

choice = logits_0[step][None]  # float32[1, V]: the logits of that step
top = np.argsort(-choice[0])[:20]
labels = [tokenizer.id_to_piece(int(t)) for t in top]


def plot_distribution(ax, logits, title):
    """Bars of softmax(logits) over the 20 tokens most likely before any filtering."""
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))[0, top]
    ax.bar(range(len(top)), probs)
    ax.set_xticks(range(len(top)), labels, rotation=90, fontsize=7)
    ax.set_title(title, fontsize=9)


figure, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharey=True)
for ax, temperature in zip(axes, (0.5, 1.0, 2.0), strict=True):
    plot_distribution(ax, choice / temperature, f"temperature {temperature}")
axes[0].set_ylabel("probability")
plt.show()

# %% [markdown]
# **Top-k** keeps only the k most likely tokens: the long tail of unlikely tokens, each tiny but
# many together, can no longer be drawn. Dropping a token means setting its logit to -inf: its
# softmax probability becomes exactly 0 and the rest renormalise.
#
# ### Exercise 8.1: top-k filtering


# %% tags=["exercise"]
def keep_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Top-k filtering: only the k most likely tokens of each row can be drawn.

    Args:
      logits: float32[B, V].
      k: how many to keep, >= 1; k >= V keeps every token.
    Returns:
      float32[B, V]: `logits` with every entry below its row's k-th highest
      set to -inf (entries tied with the k-th highest stay).
    """
    # Hint: find each row's k-th highest value, shaped as a column that broadcasts against its row,
    # and hide everything below it. It runs inside jit: jax.numpy and jax.lax only.
    raise NotImplementedError("Exercise 8.1")


# %% tags=["check"]
check("ex8_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 8.1</summary>
#
# ```python
# kth = jax.lax.top_k(logits, min(k, logits.shape[-1]))[0][:, -1:]
# return jnp.where(logits < kth, -jnp.inf, logits)
# ```
#
# </details>

# %% [markdown]
# **Nucleus (top-p)** sampling adapts the cut to the distribution: rank the tokens from the most
# likely down and keep them until their probabilities add up to p. A confident model keeps one
# or two tokens, a hesitant one keeps many. Precisely: a token stays when the tokens ranked
# *above* it hold less than p, so the most likely token always stays.
#
# ### Exercise 8.2: nucleus filtering


# %% tags=["exercise"]
def keep_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus (top-p) filtering: the smallest set of most likely tokens holding mass p.

    Ranked from the most likely down, a token stays when the tokens ranked
    above it hold less than `p` of the probability, so the top token always
    stays.

    Args:
      logits: float32[B, V].
      p: the probability mass to keep, in (0, 1].
    Returns:
      float32[B, V]: `logits` with every dropped entry set to -inf (entries tied
      with the last kept one stay).
    """
    # Hint: sort each row descending, softmax it, and take cumsum - probs (the mass above);
    # count the tokens with mass above < p, read the logit of the last one kept as a cutoff,
    # and set the logits below the cutoff to -inf.
    raise NotImplementedError("Exercise 8.2")


# %% tags=["check"]
check("ex8_2")

# %% [markdown]
# The same distribution before and after each filter (the bars are renormalised probabilities):

# %%
figure, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharey=True)
plot_distribution(axes[0], choice, "no filter")
filters = {"top-k, k = 5": keep_top_k(choice, 5), "nucleus, p = 0.5": keep_top_p(choice, 0.5)}
for ax, (name, filtered) in zip(axes[1:], filters.items(), strict=True):
    kept = int(jnp.sum(jnp.isfinite(filtered)))
    plot_distribution(ax, filtered, f"{name}: {kept} of {choice.shape[-1]} tokens kept")
axes[0].set_ylabel("probability")
plt.show()

# %% [markdown]
# `solutions.evaluate.Sampler` bundles the three knobs (temperature, then top-k, then top-p), and
# `sample_logits` applies them and draws with `jax.random.categorical`. `decode` accepts the
# same samplers as big_vision's strings: `"greedy"`, `"temperature(t=0.7)"`, `"topk(k=40)"`,
# `"nucleus(p=0.9)"`. Our cached loop takes a sampler too, as `sampler.knobs()`: its settings as
# arrays, which jit traces, so one compilation serves every temperature, top-k and top-p (the
# app's sliders rely on it). Here is the first image captioned four ways:

# %%
sample_next = jax.jit(sample_logits)


def cached_sample(params, batch, max_decode_len, sampler, seed=0):
    """int32[B, max_decode_len]: tokens drawn by `sampler`, one prefill and one extend per token."""
    logits, cache = prefill(params, batch, cache_size)
    rng = jax.random.PRNGKey(seed)
    generated = []
    for step in range(max_decode_len):
        token = sample_next(logits[:, 0], jax.random.fold_in(rng, step), sampler.knobs())
        generated.append(token)
        logits, cache = extend(params, cache, token)
    return np.stack(generated, axis=1)


samplers = {
    "greedy": Sampler(),
    "temperature 0.7": Sampler(temperature=0.7),
    "top-k 10": Sampler(temperature=1.0, top_k=10),
    "nucleus 0.9": Sampler(temperature=1.0, top_p=0.9),
}
print("reference:", prompts[0]["caption"], "\n")
for name, sampler in samplers.items():
    tokens = cached_sample(params, pair, MAX_DECODE_LEN, sampler)
    print(f"{name:16s}", postprocess_tokens(tokens[0], tokenizer=tokenizer))

# %% [markdown]
# ## Captioning a dataset
#
# `make_predictions` runs `decode` over any iterable of examples, a batch at a time. A short
# last batch is padded by repeating its last example, so every call has the same shapes and the
# decode compiles once; the padding's captions are dropped. `postprocess` turns each row of
# tokens into text (cut at EOS, padding dropped, detokenized). Batches of two here, so the
# decode compiled above is reused.


# %%
def caption_grid(images, texts, ncols=4, width=40, max_chars=220):
    """Images in a grid, each titled with its labelled captions (long ones shortened)."""
    nrows = math.ceil(len(images) / ncols)
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols, 5.2 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, parts in zip(axes.flat, images, texts, strict=False):  # spare axes stay blank
        ax.imshow(np.clip((np.asarray(image) + 1) / 2, 0, 1))
        lines = [
            textwrap.fill(f"{label}: {textwrap.shorten(text, max_chars) or '(empty)'}", width)
            for label, text in parts.items()
        ]
        ax.set_title("\n\n".join(lines), fontsize=7, loc="left")
    plt.show()


predictions = make_predictions(
    params,
    prompts,
    model=model,
    batch_size=len(pair["image"]),
    max_decode_len=MAX_DECODE_LEN,
    postprocess=lambda row: postprocess_tokens(row, tokenizer=tokenizer),
    progress=False,
)
captions = [caption for _, caption in predictions]
references = [prompt["caption"] for prompt in prompts]
caption_grid(
    [image for image, _ in predictions],
    [
        {"MODEL": caption, "REFERENCE": reference}
        for caption, reference in zip(captions, references, strict=True)
    ],
)

# %% [markdown]
# ## Scoring captions
#
# Exact match is useless for captions: two good captions of one image rarely agree word for
# word. **CIDEr** (Vedantam et al., 2015), the standard captioning metric, asks instead how much
# of what the references say the prediction says too, counting phrases of 1 to 4 words
# (n-grams) and weighting each by how *rare* it is across the evaluated set: "a" tells nothing,
# "pink heart" a lot.
#
# First the words. Captions are lowercased and stripped of punctuation before counting, so "Red,"
# and "red" are one word.
#
# ### Exercise 8.3: words of a caption


# %% tags=["exercise"]
def tokenize_caption(text: str) -> list[str]:
    """Lowercased words, after deleting every character that is neither a word character
    (Unicode letter, digit, underscore) nor whitespace.

        "A large red circle, at the top." -> ["a", "large", "red", "circle", "at", "the", "top"]
        "Don't stop" -> ["dont", "stop"]

    Args:
      text: a caption.
    Returns:
      Its words, in order; [] when it has none.
    """
    # Hint: two steps: delete every character that is neither a word character nor whitespace (a
    # regular expression with a negated class), then split on runs of whitespace.
    raise NotImplementedError("Exercise 8.3")


# %% tags=["check"]
check("ex8_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 8.3</summary>
#
# ```python
# re.sub(r"[^\w\s]", "", text.lower()).split()
# ```
#
# </details>

# %% [markdown]
# ### Exercise 8.4: n-gram counts
#
# An n-gram is a run of n consecutive words, kept as a tuple: "red circle" is the 2-gram
# `("red", "circle")`. Count those of every order from 1 to n.


# %% tags=["exercise"]
def ngram_counts(tokens: Sequence[str], n: int = 4) -> list[Counter]:
    """Counts of the n-grams of each order: element k-1 maps k-word tuples to counts.

        ngram_counts(["a", "b", "a"], 2) -> [{("a",): 2, ("b",): 1}, {("a", "b"): 1, ("b", "a"): 1}]

    Args:
      tokens: the words of one caption.
      n: the longest order.
    Returns:
      n `Counter`s; an order longer than the caption is an empty Counter.
    """
    # Hint: an n-gram of order k is a window of k consecutive words, kept as a tuple so that it can
    # be counted; slide the window over the caption once per order. A caption shorter than k has no
    # such window.
    raise NotImplementedError("Exercise 8.4")


# %% tags=["check"]
check("ex8_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 8.4</summary>
#
# ```python
# Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))  # order k
# ```
#
# </details>

# %% [markdown]
# How rare is an n-gram? Its **document frequency** df is the number of examples whose
# references use it; with N examples its weight is `log(N / df)`, 0 for an n-gram every example
# uses. The most and least informative words of our 8 references:

# %%
document_frequency = Counter(
    word for caption in references for word in set(tokenize_caption(caption))
)
weights = {word: math.log(len(references) / df) for word, df in document_frequency.items()}
ranked = sorted(weights, key=weights.get)
print("weight 0 (in every reference):", [w for w in ranked if weights[w] == 0])
print("heaviest:", [(w, round(weights[w], 2)) for w in ranked[-6:]])

# %% [markdown]
# ### Exercise 8.5: CIDEr-D
#
# For each order n = 1..4, a sentence becomes a vector: each of its n-grams weighs
# `count × log(N / max(df, 1))` (an n-gram no reference uses gets df = 1, the rarest weight, and
# can only lower the score). Then, for a prediction and each of its references:
#
#     sim_n = Σ_g min(w_pred[g], w_ref[g]) × w_ref[g] / (|w_pred| |w_ref|)     a clipped cosine
#             × exp(-(len_pred - len_ref)² / (2 σ²))                            a length penalty
#
# where lengths are word counts and σ = 6. The *clipping* (`min`) stops "red red red" from
# earning more than the reference's one "red"; the penalty stops a prediction from gaming the
# score by length. A cosine with a zero vector is 0. An example's score is
# `10 × mean over n of (mean over its references of sim_n)`, and the set's score is the mean
# over examples. This is CIDEr-D, the variant the COCO evaluation reports.


# %% tags=["exercise"]
def cider(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, np.ndarray]:
    """CIDEr-D of predicted captions against reference captions, as the COCO evaluation scores it.

    Args:
      predictions: one caption per example, [N] strings (an empty one scores 0).
      references: one or more reference captions per example, [N][R_i] strings.
      n: the longest n-gram order; 4 as in COCO.
      sigma: width of the Gaussian length penalty, in words; 6 as in COCO.
    Returns:
      (score, per_example): the mean over examples, and float64[N] with each
      example's score in [0, 10]. Document frequencies come from the references
      of these N examples only.
    """
    # Hint: tokenize_caption and ngram_counts every caption first; df counts, per n-gram, the
    # examples with it in at least one reference (a set per example); write a small helper for
    # the weighted vector of one order and one for the clipped cosine of two vectors.
    raise NotImplementedError("Exercise 8.5")


# %% tags=["check"]
check("ex8_5")

# %% [markdown]
# Two sanity checks frame the model's score: the references against themselves score 10 (as
# long as each has 4 words or more), and each reference judged against *another* image's
# reference shows what an unrelated caption in the same style earns. The shipped model was
# pretrained to write short captions ("a large pink square"), while these references are long;
# teaching it the long style is the job of lesson 7's fine-tune and of the capstone.

# %%
model_score, model_per_example = cider(captions, [[r] for r in references])
perfect, _ = cider(references, [[r] for r in references])
shifted = references[1:] + references[:1]
unrelated, _ = cider(shifted, [[r] for r in references])
print(f"CIDEr of the model:                          {model_score:.3f}")
print(f"CIDEr of the references themselves:          {perfect:.3f}")
print(f"CIDEr of another image's reference caption:  {unrelated:.3f}")

# %% [markdown]
# ## Object F1: checking the facts
#
# CIDEr rewards wording. On the scenes dataset we can also check facts: we know the true scene,
# so we can ask which shapes a caption names. `scenes.parse_caption` reads every
# "size colour kind" phrase (and its position, when the sentence gives one);
# `scenes.object_f1` matches them against the scene's shapes: precision (how many named shapes
# exist), recall (how many shapes were named) and their harmonic mean, F1.

# %%
true_scenes = [
    scenes.sample_scene(scenes.example_seed(0, "val", i), split="val") for i in range(len(prompts))
]
print("reference names:", scenes.parse_caption(references[0]))
print("model names:    ", scenes.parse_caption(captions[0]))
f1 = [
    scenes.object_f1(caption, scene)[2]
    for caption, scene in zip(captions, true_scenes, strict=True)
]
f1_position = [
    scenes.object_f1(caption, scene, match_position=True)[2]
    for caption, scene in zip(captions, true_scenes, strict=True)
]
print(f"\nmean object F1: {np.mean(f1):.3f}; with positions too: {np.mean(f1_position):.3f}")

figure, ax = plt.subplots(figsize=(8, 2.8))
x = np.arange(len(captions))
ax.bar(x - 0.2, model_per_example / 10, width=0.4, label="CIDEr / 10")
ax.bar(x + 0.2, f1, width=0.4, label="object F1")
ax.set(xlabel="validation example", ylim=(0, 1.05), title="Per-example scores of the model")
ax.set_xticks(x)
ax.legend()
plt.show()

# %% [markdown]
# A low F1 does not say what went wrong. `scenes.attribute_f1` matches the shapes on one
# attribute at a time: F1 of colour alone asks whether the caption names the scene's colours, as
# often as they occur, whatever it says of kinds. The attribute far below the others is the one
# to work on. The shipped tiny model's short captions get all of them right about as often; the
# position, which short captions never state, is what the capstone's fine-tune has to teach.

# %%
per_attribute = [
    scenes.attribute_f1(caption, scene)
    for caption, scene in zip(captions, true_scenes, strict=True)
]
for name in scenes.ATTRIBUTES:
    print(f"F1 of {name:8} alone: {np.mean([scores[name] for scores in per_attribute]):.3f}")

# %% [markdown]
# The capstone writes these numbers for you: `solutions.metrics.caption_report` returns CIDEr,
# both object F1s and the F1 of each attribute, and `python -m capstone.finetune` stores them
# before and after fine-tuning in `metrics.json` and prints them side by side.
#
# ## What you built
#
# - a greedy decoder the slow way, and the same with a KV cache: prefill once, extend per token;
# - `keep_top_k` and `keep_top_p`, the filters of top-k and nucleus sampling;
# - `tokenize_caption`, `ngram_counts` and `cider`: the COCO captioning metric, CIDEr-D;
# - predictions over a dataset, scored for wording (CIDEr) and for facts (object F1).
#
# ## Go further
#
# 1. Greedy decoding can loop ("a small small small ..."). Sample the same image ten times with
#    nucleus p = 0.9 and count distinct captions. Do they score better or worse than greedy?
# 2. Store the cache in bfloat16 (`Model(..., llm={..., "cache_dtype": "bfloat16"})`): how much
#    memory does that save for PaliGemma 2 at 896 pixels, and do the greedy tokens change?
# 3. CIDEr with one reference per image is harsh. Write a second reference per validation image
#    with `scenes.short_caption` and compare the scores.
# 4. Why does CIDEr give 0 to a set of one example? What happens to a word that every
#    reference uses, like "a"?
