"""Hugging Face transformers interop: parity of logits and bit-exact round trips.

Tests marked `parity` build transformers' own `PaliGemmaForConditionalGeneration`
(the `parity` extra: torch, transformers, safetensors) and skip without it.
"""

from __future__ import annotations

import functools
import json

import flax
import jax
import ml_dtypes
import numpy as np
import pytest

from solutions.configs import CHECKPOINTS
from solutions.gemma import gemma_config
from solutions.hf import (
    HFConversionError,
    export_hf,
    from_hf_config,
    hf_shapes,
    import_hf,
    import_hf_state_dict,
    to_hf_config,
    to_hf_state_dict,
)
from solutions.model import Model, init_params
from solutions.siglip import vit_config
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_LLM_PG2, TINY_RESOLUTION, randomize

ATOL = 1e-4  # float32 logits of order 1-10
NUM_IMAGE_TOKENS = (TINY_RESOLUTION // TINY_IMG["patch_size"]) ** 2
IMAGE_TOKEN = 95  # inside the 96-token vocabulary, as in Hugging Face's checkpoints
PREFIX_LM = [0] * 4 + [1] * 6
CAUSAL = [1] * 10

# transformers configs written by hand, so that a mistake in `to_hf_config`
# cannot hide one in `from_hf_config`. PG2 uses softcaps small enough to
# change the logits and a query scale other than 1/sqrt(head_dim).
HF_VISION = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=8,
    image_size=TINY_RESOLUTION,
    vision_use_head=False,
)
HF_TEXT = {
    "pg1": dict(
        model_type="gemma",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=96,
    ),
    "pg2": dict(
        model_type="gemma2",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=96,
        query_pre_attn_scalar=8,  # = hidden_size // num_attention_heads
        attn_logit_softcapping=5.0,
        final_logit_softcapping=10.0,
    ),
}
# What the importer must make of them.
EXPECTED_LLM = {
    "pg1": TINY_LLM_PG1,
    "pg2": dict(
        TINY_LLM_PG2,
        head_dim=16,
        query_pre_attn_norm="rsqrt_emb_per_head",
        attn_logits_softcap=5.0,
        final_logits_softcap=10.0,
    ),
}

# Our tiny decoders, for the export direction.
TINY_LLMS = {
    "pg1": TINY_LLM_PG1,
    "pg2": TINY_LLM_PG2,
    "pg2_no_final_softcap": dict(TINY_LLM_PG2, final_logits_softcap=0.0),
    "fused_qkv": dict(TINY_LLM_PG1, num_kv_heads=4),  # num_kv_heads == num_heads
}

parity = pytest.mark.parity
NEEDS_EXTRA = "needs the parity extra: pip install -e '.[parity]'"


def _transformers():
    pytest.importorskip("torch", reason=NEEDS_EXTRA)
    return pytest.importorskip("transformers", reason=NEEDS_EXTRA)


def _hf_tiny_model(kind: str, seed: int = 0):
    """A tiny transformers PaliGemma with EVERY weight random (norms and biases too)."""
    transformers = _transformers()
    import torch

    config = transformers.PaliGemmaConfig(
        vision_config=HF_VISION,
        text_config=HF_TEXT[kind],
        image_token_index=IMAGE_TOKEN,
        vocab_size=96,
        projection_dim=32,
        hidden_size=32,
    )
    torch.manual_seed(seed)
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for weight in model.parameters():  # lm_head shares the embedding's Parameter
            weight.copy_(0.2 * torch.randn_like(weight))
    return model


@pytest.fixture(scope="module", params=["pg1", "pg2"])
def hf_tiny(request):
    return request.param, _hf_tiny_model(request.param)


def _inputs(mask_ar):
    """A batch of 2: image float32[2,16,16,3], tokens int32[2,10] below any image token id."""
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (2, TINY_RESOLUTION, TINY_RESOLUTION, 3)).astype(np.float32)
    tokens = rng.integers(3, IMAGE_TOKEN, (2, 10)).astype(np.int32)
    return image, tokens, np.array([mask_ar] * 2, np.int32)


def _hf_text_logits(hf_model, image, tokens, mask_ar) -> np.ndarray:
    """transformers' logits at the text positions for our (image, tokens, mask_ar).

    transformers wants NCHW pixels, `<image>` placeholders before the text, and
    `token_type_ids`: 0 where a token joins the full-attention prefix (image
    tokens and our mask_ar == 0), 1 on the causal suffix.
    """
    import torch

    batch, image_token = tokens.shape[0], hf_model.config.image_token_index
    input_ids = np.concatenate([np.full((batch, NUM_IMAGE_TOKENS), image_token), tokens], 1)
    token_type_ids = np.concatenate([np.zeros((batch, NUM_IMAGE_TOKENS), int), mask_ar], 1)
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(input_ids),
            pixel_values=torch.tensor(image.transpose(0, 3, 1, 2)),
            token_type_ids=torch.tensor(token_type_ids),
            attention_mask=torch.ones(input_ids.shape, dtype=torch.long),
        )
    return out.logits[:, NUM_IMAGE_TOKENS:].float().numpy()


