"""Writing a scenes dataset in longcap100's layout, looking at examples, and the command
line `python -m solutions.scenes OUT_DIR`."""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import pathlib
import textwrap
from collections.abc import Iterable, Sequence

import numpy as np

from solutions.files import write_atomic
from solutions.scenes.captions import CAPTIONS, objects_text
from solutions.scenes.render import render_scene
from solutions.scenes.world import check_choice, example_seed, sample_scene


def _make_example(task: tuple) -> dict:
    """Samples, renders and saves one example; returns its jsonl row."""
    out_dir, split, index, seed, caption, prefix, image_size = task
    scene = sample_scene(example_seed(seed, split, index), split=split)
    relative = f"images/{split}_{index:05d}.jpg"
    buffer = io.BytesIO()
    render_scene(scene, image_size).save(buffer, "JPEG", quality=90)
    write_atomic(pathlib.Path(out_dir) / relative, buffer.getvalue())
    return {
        "image": relative,
        "prefix": prefix,
        "suffix": CAPTIONS[caption](scene),
        "objects": objects_text(scene),
    }


def jsonl_name(split: str, n: int) -> str:
    """longcap100's file names: data_train90.jsonl, data_val10.jsonl (and data_test50.jsonl)."""
    return f"data_{split}{n}.jsonl"


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 90,
    n_val: int = 10,
    n_test: int = 50,
    caption: str = "long",
    seed: int = 0,
    prefix: str = "caption en",
    image_size: int = 224,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, pathlib.Path]:
    """Writes images and one jsonl file per split in longcap100's layout; returns the jsonl paths.

    out_dir/
      data_train{n_train}.jsonl   {"image": "images/train_00000.jpg", "prefix": "caption en",
      data_val{n_val}.jsonl        "suffix": <caption>, "objects": <objects_text>}
      data_test{n_test}.jsonl     (held-out colour-kind pairs, see HELD_OUT_PAIRS)
      images/{split}_{index:05d}.jpg   JPEG, quality 90, image_size x image_size

    The defaults give longcap100's names exactly; other counts change the
    number in the name. Image paths are relative to out_dir. "objects" is a
    plain string, so readers of longcap100 that ignore or tensorise extra
    fields keep working. Running again with the same arguments rewrites the
    same bytes; every file is replaced atomically (images left by an earlier,
    bigger run stay, unreferenced). A split with n == 0 is not written.
    `workers` > 1 renders in that many spawned processes; a script that asks
    for them needs the `if __name__ == "__main__":` guard.
    """
    check_choice(caption, CAPTIONS, "caption")
    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    tasks = [
        (str(out), split, i, seed, caption, prefix, image_size)
        for split, n in counts.items()
        for i in range(n)
    ]
    rows = _run_tasks(tasks, workers, progress)
    paths, start = {}, 0
    for split, n in counts.items():
        if n:
            lines = "".join(json.dumps(row) + "\n" for row in rows[start : start + n])
            paths[split] = out / jsonl_name(split, n)
            write_atomic(paths[split], lines.encode())
        start += n
    return paths


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="img", disable=not progress)
    if workers <= 1:
        rows = []
        for task in tasks:
            rows.append(_make_example(task))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = []
            for row in pool.imap(_make_example, tasks, chunksize=32):
                rows.append(row)
                bar.update()
    bar.close()
    return rows


# ----------------------------------------------------------------------------- looking at examples


def show_examples(examples: Iterable[tuple], ncols: int = 4, width: int = 36):
    """A matplotlib Figure of (image, caption) pairs, captions wrapped to `width` characters.

    Images may be PIL images or uint8/float arrays[H, W, 3]; floats in [-1, 1]
    (the model's input range) are shown as they would look in [0, 1].
    """
    from matplotlib.figure import Figure

    examples = list(examples)
    nrows = max(1, math.ceil(len(examples) / ncols))
    figure = Figure(figsize=(3 * ncols, 4.2 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image, caption) in zip(axes, examples, strict=False):  # spare axes stay blank
        pixels = np.asarray(image)
        if pixels.dtype.kind == "f":
            pixels = np.clip((pixels + 1) / 2, 0, 1)
        ax.imshow(pixels)
        ax.set_title(textwrap.fill(caption, width), fontsize=7, loc="left", wrap=False)
    return figure


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m solutions.scenes",
        description="Write the shapes captioning dataset in longcap100's layout.",
    )
    parser.add_argument("out_dir", help="folder for the jsonl files and images/")
    parser.add_argument("--train", type=int, default=90, help="training examples")
    parser.add_argument("--val", type=int, default=10, help="validation examples")
    parser.add_argument("--test", type=int, default=50, help="held-out-combination examples")
    parser.add_argument("--caption", choices=sorted(CAPTIONS), default="long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="caption en", help="the task prompt of every row")
    parser.add_argument("--image-size", type=int, default=224, help="pixels per side")
    parser.add_argument("--workers", type=int, default=1, help="processes that render images")
    args = parser.parse_args(argv)
    paths = write_dataset(
        args.out_dir,
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        caption=args.caption,
        seed=args.seed,
        prefix=args.prefix,
        image_size=args.image_size,
        workers=args.workers,
        progress=True,
    )
    for split, path in paths.items():
        print(f"{split}: {path}")
