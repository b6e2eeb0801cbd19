"""The Gemma 1 / Gemma 2 decoder of PaliGemma, in Flax linen.

Parameter names and shapes follow big_vision (`llm/embedder/input_embedding`,
`llm/layers/attn/q_einsum/w`, ...), with the layers stacked on a leading axis
by `nn.scan`, so a real PaliGemma checkpoint loads into this module unchanged.

Axis letters used in shapes and einsums:
  B batch, T query length, S key/value length (the cache), D model width,
  N query heads, K key/value heads, G query heads per key/value head (N = K*G),
  H head dimension, F MLP hidden width, V vocabulary, L layers.

Decoding uses a key/value cache in the flax collection "cache". Prompts are
left-aligned (valid tokens first, padding after), so a token's cache slot equals
its position and every example can write its next token at its own slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from solutions.lora import with_adapter

# The named Gemma decoders PaliGemma uses. Fields not given take Gemma's
# defaults from `gemma_config`.
GEMMA_VARIANTS = {
    "gemma_2b": dict(
        width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256
    ),
    "gemma2_2b": dict(
        width=2304,
        depth=26,
        mlp_dim=9_216,
        num_heads=8,
        num_kv_heads=4,
        head_dim=256,
        final_logits_softcap=30.0,
        attn_logits_softcap=50.0,
        post_norms=True,
    ),
    "gemma2_9b": dict(
        width=3584,
        depth=42,
        mlp_dim=14_336,
        num_heads=16,
        num_kv_heads=8,
        head_dim=256,
        final_logits_softcap=30.0,
        attn_logits_softcap=50.0,
        post_norms=True,
    ),
    "gemma2_27b": dict(
        width=4608,
        depth=46,
        mlp_dim=36_864,
        num_heads=32,
        num_kv_heads=16,
        head_dim=128,
        query_pre_attn_norm="rsqrt_emb_per_head",
        final_logits_softcap=30.0,
        attn_logits_softcap=50.0,
        post_norms=True,
    ),
}

GEMMA_DEFAULTS = dict(
    vocab_size=256_000,
    norm_eps=1e-6,
    final_logits_softcap=0.0,
    attn_logits_softcap=0.0,
    post_norms=False,
    query_pre_attn_norm="rsqrt_head_dim",
    remat_policy="none",
    cache_dtype=None,
    # Layers per iteration of the scan over layers; `depth` unrolls them all,
    # which runs faster on a CPU (no loop, no stacking of activations) but
    # compiles slower, so the real-sized models keep 1.
    scan_unroll=1,
)

GEMMA_FIELDS = (
    "width",
    "depth",
    "mlp_dim",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    *GEMMA_DEFAULTS,
)

# Masked attention logits take this value: far below any real logit, yet finite
# so that a row with nothing to attend to gives a uniform softmax, not NaN.
_MASKED_LOGIT = -2.3819763e38


def gemma_config(variant: str | None = None, **overrides) -> dict:
    """Returns the complete field dict of a Gemma decoder.

    Args:
      variant: a name from `GEMMA_VARIANTS`, or None when every size field is
        given explicitly in `overrides`.
      **overrides: any field of `GEMMA_FIELDS`; these win over the variant.
    """
    if variant is not None and variant not in GEMMA_VARIANTS:
        raise ValueError(
            f"Unknown Gemma variant {variant!r}; known: {sorted(GEMMA_VARIANTS)}. "
            "Or leave `variant` out and give width, depth, mlp_dim, num_heads, "
            "num_kv_heads and head_dim."
        )
    unknown = set(overrides) - set(GEMMA_FIELDS)
    if unknown:
        raise ValueError(f"Unknown Gemma config field(s) {sorted(unknown)}; known: {GEMMA_FIELDS}")
    config = {**GEMMA_DEFAULTS, **GEMMA_VARIANTS.get(variant, {}), **overrides}
    missing = [f for f in GEMMA_FIELDS if f not in config]
    if missing:
        raise ValueError(f"Gemma config lacks {missing}: name a `variant` or give them.")
    if not (isinstance(config["scan_unroll"], int) and config["scan_unroll"] >= 1):
        raise ValueError(
            f"Gemma config field scan_unroll must be an int >= 1 (1 = a plain scan, "
            f"depth = fully unrolled), got {config['scan_unroll']!r}."
        )
    if config["num_heads"] % config["num_kv_heads"]:
        raise ValueError("num_heads must be a multiple of num_kv_heads.")
    return config


def rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Gemma's RMSNorm: `x / rms(x) * (1 + scale)`.

    Args:
      x: float[..., D] activations.
      scale: float[D]; zero means identity, which is how Gemma stores it.
      eps: added to the mean square before the square root.
    Returns:
      float[..., D], same dtype as `x`.
    """
    mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(mean_square + eps) * (1 + scale)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary position embedding, rotating the two halves of each head.

    Channel i of the first half and channel i of the second half form one 2-d
    pair, rotated by the angle `position / max_wavelength**(2i/H)`.

    Args:
      x: float[B, T, N, H] queries or keys, H even.
      positions: int32[B, T] absolute position of each token.
    Returns:
      float[B, T, N, H] rotated, same dtype as `x`.
    """
    half = x.shape[-1] // 2
    inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B,T,1,H/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    first, second = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


def _softcap(x: jax.Array, cap: float) -> jax.Array:
    """Squashes x smoothly into (-cap, cap); cap 0 or None turns it off."""
    return jnp.tanh(x / cap) * cap if cap else x


def _fan_in_normal(in_axes: tuple[int, ...], out_axes: tuple[int, ...]):
    return nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axes, out_axis=out_axes, batch_axis=()
    )


class Einsum(nn.Module):
    """A weight `w` of a fixed shape, applied with `jnp.einsum(eqn, x, w)`; with LoRA
    adapters for it (`lora_key`, see `solutions.lora`), `w` plus their update."""

    shape: tuple[int, ...]
    w_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
    lora_key: str | None = None

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param("w", self.w_init, self.shape)
        if self.lora_key is not None:
            w = with_adapter(self, "w", w, self.lora_key)
        return jnp.einsum(eqn, x, w)


class RMSNorm(nn.Module):
    """`rms_norm` with a learned `scale` (float[D], initialised to zero)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
        return rms_norm(x, scale, self.eps)


