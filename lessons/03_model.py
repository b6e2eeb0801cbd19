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
# # Lesson 3: The PaliGemma model
#
# PaliGemma reads an image and a short prompt such as `caption en`, and writes
# text. It is two transformers glued together: a **SigLIP** vision tower turns the
# image into a sequence of vectors ("image tokens"), and a **Gemma** decoder reads
# those image tokens followed by the prompt and continues with the caption, one
# token at a time.
#
# ## What you will learn
#
# - how SigLIP cuts an image into patches and turns each patch into one token;
# - the pieces of the Gemma decoder: RMSNorm, rotary position embeddings (RoPE),
#   multi-query and grouped-query attention, the gated GELU feed-forward;
# - the prefix-LM attention mask that lets image and prompt see each other while
#   the caption is written left to right;
# - where the three billion parameters sit, and what changed from PaliGemma 1 to 2.
#
# **Time:** about 45 minutes of reading and coding. Every cell runs in under a
# minute on a laptop CPU: real model sizes are computed with `jax.eval_shape`
# (shapes only, no memory), and the model we actually run is the course's tiny
# PaliGemma, the same architecture scaled down.

# %% tags=["setup"]
import jax
import jax.numpy as jnp
import numpy as np

from tests.grading import check

# %%
# isort: split
import math
import textwrap

import matplotlib.pyplot as plt

from solutions.checkpoints import load_tiny
from solutions.configs import CHECKPOINTS
from solutions.gemma import gemma_config
from solutions.model import Model, count_params, param_shapes
from solutions.params import param_summary
from solutions.preprocess import preprocess_image, preprocess_tokens
from solutions.scenes import long_caption, render_scene, sample_scene

# %% [markdown]
# ## Two towers, one config
#
# A PaliGemma model is described by two dictionaries, one per tower, exactly as
# Google's big_vision code writes them. The released 3B model names its towers by
# variant: a `So400m/14` ViT (400M parameters, 14-pixel patches) and the
# `gemma_2b` decoder. The course's tiny model spells out every size.
#
# `Model(**config)` builds either one. Building a flax module allocates nothing;
# `param_shapes` asks JAX for the shapes the parameters *would* have.

# %%
real_config = CHECKPOINTS["paligemma-3b-pt-224"].config
tiny_model, tiny_resolution, tiny_params, tokenizer = load_tiny()
print("PaliGemma 1 3B :", real_config)
print("tiny PaliGemma :", {"img": tiny_model.img, "llm": tiny_model.llm})

real_model = Model(**real_config)
real_shapes = param_shapes(real_model, 224)
print(f"\nparameters: 3B model {count_params(real_shapes):,}, tiny {count_params(tiny_params):,}")

# %% [markdown]
# ## SigLIP: an image becomes a sequence of tokens
#
# A transformer reads a sequence of vectors, so the image tower first turns the
# picture into one. It cuts the image into a grid of square patches that do not
# overlap: 224 / 14 = 16 patches a side, 256 patches in all for the real model.
# The tiny model reads the scenes at 96 pixels in 32-pixel patches: a 3 x 3 grid
# of 9, one patch per grid cell of a scene, so every shape lies whole inside one
# patch. Here is an image of the course's scenes dataset as each model reads it.

# %%
scene = sample_scene(3)
photo = render_scene(scene, 224)
image = preprocess_image(photo, tiny_resolution)  # float32[96, 96, 3] in [-1, 1]
tiny_patch = tiny_model.img["patch_size"]

figure, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, pixels, patch in zip(
    axes, (np.asarray(photo) / 127.5 - 1, image), (14, tiny_patch), strict=True
):
    side = pixels.shape[0]
    ax.imshow((pixels + 1) / 2)
    for edge in range(0, side + 1, patch):
        ax.axhline(edge - 0.5, color="white", linewidth=0.6)
        ax.axvline(edge - 0.5, color="white", linewidth=0.6)
    grid = side // patch
    ax.set_title(f"{side} pixels, {patch}-pixel patches: {grid} x {grid} = {grid * grid} tokens")
    ax.axis("off")
figure.suptitle(textwrap.fill(long_caption(scene), 110), fontsize=8)
plt.show()