def _our_logits(config, params, image, tokens, mask_ar) -> np.ndarray:
    logits, _ = Model(**config).apply({"params": params}, image, tokens, mask_ar)
    return np.asarray(logits)


def _numpy(tensor) -> np.ndarray:
    """A torch tensor as numpy, bfloat16 bits included."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _flat(params) -> dict[str, np.ndarray]:
    return flax.traverse_util.flatten_dict(params, sep="/")


def _assert_trees_bit_equal(got, want):
    got, want = _flat(got), _flat(want)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert np.array_equal(np.asarray(got[name]), np.asarray(want[name])), name


@functools.cache
def _tiny_float32_params(kind: str, seed: int):
    config = {"img": TINY_IMG, "llm": TINY_LLMS[kind]}
    return config, randomize(init_params(Model(**config), TINY_RESOLUTION), seed=seed)


def _tiny_params(kind: str, dtype: str = "float32", seed: int = 0):
    """(config, randomized params) of the tiny model `TINY_LLMS[kind]` (cached)."""
    config, params = _tiny_float32_params(kind, seed)
    return config, jax.tree.map(lambda x: x.astype(dtype), params)


# -- transformers -> ours: the logits ------------------------------------------


@parity
@pytest.mark.parametrize("mask_ar", [PREFIX_LM, CAUSAL], ids=["prefix_lm", "causal"])
def test_imported_model_matches_transformers(hf_tiny, mask_ar):
    kind, hf_model = hf_tiny
    config, params = import_hf_state_dict(hf_model.state_dict(), hf_model.config)
    assert vit_config(**config["img"]) == vit_config(**TINY_IMG)
    assert gemma_config(**config["llm"]) == gemma_config(**EXPECTED_LLM[kind])

    image, tokens, mask_ar = _inputs(mask_ar)
    ours = _our_logits(config, params, image, tokens, mask_ar)
    theirs = _hf_text_logits(hf_model, image, tokens, mask_ar)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
    # transformers 5.23 builds the same mask in train mode (dropout is 0).
    hf_model.train()
    try:
        np.testing.assert_allclose(
            _hf_text_logits(hf_model, image, tokens, mask_ar), theirs, rtol=0, atol=ATOL
        )
    finally:
        hf_model.eval()


@parity
def test_transformers_logits_depend_on_the_mask(hf_tiny):
    """Guards the parity test: prefix-LM and causal runs must differ in the prefix."""
    _, hf_model = hf_tiny
    prefix_lm = _hf_text_logits(hf_model, *_inputs(PREFIX_LM))
    causal = _hf_text_logits(hf_model, *_inputs(CAUSAL))
    assert np.abs(prefix_lm[:, :3] - causal[:, :3]).max() > 100 * ATOL


# -- ours -> transformers: the exported folder ---------------------------------


@parity
@pytest.mark.parametrize("kind", sorted(TINY_LLMS))
def test_exported_folder_loads_in_transformers_with_same_logits(kind, tmp_path):
    transformers = _transformers()
    config, params = _tiny_params(kind)
    folder = export_hf(params, config, tmp_path / "hf", resolution=TINY_RESOLUTION)
    hf_model, info = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        folder, output_loading_info=True
    )
    assert not any(info.values()), info  # no weight left at its random init
    image, tokens, mask_ar = _inputs(PREFIX_LM)
    theirs = _hf_text_logits(hf_model.eval(), image, tokens, mask_ar)
    ours = _our_logits(config, params, image, tokens, mask_ar)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


@parity
@pytest.mark.parametrize(
    "name", ["paligemma-3b-pt-224", "paligemma2-3b-pt-448", "paligemma2-10b-pt-224"]
)
def test_real_size_names_and_shapes_match_transformers(name):
    """Builds the real model on torch's meta device: shapes only, no memory."""
    transformers = _transformers()
    import torch

    ckpt = CHECKPOINTS[name]
    hf_config = to_hf_config(ckpt.config, resolution=ckpt.resolution)
    with torch.device("meta"):
        model = transformers.PaliGemmaForConditionalGeneration(
            transformers.PaliGemmaConfig(**hf_config)
        )
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert hf_shapes(ckpt.config, resolution=ckpt.resolution) == theirs


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["pg1", "pg2"])
def test_ours_to_hf_folder_to_ours_is_bit_exact(kind, dtype, tmp_path):
    pytest.importorskip("safetensors", reason=NEEDS_EXTRA)
    config, params = _tiny_params(kind, dtype)
    folder = export_hf(params, config, tmp_path / "hf", resolution=TINY_RESOLUTION)
    assert json.loads((folder / "config.json").read_text())["dtype"] == dtype
    got_config, got_params = import_hf(folder)
    assert vit_config(**got_config["img"]) == vit_config(**config["img"])
    assert gemma_config(**got_config["llm"]) == gemma_config(**config["llm"])
    _assert_trees_bit_equal(got_params, params)


