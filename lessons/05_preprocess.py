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
# # Lesson 5: Preprocessing, images and text into model inputs
#
# The model of lesson 3 reads two things: pixels as `float32[B, H, W, 3]` and text as token
# ids `int32[B, T]` with masks that say which tokens are the prompt, which are the answer and
# which are padding. This lesson builds both from what a dataset really holds: image files of
# any size and kind, and two strings, a prompt ("caption en") and a caption.
#
# **What you will learn**
#
# - Why PaliGemma wants pixels in [-1, 1] at exactly its resolution, and what a bilinear resize
#   with antialiasing does.
# - What goes wrong with greyscale, palette, CMYK, 16-bit and rotated (EXIF) images, and how to
#   read each one safely.
# - PaliGemma's text layout, `[bos] prefix "\n" suffix [eos] [pad]...`, and its three masks:
#   `mask_ar`, `mask_loss`, `mask_input`.
# - What happens when a caption does not fit, and how to notice.
# - How generated tokens become a caption again.
#
# **Time:** about 30 minutes of reading and exercises; the cells run in under a minute on a
# laptop CPU.

# %% tags=["setup"]
import io
import warnings

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from PIL import Image

from solutions import scenes
from solutions.checkpoints import TINY_ASSETS, read_tiny_card
from solutions.model import make_attn_mask
from solutions.preprocess import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SEPARATOR,
    TruncationStats,
    TruncationWarning,
    preprocess_image,
)
from solutions.tokenizer import load_tokenizer
from tests.grading import check

# TensorFlow is here only for its image resize; the accelerators belong to JAX.
tf.config.set_visible_devices([], "GPU")

RESOLUTION = read_tiny_card()["resolution"]

# %%
print(f"the course's tiny PaliGemma reads {RESOLUTION} x {RESOLUTION} images")

# %% [markdown]
# ## 1. Pixels: one size, one range
#
# The image tower (SigLIP) cuts the picture into 14 x 14 patches (the tiny model: 32 x 32) and
# learned one position embedding per patch. So every image must arrive at exactly the
# resolution the model was trained at: 224, 448 or 896 for the released checkpoints. A larger
# resolution means more image tokens, and the decoder attends over all of them.

