"""Graded checks for lesson 3 (the model): one test per behaviour, named test_ex3_K_<what>."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.grading import expect_close, expect_equal

LESSON = 3
SOLUTIONS = ("solutions.model", "solutions.siglip")
pytestmark = pytest.mark.lesson3


# -- 3.1 patchify -------------------------------------------------------------------------------


def test_ex3_1_grid_shape_drops_partial_patches(impl):
    image = np.zeros((2, 20, 26, 3), np.float32)
    got = impl.patchify(image, (8, 6))
    # 20 rows hold 2 whole patches of 8, 26 columns hold 4 of 6; a patch has 8*6*3 numbers.
    expect_equal(
        tuple(np.shape(got)),
        (2, 2, 4, 144),
        what="patchify shape for [2, 20, 26, 3] images and (8, 6) patches",
        hint="the grid is (H // ph, W // pw); leftover rows and columns are dropped",
    )


def test_ex3_1_pixels_in_row_column_channel_order(impl):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
    got = impl.patchify(image, (3, 4))  # non-square patches catch a swapped height and width
    want = np.empty((2, 3, 2, 3 * 4 * 3), np.float32)
    for b, i, j in np.ndindex(2, 3, 2):
        want[b, i, j] = image[b, 3 * i : 3 * i + 3, 4 * j : 4 * j + 4].reshape(-1)
    expect_close(
        got,
        want,
        what="patch [b, i, j] (pixels of rows 3i..3i+2, columns 4j..4j+3)",
        hint="after the reshape to [B, H/ph, ph, W/pw, pw, C], transpose to "
        "[B, H/ph, W/pw, ph, pw, C] before flattening the last three axes",
    )


# -- 3.2 rms_norm -------------------------------------------------------------------------------


def test_ex3_2_matches_the_formula(impl):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (2, 3, 8)).astype(np.float32)
    scale = rng.normal(0, 0.5, 8).astype(np.float32)
    got = impl.rms_norm(jnp.asarray(x), jnp.asarray(scale))
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * (1 + scale)
    expect_close(
        got,
        want,
        what="rms_norm of float32[2, 3, 8]",
        hint="x / sqrt(mean(x**2 over the last axis) + eps) * (1 + scale)",
        atol=1e-5,
        rtol=1e-4,
    )


def test_ex3_2_eps_goes_inside_the_square_root(impl):
    got = impl.rms_norm(jnp.asarray([[3.0, 4.0]]), jnp.zeros(2), eps=2.5)
    # mean(3², 4²) = 12.5; plus eps = 15.
    want = np.array([[3.0, 4.0]]) / np.sqrt(15.0)
    expect_close(
        got,
        want,
        what="rms_norm([[3, 4]], scale 0, eps=2.5)",
        hint="add eps to the mean square, then take the square root (use the eps argument)",
    )


def test_ex3_2_zero_vector_stays_zero(impl):
    got = impl.rms_norm(jnp.zeros((1, 4)), jnp.ones(4))
    expect_close(
        got,
        np.zeros((1, 4)),
        what="rms_norm of an all-zero vector",
        hint="eps keeps the denominator positive: no NaN, the output is zero",
    )


# -- 3.3 apply_rope -----------------------------------------------------------------------------


def _rope_as_complex_rotation(x, positions, max_wavelength):
    """Channel pair i = (x[i], x[i + H/2]) as the complex number x[i] + 1j * x[i + H/2],
    turned by the angle position * max_wavelength**(-2i/H)."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    pairs = x[..., :half] + 1j * x[..., half:]
    frequencies = max_wavelength ** (-2.0 * np.arange(half) / head_dim)
    turned = pairs * np.exp(1j * positions[:, :, None, None] * frequencies)
    return np.concatenate([turned.real, turned.imag], axis=-1)


def test_ex3_3_rotates_channel_pairs(impl):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    positions = rng.integers(0, 40, (2, 5)).astype(np.int32)
    got = impl.apply_rope(jnp.asarray(x), jnp.asarray(positions))
    expect_close(
        got,
        _rope_as_complex_rotation(x, positions, 10_000.0),
        what="apply_rope of float32[2, 5, 3, 8] at random positions",
        hint="pair channel i with channel i + H/2; angle = position / 10000**(2i/H); "
        "(a, b) -> (a cos - b sin, b cos + a sin)",
        atol=1e-4,
        rtol=1e-4,
    )


def test_ex3_3_uses_max_wavelength(impl):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 4, 2, 6)).astype(np.float32)
    positions = np.array([[0, 1, 2, 7]], np.int32)
    got = impl.apply_rope(jnp.asarray(x), jnp.asarray(positions), max_wavelength=100.0)
    expect_close(
        got,
        _rope_as_complex_rotation(x, positions, 100.0),
        what="apply_rope with max_wavelength=100",
        hint="use the max_wavelength argument, not a fixed 10000",
        atol=1e-4,
        rtol=1e-4,
    )


def test_ex3_3_position_zero_changes_nothing(impl):
    x = np.random.default_rng(4).normal(size=(1, 3, 2, 4)).astype(np.float32)
    got = impl.apply_rope(jnp.asarray(x), jnp.zeros((1, 3), jnp.int32))
    expect_close(
        got,
        x,
        what="apply_rope at position 0",
        hint="at position 0 every angle is 0: cos = 1, sin = 0",
    )


def test_ex3_3_keeps_the_dtype(impl):
    got = impl.apply_rope(jnp.ones((1, 2, 1, 4), jnp.bfloat16), jnp.asarray([[0, 5]], jnp.int32))
    expect_equal(
        str(got.dtype),
        "bfloat16",
        what="dtype of apply_rope on bfloat16 keys",
        hint="compute the angles in float32, then cast the result with .astype(x.dtype)",
    )


# -- 3.4 make_attn_mask -------------------------------------------------------------------------


def test_ex3_4_worked_examples(impl):
    mask_ar = jnp.asarray([[1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 1, 0]], jnp.int32)
    got = impl.make_attn_mask(jnp.ones((3, 4), bool), mask_ar)
    causal = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    prefix_lm = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    blocks_of_two = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    expect_equal(
        got,
        np.array([causal, prefix_lm, blocks_of_two], bool),
        what="masks for mask_ar [1 1 1 1], [0 0 1 1] and [1 0 1 0] (one per batch row)",
        hint="number the blocks with jnp.cumsum(mask_ar, axis=1); token i sees j when "
        "block[j] <= block[i]. Return booleans",
    )


def test_ex3_4_padding_sees_nothing_and_is_not_seen(impl):
    input_mask = jnp.asarray([[True, True, True, False, False]])
    got = impl.make_attn_mask(input_mask, jnp.asarray([[0, 0, 1, 1, 1]], jnp.int32))
    want = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    expect_equal(
        got[0],
        want,
        what="mask of 2 prefix tokens, 1 suffix token and 2 padding tokens",
        hint="AND the block rule with input_mask[:, None, :] & input_mask[:, :, None]",
    )
