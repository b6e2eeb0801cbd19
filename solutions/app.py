"""The captioning app's logic (lesson 9): uploads in, captions out, no Streamlit here.

    uploaded bytes ──► read_upload ──► RGB image ──┐
    gallery scene  ──► render_scene ──► RGB image ─┤
                                                   ▼
    ModelSource ──► load_captioner ──► Captioner.caption(images, prefix, sampler, ...)
                                         preprocess_image → decode → postprocess_tokens
                                                   ▼
                               CaptionRow(file_name, caption, seconds) ──► CSV / JSONL

`capstone/app.py` draws these on a Streamlit page; everything it shows is
computed here, so every step can be tested without a browser. Trouble gets
an exception whose message names the culprit and the fix: `ImageInputError`
for an upload that is not a usable image, `ModelSourceError` for a model
whose files are missing or do not fit.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from solutions import scenes
from solutions.checkpoints import TINY_ASSETS, float32_params, load_real, load_tiny
from solutions.evaluate import Sampler, decode
from solutions.model import count_params, param_shapes
from solutions.params import NonFiniteParamsError, load_params
from solutions.preprocess import (
    MAX_IMAGE_PIXELS,
    open_image,
    postprocess_tokens,
    preprocess_image,
    preprocess_tokens,
)

# Where the app looks for its files; both can be moved with an environment variable.
TINY_ASSETS_ENV = "COURSE_TINY_ASSETS"  # a folder with params.npz, tokenizer.model, config.json
RUNS_DIR_ENV = "COURSE_RUNS_DIR"  # the fine-tune run folders (default ./runs)

# Pillow reads many more formats; the app lets it try only the four that browsers
# show, which also keeps rarely used (and rarely audited) decoders away from uploads.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
ACCEPTED_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif")

DEFAULT_PREFIX = "caption en"
DEFAULT_MAX_LEN = 48  # covers the tiny model's pretraining targets; long captions need ~72
GREEDY = Sampler()  # temperature 0: the most likely token, every time
PROMPT_BLOCK = 16  # prompts are padded to a multiple of this, so most prefixes share one compile


class ImageInputError(ValueError):
    """An upload that is not a usable image; the message names the file and what to do."""


class ModelSourceError(RuntimeError):
    """A model that cannot be loaded; the message names the path and the fix."""


# --------------------------------------------------------------------------- reading uploads


def read_upload(data: bytes, file_name: str, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Reads an uploaded file into an upright 8-bit RGB image, refusing anything unsafe.

    `solutions.preprocess.open_image` does the reading, with the one policy the
    course has for every image file; the app only narrows it to the four
    formats browsers show (`ACCEPTED_FORMATS`), which also keeps rarely used
    (and rarely audited) decoders away from uploads.

    Args:
      data: the file's bytes.
      file_name: its name, which error messages start with.
      max_pixels: larger images are refused from the header (default:
        `preprocess.MAX_IMAGE_PIXELS`).
    Returns:
      A PIL image of mode "RGB", the file's own size (upright).
    Raises:
      ImageInputError: empty, not a JPEG/PNG/WebP/GIF, too many pixels, or damaged
        pixel data; the message names the file and what to do.
    """
    try:
        return open_image(data, file_name, max_pixels=max_pixels, formats=ACCEPTED_FORMATS)
    except ValueError as error:
        raise ImageInputError(str(error)) from None


# --------------------------------------------------------------------------- sample scenes


class GalleryImage(NamedTuple):
    """A sample scene: `name` (a file-like name), `image` (RGB PIL), `reference` (its caption)."""

    name: str
    image: Image.Image
    reference: str


def gallery(count: int = 6, *, seed: int = 0, size: int = 224) -> list[GalleryImage]:
    """`count` validation scenes from `solutions.scenes`, drawn at `size` x `size` pixels.

    They are scenes the course's models never trained on, with the short
    caption ("a large red circle and a small blue square") as the reference.
    """
    found = []
    for index in range(count):
        scene = scenes.sample_scene(scenes.example_seed(seed, "val", index), split="val")
        image = scenes.render_scene(scene, size)
        found.append(GalleryImage(f"scene_{index:02d}.png", image, scenes.short_caption(scene)))
    return found