# %%
for resolution in (224, 448, 896):
    patches = (resolution // 14) ** 2
    print(
        f"PaliGemma at {resolution:3d} px: {resolution // 14:2d} x {resolution // 14:2d} "
        f"= {patches:4d} image tokens per picture"
    )

# %% [markdown]
# PaliGemma resizes straight to a square, ignoring the aspect ratio: a wide photo gets
# squeezed. That is how it was trained, so fine-tuning does the same. Then the 8-bit values
# 0..255 become floats with 0 at -1 and 255 at +1: `x / 127.5 - 1`.
#
# Here is a wide picture (a scene cropped to 320 x 180) before and after.

# %%
wide = scenes.render_scene(scenes.sample_scene(10), 320).crop((0, 70, 320, 250))
model_input = preprocess_image(wide, RESOLUTION)
print(f"before: PIL {wide.mode} {wide.size[0]} x {wide.size[1]}")
print(
    f"after:  {model_input.dtype}{list(model_input.shape)}, "
    f"values {model_input.min():.3f} .. {model_input.max():.3f}"
)

figure, axes = plt.subplots(1, 4, figsize=(15, 3.2))
axes[0].imshow(wide)
axes[0].set_title(f"file: {wide.size[0]} x {wide.size[1]}")
axes[1].imshow((model_input + 1) / 2)  # back to [0, 1] for display
axes[1].set_title(f"model input: {RESOLUTION} x {RESOLUTION}, squeezed")
for ax in axes[:2]:
    ax.axis("off")
axes[2].hist(np.asarray(wide).ravel(), bins=64, color="tab:blue")
axes[2].set_title("file values (uint8)")
axes[3].hist(model_input.ravel(), bins=64, color="tab:orange")
axes[3].set_title("model input values (float32)")
for ax in axes[2:]:
    ax.set_yscale("log")
    ax.set_ylabel("pixels x channels")
plt.tight_layout()
plt.show()

# %% [markdown]
# The histogram has the same shape before and after: the scaling is linear, so nothing is lost
# but the resize's averaging.
#
# ### Why antialias?
#
# A plain bilinear resize looks at the 2 x 2 source pixels nearest each output pixel. When
# shrinking a lot, most source pixels are never looked at, and fine detail turns into false
# patterns (aliasing). `antialias=True` widens the filter to cover every source pixel in
# proportion to the shrink. Thin stripes show the difference.

# %%
grid = np.arange(448, dtype=np.float32)
stripes = 127.5 + 127.5 * np.sin(grid[None, :] * 2.1 + grid[:, None] * 0.7)  # period ~3 px
stripes = np.repeat(stripes[..., None], 3, axis=-1)
plain = tf.image.resize(stripes, (64, 64), method="bilinear", antialias=False).numpy()
smooth = tf.image.resize(stripes, (64, 64), method="bilinear", antialias=True).numpy()

figure, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for ax, image, title in zip(
    axes,
    (stripes, plain, smooth),
    ("448 x 448 stripes", "64 x 64, antialias=False", "64 x 64, antialias=True"),
    strict=True,
):
    ax.imshow(image.astype(np.uint8))
    ax.set_title(title)
    ax.axis("off")
plt.show()
print(
    f"spread of values after the resize: plain {plain.std():.1f}, antialiased "
    f"{smooth.std():.1f} (stripes finer than a pixel should average to grey)"
)

# %% [markdown]
# ### Exercise 5.1: resize and scale
#
# Write the core of image preprocessing. The input is already RGB, `[H, W, 3]`, in one of three
# dtypes; each has its own full scale (the value of white): 255 for `uint8`, 65535 for
# `uint16`, 1.0 for `float32`. Resize with TensorFlow exactly as PaliGemma was trained, then
# map 0 to -1 and full scale to +1. The antialias filter's weights sum to 1 only up to
# rounding, so clip the result to [-1, 1].


# %% tags=["exercise"]
def resize_and_scale(pixels, size):
    """Resizes RGB pixels to size x size and maps them to [-1, 1].

    Args:
      pixels: uint8, uint16 or float32[H, W, 3], RGB at its dtype's full scale
        (255, 65535 or 1.0).
      size: output side in pixels.
    Returns:
      float32[size, size, 3], values in [-1, 1]: 0 -> -1, full scale -> +1.
    """
    # Hint: resize as big_vision does (bilinear, antialiased) at the input's own scale, then map [0,
    # full scale] linearly onto [-1, 1]; the full scale comes from the dtype. An antialiased resize
    # can overshoot a little, so keep the result in range.
    raise NotImplementedError("Exercise 5.1")


# %% tags=["check"]
check("ex5_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 5.1</summary>
#
# ```python
# resized = tf.image.resize(pixels, (size, size), method="bilinear", antialias=True).numpy()
# half_scale = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[pixels.dtype.type] / 2
# return np.clip(resized / half_scale - 1, -1, 1).astype(np.float32)
# ```
#
# </details>

# %% [markdown]
# ## 2. Odd images: what goes wrong without care
#
# `resize_and_scale` needs RGB. Image files are often something else, and the naive recipe,
# `np.asarray(Image.open(path)) / 127.5 - 1`, fails quietly on each of these:
#
# | file | what `np.asarray` gives | naive result |
# |---|---|---|
# | greyscale ("L") | `[H, W]`, no channel axis | wrong rank: the model wants 3 channels |
# | palette ("P", GIF/PNG) | `[H, W]` of palette *indices* | a dark image of small numbers |
# | CMYK (print JPEG) | `[H, W, 4]` of ink amounts | inverted colours if you keep 3 |
# | 16-bit ("I;16", scans, medical) | values up to 65535 | values up to 513, far out of range |
# | phone photo with EXIF orientation | the pixels as the sensor stored them | lying on its side |
#
# `solutions.preprocess.preprocess_image` handles each case before calling `resize_and_scale`,
# with one policy for every picture the course reads (`upright_rgb`; files go through
# `open_image` first, which also refuses oversized ones from their header):
# `ImageOps.exif_transpose` turns the photo upright, Pillow converts palette, CMYK and grey to
# RGB, and 16-bit is scaled to 8 bits (65535 -> 255; Pillow alone would clip it at 255). Eight
# bits are what PaliGemma was trained on: the scaling moves a value by under half a step.


# %%
def sideways_jpeg(image):
    """The scene as a phone stores it: pixels on their side, an EXIF tag saying "turn me"."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: show it turned 90 degrees clockwise.
    buffer = io.BytesIO()
    image.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


scene_image = scenes.render_scene(scenes.sample_scene(22), 160)
grey = scene_image.convert("L")
odd_images = {
    "greyscale": grey,
    "palette": scene_image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
    "CMYK": scene_image.convert("CMYK"),
    "16-bit": Image.fromarray(np.asarray(grey).astype(np.uint16) * 257),
    "EXIF rotated": sideways_jpeg(scene_image),
}

figure, axes = plt.subplots(2, len(odd_images), figsize=(14, 6.6), layout="constrained")
for column, (name, image) in enumerate(odd_images.items()):
    naive = np.asarray(image) / 127.5 - 1
    careful = preprocess_image(image, RESOLUTION)
    shown = naive if naive.ndim == 2 else naive[..., :3]
    axes[0, column].imshow(np.clip((shown + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title(
        f"naive, {name} (mode {image.mode}):\n{list(naive.shape)}, "
        f"values {naive.min():.2f} .. {naive.max():.2f}",
        fontsize=9,
    )
    axes[1, column].imshow((careful + 1) / 2)
    axes[1, column].set_title(
        f"preprocess_image:\n{list(careful.shape)}, "
        f"values {careful.min():.2f} .. {careful.max():.2f}",
        fontsize=9,
    )
for ax in axes.ravel():
    ax.axis("off")
plt.show()

# %% [markdown]
# Two more rules `preprocess_image` keeps. Alpha (transparency) is dropped, not blended onto a
# background, as in the PaliGemma fine-tuning notebook. And an image with more than 50 million
# pixels is refused from its header alone, before its pixels are decoded, so a tiny file that
# claims to be enormous cannot exhaust memory.

# %%
try:
    preprocess_image(np.zeros((9000, 6000, 3), np.uint8))
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# ## 3. Text: PaliGemma's layout
#
# The course's tokenizer has PaliGemma's id layout: `<pad>` 0, `<eos>` 1, `<bos>` 2, and `"\n"`
# as one piece of its own, because it ends the prompt. (The real tokenizer has 257,152 pieces;
# the tiny one a few hundred plus the same 1,024 `<loc>` and 128 `<seg>` tokens.) Like Gemma's,
# it adds no space before the text, so `encode(prefix) + encode("\n")` equals
# `encode(prefix + "\n")`.

# %%
tokenizer = load_tokenizer(TINY_ASSETS / "tokenizer.model")
print(f"{tokenizer.get_piece_size()} pieces")
for name, special in (("PAD_ID", PAD_ID), ("EOS_ID", EOS_ID), ("BOS_ID", BOS_ID)):
    print(f"{name} = {special}: {tokenizer.id_to_piece(special)}")
for text in ("caption en", SEPARATOR, "a small red star"):
    ids = tokenizer.encode(text)
    print(f"{text!r:20} -> {ids}  {[tokenizer.id_to_piece(i) for i in ids]}")

# %% [markdown]
# One training example becomes one row of `seqlen` tokens:
#
# ```
#   [bos] caption en \n | a small red star [eos] | [pad] [pad] ...
#   ^---- prefix -----^   ^---- suffix -------^     ^- padding -^
# ```
#
# and three masks of the same length, each `int32[seqlen]`:
#
# - `mask_ar` ("autoregressive"): 0 on the prefix, 1 on the suffix. The prefix (and the image)
#   attend to each other in full; each suffix token sees only what comes before it. This is the
#   prefix-LM mask of lesson 3 (`make_attn_mask`).
# - `mask_loss`: 1 where the loss counts, the suffix and its `[eos]`. The model is not asked to
#   predict the prompt it was given. Learning `[eos]` teaches it when to stop.
# - `mask_input`: 1 on every real token, 0 on padding.
#
# Padding is 0 in all three. For decoding, the suffix is left out (`suffix=None`): the prompt
# alone, and the model writes the rest.
#
# ### Exercise 5.2: tokens and masks
#
# Build the row and its masks. `seqlen=None` keeps the natural length (no padding). When the
# row is longer than `seqlen`, cut its end: the caption loses its tail and its `[eos]`, so the
# model is not taught to stop mid-sentence. Such a cut must never be silent: warn with
# `TruncationWarning` and, when `stats` is given, count every caption with
# `stats.record(tokens_cut)` (0 when it fits). A prompt that alone does not fit is an error.


# %% tags=["exercise"]
def preprocess_tokens(prefix, suffix=None, seqlen=None, *, tokenizer=None, stats=None):
    """Tokenizes a prompt (and caption) into the model's text input and masks.

    Layout: [BOS_ID] + encode(prefix) + encode("\\n") with mask_ar 0 and mask_loss 0, then
    encode(suffix) + [EOS_ID] with mask_ar 1 and mask_loss 1, then padding (0 in tokens and
    in every mask) up to seqlen. mask_input is 1 on real tokens. With suffix=None only the
    prefix part is built (a prompt for decoding); suffix="" gives a lone EOS.

    Args:
      prefix: the task prompt, e.g. "caption en".
      suffix: the target text, or None at inference.
      seqlen: pad or cut to this length; None keeps the natural length.
      tokenizer: a sentencepiece.SentencePieceProcessor with PaliGemma's ids.
      stats: a TruncationStats; when given, call stats.record(tokens_cut) once per suffix.
    Returns:
      (tokens, mask_ar, mask_loss, mask_input), each int32[seqlen] (int32[L], L the natural
      length, when seqlen is None).
    Raises:
      ValueError: the prefix with BOS and "\\n" is longer than seqlen.
    Warns:
      TruncationWarning: the suffix was cut to fit seqlen.
    """
    # Hint: build the four sequences side by side as Python lists, one part at a time (the prompt,
    # then the target), so they stay aligned; only at the very end cut or pad every one of them to
    # seqlen.
    raise NotImplementedError("Exercise 5.2")


# %% tags=["check"]
check("ex5_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 5.2</summary>
#
# ```python
# values = values[:seqlen] + [0] * (seqlen - len(values))  # for each of the four
# tokens_cut = max(0, len(tokens) - seqlen)
# ```
#
# </details>

# %% [markdown]
# Each token and its three masks, as a table: the prefix (with `[bos]` and `"\n"`) is neither
# autoregressive nor scored; the suffix and `[eos]` are both; padding is nothing at all.


# %%
def show_token_masks(prefix, suffix, seqlen):
    """A heat map of mask_ar, mask_loss and mask_input under each token of one row."""
    tokens, *masks = preprocess_tokens(prefix, suffix, seqlen, tokenizer=tokenizer)
    pieces = [tokenizer.id_to_piece(int(t)).replace("\n", "\\n") for t in tokens]
    table = np.stack(masks)
    figure, ax = plt.subplots(figsize=(0.62 * seqlen, 2.1))
    ax.imshow(table, cmap="Greens", vmin=-0.3, vmax=1.3, aspect="auto")
    for (row, column), value in np.ndenumerate(table):
        ax.text(column, row, str(value), ha="center", va="center", fontsize=9)
    ax.set_yticks(range(3), ["mask_ar", "mask_loss", "mask_input"])
    ax.set_xticks(
        range(seqlen), [f"{p}\n{t}" for p, t in zip(pieces, tokens, strict=True)], fontsize=8
    )
    ax.set_title(f"prefix {prefix!r}, suffix {suffix!r}, seqlen {seqlen}")
    plt.show()
    return tokens, masks


row_tokens, (row_mask_ar, row_mask_loss, row_mask_input) = show_token_masks(
    "caption en", "a small red star", 14
)

# %% [markdown]
# `mask_ar` and `mask_input` together give the attention pattern of lesson 3. Each row is a
# token asking "whom may I look at?". The prefix block is full (bidirectional), the suffix is a
# lower triangle, and nobody looks at padding. (The image tokens, left out here, sit before
# the text with `mask_ar` 0: part of the prefix.)

# %%
attention = make_attn_mask(jnp.asarray(row_mask_input[None], bool), jnp.asarray(row_mask_ar[None]))
labels = [tokenizer.id_to_piece(int(t)).replace("\n", "\\n") for t in row_tokens]
figure, ax = plt.subplots(figsize=(5.5, 5.5))
ax.imshow(np.asarray(attention[0]), cmap="Blues")
ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
ax.set_yticks(range(len(labels)), labels, fontsize=8)
ax.set_xlabel("may attend to")
ax.set_title("prefix-LM attention from mask_ar and mask_input")
plt.show()

# %% [markdown]
# ## 4. Truncation: choose `seqlen` from the data
#
# Every row in a batch has the same length, `seqlen`, and the cost of the decoder grows with
# it. Too short, and captions lose their end (and their `[eos]`). So look at the data before
# choosing. The scenes' long captions are paragraphs; here is how many tokens 300 of them take.

# %%
captions = [scenes.long_caption(scenes.sample_scene(seed)) for seed in range(300)]
lengths = np.array(
    [len(preprocess_tokens("caption en", c, tokenizer=tokenizer)[0]) for c in captions]
)
figure, ax = plt.subplots(figsize=(7, 2.8))
ax.hist(lengths, bins=30, color="tab:gray")
for seqlen, colour in ((32, "tab:red"), (48, "tab:orange"), (64, "tab:green")):
    ax.axvline(seqlen, color=colour, label=f"seqlen {seqlen}: {np.mean(lengths > seqlen):.0%} cut")
ax.set_xlabel("tokens per example (prefix + caption)")
ax.set_ylabel("examples")
ax.legend()
plt.show()

# %% [markdown]
# A cut caption warns once per example, and a `TruncationStats` passed to every call sums it
# up. Warnings in a training loop are easy to miss; the summary line is for the log.

# %%
stats = TruncationStats()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", TruncationWarning)  # show each one, not only the first
    for caption in captions[:20]:
        preprocess_tokens("caption en", caption, 48, tokenizer=tokenizer, stats=stats)
print(f"{len(caught)} warnings, the first: {caught[0].message}" if caught else "no warnings")
print(stats)

# %% [markdown]
# ## 5. Back to text
#
# The decoder (lesson 8) writes one token at a time after the prompt until the row says
# `[eos]` or runs out of steps, and returns rows of a fixed length: the caption, `[eos]`, then
# padding (decoders that sample on keep other tokens after the `[eos]` instead). Reading a row
# back: stop at the first `[eos]`, drop padding, detokenize. When you hold a whole sequence
# (prompt + answer), drop the prompt first: its length is the number of real tokens with
# `mask_ar` 0.
#
# ### Exercise 5.3: detokenize
#
# Turn one row of generated tokens into text: everything before the first `EOS_ID`, without
# `PAD_ID`, through `tokenizer.decode`. A row without `EOS_ID` (the decoder ran out of
# steps) is read to its end.


# %% tags=["exercise"]
def postprocess_tokens(tokens, *, tokenizer=None):
    """Turns generated tokens back into text.

    Args:
      tokens: int[T], one row of a decode's output (numpy, jax, or a list).
      tokenizer: a sentencepiece.SentencePieceProcessor with PaliGemma's ids.
    Returns:
      str: the text before the first EOS, padding left out.
    """
    # Hint: whatever array comes in, turn it into plain Python ints; keep what comes before the
    # first EOS (there may be none), leave the padding out, and let the tokenizer make the text.
    raise NotImplementedError("Exercise 5.3")


# %% tags=["check"]
check("ex5_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 5.3</summary>
#
# ```python
# ids = np.asarray(tokens).tolist()
# if EOS_ID in ids:
#     ids = ids[: ids.index(EOS_ID)]
# return tokenizer.decode([i for i in ids if i != PAD_ID])
# ```
#
# </details>

# %% [markdown]
# A decoder's row for one picture, and the whole training row of section 3 with its prompt
# dropped:

# %%
generated = np.array(
    [*tokenizer.encode("a small red star"), EOS_ID, *tokenizer.encode("and a"), PAD_ID, PAD_ID]
)
print("decoder row:", generated.tolist())
print("caption:    ", repr(postprocess_tokens(generated, tokenizer=tokenizer)))

prompt_length = int(np.sum((row_mask_ar == 0) & (row_mask_input == 1)))
print("whole row:  ", repr(postprocess_tokens(row_tokens, tokenizer=tokenizer)))
print("prompt off: ", repr(postprocess_tokens(row_tokens[prompt_length:], tokenizer=tokenizer)))

# %% [markdown]
# ## What you built
#
# - `resize_and_scale`: any RGB array to `float32[size, size, 3]` in [-1, 1], with the same
#   bilinear, antialiased resize PaliGemma was trained on.
# - An eye for odd images: palette, CMYK, greyscale, 16-bit and EXIF-rotated files each need a
#   conversion before the pixels mean colours (`preprocess_image` does them all).
# - `preprocess_tokens`: `[bos] prefix "\n" suffix [eos] [pad]...` with `mask_ar` (who attends
#   to whom), `mask_loss` (what is learned) and `mask_input` (what is real), plus a loud,
#   counted truncation.
# - `postprocess_tokens`: the model's tokens back to a caption.
#
# Lesson 6 reads a dataset from disk and feeds these functions batch after batch.
#
# ## Go further
#
# 1. Squeezing a wide photo distorts circles into ellipses. What would padding to a square
#    (letterboxing) change for a model trained on squeezed images? When could it be worth it?
# 2. Why is the `[eos]` of the suffix inside `mask_loss`, but the `[bos]` is not? What would a
#    model trained without the `[eos]` in its loss do at decoding time?
# 3. PaliGemma also detects objects by writing `<loc0123>` tokens. Encode `"<loc0012><loc0500>
#    star"`: how many tokens is it, and why does that matter for `seqlen`?
# 4. An RGBA sticker with a transparent background comes out with whatever colour its
#    transparent pixels store. Write a version that composites onto white first, and compare.