class Embedder(nn.Module):
    """The token table, used to embed tokens and (tied) to produce logits."""

    vocab_size: int
    width: int

    def setup(self):
        self.input_embedding = self.param(
            "input_embedding",
            nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0),
            (self.vocab_size, self.width),
        )

    def encode(self, tokens: jax.Array) -> jax.Array:
        """int32[B, T] -> float[B, T, D], scaled by sqrt(D) as Gemma does."""
        x = self.input_embedding[tokens]
        return x * jnp.asarray(math.sqrt(self.width), x.dtype)

    def decode(self, x: jax.Array) -> jax.Array:
        """float[B, T, D] -> float[B, T, V] logits with the tied table."""
        return jnp.dot(x, self.input_embedding.T)


class Attention(nn.Module):
    """Multi-query / grouped-query self-attention with RoPE and a KV cache."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    query_scale: float
    attn_logits_softcap: float = 0.0

    @nn.compact
    def __call__(self, x, positions, attn_mask, decode=None, cache=None):
        """Attends x to itself (or to the cache when decoding).

        Args:
          x: float[B, T, D].
          positions: int32[B, T] RoPE positions; when decoding, also cache slots.
          attn_mask: bool[B, T, S], True where query t may attend key s. S is T
            without decoding, the cache size with it.
          decode: None (no cache), "prefill" (write the T tokens into slots
            0..T-1 of the cache) or "extend" (write one token at its position).
          cache: with `decode`, the `KVCache` of every layer and this layer's index.
        Returns:
          float[B, T, D], and the cache with this layer's slots written (None
          without `decode`).
        """
        batch, length, width = x.shape
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        # Projections see the tokens as one flat axis M = B*T: XLA's CPU backend
        # computes a matmul's weight gradient several times faster when it
        # contracts one token axis rather than two.
        tokens = x.reshape(batch * length, width)
        if n == k:  # big_vision stores one fused weight when every head has its own k/v.
            init = _fan_in_normal((2,), (0, 1, 3))
            qkv = Einsum((3, n, width, h), init, "attn/qkv_einsum/w", name="qkv_einsum")
            q, key, value = qkv("MD,CNDH->CMNH", tokens)
        else:
            init = _fan_in_normal((1,), (0, 2))
            q = Einsum((n, width, h), init, "attn/q_einsum/w", name="q_einsum")(
                "MD,NDH->MNH", tokens
            )
            init = _fan_in_normal((2,), (0, 1, 3))
            kv = Einsum((2, k, width, h), init, "attn/kv_einsum/w", name="kv_einsum")
            key, value = kv("MD,CKDH->CMKH", tokens)
        q, key, value = (a.reshape(batch, length, -1, h) for a in (q, key, value))

        q = apply_rope(q, positions) * self.query_scale
        key = apply_rope(key, positions)
        if decode is not None:
            cache = cache.write(key, value, positions, decode)
            if decode == "extend":  # the new token attends to every slot written so far
                key, value = cache.read(key.dtype)
            else:  # the prompt attends only to itself: the slots after it are empty
                attn_mask = attn_mask[..., :length]

        q = q.reshape(batch, length, k, n // k, h)  # [B, T, K, G, H]
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key).astype(jnp.float32)
        logits = _softcap(logits, self.attn_logits_softcap)
        logits = jnp.where(attn_mask[:, None, None, :, :], logits, _MASKED_LOGIT)
        probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, value)
        encoded = encoded.reshape(batch * length, n, h)
        init = _fan_in_normal((0, 1), (2,))
        out = Einsum((n, h, width), init, "attn/attn_vec_einsum/w", name="attn_vec_einsum")
        return out("MNH,NHD->MD", encoded).reshape(batch, length, width), cache


class KVCache(NamedTuple):
    """Keys and values of every layer, and the layer that reads and writes them now.

    The cache lives outside the scan over layers, as one array per kind that
    the scan carries from layer to layer: each layer writes its slots into it
    in place. (Kept as a variable of each scanned layer instead, the cache
    would be sliced out and stacked again at every token: a copy of all of it.)

    Attributes:
      k, v: float[L, B, S, K, H], in the cache's dtype.
      layer: int32[], the index of the layer being run.
    """

    k: jax.Array
    v: jax.Array
    layer: jax.Array

    def write(self, key, value, positions, decode: str) -> KVCache:
        """Writes float[B, T, K, H] keys and values of this layer at their slots."""
        key, value = key.astype(self.k.dtype), value.astype(self.v.dtype)
        if decode == "prefill":  # the prompt fills slots 0..T-1 of every row
            start = (self.layer, 0, 0, 0, 0)
            k = jax.lax.dynamic_update_slice(self.k, key[None], start)
            v = jax.lax.dynamic_update_slice(self.v, value[None], start)
        elif decode == "extend":  # each row writes its new token at its own slot (= position)
            rows, slots = jnp.arange(key.shape[0]), positions[:, 0]
            k = self.k.at[self.layer, rows, slots].set(key[:, 0])
            v = self.v.at[self.layer, rows, slots].set(value[:, 0])
        else:
            raise ValueError(f"decode must be None, 'prefill' or 'extend', got {decode!r}")
        return self._replace(k=k, v=v)

    def read(self, dtype) -> tuple[jax.Array, jax.Array]:
        """This layer's keys and values, two float[B, S, K, H] of `dtype`."""
        return self.k[self.layer].astype(dtype), self.v[self.layer].astype(dtype)