# %% [markdown]
# Each patch is then flattened into one long vector of its pixels (14 x 14 x 3 =
# 588 numbers) and multiplied by one matrix, `img/embedding/kernel`, that maps it
# to the tower's width (1152 for So400m). Stored as a convolution kernel of shape
# `[14, 14, 3, 1152]`, it is a strided "VALID" convolution; as the patches do not
# overlap, that is the same as cutting out the patches and doing one matmul.
#
# ### Exercise 3.1: cut an image into patches
#
# Write `patchify`: for a batch of images and a patch size `(ph, pw)`, return the
# grid of flattened patches. Entry `[b, i, j]` is the patch in grid row `i`, column
# `j`, its pixels listed row by row, and within a pixel channel by channel (the
# order the kernel `[ph, pw, C, D]` is flattened in). Pixels past the last whole
# patch are dropped.


# %% tags=["exercise"]
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
    # Hint: crop to whole patches, reshape to [B, H//ph, ph, W//pw, pw, C], then
    # transpose so the two grid axes come before the two within-patch axes.
    raise NotImplementedError("Exercise 3.1")


# %% tags=["check"]
check("ex3_1")

# %% [markdown]
# The tiny model's 3 x 3 grid, each patch put back into a 32 x 32 picture from its
# 3072 numbers:

