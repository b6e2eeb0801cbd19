"""The model: real-size parameter trees, the prefix-LM mask, and the KV cache."""

from __future__ import annotations

import json
import pathlib

import flax
import jax.numpy as jnp
import numpy as np
import pytest

from solutions.configs import CHECKPOINTS, PALIGEMMA_VOCAB_SIZE
from solutions.model import Model, count_params, make_attn_mask, param_shapes

# Parameter names and shapes of the released checkpoints, as big_vision lists them.
REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "data" / "reference"
REFERENCES = sorted(REFERENCE_DIR.glob("*.params.json"))


def _flat_shapes(tree) -> dict[str, list[int]]:
    flat = flax.traverse_util.flatten_dict(tree)
    return {"/".join(k): list(v.shape) for k, v in flat.items()}


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.name.split(".")[0])
def test_parameter_tree_matches_real_checkpoint(path):
    assert len(REFERENCES) == 3, f"expected the three reference files in {REFERENCE_DIR}"
    reference = json.loads(path.read_text())
    shapes = param_shapes(Model(**reference["model"]), reference["resolution"])
    ours = _flat_shapes(shapes)
    missing = sorted(set(reference["params"]) - set(ours))
    unexpected = sorted(set(ours) - set(reference["params"]))
    wrong = {k: (ours[k], v) for k, v in reference["params"].items() if k in ours and ours[k] != v}
    assert not (missing or unexpected or wrong), (missing, unexpected, wrong)
    assert count_params(shapes) == reference["num_params"]


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_named_configs_match_reference_where_known(name):
    """Every named config builds; the ones with a reference file match it exactly."""
    ckpt = CHECKPOINTS[name]
    shapes = _flat_shapes(param_shapes(Model(**ckpt.config), ckpt.resolution))
    tokens = (ckpt.resolution // 14) ** 2
    assert shapes["img/pos_embedding"] == [1, tokens, 1152]
    assert shapes["llm/embedder/input_embedding"][0] == PALIGEMMA_VOCAB_SIZE
    reference = REFERENCE_DIR / f"{name}.params.json"
    if reference.exists():
        assert shapes == json.loads(reference.read_text())["params"]
    if name.startswith("paligemma2-10b"):
        assert shapes["llm/layers/attn/q_einsum/w"] == [42, 16, 3584, 256]


def test_make_attn_mask_prefix_lm():
    input_mask = jnp.array([[True, True, True, True, False]])
    mask_ar = jnp.array([[0, 0, 1, 1, 0]])
    expected = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(make_attn_mask(input_mask, mask_ar)[0], expected)


def test_make_attn_mask_causal_blocks():
    mask = make_attn_mask(jnp.ones((1, 4), bool), jnp.array([[1, 0, 1, 0]]))[0]
    np.testing.assert_array_equal(mask, np.array([[1, 1, 0, 0]] * 2 + [[1, 1, 1, 1]] * 2, bool))


def test_forward_shapes_and_prefix_attention(tiny, tiny_batch):
    model, params, _ = tiny
    logits, out = model.apply({"params": params}, **tiny_batch)
    assert logits.shape == (2, 10, 96) and logits.dtype == jnp.float32
    assert out["img/zimg"].shape == (2, 4, 32)
    # Changing a suffix token changes nothing before it; changing a prefix
    # token changes every position (the prefix attends both ways).
    text = tiny_batch["text"]
    logits_suffix = model.apply({"params": params}, **{**tiny_batch, "text": text.at[:, 7].set(5)})[
        0
    ]
    np.testing.assert_allclose(logits_suffix[:, :7], logits[:, :7], atol=1e-6)
    assert not np.allclose(logits_suffix[:, 7:], logits[:, 7:])
    logits_prefix = model.apply({"params": params}, **{**tiny_batch, "text": text.at[:, 2].set(5)})[
        0
    ]
    assert not np.allclose(logits_prefix[:, :2], logits[:, :2])


def test_kv_cache_matches_full_forward_with_ragged_prompts(tiny, tiny_batch):
    """Prefill + one-token extends give the full forward's logits, per row,
    also when rows have prompts of different lengths (right padding)."""
    model, params, _ = tiny
    variables = {"params": params}
    image, text = tiny_batch["image"], tiny_batch["text"]
    prompt_lens = [4, 3]  # row 1's prompt is one token shorter, padded after.
    prefill_len, new_tokens = 4, 5
    input_mask = jnp.array([[i < n for i in range(prefill_len)] for n in prompt_lens])
    (x, full_mask, full_ar), _ = model.apply(
        variables,
        image,
        text[:, :prefill_len],
        input_mask=input_mask,
        mask_ar=jnp.zeros((2, prefill_len), jnp.int32),
        method=Model.embed_image_and_text,
    )
    last, cache = model.apply(
        variables,
        x,
        full_mask,
        full_ar,
        cache_size=x.shape[1] + new_tokens,
        method=Model.prefill_cache,
        mutable=["cache"],
    )
    steps = [last]
    for t in range(new_tokens - 1):
        tokens = jnp.stack([text[0, 4 + t], text[1, 3 + t]])[:, None]
        emb = model.apply(variables, tokens, method=Model.embed_text)
        logits, cache = model.apply(
            {**variables, **cache}, emb, method=Model.extend_cache, mutable=["cache"]
        )
        steps.append(logits)
    cached = jnp.concatenate(steps, axis=1)

    for row, n in enumerate(prompt_lens):
        seq = text[row : row + 1, : n + new_tokens - 1]
        mask_ar = jnp.array([[0] * n + [1] * (new_tokens - 1)])
        full, _ = model.apply(variables, image[row : row + 1], seq, mask_ar)
        np.testing.assert_allclose(cached[row], full[0, n - 1 :], atol=2e-5, rtol=1e-5)


def test_unknown_variants_are_clear():
    with pytest.raises(ValueError, match="Unknown Gemma variant"):
        param_shapes(Model(img={"variant": "B/16"}, llm={"variant": "gemma_3b"}), 224)
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        param_shapes(Model(img={"variant": "Q/16"}, llm={"variant": "gemma_2b"}), 224)
    with pytest.raises(ValueError, match="pool_type"):
        param_shapes(
            Model(img={"variant": "B/16", "pool_type": "map"}, llm={"variant": "gemma_2b"}), 224
        )


def test_unrolled_scans_have_the_same_parameters_and_logits(tiny, tiny_batch):
    model, params, resolution = tiny
    unrolled = Model(
        img={**model.img, "scan_unroll": model.img["depth"]},
        llm={**model.llm, "scan_unroll": model.llm["depth"]},
    )
    assert _flat_shapes(param_shapes(unrolled, resolution)) == _flat_shapes(params)
    logits, _ = model.apply({"params": params}, **tiny_batch)
    unrolled_logits, _ = unrolled.apply({"params": params}, **tiny_batch)
    np.testing.assert_allclose(unrolled_logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tower", ["img", "llm"])
def test_scan_unroll_must_be_a_positive_int(tower):
    config = {"img": {"variant": "B/16"}, "llm": {"variant": "gemma_2b"}}
    config[tower] = {**config[tower], "scan_unroll": 0}
    with pytest.raises(ValueError, match="scan_unroll must be an int >= 1"):
        param_shapes(Model(**config), 224)
