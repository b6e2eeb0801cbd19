"""Parameter checkpoints in big_vision's `.npz` format (lesson 4).

A big_vision checkpoint is a plain numpy `.npz` archive: one array per
parameter, named by its path in the tree with slashes,

    img/embedding/kernel            float[14, 14, 3, 1152]
    img/pos_embedding               float[1, 256, 1152]
    llm/embedder/input_embedding    float[257152, 2048]
    llm/layers/attn/q_einsum/w      float[18, 8, 2048, 256]
    ...

Training checkpoints may put everything under a leading `params/` (next to
optimizer state, which loading ignores). A path such as `model.npz:img` selects
one sub-tree, as in big_vision.

numpy has no bfloat16 of its own, so `np.savez` writes a bfloat16 array as raw
2-byte records (dtype `|V2`) and `np.load` returns those records. Loading views
every `|V2` array as `ml_dtypes.bfloat16` again; saving stores bfloat16 exactly
as big_vision does, so each side reads the other's files.

Given `like` (the model's own parameter tree, e.g. `param_shapes(model, 224)`),
loading checks every name and shape and makes the two changes fine-tuning
needs: a larger vocabulary (new embedding rows) and another image resolution
(a resampled position-embedding grid). Anything else that does not fit raises
one `CheckpointMismatchError` listing all the differences.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from solutions.files import atomic_open

__all__ = [
    "CheckpointMismatchError",
    "NonFiniteParamsError",
    "fit_to_model",
    "flatten_params",
    "grow_embedding",
    "load_params",
    "param_summary",
    "resample_posemb",
    "save_params",
    "unflatten_params",
]

EMBEDDING_NAME = "llm/embedder/input_embedding"
POSEMB_NAME = "img/pos_embedding"

# New vocabulary rows start as small noise: the output embedding is tied, so a
# row near zero gives the new token a logit near zero until fine-tuning moves it.
# 0.02 is the scale Gemma's other weights are initialised at. A fixed seed makes
# two loads of the same checkpoint give the same parameters.
NEW_ROWS_STDDEV = 0.02
NEW_ROWS_SEED = 0

# How many names of each kind a mismatch error lists before "... and N more".
_MAX_LISTED = 20

# Values checked for NaN and inf at a time: bounds the temporary boolean array to 16 MB
# while a 3B checkpoint is checked (its token embedding alone has 527M values).
_FINITE_CHECK_CHUNK = 1 << 24


class CheckpointMismatchError(ValueError):
    """The checkpoint's names or shapes do not fit the model's parameter tree."""


class NonFiniteParamsError(ValueError):
    """The checkpoint holds NaN or inf values: the weights of a run that diverged.
    `.name` is the first parameter (by name) that holds some."""

    def __init__(self, message: str, *, name: str):
        super().__init__(message)
        self.name = name


# -- trees <-> flat slash names ------------------------------------------------


def flatten_params(tree: Mapping, prefix: str = "") -> dict:
    """Nested dict -> flat dict keyed by slash names.

    `{"img": {"head": {"bias": b}}}` becomes `{"img/head/bias": b}`. Leaves
    (arrays or `jax.ShapeDtypeStruct`s) are kept as they are.
    """
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        else:
            flat[name] = value
    return flat


def unflatten_params(flat: Mapping) -> dict:
    """Flat dict keyed by slash names -> nested dict; undoes `flatten_params`."""
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def param_summary(params: Mapping) -> list[tuple[str, tuple[int, ...], str]]:
    """Rows of (name, shape, dtype) for every leaf, sorted by name.

    Works on arrays and `jax.ShapeDtypeStruct`s alike, e.g.

        for name, shape, dtype in param_summary(params):
            print(f"{name:60} {dtype:9} {shape}")
    """
    flat = flatten_params(params)
    return [(name, tuple(flat[name].shape), str(flat[name].dtype)) for name in sorted(flat)]


# -- saving ----------------------------------------------------------------------


def save_params(params: Mapping, path: str | os.PathLike) -> None:
    """Writes `params` as a big_vision `.npz` checkpoint, atomically.

    Names are flat slash names without a `params/` prefix; dtypes are kept
    (bfloat16 included, stored as big_vision stores it). The archive is first
    written to a hidden temporary file next to `path` and then renamed over it,
    so a crash midway leaves any earlier file at `path` untouched.

    Temporary files that an earlier, killed write of `path` left behind are
    removed first.

    Args:
      params: nested dict of numpy or jax arrays (jax arrays are fetched to the
        host, also when sharded over several devices of this process).
      path: the file to write, e.g. "checkpoints/step_1000.npz".
    """
    path = pathlib.Path(path)
    arrays = {name: np.asarray(jax.device_get(x)) for name, x in flatten_params(params).items()}
    with atomic_open(path) as file:  # streamed: a 3B checkpoint never sits in memory twice
        np.savez(file, **arrays)


# -- loading ---------------------------------------------------------------------


def load_params(
    path: str | os.PathLike, *, like: Mapping | None = None, allow_nonfinite: bool = False
) -> dict:
    """Reads a big_vision `.npz` checkpoint into a nested dict of numpy arrays.

    Args:
      path: the `.npz` file, optionally followed by `:` and a sub-tree name to
        return only that part, e.g. "paligemma-3b-pt-224.f16.npz:img". Names
        may carry a leading `params/` (training checkpoints); it is dropped.
      like: optional parameter tree of the model (arrays or
        `jax.ShapeDtypeStruct`s) for the same sub-tree. When given, the
        checkpoint must have exactly its names and shapes, except that
        `llm/embedder/input_embedding` may have fewer rows (new rows are
        appended, see `grow_embedding`) and `img/pos_embedding` may have
        another number of tokens (resampled, see `resample_posemb`).
        Dtypes are left as stored: cast afterwards if the model wants others.
      allow_nonfinite: load NaN and inf values too (to study a diverged run);
        by default they raise `NonFiniteParamsError`.
    Returns:
      Nested dict of numpy arrays with big_vision's parameter names.
    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a plain-array `.npz` (truncated, another
        format, or holding pickled objects), or the sub-tree does not exist.
      NonFiniteParamsError: a parameter holds NaN or inf (the message names
        the file and the first such parameter).
      CheckpointMismatchError: the checkpoint does not fit `like`.
    """
    file, subtree = _split_subtree(path)
    flat = _without_params_prefix(_read_npz(file))
    if subtree is not None:
        flat = _select_subtree(flat, subtree, file)
    if not allow_nonfinite:
        _check_finite(flat, file)
    if like is not None:
        prefix = f"{subtree}/" if subtree else ""
        expected = {prefix + name: leaf for name, leaf in flatten_params(like).items()}
        flat = fit_to_model(flat, expected, file)
    if subtree is not None:
        flat = {name.removeprefix(f"{subtree}/"): x for name, x in flat.items()}
    return unflatten_params(flat)


def _split_subtree(path: str | os.PathLike) -> tuple[pathlib.Path, str | None]:
    """Splits "dir/ckpt.npz:img" into (Path("dir/ckpt.npz"), "img"); no suffix gives None."""
    text = os.fspath(path)
    match = re.fullmatch(r"(.+):([\w/]+)", text)
    if match and not os.path.exists(text):
        file, subtree = match.groups()
        return pathlib.Path(file), subtree.strip("/")
    return pathlib.Path(text), None


def _read_npz(file: pathlib.Path) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` archive by name, with bfloat16 recovered."""
    if not file.exists():
        raise FileNotFoundError(f"No checkpoint at {file}.")
    # The zip index sits at the end of the file, so a cut-off download fails here.
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"{file} is not an .npz checkpoint (not a zip archive): the file is truncated, "
            "e.g. by an interrupted download, or has another format. Download or save it again."
        )
    flat = {}
    with np.load(file, allow_pickle=False) as npz:
        for name in npz.files:
            flat[name] = _recover_bfloat16(_read_entry(npz, name, file), name, file)
    return flat