# %%
patches = patchify(jnp.asarray(image)[None], (tiny_patch, tiny_patch))
print("patches:", patches.shape)
grid = patches.shape[1]
figure, axes = plt.subplots(grid, grid, figsize=(4, 4))
for (i, j), ax in np.ndenumerate(np.array(axes, dtype=object)):
    ax.imshow((np.asarray(patches[0, i, j]).reshape(tiny_patch, tiny_patch, 3) + 1) / 2)
    ax.set_title(f"[{i}, {j}]", fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# After the patch embedding, SigLIP adds a learned **position embedding**
# (`img/pos_embedding`, one vector per grid cell: the transformer itself does not
# know where a patch came from) and runs a plain ViT: 27 blocks of LayerNorm,
# full self-attention (every patch sees every patch) and a GELU MLP. PaliGemma
# keeps every patch token (no pooling), and a last dense layer `img/head` maps
# each from 1152 to the decoder's width. So the image arrives at Gemma as 256
# tokens of width 2048, and in the tiny model as 9 tokens of width 192.

# %%
# jax.jit compiles the whole tower once: faster than running it op by op.
embed_image = jax.jit(
    lambda params, img: tiny_model.apply({"params": params}, img, method=Model.embed_image)
)
zimg, _ = embed_image(tiny_params, image[None])
print("tiny model, image tokens:", zimg.shape, zimg.dtype)

real_zimg, _ = jax.eval_shape(
    lambda params, img: real_model.apply({"params": params}, img, method=Model.embed_image),
    real_shapes,
    jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
)
print("3B model,   image tokens:", real_zimg.shape, "(shapes only, nothing computed)")

# %% [markdown]
# ## Gemma: the decoder
#
# The text side starts with a table: token id `t` becomes row `t` of
# `llm/embedder/input_embedding` `[V, D]`, multiplied by sqrt(D) so that its size
# matches the image tokens'. The same table, transposed, turns the decoder's last
# vectors back into scores over the vocabulary ("tied" embeddings). The image
# tokens and the text tokens are then one sequence, and every Gemma layer does:
#
# ```
# x = x + attention(rms_norm(x))
# x = x + feed_forward(rms_norm(x))
# ```
#
# ### RMSNorm
#
# Before each sub-layer the vectors are rescaled to a root-mean-square of 1, then
# multiplied channel by channel by a learned `1 + scale`. Gemma stores `scale`
# so that zero means "no change"; unlike LayerNorm, nothing is subtracted and
# there is no bias. A small `eps` inside the square root keeps an all-zero vector
# from dividing by zero:
#
# $$\mathrm{rms\_norm}(x) = \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}} (1 + \mathrm{scale})$$
#
# ### Exercise 3.2: RMSNorm
#
# Write `rms_norm`, normalising over the last axis.


# %% tags=["exercise"]
def rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Gemma's RMSNorm: `x / rms(x) * (1 + scale)`, over the last axis.

    Args:
      x: float[..., D] activations.
      scale: float[D]; zero means identity, which is how Gemma stores it.
      eps: added to the mean square before the square root.
    Returns:
      float[..., D], the same shape as `x`.
    """
    # Hint: the mean square is one number per vector: keep it as a trailing axis of size 1 so that
    # it broadcasts over the vector's D entries. Gemma stores the scale as an offset from 1.
    raise NotImplementedError("Exercise 3.2")


# %% tags=["check"]
check("ex3_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 3.2</summary>
#
# ```python
# mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
# return x * jax.lax.rsqrt(mean_square + eps) * (1 + scale)
# ```
#
# </details>

# %% [markdown]
# Whatever comes in, what goes out has a root-mean-square of 1 (with `scale` zero),
# except for vectors so small that `eps` is no longer negligible next to their
# mean square:

# %%
vectors = jnp.asarray(np.random.default_rng(0).normal(0, [[0.01], [1.0], [300.0]], (3, 192)))
normed = rms_norm(vectors, jnp.zeros(192))
for before, after in zip(vectors, normed, strict=True):
    rms_before, rms_after = (float(jnp.sqrt(jnp.mean(v**2))) for v in (before, after))
    print(f"rms {rms_before:9.4f}  ->  {rms_after:.4f}")

# %% [markdown]
# ### Rotary position embeddings (RoPE)
#
# Attention compares a query with keys by dot products, which by themselves do not
# know where tokens sit. Gemma adds no position vector; it *rotates* each query and
# key by an angle proportional to the token's position. Channels are paired up,
# channel `i` of the first half of a head with channel `i` of the second half, and
# pair `i` is turned by the angle
#
# $$\theta_i = \mathrm{position} \,/\, w^{2i/H}, \qquad w = 10\,000,\ H \text{ the head size},$$
#
# fast for the first pairs and ever slower for the last ones. A rotation of the
# pair `(a, b)` by `θ` gives `(a cos θ − b sin θ, b cos θ + a sin θ)`. Since
# rotating both vectors changes their dot product only through the *difference*
# of their angles, attention scores depend on how far apart two tokens are, not
# where they are.
#
# ### Exercise 3.3: apply RoPE
#
# Write `apply_rope` for queries or keys `[B, T, N, H]` and positions `[B, T]`.


# %% tags=["exercise"]
def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary position embedding, rotating the two halves of each head.

    Channel i of the first half and channel i of the second half form one 2-d
    pair, rotated by the angle `position / max_wavelength**(2i/H)`.

    Args:
      x: float[B, T, N, H] queries or keys, H even.
      positions: int32[B, T] absolute position of each token.
      max_wavelength: w in the angle above.
    Returns:
      float[B, T, N, H] rotated, same dtype as `x`.
    """
    # Hint: channel i of the first half and channel i of the second half are the two coordinates of
    # one point, turned by its own angle (position times frequency i, the same for every head). A
    # 2-d rotation turns (a, b) into (a cos - b sin, b cos + a sin). Compute in float32 and return
    # the input's dtype.
    raise NotImplementedError("Exercise 3.3")


# %% tags=["check"]
check("ex3_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 3.3</summary>
#
# ```python
# half = x.shape[-1] // 2
# inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
# angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B, T, 1, H/2]
# first, second = x[..., :half], x[..., half:]
# ```
#
# </details>

# %% [markdown]
# Rotate the *same* query to every position `i` and the *same* key to every
# position `j`, and look at all their dot products: each diagonal is constant,
# because the score depends on `i − j` only.

# %%
rng = np.random.default_rng(1)
query, key = (jnp.asarray(rng.normal(size=(1, 1, 1, 64)), jnp.float32) for _ in range(2))
positions = jnp.arange(32)[None, :]
queries = apply_rope(jnp.broadcast_to(query, (1, 32, 1, 64)), positions)[0, :, 0]
keys = apply_rope(jnp.broadcast_to(key, (1, 32, 1, 64)), positions)[0, :, 0]
scores = queries @ keys.T  # [32 query positions, 32 key positions]

plt.figure(figsize=(5.5, 4.5))
plt.imshow(scores, cmap="RdBu")
plt.xlabel("key position j")
plt.ylabel("query position i")
plt.title("q · k after RoPE: constant along diagonals")
plt.colorbar()
plt.show()
print(
    "largest spread along a diagonal:", float(jnp.max(jnp.abs(scores[1:, 1:] - scores[:-1, :-1])))
)

# %% [markdown]
# ### Multi-query and grouped-query attention
#
# Gemma's attention has `N` query heads of size `H`. The keys and values could
# have `N` heads too, but during generation every past token's keys and values
# are kept in a cache, and that cache is what fills a GPU's memory. So Gemma 1
# uses **multi-query attention**: all 8 query heads share **one** key/value head.
# Gemma 2 uses **grouped-query attention**: 4 key/value heads, each shared by a
# group of 2 query heads. The parameter shapes say it (`[L, N, D, H]` for queries,
# `[L, 2, K, D, H]` for keys and values together):

# %%
pg2_model = Model(**CHECKPOINTS["paligemma2-3b-pt-224"].config)
pg2_shapes = param_shapes(pg2_model, 224)
for label, shapes in (("PaliGemma 1", real_shapes), ("PaliGemma 2", pg2_shapes)):
    attn = shapes["llm"]["layers"]["attn"]
    print(
        f"{label}: q_einsum {attn['q_einsum']['w'].shape}, kv_einsum {attn['kv_einsum']['w'].shape}"
    )

for label, variant in (("PaliGemma 1", "gemma_2b"), ("PaliGemma 2", "gemma2_2b")):
    cfg = gemma_config(variant)
    # Per token: a key and a value (2) per kv head, per layer, 2 bytes each in bfloat16.
    cache_bytes = 2 * cfg["num_kv_heads"] * cfg["head_dim"] * cfg["depth"] * 2
    print(
        f"{label}: {cfg['num_heads']} query heads share {cfg['num_kv_heads']} key/value "
        f"head(s) -> KV cache {cache_bytes / 1024:.0f} KiB per token"
    )

# %% [markdown]
# ### The gated GELU feed-forward
#
# The other half of each layer works on every token alone. Gemma's version is
# *gated*: two matrices (`gating_einsum`, stored together as `[L, 2, D, F]`) both
# map the token to the wide hidden size `F`; one goes through GELU and multiplies
# the other channel by channel, then `linear` `[L, F, D]` maps back:
#
# `feed_forward(x) = (gelu(x W0) * (x W1)) W2`
#
# GELU is a smooth ReLU; Gemma uses its tanh approximation.

# %%
xs = np.linspace(-4, 4, 200)
plt.figure(figsize=(5, 3))
plt.plot(xs, jax.nn.gelu(xs, approximate=True), label="gelu (tanh approximation)")
plt.plot(xs, np.maximum(xs, 0), "--", label="relu")
plt.legend()
plt.title("the activation inside Gemma's feed-forward")
plt.show()
mlp = real_shapes["llm"]["layers"]["mlp"]
print("PaliGemma 1 feed-forward:", {name: w.shape for name, w in mlp.items()})

# %% [markdown]
# ## The prefix-LM attention mask
#
# Gemma is a decoder: normally token `i` may only look at tokens `0..i`
# ("causal"), so that it can learn to predict the next one. PaliGemma relaxes
# this for the **prefix**: the image tokens and the prompt (`caption en\n`) all
# see each other, in both directions, since they are given, not generated. The
# **suffix**, the caption, stays causal. Padding sees nothing and is seen by
# nothing.
#
# One integer per token describes all of this: `mask_ar` ("autoregressive") is 0
# for a token that joins the block before it and 1 for a token that starts a new
# block. Token `i` may look at token `j` when `j`'s block does not come after
# `i`'s, and both are real tokens (`input_mask`). Examples, one sequence of four:
#
# ```
# mask_ar = [1 1 1 1]   causal:     1 0 0 0      mask_ar = [0 0 1 1]   prefix-LM:  1 1 0 0
#                                   1 1 0 0                                        1 1 0 0
#                                   1 1 1 0                                        1 1 1 0
#                                   1 1 1 1                                        1 1 1 1
# ```
#
# ### Exercise 3.4: the attention mask
#
# Write `make_attn_mask`.


# %% tags=["exercise"]
def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """Builds the attention mask of a prefix-LM from two per-token masks.

    Token i may attend token j when both are real inputs and j does not sit in
    a later block than i. A 1 in `mask_ar` starts a new block; a 0 joins the
    previous block.

        mask_ar = [1 0 1 0]   causal blocks of two:   1 1 0 0
                                                      1 1 0 0
                                                      1 1 1 1
                                                      1 1 1 1

    Args:
      input_mask: bool[B, N], True for real tokens, False for padding.
      mask_ar: int32[B, N], 1 where a token starts a new causal block.
    Returns:
      bool[B, N, N]: entry [b, i, j] says whether token i may attend token j.
    """
    # Hint: a running count of the 1s in mask_ar (jnp.cumsum along axis 1) numbers
    # each token's block; compare those numbers for every (i, j) by broadcasting
    # [B, 1, N] against [B, N, 1], and do the same with input_mask.
    raise NotImplementedError("Exercise 3.4")


# %% tags=["check"]
check("ex3_4")

# %% [markdown]
# Here is the mask of a (very short) training example: 4 image tokens, the
# prompt `<bos> caption en \n`, the caption `a red star <eos>`, and two padding
# tokens. Row `i` shows what token `i` may look at.

# %%
labels = [f"img{k}" for k in range(4)]
labels += ["<bos>", "caption", "en", "\\n", "a", "red", "star", "<eos>", "<pad>", "<pad>"]
example_mask_ar = jnp.asarray([[0] * 8 + [1] * 4 + [0] * 2])
example_input_mask = jnp.asarray([[True] * 12 + [False] * 2])
mask = make_attn_mask(example_input_mask, example_mask_ar)[0]

plt.figure(figsize=(5.5, 5.5))
plt.imshow(mask, cmap="Blues")
plt.xticks(range(len(labels)), labels, rotation=90)
plt.yticks(range(len(labels)), labels)
plt.xlabel("attended token j")
plt.ylabel("attending token i")
plt.title("prefix-LM mask: image + prompt see each other")
plt.show()

# %% [markdown]
# ## The whole PaliGemma
#
# `Model.__call__` puts the pieces in order: image tokens from SigLIP, text tokens
# from the embedding table, concatenated (image first), the mask from
# `make_attn_mask`, the Gemma layers, and the logits of the text positions. Here
# it reads our scene and the prompt `caption en`, as the tokenizer splits it. The
# last position's logits are the model's guess for the first word of the caption.
# The shipped tiny model was pretrained on short captions such as "a large red
# circle" (lesson 7 fine-tunes it to write long ones), so its best guess is the
# first word of one of those.

# %%
tokens, mask_ar, _, _ = preprocess_tokens("caption en", tokenizer=tokenizer)
print("prompt tokens:", [tokenizer.id_to_piece(int(t)) for t in tokens], "mask_ar:", mask_ar)

forward = jax.jit(tiny_model.apply)
logits, out = forward({"params": tiny_params}, image[None], tokens[None], mask_ar[None])
print("text logits:", logits.shape, " attention mask:", out["attn_mask"].shape)

probabilities = jax.nn.softmax(logits[0, -1])
for token in jnp.argsort(-probabilities)[:5]:
    piece = tokenizer.id_to_piece(int(token))
    print(f"  next token {piece!r:12} p = {float(probabilities[token]):.3f}")

# %% [markdown]
# ## Where the parameters are
#
# `count_params` adds up the sizes of every array in a tree, and works on shapes
# alone, so we can count the real models without loading them. Grouped by what
# they do:

# %%
COMPONENTS = {
    "image: patch + position embedding": ("img/embedding/", "img/pos_embedding"),
    "image: ViT blocks": ("img/Transformer/",),
    "image: head (to text width)": ("img/head/",),
    "text: token embedding": ("llm/embedder/",),
    "text: attention": ("llm/layers/attn/",),
    "text: feed-forward": ("llm/layers/mlp/",),
    "text: norms": ("llm/layers/pre_", "llm/layers/post_", "llm/final_norm/"),
}


def component_sizes(shapes) -> dict[str, int]:
    """Number of parameters per entry of COMPONENTS, by name prefix."""
    sizes = dict.fromkeys(COMPONENTS, 0)
    for name, shape, _ in param_summary(shapes):
        component = next(c for c, prefixes in COMPONENTS.items() if name.startswith(prefixes))
        sizes[component] += math.prod(shape)
    return sizes


sizes = {
    "PaliGemma 1 3B": component_sizes(real_shapes),
    "PaliGemma 2 3B": component_sizes(pg2_shapes),
}
for label, shapes in (("PaliGemma 1 3B", real_shapes), ("PaliGemma 2 3B", pg2_shapes)):
    assert sum(sizes[label].values()) == count_params(shapes)  # every parameter counted once
    print(f"{label}: {count_params(shapes) / 1e9:.3f} billion parameters")

rows = np.arange(len(COMPONENTS))
plt.figure(figsize=(8, 3.5))
for offset, (label, counts) in zip((-0.2, 0.2), sizes.items(), strict=True):
    bars = plt.barh(rows + offset, [n / 1e6 for n in counts.values()], height=0.4, label=label)
    plt.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
plt.yticks(rows, list(COMPONENTS))
plt.gca().invert_yaxis()
plt.xlabel("millions of parameters")
plt.xlim(0, 2100)
plt.legend(loc="lower right")
plt.title("where the parameters are")
plt.show()

# %% [markdown]
# Two things stand out. The embedding table alone is half a billion parameters
# (257,152 tokens x 2048 or 2304), and the image tower (about 400M) is small next
# to the decoder. PaliGemma 2 trades a narrower feed-forward (9216 instead of
# 16384) for more layers (26 instead of 18).
#
# ## PaliGemma 1 vs PaliGemma 2
#
# Same SigLIP tower, same recipe; the decoder changes from Gemma 1 to Gemma 2:

# %%
gemma1, gemma2 = gemma_config("gemma_2b"), gemma_config("gemma2_2b")
print(f"{'':22} {'Gemma 1':>8} {'Gemma 2':>8}")
for field in ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"):
    print(f"{field:22} {gemma1[field]!s:>8} {gemma2[field]!s:>8}")
for field in ("attn_logits_softcap", "final_logits_softcap", "post_norms"):
    print(f"{field:22} {gemma1[field]!s:>8} {gemma2[field]!s:>8}")

names_1, names_2 = ({name for name, _, _ in param_summary(s)} for s in (real_shapes, pg2_shapes))
print("\nparameters only PaliGemma 2 has:", sorted(names_2 - names_1))

# %% [markdown]
# - **Grouped-query attention**: 4 key/value heads instead of 1 (above).
# - **Post-norms**: Gemma 2 also normalises each sub-layer's *output* before adding
#   it back (`post_attention_norm`, `post_ffw_norm`), which keeps the residual
#   stream tame in a deeper network.
# - **Soft-capping**: attention scores and final logits go through
#   `cap * tanh(x / cap)`, nearly the identity for small values and a smooth ceiling
#   at `±cap` for large ones. The fine-tuning recipe turns the final-logit cap off
#   (`final_logits_softcap=0.0` in `solutions.configs`) because it transfers better.

# %%
scores = np.linspace(-150, 150, 301)
plt.figure(figsize=(5, 3))
plt.plot(scores, scores, "--", label="no cap")
plt.plot(scores, 50 * np.tanh(scores / 50), label="softcap 50 (attention)")
plt.plot(scores, 30 * np.tanh(scores / 30), label="softcap 30 (final logits)")
plt.ylim(-160, 160)
plt.legend()
plt.title("Gemma 2's soft-capping")
plt.show()

# %% [markdown]
# ## What you built
#
# - `patchify`: the first step of SigLIP, an image as a grid of flat patches;
# - `rms_norm` and `apply_rope`: Gemma's normalisation and its way of encoding
#   positions by rotation;
# - `make_attn_mask`: the prefix-LM mask that makes PaliGemma a captioner: the
#   prompt and image are read as a whole, the caption is written word by word.
#
# With them, and the attention and feed-forward layers of `solutions/gemma.py`,
# you ran a whole PaliGemma forward pass and counted the 3 billion parameters
# that the real checkpoints hold. Lesson 4 loads those parameters from disk.
#
# ## Go further
#
# 1. Why can the image tokens use `mask_ar = 0` and attend to the prompt tokens
#    that come *after* them? What would a purely causal mask lose?
# 2. At 448 pixels the real model sees 1024 image tokens instead of 256. How much
#    larger does the attention-score matrix of one layer get? The parameter count?
# 3. With the KV-cache arithmetic above, how many tokens of PaliGemma 2's cache fit
#    in 1 GiB? Why did Gemma 2 accept a bigger cache than Gemma 1?
# 4. Replace `approximate=True` by `False` in the GELU plot: how far apart are the
#    two curves? Why does matching the exact variant matter for a checkpoint?