class FeedForward(nn.Module):
    """Gated GELU MLP: `linear(gelu(x @ W0) * (x @ W1))`."""

    hidden_dim: int

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        gating = self.param(
            "gating_einsum", _fan_in_normal((1,), (0, 2)), (2, width, self.hidden_dim)
        )
        gating = with_adapter(self, "gating_einsum", gating, "mlp/gating_einsum")
        tokens = x.reshape(-1, width)  # [B*T, D]: see `Attention` for why flat
        hidden = nn.gelu(tokens @ gating[0]) * (tokens @ gating[1])
        linear = self.param("linear", _fan_in_normal((0,), (1,)), (self.hidden_dim, width))
        linear = with_adapter(self, "linear", linear, "mlp/linear")
        return (hidden @ linear).reshape(x.shape)


def slice_layers_once(layers: dict) -> Callable[[], dict]:
    """Cuts the stacked layer weights into the pieces the unrolled layers read.

    Unrolled layers read layer i's weights as the static slice `w[i]` of each
    stacked `layers` array, and the MLP reads its two gating matrices as
    `gating_einsum[0]` and `[1]`. XLA's CPU backend copies every such slice
    out, and does not move a slice out of a loop: a decoding loop would copy
    every weight of the model at every token. So slice once, before the loop,
    and call the returned function inside it: it stacks the pieces again, and
    the compiler folds `stack(pieces)[i]` back into `pieces[i]`, a read in place.

    Args:
      layers: the `llm/layers` parameter tree, every array float[L, ...].
    Returns:
      A function of no arguments that returns a tree equal to `layers`.
    """

    def cut(path, w):
        if jax.tree_util.keystr(path, simple=True, separator="/") == "mlp/gating_einsum":
            return [list(gating) for gating in w]  # [L][2] matrices float[D, F]
        return list(w)

    def stack_again(pieces):
        return jnp.stack([jnp.stack(p) if isinstance(p, list) else p for p in pieces])

    pieces = jax.tree_util.tree_map_with_path(cut, layers)
    return lambda: jax.tree.map(stack_again, pieces, is_leaf=lambda x: isinstance(x, list))


