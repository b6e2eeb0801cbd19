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
# # Lesson 2: Downloads
#
# The fine-tuning notebook starts by fetching three things: a PaliGemma
# checkpoint from Kaggle, the tokenizer from big_vision's public bucket, and
# longcap100, a small captioning dataset, from its own bucket. Several gigabytes,
# a gated license and a network that may or may not be there: this is where most
# first attempts fail. This lesson shows how the course fetches each file so that
# a second run needs no network, a damaged file is caught, and every failure says
# what to do. Then it opens the files the course ships so that nothing has to be
# downloaded at all: a tiny PaliGemma and a generated dataset in longcap100's layout.
#
# ## What you will learn
#
# - what a versioned Kaggle handle pins down, and where kagglehub keeps the file;
# - how a SHA-256 checksum tells a whole file from a damaged one;
# - how to write a file so that a crash never leaves half of it behind;
# - what Kaggle's refusals mean (offline, no credentials, license not accepted),
#   seen without any network;
# - what the course ships instead: the tiny model and the scenes dataset.
#
# **Time:** about 40 minutes. Every cell runs in seconds on a laptop CPU, offline.

# %% tags=["setup"]
# hashlib and get_checkpoint are for your solutions.
import hashlib  # noqa: F401
import os
import pathlib

from solutions.configs import Checkpoint, get_checkpoint  # noqa: F401
from tests.grading import check

# %%
# isort: split
import contextlib
import io
import json
import shutil
import tempfile
import textwrap
import urllib.error
import urllib.request
from unittest import mock

import kagglehub.config
import matplotlib.pyplot as plt
import requests
from IPython.display import Markdown, display

from solutions import scenes
from solutions.checkpoints import TINY_ASSETS
from solutions.configs import CHECKPOINTS
from solutions.downloads import (
    CHECKPOINT_DIR_ENV,
    LONGCAP100_SPLITS,
    LONGCAP100_URL,
    TOKENIZER_URL,
    DownloadError,
    checkpoint_on_disk,
    download_checkpoint,
    download_longcap100,
    download_tokenizer,
)
from solutions.gemma import gemma_config
from solutions.model import Model, count_params, param_shapes
from solutions.siglip import vit_config

# %% [markdown]
# ## Three files, three homes
#
# | what | where | login |
# | --- | --- | --- |
# | checkpoint (`.npz`, gigabytes) | Kaggle, via the `kagglehub` library | API key + license |
# | tokenizer (`paligemma_tokenizer.model`, 4 MB) | big_vision's bucket `gs://big_vision` | none |
# | longcap100 (2 jsonl files + 100 images) | its bucket `gs://longcap100` | none |
#
# The buckets are public and are read over plain HTTPS:

# %%
print("tokenizer :", TOKENIZER_URL)
for split in LONGCAP100_SPLITS:
    print("longcap100:", LONGCAP100_URL + split)

# %% [markdown]
# ## Checkpoints and versioned handles
#
# On Kaggle a model file is named by a *handle*,
# `owner/model/framework/variation/version`, e.g.
# `google/paligemma-2/jax/paligemma2-3b-pt-224/1`. The version matters: a handle
# without it means "the latest", so kagglehub must ask Kaggle which version that
# is on every call (no network, no answer), and the file you get could change
# under you. With the version, the handle names exactly one file forever, and a
# copy already on disk can be used without asking anyone.
#
# `solutions.configs.CHECKPOINTS` lists the released checkpoints with their
# versioned handles:

# %%
for name, checkpoint in CHECKPOINTS.items():
    print(f"{name:24} {checkpoint.kaggle_handle:48} {checkpoint.filename}")

# %% [markdown]
# How big are they? Each parameter is stored in 16 bits (float16 for PaliGemma 1,
# bfloat16 for PaliGemma 2), so the file is about 2 bytes per parameter.
# `param_shapes` counts the parameters with `jax.eval_shape`, without allocating
# them. The course's own tiny model, stored the same way, is on the chart too
# (note the log scale).

