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
# # Lesson 9: Serving, a captioning app with Streamlit
#
# The last stage of the fine-tuning notebook is to use the model: show it an image, read its
# caption. This lesson turns that into a small web app, the course's `capstone/app.py`, where
# anyone on your machine can upload pictures and get captions back. Serving brings problems a
# notebook never meets: a page that reruns its whole script at every click, strangers' files,
# visitors who should not wait for a compiler, and a page that must be tested without a browser.
#
# **What you will learn**
#
# - Why an app loads its model once (`st.cache_resource`), what that cache holds and for whom,
#   and why the first caption is slow unless the decoder is warmed up.
# - How to read an uploaded file safely: allowed formats, animated GIFs, CMYK and 16-bit images,
#   and files that claim billions of pixels.
# - How the page is put together: model choice, decoding controls, per-image results, downloads.
# - How to test a Streamlit page in plain Python with `AppTest`, and how to start the app.
#
# **Time:** about 30 minutes with the exercises; the cells run in about a minute on a laptop CPU.

# %% tags=["setup"]
import csv  # noqa: F401 (exercise 9.4 uses it)
import io
import json  # noqa: F401 (exercise 9.4 uses it)
import os
import pathlib
import shutil
import tempfile
import textwrap
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import solutions
from solutions.app import (
    ACCEPTED_FORMATS,  # noqa: F401 (exercise 9.1 uses it)
    DEFAULT_MAX_LEN,
    GREEDY,
    RUNS_DIR_ENV,
    CaptionRow,
    ImageInputError,
    ModelSource,
    gallery,
    load_captioner,
    model_sources,
    tiny_assets_dir,
)
from solutions.evaluate import Sampler  # noqa: F401 (exercise 9.3 uses it)
from solutions.preprocess import MAX_IMAGE_PIXELS, open_image
from tests.grading import check

REPO = pathlib.Path(solutions.__file__).resolve().parent.parent
APP_SCRIPT = REPO / "capstone" / "app.py"

# %% [markdown]
# ## 1. From a notebook to a page
#
# The app has two halves. `solutions/app.py` does the work and knows nothing about web pages:
# reading uploads, finding and loading models, captioning, writing the results table.
# `capstone/app.py` only draws: it asks Streamlit for widgets and shows what `solutions.app`
# returns. Everything a visitor can trigger is therefore a plain function you can call and test.
#
# ```
#  the visitor's browser
#    │ uploads, ticked samples     │ sidebar: model             │ sidebar: decoding
#    ▼                             ▼                            ▼
#  read_upload, gallery          model_sources                sampler_from_controls
#    │ RGB images                load_captioner (cached)        │ a Sampler
#    │                             │ a Captioner                │
#    └─────────────────────────────┼────────────────────────────┘
#                                  ▼
#              Captioner.caption(images, prefix, sampler=, max_len=, seed=)
#                preprocess_image → decode → postprocess_tokens, timed
#                                  ▼
#      one box per image: image, caption, seconds ──► CaptionRow per image
#                                                      ▼
#                             captions_csv, captions_jsonl ──► download buttons
# ```
#
# The public pieces of `solutions.app`, with the first line of each docstring:

# %%
from solutions import app

for name in sorted(vars(app)):
    thing = getattr(app, name)
    if name.startswith("_") or name.isupper():
        continue  # private helpers and constants
    if getattr(thing, "__module__", None) == app.__name__ and thing.__doc__:
        print(f"{name:24s} {thing.__doc__.strip().splitlines()[0]}")

# %% [markdown]
# ## 2. Load the model once
#
# A Streamlit page is a script, and Streamlit runs it again from the top every time a visitor
# touches anything: a click, a slider, a new upload. Written naively, every rerun would load
# the weights again, and every fresh model object would compile its decoder again.
#
# Here is what each of those costs on this machine, for the course's tiny PaliGemma. Loading
# reads the weights from disk. The first caption compiles the whole decode loop with XLA
# (`Captioner.warm_up` captions a grey image, so that this happens before any visitor waits);
# later captions reuse the compiled code.