# --------------------------------------------------------------------------- model sources


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the captioning model comes from.

    Attributes:
      label: what the app shows, e.g. "tiny (shipped)".
      architecture: "tiny" (the course's model: its config, tokenizer and,
        without `checkpoint`, its weights) or a real checkpoint name from
        `solutions.configs.CHECKPOINTS`, e.g. "paligemma-3b-pt-224".
      checkpoint: a big_vision .npz to load into that architecture; None means
        the architecture's own weights.
    """

    label: str
    architecture: str = "tiny"
    checkpoint: pathlib.Path | None = None


def tiny_assets_dir() -> pathlib.Path:
    """The tiny model's folder: $COURSE_TINY_ASSETS, else capstone/assets/tiny."""
    return pathlib.Path(os.environ.get(TINY_ASSETS_ENV) or TINY_ASSETS)


def runs_dir() -> pathlib.Path:
    """The fine-tune runs' folder: $COURSE_RUNS_DIR, else ./runs."""
    return pathlib.Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def latest_run_checkpoint(runs: pathlib.Path) -> pathlib.Path | None:
    """The most recently written `runs/*/checkpoint.npz`, or None."""
    return max(runs.glob("*/checkpoint.npz"), key=lambda p: p.stat().st_mtime, default=None)


def real_checkpoint_files(name: str) -> tuple[pathlib.Path, pathlib.Path] | None:
    """(checkpoint, tokenizer) of a real PaliGemma if both are on disk, else None.

    The checkpoint is where `capstone.finetune --checkpoint kaggle` finds it
    without downloading (`downloads.checkpoint_on_disk`: $PALIGEMMA_CHECKPOINT_DIR,
    else a complete copy in kagglehub's cache); the tokenizer must sit next to
    it. Nothing is downloaded.
    """
    from solutions import downloads

    checkpoint = downloads.checkpoint_on_disk(name)
    if checkpoint is None:
        return None
    tokenizer = checkpoint.parent / downloads.TOKENIZER_FILENAME
    return (checkpoint, tokenizer) if tokenizer.is_file() else None


def model_sources(runs: pathlib.Path | None = None) -> list[ModelSource]:
    """The models ready to use here: the tiny one, the latest run, real ones on disk."""
    from solutions.configs import CHECKPOINTS

    found = [ModelSource("tiny (shipped)")]
    latest = latest_run_checkpoint(runs or runs_dir())
    if latest is not None:
        found.append(ModelSource(f"latest run ({latest.parent.name})", "tiny", latest))
    found += [ModelSource(name, name) for name in CHECKPOINTS if real_checkpoint_files(name)]
    return found


# --------------------------------------------------------------------------- the captioner


class Caption(NamedTuple):
    """One image's caption and the seconds it took (preprocessing and decoding)."""

    text: str
    seconds: float