# %%
param_counts, sizes_gb = {}, {}
for name in ("paligemma-3b-pt-224", "paligemma2-3b-pt-224", "paligemma2-10b-pt-224"):
    checkpoint = CHECKPOINTS[name]
    param_counts[name] = count_params(param_shapes(Model(**checkpoint.config), 224))
    sizes_gb[name] = 2 * param_counts[name] / 1e9
    print(f"{name:24} {param_counts[name]:>14,} parameters  ~{sizes_gb[name]:.1f} GB")
sizes_gb["course tiny model"] = (TINY_ASSETS / "params.npz").stat().st_size / 1e9

fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
ax.barh(list(sizes_gb), list(sizes_gb.values()), color=["tab:blue"] * 3 + ["tab:green"])
ax.set_xscale("log")
ax.set_xlabel("download size (GB, log scale)")
for y, gb in enumerate(sizes_gb.values()):
    ax.text(gb, y, f" {gb:.3g} GB", va="center")
ax.invert_yaxis()
plt.show()

# %% [markdown]
# ## Where kagglehub keeps a file
#
# `kagglehub.model_download(handle, path=filename)` downloads into a cache
# folder and returns the file's path. The cache folder is `$KAGGLEHUB_CACHE`, or
# `~/.cache/kagglehub` when that variable is not set, and inside it each handle
# gets its own folders:
#
# ```
# <cache>/models/<owner>/<model>/<framework>/<variation>/<version>/<filename>
# ```
#
# Knowing where the file will land lets you check for it before anything is
# downloaded, copy it to another machine, or delete it to free 6 GB.
#
# ### Exercise 2.1: the cached path of a checkpoint
#
# Write `kaggle_cache_path(name_or_checkpoint)`: given a checkpoint name such as
# `"paligemma2-3b-pt-224"` (look it up with `get_checkpoint`) or a `Checkpoint`,
# return the path where kagglehub keeps its file, whether or not it is there.


# %% tags=["exercise"]
def kaggle_cache_path(name_or_checkpoint: str | Checkpoint) -> pathlib.Path:
    """Where kagglehub keeps a checkpoint's .npz once downloaded (present or not).

    The layout, for a versioned handle `owner/model/framework/variation/version`:

        $KAGGLEHUB_CACHE/models/owner/model/framework/variation/version/<filename>

    with `$KAGGLEHUB_CACHE` defaulting to ~/.cache/kagglehub. kagglehub counts
    the file as complete only once it has also written the marker
    `.../variation/.complete/version/<filename>.complete`.
    """
    # Hint: a name is looked up with get_checkpoint, a Checkpoint is used as it is. The five parts
    # of the versioned handle already are the folder names, in order; only the cache folder itself
    # depends on the environment.
    raise NotImplementedError("Exercise 2.1")


