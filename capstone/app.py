"""The captioning app: upload images, or pick sample scenes, and read the model's captions.

    streamlit run capstone/app.py          # or `make app`; then open http://localhost:8501

The sidebar picks the model (the shipped tiny PaliGemma, the latest fine-tune
run in ./runs, a checkpoint file, or a real PaliGemma whose files are on disk)
and the decoding settings. Each image gets its caption and the time it took;
the table downloads as CSV or JSON Lines. The page only draws: reading,
loading and captioning live in `solutions/app.py`.

Environment variables: COURSE_TINY_ASSETS (the tiny model's folder, default
capstone/assets/tiny), COURSE_RUNS_DIR (default ./runs) and
PALIGEMMA_CHECKPOINT_DIR (where real checkpoints and their tokenizer sit).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import streamlit as st
from PIL import Image

from solutions import app
from solutions.configs import CHECKPOINTS

CHECKPOINT_CHOICE = "a checkpoint file..."
GALLERY_SIZE = 6


@st.cache_resource(max_entries=1, show_spinner="Loading the model and compiling its decoder...")
def cached_captioner(
    label: str, architecture: str, checkpoint: str, stamp: float, assets: str
) -> app.Captioner:
    """The model, loaded and warmed up once; `stamp` (the weights file's mtime) makes
    rewritten weights load again. One model at a time: a real one fills the memory."""
    source = app.ModelSource(label, architecture, pathlib.Path(checkpoint) if checkpoint else None)
    captioner = app.load_captioner(source, pathlib.Path(assets))
    captioner.warm_up()
    return captioner


@st.cache_resource
def cached_gallery() -> list[app.GalleryImage]:
    return app.gallery(GALLERY_SIZE)


def choose_source() -> app.ModelSource | None:
    """The sidebar's model picker; None until a checkpoint path is typed."""
    sources = app.model_sources()
    labels = [source.label for source in sources] + [CHECKPOINT_CHOICE]
    label = st.sidebar.selectbox("Model", labels, key="model")
    if label != CHECKPOINT_CHOICE:
        return sources[labels.index(label)]
    path = st.sidebar.text_input(
        "Checkpoint (.npz)", key="checkpoint", placeholder="runs/mine/checkpoint.npz"
    ).strip()
    architecture = st.sidebar.selectbox(
        "Fine-tuned from", ["tiny", *CHECKPOINTS], key="architecture"
    )
    if not path:
        st.sidebar.info("Type the path of a .npz checkpoint.")
        return None
    checkpoint = pathlib.Path(path).expanduser()
    return app.ModelSource(str(checkpoint), architecture, checkpoint)


def load(source: app.ModelSource) -> app.Captioner | None:
    """The cached captioner, or None after showing why it cannot load."""
    checkpoint = source.checkpoint
    weights = checkpoint or app.tiny_assets_dir() / "params.npz"
    stamp = weights.stat().st_mtime if weights.is_file() else 0.0
    try:
        return cached_captioner(
            source.label,
            source.architecture,
            str(checkpoint or ""),
            stamp,
            str(app.tiny_assets_dir()),
        )
    except app.ModelSourceError as error:
        st.error(str(error))
        return None


def decoding_controls() -> dict:
    """The sidebar's prompt and decoding settings, as `Captioner.caption` keywords."""
    bar = st.sidebar
    prefix = bar.text_input("Prompt prefix", app.DEFAULT_PREFIX, key="prefix")
    mode = bar.radio("Decoding", ["greedy", "sampling"], horizontal=True, key="mode")
    sampler, seed = app.GREEDY, 0
    if mode == "sampling":
        temperature = bar.slider("Temperature", 0.05, 2.0, 1.0, 0.05, key="temperature")
        top_k = bar.number_input("Top-k (0 = all tokens)", 0, 100_000, 0, key="top_k")
        top_p = bar.slider("Top-p (1 = all tokens)", 0.05, 1.0, 1.0, 0.05, key="top_p")
        seed = int(bar.number_input("Seed", 0, 2**31 - 1, 0, key="seed"))
        sampler = app.sampler_from_controls(mode, temperature, int(top_k), top_p)
    max_len = bar.slider("Max length (tokens)", 1, 128, app.DEFAULT_MAX_LEN, key="max_len")
    return {"prefix": prefix, "sampler": sampler, "max_len": max_len, "seed": seed}


def chosen_samples() -> list[app.GalleryImage]:
    """Sample scenes in a row, each with a checkbox; returns the ticked ones."""
    st.write("...or pick sample scenes:")
    samples = cached_gallery()
    chosen = []
    for index, (column, sample) in enumerate(zip(st.columns(len(samples)), samples, strict=True)):
        column.image(sample.image, caption=sample.name, width="stretch")
        hint = f"Reference: {sample.reference}"
        if column.checkbox("caption it", key=f"sample_{index}", help=hint):
            chosen.append(sample)
    return chosen


def show_one(
    captioner: app.Captioner, name: str, read: Callable[[], Image.Image], settings: dict
) -> app.CaptionRow | None:
    """One image's box: the image, its caption and time, or a message in their place."""
    with st.container(border=True):
        try:
            image = read()
        except app.ImageInputError as error:
            st.error(str(error))
            return None
        left, right = st.columns([1, 2])
        left.image(image, caption=name, width="stretch")
        try:
            with st.spinner(f"Captioning {name}..."):
                text, seconds = captioner.caption([image], **settings)[0]
        except ValueError as error:  # e.g. a prefix the tokenizer cannot fit
            right.error(f"{name} could not be captioned: {error}")
            return None
        right.text(text or "(the model wrote nothing)")
        right.caption(f"{seconds:.2f} s")
        return app.CaptionRow(name, text, seconds)


def downloads(rows: list[app.CaptionRow]) -> None:
    csv_column, jsonl_column = st.columns(2)
    csv_column.download_button(
        "Download CSV",
        app.captions_csv(rows),
        "captions.csv",
        "text/csv",
        on_click="ignore",
        key="csv",
    )
    jsonl_column.download_button(
        "Download JSONL",
        app.captions_jsonl(rows),
        "captions.jsonl",
        "application/jsonl",
        on_click="ignore",
        key="jsonl",
    )


def main() -> None:
    st.set_page_config(page_title="PaliGemma captions", layout="wide")
    st.title("Caption images with PaliGemma")
    st.sidebar.header("Model")
    source = choose_source()
    summary = st.sidebar.empty()  # filled once the model is loaded
    settings = decoding_controls()
    uploads = st.file_uploader(
        "Upload images (JPEG, PNG, WebP, GIF)",
        type=list(app.ACCEPTED_EXTENSIONS),
        accept_multiple_files=True,
        key="uploads",
    )
    samples = chosen_samples()
    # Loaded last, so the page is usable while the model loads on the first visit.
    captioner = load(source) if source is not None else None
    if captioner is None:
        return
    summary.text(captioner.summary)
    items = [(up.name, lambda up=up: app.read_upload(up.getvalue(), up.name)) for up in uploads]
    items += [(sample.name, lambda sample=sample: sample.image) for sample in samples]
    rows = [row for name, read in items if (row := show_one(captioner, name, read, settings))]
    if rows:
        downloads(rows)


if __name__ == "__main__":
    main()