@parity
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_to_ours_to_hf_state_dict_is_bit_exact(hf_tiny, dtype):
    import torch

    _, hf_model = hf_tiny
    state_dict = {k: v.to(getattr(torch, dtype)) for k, v in hf_model.state_dict().items()}
    config, params = import_hf_state_dict(state_dict, hf_model.config)
    round_trip = to_hf_state_dict(params, config, resolution=TINY_RESOLUTION)
    assert sorted(round_trip) == sorted(state_dict)
    for name, tensor in state_dict.items():
        assert round_trip[name].dtype == _numpy(tensor).dtype, name
        assert np.array_equal(round_trip[name], _numpy(tensor)), name


# -- key layouts ---------------------------------------------------------------


def _to_transformers4_names(state_dict: dict) -> dict:
    """Renames transformers 5 module keys to the layout of transformers 4 files."""
    renames = {
        "model.language_model.": "language_model.model.",
        "model.vision_tower.": "vision_tower.vision_model.",
        "model.multi_modal_projector.": "multi_modal_projector.",
        "lm_head.": "language_model.lm_head.",
    }
    renamed = {}
    for name, tensor in state_dict.items():
        prefix = next(p for p in renames if name.startswith(p))
        renamed[renames[prefix] + name[len(prefix) :]] = tensor
    return renamed


@parity
def test_transformers4_and_saved_layouts_import_the_same(hf_tiny, tmp_path):
    _, hf_model = hf_tiny
    state_dict = hf_model.state_dict()
    assert any(k.startswith("model.language_model.layers.") for k in state_dict)
    config, params = import_hf_state_dict(state_dict, hf_model.config)

    old = _to_transformers4_names(state_dict)
    assert "vision_tower.vision_model.post_layernorm.weight" in old
    old_config, old_params = import_hf_state_dict(old, hf_model.config.to_dict())
    assert old_config == config
    _assert_trees_bit_equal(old_params, params)

    # transformers' own save_pretrained, sharded: files of several tensors + an index.
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    saved_config, saved_params = import_hf(tmp_path)
    assert saved_config == config
    _assert_trees_bit_equal(saved_params, params)


@parity
@pytest.mark.parametrize("kind", ["pg1", "pg2"])
def test_sparse_configs_get_transformers_defaults(kind):
    """A config.json with sizes only, like the real ones, reads as transformers reads it."""
    transformers = _transformers()
    sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    text_keys = (*sizes, "model_type", "num_key_value_heads", "vocab_size")
    sparse = {
        "text_config": {k: HF_TEXT[kind][k] for k in text_keys},
        "vision_config": {k: HF_VISION[k] for k in (*sizes, "model_type", "patch_size")},
    }
    full = transformers.PaliGemmaConfig(**sparse).to_dict()
    assert from_hf_config(sparse) == from_hf_config(full)


# -- errors --------------------------------------------------------------------


def _tiny_hf_state_dict():
    config, params = _tiny_params("pg2")
    hf_config = to_hf_config(config, resolution=TINY_RESOLUTION)
    return to_hf_state_dict(params, config, resolution=TINY_RESOLUTION), hf_config


def test_missing_key_is_named():
    state_dict, hf_config = _tiny_hf_state_dict()
    del state_dict["model.language_model.layers.1.post_feedforward_layernorm.weight"]
    with pytest.raises(HFConversionError, match=r"missing: language_model\.layers\.1\.post_feedf"):
        import_hf_state_dict(state_dict, hf_config)


def test_misshaped_and_unexpected_keys_are_named():
    state_dict, hf_config = _tiny_hf_state_dict()
    name = "model.vision_tower.encoder.layers.0.self_attn.k_proj.weight"
    state_dict[name] = np.zeros((32, 31), np.float32)
    state_dict["model.vision_tower.head.probe"] = np.zeros((1, 1, 32), np.float32)
    with pytest.raises(HFConversionError) as error:
        import_hf_state_dict(state_dict, hf_config)
    message = str(error.value)
    assert "wrong shape: vision_tower.encoder.layers.0.self_attn.k_proj.weight" in message
    assert "(32, 31), expected (32, 32)" in message
    assert "unexpected: vision_tower.head.probe" in message


