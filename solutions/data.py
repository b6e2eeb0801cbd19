"""Training and validation data in longcap100's layout (lesson 6).

A dataset is a folder with one jsonl file per split and the images beside it:

    longcap100/
      data_train90.jsonl   {"image": "images/0001.jpg", "prefix": "caption en", "suffix": "..."}
      data_val10.jsonl
      images/...

`read_jsonl` checks every line up front (`parse_line`) and says which file
and line is wrong; images are opened when an example is used.
`train_examples` shuffles and repeats forever (`shuffled_epochs`),
`validation_examples` goes through once in order, and `batches` stacks
examples into the notebook's batch dicts.

Bad input never passes silently: with `on_error="raise"` (the default) the
first bad line stops with a `DataError` naming it; with `on_error="skip"` bad
lines are left out and counted in `DataStats`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from solutions.preprocess import (
    MAX_IMAGE_PIXELS,
    TruncationStats,
    open_image,
    preprocess_image,
    preprocess_tokens,
)

REQUIRED_FIELDS = ("image", "prefix", "suffix")


class DataError(ValueError):
    """A dataset file or image is unusable; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One line of a jsonl file.

    Attributes:
      image_path: absolute path of the image, inside the dataset folder.
      prefix: the task prompt, e.g. "caption en".
      suffix: the target text.
      source: "file.jsonl:line" for error messages.
      extra: any other fields of the line (kept, not used by training).
    """

    image_path: pathlib.Path
    prefix: str
    suffix: str
    source: str
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataStats:
    """What was left out with `on_error="skip"`, by reason."""

    read: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.read} examples read, none skipped"
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"{self.read} examples read, {sum(self.skipped.values())} skipped ({reasons})"


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def parse_line(text: str, source: str, root: pathlib.Path) -> Example:
    """Checks one jsonl line and turns it into an `Example`.

    The line must be a JSON object whose "image", "prefix" and "suffix" are
    strings, and the image path (relative to `root`) must stay inside `root`.
    Other fields are kept in `Example.extra`.

    Args:
      text: the line, e.g. '{"image": "images/a.jpg", "prefix": "caption en", "suffix": "..."}'.
      source: where the line comes from, "file.jsonl:LINE", put in front of every error.
      root: the dataset folder, absolute and resolved.
    Returns:
      The Example, with `image_path` absolute.
    Raises:
      DataError: "<source>: <what is wrong>" for bytes that are not UTF-8,
        invalid JSON, a non-object, a missing or non-string field, or an image
        path outside `root`.
    """
    _check_utf8(text, source)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{source}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{source}: expected a JSON object with {REQUIRED_FIELDS}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise DataError(
            f"{source}: missing field(s) {missing}; each line needs "
            f'{{"image": "images/x.jpg", "prefix": "caption en", "suffix": "..."}}'
        )
    for field in REQUIRED_FIELDS:
        if not isinstance(record[field], str):
            raise DataError(f"{source}: field {field!r} must be a string")
    image_path = (root / record["image"]).resolve()
    if not image_path.is_relative_to(root):
        raise DataError(
            f"{source}: image path {record['image']!r} leaves the dataset folder {root}; "
            "use a path relative to that folder"
        )
    extra = {k: v for k, v in record.items() if k not in REQUIRED_FIELDS}
    return Example(image_path, record["prefix"], record["suffix"], source, extra)


def _check_utf8(text: str, source: str) -> None:
    """Refuses a line that `read_jsonl` decoded with "surrogateescape": each byte that is
    not UTF-8 became a lone surrogate U+DC80..U+DCFF, which no real text holds."""
    for column, char in enumerate(text, start=1):
        if "\udc80" <= char <= "\udcff":
            raise DataError(
                f"{source}: not UTF-8 text (byte 0x{ord(char) - 0xDC00:02x} at column {column}); "
                "save the file as UTF-8"
            )


def read_jsonl(
    path: str | pathlib.Path,
    *,
    root: str | pathlib.Path | None = None,
    on_error: str = "raise",
    stats: DataStats | None = None,
) -> list[Example]:
    """Reads and checks a longcap100-style jsonl file.

    Args:
      path: the jsonl file.
      root: folder the image paths are relative to; default the file's folder.
      on_error: "raise" to stop at the first bad line, "skip" to leave bad
        lines out (counted in `stats` and in a warning).
      stats: where to count, if given.
    Returns:
      The examples, in file order. Blank lines are ignored, and so is a UTF-8
      byte order mark at the start (some Windows editors write one).
    """
    _check_on_error(on_error)
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset file")
    root = pathlib.Path(root or path.parent).resolve()
    stats = stats if stats is not None else DataStats()
    examples = []
    # A byte that is not UTF-8 must not stop the whole file with a UnicodeDecodeError that
    # names no line: "surrogateescape" keeps it, and parse_line reports it with its line.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                examples.append(parse_line(text, f"{path.name}:{number}", root))
            except DataError as err:
                if on_error == "raise":
                    raise
                stats.skipped[_reason(err)] += 1
    stats.read += len(examples)
    if stats.skipped and on_error == "skip":
        warnings.warn(f"{path.name}: {stats}", stacklevel=2)
    if not examples:
        raise DataError(f"{path}: no usable examples")
    return examples


def _reason(err: DataError) -> str:
    """A short category for counting: the message without its location."""
    message = str(err).split(": ", 1)[-1]
    return message.split(" (")[0].split(";")[0]


def load_image(example: Example, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Opens an example's image as upright 8-bit RGB (`solutions.preprocess.open_image`),
    or raises DataError naming its line.

    An image of more than `max_pixels` pixels is refused from its header, before
    its pixels are decoded (see `solutions.preprocess.MAX_IMAGE_PIXELS`).
    """
    where = f"{example.source}: image {example.image_path}"
    try:
        return open_image(example.image_path, where, max_pixels=max_pixels)
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except ValueError as err:  # its message starts with `where` and says what to do
        raise DataError(str(err)) from None
    except OSError as err:  # no permission, a folder, ...
        raise DataError(f"{where} is not a readable image ({err})") from None