# %% tags=["check"]
check("ex2_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 2.1</summary>
#
# ```python
# cache = os.environ.get("KAGGLEHUB_CACHE") or pathlib.Path.home() / ".cache" / "kagglehub"
# parts = checkpoint.kaggle_handle.split("/")
# return pathlib.Path(cache, "models", *parts, checkpoint.filename)
# ```
#
# </details>

# %% [markdown]
# A file at that path may still be partial: kagglehub writes in place and resumes
# a broken transfer, and marks a finished file with an empty `.complete` file next
# to the version folder. So the course's `download_checkpoint` looks in this
# order, touching the network only in the last step:
#
# 1. a folder you chose (`cache_dir=`, or `$PALIGEMMA_CHECKPOINT_DIR`), where a copy
#    made on another machine can simply be dropped;
# 2. kagglehub's cache, when the file is marked complete;
# 3. `kagglehub.model_download` with the versioned handle.
#
# It never passes `force_download=True`: offline, kagglehub would delete the
# cached copy first and then fail, turning a working setup into a broken one.
# `checkpoint_on_disk` tells whether steps 1-2 will find the file. The next cell
# loads the real checkpoint's path only when it is already there.

# %%
name = "paligemma2-3b-pt-224"
found = checkpoint_on_disk(name)
if found is not None:
    path = download_checkpoint(name)  # on disk already: no network
    print(f"{name} is here: {path} ({path.stat().st_size / 1e9:.2f} GB)")
else:
    print(
        f"Skipped: {name} is not on this machine. download_checkpoint({name!r}) would fetch "
        f"~{sizes_gb[name]:.1f} GB from Kaggle (API key and license needed, see lesson 1) into\n"
        f"  {kaggle_cache_path(name)}\n"
        f"or into ${CHECKPOINT_DIR_ENV} when that variable names a folder."
    )

# %% [markdown]
# ## Checksums
#
# A download can be cut short, a disk can flip a bit, a file can be replaced by
# another with the same name. A *checksum* catches all three: SHA-256 turns any
# number of bytes into 32 bytes (64 hex digits), and a single changed bit changes
# about half of them. Compare the digest with one you trust and you know the file
# is exactly the one you expect.
#
# ### Exercise 2.2: SHA-256 of a file
#
# Write `sha256_file(path)`. A checkpoint is several gigabytes, so do not read it
# in one go: feed `hashlib.sha256()` one chunk of 1 MiB at a time.


# %% tags=["exercise"]
def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes as 64 lowercase hex digits, as `sha256sum` prints it.

    The file is read in 1 MiB chunks, so a checkpoint of many gigabytes needs
    no more memory than a small file.
    """
    # Hint: a digest can be fed piece by piece: update it with each chunk as you read it, and stop
    # when a read returns no bytes. Open the file in binary mode.
    raise NotImplementedError("Exercise 2.2")


# %% tags=["check"]
check("ex2_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 2.2</summary>
#
# ```python
# digest = hashlib.sha256()
# with open(path, "rb") as file:
#     while chunk := file.read(1 << 20):
#         digest.update(chunk)
# return digest.hexdigest()
# ```
#
# </details>

# %% [markdown]
# Flip one bit of the shipped model's weights and hash both versions: the two
# digests share nothing you could see by eye.

# %%
with tempfile.TemporaryDirectory() as tmp:
    original = TINY_ASSETS / "params.npz"
    damaged = pathlib.Path(tmp) / "params.npz"
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0b0000_0001
    damaged.write_bytes(data)
    print("original:", sha256_file(original))
    print("one bit :", sha256_file(damaged))

# %% [markdown]
# Where do trusted digests come from? Each source handles it differently:
#
# - **Kaggle** sends the file's MD5 along with it (when it has one) and kagglehub
#   compares it as it downloads; a mismatch becomes `DataCorruptionError`, which
#   the course turns into "arrived corrupted; run this again".
# - **Cloud Storage** sends the MD5 in an `x-goog-hash` header, and the course
#   compares it, and the length, before the file gets its final name.
# - **The tokenizer** has no published checksum, so the course checks its
#   *content* (257,152 pieces, `<loc0000>` at id 256,000, ...), then records its
#   SHA-256 in `paligemma_tokenizer.model.sha256` and compares on every later load.
#
# Content checks also catch the wrong file under the right name. Here the course's
# tiny tokenizer is put where PaliGemma's should be:

# %%
with tempfile.TemporaryDirectory() as tmp:
    shutil.copy(TINY_ASSETS / "tokenizer.model", pathlib.Path(tmp) / "paligemma_tokenizer.model")
    try:
        download_tokenizer(tmp)  # the file is there, so it is checked, not downloaded
    except DownloadError as err:
        print(textwrap.fill(str(err), 100))

# %% [markdown]
# ## Atomic writes
#
# `open(path, "w")` empties the file the moment it opens it. If the program dies
# before the last byte (Ctrl-C, a full disk, a dropped connection), what remains
# is a truncated file at the final path, and the next run happily uses it. The
# fix is old and simple: write everything to a temporary file in the same folder,
# then `os.replace` it onto the final name. On one file system a rename is
# atomic: readers see the old file or the new one, never a mix. Every file the
# course writes (downloads, datasets, checkpoints, reports) goes through it.
#
# ### Exercise 2.3: write a file atomically
#
# Write `write_atomic(path, data)` for `data` that is `str` (write it as UTF-8) or
# `bytes`. Create missing parent folders, write to a temporary name in the same
# folder, rename it onto `path`, and make sure the temporary file is gone
# afterwards, even when writing fails.


# %% tags=["exercise"]
def write_atomic(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Writes `data` to `path` through a temporary file in the same folder and a
    rename: readers see the old file or the new one, never a partial one.

    Creates missing parent folders; removes the temporary file if writing fails.
    """
    # Hint: write the new bytes where no reader of `path` looks, in the same folder (a rename is
    # atomic only within one file system), then put them in place with one rename. The temporary
    # file must be gone afterwards whether or not that worked.
    raise NotImplementedError("Exercise 2.3")


# %% tags=["check"]
check("ex2_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 2.3</summary>
#
# ```python
# tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
# try:
#     ...  # write data to tmp: write_text(..., encoding="utf-8") or write_bytes(...)
#     os.replace(tmp, path)
# finally:
#     tmp.unlink(missing_ok=True)
# ```
#
# </details>

# %% [markdown]
# The difference, shown with a write that fails halfway (a string that UTF-8
# cannot encode stands in for a crash):

# %%
with tempfile.TemporaryDirectory() as tmp:
    for how in ("open(path, 'w')", "write_atomic"):
        path = pathlib.Path(tmp) / "captions.txt"
        path.write_text("90 good captions\n")
        try:
            if how == "write_atomic":
                write_atomic(path, "new captions \ud800")
            else:
                with open(path, "w", encoding="utf-8") as file:
                    file.write("new captions \ud800")
        except UnicodeEncodeError:
            pass
        print(f"{how:16} after a failed write, the file holds: {path.read_text()!r}")

# %% [markdown]
# ## When the download fails
#
# Kaggle answers a refused download with an HTTP status code, and the same code
# can need different fixes:
#
# | status | credentials found | meaning | fix |
# | --- | --- | --- | --- |
# | 401 or 403 | no | the request was anonymous | create and install an API key (lesson 1) |
# | 401 | yes | the key was not accepted | the key is wrong or revoked: make a new one |
# | 403 | yes | the key is fine, the license is not accepted | accept it on the model page |
# | 404 | either | no such file | the handle's variation or version is wrong |
# | none | either | no answer at all | offline, DNS or a proxy |
# | other | either | Kaggle's own trouble | try again later |
#
# ### Exercise 2.4: what went wrong?
#
# Write `kaggle_failure_kind(status, *, has_credentials)` that returns the kind
# of failure for the table's rows: `"credentials"`, `"rejected"`, `"license"`,
# `"missing"`, `"network"` or `"server"`. `status` is None when no HTTP answer
# came back. `download_checkpoint` picks its error message with this function.


# %% tags=["exercise"]
def kaggle_failure_kind(status: int | None, *, has_credentials: bool) -> str:
    """What Kaggle's answer to a checkpoint download means, read from its HTTP status.

    PaliGemma is gated, so Kaggle refuses in ways that need different fixes:

        status      credentials  kind           what to do
        401 or 403  none found   "credentials"  create an API token and install it
        401         found        "rejected"     the key is wrong or revoked: make a new one
        403         found        "license"      accept the license on the model's page
        404         either       "missing"      the handle's variation or version is wrong
        None        either       "network"      no answer at all: offline, DNS or a proxy
        other       either       "server"       Kaggle's own trouble: try again later

    Without credentials a request is anonymous, and Kaggle refuses anonymous
    requests for gated models with 401 or 403; either way the key is what is
    missing, not the license.

    Args:
      status: the HTTP status code, or None when no HTTP answer came back.
      has_credentials: whether kagglehub found credentials before the request.
    Returns:
      One of the kinds above.
    """
    # Hint: the table's rows overlap: settle the most specific one first (no credentials with 401 or
    # 403); what is left maps a status to a kind, with one default for every status the table does
    # not name.
    raise NotImplementedError("Exercise 2.4")


# %% tags=["check"]
check("ex2_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 2.4</summary>
#
# ```python
# return {401: "rejected", 403: "license", 404: "missing"}.get(status, "server")
# ```
#
# </details>

# %% [markdown]
# Now the real messages, without a network. kagglehub talks to Kaggle through
# `requests.Session.send`, and nothing else touches the network, so replacing
# that one method with a function that plays Kaggle's part shows exactly what a
# learner would see. The sandbox below also gives kagglehub an empty home, cache
# and credentials folder, so your real key and cache are not involved. (The
# course's own tests use the same trick.)


# %%
@contextlib.contextmanager
def kaggle_played_locally(answer: int | Exception, *, credentials: bool):
    """Within the block, every request kagglehub sends gets `answer`: an HTTP status
    code, or an exception raised as a failed connection would raise it."""

    def send(session, request, **kwargs):
        if isinstance(answer, Exception):
            raise answer
        response = requests.Response()
        response.status_code, response.url, response.request = answer, request.url, request
        response.headers["Content-Type"] = "application/json"
        response.raw = io.BytesIO(json.dumps({"code": answer, "message": "refused"}).encode())
        return response

    with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ):
        for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", CHECKPOINT_DIR_ENV):
            os.environ.pop(variable, None)
        os.environ.update(
            HOME=home, KAGGLE_CONFIG_DIR=f"{home}/.kaggle", KAGGLEHUB_CACHE=f"{home}/cache"
        )
        if credentials:
            os.environ.update(KAGGLE_USERNAME="learner", KAGGLE_KEY="not-a-real-key")
        with (
            mock.patch.object(requests.Session, "send", send),
            mock.patch.object(kagglehub.config, "_kaggle_credentials", None),
        ):
            yield


cases = [
    ("offline", requests.ConnectionError("Failed to resolve 'www.kaggle.com'"), False, None),
    ("no credentials", 401, False, 401),
    ("license not accepted", 403, True, 403),
]
for title, answer, credentials, status in cases:
    kind = kaggle_failure_kind(status, has_credentials=credentials)
    with kaggle_played_locally(answer, credentials=credentials):
        try:
            download_checkpoint("paligemma2-3b-pt-224")
        except DownloadError as err:
            print(f"--- {title} (kind {kind!r})")
            print(textwrap.fill(str(err), 100))

# %% [markdown]
# The public buckets fail in their own way: no login is involved, so any refusal
# points at the network, and the message gives the `gsutil` command that copies
# the file by hand. Here `urllib.request.urlopen`, the one call that fetches
# them, fails as it does offline:


# %%
def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


with tempfile.TemporaryDirectory() as tmp, mock.patch.object(urllib.request, "urlopen", offline):
    try:
        download_tokenizer(tmp)
    except DownloadError as err:
        print(textwrap.fill(str(err), 100))

# %% [markdown]
# With a network, an API key and the license accepted, each download is one call
# (the cell runs only when you set `FETCH = True`: the checkpoint is ~6 GB):
#
# ```python
# download_checkpoint("paligemma2-3b-pt-224")   # -> path of the .npz
# download_tokenizer("data")                    # -> data/paligemma_tokenizer.model
# download_longcap100("data/longcap100")        # -> the folder, jsonl files and images
# ```

# %%
FETCH = False
if FETCH:
    print(download_checkpoint("paligemma2-3b-pt-224"))
    print(download_tokenizer("data"))
    print(download_longcap100("data/longcap100"))
else:
    print("Skipped: set FETCH = True to download the real files (network and Kaggle key needed).")

# %% [markdown]
# ## What the course ships instead
#
# Everything after this lesson runs without those downloads. The repository
# holds a tiny PaliGemma in `capstone/assets/tiny`: the same architecture,
# trained briefly on the course's scenes, in big_vision's checkpoint format.

# %%
for file in sorted(TINY_ASSETS.iterdir()):
    print(f"{file.name:16} {file.stat().st_size:>10,} bytes  sha256 {sha256_file(file)[:16]}...")

# %% [markdown]
# Its model card says how it was made and how well it does; `config.json` holds
# the model config in the same `{"img": ..., "llm": ...}` form as the real ones.

# %%
display(Markdown((TINY_ASSETS / "MODEL_CARD.md").read_text()))

# %%
tiny_config = json.loads((TINY_ASSETS / "config.json").read_text())
real = CHECKPOINTS["paligemma-3b-pt-224"]
resolve = {"img": vit_config, "llm": gemma_config}  # a variant name -> every size field
print(f"{'':18}{'PaliGemma 1 3B':>16}{'course tiny':>16}")
for tower, fields in (
    ("img", ("width", "depth", "patch_size")),
    ("llm", ("width", "depth", "mlp_dim", "num_heads", "vocab_size")),
):
    real_sizes = resolve[tower](**real.config[tower])
    tiny_sizes = resolve[tower](**tiny_config["config"][tower])
    for field in fields:
        print(f"{tower}.{field:14}{real_sizes[field]!s:>16}{tiny_sizes[field]!s:>16}")
print(f"{'resolution':18}{real.resolution:>16}{tiny_config['resolution']:>16}")
tiny_count = count_params(param_shapes(Model(**tiny_config["config"]), tiny_config["resolution"]))
print(f"{'parameters':18}{param_counts[real.name]:>16,}{tiny_count:>16,}")

# %% [markdown]
# ## The scenes dataset
#
# longcap100 pairs 100 photos with long, detailed captions. The course cannot
# ship those photos, so `solutions.scenes` draws its own images: coloured shapes
# on a 3x3 grid over plain or patterned backgrounds. Each scene comes from a
# seed, so the same seed always draws the same picture, and the generator also
# writes its captions, in two styles: a short list of the shapes, and a
# paragraph in longcap100's spirit that says where each one sits.

# %%
examples = [scenes.sample_scene(seed) for seed in range(4)]
display(
    scenes.show_examples(
        [(scenes.render_scene(scene), scenes.short_caption(scene)) for scene in examples],
        width=32,
    )
)
display(
    scenes.show_examples(
        [(scenes.render_scene(scene), scenes.long_caption(scene)) for scene in examples],
        width=40,
    )
)

# %% [markdown]
# A test split checks that a model understands colour and shape separately: six
# (colour, kind) pairs never appear in training and validation scenes, and every
# test scene holds at least one of them.

# %%
print("held out of training:", sorted(scenes.HELD_OUT_PAIRS))
test_scene = scenes.sample_scene(0, split="test")
print("a test scene        :", scenes.short_caption(test_scene))
held_out = {(s.colour, s.kind) for s in test_scene.shapes} & scenes.HELD_OUT_PAIRS
print("its held-out pairs  :", sorted(held_out))

# %% [markdown]
# ## longcap100's layout
#
# `write_dataset` writes the scenes exactly as longcap100 is laid out: one jsonl
# file per split, named `data_<split><count>.jsonl`, and the images beside them.
# Each line is a JSON object with the image path (relative to the folder), the
# task prefix and the caption (the *suffix* the model learns to write); an extra
# `objects` field lists the shapes for scoring. Lesson 6 reads these files into
# batches. Here is a small one, in a temporary folder:

# %%
with tempfile.TemporaryDirectory() as tmp:
    paths = scenes.write_dataset(tmp, n_train=4, n_val=2, n_test=2)
    for file in sorted(pathlib.Path(tmp).rglob("*")):
        if file.is_file():
            print(f"  {file.relative_to(tmp)}  ({file.stat().st_size:,} bytes)")
    first_line = paths["train"].read_text().splitlines()[0]
print("\nthe first line of", paths["train"].name)
print(json.dumps(json.loads(first_line), indent=2))

# %% [markdown]
# The default sizes give longcap100's own file names, so code written for one
# reads the other: `python -m solutions.scenes runs/scenes` writes
# `data_train90.jsonl`, `data_val10.jsonl` (and `data_test50.jsonl`).

# %%
print([scenes.jsonl_name(split, n) for split, n in (("train", 90), ("val", 10), ("test", 50))])

# %% [markdown]
# ## What you built
#
# - `kaggle_cache_path`: where a versioned handle's file lives, so it can be found
#   (or placed) without asking Kaggle;
# - `sha256_file`: a checksum that reads gigabytes in constant memory;
# - `write_atomic`: files that are whole or absent, never half-written;
# - `kaggle_failure_kind`: an HTTP status turned into the fix that matches it.
#
# ## Go further
#
# 1. Call `kagglehub.model_download("google/paligemma-2/jax/paligemma2-3b-pt-224")`
#    without the version inside `kaggle_played_locally(...)`. What does kagglehub
#    need to ask Kaggle first, and why can a versioned handle skip that?
# 2. `os.replace` is atomic only within one file system. Why does `write_atomic` put
#    its temporary file in the target's folder rather than in `/tmp`?
# 3. SHA-256 of a 6 GB checkpoint takes a while. When is comparing the size and the
#    modification time enough, and when is it not?
# 4. Generate a dataset with `caption="short"`. Which style do you expect a tiny
#    model to learn faster, and why?
