"""The SigLIP vision tower of PaliGemma: a plain ViT without pooling.

Parameter names follow big_vision's `vit.py` (`img/embedding`,
`img/pos_embedding`, `img/Transformer/encoderblock/...`, `img/head`), with the
encoder blocks stacked on a leading axis by `nn.scan`.

The tower cuts the image into patches, embeds each patch linearly, adds a
learned position embedding, runs pre-norm transformer blocks, and projects every
patch token to the language model's width with `head`. Each patch token becomes
one "image token" of the decoder's prefix.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ViT sizes by name: (width, depth, mlp_dim, num_heads). "/14" after the name
# sets the patch size, e.g. "So400m/14".
VIT_SIZES = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
}

VIT_DEFAULTS = dict(
    patch_size=(16, 16),
    pool_type="none",
    posemb="learn",
    scan=True,
    dtype_mm="float32",
    remat_policy="none",
    scan_unroll=1,  # blocks per scan iteration, as in `gemma.GEMMA_DEFAULTS`
)

VIT_FIELDS = ("width", "depth", "mlp_dim", "num_heads", *VIT_DEFAULTS)


def vit_config(variant: str | None = None, **overrides) -> dict:
    """Returns the complete field dict of a ViT.

    Args:
      variant: "So400m/14", "B/16", "mu/16", ... (see `VIT_SIZES`), or None when
        width, depth, mlp_dim, num_heads and patch_size are given.
      **overrides: any field of `VIT_FIELDS`; `patch_size` may be an int.
    """
    config = dict(VIT_DEFAULTS)
    if variant is not None:
        name, _, patch = variant.partition("/")
        if name not in VIT_SIZES:
            raise ValueError(f"Unknown ViT variant {variant!r}; sizes: {sorted(VIT_SIZES)}")
        config.update(zip(("width", "depth", "mlp_dim", "num_heads"), VIT_SIZES[name], strict=True))
        if patch:
            config["patch_size"] = int(patch)
    unknown = set(overrides) - set(VIT_FIELDS)
    if unknown:
        raise ValueError(f"Unknown ViT config field(s) {sorted(unknown)}; known: {VIT_FIELDS}")
    config.update(overrides)
    missing = [f for f in VIT_FIELDS if f not in config]
    if missing:
        raise ValueError(f"ViT config lacks {missing}: name a `variant` or give them.")
    patch = config["patch_size"]
    config["patch_size"] = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if config["pool_type"] != "none":
        raise ValueError(
            "PaliGemma's image tower keeps every patch token: pool_type must be 'none'."
        )
    if config["posemb"] != "learn":
        raise ValueError("PaliGemma's image tower uses a learned position embedding: 'learn'.")
    if not (isinstance(config["scan_unroll"], int) and config["scan_unroll"] >= 1):
        raise ValueError(
            f"ViT config field scan_unroll must be an int >= 1 (1 = a plain scan, "
            f"depth = fully unrolled), got {config['scan_unroll']!r}."
        )
    if not config["scan"]:
        raise ValueError("This implementation stacks the encoder blocks: scan must be True.")
    return config


def patchify(image: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """Cuts images into non-overlapping patches and flattens each one.

    Args:
      image: float[B, H, W, C].
      patch_size: (ph, pw), the patch height and width in pixels.
    Returns:
      float[B, H // ph, W // pw, ph * pw * C]: entry [b, i, j] holds the pixels
      of the patch in grid row i, column j, in (row, column, channel) order.
      Pixels past the last whole patch are dropped, as a VALID convolution does.
    """
    ph, pw = patch_size
    batch, height, width, channels = image.shape
    grid_h, grid_w = height // ph, width // pw
    patches = image[:, : grid_h * ph, : grid_w * pw].reshape(
        batch, grid_h, ph, grid_w, pw, channels
    )
    patches = patches.transpose(0, 1, 3, 2, 4, 5)  # [B, grid_h, grid_w, ph, pw, C]
    return patches.reshape(batch, grid_h, grid_w, ph * pw * channels)


def _flat_dense(features: int, dtype_mm: str, name: str | None = None) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype_mm,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
        name=name,
    )


class PatchEmbedding(nn.Module):
    """Embeds each non-overlapping patch linearly: a strided "VALID" convolution.

    The parameters are those of `nn.Conv` (`kernel` [ph, pw, C, D], `bias`
    [D]), but the convolution is computed as one matmul of the flattened
    patches: as the patches do not overlap this is the same sum, and on a CPU
    XLA computes the kernel's gradient more than twice as fast this way (the
    forward pass costs about the same).
    """

    width: int
    patch_size: tuple[int, int]
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, image):
        """float[B, H, W, C] -> float[B, H/ph, W/pw, D] (pixels past the last whole patch are
        dropped, as a VALID convolution does)."""
        (ph, pw), channels = self.patch_size, image.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (ph, pw, channels, self.width)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.width,))
        # One row per patch, its pixels in the kernel's (row, column, channel) order.
        patches = patchify(image, self.patch_size)
        kernel = kernel.reshape(-1, self.width).astype(self.dtype_mm)
        x = patches.reshape(-1, kernel.shape[0]) @ kernel + bias.astype(self.dtype_mm)
        return x.reshape(*patches.shape[:3], self.width)


class MlpBlock(nn.Module):
    """Dense -> GELU (tanh approximation) -> Dense, on tokens float[M, D]."""

    mlp_dim: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, tokens):
        hidden = nn.gelu(_flat_dense(self.mlp_dim, self.dtype_mm)(tokens))
        return _flat_dense(tokens.shape[-1], self.dtype_mm)(hidden)


class HeadsProjection(nn.Module):
    """Tokens float[M, D] -> float[M, N, H] (per-head query, key or value).

    Stores `kernel` [D, N, H] and `bias` [N, H] as flax's DenseGeneral does,
    so the names match big_vision's checkpoints.
    """

    num_heads: int
    head_dim: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, tokens):
        shape = (tokens.shape[-1], self.num_heads, self.head_dim)
        kernel = self.param("kernel", nn.initializers.xavier_uniform(0, (1, 2)), shape)
        bias = self.param("bias", nn.initializers.zeros_init(), shape[1:])
        return jnp.einsum("MD,DNH->MNH", tokens, kernel.astype(self.dtype_mm)) + bias


class HeadsOutput(nn.Module):
    """float[M, N, H] -> float[M, D] with `kernel` [N, H, D] and `bias` [D]."""

    width: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, encoded):
        shape = (*encoded.shape[1:], self.width)
        kernel = self.param("kernel", nn.initializers.xavier_uniform((0, 1), 2), shape)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.width,))
        return jnp.einsum("MNH,NHD->MD", encoded, kernel.astype(self.dtype_mm)) + bias


class MultiHeadDotProductAttention(nn.Module):
    """Full self-attention over a sequence, every token seeing every token.

    Same parameters as flax's `nn.MultiHeadDotProductAttention` (query, key,
    value, out), computed on flattened tokens: XLA's CPU backend computes a
    weight gradient several times faster when it contracts one token axis
    rather than two.
    """

    num_heads: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x):
        """float[B, T, D] -> float[B, T, D]."""
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        tokens = x.reshape(batch * length, width)
        q, k, v = (
            HeadsProjection(self.num_heads, head_dim, self.dtype_mm, name=name)(tokens)
            for name in ("query", "key", "value")
        )
        q, k, v = (a.reshape(batch, length, self.num_heads, head_dim) for a in (q, k, v))
        logits = jnp.einsum("BTNH,BSNH->BNTS", q * head_dim**-0.5, k)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        encoded = jnp.einsum("BNTS,BSNH->BTNH", probs, v).reshape(batch * length, -1, head_dim)
        out = HeadsOutput(width, self.dtype_mm, name="out")(encoded)
        return out.reshape(batch, length, width)


class Encoder1DBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x))."""

    mlp_dim: int
    num_heads: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x, _):
        x = x + MultiHeadDotProductAttention(self.num_heads, self.dtype_mm)(nn.LayerNorm()(x))
        tokens = x.reshape(-1, x.shape[-1])  # [B*T, D]
        tokens = tokens + MlpBlock(self.mlp_dim, self.dtype_mm)(nn.LayerNorm()(tokens))
        return tokens.reshape(x.shape), None


