"""Decoding: turn an image and a prompt into a caption (lesson 8).

    prompt ──► embed image + text ──► prefill the KV cache once ──► logits of token 0
                                                                         │ sample
        ┌────────────────────────────────────────────────────────────────┘
        └─► embed token t ──► extend the cache by one slot ──► logits of token t+1 ─► sample ...

Everything from the prefill to the last token is one compiled function: a
`jax.lax.while_loop` carries the preallocated cache, the tokens so far and a
per-row "done" flag, and stops as soon as every row has emitted EOS (or the
length is reached), so no token makes a round trip to the host.

How each next token is picked is a `Sampler`: greedy (argmax), or a draw from
the softmax after temperature, top-k and nucleus (top-p) filtering. Draws are
seeded: the same seed gives the same tokens. The compiled decoder takes the
sampler's settings as traced values (`SamplerKnobs`), so a new temperature,
top-k or top-p (greedy included) reuses it: moving a slider compiles nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from solutions.gemma import gemma_config, slice_layers_once
from solutions.vocabulary import EOS_ID, PAD_ID

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "Sampler",
    "SamplerKnobs",
    "decode",
    "keep_top_k",
    "keep_top_p",
    "make_predictions",
    "resolve_sampler",
    "sample_logits",
]

# Lesson 8's names for the vocabulary's ids: a row stops at EOS, and is padded after it, so
# postprocessing may cut at EOS or drop pads.
EOS_TOKEN, PAD_TOKEN = EOS_ID, PAD_ID

BATCH_KEYS = ("image", "text", "mask_ar", "mask_input")


# -- samplers ------------------------------------------------------------------


class SamplerKnobs(NamedTuple):
    """A `Sampler`'s settings as scalar arrays (a pytree), so that jit traces them:
    one compilation serves every temperature, top-k and top-p.

    Attributes:
      temperature: float32[]; 0 means greedy.
      top_k: int32[]; 0 keeps every token.
      top_p: float32[]; 1 keeps every token.
    """

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How the next token is picked from the logits.

    Filters apply in this order: temperature, then top-k, then top-p.

    Attributes:
      temperature: logits are divided by it before sampling. 0 means greedy
        (argmax), the limit of ever smaller temperatures.
      top_k: sample only among the k highest logits; 0 keeps every token.
      top_p: nucleus sampling: keep the most likely tokens until their total
        probability reaches p (the most likely token is always kept); 1 keeps all.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(
                f"Sampler temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"Sampler top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampler top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def knobs(self) -> SamplerKnobs:
        """The settings as arrays, to pass into a jitted function as traced values."""
        return SamplerKnobs(
            np.float32(self.temperature), np.int32(self.top_k), np.float32(self.top_p)
        )

    @classmethod
    def parse(cls, spec: str) -> Sampler:
        """Reads big_vision's sampler strings.

        "greedy", "temperature(t=0.7)", "topk(k=40)", "topk(k=40, t=0.8)",
        "nucleus(p=0.9)", "nucleus(p=0.9, t=0.8)"; arguments may also be given
        by position, e.g. "nucleus(0.9)".
        """
        try:
            call = ast.parse(spec.strip(), mode="eval").body
            if isinstance(call, ast.Name):  # "greedy" without parentheses
                name, args, kwargs = call.id, [], {}
            elif isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                name = call.func.id
                args = [ast.literal_eval(a) for a in call.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            else:
                raise ValueError
        except (SyntaxError, ValueError):
            raise ValueError(
                f"Cannot read sampler {spec!r}; write e.g. 'greedy', 'temperature(t=0.7)', "
                "'topk(k=40)' or 'nucleus(p=0.9)'."
            ) from None
        if name not in _SAMPLER_FORMS:
            raise ValueError(
                f"Unknown sampler {name!r} in {spec!r}; known: {sorted(_SAMPLER_FORMS)}"
            )
        try:
            return _SAMPLER_FORMS[name](*args, **kwargs)
        except TypeError as error:
            raise ValueError(f"Bad arguments in sampler {spec!r}: {error}") from None


_SAMPLER_FORMS = {
    "greedy": lambda: Sampler(),
    "temperature": lambda t: Sampler(temperature=t),
    "topk": lambda k, t=1.0: Sampler(temperature=t, top_k=k),
    "nucleus": lambda p, t=1.0: Sampler(temperature=t, top_p=p),
}


# `decode`'s keyword defaults: plain sampling at temperature 1, no filtering.
_KNOB_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def resolve_sampler(
    sampler: str | Sampler, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Sampler:
    """Turns `decode`'s sampler arguments into one `Sampler`.

    `sampler` is a `Sampler`, "sample" (then the keyword knobs apply), or a
    big_vision string such as "greedy" or "nucleus(p=0.9)" (then the knobs must
    keep their defaults, so that no setting is silently ignored).
    """
    if sampler == "sample":
        return Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    knobs = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    changed = [k for k, v in knobs.items() if v != _KNOB_DEFAULTS[k]]
    if changed:
        raise ValueError(
            f"sampler={sampler!r} fixes its own settings, so {changed} would be ignored; "
            "pass sampler='sample' to use the temperature/top_k/top_p keywords."
        )
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return Sampler.parse(sampler)
    raise TypeError(f"sampler must be a str or a Sampler, got {type(sampler).__name__}")


def sample_logits(logits: jax.Array, rng: jax.Array, sampler: Sampler | SamplerKnobs) -> jax.Array:
    """Picks one token per row.

    Args:
      logits: float32[B, V].
      rng: a PRNG key; may be None with a greedy `Sampler`.
      sampler: a `Sampler`, or its `SamplerKnobs` (traced under jit: the
        filters that are off then cost nothing, as `jax.lax.cond` skips them).
    Returns:
      int32[B] token ids.
    """
    if isinstance(sampler, Sampler):
        if sampler.greedy:
            return _most_likely(logits, rng, sampler.knobs())
        sampler = sampler.knobs()
    return jax.lax.cond(sampler.temperature > 0, _draw, _most_likely, logits, rng, sampler)


def _most_likely(logits, rng, knobs):
    del rng, knobs  # greedy: the argmax, whatever the settings
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _draw(logits, rng, knobs):
    def unfiltered(logits, _):
        return logits

    logits = logits / knobs.temperature
    logits = jax.lax.cond(knobs.top_k > 0, keep_top_k, unfiltered, logits, knobs.top_k)
    logits = jax.lax.cond(knobs.top_p < 1, keep_top_p, unfiltered, logits, knobs.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def keep_top_k(logits: jax.Array, k: int | jax.Array) -> jax.Array:
    """Top-k filtering: only the k most likely tokens of each row can be drawn.

    Args:
      logits: float32[B, V].
      k: how many to keep, >= 1; k >= V keeps every token. An int, or an int32
        scalar array (e.g. traced by jit, as the compiled decoder's is).
    Returns:
      float32[B, V]: `logits` with every entry below its row's k-th highest
      set to -inf (entries tied with the k-th highest stay).
    """
    vocab = logits.shape[-1]
    if isinstance(k, int):  # a static k: jax.lax.top_k finds the k highest without a sort
        kth_highest = jax.lax.top_k(logits, min(k, vocab))[0][:, -1:]
    else:  # a traced k: sort, then read the k-th highest at a computed index
        ascending = jnp.sort(logits, axis=-1)
        kth_highest = jax.lax.dynamic_slice_in_dim(ascending, vocab - jnp.minimum(k, vocab), 1, 1)
    return jnp.where(logits < kth_highest, -jnp.inf, logits)


def keep_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus (top-p) filtering: the smallest set of most likely tokens holding mass p.

    Ranked from the most likely down, a token stays when the tokens ranked
    above it hold less than `p` of the probability, so the top token always
    stays.

    Args:
      logits: float32[B, V].
      p: the probability mass to keep, in (0, 1]; a float or a traced float32 scalar.
    Returns:
      float32[B, V]: `logits` with every dropped entry set to -inf (entries tied
      with the last kept one stay).
    """
    sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    # A token stays if the tokens ranked above it hold less than p; the top one always does.
    mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    num_kept = jnp.sum(mass_above < p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


# -- the compiled decode loop ----------------------------------------------------


def _decode_tokens(
    params, image, text, mask_ar, mask_input, rng, knobs, *, model, max_decode_len, eos_token
):
    """Prefill, then the while_loop over new tokens. Jitted by `_compiled_decode`;
    `knobs` are the `SamplerKnobs`, traced.

    Returns (int32[B, max_decode_len] tokens, int32[] number of tokens generated).
    """
    variables = {"params": params}
    (x, input_mask, full_mask_ar), _ = model.apply(
        variables,
        image,
        text,
        input_mask=mask_input,
        mask_ar=mask_ar,
        method="embed_image_and_text",
    )
    # Prompt slots (image tokens included) plus one slot per generated token.
    cache_size = x.shape[1] + max_decode_len
    logits, state = model.apply(
        variables,
        x,
        input_mask,
        full_mask_ar,
        cache_size=cache_size,
        method="prefill_cache",
        mutable=["cache"],
    )
    loop_params = _params_for_loop(params, model)
    first = sample_logits(logits[:, 0], jax.random.fold_in(rng, 0), knobs)
    tokens = jnp.full((x.shape[0], max_decode_len), PAD_TOKEN, jnp.int32).at[:, 0].set(first)

    def keep_going(carry):
        step, _, done, _ = carry
        return jnp.logical_and(step < max_decode_len, jnp.logical_not(jnp.all(done)))

    def next_token(carry):
        step, tokens, done, cache = carry
        params = loop_params()
        x = model.apply({"params": params}, tokens[:, step - 1, None], method="embed_text")
        logits, state = model.apply(
            {"params": params, "cache": cache}, x, method="extend_cache", mutable=["cache"]
        )
        token = sample_logits(logits[:, 0], jax.random.fold_in(rng, step), knobs)
        # Finished rows keep decoding (the batch moves together) but write padding.
        token = jnp.where(done, PAD_TOKEN, token)
        return step + 1, tokens.at[:, step].set(token), done | (token == eos_token), state["cache"]

    carry = (jnp.int32(1), tokens, first == eos_token, state["cache"])
    num_steps, tokens, _, _ = jax.lax.while_loop(keep_going, next_token, carry)
    return tokens, num_steps


def _params_for_loop(params, model):
    """Returns a function that gives `params` inside the token loop, cheaply.

    With unrolled decoder layers, XLA's CPU backend would copy every layer
    weight out of its stacked array at every step of the token loop (see
    `slice_layers_once`); the slices are taken once, here, outside the loop.
    Scanned layers index their weights with the loop counter instead, and
    get the stacked arrays unchanged.
    """
    llm = gemma_config(**dict(model.llm or {}))
    if llm["scan_unroll"] < llm["depth"]:
        return lambda: params
    layers = slice_layers_once(params["llm"]["layers"])
    return lambda: {**params, "llm": {**params["llm"], "layers": layers()}}


class _ByIdentity:
    """A hashable handle on a model: flax modules with dict configs cannot be hashed."""

    def __init__(self, model):
        self.model = model

    def __hash__(self):
        return id(self.model)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.model is self.model


# XLA:CPU runs independent operations side by side, and by default orders them
# to keep as many as it can in flight. A decoding step is a chain of small
# matmuls that each already spread over every core, so running two at once only
# makes them wait for each other: the memory-optimised order, which keeps fewer
# in flight, decodes 12-16% faster on 2 cores (paired runs, docs/speed.md). The
# option is a field of XLA's debug options, which only the CPU compiler reads.
DECODE_COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


@functools.lru_cache(maxsize=32)
def _compiled_decode(model_handle: _ByIdentity, max_decode_len: int, eos_token: int):
    """One jitted decode per (model, length, eos), for every sampler; jit itself caches
    per shape."""
    return jax.jit(
        functools.partial(
            _decode_tokens,
            model=model_handle.model,
            max_decode_len=max_decode_len,
            eos_token=eos_token,
        ),
        compiler_options=DECODE_COMPILER_OPTIONS,
    )


# -- the public entry points --------------------------------------------------------


def _checked_batch(batch: Mapping) -> tuple[np.ndarray, ...]:
    """Validates the decode batch on the host and returns its four arrays."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(
            f"decode: batch lacks {missing}; it needs {list(BATCH_KEYS)} "
            "(preprocess the prompt with its mask_input, 1 on real tokens, 0 on padding)."
        )
    image = np.asarray(batch["image"], np.float32)
    text, mask_ar, mask_input = (np.asarray(batch[k]) for k in BATCH_KEYS[1:])
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"decode: batch['image'] must be float32[B, H, W, 3], got {image.shape}.")
    if text.ndim != 2 or text.shape[0] != image.shape[0]:
        raise ValueError(
            f"decode: batch['text'] must be int[B, P] with B = {image.shape[0]} images, "
            f"got {text.shape}."
        )
    if not np.issubdtype(text.dtype, np.integer):
        raise ValueError(f"decode: batch['text'] must hold integer token ids, got {text.dtype}.")
    for key, mask in (("mask_ar", mask_ar), ("mask_input", mask_input)):
        if mask.shape != text.shape:
            raise ValueError(
                f"decode: batch[{key!r}] has shape {mask.shape} but batch['text'] has "
                f"{text.shape}; give one entry per text token."
            )
    mask_input = mask_input.astype(bool)
    padding_first = np.flatnonzero(np.any(mask_input[:, 1:] > mask_input[:, :-1], axis=1))
    if padding_first.size:
        raise ValueError(
            f"decode: batch['mask_input'] rows {padding_first.tolist()} have padding before a "
            "real token; prompts must be right-padded (real tokens first, padding after)."
        )
    return image, text.astype(np.int32), mask_ar.astype(np.int32), mask_input


def decode(
    params,
    batch: Mapping,
    *,
    model,
    max_decode_len: int,
    sampler: str | Sampler = "greedy",
    eos_token: int = EOS_TOKEN,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_num_steps: bool = False,
):
    """Generates up to `max_decode_len` tokens after each prompt.

    The whole decode is compiled once per model object, length and eos_token
    (and by jit per input shape); later calls, with any seed and any sampler,
    reuse it: the sampler's settings are traced values.

    Args:
      params: the model's parameter tree.
      batch: the notebook's dict: `image` float32[B, H, W, 3] in [-1, 1],
        `text` int32[B, P] prompt tokens, `mask_ar` int32[B, P],
        `mask_input` int32/bool[B, P] (1 on real tokens). Prompts are
        right-padded: each row's real tokens first.
      model: the `solutions.model.Model`.
      max_decode_len: number of tokens to generate at most.
      sampler: "greedy"; "sample" to use `temperature`, `top_k` and `top_p`;
        a big_vision string ("temperature(t=0.7)", "topk(k=40)",
        "nucleus(p=0.9)"); or a `Sampler`.
      eos_token: the token that ends a row.
      seed: seeds the draws; the same seed gives the same tokens.
      temperature, top_k, top_p: sampling knobs for sampler="sample" (see `Sampler`).
      return_num_steps: also return how many tokens the loop generated before it
        stopped (every row done, or `max_decode_len`).
    Returns:
      int32[B, max_decode_len] numpy tokens; each row's EOS is kept and
      everything after it is PAD_TOKEN (0). With `return_num_steps`,
      `(tokens, num_steps)`.
    """
    if not (isinstance(max_decode_len, int) and max_decode_len >= 1):
        raise ValueError(f"decode: max_decode_len must be an int >= 1, got {max_decode_len!r}")
    sampler = resolve_sampler(sampler, temperature=temperature, top_k=top_k, top_p=top_p)
    arrays = _checked_batch(batch)
    decode_fn = _compiled_decode(_ByIdentity(model), max_decode_len, int(eos_token))
    tokens, num_steps = decode_fn(params, *arrays, jax.random.PRNGKey(seed), sampler.knobs())
    tokens = np.asarray(tokens)
    return (tokens, int(num_steps)) if return_num_steps else tokens


def _batches(examples: Iterable[Mapping], batch_size: int):
    """Yields (batch dict, number of real rows); a short last batch repeats its last example."""
    iterator = iter(examples)
    while chunk := list(itertools.islice(iterator, batch_size)):
        num_real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - num_real)
        yield {k: np.stack([np.asarray(e[k]) for e in chunk]) for k in BATCH_KEYS}, num_real


def make_predictions(
    params,
    examples: Iterable[Mapping],
    *,
    model,
    batch_size: int,
    max_decode_len: int,
    postprocess: Callable[[np.ndarray], str],
    sampler: str | Sampler = "greedy",
    num_examples: int | None = None,
    seed: int = 0,
    progress: bool = True,
    **sampler_options,
) -> list[tuple[np.ndarray, str]]:
    """Decodes every example, a batch at a time, into (image, text) pairs.

    Args:
      params: the model's parameter tree.
      examples: an iterable of dicts with "image", "text", "mask_ar" and
        "mask_input" (one example each, no batch axis), e.g. a validation iterator.
      model, max_decode_len, sampler: as in `decode`.
      batch_size: examples per decode call. The last batch is padded by
        repeating its last example, so every call has the same shapes (one
        compilation); the padding's outputs are dropped.
      postprocess: int32[max_decode_len] tokens -> text, e.g. cutting at EOS
        and detokenizing.
      num_examples: stop after this many examples; None reads them all.
      seed: batch i samples with seed + i, so batches draw differently.
      progress: show a tqdm progress bar.
      **sampler_options: `temperature`, `top_k`, `top_p` or `eos_token`, passed to `decode`.
    Returns:
      A list of (image, text), in the order of `examples`.
    """
    if num_examples is not None:
        examples = itertools.islice(examples, num_examples)
    total = num_examples if num_examples is not None else _length_or_none(examples)
    outputs = []
    with tqdm(total=total, unit="example", disable=not progress, desc="decode") as bar:
        for index, (batch, num_real) in enumerate(_batches(examples, batch_size)):
            tokens = decode(
                params,
                batch,
                model=model,
                max_decode_len=max_decode_len,
                sampler=sampler,
                seed=seed + index,
                **sampler_options,
            )
            for image, row in zip(batch["image"][:num_real], tokens[:num_real], strict=True):
                outputs.append((image, postprocess(row)))
            bar.update(num_real)
    return outputs


def _length_or_none(examples) -> int | None:
    try:
        return len(examples)
    except TypeError:
        return None