# %%
start = time.perf_counter()
captioner = load_captioner(ModelSource("tiny (shipped)"))
load_seconds = time.perf_counter() - start
print(captioner.summary)

first_seconds = captioner.warm_up()  # compiles decode for greedy decoding and this prompt size
later_seconds = [captioner.warm_up() for _ in range(5)]
warm_seconds = float(np.median(later_seconds))
costs = {
    "load weights": load_seconds,
    "first caption (compiles)": first_seconds,
    "later caption (median of 5)": warm_seconds,
}
for what, seconds in costs.items():
    print(f"{what:28s} {seconds:7.3f} s")

figure, ax = plt.subplots(figsize=(6, 2.6))
bars = ax.barh(list(costs), list(costs.values()), color=["tab:blue", "tab:red", "tab:green"])
ax.bar_label(bars, [f"{s:.2f} s" for s in costs.values()], padding=3)
ax.set_xlabel("seconds")
ax.set_title("where the time goes: the first caption compiles")
ax.invert_yaxis()
ax.margins(x=0.2)
plt.show()
print(f"the first caption took {first_seconds / warm_seconds:.0f} times as long as a later one")

# %% [markdown]
# ### `st.cache_resource`: one object for everyone
#
# The cure is to build the captioner in a function decorated with `@st.cache_resource`.
# Streamlit runs the function once for each distinct set of arguments and keeps what it returns
# in the server's memory. Every later call, in every rerun, from every browser tab of every
# visitor, gets *the same object* back, not a copy.
#
# | | `st.cache_resource` | `st.cache_data` | `st.session_state` |
# |---|---|---|---|
# | a call returns | the very same object | a fresh copy (pickled) | this session's values |
# | shared by | all sessions, all visitors | all sessions, as copies | one browser tab |
# | good for | models, connections | tables, computed data | widget values, a user's results |
#
# A model belongs in `cache_resource`: copying it would be slow, and `decode` compiles once per
# model *object*, so only the very same object keeps its compiled decoder. Sharing has a price:
# Streamlit runs each session's script in its own thread, so two visitors may caption with the
# same `Captioner` at once. It must only be *read* while serving, and it is: captioning never
# writes to the model, its parameters or its tokenizer, and the sampling seed is an argument,
# not state.
#
# Outside a running app the decorator still caches (and Streamlit logs that there is no page to
# draw on; that warning is silenced below). A small loader shows the three rules that matter:

# %%
import logging

import streamlit as st

# Outside `streamlit run` every cached call notes that no page is attached; that is expected,
# so that one message is filtered out (a filter, because Streamlit resets its loggers' levels).
logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(
    lambda record: "missing ScriptRunContext" not in record.getMessage()
)


@st.cache_resource(max_entries=1)
def cached_loader(label: str, stamp: float):
    """The tiny captioner, loaded once per (label, stamp); `stamp` is the weights' mtime."""
    return load_captioner(ModelSource(label))


weights = tiny_assets_dir() / "params.npz"
stamp = weights.stat().st_mtime
calls = [
    ("first visitor", stamp),
    ("second visitor", stamp),
    ("weights rewritten (new mtime)", stamp + 1),
    ("back to the old mtime", stamp),
]
seen = []
for who, call_stamp in calls:
    start = time.perf_counter()
    loaded = cached_loader("tiny (shipped)", call_stamp)
    seconds = time.perf_counter() - start
    same = [index for index, earlier in enumerate(seen) if earlier is loaded]
    seen.append(loaded)
    note = f"same object as call {same[0] + 1}" if same else "a new object: loaded from disk"
    print(f"{len(seen)}. {who:30s} {seconds:6.3f} s  {note}")
cached_loader.clear()  # free the memory; the lesson goes on with `captioner`
del loaded, seen

# %% [markdown]
# 1. **Same arguments, same object.** The second visitor waits for nothing.
# 2. **Arguments are the key.** The app passes the weights file's modification time as `stamp`,
#    so when a fine-tune rewrites its checkpoint the next rerun loads the new weights; without
#    it, the page would serve the old ones until the server restarts. (The key also includes the
#    function's source code: edit the function and the cache starts over.)
# 3. **`max_entries=1` keeps one model.** Asking for another evicts the first, so going back
#    loads it again. With a 3B PaliGemma in memory, holding two would not fit on most machines.
#
# The app's own cached function also warms the decoder before returning, so the compile is paid
# once per model and server, by whoever comes first (under a spinner that says so), never again
# per caption:

