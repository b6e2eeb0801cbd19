"""Graded checks for lesson 4 (parameters): one test per behaviour, named test_ex4_K_<what>."""

import json
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grading import expect_close, expect_equal, expect_raises, expect_true

LESSON = 4
SOLUTIONS = ("solutions.params", "solutions.sharding")
pytestmark = pytest.mark.lesson4

# The parameter names and shapes of the real PaliGemma 1 3B checkpoint.
REAL_NAMES_FILE = (
    pathlib.Path(__file__).resolve().parent.parent
    / "data"
    / "reference"
    / "paligemma-3b-pt-224.params.json"
)


# -- 4.1 flatten_params -------------------------------------------------------------------------


def _small_tree():
    bias, kernel, scale = np.zeros(3), np.ones((2, 3)), np.full(4, 2.0)
    tree = {
        "img": {"head": {"bias": bias, "kernel": kernel}},
        "llm": {"final_norm": {"scale": scale}},
    }
    return tree, {"img/head/bias": bias, "img/head/kernel": kernel, "llm/final_norm/scale": scale}


def test_ex4_1_nested_names_joined_with_slashes(impl):
    tree, want = _small_tree()
    got = impl.flatten_params(tree)
    expect_equal(
        sorted(got),
        sorted(want),
        what="names of flatten_params(tree)",
        hint="join the keys on the way down with '/', e.g. 'img/head/bias'",
    )
    for name, leaf in want.items():
        expect_true(
            got[name] is leaf,
            what=f"the leaf under {name!r} is the very array of the tree",
            hint="store leaves as they are: no copy, no np.asarray",
        )


def test_ex4_1_prefix_goes_before_every_name(impl):
    tree, want = _small_tree()
    got = impl.flatten_params(tree, prefix="params")
    expect_equal(
        sorted(got),
        sorted(f"params/{name}" for name in want),
        what="names of flatten_params(tree, prefix='params')",
        hint="a child's name is f'{prefix}/{key}' when prefix is not empty",
    )


def test_ex4_1_shape_structs_are_leaves(impl):
    struct = jax.ShapeDtypeStruct((18, 8, 2048, 256), jnp.float32)
    got = impl.flatten_params({"llm": {"layers": {"attn": {"q_einsum": {"w": struct}}}}})
    expect_equal(
        got,
        {"llm/layers/attn/q_einsum/w": struct},
        what="flatten_params of a tree of jax.ShapeDtypeStruct (as param_shapes returns)",
        hint="recurse only into Mappings (isinstance(value, Mapping)); everything else is a leaf",
    )


def test_ex4_1_any_mapping_is_a_subtree(impl):
    # Some libraries hand out read-only mappings (flax's FrozenDict) instead of dicts.
    scale = np.ones(4)
    tree = {"llm": types.MappingProxyType({"final_norm": types.MappingProxyType({"scale": scale})})}
    got = impl.flatten_params(tree)
    expect_equal(
        list(got),
        ["llm/final_norm/scale"],
        what="names of a tree whose inner nodes are read-only Mappings, not dicts",
        hint="test isinstance(value, Mapping) (collections.abc), not isinstance(value, dict)",
    )


# -- 4.2 unflatten_params -----------------------------------------------------------------------


def test_ex4_2_slash_names_become_nested_dicts(impl):
    bias, kernel, scale = np.zeros(3), np.ones((2, 3)), np.full(4, 2.0)
    got = impl.unflatten_params(
        {"img/head/bias": bias, "img/head/kernel": kernel, "llm/final_norm/scale": scale}
    )
    expect_equal(
        sorted(got),
        ["img", "llm"],
        what="top-level keys of the rebuilt tree",
        hint="split each name on '/'; the first part is a top-level key",
    )
    expect_true(
        got["img"]["head"]["bias"] is bias
        and got["img"]["head"]["kernel"] is kernel
        and got["llm"]["final_norm"]["scale"] is scale,
        what="tree['img']['head']['bias'], ['img']['head']['kernel'] and "
        "['llm']['final_norm']['scale'] are the arrays of those names",
        hint="walk down with node = node.setdefault(part, {}), then node[last] = value",
    )


def test_ex4_2_real_checkpoint_names(impl):
    names = list(json.loads(REAL_NAMES_FILE.read_text())["params"])
    got = impl.unflatten_params({name: name for name in names})  # each leaf: its own name
    wrong = []
    for name in names:
        node = got
        for part in name.split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if node != name:
            wrong.append(name)
    expect_equal(
        wrong,
        [],
        what=f"names of the real 3B checkpoint ({len(names)}) not found at their path",
        hint="names share parents ('llm/layers/attn/...'): reuse a dict that already exists",
    )