class Encoder(nn.Module):
    """`depth` stacked blocks (one scanned module) and a final LayerNorm."""

    depth: int
    mlp_dim: int
    num_heads: int
    dtype_mm: str = "float32"
    remat_policy: str = "none"
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, x):
        block = Encoder1DBlock
        if self.remat_policy != "none":
            block = nn.remat(
                block, prevent_cse=False, policy=getattr(jax.checkpoint_policies, self.remat_policy)
            )
        x, _ = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=self.depth,
            unroll=self.scan_unroll,
        )(self.mlp_dim, self.num_heads, self.dtype_mm, name="encoderblock")(x, None)
        return nn.LayerNorm(name="encoder_norm")(x)


class VisionTransformer(nn.Module):
    """SigLIP image tower: image -> one token per patch, at the LLM's width.

    Fields are those of `vit_config`, plus `num_classes`: the output width of
    `head` (the language model's width in PaliGemma).
    """

    num_classes: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: tuple[int, int] = (16, 16)
    pool_type: str = "none"
    posemb: str = "learn"
    scan: bool = True
    dtype_mm: str = "float32"
    remat_policy: str = "none"
    scan_unroll: int = 1

    @nn.compact
    def __call__(self, image: jax.Array) -> tuple[jax.Array, dict]:
        """Encodes images.

        Args:
          image: float[B, H, W, 3] in [-1, 1]; H and W multiples of the patch.
        Returns:
          (zimg float[B, N, num_classes] with N = (H/p)*(W/p), out dict with
          the pre-head tokens under "encoded").
        """
        image = jnp.asarray(image, self.dtype_mm)
        x = PatchEmbedding(self.width, self.patch_size, self.dtype_mm, name="embedding")(image)
        batch, grid_h, grid_w, width = x.shape
        x = x.reshape(batch, grid_h * grid_w, width)
        pos_embedding = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=1 / np.sqrt(width)),
            (1, grid_h * grid_w, width),
        )
        x = x + pos_embedding
        encoded = Encoder(
            self.depth,
            self.mlp_dim,
            self.num_heads,
            self.dtype_mm,
            self.remat_policy,
            self.scan_unroll,
            name="Transformer",
        )(x)
        zimg = nn.Dense(self.num_classes, name="head")(encoded)
        return zimg, {"encoded": encoded}
