"""Checkpoints: big_vision's .npz format in and out, and fitting one to a model."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

from solutions.configs import CHECKPOINTS
from solutions.model import Model, param_shapes
from solutions.params import (
    NEW_ROWS_STDDEV,
    CheckpointMismatchError,
    NonFiniteParamsError,
    fit_to_model,
    flatten_params,
    load_params,
    param_summary,
    resample_posemb,
    save_params,
    unflatten_params,
)
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_LLM_PG2, TINY_RESOLUTION


def random_params(llm: dict) -> dict:
    """Random jax arrays shaped like the tiny model with this LLM config.

    Drawn from the shapes rather than `init_params`: checkpoint tests need
    distinct values everywhere, not a trained-looking init, and this is instant.
    """
    rng = np.random.default_rng(0)
    shapes = param_shapes(Model(img=TINY_IMG, llm=llm), TINY_RESOLUTION)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def pg1():
    """(model, random params) of the tiny PaliGemma-1-style model."""
    return Model(img=TINY_IMG, llm=TINY_LLM_PG1), random_params(TINY_LLM_PG1)


def tiny_shapes(resolution=TINY_RESOLUTION, **llm_changes):
    """ShapeDtypeStructs of the tiny PG1 model with some LLM fields changed."""
    return param_shapes(Model(img=TINY_IMG, llm={**TINY_LLM_PG1, **llm_changes}), resolution)


def assert_same_bits(actual, expected):
    """Same names, dtypes, shapes and bytes (so also exact for bfloat16 and NaNs)."""
    actual, expected = flatten_params(actual), flatten_params(expected)
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got, want = np.asarray(actual[name]), np.asarray(want)
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert got.tobytes() == want.tobytes(), name


# -- round trips and the file format -------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("llm", [TINY_LLM_PG1, TINY_LLM_PG2], ids=["pg1", "pg2"])
def test_round_trip_is_bit_exact(llm, tmp_path, dtype):
    params = jax.tree.map(lambda x: x.astype(dtype), random_params(llm))
    path = tmp_path / "ckpt.npz"
    save_params(params, path)
    loaded = load_params(path)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))
    assert_same_bits(loaded, params)


def test_file_is_flat_names_as_big_vision_writes_them(pg1, tmp_path):
    """Plain numpy sees slash names without a prefix; bfloat16 is raw 2-byte
    records, which big_vision's loader views as bfloat16 again."""
    _, params = pg1
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    save_params(params, tmp_path / "ckpt.npz")
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as npz:
        raw = dict(npz)
    assert sorted(raw) == sorted(flatten_params(params))
    assert "llm/layers/attn/q_einsum/w" in raw and "img/embedding/kernel" in raw
    assert {x.dtype for x in raw.values()} == {np.dtype("V2")}
    as_big_vision_reads_it = {name: x.view(jnp.bfloat16) for name, x in raw.items()}
    assert_same_bits(unflatten_params(as_big_vision_reads_it), params)


def test_reads_big_vision_bfloat16_file(pg1, tmp_path):
    """A file saved the way big_vision saves (np.savez of bfloat16 arrays) comes
    back as bfloat16, not as the `|V2` records numpy returns."""
    _, params = pg1
    flat = {name: np.asarray(x, ml_dtypes.bfloat16) for name, x in flatten_params(params).items()}
    path = tmp_path / "big_vision.npz"
    np.savez(path, **flat)
    with np.load(path, allow_pickle=False) as npz:
        assert npz["img/pos_embedding"].dtype.kind == "V"  # what numpy alone gives
    loaded = load_params(path)
    assert loaded["img"]["pos_embedding"].dtype == ml_dtypes.bfloat16
    assert_same_bits(loaded, unflatten_params(flat))


def test_params_prefix_and_subtree(pg1, tmp_path):
    """A training checkpoint keeps params under `params/` next to optimizer state."""
    model, params = pg1
    flat = {f"params/{name}": np.asarray(x) for name, x in flatten_params(params).items()}
    flat["opt/mu/llm/final_norm/scale"] = np.zeros(3, np.float32)
    path = tmp_path / "train_state.npz"
    np.savez(path, **flat)

    assert_same_bits(load_params(path), params)
    assert_same_bits(load_params(f"{path}:img"), params["img"])
    llm_shapes = param_shapes(model, TINY_RESOLUTION)["llm"]
    assert_same_bits(load_params(f"{path}:llm", like=llm_shapes), params["llm"])
    with pytest.raises(ValueError, match=r"no parameters under 'vision'.*\['img', 'llm'\]"):
        load_params(f"{path}:vision")