# -- 4.3 resample_posemb ------------------------------------------------------------------------


def test_ex4_3_corners_kept_and_midpoints_averaged(impl):
    # A 2 x 2 grid (tokens row by row), one varying channel and one constant channel.
    posemb = np.array([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [6.0, 1.0]]], np.float32)
    got = impl.resample_posemb(posemb, 9)
    # 3 x 3: the corners are the old cells, edges the mean of two, the centre of all four.
    varying = [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0]
    want = np.stack([varying, [1.0] * 9], axis=-1)[None]
    expect_close(
        got,
        want,
        what="2 x 2 grid [[0, 2], [4, 6]] resampled to 3 x 3",
        hint="align corners: new coordinates np.linspace(0, n - 1, m) on each axis",
    )


def test_ex4_3_shrinking_keeps_the_corners(impl):
    posemb = np.arange(9, dtype=np.float32).reshape(1, 9, 1)  # [[0 1 2] [3 4 5] [6 7 8]]
    got = impl.resample_posemb(posemb, 4)
    expect_close(
        got,
        np.array([0.0, 2.0, 6.0, 8.0], np.float32).reshape(1, 4, 1),
        what="3 x 3 grid 0..8 resampled to 2 x 2",
        hint="the first and last cells of each axis keep their place",
    )


def test_ex4_3_linear_ramp_stays_the_same_ramp(impl):
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    posemb = (3 * rows - 2 * cols + 1).reshape(1, 16, 1).astype(np.float32)
    got = impl.resample_posemb(posemb, 49)
    # On 7 x 7, new cell k sits at old coordinate k * 3 / 6 = k / 2 along each axis.
    new_rows, new_cols = np.meshgrid(np.arange(7) / 2, np.arange(7) / 2, indexing="ij")
    want = (3 * new_rows - 2 * new_cols + 1).reshape(1, 49, 1)
    expect_close(
        got,
        want,
        what="the ramp 3 * row - 2 * col + 1 resampled from 4 x 4 to 7 x 7",
        hint="interpolate linearly along rows, then along columns; tokens are row by row",
        atol=1e-4,
    )


def test_ex4_3_shape_and_dtype(impl):
    posemb = np.random.default_rng(0).normal(size=(1, 16, 3)).astype(np.float16)
    got = impl.resample_posemb(posemb, 64)
    expect_equal(
        (tuple(got.shape), str(got.dtype)),
        ((1, 64, 3), "float16"),
        what="(shape, dtype) of a float16 [1, 16, 3] embedding resampled to 64 tokens",
        hint="reshape back to [1, num_tokens, D] and cast with .astype(posemb.dtype)",
    )


def test_ex4_3_non_square_grid_is_refused(impl):
    expect_raises(
        ValueError,
        impl.resample_posemb,
        np.zeros((1, 12, 2), np.float32),
        16,
        what="resample_posemb of 12 tokens (not a square grid)",
        hint="check math.isqrt(n) ** 2 == n for both counts and raise ValueError",
    )


# -- 4.4 fsdp_axis ------------------------------------------------------------------------------


def test_ex4_4_largest_dimension_that_divides(impl):
    cases = [
        ((26, 2304, 9216), 8, 2),  # all divide: the largest
        ((257152, 2048), 8, 0),  # the embedding table: its rows
        ((10, 8), 4, 1),  # 10 is larger but 4 does not divide it
        ((7,), 1, 0),  # one device divides anything
    ]
    for shape, shards, want in cases:
        expect_equal(
            impl.fsdp_axis(shape, shards),
            want,
            what=f"fsdp_axis({shape}, {shards})",
            hint="only dimensions with size % num_shards == 0 qualify; take the largest",
        )


def test_ex4_4_ties_go_to_the_earlier_dimension(impl):
    for shape, shards, want in (((16, 16), 8, 0), ((4, 8, 8), 4, 1)):
        expect_equal(
            impl.fsdp_axis(shape, shards),
            want,
            what=f"fsdp_axis({shape}, {shards})",
            hint="among equal sizes pick the smallest index, e.g. key=lambda i: (shape[i], -i)",
        )


def test_ex4_4_none_when_nothing_divides(impl):
    for shape, shards in (((3, 5), 8), ((), 2)):
        expect_equal(
            impl.fsdp_axis(shape, shards),
            None,
            what=f"fsdp_axis({shape}, {shards})",
            hint="return None when no dimension is divisible (the array is replicated)",
        )