def _model_inputs(
    example, *, tokenizer, seqlen, image_size, with_suffix, truncation, lowercase
) -> dict[str, np.ndarray]:
    """The example's image and text as model inputs; a DataError naming its line if either
    cannot be made (an unreadable image, a prefix longer than `seqlen`, ...)."""
    image = load_image(example)
    suffix = example.suffix.lower() if lowercase else example.suffix
    try:
        tokens, mask_ar, mask_loss, mask_input = preprocess_tokens(
            example.prefix,
            suffix if with_suffix else None,
            seqlen,
            tokenizer=tokenizer,
            stats=truncation,
        )
        pixels = preprocess_image(image, image_size)
    except ValueError as err:
        raise DataError(f"{example.source}: {err}") from None
    return {
        "image": pixels,
        "text": tokens,
        "mask_ar": mask_ar,
        "mask_loss": mask_loss,
        "mask_input": mask_input,
    }


def _usable(examples, on_error: str, stats: DataStats, **inputs_options) -> Iterator[tuple]:
    """Yields (example, its `_model_inputs`), skipping (and counting) unusable ones if asked."""
    for example in examples:
        try:
            inputs = _model_inputs(example, **inputs_options)
        except DataError as err:
            if on_error == "raise":
                raise
            stats.skipped[_reason(err)] += 1
            continue
        yield example, inputs


def shuffled_epochs(num_examples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The order of training: a fresh shuffle of every example, epoch after epoch, forever.

    One `np.random.default_rng(seed)` draws `permutation(num_examples)` per
    epoch, so the same seed gives the same orders (a resumable, comparable
    run) while each epoch differs from the one before.

    Args:
      num_examples: N, the size of the split.
      seed: the shuffle's seed.
    Yields:
      int64[N], a permutation of 0..N-1, once per epoch.
    """
    rng = np.random.default_rng(seed)
    while True:
        yield rng.permutation(num_examples)


def train_examples(
    examples: list[Example],
    *,
    tokenizer,
    seqlen: int,
    image_size: int = 224,
    seed: int = 0,
    lowercase: bool = True,
    on_error: str = "raise",
    stats: DataStats | None = None,
    truncation: TruncationStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training examples: shuffled anew each epoch, then repeated.

    Each yielded dict holds "image" float32[S, S, 3], and "text", "mask_ar",
    "mask_loss", "mask_input" int32[seqlen] (prefix + suffix, see
    `preprocess_tokens`). The suffix is lowercased as in the notebook unless
    `lowercase=False`.
    """
    _check_on_error(on_error)
    stats = stats if stats is not None else DataStats()
    for order in shuffled_epochs(len(examples), seed):
        produced = 0
        for _, inputs in _usable(
            (examples[i] for i in order),
            on_error,
            stats,
            tokenizer=tokenizer,
            seqlen=seqlen,
            image_size=image_size,
            with_suffix=True,
            truncation=truncation,
            lowercase=lowercase,
        ):
            produced += 1
            yield inputs
        if not produced:
            raise DataError(f"no readable example in this split ({stats})")


def validation_examples(
    examples: list[Example],
    *,
    tokenizer,
    seqlen: int,
    image_size: int = 224,
    lowercase: bool = True,
    on_error: str = "raise",
    stats: DataStats | None = None,
) -> Iterator[dict[str, Any]]:
    """One ordered pass for evaluation: the prompt only (no suffix) as tokens.

    Each dict holds the model inputs of `train_examples` (with a prompt-only
    "text") plus "caption": the reference suffix, and "example": the `Example`.
    """
    _check_on_error(on_error)
    stats = stats if stats is not None else DataStats()
    for example, inputs in _usable(
        examples,
        on_error,
        stats,
        tokenizer=tokenizer,
        seqlen=seqlen,
        image_size=image_size,
        with_suffix=False,
        truncation=None,
        lowercase=lowercase,
    ):
        caption = example.suffix.lower() if lowercase else example.suffix
        yield {**inputs, "caption": caption, "example": example}


def batches(examples: Iterable[dict], batch_size: int, *, drop_remainder: bool = True):
    """Stacks consecutive example dicts into batch dicts of arrays [B, ...].

    Only array fields are stacked; a short last batch is dropped unless
    `drop_remainder=False`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk = []
    for example in examples:
        chunk.append(example)
        if len(chunk) == batch_size:
            yield _stack(chunk)
            chunk = []
    if chunk and not drop_remainder:
        yield _stack(chunk)


def _stack(chunk: list[dict]) -> dict[str, np.ndarray]:
    keys = [k for k, v in chunk[0].items() if isinstance(v, np.ndarray)]
    return {k: np.stack([example[k] for example in chunk]) for k in keys}