def test_flatten_unflatten_and_summary(pg1):
    _, params = pg1
    flat = flatten_params(params)
    assert flat["img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (2, 32, 64)
    assert_same_bits(unflatten_params(flat), params)
    rows = param_summary(tiny_shapes())
    assert [name for name, _, _ in rows] == sorted(flat)
    assert ("llm/embedder/input_embedding", (96, 32), "float32") in rows


# -- fitting a checkpoint to the model -------------------------------------------


def test_vocabulary_grows_with_seeded_small_rows(pg1, tmp_path):
    _, params = pg1
    save_params(params, tmp_path / "ckpt.npz")
    bigger = tiny_shapes(vocab_size=100)
    loaded = load_params(tmp_path / "ckpt.npz", like=bigger)

    embedding = loaded["llm"]["embedder"]["input_embedding"]
    assert embedding.shape == (100, 32)
    np.testing.assert_array_equal(embedding[:96], params["llm"]["embedder"]["input_embedding"])
    new_rows = embedding[96:]
    assert 0.5 * NEW_ROWS_STDDEV < new_rows.std() < 1.5 * NEW_ROWS_STDDEV
    assert len(np.unique(new_rows)) == new_rows.size  # noise, not a repeated value
    again = load_params(tmp_path / "ckpt.npz", like=bigger)
    np.testing.assert_array_equal(again["llm"]["embedder"]["input_embedding"], embedding)

    # Every other parameter is untouched.
    others = {n: x for n, x in flatten_params(params).items() if "embedder" not in n}
    assert_same_bits(
        {n: x for n, x in flatten_params(loaded).items() if "embedder" not in n}, others
    )


def test_vocabulary_never_shrinks(pg1, tmp_path):
    _, params = pg1
    save_params(params, tmp_path / "ckpt.npz")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)\(96, 32\) vs \(90, 32\).*vocab"):
        load_params(tmp_path / "ckpt.npz", like=tiny_shapes(vocab_size=90))


def test_posemb_resampled_for_another_resolution(pg1, tmp_path):
    _, params = pg1
    save_params(params, tmp_path / "ckpt.npz")
    loaded = load_params(tmp_path / "ckpt.npz", like=tiny_shapes(resolution=24))
    posemb = loaded["img"]["pos_embedding"]
    assert posemb.shape == (1, 9, 32)  # 3x3 patches of 8 pixels instead of 2x2
    old = np.asarray(params["img"]["pos_embedding"]).reshape(2, 2, 32)
    np.testing.assert_allclose(posemb.reshape(3, 3, 32)[::2, ::2], old, rtol=1e-6)  # corners


def test_adapted_checkpoint_runs_in_the_model(pg1, tmp_path, tiny_batch):
    """Both changes at once: 24px images and 4 new tokens."""
    _, params = pg1
    save_params(params, tmp_path / "ckpt.npz")
    loaded = load_params(tmp_path / "ckpt.npz", like=tiny_shapes(resolution=24, vocab_size=100))
    model = Model(img=TINY_IMG, llm={**TINY_LLM_PG1, "vocab_size": 100})
    image = jnp.zeros((2, 24, 24, 3))
    logits, _ = model.apply({"params": loaded}, image, tiny_batch["text"], tiny_batch["mask_ar"])
    assert logits.shape == (2, 10, 100) and np.isfinite(logits).all()


