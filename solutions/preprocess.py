"""Preprocessing: images and text into the arrays PaliGemma reads (lesson 5).

    image (PIL, array, path, bytes) ──► RGB ──► tf.image.resize bilinear+antialias
                                     ──► float32[size, size, 3] in [-1, 1]

    "caption en", "a red star" ──► [bos] caption en \\n | a red star [eos] [pad] ...
                       mask_ar       0     0     0   0  |  1   1    1    1     0
                       mask_loss     0     0     0   0  |  1   1    1    1     0
                       mask_input    1     1     1   1  |  1   1    1    1     0

The prefix (task prompt) and the "\\n" separator attend to each other and to
the image fully (`mask_ar` 0); the suffix (the caption the model learns to
write) is causal (`mask_ar` 1) and is the only part scored by the loss.

Both halves follow the big_vision PaliGemma fine-tuning notebook exactly where
it is well defined, and are careful where it is not: palette, CMYK, 16-bit,
1-bit and EXIF-rotated images, oversized files, captions longer than `seqlen`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 48-megapixel phone photo (8064 x 6048) fits; anything larger is refused
# before its pixels are decoded, so a tiny malicious PNG that claims to be
# 100,000 x 100,000 pixels cannot exhaust memory.
MAX_IMAGE_PIXELS = 50_000_000

PAD_ID, EOS_ID, BOS_ID = 0, 1, 2  # PaliGemma's tokenizer ids.
SEPARATOR = "\n"  # Ends the prefix; the suffix starts after it.

# Pillow's modes that hold one 16-bit (or wider) integer per pixel. 16-bit
# greyscale PNG and TIFF files open in one of these.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


# --------------------------------------------------------------------------- images


def preprocess_image(
    image: Any, size: int = 224, *, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Turns any image into the model's input: float32[size, size, 3] in [-1, 1].

    Accepted inputs and how their values are read:

    - `PIL.Image.Image` in any common mode. Palette ("P", "PA"), "CMYK", "1",
      "L", "LA", "YCbCr", "LAB", "HSV" are converted to RGB by Pillow;
      16-bit greyscale ("I;16*", and "I" with values in 0..65535) keeps its
      full precision, 65535 being white; "F" is read like a float array.
      The EXIF orientation tag is applied (`ImageOps.exif_transpose`), so a
      phone photo taken upright is seen upright. Animated images give their
      first frame.
    - A path (`str` or `os.PathLike`), `bytes`, or a binary file object (e.g.
      an uploaded file): opened with Pillow as above.
    - `np.ndarray` of shape [H, W], [H, W, 1] (greyscale), [H, W, 2]
      (greyscale + alpha), [H, W, 3] (RGB) or [H, W, 4] (RGBA), with dtype
      uint8 (0..255), uint16 (0..65535), bool (True is white) or float
      (0.0..1.0; values outside raise, which catches the usual slip of a
      float image in 0..255). Jax and TF arrays are read like numpy's.

    Alpha is dropped, not composited, as in the PaliGemma notebook: a
    transparent pixel shows whatever colour it stores. ICC colour profiles are
    ignored.

    The resize is `tf.image.resize(..., method="bilinear", antialias=True)`
    straight to size x size, ignoring the aspect ratio, exactly as PaliGemma
    was trained. Then 0 maps to -1 and full scale (255 for 8-bit) to 1.

    Args:
      image: the image, as above.
      size: output side in pixels (224, 448 or 896 for the released models).
      max_pixels: images with more pixels raise `ValueError` before decoding.
    Returns:
      float32[size, size, 3], values in [-1, 1].
    Raises:
      ValueError: too many pixels, not an image, or values/shape out of range.
      TypeError: an input type or array dtype this function does not read.
    """
    return resize_and_scale(_to_rgb_array(image, max_pixels), size)