def _read_entry(npz, name: str, file: pathlib.Path) -> np.ndarray:
    """One array of the archive, with errors that say what is wrong with the file."""
    try:
        array = npz[name]
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{file} is not a plain-array checkpoint: entry {name!r} holds pickled Python "
                "objects. Unpickling can run arbitrary code, so it is refused; save the "
                "parameters with `save_params` (numeric arrays only)."
            ) from None
        raise ValueError(
            f"{file}: entry {name!r} is corrupt ({error}). Download it again."
        ) from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{file}: entry {name!r} is not a .npy array; not a checkpoint archive.")
    return array


def _recover_bfloat16(array: np.ndarray, name: str, file: pathlib.Path) -> np.ndarray:
    """A `|V2` array (2-byte raw records) is bfloat16 as numpy stored it: view it so."""
    if array.dtype.kind != "V" or array.dtype.names is not None:
        return array
    if array.dtype.itemsize != 2:
        raise ValueError(
            f"{file}: entry {name!r} has raw dtype {array.dtype.str}; only 2-byte raw records "
            "(bfloat16) are known."
        )
    return array.view(ml_dtypes.bfloat16)


def _is_finite(array: np.ndarray) -> bool:
    """Whether every value is finite; integer arrays always are."""
    if not jnp.issubdtype(array.dtype, jnp.inexact):  # bfloat16 counts as inexact here
        return True
    values = array.reshape(-1)
    return all(
        np.isfinite(values[start : start + _FINITE_CHECK_CHUNK]).all()
        for start in range(0, values.size, _FINITE_CHECK_CHUNK)
    )