def test_resample_keeps_constants_and_ramps():
    width = 5
    constant = np.full((1, 16, width), 0.7, np.float32)
    np.testing.assert_allclose(resample_posemb(constant, 49), np.full((1, 49, width), 0.7))

    # A ramp a*row + b*col + c over the grid; after resampling, new grid point
    # (i, j) sits at old coordinates (i, j) * (old_side - 1) / (new_side - 1).
    a, b, c = np.random.default_rng(0).normal(size=(3, width))

    def ramp(side, step):
        rows, cols = np.meshgrid(np.arange(side) * step, np.arange(side) * step, indexing="ij")
        return (rows[..., None] * a + cols[..., None] * b + c).reshape(1, side * side, width)

    for old_side, new_side in [(4, 7), (7, 4), (2, 3)]:
        resized = resample_posemb(ramp(old_side, 1.0).astype(np.float32), new_side**2)
        expected = ramp(new_side, (old_side - 1) / (new_side - 1))
        np.testing.assert_allclose(resized, expected, rtol=1e-5, atol=1e-5)


def test_resample_matches_big_vision_zoom():
    """big_vision resizes with `scipy.ndimage.zoom(grid, zoom, order=1)`."""
    grid = np.random.default_rng(1).normal(size=(4, 4, 6)).astype(np.float32)
    expected = scipy.ndimage.zoom(grid, (7 / 4, 7 / 4, 1), order=1)
    resized = resample_posemb(grid.reshape(1, 16, 6), 49)
    np.testing.assert_allclose(resized.reshape(7, 7, 6), expected, rtol=1e-5, atol=1e-5)


def test_resample_keeps_bfloat16():
    posemb = np.ones((1, 4, 8), ml_dtypes.bfloat16)
    assert resample_posemb(posemb, 9).dtype == ml_dtypes.bfloat16


def test_mismatch_lists_missing_unexpected_and_misshaped(pg1, tmp_path):
    _, params = pg1
    flat = {name: np.asarray(x) for name, x in flatten_params(params).items()}
    del flat["llm/final_norm/scale"]
    flat["llm/extra/w"] = np.zeros((3, 4), np.float32)
    np.savez(tmp_path / "ckpt.npz", **flat)
    like = tiny_shapes(mlp_dim=128)
    like["img"]["pos_embedding"] = jax.ShapeDtypeStruct((1, 6, 32), jnp.float32)  # not a square

    with pytest.raises(CheckpointMismatchError) as caught:
        load_params(tmp_path / "ckpt.npz", like=like)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert str(tmp_path / "ckpt.npz") in message
    assert "missing (1):\n    llm/final_norm/scale  model wants (32,)" in message
    assert "unexpected (1):\n    llm/extra/w  (3, 4)" in message
    assert "mis-shaped (checkpoint vs model) (3):" in message
    assert "llm/layers/mlp/gating_einsum  (2, 2, 32, 64) vs (2, 2, 32, 128)" in message
    assert "llm/layers/mlp/linear  (2, 64, 32) vs (2, 128, 32)" in message
    assert "img/pos_embedding  (1, 4, 32) vs (1, 6, 32)" in message
    assert "Hint: img/pos_embedding cannot be resampled" in message
    assert "Hint: is the model config the checkpoint's?" in message


def test_pg1_checkpoint_into_pg2_model_at_real_size():
    """Real sizes, shapes only: what a learner sees loading PaliGemma 1 weights
    into a PaliGemma 2 model at another resolution."""
    pg1_224 = CHECKPOINTS["paligemma-3b-pt-224"]
    pg2_448 = CHECKPOINTS["paligemma2-3b-pt-448"]
    checkpoint = flatten_params(param_shapes(Model(**pg1_224.config), 224))
    model = flatten_params(param_shapes(Model(**pg2_448.config), 448))
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_to_model(checkpoint, model, "paligemma-3b-pt-224.f16.npz")
    message = str(caught.value)
    assert "llm/layers/post_ffw_norm/scale  model wants (26, 2304)" in message
    assert "llm/layers/attn/kv_einsum/w  (18, 2, 1, 2048, 256) vs (26, 2, 4, 2304, 256)" in message
    assert "img/pos_embedding" not in message  # 16x16 -> 32x32 patches is resampled
    assert "img/Transformer" not in message  # the image towers agree
    assert "Hint: is the model config the checkpoint's?" in message