def resize_and_scale(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resizes RGB pixels to size x size and maps them to [-1, 1]: the core of `preprocess_image`.

    The resize is `tf.image.resize(..., method="bilinear", antialias=True)`,
    straight to a square (the aspect ratio is not kept). Then 0 maps to -1 and
    the dtype's full scale to 1: 255 for uint8, 65535 for uint16, 1.0 for
    float32.

    Args:
      pixels: uint8, uint16 or float32[H, W, 3], RGB at its dtype's full scale.
      size: output side in pixels.
    Returns:
      float32[size, size, 3], values in [-1, 1].
    Raises:
      TypeError: another dtype (convert it first, or use `preprocess_image`).
    """
    if pixels.dtype not in _FULL_SCALE:
        raise TypeError(
            f"resize_and_scale reads uint8, uint16 or float32 pixels, got {pixels.dtype}; "
            "preprocess_image converts the other kinds"
        )
    resized = (
        _tensorflow().image.resize(pixels, (size, size), method="bilinear", antialias=True).numpy()
    )
    half_scale = _FULL_SCALE[pixels.dtype] / 2
    # The antialias filter's weights sum to 1 only up to rounding, so white
    # can land a hair above 1; clip keeps the promised range.
    return np.clip(resized / half_scale - 1.0, -1.0, 1.0).astype(np.float32)


@functools.cache
def _tensorflow():
    """Imports TensorFlow on first use (it takes seconds) and keeps it off the
    GPUs, which belong to JAX."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TF's devices were set up before this call; keep that choice.
    return tf


def _to_rgb_array(image: Any, max_pixels: int) -> np.ndarray:
    """Any supported input -> uint8, uint16 or float32[H, W, 3] in its dtype's full scale."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, max_pixels, "image")
    if hasattr(image, "__array__"):  # numpy, and jax or TF arrays too.
        pixels = np.asarray(image)
        if pixels.ndim in (2, 3):  # Other shapes get a clear error from _array_to_rgb.
            _check_pixel_count(pixels.shape[:2], max_pixels, "array")
        return _array_to_rgb(pixels)
    if isinstance(image, (str, os.PathLike)):
        with _open_image(image, str(image)) as opened:
            return _pil_to_rgb(opened, max_pixels, str(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        source = f"{len(image)} bytes"
        with _open_image(io.BytesIO(image), source) as opened:
            return _pil_to_rgb(opened, max_pixels, source)
    if hasattr(image, "read"):
        source = str(getattr(image, "name", "file object"))
        return _pil_to_rgb(_open_image(image, source), max_pixels, source)
    raise TypeError(
        f"preprocess_image cannot read an object of type {type(image).__name__}: pass a PIL image, "
        "a numpy array, a path, bytes, or a binary file object"
    )


def _open_image(file: Any, source: str) -> Image.Image:
    """Reads only the header: size and mode are known, pixels are not decoded yet."""
    try:
        return Image.open(file)
    except Image.DecompressionBombError as error:
        # Pillow's own guard, at twice Image.MAX_IMAGE_PIXELS, fired first.
        raise ValueError(f"{source}: image too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{source} is not an image Pillow can read (PNG, JPEG, GIF, WebP, TIFF, ...); "
            "check the file"
        ) from None
    except OSError as error:
        if error.errno is not None:
            raise  # The file system's own error (missing file, no permission) says it best.
        raise ValueError(f"{source}: the image data is damaged ({error})") from None


def _check_pixel_count(height_width: tuple[int, int], max_pixels: int, source: str) -> None:
    height, width = height_width
    if height * width > max_pixels:
        raise ValueError(
            f"{source}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (max_pixels); downscale the image first or raise max_pixels"
        )


def _pil_to_rgb(image: Image.Image, max_pixels: int, source: str) -> np.ndarray:
    width, height = image.size
    _check_pixel_count((height, width), max_pixels, source)
    try:
        upright = ImageOps.exif_transpose(image)  # Decodes the pixels.
    except OSError as error:  # A valid header over a truncated or corrupt body.
        raise ValueError(f"{source}: the image data is damaged ({error})") from None
    if upright.mode in _WIDE_INT_MODES:
        return _array_to_rgb(_wide_int_to_uint16(np.asarray(upright), source))
    if upright.mode == "F":
        return _array_to_rgb(np.asarray(upright))
    # Going through RGBA for transparent palettes avoids Pillow's warning about
    # them; the alpha channel is dropped right after, like any other.
    target = "RGBA" if upright.has_transparency_data else "RGB"
    try:
        converted = upright.convert(target)
    except ValueError as error:
        raise ValueError(f"{source}: Pillow mode {upright.mode!r} has no RGB conversion") from error
    return _array_to_rgb(np.asarray(converted))


def _wide_int_to_uint16(values: np.ndarray, source: str) -> np.ndarray:
    """Pillow's "I" mode holds 32-bit ints; in practice it is 16-bit greyscale."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"{source}: 32-bit integer image with values {low}..{high}; only 0..65535 "
            "(16-bit) is understood. Scale it to uint8 or uint16 first"
        )
    return values.astype(np.uint16)