class Block(nn.Module):
    """One decoder layer: attention then MLP, each pre-normed and residual.

    Gemma 2 (`post_norms=True`) also normalises each branch's output before
    adding it back.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    query_scale: float
    norm_eps: float = 1e-6
    attn_logits_softcap: float = 0.0
    post_norms: bool = False

    @nn.compact
    def __call__(self, carry, positions, attn_mask, decode):
        """carry: (x float32[B, T, D], the `KVCache` or None without `decode`)."""
        x, cache = carry
        attn = Attention(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            query_scale=self.query_scale,
            attn_logits_softcap=self.attn_logits_softcap,
            name="attn",
        )
        normed = RMSNorm(self.norm_eps, name="pre_attention_norm")(x)
        y, cache = attn(normed, positions, attn_mask, decode, cache)
        if self.post_norms:
            y = RMSNorm(self.norm_eps, name="post_attention_norm")(y)
        x = x + y
        y = FeedForward(self.mlp_dim, name="mlp")(RMSNorm(self.norm_eps, name="pre_ffw_norm")(x))
        if self.post_norms:
            y = RMSNorm(self.norm_eps, name="post_ffw_norm")(y)
        if cache is not None:
            cache = cache._replace(layer=cache.layer + 1)
        # The scan carries x and the cache; nothing is stacked per layer.
        return (x + y, cache), None


class Gemma(nn.Module):
    """The Gemma decoder over already-embedded inputs.

    Fields are those of `gemma_config`. Use `embed_tokens` to embed text, the
    call to run the layers, and `compute_logits` to turn its `pre_logits` into
    logits over the vocabulary (PaliGemma computes logits for text tokens only).
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int = 256_000
    norm_eps: float = 1e-6
    final_logits_softcap: float = 0.0
    attn_logits_softcap: float = 0.0
    post_norms: bool = False
    query_pre_attn_norm: str = "rsqrt_head_dim"
    remat_policy: str = "none"
    cache_dtype: str | None = None
    scan_unroll: int = 1

    def setup(self):
        self.embedder = Embedder(self.vocab_size, self.width)
        block = Block
        if self.remat_policy != "none":
            # Recompute activations in the backward pass to save memory.
            block = nn.remat(
                Block,
                prevent_cse=False,
                static_argnums=(4,),  # 0=self, 4=decode
                policy=getattr(jax.checkpoint_policies, self.remat_policy),
            )
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0, "cache": 0, "lora": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.depth,
            unroll=self.scan_unroll,
        )(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            mlp_dim=self.mlp_dim,
            query_scale=self._query_scale(),
            norm_eps=self.norm_eps,
            attn_logits_softcap=self.attn_logits_softcap,
            post_norms=self.post_norms,
        )
        self.final_norm = RMSNorm(self.norm_eps)

    def _query_scale(self) -> float:
        if self.query_pre_attn_norm == "rsqrt_head_dim":
            return self.head_dim**-0.5
        if self.query_pre_attn_norm == "rsqrt_emb_per_head":
            return (self.width // self.num_heads) ** -0.5
        raise ValueError(f"Unknown query_pre_attn_norm {self.query_pre_attn_norm!r}")

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """int32[B, T] -> float[B, T, D]."""
        return self.embedder.encode(tokens)

    def compute_logits(self, pre_logits: jax.Array) -> jax.Array:
        """float[B, T, D] final-normed activations -> float32[B, T, V] logits."""
        logits = self.embedder.decode(pre_logits).astype(jnp.float32)
        return _softcap(logits, self.final_logits_softcap)

    def __call__(self, x, positions, attn_mask, decode=None):
        """Runs every layer and the final norm.

        Args:
          x: float[B, T, D] embedded inputs.
          positions: int32[B, T].
          attn_mask: bool[B, T, S] (see `Attention`).
          decode: None, "prefill" (a new cache of S slots, in the "cache"
            collection as `k_cache` and `v_cache`, float[L, B, S, K, H]) or
            "extend" (writes into that cache).
        Returns:
          (pre_logits float[B, T, D], out dict with "encoded").
        """
        cache = None
        if decode == "prefill":
            batch, cache_size = x.shape[0], attn_mask.shape[-1]
            shape = (self.depth, batch, cache_size, self.num_kv_heads, self.head_dim)
            zeros = jnp.zeros(shape, jnp.dtype(self.cache_dtype or jnp.float32))
            cache = KVCache(zeros, zeros, jnp.int32(0))
        elif decode is not None:
            k, v = self.get_variable("cache", "k_cache"), self.get_variable("cache", "v_cache")
            cache = KVCache(k, v, jnp.int32(0))
        # Activations run in float32 whatever the weights' dtypes (frozen weights
        # may be 16-bit); the scan also needs one dtype in and out of every layer.
        (encoded, cache), _ = self.layers(
            (x.astype(jnp.float32), cache), positions, attn_mask, decode
        )
        if cache is not None:
            self.put_variable("cache", "k_cache", cache.k)
            self.put_variable("cache", "v_cache", cache.v)
        return self.final_norm(encoded), {"encoded": encoded}