# %%
import inspect

from capstone import app as page_module

print(inspect.getsource(page_module.cached_captioner))

# %% [markdown]
# ## 3. Reading an upload safely
#
# An upload is bytes from a stranger, with a name the stranger chose. The uploader widget is
# told to accept `.jpg`, `.png`, `.webp` and `.gif`, but that only filters by file name in the
# browser: the content can be anything. Lesson 5's `preprocess_image` already turns odd images
# into RGB; at the door of an app a few more things can go wrong:
#
# | upload | what goes wrong without care | what the app does |
# |---|---|---|
# | TIFF, BMP, PSD, ... | Pillow decodes dozens of formats | JPEG, PNG, WebP, GIF only |
# | animated GIF | which frame is "the image"? | the first frame |
# | CMYK, palette, grey | not three RGB channels | Pillow converts to RGB |
# | 16-bit PNG | `convert("RGB")` clips at 255: mostly white | values / 257 |
# | phone photo | stored sideways, an EXIF tag says "turn me" | `ImageOps.exif_transpose` |
# | tiny file, huge header | 30000 x 30000 pixels need 2.7 GB | refused from the header |
# | a file cut short | an error deep inside Pillow | a message naming the file |
#
# The last two rows come from one fact: `Image.open` reads only the header (format, size,
# mode); pixels are decoded later, when something needs them. So the size can be checked
# *before* any memory is spent on pixels, and damaged pixel data shows up only at decoding.
# Pillow has a guard of its own, `Image.DecompressionBombError`, but only at twice its
# `Image.MAX_IMAGE_PIXELS`; the course's limit, `MAX_IMAGE_PIXELS`, is lower:

# %%
print(
    f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,} pixels (e.g. {int(MAX_IMAGE_PIXELS**0.5):,} "
    f"x {int(MAX_IMAGE_PIXELS**0.5):,}), {MAX_IMAGE_PIXELS * 3 / 1e9:.2f} GB as 8-bit RGB"
)
print(f"Pillow's own error at {2 * Image.MAX_IMAGE_PIXELS:,} pixels")

# %% [markdown]
# Every image file the course reads, a training example's, a path given to `preprocess_image`
# or an upload, goes through one function, `solutions.preprocess.open_image`, so they all
# follow one policy. Its three steps are the table's rows: open the header (only the formats
# asked for), check the pixel count, then decode with the EXIF orientation applied and convert
# the mode (`upright_rgb`). Each failure is a `ValueError` whose message starts with the name
# it was given and says what to do:

# %%
print(inspect.getsource(open_image).split('    """', 2)[2])

# %% [markdown]
# ### Exercise 9.1: read an upload
#
# Write `read_upload` on top of `open_image`: hand it the bytes, the file name (the messages
# start with it), `max_pixels`, and `formats=ACCEPTED_FORMATS`, the four formats browsers show
# (the other decoders Pillow has are rarely used, and rarely audited). The app tells a bad
# upload from a bug by its type, so every refusal must reach the page as an `ImageInputError`
# with `open_image`'s message: an empty file, something that is not one of the four formats,
# too many pixels, a header past Pillow's own guard, or pixel data that turns out to be damaged
# when it is decoded. A bug (say, a `TypeError`) must not be disguised as one.


# %% tags=["exercise"]
def read_upload(data, file_name, *, max_pixels=MAX_IMAGE_PIXELS):
    """Reads an uploaded file into an upright 8-bit RGB image, refusing anything unsafe.

    Args:
      data: the file's bytes.
      file_name: its name, which error messages start with.
      max_pixels: images with more than this many pixels (width * height) are refused, from
        the header, before any pixel is decoded.
    Returns:
      A PIL image of mode "RGB" and the file's own size, upright (EXIF orientation applied);
      an animation gives its first frame; 16-bit values v become round(v / 257).
    Raises:
      ImageInputError: empty, not a JPEG/PNG/WebP/GIF, too many pixels, or damaged pixel data;
        the message starts with `file_name` and says what to do.
    """
    # Hint: one call in a try; catch ValueError (only it) and raise ImageInputError(str(error)).
    raise NotImplementedError("Exercise 9.1")


