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
# # Lesson 6: Data, from a folder on disk to batches
#
# Lesson 5 turned one image and one caption into model inputs. Training needs thousands of
# them, in a fresh order every epoch, stacked into batches; evaluation needs the same examples
# once, in a fixed order. And real datasets have broken lines, so reading one must say exactly
# where the problem is.
#
# **What you will learn**
#
# - The jsonl layout of big_vision's longcap100 (`image`, `prefix`, `suffix`), and how to read
#   it line by line with errors that name the file and line.
# - When to stop at the first bad line and when to skip and count.
# - Training order (shuffled, repeated forever) versus validation order (once, in order).
# - How examples become batches, and how to look at a batch to catch mistakes early.
#
# **Time:** about 30 minutes of reading and exercises; the cells run in under a minute on a
# laptop CPU.

# %% tags=["setup"]
import dataclasses
import itertools
import json
import pathlib
import tempfile
import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np

from solutions import scenes
from solutions.checkpoints import TINY_ASSETS
from solutions.data import (
    REQUIRED_FIELDS,
    DataError,
    DataStats,
    Example,
    train_examples,
    validation_examples,
)
from solutions.preprocess import TruncationStats, postprocess_tokens
from solutions.tokenizer import load_tokenizer
from tests.grading import check

# %% [markdown]
# ## 1. The source: a folder of jsonl files and images
#
# longcap100, the dataset of the PaliGemma fine-tuning notebook, is a folder: one jsonl file
# per split (one JSON object per line) and the images beside it. Each line names an image,
# relative to the folder, a `prefix` (the task prompt) and a `suffix` (the caption to learn).
#
# The course's scenes dataset (coloured shapes, described in words) is written in exactly that
# layout, so everything here works on longcap100 too. A small one goes into a temporary folder.

# %%
workdir = tempfile.TemporaryDirectory(prefix="scenes_")
DATA_DIR = pathlib.Path(workdir.name)
split_files = scenes.write_dataset(DATA_DIR, n_train=16, n_val=4, n_test=0)
for split, path in split_files.items():
    print(f"{split:5s} {path.name}: {len(path.read_text().splitlines())} lines")
print(f"images/: {len(list((DATA_DIR / 'images').iterdir()))} JPEG files")
first_line = split_files["train"].read_text().splitlines()[0]
print(json.dumps(json.loads(first_line), indent=2))

# %% [markdown]
# "objects" is an extra field the scenes add (the shapes as a list, for scoring); readers keep
# it aside and training ignores it. Here are the first four pictures with their captions.


# %%
def show_grid(images, captions, ncols=4, width=40):
    """Images (PIL, uint8, or floats in [-1, 1]) in a row-major grid, captions above them."""
    nrows = -(-len(images) // ncols)
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols, 4.6 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions, strict=False):
        pixels = np.asarray(image)
        ax.imshow(np.clip((pixels + 1) / 2, 0, 1) if pixels.dtype.kind == "f" else pixels)
        ax.set_title(textwrap.fill(caption, width), fontsize=7, loc="left")
    plt.show()


rows = [json.loads(line) for line in split_files["train"].read_text().splitlines()[:4]]
show_grid([plt.imread(DATA_DIR / row["image"]) for row in rows], [row["suffix"] for row in rows])

# %% [markdown]
# ## 2. One line, checked
#
# Hand-edited and generated jsonl files break in a handful of ways: a trailing comma or single
# quotes (not JSON), a missing field, a number where text belongs, or an image path that
# wanders out of the dataset folder (`../../home/you/.ssh/id_rsa`, by accident or not).
# Python's own message knows none of the context:

# %%
for text in (
    "{'image': 'images/a.jpg', 'prefix': 'caption en', 'suffix': 'a star'}",
    '{"image": "images/a.jpg", "prefix": "caption en",}',
):
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        print(f"json.loads: {error}")

# %% [markdown]
# Which file? Which of 90,000 lines? A reader that knows the layout can do better. It checks
# the fields every line must have and turns the line into an `Example`:

# %%
print("required fields:", REQUIRED_FIELDS)
print("Example fields: ", [field.name for field in dataclasses.fields(Example)])

# %% [markdown]
# The fix for the missing context is to carry a `source` string, `"file.jsonl:LINE"`, into every
# check and put it first in every message. `DataError` (a `ValueError`) marks these
# errors, so a caller can tell bad data from a bug.
#
# ### Exercise 6.1: parse one line
#
# Check one line and return an `Example(image_path, prefix, suffix, source, extra)`. Every
# problem raises `DataError(f"{source}: ...")` saying what is wrong and how to fix it:
#
# 1. not valid JSON (catch `json.JSONDecodeError`; `err.msg` and `err.colno` help);
# 2. valid JSON but not an object (`dict`), e.g. `[1, 2]`;
# 3. a field of `REQUIRED_FIELDS` missing, or not a string;
# 4. an image path that, resolved against `root`, is not inside `root`.
#
# `image_path` is absolute: `(root / record["image"]).resolve()`. The other fields of the
# line go to `extra`, a dict.