def _check_finite(flat: dict, file: pathlib.Path) -> None:
    """Refuses NaN and inf weights: a model would caption nothing and train nowhere with them."""
    bad = sorted(name for name, array in flat.items() if not _is_finite(array))
    if not bad:
        return
    first = flat[bad[0]]
    count = first.size - int(np.count_nonzero(np.isfinite(first)))
    more = len(bad) - 1
    others = f" (and {more} other parameter{'s' * (more > 1)} as well)" if more else ""
    raise NonFiniteParamsError(
        f"{file}: parameter {bad[0]!r} holds {count:,} NaN or inf values of {first.size:,}"
        f"{others}: these are the weights of a run that diverged. Load an earlier checkpoint "
        "(a fine-tune only ever saves finite ones), or load this one anyway with "
        "allow_nonfinite=True (capstone.finetune: --allow-nonfinite-weights).",
        name=bad[0],
    )


def _without_params_prefix(flat: dict) -> dict:
    """Keeps only `params/...` entries, unprefixed, when a training checkpoint has them."""
    if not any(name.startswith("params/") for name in flat):
        return flat
    return {
        name.removeprefix("params/"): x for name, x in flat.items() if name.startswith("params/")
    }


def _select_subtree(flat: dict, subtree: str, file: pathlib.Path) -> dict:
    selected = {name: x for name, x in flat.items() if name.startswith(f"{subtree}/")}
    if not selected:
        tops = sorted({name.split("/")[0] for name in flat})
        raise ValueError(
            f"{file} has no parameters under {subtree!r}; its top-level names are {tops}: "
            "put one of them after the colon."
        )
    return selected


# -- fitting a checkpoint to a model -------------------------------------------


def fit_to_model(flat: dict, expected: Mapping, file: str | os.PathLike = "checkpoint") -> dict:
    """Checks a flat checkpoint against the model's flat tree, adapting what it can.

    Args:
      flat: {slash name: array} read from the checkpoint.
      expected: {slash name: array or ShapeDtypeStruct} of the model.
      file: named in the error message.
    Returns:
      {slash name: array} with exactly the names and shapes of `expected`.
    Raises:
      CheckpointMismatchError listing every missing, unexpected and mis-shaped name.
    """
    shapes = {name: tuple(want.shape) for name, want in expected.items()}
    missing = {name: shape for name, shape in shapes.items() if name not in flat}
    unexpected = {name: x.shape for name, x in flat.items() if name not in shapes}
    misshaped = {
        name: (flat[name].shape, shape)
        for name, shape in shapes.items()
        if name in flat and not _fits(name, flat[name].shape, shape)
    }
    if missing or unexpected or misshaped:
        message = _mismatch_message(file, flat, missing, unexpected, misshaped)
        raise CheckpointMismatchError(message)
    return {name: _adapt(name, flat[name], shape) for name, shape in shapes.items()}


