"""PaliGemma: a SigLIP image tower feeding a Gemma decoder (lesson 3).

    image ─► VisionTransformer ─► zimg[B, N, D] ──┐
                                                  ├─ concat ─► Gemma (prefix-LM) ─► logits
    tokens ─► embedder × sqrt(D) ─► ztxt[B, T, D] ┘

Image tokens and the text prefix ("caption en\\n") attend to each other fully;
the suffix (the caption) is generated causally. `make_attn_mask` builds that
mask from `mask_ar`. The config mirrors big_vision's: `Model(img={...},
llm={...})`, and the parameter tree matches its checkpoints name for name.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from solutions.gemma import Gemma, apply_rope, gemma_config, rms_norm
from solutions.siglip import VisionTransformer, vit_config

__all__ = [
    "Model",
    "apply_rope",
    "make_attn_mask",
    "rms_norm",
    "count_params",
    "init_params",
    "param_shapes",
]


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """Builds the attention mask of a prefix-LM from two per-token masks.

    Token i may attend token j when both are real inputs and j does not sit in
    a later "block" than i. A 1 in `mask_ar` starts a new block; a 0 joins the
    previous block. So with `c = cumsum(mask_ar)`, i sees j iff `c[j] <= c[i]`.

    Worked examples (one row, 1 = may attend):

        mask_ar = [1 1 1 1]      pure causal      1 0 0 0
                                                  1 1 0 0
                                                  1 1 1 0
                                                  1 1 1 1

        mask_ar = [0 0 1 1]      prefix-LM:       1 1 0 0   the two prefix tokens
                                 PaliGemma's      1 1 0 0   see each other; the
                                                  1 1 1 0   suffix is causal and
                                                  1 1 1 1   sees the whole prefix

        mask_ar = [1 0 1 0]      causal blocks    1 1 0 0
                                 of two tokens    1 1 0 0
                                                  1 1 1 1
                                                  1 1 1 1

    Args:
      input_mask: bool[B, N], True for real tokens, False for padding.
      mask_ar: int32[B, N], 1 where a token starts a new causal block.
    Returns:
      bool[B, N, N]: entry [b, i, j] says whether token i may attend token j.
    """
    blocks = jnp.cumsum(mask_ar, axis=1)
    causal = blocks[:, None, :] <= blocks[:, :, None]
    both_real = jnp.logical_and(input_mask[:, None, :], input_mask[:, :, None])
    return jnp.logical_and(causal, both_real)


class Model(nn.Module):
    """PaliGemma.

    Attributes:
      img: ViT fields (see `solutions.siglip.vit_config`), e.g.
        `{"variant": "So400m/14", "pool_type": "none", "scan": True}`.
      llm: Gemma fields (see `solutions.gemma.gemma_config`), e.g.
        `{"variant": "gemma2_2b", "vocab_size": 257152}`.
    """

    img: Mapping | None = None
    llm: Mapping | None = None

    def setup(self):
        llm_config = gemma_config(**dict(self.llm or {}))
        self._llm = Gemma(**llm_config, name="llm")
        self._img = VisionTransformer(
            num_classes=llm_config["width"], **vit_config(**dict(self.img or {})), name="img"
        )

    # -- embedding -------------------------------------------------------------

    def embed_image(self, image: jax.Array) -> tuple[jax.Array, dict]:
        """float[B, H, W, 3] in [-1, 1] -> (zimg float[B, N, D], out)."""
        zimg, out_img = self._img(image)
        return zimg, {"img/zimg": zimg, **{f"img/{k}": v for k, v in out_img.items()}}

    def embed_text(self, tokens: jax.Array) -> jax.Array:
        """int32[B, T] -> ztxt float[B, T, D] (scaled by sqrt(D))."""
        return self._llm.embed_tokens(tokens)

    def embed_image_and_text(self, image, text, *, input_mask=None, mask_ar=None):
        """Embeds both and lays image tokens before text tokens.

        Args:
          image: float[B, H, W, 3].
          text: int32[B, T].
          input_mask: bool[B, T], False on padding; default all True.
          mask_ar: int32[B, T]; default all 1 (causal).
        Returns:
          (x float[B, N+T, D], input_mask bool[B, N+T], mask_ar int32[B, N+T]),
          and an out dict. Image tokens are real and form one full-attention
          block with the text prefix (their mask_ar is 0).
        """
        zimg, out = self.embed_image(image)
        ztxt = self.embed_text(text)
        if input_mask is None:
            input_mask = jnp.ones(text.shape, bool)
        if mask_ar is None:
            mask_ar = jnp.ones(text.shape, jnp.int32)
        num_img = zimg.shape[1]
        x = jnp.concatenate([zimg, ztxt], axis=1)
        input_mask = jnp.pad(
            jnp.asarray(input_mask, bool), ((0, 0), (num_img, 0)), constant_values=True
        )
        mask_ar = jnp.pad(jnp.asarray(mask_ar, jnp.int32), ((0, 0), (num_img, 0)))
        return (x, input_mask, mask_ar), out

    # -- full forward ----------------------------------------------------------

    def __call__(self, image, text, mask_ar, train=False, input_mask=None):
        """Runs image and text through the model and returns text logits.

        Args:
          image: float[B, H, W, 3] in [-1, 1].
          text: int32[B, T] tokens.
          mask_ar: int32[B, T], 0 for the prefix (full attention), 1 for the
            suffix (causal).
          train: kept for big_vision's call signature; PaliGemma fine-tuning
            uses no dropout, so it changes nothing.
          input_mask: optional bool[B, T], False on padding tokens.
        Returns:
          (text_logits float32[B, T, V], out dict of intermediates).
        """
        del train
        (x, full_input_mask, full_mask_ar), out = self.embed_image_and_text(
            image, text, input_mask=input_mask, mask_ar=mask_ar
        )
        attn_mask = out["attn_mask"] = make_attn_mask(full_input_mask, full_mask_ar)
        positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
        pre_logits, out_llm = self._llm(x, positions, attn_mask)
        out.update({f"llm/{k}": v for k, v in out_llm.items()})
        text_pre_logits = pre_logits[:, -text.shape[1] :]
        text_logits = out["text_logits"] = self._llm.compute_logits(text_pre_logits)
        return text_logits, out

    # -- decoding with a KV cache ---------------------------------------------

    def prefill_cache(self, x, input_mask, mask_ar, *, cache_size: int):
        """Runs the prompt and fills a fresh cache of `cache_size` slots.

        Call with `mutable=["cache"]`. Prompts must be left-aligned: each row's
        real tokens first, padding after (as `preprocess_tokens` pads).

        Args:
          x: float[B, P, D] embedded prompt (image tokens + text prefix).
          input_mask: bool[B, P]. mask_ar: int32[B, P].
          cache_size: total slots, P + the number of tokens to generate.
        Returns:
          float32[B, 1, V]: logits after each row's last real token.
        """
        batch, prompt_len, _ = x.shape
        attn_mask = make_attn_mask(input_mask, mask_ar)
        attn_mask = jnp.pad(attn_mask, ((0, 0), (0, 0), (0, cache_size - prompt_len)))
        positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
        pre_logits, _ = self._llm(x, positions, attn_mask, decode="prefill")
        prompt_lengths = jnp.sum(input_mask, axis=1).astype(jnp.int32)
        self.put_variable("cache", "next_position", prompt_lengths)
        last = jnp.take_along_axis(pre_logits, (prompt_lengths - 1)[:, None, None], axis=1)
        return self._llm.compute_logits(last)

    def extend_cache(self, x):
        """Feeds one more token per row and returns the logits after it.

        Call with `mutable=["cache"]` and the cache from `prefill_cache`.

        Args:
          x: float[B, 1, D] embedded token (e.g. `embed_text(token[:, None])`).
        Returns:
          float32[B, 1, V].
        """
        positions = self.get_variable("cache", "next_position")
        cache_size = self.variables["cache"]["llm"]["k_cache"].shape[2]
        attn_mask = jnp.arange(cache_size)[None, None, :] <= positions[:, None, None]
        pre_logits, _ = self._llm(x, positions[:, None], attn_mask, decode="extend")
        self.put_variable("cache", "next_position", positions + 1)
        return self._llm.compute_logits(pre_logits)


# -- helpers on whole parameter trees ------------------------------------------


def _dummy_inputs(model: Model, resolution: int, batch: int = 1, text_len: int = 2):
    image = jnp.zeros((batch, resolution, resolution, 3), jnp.float32)
    text = jnp.zeros((batch, text_len), jnp.int32)
    return image, text, jnp.ones((batch, text_len), jnp.int32)


def init_params(model: Model, resolution: int, seed: int = 0) -> dict:
    """Randomly initialised parameters for images of `resolution` pixels."""
    # Jitted: one compilation beats running the scanned layers op by op.
    init = jax.jit(lambda rng: model.init(rng, *_dummy_inputs(model, resolution))["params"])
    return init(jax.random.PRNGKey(seed))


def param_shapes(model: Model, resolution: int) -> dict:
    """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating it."""
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), *_dummy_inputs(model, resolution))
    )
    return variables["params"]


def count_params(params) -> int:
    """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