# %% tags=["exercise"]
def parse_line(text, source, root):
    """Checks one jsonl line and turns it into an `Example`.

    Args:
      text: the line, e.g. '{"image": "images/a.jpg", "prefix": "caption en", "suffix": "..."}'.
      source: where the line comes from, "file.jsonl:LINE", put in front of every error.
      root: the dataset folder, a pathlib.Path, absolute and resolved.
    Returns:
      Example(image_path=<absolute pathlib.Path>, prefix=..., suffix=..., source=source,
      extra=<dict of the other fields>).
    Raises:
      DataError: "<source>: <what is wrong>" for invalid JSON, a non-object, a missing or
        non-string field, or an image path outside root.
    """
    # Hint: check in the order things can go wrong: is it JSON, is it an object, is each required
    # field a string, and does the image path, once resolved (`..` and links followed), stay inside
    # root. Every error starts with `source`.
    raise NotImplementedError("Exercise 6.1")


# %% tags=["check"]
check("ex6_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 6.1</summary>
#
# ```python
# try:
#     record = json.loads(text)
# except json.JSONDecodeError as err:
#     raise DataError(f"{source}: not valid JSON ({err.msg})") from None  # no noisy chain
# image_path = (root / record["image"]).resolve()
# inside = image_path.is_relative_to(root)
# ```
#
# </details>

# %% [markdown]
# The same bad lines, through `parse_line`:

# %%
bad_lines = [
    "{'image': 'images/a.jpg', 'prefix': 'caption en', 'suffix': 'a star'}",
    '{"image": "images/a.jpg", "prefix": "caption en"}',
    '{"image": "../../home/you/.ssh/id_rsa", "prefix": "caption en", "suffix": "a star"}',
]
for number, text in enumerate(bad_lines, start=7):
    try:
        parse_line(text, f"data_train90.jsonl:{number}", DATA_DIR.resolve())
    except DataError as error:
        print(f"DataError: {error}\n")

# %% [markdown]
# ## 3. A whole file: stop, or skip and count
#
# Reading a file is parsing each line with its `source`. What to do with a bad line depends on
# who reads:
#
# - **`on_error="raise"`** (the default): stop at the first bad line. Right for your own
#   dataset, which should have none: fix it and run again.
# - **`on_error="skip"`**: leave bad lines out, count them by reason in a `DataStats`, and warn
#   once at the end. Right for a large scraped set where a few broken lines are expected; the
#   count says whether "a few" is really a few.
#
# Either way, a file with no usable line at all is an error, not an empty dataset.
#
# ### Exercise 6.2: read a jsonl file
#
# Number lines from 1 and count blank lines too (so numbers match an editor's), but skip
# blank lines themselves. The source of line `n` is `f"{path.name}:{n}"`. Image paths are
# relative to `root`, by default the jsonl file's folder; resolve it once.


# %% tags=["exercise"]
def read_jsonl(path, *, root=None, on_error="raise", stats=None):
    """Reads and checks a longcap100-style jsonl file.

    Args:
      path: the jsonl file (str or pathlib.Path).
      root: folder the image paths are relative to; default: the file's folder.
      on_error: "raise" to stop at the first bad line (its DataError propagates); "skip" to
        leave bad lines out, each counted in stats.skipped[reason] (reason: a short string,
        e.g. the message without its source), with one warnings.warn at the end.
      stats: a DataStats to count into (stats.read grows by the examples returned); when
        None, count into a fresh one.
    Returns:
      list[Example], in file order.
    Raises:
      ValueError: on_error is neither "raise" nor "skip".
      FileNotFoundError: path is not a file.
      DataError: a bad line (with on_error="raise"), or no usable example in the file.
    """
    # Hint: number the lines as you read them, from 1, so that every error can say where it is; let
    # parse_line judge each line, and let on_error decide whether its DataError stops everything or
    # is counted and skipped.
    raise NotImplementedError("Exercise 6.2")


# %% tags=["check"]
check("ex6_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 6.2</summary>
#
# ```python
# with path.open(encoding="utf-8") as lines:
#     for number, text in enumerate(lines, start=1):
#         ...  # parse_line(text, f"{path.name}:{number}", root) in try/except DataError
# reason = str(error).split(": ", 1)[-1]  # the message without its source
# ```
#
# </details>

# %% [markdown]
# A copy of the training file with two lines broken, read both ways:

# %%
good_lines = split_files["train"].read_text().splitlines()
broken_file = DATA_DIR / "data_train_broken.jsonl"
broken_file.write_text("\n".join([*good_lines[:3], bad_lines[0], *good_lines[3:9], bad_lines[1]]))

try:
    read_jsonl(broken_file)
except DataError as error:
    print(f'on_error="raise": DataError: {error}\n')

skip_stats = DataStats()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    kept = read_jsonl(broken_file, on_error="skip", stats=skip_stats)
print(f'on_error="skip": kept {len(kept)} examples; {skip_stats}')
print(f"warning: {caught[0].message}" if caught else "no warning")

# %% [markdown]
# Note what `read_jsonl` does *not* do: open the images. Decoding every image up front would be
# slow for a big set and would hold every picture in memory. The iterators below open each
# image when it is used, and a missing or damaged image gets a `DataError` naming its line too.
#
# ## 4. Order: training versus validation
#
# Training sees the examples again and again. In a fixed order, every batch would hold the same
# neighbours, epoch after epoch, and the same examples would always come last, just before each
# new pass; so each epoch gets a fresh shuffle. The stream never ends: the training loop decides
# how many steps to take, not the data. The shuffle is seeded, so a run can be repeated exactly.
#
# ### Exercise 6.3: shuffled epochs
#
# Yield one permutation of `0..num_examples-1` per epoch, forever, drawn with NumPy's seeded
# generator `np.random.default_rng(seed)`. Two things must hold at once: each epoch gets a new
# order, and the same seed replays the same stream of orders.


# %% tags=["exercise"]
def shuffled_epochs(num_examples, seed=0):
    """The order of training: a fresh shuffle of every example, epoch after epoch, forever.

    Args:
      num_examples: N, the size of the split.
      seed: the shuffle's seed; the same seed gives the same orders.
    Yields:
      int64[N], a permutation of 0..N-1, once per epoch, each epoch in a new order.
    """
    # Hint: the function never returns: it is a generator whose loop has no end. Where you create
    # the random generator decides whether the second epoch differs from the first.
    raise NotImplementedError("Exercise 6.3")


# %% tags=["check"]
check("ex6_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 6.3</summary>
#
# ```python
# rng = np.random.default_rng(seed)
# while True:
#     yield rng.permutation(num_examples)
# ```
#
# </details>

# %% [markdown]
# Four epochs of 16 examples: each row holds every example once, each in another order.

# %%
orders = np.stack(list(itertools.islice(shuffled_epochs(16, seed=0), 4)))
figure, ax = plt.subplots(figsize=(8, 2.4))
ax.imshow(orders, cmap="viridis")
for (epoch, position), index in np.ndenumerate(orders):
    ax.text(position, epoch, str(index), ha="center", va="center", fontsize=8, color="white")
ax.set_xlabel("position in the epoch")
ax.set_ylabel("epoch")
ax.set_title("example index at each step, shuffled_epochs(16, seed=0)")
plt.show()

# %% [markdown]
# `solutions.data.train_examples` follows exactly this order and preprocesses each example on
# the way (lesson 5): image to `float32[224, 224, 3]`, prompt and lowercased caption to tokens
# and masks. Its first example is the first index of epoch 0.

# %%
tokenizer = load_tokenizer(TINY_ASSETS / "tokenizer.model")
SEQLEN = 80  # the longest scene caption takes about 65 tokens (lesson 5)
train_files = read_jsonl(split_files["train"])
truncation = TruncationStats()
train_stream = train_examples(
    train_files, tokenizer=tokenizer, seqlen=SEQLEN, seed=0, truncation=truncation
)
first = next(train_stream)
for name, value in first.items():
    print(f"{name:10s} {value.dtype}{list(value.shape)}")
print("\ncaption of the first training example:")
print(" ", postprocess_tokens(first["text"][first["mask_loss"] == 1], tokenizer=tokenizer))
print("example", orders[0, 0], "of the file:")
print(" ", train_files[orders[0, 0]].suffix.lower())

# %% [markdown]
# Validation is the opposite: every example once, in file order, so two evaluations compare
# the same thing. Its rows are prompts only (the model writes the caption), and each keeps its
# reference `caption` and the `Example` (with its `source`) for scoring and for error messages.

# %%
val_files = read_jsonl(split_files["val"])
for row in validation_examples(val_files, tokenizer=tokenizer, seqlen=SEQLEN):
    prompt = postprocess_tokens(row["text"], tokenizer=tokenizer)
    print(
        f"{row['example'].source}: prompt {prompt!r}, mask_ar all 0: "
        f"{not row['mask_ar'].any()}, reference {row['caption'][:45]!r}..."
    )

# %% [markdown]
# ## 5. Batches
#
# The model takes a batch: the same dicts, each array stacked along a new first axis, `[B,
# ...]`. `batches` groups consecutive examples of any iterator, endless or not, and yields one
# dict per `batch_size` examples. Only numpy arrays are stacked: the `caption` string and the
# `Example` of validation rows stay behind. A short last batch (the split does not divide by
# `batch_size`) would have another shape and trigger a fresh compilation of the training step,
# so by default it is dropped; evaluation keeps it with `drop_remainder=False`.
#
# ### Exercise 6.4: batch examples


# %% tags=["exercise"]
def batches(examples, batch_size, *, drop_remainder=True):
    """Stacks consecutive example dicts into batch dicts of arrays [B, ...].

    Args:
      examples: an iterable (possibly endless) of dicts; their np.ndarray values are stacked,
        other values (strings, Examples) are left out.
      batch_size: B, at least 1.
      drop_remainder: drop a last batch smaller than batch_size (True), or yield it (False).
    Yields:
      dict name -> np.ndarray[B, ...] (the last one may have fewer rows when
      drop_remainder=False).
    Raises:
      ValueError: batch_size < 1 (when iteration starts).
    """
    # Hint: keep a buffer of examples; each time it holds batch_size of them, turn it into one dict
    # of stacked arrays and start a new buffer. What happens to a short buffer at the end is
    # drop_remainder's choice.
    raise NotImplementedError("Exercise 6.4")


# %% tags=["check"]
check("ex6_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 6.4</summary>
#
# ```python
# keys = [k for k, v in chunk[0].items() if isinstance(v, np.ndarray)]
# yield {k: np.stack([example[k] for example in chunk]) for k in keys}
# ```
#
# </details>

# %% [markdown]
# One training batch of 8 and its shapes:

# %%
batch = next(batches(train_stream, 8))
for name, value in batch.items():
    print(f"{name:10s} {value.dtype}{list(value.shape)}")
print(truncation)

# %% [markdown]
# ## 6. Look at a batch before training on it
#
# Shapes can all be right while the content is wrong: captions paired with the wrong images,
# an image upside down, captions cut short. The cheapest check there is: decode what the model
# will actually see. Below, each image of the batch (back from [-1, 1]) with the caption
# decoded from its tokens, the part where `mask_loss` is 1, exactly what the loss scores.

# %%
learned = [
    postprocess_tokens(text[mask_loss == 1], tokenizer=tokenizer)
    for text, mask_loss in zip(batch["text"], batch["mask_loss"], strict=True)
]
show_grid(list(batch["image"]), learned)

# %% [markdown]
# And one row token by token, with its masks, as the decoder reads it:

# %%
row = 0
real = batch["mask_input"][row] == 1
print(f"{int(real.sum())} real tokens of {SEQLEN}, then padding")
for token, ar, loss in itertools.islice(
    zip(batch["text"][row][real], batch["mask_ar"][row], batch["mask_loss"][row], strict=False),
    12,
):
    piece = tokenizer.id_to_piece(int(token)).replace("\n", "\\n")
    print(f"  {int(token):5d} {piece:12s} mask_ar {ar} mask_loss {loss}")
print("  ...")

# %% [markdown]
# ## What you built
#
# - `parse_line`: one jsonl line to an `Example`, or a `DataError` that names file, line and
#   fix; image paths cannot escape the dataset folder.
# - `read_jsonl`: a whole file, strict by default or skip-and-count for messy data.
# - `shuffled_epochs`: the seeded, endless, reshuffled order of training.
# - `batches`: examples into `[B, ...]` batch dicts, remainder dropped or kept.
#
# With lesson 5's preprocessing these make the training and validation streams the loop of
# lesson 7 consumes.
#
# ## Go further
#
# 1. `train_examples` decodes each JPEG and resizes it again every epoch. Where would you cache,
#    and what would it cost in memory for 90 images at 224 x 224? At 896 x 896?
# 2. Shuffling within an epoch gives each example once per epoch. What changes if you instead
#    draw every example independently at random (with replacement)?
# 3. With `on_error="skip"`, when would you still want training to stop? Write a check on
#    `DataStats` that fails when more than 1% of lines are skipped.
# 4. Evaluation keeps the short last batch, which triggers one more compilation. How could you
#    pad it to full size instead, and how would you keep padded rows out of the metrics?