def _fits(name: str, have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Whether an array of shape `have` can serve as `want`, as is or adapted."""
    if have == want:
        return True
    if name == EMBEDDING_NAME:  # [V, D] -> [V', D] with V' > V
        return have[1:] == want[1:] and have[0] < want[0]
    if name == POSEMB_NAME:  # [1, N, D] -> [1, M, D]: another square grid of patches
        same_width = len(have) == 3 and have[::2] == want[::2]
        return same_width and _is_square(have[1]) and _is_square(want[1])
    return False


def _adapt(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`array` changed to `shape`, for a name and shape that `_fits`."""
    if array.shape == shape:
        return array
    if name == EMBEDDING_NAME:
        return grow_embedding(array, shape[0])
    return resample_posemb(array, shape[1])


def grow_embedding(
    embedding: np.ndarray,
    num_rows: int,
    *,
    stddev: float = NEW_ROWS_STDDEV,
    seed: int = NEW_ROWS_SEED,
) -> np.ndarray:
    """Appends rows to a token embedding for new vocabulary entries.

    Args:
      embedding: float[V, D], the checkpoint's embedding.
      num_rows: the new vocabulary size V' >= V.
      stddev, seed: new rows are drawn from normal(0, stddev**2) with this seed.
    Returns:
      float[V', D] of the same dtype; the first V rows are unchanged.
    """
    old_rows, width = embedding.shape
    if num_rows < old_rows:
        raise ValueError(f"Cannot shrink an embedding of {old_rows} rows to {num_rows}.")
    noise = np.random.default_rng(seed).normal(0.0, stddev, (num_rows - old_rows, width))
    return np.concatenate([embedding, noise.astype(embedding.dtype)], axis=0)


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    """Resizes a learned position embedding for another image resolution.

    The N tokens are a sqrt(N) x sqrt(N) grid of patches; each of the D
    channels is resized as an image with bilinear interpolation. The corners
    of the old and new grids line up ("align corners"), which is what
    big_vision's `scipy.ndimage.zoom(grid, ..., order=1)` does: a constant grid
    stays constant and a linear ramp stays the same ramp.

    Args:
      posemb: float[1, N, D] with N a square number.
      num_tokens: M, the new number of tokens, a square number.
    Returns:
      float[1, M, D] of the same dtype (computed in float32).
    """
    _, old_tokens, width = posemb.shape
    if not (_is_square(old_tokens) and _is_square(num_tokens)):
        raise ValueError(
            f"Position embeddings need square grids; got {old_tokens} -> {num_tokens}."
        )
    old_side, new_side = math.isqrt(old_tokens), math.isqrt(num_tokens)
    grid = posemb.reshape(old_side, old_side, width).astype(np.float32)
    grid = _resize_axis_linear(grid, new_side, axis=0)
    grid = _resize_axis_linear(grid, new_side, axis=1)
    return grid.reshape(1, num_tokens, width).astype(posemb.dtype)


def _resize_axis_linear(grid: np.ndarray, new_size: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis, first and last samples kept in place."""
    old_size = grid.shape[axis]
    # Where each new sample sits on the old axis: 0 ... old_size - 1, evenly spaced.
    coords = np.linspace(0.0, old_size - 1, new_size)
    below = np.floor(coords).astype(int)
    above = np.minimum(below + 1, old_size - 1)
    weight_shape = [1] * grid.ndim
    weight_shape[axis] = new_size
    weight = (coords - below).reshape(weight_shape).astype(grid.dtype)
    return np.take(grid, below, axis) * (1 - weight) + np.take(grid, above, axis) * weight


def _is_square(n: int) -> bool:
    return math.isqrt(n) ** 2 == n


def _tower(name: str) -> str:
    return name.split("/")[0]


def _mismatch_message(file, flat: dict, missing: dict, unexpected: dict, misshaped: dict) -> str:
    """One readable report of everything that differs, with hints on the likely cause."""
    lines, hints = [f"Checkpoint {file} does not fit the model:"], []
    present = sorted({_tower(name) for name in flat})
    # A tower absent from the file is one finding, not hundreds of missing names.
    absent = sorted({_tower(name) for name in missing} - set(present))
    for tower in absent:
        count = sum(_tower(name) == tower for name in missing)
        lines.append(f"  missing tower {tower!r}: no {tower}/... parameters ({count} expected).")
    missing = {name: shape for name, shape in missing.items() if _tower(name) not in absent}
    if absent:
        hints.append(
            f"the file holds only {present}. Is it the right file? To load one tower, "
            "name it: load_params('file.npz:llm', like=shapes['llm'])."
        )
    lines += _listing("missing", [f"{name}  model wants {s}" for name, s in missing.items()])
    lines += _listing("unexpected", [f"{name}  {s}" for name, s in unexpected.items()])
    lines += _listing(
        "mis-shaped (checkpoint vs model)",
        [f"{name}  {have} vs {want}" for name, (have, want) in misshaped.items()],
    )
    explained = set()
    have, want = misshaped.get(EMBEDDING_NAME, ((0,), (0,)))
    if have[1:] == want[1:] and have[0] > want[0]:
        explained.add(EMBEDDING_NAME)
        hints.append(
            f"the model's vocabulary ({want[0]}) is smaller than the checkpoint's ({have[0]}): "
            "a vocabulary may grow on load, never shrink. Raise llm.vocab_size."
        )
    if POSEMB_NAME in misshaped:
        explained.add(POSEMB_NAME)
        hints.append(
            "img/pos_embedding cannot be resampled: the resolution must be a multiple of the "
            "patch size (a square patch grid) and the ViT width must match."
        )
    if missing or unexpected or misshaped.keys() - explained:
        hints.append(
            "is the model config the checkpoint's? PaliGemma 1 uses llm variant gemma_2b, "
            "PaliGemma 2 gemma2_2b or gemma2_9b, both with img variant So400m/14."
        )
    lines += [f"Hint: {hint}" for hint in hints]
    return "\n".join(lines)


def _listing(title: str, rows: list[str]) -> list[str]:
    if not rows:
        return []
    shown = [f"    {row}" for row in sorted(rows)[:_MAX_LISTED]]
    if len(rows) > _MAX_LISTED:
        shown.append(f"    ... and {len(rows) - _MAX_LISTED} more")
    return [f"  {title} ({len(rows)}):", *shown]