def test_missing_tower_is_one_clear_finding(pg1, tmp_path):
    _, params = pg1
    save_params({"llm": params["llm"]}, tmp_path / "llm_only.npz")
    with pytest.raises(CheckpointMismatchError) as caught:
        load_params(tmp_path / "llm_only.npz", like=tiny_shapes())
    message = str(caught.value)
    num_img = len(flatten_params(params["img"]))
    assert f"missing tower 'img': no img/... parameters ({num_img} expected)" in message
    assert "img/head/kernel" not in message  # summarised, not listed name by name
    assert "the file holds only ['llm']" in message


def test_long_lists_are_cut_short():
    checkpoint = {f"llm/extra_{i:02d}": np.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointMismatchError) as caught:
        fit_to_model(checkpoint, {}, "many.npz")
    message = str(caught.value)
    assert "unexpected (25):" in message and "... and 5 more" in message
    assert "llm/extra_19" in message and "llm/extra_20" not in message


# -- bad files ---------------------------------------------------------------------


def test_truncated_or_foreign_file_is_named(pg1, tmp_path):
    _, params = pg1
    path = tmp_path / "cut.npz"
    save_params(params, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{path}.*not a zip archive.*truncated"):
        load_params(path)
    (tmp_path / "notes.npz").write_text("not numbers")
    with pytest.raises(ValueError, match="notes.npz is not an .npz checkpoint"):
        load_params(tmp_path / "notes.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_params(tmp_path / "absent.npz:img")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{"img/head/kernel": np.array([{"code": "runs on load"}], dtype=object)})
    with pytest.raises(ValueError, match=r"pickled.npz is not a plain-array .*'img/head/kernel'"):
        load_params(path)


def test_unknown_raw_dtype_is_refused(tmp_path):
    path = tmp_path / "raw.npz"
    np.savez(path, **{"img/head/kernel": np.zeros(3, "V4")})
    with pytest.raises(ValueError, match="raw dtype .V4"):
        load_params(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nan_or_inf_weights_are_refused_unless_asked(pg1, tmp_path, bad, dtype):
    model, params = pg1
    flat = {name: np.asarray(x).astype(dtype) for name, x in flatten_params(params).items()}
    flat["llm/final_norm/scale"][3] = bad
    flat["img/head/bias"][:2] = bad
    path = tmp_path / "diverged.npz"
    save_params(unflatten_params(flat), path)
    like = param_shapes(model, TINY_RESOLUTION)
    with pytest.raises(NonFiniteParamsError) as caught:
        load_params(path, like=like)
    message = str(caught.value)
    assert message.startswith(f"{path}: parameter 'img/head/bias' holds 2 NaN or inf values")
    assert "(and 1 other parameter as well)" in message and "--allow-nonfinite-weights" in message
    loaded = load_params(path, like=like, allow_nonfinite=True)
    assert_same_bits(loaded, unflatten_params(flat))


def test_integer_arrays_pass_the_finiteness_check(tmp_path):
    path = tmp_path / "ints.npz"
    save_params({"step": np.array([3], np.int32)}, path)
    assert load_params(path)["step"].dtype == np.int32


# -- atomic saving -----------------------------------------------------------------


def test_failed_save_leaves_old_file_and_no_temp_files(pg1, tmp_path, monkeypatch):
    _, params = pg1
    path = tmp_path / "ckpt.npz"
    save_params(params, path)
    newer = jax.tree.map(lambda x: x + 1, params)

    def savez_that_dies_midway(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", savez_that_dies_midway)
        with pytest.raises(OSError, match="disk full"):
            save_params(newer, path)
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert_same_bits(load_params(path), params)

    save_params(newer, path)  # and a save that succeeds replaces it
    assert_same_bits(load_params(path), newer)
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_temporaries_of_killed_writers_are_removed_by_the_next_save(pg1, tmp_path):
    """A SIGKILL midway leaves `.ckpt.npz.<pid>.tmp`; the next save removes it, unless its
    process still runs (it may be writing right now)."""
    _, params = pg1
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ckpt.npz.{dead.pid}.tmp"
    alive = tmp_path / f".ckpt.npz.{os.getppid()}.tmp"
    other = tmp_path / f".notes.txt.{dead.pid}.tmp"
    for leftover in (stale, alive, other):
        leftover.write_bytes(b"PK half an archive")
    save_params(params, tmp_path / "ckpt.npz")
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", alive.name, other.name])
