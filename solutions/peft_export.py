"""LoRA adapters as Hugging Face PEFT reads them, for transformers' PaliGemma.

    export_peft(adapters, lora_config, "runs/mine/peft")
    # then, in PyTorch:
    #   model = PaliGemmaForConditionalGeneration.from_pretrained(...)
    #   model = peft.PeftModel.from_pretrained(model, "runs/mine/peft")

The folder holds `adapter_config.json` and `adapter_model.safetensors`, one
`lora_A` [r, in] and `lora_B` [out, r] per adapted `nn.Linear` of the decoder,
named as PEFT names them (`base_model.model.<module>.lora_A.weight`). PEFT adds
`lora_alpha / r * B @ A` to the weight [out, in]; our fused weights (key and
value in `kv_einsum`, gate and up in `gating_einsum`) already hold one A and B
per projection (`solutions.lora.ADAPTABLE`), so each becomes PEFT's k_proj and
v_proj, gate_proj and up_proj exactly. The adapters are float32, as trained.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable

import numpy as np

from solutions.files import atomic_folder
from solutions.lora import LAYERS, TARGETS, LoraConfig, adapter_pairs

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HF_LAYER = "model.language_model.layers.{i}."  # transformers 5's module names


def _heads_out(a, b):
    """q/k/v of one layer: a [D, r], b [r, heads, H] -> (A [r, D], B [heads*H, r])."""
    return a.T, b.transpose(1, 2, 0).reshape(-1, b.shape[0])


def _heads_in(a, b):
    """o_proj: a [N, H, r], b [r, D] -> (A [r, N*H], B [D, r])."""
    return a.reshape(-1, a.shape[-1]).T, b.T


def _dense(a, b):
    """gate/up/down: a [in, r], b [r, out] -> (A [r, in], B [out, r])."""
    return a.T, b.T


# Our adapted weight -> [(transformers module under a layer, which group entry, converter)].
_MODULES: dict[str, list[tuple[str, int | None, Callable]]] = {
    "attn/q_einsum/w": [("self_attn.q_proj", None, _heads_out)],
    "attn/kv_einsum/w": [("self_attn.k_proj", 0, _heads_out), ("self_attn.v_proj", 1, _heads_out)],
    "attn/qkv_einsum/w": [
        ("self_attn.q_proj", 0, _heads_out),
        ("self_attn.k_proj", 1, _heads_out),
        ("self_attn.v_proj", 2, _heads_out),
    ],
    "attn/attn_vec_einsum/w": [("self_attn.o_proj", None, _heads_in)],
    "mlp/gating_einsum": [("mlp.gate_proj", 0, _dense), ("mlp.up_proj", 1, _dense)],
    "mlp/linear": [("mlp.down_proj", None, _dense)],
}


def peft_state_dict(adapters) -> dict[str, np.ndarray]:
    """The adapters as PEFT's state dict: `base_model.model.<module>.lora_{A,B}.weight`
    -> float32 numpy arrays, one pair per layer and projection."""
    tensors = {}
    for name, (a, b) in adapter_pairs(adapters).items():
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        for module, part, convert in _MODULES[name[len(LAYERS) :]]:
            for layer in range(a.shape[0]):
                a_l, b_l = (
                    (a[layer], b[layer]) if part is None else (a[layer][part], b[layer][part])
                )
                lora_a, lora_b = convert(a_l, b_l)
                prefix = f"base_model.model.{HF_LAYER.format(i=layer)}{module}"
                tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(lora_a)
                tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(lora_b)
    return tensors


def target_modules(config: LoraConfig) -> str:
    """PEFT's `target_modules`, as the regular expression it matches whole module names
    with: the decoder's projections only (the vision tower has q_proj too)."""
    modules = sorted(
        {m.split(".")[-1] for key in TARGETS[config.targets] for m, _, _ in _MODULES[key]}
    )
    return r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(modules) + ")"


def export_peft(
    adapters,
    config: LoraConfig,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    overwrite: bool = True,
) -> pathlib.Path:
    """Writes a PEFT LoRA folder that `peft.PeftModel.from_pretrained` loads onto
    transformers' `PaliGemmaForConditionalGeneration` of the same model.

    Args:
      adapters: the "lora" collection (`solutions.lora.init_adapters` and training).
      config: their rank, alpha and targets.
      out_dir: the folder, written whole or not at all (`files.atomic_folder`).
      base_model: recorded as `base_model_name_or_path`, e.g. "google/paligemma-3b-pt-224".
      overwrite: replace an existing folder.
    Returns:
      The folder's path.
    """
    from safetensors.numpy import save_file

    adapter_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": 0.0,
        "target_modules": target_modules(config),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    with atomic_folder(out_dir, overwrite=overwrite) as folder:
        (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
        save_file(peft_state_dict(adapters), folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return pathlib.Path(out_dir)