def _array_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|2|3|4] of a supported dtype -> [H, W, 3] uint8, uint16 or float32."""
    pixels = _normalize_dtype(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"image array has shape {pixels.shape}; expected [H, W] or [H, W, C] with C "
            "in 1 (grey), 2 (grey+alpha), 3 (RGB), 4 (RGBA)"
        )
    if pixels.shape[-1] in (1, 2):
        return np.repeat(pixels[..., :1], 3, axis=-1)  # Grey to RGB, alpha dropped.
    return pixels[..., :3]  # Alpha dropped.


def _normalize_dtype(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * np.uint8(255)
    native = pixels.dtype.newbyteorder("=")  # 16-bit TIFFs can be big-endian.
    if native in (np.uint8, np.uint16):
        return pixels.astype(native, copy=False)
    if np.issubdtype(pixels.dtype, np.floating):
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if not (0.0 <= low and high <= 1.0):  # Also catches NaN.
            raise ValueError(
                f"float image values span {low}..{high}; float images must be in [0, 1]. "
                "Divide 0..255 data by 255, or pass it as uint8"
            )
        return pixels.astype(np.float32)
    raise TypeError(
        f"image array has dtype {pixels.dtype}; use uint8 (0..255), uint16 (0..65535), "
        "bool, or float (0..1), e.g. `array.astype(np.uint8)`"
    )


# --------------------------------------------------------------------------- tokens


class TruncationWarning(UserWarning):
    """A caption did not fit `seqlen` and lost its end."""


@dataclasses.dataclass
class TruncationStats:
    """Counts captions cut short by `seqlen`, so a data pipeline can report it.

    Pass one instance as `stats=` to every `preprocess_tokens` call, then
    `print(stats)` -> "12 of 90 captions truncated (340 tokens cut)".

    Attributes:
      captions: captions (suffixes) seen.
      truncated: how many of them were cut.
      tokens_cut: tokens dropped over all captions (EOS included).
    """

    captions: int = 0
    truncated: int = 0
    tokens_cut: int = 0

    def record(self, tokens_cut: int) -> None:
        """Counts one caption that lost `tokens_cut` tokens (0 if it fit)."""
        self.captions += 1
        self.truncated += tokens_cut > 0
        self.tokens_cut += tokens_cut

    def __str__(self) -> str:
        return (
            f"{self.truncated} of {self.captions} captions truncated ({self.tokens_cut} tokens cut)"
        )


def preprocess_tokens(
    prefix: str,
    suffix: str | None = None,
    seqlen: int | None = None,
    *,
    tokenizer=None,
    stats: TruncationStats | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tokenizes a prompt (and caption) into the model's text input and masks.

    Layout: `[bos] + encode(prefix) + encode("\\n")` with mask_ar 0 and
    mask_loss 0, then `encode(suffix) + [eos]` with mask_ar 1 and mask_loss 1,
    then padding (all zeros) up to `seqlen`. `mask_input` is 1 on real tokens.
    With `suffix=None` (a prompt for decoding) only the prefix part is built;
    `suffix=""` gives a lone EOS (an example that teaches to stop at once).

    A sequence longer than `seqlen` loses its end, which cuts the caption and
    its EOS (so the model is not taught to stop mid-sentence). That is never
    silent: it warns with a `TruncationWarning` and counts in `stats`.

    Args:
      prefix: the task prompt, e.g. "caption en".
      suffix: the target text, or None at inference.
      seqlen: pad or cut to this length; None keeps the natural length.
      tokenizer: a `sentencepiece.SentencePieceProcessor` with PaliGemma's ids
        (pad 0, eos 1, bos 2).
      stats: where to count captions and truncations, if given.
    Returns:
      (tokens, mask_ar, mask_loss, mask_input), each int32[seqlen] (or
      int32[L] with L the natural length when seqlen is None).
    Raises:
      ValueError: the prefix alone does not fit in seqlen, or the tokenizer's
        special ids are not PaliGemma's.
      TypeError: no tokenizer given.
    """
    tokenizer = _check_tokenizer(tokenizer, "preprocess_tokens")
    prompt = [BOS_ID, *tokenizer.encode(prefix), *tokenizer.encode(SEPARATOR)]
    target = [] if suffix is None else [*tokenizer.encode(suffix), EOS_ID]
    if seqlen is not None and len(prompt) > seqlen:
        raise ValueError(
            f"prefix {prefix!r} takes {len(prompt)} tokens (with BOS and the '\\n' separator) "
            f"but seqlen is {seqlen}; raise seqlen or shorten the prefix"
        )
    tokens = prompt + target
    mask_ar = [0] * len(prompt) + [1] * len(target)
    mask_loss = mask_ar  # The same pattern: the suffix is what is learned.
    length = len(tokens) if seqlen is None else seqlen
    tokens_cut = max(0, len(tokens) - length)
    if suffix is not None:
        _report_truncation(tokens_cut, len(target), length, stats)

    def fit(values: list[int]) -> np.ndarray:
        fitted = values[:length] + [0] * (length - len(values))
        return np.asarray(fitted, np.int32)

    return fit(tokens), fit(mask_ar), fit(mask_loss), fit([1] * len(tokens))