# %% tags=["check"]
check("ex9_1")

# %% [markdown]
# Ten uploads a real page could receive, and what `read_upload` makes of each. The accepted
# ones are drawn from the sample scenes the app offers (validation scenes, never trained on).


# %%
import struct
import zlib


def encoded(image, image_format, **options):
    """The bytes of `image` saved in `image_format`."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def sideways_jpeg(image):
    """A phone's way: the pixels turned on their side, an EXIF tag saying how to show them."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: turn 90 degrees clockwise to display
    return encoded(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())


def png_claiming(width, height):
    """A PNG of a few dozen bytes whose header claims width x height pixels."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    pixels = zlib.compress(b"\0" * 16)  # far too little for the size claimed
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


samples = gallery(6)
scene_images = [sample.image for sample in samples]
grey16 = (np.asarray(scene_images[3].convert("L"), np.uint16) * 257).astype(np.uint16)
uploads = {
    "scene.png": encoded(scene_images[0], "PNG"),
    "phone.jpg": sideways_jpeg(scene_images[1]),
    "print.jpg": encoded(scene_images[2].convert("CMYK"), "JPEG", quality=90),
    "scan.png": encoded(Image.fromarray(grey16), "PNG"),
    "anim.gif": encoded(scene_images[4], "GIF", save_all=True, append_images=[scene_images[5]]),
    "notes.png": b"shopping list: eggs, milk",
    "old.bmp": encoded(scene_images[0], "BMP"),
    "cut.jpg": encoded(scene_images[1], "JPEG")[:3000],
    "huge.png": png_claiming(8000, 8000),
    "empty.gif": b"",
}

read_images = {}
figure, axes = plt.subplots(2, 5, figsize=(15, 6.6), layout="constrained")
for ax, (name, data) in zip(axes.ravel(), uploads.items(), strict=True):
    ax.set_xticks([])
    ax.set_yticks([])
    try:
        image = read_upload(data, name)
    except ImageInputError as error:
        ax.text(0.02, 0.5, textwrap.fill(str(error), 34), fontsize=8, va="center", color="darkred")
        ax.set_title(f"{name}: refused", color="darkred", fontsize=10)
        continue
    read_images[name] = image
    ax.imshow(image)
    ax.set_title(f"{name}: {image.mode} {image.size[0]}x{image.size[1]}", fontsize=10)
plt.show()

# %% [markdown]
# The phone photo stands upright, the CMYK print has its colours, the 16-bit scan is grey rather
# than white, the GIF shows its first frame. The refusals each name the file, so a page with a
# dozen uploads can show each message in place of that one image and caption the rest.
#
# ## 4. Captioning an image
#
# With an image in hand, `Captioner.caption` does what lesson 8 did by hand: preprocess to the
# model's resolution, build the prompt, decode, detokenize, and time it all. Its prompt is padded
# to a multiple of `PROMPT_BLOCK` tokens: decode compiles once per input shape, so a visitor who
# edits the prefix from "caption en" to "describe en" gets the compiled code, not a new compile.

# %%
for prefix in ("caption en", "describe en", "count en"):
    prompt = captioner.prompt(prefix)
    real = int(prompt["mask_input"].sum())
    print(f"{prefix!r:14s} {real} real tokens, padded to {prompt['text'].shape[1]}")

# %%
names = list(read_images)
captions = captioner.caption([read_images[name] for name in names], "caption en")
rows = [
    CaptionRow(name, text, seconds) for name, (text, seconds) in zip(names, captions, strict=True)
]

figure, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 4.2), layout="constrained")
for ax, row in zip(axes, rows, strict=True):
    ax.imshow(read_images[row.file_name])
    ax.axis("off")
    shown = textwrap.shorten(row.caption, 90, placeholder=" ...") or "(the model wrote nothing)"
    ax.set_title(f"{row.file_name}, {row.seconds:.2f} s", fontsize=10)
    ax.text(0.5, -0.04, textwrap.fill(shown, 30), transform=ax.transAxes, ha="center", va="top")
plt.show()
print("reference of scene.png:", samples[0].reference)

# %% [markdown]
# On the tiny model each caption takes a fraction of a second once warm, nearly all of it the
# decode loop: one token per step, up to `max_len` steps unless the model writes `[eos]` first.
# The captions are whatever the loaded model writes; after `make demo` (the capstone fine-tune,
# which saves `runs/demo/checkpoint.npz`) the app can serve that run instead, as the next
# section shows.
#
# ## 5. The page, part by part
#
# | part of the page | Streamlit elements | from `solutions.app` |
# |---|---|---|
# | sidebar: model | `selectbox`, `text_input` (a path) | `model_sources`, `load_captioner` |
# | sidebar: summary | `text` in an `empty` slot | `Captioner.summary` |
# | sidebar: decoding | `text_input`, `radio`, `slider`, `number_input` | `sampler_from_controls` |
# | main: images | `file_uploader`, sample scenes with `checkbox` | `read_upload`, `gallery` |
# | main: per image | bordered `container`: `image`, `text`, `caption` | `Captioner.caption` |
# | main: downloads | two `download_button`s | `captions_csv`, `captions_jsonl` |
#
# Each per-image box shows either the image with its caption and seconds, or an `error` saying
# why that one image could not be read or captioned; the other boxes are unaffected.
#
# The model is loaded at the *end* of the script, after every widget is drawn: on the first
# visit the sidebar, the uploader and the samples are already on screen while a spinner says
# the model is loading.
#
# ### Which models to offer
#
# The sidebar lists only what is ready on this machine: the shipped tiny model, your latest
# fine-tune run, and real PaliGemma checkpoints whose files are on disk (the app never
# downloads). A fine-tune (`python -m capstone.finetune --out runs/NAME`) writes
# `runs/NAME/checkpoint.npz`; "latest" means the checkpoint written most recently, whatever
# the run is called.
#
# ### Exercise 9.2: the latest run


# %% tags=["exercise"]
def latest_run_checkpoint(runs):
    """The most recently written `runs/*/checkpoint.npz`, or None.

    Args:
      runs: a pathlib.Path, the folder holding one sub-folder per fine-tune run (it may not
        exist yet).
    Returns:
      The pathlib.Path of the checkpoint with the newest modification time, or None when no
      run has saved one.
    """
    # Hint: one glob pattern finds every run's checkpoint, and a missing folder simply finds none;
    # the newest is the maximum by modification time, and nothing found is None, not an error.
    raise NotImplementedError("Exercise 9.2")


# %% tags=["check"]
check("ex9_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 9.2</summary>
#
# ```python
# found = runs.glob("*/checkpoint.npz")
# return max(found, key=lambda path: path.stat().st_mtime, default=None)
# ```
#
# </details>

# %% [markdown]
# Two pretend runs, each holding a copy of the tiny weights, written an hour apart. The newer
# one joins the sidebar's list, and it loads into the tiny architecture like any checkpoint.

# %%
workdir = pathlib.Path(tempfile.mkdtemp(prefix="lesson09-"))
runs = workdir / "runs"
now = time.time()
for run_name, age_seconds in (("new", 0), ("old", 3600)):
    (runs / run_name).mkdir(parents=True)
    checkpoint = runs / run_name / "checkpoint.npz"
    shutil.copyfile(weights, checkpoint)
    os.utime(checkpoint, (now - age_seconds, now - age_seconds))

latest = latest_run_checkpoint(runs)
print("latest checkpoint:", latest.relative_to(workdir))
print("the sidebar offers:", [source.label for source in model_sources(runs)])
run_source = model_sources(runs)[1]
print(load_captioner(run_source).summary)

# %% [markdown]
# ### Decoding controls
#
# The sidebar offers greedy decoding (always the most likely token) or sampling with the knobs
# of lesson 8: temperature, top-k, top-p, and a seed. Widgets hand back plain values; the page
# needs one validated `Sampler`. The function takes every knob in both modes, so a caller can
# pass whatever its widgets hold: in greedy mode the knobs mean nothing, and a value that would
# be invalid for sampling (say top-p 0) must not stop a greedy caption.
#
# ### Exercise 9.3: widgets to a `Sampler`


# %% tags=["exercise"]
def sampler_from_controls(mode, temperature=1.0, top_k=0, top_p=1.0):
    """The app's decoding controls as a `Sampler`.

    Args:
      mode: "greedy" or "sampling", the radio button.
      temperature, top_k, top_p: the sliders (top_k 0 and top_p 1 mean no filtering).
    Returns:
      For "greedy", a greedy Sampler (temperature 0, no filters), whatever the knobs say; for
      "sampling", Sampler(temperature=temperature, top_k=top_k, top_p=top_p).
    Raises:
      ValueError: any other mode (the message names both modes), or knobs a Sampler refuses.
    """
    # Hint: `Sampler()` is greedy (GREEDY is one ready-made); a Sampler checks its own fields
    # and raises ValueError for bad ones, so there is nothing to check by hand.
    raise NotImplementedError("Exercise 9.3")


# %% tags=["check"]
check("ex9_3")

# %% [markdown]
# The `Sampler` is a frozen dataclass, and `decode` keeps one compiled program per distinct
# `Sampler` (and per `max_len`): they are fixed into the compiled loop. That makes equal
# settings free and new settings slow. JAX reports every XLA compilation through
# `jax.monitoring`, so we can count them while captioning one image with a few settings:


# %%
import functools


def compiles_while(action):
    """(action(), number of XLA compilations while it ran)."""
    compiled = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        result = action()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return result, len(compiled)


image = read_images["scene.png"]
settings = [
    ("greedy", 1.0, "greedy (warmed up)"),
    ("sampling", 0.7, "sampling, temperature 0.7"),
    ("sampling", 0.7, "the same again"),
    ("sampling", 0.8, "temperature moved to 0.8"),
]
for mode, temperature, what in settings:
    sampler = sampler_from_controls(mode, temperature)
    caption_it = functools.partial(
        captioner.caption, [image], sampler=sampler, max_len=DEFAULT_MAX_LEN, seed=0
    )
    [caption], compiles = compiles_while(caption_it)
    print(
        f"{what:26s} compilations: {compiles}  {caption.seconds:6.2f} s  "
        f"{textwrap.shorten(caption.text, 40, placeholder=' ...')!r}"
    )
print("greedy from the controls is GREEDY:", sampler_from_controls("greedy", 0.3) == GREEDY)

# %% [markdown]
# Greedy from the controls equals the warmed-up `GREEDY`, so it compiles nothing. The first
# sampled caption pays a compile, the repeat is free, and each new temperature compiles anew:
# a visitor dragging the temperature slider waits at every new position. (One of the "go
# further" questions is about that.)
#
# ### Results and downloads
#
# Each image's box shows the image, its caption and the seconds it took, or an error in its
# place. Under them, the captions download as a table, in two formats people use: CSV for
# spreadsheets and JSON Lines for programs. Both must survive what captions and file names hold:
# commas, quotes, line breaks, accents. And the CSV must not arm a trap: a spreadsheet runs a
# cell that starts with `=`, `+`, `-` or `@` as a formula, so an upload named
# `=HYPERLINK("http://…")` would turn into a live link for whoever opens the table. The usual
# defence is an apostrophe in front of such a cell, which spreadsheets show as plain text.
#
# ### Exercise 9.4: the downloads


# %% tags=["exercise"]
def captions_csv(rows):
    """The captions table as UTF-8 CSV bytes.

    Args:
      rows: a sequence of CaptionRow(file_name: str, caption: str, seconds: float).
    Returns:
      bytes: a header line "file_name,caption,seconds", then one record per row with the
      seconds rounded to 3 decimals; fields holding commas, quotes or newlines are quoted,
      and a file name or caption starting with "=", "+", "-", "@", a tab or a carriage
      return gets an apostrophe in front.
    """
    # Hint: let the csv module do the quoting: it writes to any file-like object, one in memory too.
    # Defuse a formula before its field is written.
    raise NotImplementedError("Exercise 9.4")


def captions_jsonl(rows):
    """The captions table as UTF-8 JSON Lines bytes.

    Args:
      rows: a sequence of CaptionRow(file_name: str, caption: str, seconds: float).
    Returns:
      bytes: one JSON object per row and per line, {"file_name", "caption", "seconds"} with
      the seconds rounded to 3 decimals, each line ending in "\\n"; b"" for no rows.
    """
    # Hint: one JSON object per row, each on its own line with a newline at its end; JSON escapes a
    # newline inside a caption, so an object never spans two lines. Keep letters beyond ASCII as
    # they are.
    raise NotImplementedError("Exercise 9.4")


# %% tags=["check"]
check("ex9_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 9.4</summary>
#
# ```python
# buffer = io.StringIO()
# writer = csv.writer(buffer)
# writer.writerow(CaptionRow._fields)
# defused = "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text
#
# line = json.dumps({**row._asdict(), "seconds": round(row.seconds, 3)}, ensure_ascii=False)
# ```
#
# </details>

# %% [markdown]
# The table of section 4, plus two rows a careless writer would get wrong:

# %%
table = [
    *rows,
    CaptionRow('my "best", photo.jpg', "line one\nline two, é", 0.1234),
    CaptionRow('=HYPERLINK("http://example.com")', "a small red circle", 0.02),
]
print(captions_csv(table).decode())
print(captions_jsonl(table).decode())
read_back = list(csv.DictReader(io.StringIO(captions_csv(table).decode())))
print("read back by csv:", read_back[-2])
print("the formula, defused:", read_back[-1]["file_name"])

# %% [markdown]
# ## 6. Testing the page without a browser
#
# `streamlit.testing.v1.AppTest` runs a page script in this Python process, the way the server
# would, and records what it drew. A test then finds widgets by their `key`, changes them, and
# runs the script again, exactly as a click would. `tests/test_app.py` tests the course's page
# this way; here are the same moves.
#
# The page reads its environment (where the runs are, where the tiny model is), so a test fixes
# it first: here the runs folder of section 5, which holds our two pretend runs. The first run
# of the page loads the model into *its* cache and compiles its decoder, so it takes a while.

# %%
from unittest import mock

from streamlit.testing.v1 import AppTest

# The page's environment for this section: patch.dict restores os.environ when stopped.
page_environment = mock.patch.dict(os.environ, {RUNS_DIR_ENV: str(runs)})
page_environment.start()
page = AppTest.from_file(str(APP_SCRIPT), default_timeout=300)
start = time.perf_counter()
page.run()
first_run_seconds = time.perf_counter() - start
print(f"first run of the page: {first_run_seconds:.1f} s, {len(page.exception)} exceptions")
print("title:          ", page.title[0].value)
print("model choices:  ", page.selectbox(key="model").options)
print("sidebar summary:", page.sidebar.text[0].value)
print("decoding modes: ", page.radio(key="mode").options)
print("sample scenes:  ", len(page.main.image), "images, each with a checkbox")

# %% [markdown]
# Tick the first sample scene and run again, as a click would. The page must show the caption
# our own captioner writes for that scene (same weights, greedy decoding, same length), its
# time, and the two download buttons. These are checks a test would make:

# %%
from tests.grading import expect_equal, expect_true

start = time.perf_counter()
page.checkbox(key="sample_0").check().run()
print(f"rerun after the tick: {time.perf_counter() - start:.1f} s")
shown = page.main.text[0].value
print(
    "caption shown:",
    textwrap.shorten(shown, 80, placeholder=" ..."),
    "|",
    page.main.caption[-1].value,
)

expected = captioner.caption([samples[0].image], max_len=DEFAULT_MAX_LEN)[0].text
expect_equal(shown, expected or "(the model wrote nothing)", what="the caption on the page")
expect_equal(
    [button.label for button in page.download_button],
    ["Download CSV", "Download JSONL"],
    what="download buttons",
)
expect_true(not page.error and not page.exception, what="no error on the page")
print("page checks pass")

# %% [markdown]
# A bad upload must be explained in its own box while the rest of the page keeps working. A new
# `AppTest` is a new visitor: its first run finds the model already in the cache, because
# `st.cache_resource` lives in the process, not in a session.

# %%
visitor = AppTest.from_file(str(APP_SCRIPT), default_timeout=300)
start = time.perf_counter()
visitor.run()
print(f"second visitor's first run: {time.perf_counter() - start:.1f} s (model already cached)")
files = [
    ("notes.png", uploads["notes.png"], "image/png"),
    ("scene.png", uploads["scene.png"], "image/png"),
]
visitor.file_uploader(key="uploads").set_value(files).run()
print("errors shown:  ", [textwrap.shorten(e.value, 70, placeholder=" ...") for e in visitor.error])
print("captions shown:", len(visitor.main.text))
page_environment.stop()

# %% [markdown]
# ## 7. Starting the app
#
# From the repository's root, with the course installed:
#
# ```bash
# make app                                   # or: .venv/bin/streamlit run capstone/app.py
# ```
#
# and open <http://localhost:8501>. Streamlit reads its server settings from
# `.streamlit/config.toml` in the folder it starts in:

# %%
import tomllib

config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
for section, values in config.items():
    for key, value in values.items():
        print(f"[{section}] {key} = {value!r}")

# %% [markdown]
# `address = "localhost"` keeps the server reachable from this machine only: the sidebar loads
# any checkpoint path typed into it, which is fine for you and not for the internet.
# `maxUploadSize` caps each file in megabytes before `read_upload` sees it.
#
# The cell below starts the real server on a free port, asks its health endpoint whether it is
# up, and stops it. (No page is opened, so no model is loaded: Streamlit runs the script only
# when a browser connects.)

# %%
import socket
import subprocess
import sys
import urllib.request

with socket.socket() as probe:
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), "--server.port", str(port)]
start = time.perf_counter()
server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    answer = None
    while answer is None and time.perf_counter() - start < 90 and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as r:
                answer = r.read().decode()
        except OSError:
            time.sleep(0.5)  # not listening yet
    waited = time.perf_counter() - start
    print(f"http://localhost:{port}/_stcore/health answered {answer!r} after {waited:.1f} s")
finally:
    server.terminate()
    server.wait(timeout=30)
shutil.rmtree(workdir)

# %% [markdown]
# ## What you built
#
# - `read_upload`: strangers' bytes to an upright RGB image, with four formats, the first frame
#   of a GIF, CMYK and 16-bit handled, the pixel count checked from the header, and every
#   refusal naming the file and the fix.
# - `latest_run_checkpoint`: the newest fine-tune, found by modification time.
# - `sampler_from_controls`: widget values to one validated `Sampler`, greedy immune to hidden
#   sliders.
# - `captions_csv` and `captions_jsonl`: downloads that survive commas, quotes, newlines and
#   accents.
#
# And the serving habits around them: load once with `st.cache_resource` (keyed by what should
# trigger a reload, one model at a time), warm the compiled decoder before the first visitor,
# keep the page a thin drawing layer over tested functions, and test the page itself with
# `AppTest`.
#
# ## Go further
#
# 1. Every new temperature compiles a new decode (section 5). What would `decode` have to change
#    so that temperature is an *input* of the compiled program rather than part of it? Which
#    settings must stay fixed, and why (think of `max_len` and `top_k`)?
# 2. The app captions images one at a time. Captioning all uploads in one batch would use the
#    hardware better. What would a visitor with one image lose, and how would you avoid a new
#    compile for every number of uploads?
# 3. The sidebar accepts any checkpoint path. List what you would change before putting the app
#    on a network for other people (think of paths, upload sizes, memory, and one slow visitor).
# 4. `st.write_stream` shows text as it arrives. What would the decode loop need to expose to
#    show a caption token by token, and what would it cost in speed?