def test_untied_lm_head_is_refused():
    state_dict, hf_config = _tiny_hf_state_dict()
    state_dict["lm_head.weight"] = state_dict["lm_head.weight"] + 1
    with pytest.raises(HFConversionError, match="lm_head.weight differs"):
        import_hf_state_dict(state_dict, hf_config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("attention_bias", True, "attention_bias"),
        ("rope_parameters", {"rope_type": "default", "rope_theta": 1e6}, "RoPE"),
        ("query_pre_attn_scalar", 7, "query_pre_attn_scalar is 7"),
        ("model_type", "llama", "model_type is 'llama'"),
    ],
)
def test_unsupported_text_config_is_named(field, value, message):
    _, hf_config = _tiny_hf_state_dict()
    hf_config["text_config"][field] = value
    with pytest.raises(HFConversionError, match=message):
        from_hf_config(hf_config)


def test_missing_size_in_config_is_named():
    _, hf_config = _tiny_hf_state_dict()
    del hf_config["vision_config"]["patch_size"]
    with pytest.raises(HFConversionError, match=r"vision_config\.patch_size"):
        from_hf_config(hf_config)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_integer_weights_are_refused(dtype):
    state_dict, hf_config = _tiny_hf_state_dict()
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    state_dict[name] = state_dict[name].astype(dtype)
    with pytest.raises(HFConversionError) as caught:
        import_hf_state_dict(state_dict, hf_config)
    message = str(caught.value)
    assert f"point (1): language_model.layers.0.mlp.up_proj.weight ({dtype})" in message
    assert "dequantized" in message


def _hf_folder(tmp_path, config_text: str):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config_text)
    return folder


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"text_config": {', r"config.json is not valid JSON \(Expecting .* line 1 column 18\)"),
        ("[1, 2]", "config.json holds a JSON list, not the object of a PaliGemmaConfig"),
    ],
)
def test_config_that_is_not_a_json_object_is_named(tmp_path, text, message):
    with pytest.raises(HFConversionError, match=message):
        import_hf(_hf_folder(tmp_path, text))


def test_truncated_safetensors_file_is_named(tmp_path):
    pytest.importorskip("safetensors", reason=NEEDS_EXTRA)
    config, params = _tiny_params("pg1")
    folder = tmp_path / "hf"
    export_hf(params, config, folder, resolution=TINY_RESOLUTION)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(HFConversionError, match=rf"{weights} is not a readable safetensors file"):
        import_hf(folder)


def test_shard_index_that_is_not_json_is_named(tmp_path):
    folder = _hf_folder(tmp_path, json.dumps(_tiny_hf_state_dict()[1]))
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    with pytest.raises(HFConversionError, match="model.safetensors.index.json is not valid JSON"):
        import_hf(folder)


# -- smaller behaviours --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_real_configs_survive_the_config_round_trip(name):
    ckpt = CHECKPOINTS[name]
    config, resolution = from_hf_config(to_hf_config(ckpt.config, resolution=ckpt.resolution))
    assert resolution == ckpt.resolution
    assert vit_config(**config["img"]) == vit_config(**ckpt.config["img"])
    assert gemma_config(**config["llm"]) == gemma_config(**ckpt.config["llm"])


def test_vocab_size_keeps_the_first_rows():
    state_dict, hf_config = _tiny_hf_state_dict()
    config, params = import_hf_state_dict(state_dict, hf_config, vocab_size=90)
    assert config["llm"]["vocab_size"] == 90
    table = state_dict["model.language_model.embed_tokens.weight"]
    np.testing.assert_array_equal(params["llm"]["embedder"]["input_embedding"], table[:90])
    with pytest.raises(HFConversionError, match="vocab_size=97"):
        import_hf_state_dict(state_dict, hf_config, vocab_size=97)


def test_gemma1_with_softcaps_cannot_be_exported():
    config = {"img": TINY_IMG, "llm": dict(TINY_LLM_PG1, final_logits_softcap=30.0)}
    with pytest.raises(HFConversionError, match="post_norms"):
        to_hf_config(config, resolution=TINY_RESOLUTION)


def test_params_that_do_not_fit_the_config_are_named():
    config, params = _tiny_params("pg1")
    with pytest.raises(HFConversionError, match=r"wrong shape: img/pos_embedding"):
        to_hf_state_dict(params, config, resolution=2 * TINY_RESOLUTION)


def test_export_is_atomic_and_refuses_to_overwrite(tmp_path):
    pytest.importorskip("safetensors", reason=NEEDS_EXTRA)
    config, params = _tiny_params("pg1")
    folder = tmp_path / "hf"
    export_hf(params, config, folder, resolution=TINY_RESOLUTION)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_hf(params, config, folder, resolution=TINY_RESOLUTION)
    _, other = _tiny_params("pg1", seed=1)
    export_hf(other, config, folder, resolution=TINY_RESOLUTION, overwrite=True)
    _assert_trees_bit_equal(import_hf(folder)[1], other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary left behind
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
