"""LoRA adapters exported for Hugging Face PEFT: the names PEFT expects, and (parity extra)
the same logits from `peft.PeftModel` on transformers' PaliGemma as from ours."""

from __future__ import annotations

import json

import numpy as np
import pytest

from solutions import lora, peft_export
from solutions.hf import export_hf
from tests.test_hf import (
    ATOL,
    NEEDS_EXTRA,
    PREFIX_LM,
    TINY_RESOLUTION,
    _hf_text_logits,
    _inputs,
    _our_logits,
    _tiny_params,
    _transformers,
    parity,
)
from tests.test_lora import random_adapters


def test_state_dict_names_and_shapes_are_peft_s():
    config, params = _tiny_params("pg1")
    lora_config = lora.LoraConfig(rank=3, targets="attn+mlp")
    tensors = peft_export.peft_state_dict(lora.init_adapters(params, lora_config))
    layer = "base_model.model.model.language_model.layers.1."
    d, n, k, h, f = 32, 4, 1, 8, 64
    expected = {
        "self_attn.q_proj": (d, n * h),
        "self_attn.k_proj": (d, k * h),
        "self_attn.v_proj": (d, k * h),
        "self_attn.o_proj": (n * h, d),
        "mlp.gate_proj": (d, f),
        "mlp.up_proj": (d, f),
        "mlp.down_proj": (f, d),
    }
    for module, (inputs, outputs) in expected.items():
        assert tensors[f"{layer}{module}.lora_A.weight"].shape == (3, inputs), module
        assert tensors[f"{layer}{module}.lora_B.weight"].shape == (outputs, 3), module
    assert len(tensors) == 2 * 2 * len(expected)  # two layers, A and B
    assert all(t.dtype == np.float32 for t in tensors.values())


def test_adapter_config_targets_the_decoder_only(tmp_path):
    import re

    _, params = _tiny_params("pg1")
    lora_config = lora.LoraConfig(rank=2, alpha=5.0, targets="attn")
    folder = peft_export.export_peft(
        lora.init_adapters(params, lora_config), lora_config, tmp_path / "p"
    )
    settings = json.loads((folder / peft_export.ADAPTER_CONFIG).read_text())
    assert (settings["peft_type"], settings["r"], settings["lora_alpha"]) == ("LORA", 2, 5.0)
    pattern = re.compile(settings["target_modules"])
    assert pattern.fullmatch("model.language_model.layers.11.self_attn.k_proj")
    assert not pattern.fullmatch("model.language_model.layers.0.mlp.up_proj")  # attn only
    assert not pattern.fullmatch("model.vision_tower.encoder.layers.0.self_attn.q_proj")


@parity
@pytest.mark.parametrize("kind", ["pg1", "pg2", "fused_qkv"])
@pytest.mark.parametrize("targets", sorted(lora.TARGETS))
def test_peft_model_gives_our_adapted_logits(kind, targets, tmp_path):
    transformers = _transformers()
    peft = pytest.importorskip("peft", reason=NEEDS_EXTRA)
    config, params = _tiny_params(kind)
    lora_config = lora.LoraConfig(rank=3, alpha=4.5, targets=targets)
    adapters = random_adapters(params, lora_config)
    image, tokens, mask_ar = _inputs(PREFIX_LM)
    ours = _our_logits(
        config, lora.merge_adapters(params, adapters, lora_config), image, tokens, mask_ar
    )

    base = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        export_hf(params, config, tmp_path / "hf", resolution=TINY_RESOLUTION)
    )
    plain = _hf_text_logits(base.eval(), image, tokens, mask_ar)
    folder = peft_export.export_peft(adapters, lora_config, tmp_path / "peft")
    adapted = peft.PeftModel.from_pretrained(base, folder).eval()
    theirs = _hf_text_logits(adapted, image, tokens, mask_ar)
    assert np.abs(theirs - plain).max() > 1e-2  # the adapters were loaded and do act
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
