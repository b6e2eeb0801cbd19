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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from solutions.vocabulary import BOS_ID, EOS_ID, PAD_ID, SEPARATOR, check_layout

# A 48-megapixel phone photo (8064 x 6048) fits; anything larger is refused
# before its pixels are decoded, so a tiny malicious PNG that claims to be
# 100,000 x 100,000 pixels cannot exhaust memory.
MAX_IMAGE_PIXELS = 50_000_000


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

    - `PIL.Image.Image` in any common mode, read by `upright_rgb`: palette
      ("P", "PA"), "CMYK", "1", "L", "LA", "YCbCr", "LAB", "HSV" are converted
      to RGB by Pillow; 16-bit greyscale ("I;16*", and "I" with values in
      0..65535) is scaled to 8 bits, 65535 being white; "F" holds floats in
      0..1. The EXIF orientation tag is applied (`ImageOps.exif_transpose`), so
      a phone photo taken upright is seen upright.
    - A path (`str` or `os.PathLike`), `bytes`, or a binary file object (e.g.
      an uploaded file): read by `open_image` (animations give their first frame).
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
        return np.asarray(upright_rgb(image, "image", max_pixels=max_pixels))
    if hasattr(image, "__array__"):  # numpy, and jax or TF arrays too.
        pixels = np.asarray(image)
        if pixels.ndim in (2, 3):  # Other shapes get a clear error from _array_to_rgb.
            _check_pixel_count(pixels.shape[:2], max_pixels, "array")
        return _array_to_rgb(pixels)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(
        image, "read"
    ):
        return np.asarray(open_image(image, max_pixels=max_pixels))
    raise TypeError(
        f"preprocess_image cannot read an object of type {type(image).__name__}: pass a PIL image, "
        "a numpy array, a path, bytes, or a binary file object"
    )


def open_image(
    file: Any,
    source: str | None = None,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Reads an image file into an upright 8-bit RGB image, refusing anything unsafe.

    The one reader of image files: `preprocess_image`, the data pipeline
    (`solutions.data.load_image`) and the app's uploads all build on it. The
    pixel count is checked from the header, before any pixel is decoded, so a
    small file that claims to be enormous costs nothing; then the pixels are
    decoded, the EXIF orientation applied and the mode converted by
    `upright_rgb` (16-bit greyscale scaled to 8 bits, alpha dropped). An
    animation gives its first frame.

    Args:
      file: a path (`str` or `os.PathLike`), `bytes`, or a binary file object.
      source: the name error messages start with (default: the path, or "N bytes").
      max_pixels: images with more pixels (width * height) are refused.
      formats: Pillow format names to accept, e.g. ("JPEG", "PNG"); default: any
        Pillow reads.
    Returns:
      A PIL image of mode "RGB", the file's own size (upright).
    Raises:
      FileNotFoundError, PermissionError: a path the file system refuses.
      ValueError: its message starts with `source` and says what to do: empty, not an
        image (of `formats`), too many pixels, or damaged pixel data.
    """
    if source is None:
        source = _source_name(file)
    if isinstance(file, (bytes, bytearray, memoryview)):
        if not len(file):
            raise ValueError(f"{source} is empty (0 bytes); {_kinds_text(formats)} is needed.")
        file = io.BytesIO(file)
    with warnings.catch_warnings():
        # `max_pixels` is checked below, lower than Pillow's guard: its warning adds nothing.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        header = _open_header(file, source, formats)
        with header:
            return upright_rgb(header, source, max_pixels=max_pixels)


def _source_name(file: Any) -> str:
    if isinstance(file, (str, os.PathLike)):
        return str(file)
    if isinstance(file, (bytes, bytearray, memoryview)):
        return f"{len(file)} bytes"
    return str(getattr(file, "name", "file object"))


def _kinds_text(formats: Sequence[str] | None) -> str:
    """("JPEG", "PNG", "WEBP") -> "a JPEG, PNG or WEBP image"; None -> "an image"."""
    if not formats:
        return "an image"
    names = list(formats)
    return "a " + (", ".join(names[:-1]) + " or " if len(names) > 1 else "") + names[-1] + " image"


def _open_header(file: Any, source: str, formats: Sequence[str] | None) -> Image.Image:
    """Reads only the header: format, size and mode are known, pixels are not decoded yet."""
    try:
        return Image.open(file, formats=formats)
    except Image.DecompressionBombError:  # Pillow's own guard, at twice Image.MAX_IMAGE_PIXELS
        raise ValueError(
            f"{source} claims more pixels than Pillow will decode; downscale it first."
        ) from None
    except OSError as error:
        if error.errno is not None:
            raise  # The file system's own error (missing file, no permission) says it best.
    except (ValueError, EOFError, SyntaxError):
        pass  # a header Pillow began to read and could not finish: damaged
    raise ValueError(
        f"{source} is not {_kinds_text(formats)} Pillow can read, or its header is damaged; "
        "convert it to PNG or JPEG and use that file."
    )


def upright_rgb(image: Image.Image, source: str, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """An opened PIL image as the model's pictures are read: the pixel count checked, the
    EXIF orientation applied, the mode converted to 8-bit "RGB".

    One policy for every mode: palette, CMYK, "1", "L", "LA" and the rest go through
    Pillow's conversion (a transparent palette through "RGBA", so its transparent colour is
    dropped like any alpha); 16-bit greyscale ("I;16*", and "I" with values in 0..65535) is
    scaled by 1/257, not clipped at 255 as Pillow would; "F" holds floats in 0..1. Eight bits
    are what PaliGemma was trained on: the scaling moves a value by under half an 8-bit step.

    Raises:
      ValueError: starting with `source`: too many pixels, damaged pixel data, or values
        out of range for the mode.
    """
    width, height = image.size
    _check_pixel_count((height, width), max_pixels, source)
    try:
        upright = ImageOps.exif_transpose(image)  # Decodes the pixels.
    except (OSError, ValueError, EOFError, SyntaxError) as error:  # a good header, a bad body
        raise ValueError(
            f"{source}: the image data is damaged ({error}); export or save it again."
        ) from None
    if upright.mode in _WIDE_INT_MODES:
        grey = _wide_int_to_uint16(np.asarray(upright), source)
        return Image.fromarray(np.round(grey / 257).astype(np.uint8)).convert("RGB")
    if upright.mode == "F":
        floats = _normalize_dtype(np.asarray(upright))
        return Image.fromarray(np.round(floats * 255).astype(np.uint8)).convert("RGB")
    # Going through RGBA for transparent palettes avoids Pillow's warning about
    # them; the alpha channel is dropped right after, like any other.
    target = "RGBA" if upright.has_transparency_data else "RGB"
    try:
        return upright.convert(target).convert("RGB")
    except ValueError as error:
        raise ValueError(f"{source}: Pillow mode {upright.mode!r} has no RGB conversion") from error


def _check_pixel_count(height_width: tuple[int, int], max_pixels: int, source: str) -> None:
    height, width = height_width
    if height * width > max_pixels:
        raise ValueError(
            f"{source} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_pixels); downscale it first (a few megapixels is plenty: "
            "PaliGemma sees at most 896x896)."
        )


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
    check_layout(tokenizer, caller)
    return tokenizer