def _report_truncation(
    tokens_cut: int, suffix_len: int, seqlen: int, stats: TruncationStats | None
) -> None:
    if stats is not None:
        stats.record(tokens_cut)
    if tokens_cut:
        warnings.warn(
            f"caption truncated: {tokens_cut} of its {suffix_len} tokens (EOS included) do "
            f"not fit seqlen={seqlen}; raise seqlen to keep captions whole",
            TruncationWarning,
            stacklevel=3,
        )


def postprocess_tokens(tokens, *, tokenizer=None) -> str:
    """Turns generated tokens back into text.

    Cuts at the first EOS (the model's "done"), drops padding, detokenizes.

    Args:
      tokens: int[T], e.g. one row of a decode's output (numpy or jax).
      tokenizer: as in `preprocess_tokens`.
    Returns:
      The text.
    """
    tokenizer = _check_tokenizer(tokenizer, "postprocess_tokens")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(
            f"postprocess_tokens takes one sequence int[T], got shape {tokens.shape}; "
            "call it once per row"
        )
    ids = tokens.tolist()
    if EOS_ID in ids:
        ids = ids[: ids.index(EOS_ID)]
    return tokenizer.decode([i for i in ids if i != PAD_ID])


def preprocess_batch(
    examples: Iterable[Mapping[str, Any]],
    *,
    seqlen: int,
    tokenizer=None,
    size: int = 224,
    stats: TruncationStats | None = None,
) -> dict[str, np.ndarray]:
    """Preprocesses examples in longcap100's layout into one batch.

    Args:
      examples: dicts with "image" (anything `preprocess_image` takes),
        "prefix", and optionally "suffix".
      seqlen: text length of the batch.
      tokenizer, stats: as in `preprocess_tokens`.
      size: image side.
    Returns:
      The notebook's batch dict: "image" float32[B, size, size, 3], and "text",
      "mask_ar", "mask_loss", "mask_input", each int32[B, seqlen].
    """
    names = ("image", "text", "mask_ar", "mask_loss", "mask_input")
    columns = {name: [] for name in names}
    for example in examples:
        image = preprocess_image(example["image"], size)
        text = preprocess_tokens(
            example["prefix"], example.get("suffix"), seqlen, tokenizer=tokenizer, stats=stats
        )
        for name, value in zip(names, (image, *text), strict=True):
            columns[name].append(value)
    if not columns["image"]:
        raise ValueError("preprocess_batch got no examples")
    return {name: np.stack(values) for name, values in columns.items()}


def _check_tokenizer(tokenizer, caller: str):
    if tokenizer is None:
        raise TypeError(
            f"{caller} needs tokenizer=: a sentencepiece.SentencePieceProcessor with "
            "PaliGemma's ids, e.g. SentencePieceProcessor(model_file='paligemma_tokenizer.model')"
        )
    ids = (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.bos_id())
    if ids != (PAD_ID, EOS_ID, BOS_ID):
        raise ValueError(
            f"{caller}: tokenizer has pad/eos/bos ids {ids}, PaliGemma needs "
            f"{(PAD_ID, EOS_ID, BOS_ID)}; train or load one with that layout"
        )
    return tokenizer