def sampler_from_controls(
    mode: str, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Sampler:
    """The app's decoding controls as a `Sampler`: mode "greedy" ignores the knobs,
    "sampling" draws with them (top_k 0 and top_p 1 mean no filtering)."""
    if mode == "greedy":
        return GREEDY
    if mode == "sampling":
        return Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    raise ValueError(f"decoding mode must be 'greedy' or 'sampling', got {mode!r}")


@dataclasses.dataclass
class Captioner:
    """A loaded model that captions images, one at a time.

    Attributes:
      name: what the app calls it.
      model: the `solutions.model.Model`.
      resolution: the image side it reads, in pixels.
      params: its parameter tree, float32 jax arrays.
      tokenizer: its SentencePiece tokenizer (PaliGemma's ids).
    """

    name: str
    model: Any
    resolution: int
    params: dict
    tokenizer: Any

    @property
    def num_params(self) -> int:
        return count_params(self.params)

    @property
    def summary(self) -> str:
        """e.g. "tiny (shipped): 3.1M parameters, 224x224 images"."""
        return (
            f"{self.name}: {self.num_params / 1e6:,.1f}M parameters, "
            f"{self.resolution}x{self.resolution} images"
        )

    def prompt(self, prefix: str) -> dict[str, np.ndarray]:
        """The decode prompt for one image: "text", "mask_ar", "mask_input", int32[1, P].

        P is the prompt's length rounded up to a multiple of `PROMPT_BLOCK`
        (right padding), so editing the prefix rarely costs a new compilation.
        """
        natural = len(preprocess_tokens(prefix, tokenizer=self.tokenizer)[0])
        seqlen = -(-natural // PROMPT_BLOCK) * PROMPT_BLOCK
        text, mask_ar, _, mask_input = preprocess_tokens(
            prefix, None, seqlen, tokenizer=self.tokenizer
        )
        return {"text": text[None], "mask_ar": mask_ar[None], "mask_input": mask_input[None]}

    def caption(
        self,
        images: Iterable[Any],
        prefix: str = DEFAULT_PREFIX,
        *,
        sampler: Sampler = GREEDY,
        max_len: int = DEFAULT_MAX_LEN,
        seed: int = 0,
    ) -> list[Caption]:
        """Captions each image on its own and times it.

        Args:
          images: anything `preprocess_image` reads (PIL images, uint8[H, W, 3]
            arrays, paths, bytes); each is resized to `resolution`.
          prefix: the task prompt, e.g. "caption en".
          sampler: how tokens are picked (`GREEDY`, or see `sampler_from_controls`).
          max_len: tokens to generate at most.
          seed: seeds sampling; every image uses it, so an image's caption does
            not depend on what else is in the list.
        Returns:
          One `Caption(text, seconds)` per image, in order.
        """
        prompt = self.prompt(prefix)
        captions = []
        for image in images:
            start = time.perf_counter()
            batch = {"image": preprocess_image(image, self.resolution)[None], **prompt}
            tokens = decode(
                self.params,
                batch,
                model=self.model,
                max_decode_len=max_len,
                sampler=sampler,
                seed=seed,
            )
            text = postprocess_tokens(tokens[0], tokenizer=self.tokenizer)
            captions.append(Caption(text, time.perf_counter() - start))
        return captions

    def warm_up(
        self,
        prefix: str = DEFAULT_PREFIX,
        *,
        sampler: Sampler = GREEDY,
        max_len: int = DEFAULT_MAX_LEN,
    ) -> float:
        """Captions a grey image once so that decode is compiled; returns the seconds it took."""
        grey = np.full((self.resolution, self.resolution, 3), 128, np.uint8)
        return self.caption([grey], prefix, sampler=sampler, max_len=max_len)[0].seconds


def load_captioner(source: ModelSource, assets: pathlib.Path | None = None) -> Captioner:
    """Loads the model `source` names (weights cast to float32).

    Args:
      source: which model.
      assets: the tiny model's folder (default `tiny_assets_dir()`).
    Raises:
      ModelSourceError: files missing, damaged, or not shaped like the architecture.
    """
    if source.checkpoint is not None and not source.checkpoint.is_file():
        raise ModelSourceError(
            f"No checkpoint at {source.checkpoint}: check the path. A fine-tune writes "
            "runs/<name>/checkpoint.npz, e.g. `python -m capstone.finetune --out runs/mine`."
        )
    if source.architecture == "tiny":
        model, resolution, params, tokenizer = _load_tiny_checked(assets or tiny_assets_dir())
    else:
        model, resolution, params, tokenizer = _load_real_checked(source)
    if source.checkpoint is not None and source.architecture == "tiny":
        params = _load_checkpoint_into(source.checkpoint, model, resolution, "tiny")
    return Captioner(source.label, model, resolution, float32_params(params), tokenizer)


def _load_tiny_checked(assets: pathlib.Path):
    try:
        return load_tiny(assets)
    except (FileNotFoundError, ValueError) as error:
        raise ModelSourceError(
            f"The tiny model at {assets} cannot be loaded: {error} Build it with "
            f"`python -m capstone.factory.pretrain`, or set {TINY_ASSETS_ENV} to a folder holding "
            "params.npz, tokenizer.model and config.json."
        ) from None


def _load_real_checked(source: ModelSource):
    """A real PaliGemma from files already on disk; never downloads."""
    from solutions import downloads

    if source.checkpoint is None:
        found = real_checkpoint_files(source.architecture)
        if found is None:
            raise ModelSourceError(
                f"{source.architecture}: its checkpoint and {downloads.TOKENIZER_FILENAME} are "
                f"not on disk. Put both in a folder named by ${downloads.CHECKPOINT_DIR_ENV}, or "
                f"download them once with `python -m capstone.finetune --model "
                f"{source.architecture} --checkpoint kaggle`."
            )
        checkpoint = found[0]
    else:
        checkpoint = source.checkpoint
        tokenizer = checkpoint.parent / downloads.TOKENIZER_FILENAME
        if not tokenizer.is_file():
            raise ModelSourceError(
                f"{tokenizer} is missing: a real PaliGemma's checkpoint needs "
                f"{downloads.TOKENIZER_FILENAME} next to it; copy it there."
            )
    try:
        return load_real(source.architecture, str(checkpoint))
    except (ValueError, downloads.DownloadError) as error:
        raise ModelSourceError(
            f"{checkpoint} cannot be loaded as {source.architecture}: {error}"
        ) from None


def _load_checkpoint_into(path: pathlib.Path, model, resolution: int, architecture: str) -> dict:
    try:
        return load_params(path, like=param_shapes(model, resolution))
    except NonFiniteParamsError as error:  # it would caption every image with ""
        raise ModelSourceError(
            f"{path} holds NaN or inf weights (the first in {error.name!r}): a fine-tune that "
            "diverged saved it, and it would caption every image with nothing. Pick an earlier "
            "run, or fine-tune again with a lower --learning-rate."
        ) from None
    except ValueError as error:  # damaged, not an .npz, or another model's tree
        raise ModelSourceError(
            f"{path} cannot be loaded into the {architecture} model: {error} If it was "
            "fine-tuned from another model, pick that architecture; if it is damaged, "
            "save or copy it again."
        ) from None


# --------------------------------------------------------------------------- the table


class CaptionRow(NamedTuple):
    """One row of the captions table."""

    file_name: str
    caption: str
    seconds: float


# A spreadsheet runs a cell that starts with one of these as a formula: an uploaded file
# named '=HYPERLINK("http://…")' would become a live link in whoever opens the CSV.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """`text`, with an apostrophe in front when a spreadsheet would read it as a formula;
    the apostrophe makes spreadsheets show the cell as text."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def captions_csv(rows: Sequence[CaptionRow]) -> bytes:
    """UTF-8 CSV with a header "file_name,caption,seconds"; seconds to the millisecond.
    File names and captions that would start a formula get a leading apostrophe."""
    buffer = io.StringIO()
    # csv's own "\r\n" line ends (RFC 4180): a field holding a lone "\r" is then quoted too.
    writer = csv.writer(buffer)
    writer.writerow(CaptionRow._fields)
    writer.writerows(
        (spreadsheet_text(row.file_name), spreadsheet_text(row.caption), round(row.seconds, 3))
        for row in rows
    )
    return buffer.getvalue().encode()


def captions_jsonl(rows: Sequence[CaptionRow]) -> bytes:
    """UTF-8 JSON Lines, one object per row with keys file_name, caption, seconds."""
    lines = (
        json.dumps({**row._asdict(), "seconds": round(row.seconds, 3)}, ensure_ascii=False)
        for row in rows
    )
    return "".join(line + "\n" for line in lines).encode()
