"""PaliGemma checkpoints to and from Hugging Face transformers.

`import_hf(folder)` reads a transformers PaliGemma folder (config.json and
*.safetensors, sharded or not) into this course's config and big_vision
parameter tree; `export_hf(params, config, folder, resolution=...)` writes one
that `PaliGemmaForConditionalGeneration.from_pretrained(folder)` loads and that
gives the same logits.

The two implementations compute the same function; only the storage differs:

- transformers keeps one `nn.Linear` per projection, weight `[out, in]`, heads
  flattened into `out` (head-major); big_vision keeps einsum weights with heads
  on their own axis (`q_einsum/w [N, D, H]`) and fuses k with v (or q, k, v
  when every query head has its own key/value head) and gate with up.
- transformers keeps one tensor per layer (`layers.3.…`); big_vision stacks
  the layers on axis 0.
- Gemma's RMSNorm is `x * rsqrt(mean(x²) + eps) * (1 + w)` in both, and both
  rotate the two halves of each head for RoPE, so those weights copy as they
  are. (transformers counts positions from 1, big_vision from 0; RoPE only
  sees differences between positions, so the logits agree.)
- Text embeddings are scaled by sqrt(width), image tokens are not, in both.
  transformers 4.x wrote this differently: it divided the projector's output
  by sqrt(width) and then multiplied every input embedding by sqrt(width),
  which cancels for image tokens. Either way the projector weights map to
  `img/head` unchanged.
- A Gemma 1 layer's `post_attention_layernorm` is the norm *before* the MLP
  (our `pre_ffw_norm`); Gemma 2 names that one `pre_feedforward_layernorm`
  and uses `post_attention_layernorm` for the norm after attention.

Three layouts of key names exist in the wild; all import:

    transformers 4 files     language_model.model.layers.0…   vision_tower.vision_model.encoder…
    transformers 5 files     language_model.model.layers.0…   vision_tower.encoder…
    transformers 5 modules   model.language_model.layers.0…   model.vision_tower.encoder…

Export writes the names of transformers 5 modules (the `state_dict()` of
`PaliGemmaForConditionalGeneration`) without `lm_head.weight`, which is tied
to the token embedding.

Two differences to know about. transformers' Gemma 2 uses a sliding window of
4,096 tokens in every other layer; big_vision (and this course) attends over
the whole sequence, so the two agree on sequences up to 4,096 tokens, and an
exported model has only full-attention layers. Hugging Face's PaliGemma
checkpoints pad the 257,152-row token table to 257,216 rows (the extra rows
hold `<image>` and padding); pass `vocab_size=257_152` on import to keep only
the rows the course's tokenizer uses.

To run an exported model in transformers, always pass `token_type_ids`: 0 on
the image tokens and the prefix, 1 on the suffix. That gives the prefix-LM
mask; without them transformers 5.23 attends bidirectionally everywhere (SDPA)
or causally everywhere, image tokens included (eager).

Reading and writing folders needs the `safetensors` package (the `parity`
extra); converting in-memory state dicts needs only numpy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping

import flax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from solutions.files import atomic_folder
from solutions.gemma import gemma_config
from solutions.model import Model, param_shapes
from solutions.siglip import vit_config

__all__ = [
    "HFConversionError",
    "export_hf",
    "from_hf_config",
    "hf_shapes",
    "import_hf",
    "import_hf_state_dict",
    "to_hf_config",
    "to_hf_state_dict",
]

ROPE_MAX_WAVELENGTH = 10_000.0  # `solutions.gemma.apply_rope`'s base
LAYER_NORM_EPS = 1e-6  # flax's LayerNorm default, which the image tower uses
TANH_GELU = "gelu_pytorch_tanh"  # transformers' name for Gemma's and SigLIP's GELU
LM_HEAD = "lm_head.weight"


class HFConversionError(ValueError):
    """A checkpoint or config that does not fit PaliGemma, with every reason."""


# -- configs -------------------------------------------------------------------

# transformers' defaults for the fields that real PaliGemma config.json files
# leave out (values of transformers 5.23's GemmaConfig, Gemma2Config and
# SiglipVisionConfig). Sizes are never defaulted: they must be in the file.
_TEXT_DEFAULTS = {
    "gemma": {"head_dim": 256, "rms_norm_eps": 1e-6},
    "gemma2": {
        "head_dim": 256,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 256,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
}
_VISION_DEFAULTS = {"image_size": 224, "layer_norm_eps": 1e-6, "num_channels": 3}
_TEXT_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
_VISION_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "patch_size",
)


def _as_dict(hf_config) -> dict:
    """A config.json dict, or a transformers config object, as a plain dict."""
    return hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)


def _text_problems(text: Mapping) -> list[str]:
    problems = []
    if text.get("attention_bias"):
        problems.append("text_config.attention_bias is true; Gemma's projections have no bias.")
    rope = text.get("rope_parameters") or {}
    theta = rope.get("rope_theta", text.get("rope_theta", ROPE_MAX_WAVELENGTH))
    if rope.get("rope_type", "default") != "default" or theta != ROPE_MAX_WAVELENGTH:
        problems.append(f"text_config's RoPE must be the default one with theta 10000, got {rope}.")
    # Gemma 1's config calls the activation `hidden_act`, Gemma 2's
    # `hidden_activation`; transformers reads Gemma 1's legacy "gelu" as tanh GELU.
    activation = text.get("hidden_activation") or text.get("hidden_act") or TANH_GELU
    accepted = (TANH_GELU, "gelu") if text["model_type"] == "gemma" else (TANH_GELU,)
    if activation not in accepted:
        problems.append(f"text_config's activation is {activation!r}; Gemma uses {TANH_GELU!r}.")
    return problems


def _vision_problems(vision: Mapping) -> list[str]:
    problems = []
    if vision.get("hidden_act", TANH_GELU) != TANH_GELU:
        problems.append(f"vision_config.hidden_act must be {TANH_GELU!r}.")
    if vision["layer_norm_eps"] != LAYER_NORM_EPS:
        problems.append(f"vision_config.layer_norm_eps must be {LAYER_NORM_EPS}.")
    if vision["num_channels"] != 3:
        problems.append("vision_config.num_channels must be 3 (RGB).")
    if vision["image_size"] % vision["patch_size"]:
        problems.append("vision_config.image_size must be a multiple of its patch_size.")
    return problems


def _query_pre_attn_norm(text: Mapping) -> str:
    """Gemma 2 scales queries by query_pre_attn_scalar**-0.5; name that scalar."""
    scalar = text.get("query_pre_attn_scalar", text["head_dim"])
    if scalar == text["head_dim"]:
        return "rsqrt_head_dim"
    if scalar == text["hidden_size"] // text["num_attention_heads"]:
        return "rsqrt_emb_per_head"
    raise HFConversionError(
        f"text_config.query_pre_attn_scalar is {scalar}; supported are head_dim "
        f"({text['head_dim']}) and hidden_size // num_attention_heads."
    )


def from_hf_config(hf_config) -> tuple[dict, int]:
    """Reads a transformers PaliGemma config.

    Args:
      hf_config: the dict of a config.json, or a `PaliGemmaConfig`.
    Returns:
      (config, resolution): our `{"img": {...}, "llm": {...}}` with every field
      explicit, and the image side in pixels.
    Raises:
      HFConversionError: naming every missing field or unsupported setting.
    """
    hf = _as_dict(hf_config)
    text, vision = hf.get("text_config"), hf.get("vision_config")
    if not isinstance(text, Mapping) or not isinstance(vision, Mapping):
        raise HFConversionError("The config needs a text_config and a vision_config.")
    model_type = text.get("model_type")
    if model_type not in _TEXT_DEFAULTS:
        raise HFConversionError(
            f"text_config.model_type is {model_type!r}; PaliGemma uses 'gemma' or 'gemma2'."
        )
    text = {**_TEXT_DEFAULTS[model_type], **text}
    vision = {**_VISION_DEFAULTS, **vision}
    missing = [f"text_config.{f}" for f in _TEXT_SIZES if f not in text]
    missing += [f"vision_config.{f}" for f in _VISION_SIZES if f not in vision]
    if missing:
        raise HFConversionError(f"The config lacks {missing}.")
    problems = _text_problems(text) + _vision_problems(vision)
    if problems:
        raise HFConversionError("Unsupported config:\n  " + "\n  ".join(problems))
    is_gemma2 = model_type == "gemma2"
    config = {
        "img": {
            "width": vision["hidden_size"],
            "depth": vision["num_hidden_layers"],
            "mlp_dim": vision["intermediate_size"],
            "num_heads": vision["num_attention_heads"],
            "patch_size": vision["patch_size"],
        },
        "llm": {
            "width": text["hidden_size"],
            "depth": text["num_hidden_layers"],
            "mlp_dim": text["intermediate_size"],
            "num_heads": text["num_attention_heads"],
            "num_kv_heads": text["num_key_value_heads"],
            "head_dim": text["head_dim"],
            "vocab_size": text["vocab_size"],
            "norm_eps": float(text["rms_norm_eps"]),
            # transformers writes "no softcap" as null; big_vision as 0.
            "final_logits_softcap": float(text.get("final_logit_softcapping") or 0.0),
            "attn_logits_softcap": float(text.get("attn_logit_softcapping") or 0.0),
            "post_norms": is_gemma2,
            "query_pre_attn_norm": _query_pre_attn_norm(text) if is_gemma2 else "rsqrt_head_dim",
        },
    }
    return config, vision["image_size"]


def _resolved(config: Mapping) -> tuple[dict, dict]:
    """Our config with named variants expanded: (ViT fields, Gemma fields)."""
    return vit_config(**dict(config.get("img") or {})), gemma_config(**dict(config["llm"]))


def _is_gemma1(llm: Mapping) -> bool:
    """Whether transformers' Gemma (1) class computes this decoder exactly."""
    gemma1 = dict(post_norms=False, final_logits_softcap=0.0, attn_logits_softcap=0.0)
    return all(llm[k] == v for k, v in gemma1.items()) and (
        llm["query_pre_attn_norm"] == "rsqrt_head_dim"
    )


def to_hf_config(config: Mapping, *, resolution: int, dtype: str = "float32") -> dict:
    """The config.json of `PaliGemmaForConditionalGeneration` for our config.

    Decoders without post-norms become transformers' Gemma, those with them its
    Gemma2 (with every layer on full attention, as big_vision computes it). The
    image token gets id `vocab_size`, one past the vocabulary (transformers
    looks it up as padding, then puts the image features there); with the real
    vocabulary of 257,152 that is the id of `<image>` in Hugging Face's
    PaliGemma tokenizer.

    Args:
      config: our `{"img": {...}, "llm": {...}}`, variants allowed.
      resolution: image side in pixels.
      dtype: the parameters' dtype name, e.g. "float32" or "bfloat16".
    """
    vit, llm = _resolved(config)
    patch = _square_patch(vit)
    text = {
        "hidden_size": llm["width"],
        "intermediate_size": llm["mlp_dim"],
        "num_hidden_layers": llm["depth"],
        "num_attention_heads": llm["num_heads"],
        "num_key_value_heads": llm["num_kv_heads"],
        "head_dim": llm["head_dim"],
        "vocab_size": llm["vocab_size"],
        "rms_norm_eps": llm["norm_eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_MAX_WAVELENGTH},
        "tie_word_embeddings": True,
    }
    if _is_gemma1(llm):
        text.update(model_type="gemma", hidden_act=TANH_GELU)
    elif llm["post_norms"]:
        per_head = {
            "rsqrt_head_dim": llm["head_dim"],
            "rsqrt_emb_per_head": llm["width"] // llm["num_heads"],
        }
        text.update(
            model_type="gemma2",
            hidden_activation=TANH_GELU,
            query_pre_attn_scalar=per_head[llm["query_pre_attn_norm"]],
            final_logit_softcapping=llm["final_logits_softcap"] or None,
            attn_logit_softcapping=llm["attn_logits_softcap"] or None,
            layer_types=["full_attention"] * llm["depth"],
        )
    else:
        raise HFConversionError(
            "transformers has no Gemma without post-norms but with softcaps or another query "
            "scale: set post_norms=True (Gemma 2) or drop the softcaps."
        )
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": vit["width"],
        "intermediate_size": vit["mlp_dim"],
        "num_hidden_layers": vit["depth"],
        "num_attention_heads": vit["num_heads"],
        "patch_size": patch,
        "image_size": resolution,
        "num_channels": 3,
        "hidden_act": TANH_GELU,
        "layer_norm_eps": LAYER_NORM_EPS,
        "vision_use_head": False,
    }
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "dtype": dtype,
        "hidden_size": llm["width"],
        "projection_dim": llm["width"],
        "vocab_size": llm["vocab_size"],
        "image_token_index": llm["vocab_size"],
        "tie_word_embeddings": True,
        "text_config": text,
        "vision_config": vision,
    }


def _square_patch(vit: Mapping) -> int:
    height, width = vit["patch_size"]
    if height != width:
        raise HFConversionError(
            f"transformers' SigLIP needs square patches, got {vit['patch_size']}."
        )
    return height


# -- the name table ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Dims:
    """The sizes that shape every tensor."""

    vit_width: int
    vit_depth: int
    vit_mlp: int
    vit_heads: int
    patch: int
    num_patches: int
    width: int
    depth: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    post_norms: bool


def _dims(config: Mapping, resolution: int) -> _Dims:
    vit, llm = _resolved(config)
    patch = _square_patch(vit)
    if resolution % patch:
        raise HFConversionError(f"resolution {resolution} is not a multiple of the patch {patch}.")
    return _Dims(
        vit_width=vit["width"],
        vit_depth=vit["depth"],
        vit_mlp=vit["mlp_dim"],
        vit_heads=vit["num_heads"],
        patch=patch,
        num_patches=(resolution // patch) ** 2,
        width=llm["width"],
        depth=llm["depth"],
        mlp=llm["mlp_dim"],
        heads=llm["num_heads"],
        kv_heads=llm["num_kv_heads"],
        head_dim=llm["head_dim"],
        vocab=llm["vocab_size"],
        post_norms=llm["post_norms"],
    )


@dataclasses.dataclass(frozen=True)
class _Rule:
    """How one of our parameters and its transformers tensor(s) correspond.

    With `depth` > 0 the HF names hold "{i}", one tensor set per layer, and our
    parameter stacks the layers on axis 0; `to_ours` and `to_hf` then convert
    one layer.
    """

    ours: str
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    to_ours: Callable[..., np.ndarray]
    to_hf: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    depth: int = 0

    def hf_names(self, layer: int) -> list[str]:
        return [name.format(i=layer) for name in self.hf]


def _copy(ours: str, hf: str, shape: tuple[int, ...], depth: int = 0) -> _Rule:
    """A tensor stored the same way in both."""
    return _Rule(ours, (hf,), (shape,), lambda w: w, lambda w: (w,), depth)


def _dense(ours: str, hf: str, shape: tuple[int, ...], depth: int = 0) -> _Rule:
    """A `nn.Linear` weight [out, in] that flax keeps as a kernel [in, out]."""
    return _Rule(ours, (hf,), (shape,), lambda w: w.T, lambda w: (w.T,), depth)


def _vision_rules(d: _Dims) -> list[_Rule]:
    width, heads, depth = d.vit_width, d.vit_heads, d.vit_depth
    head_dim = width // heads
    block, layer = "img/Transformer/encoderblock/", "vision_tower.encoder.layers.{i}."
    attn = block + "MultiHeadDotProductAttention_0/"
    rules = [
        # Conv2d weight [out, in, kh, kw] <-> flax Conv kernel [kh, kw, in, out].
        _Rule(
            "img/embedding/kernel",
            ("vision_tower.embeddings.patch_embedding.weight",),
            ((width, 3, d.patch, d.patch),),
            lambda w: w.transpose(2, 3, 1, 0),
            lambda w: (w.transpose(3, 2, 0, 1),),
        ),
        _copy("img/embedding/bias", "vision_tower.embeddings.patch_embedding.bias", (width,)),
        _Rule(
            "img/pos_embedding",
            ("vision_tower.embeddings.position_embedding.weight",),
            ((d.num_patches, width),),
            lambda w: w[None],
            lambda w: (w[0],),
        ),
        _copy(block + "LayerNorm_0/scale", layer + "layer_norm1.weight", (width,), depth),
        _copy(block + "LayerNorm_0/bias", layer + "layer_norm1.bias", (width,), depth),
        _copy(block + "LayerNorm_1/scale", layer + "layer_norm2.weight", (width,), depth),
        _copy(block + "LayerNorm_1/bias", layer + "layer_norm2.bias", (width,), depth),
        _dense(
            block + "MlpBlock_0/Dense_0/kernel", layer + "mlp.fc1.weight", (d.vit_mlp, width), depth
        ),
        _copy(block + "MlpBlock_0/Dense_0/bias", layer + "mlp.fc1.bias", (d.vit_mlp,), depth),
        _dense(
            block + "MlpBlock_0/Dense_1/kernel", layer + "mlp.fc2.weight", (width, d.vit_mlp), depth
        ),
        _copy(block + "MlpBlock_0/Dense_1/bias", layer + "mlp.fc2.bias", (width,), depth),
        # The output projection: [D, N*H] <-> [N, H, D].
        _Rule(
            attn + "out/kernel",
            (layer + "self_attn.out_proj.weight",),
            ((width, width),),
            lambda w: w.T.reshape(heads, head_dim, width),
            lambda w: (w.reshape(-1, width).T,),
            depth,
        ),
        _copy(attn + "out/bias", layer + "self_attn.out_proj.bias", (width,), depth),
        _copy("img/Transformer/encoder_norm/scale", "vision_tower.post_layernorm.weight", (width,)),
        _copy("img/Transformer/encoder_norm/bias", "vision_tower.post_layernorm.bias", (width,)),
        _dense("img/head/kernel", "multi_modal_projector.linear.weight", (d.width, width)),
        _copy("img/head/bias", "multi_modal_projector.linear.bias", (d.width,)),
    ]
    for ours, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        # [N*H, D] <-> [D, N, H] and bias [N*H] <-> [N, H].
        rules.append(
            _Rule(
                attn + f"{ours}/kernel",
                (layer + f"self_attn.{hf}.weight",),
                ((width, width),),
                lambda w: w.T.reshape(width, heads, head_dim),
                lambda w: (w.reshape(width, -1).T,),
                depth,
            )
        )
        rules.append(
            _Rule(
                attn + f"{ours}/bias",
                (layer + f"self_attn.{hf}.bias",),
                ((width,),),
                lambda b: b.reshape(heads, head_dim),
                lambda b: (b.reshape(width),),
                depth,
            )
        )
    return rules


def _split_heads(w: np.ndarray, heads: int) -> np.ndarray:
    """A Gemma projection [heads*H, D] -> big_vision's [heads, D, H]."""
    return w.reshape(heads, -1, w.shape[-1]).transpose(0, 2, 1)


def _merge_heads(w: np.ndarray) -> np.ndarray:
    """big_vision's [heads, D, H] -> a Gemma projection [heads*H, D]."""
    return w.transpose(0, 2, 1).reshape(-1, w.shape[1])


# Gemma's per-layer norms: ours <- transformers. Gemma 1's
# `post_attention_layernorm` normalises the MLP's input.
_GEMMA1_NORMS = {
    "pre_attention_norm": "input_layernorm",
    "pre_ffw_norm": "post_attention_layernorm",
}
_GEMMA2_NORMS = {
    "pre_attention_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def _attention_rules(d: _Dims, layer: str) -> list[_Rule]:
    n, k, h, width, depth = d.heads, d.kv_heads, d.head_dim, d.width, d.depth
    q, kv = (n * h, width), (k * h, width)
    names = tuple(layer + f"self_attn.{p}_proj.weight" for p in "qkv")
    if n == k:  # big_vision fuses all three when each query head has its own k/v.
        fused = [
            _Rule(
                "llm/layers/attn/qkv_einsum/w",
                names,
                (q, q, q),
                lambda *qkv: np.stack([_split_heads(w, n) for w in qkv]),
                lambda w: tuple(_merge_heads(part) for part in w),
                depth,
            )
        ]
    else:
        fused = [
            _Rule(
                "llm/layers/attn/q_einsum/w",
                names[:1],
                (q,),
                lambda w: _split_heads(w, n),
                lambda w: (_merge_heads(w),),
                depth,
            ),
            _Rule(
                "llm/layers/attn/kv_einsum/w",
                names[1:],
                (kv, kv),
                lambda key, value: np.stack([_split_heads(key, k), _split_heads(value, k)]),
                lambda w: (_merge_heads(w[0]), _merge_heads(w[1])),
                depth,
            ),
        ]
    # o_proj [D, N*H] <-> attn_vec_einsum [N, H, D].
    out = _Rule(
        "llm/layers/attn/attn_vec_einsum/w",
        (layer + "self_attn.o_proj.weight",),
        ((width, n * h),),
        lambda w: w.T.reshape(n, h, width),
        lambda w: (w.reshape(n * h, width).T,),
        depth,
    )
    return [*fused, out]


def _text_rules(d: _Dims) -> list[_Rule]:
    width, mlp, depth = d.width, d.mlp, d.depth
    layer = "language_model.layers.{i}."
    norms = _GEMMA2_NORMS if d.post_norms else _GEMMA1_NORMS
    return [
        _copy(
            "llm/embedder/input_embedding", "language_model.embed_tokens.weight", (d.vocab, width)
        ),
        *_attention_rules(d, layer),
        # gate_proj and up_proj [F, D] <-> gating_einsum [2, D, F].
        _Rule(
            "llm/layers/mlp/gating_einsum",
            (layer + "mlp.gate_proj.weight", layer + "mlp.up_proj.weight"),
            ((mlp, width), (mlp, width)),
            lambda gate, up: np.stack([gate.T, up.T]),
            lambda w: (w[0].T, w[1].T),
            depth,
        ),
        _dense("llm/layers/mlp/linear", layer + "mlp.down_proj.weight", (width, mlp), depth),
        *(
            _copy(f"llm/layers/{ours}/scale", layer + f"{hf}.weight", (width,), depth)
            for ours, hf in norms.items()
        ),
        _copy("llm/final_norm/scale", "language_model.norm.weight", (width,)),
    ]


def _rules(d: _Dims) -> list[_Rule]:
    return _vision_rules(d) + _text_rules(d)


# -- key layouts ---------------------------------------------------------------

# Rewrites, applied in order, from every layout in the wild to the short names
# of the table above.
_PREFIX_REWRITES = (
    ("model.language_model.", "language_model."),  # transformers 5 modules
    ("language_model.model.", "language_model."),  # transformers 4 and 5 files
    ("language_model.lm_head.", "lm_head."),  # transformers 4
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),  # transformers 4
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
_EXPORT_PREFIX = "model."  # short name -> transformers 5 module name


def _short_name(name: str) -> str:
    for old, new in _PREFIX_REWRITES:
        if name.startswith(old):
            name = new + name[len(old) :]
    return name


def _to_numpy(value) -> np.ndarray:
    """A numpy, jax or torch array as numpy, keeping bfloat16 bit for bit."""
    if hasattr(value, "detach"):  # torch: numpy has no bfloat16, so move the raw bits.
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _short_names(state_dict: Mapping) -> dict[str, np.ndarray]:
    tensors = {}
    for name, value in state_dict.items():
        short = _short_name(name)
        if short in tensors:
            raise HFConversionError(f"{name!r} appears twice (as two key layouts at once?).")
        tensors[short] = _to_numpy(value)
    return tensors


def _check_float_dtypes(tensors: Mapping[str, np.ndarray]) -> None:
    """Refuses integer (or bool) weights: copied as they are, they would compute nonsense.

    Quantized checkpoints (int8 with scales, 4-bit) store integers next to
    other tensors that say how to read them; the course does not read those.
    """
    wrong = sorted(name for name, x in tensors.items() if not jnp.issubdtype(x.dtype, jnp.floating))
    if wrong:
        listed = ", ".join(f"{name} ({tensors[name].dtype})" for name in wrong[:5])
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise HFConversionError(
            f"Weights that are not floating point ({len(wrong)}): {listed}{more}. PaliGemma's "
            "weights are float32, bfloat16 or float16; a quantized checkpoint must be "
            "dequantized first (or use the unquantized release)."
        )


def _expected_shapes(d: _Dims) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for rule in _rules(d):
        for layer in range(max(rule.depth, 1)):
            shapes.update(zip(rule.hf_names(layer), rule.hf_shapes, strict=True))
    return shapes


def hf_shapes(config: Mapping, *, resolution: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the transformers state dict our config maps to.

    The names are those of `PaliGemmaForConditionalGeneration.state_dict()`,
    `lm_head.weight` (tied to the token embedding) included.
    """
    d = _dims(config, resolution)
    shapes = {_EXPORT_PREFIX + k: v for k, v in _expected_shapes(d).items()}
    return {**shapes, LM_HEAD: (d.vocab, d.width)}


def _check_tensors(tensors: Mapping[str, np.ndarray], d: _Dims) -> None:
    """Raises one HFConversionError listing every missing, unexpected or mis-shaped key."""
    expected = _expected_shapes(d)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - {LM_HEAD})
    wrong = [
        f"{name}: {tuple(tensors[name].shape)}, expected {shape}"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    embedding = tensors.get("language_model.embed_tokens.weight")
    if LM_HEAD in tensors and not (
        embedding is not None and np.array_equal(tensors[LM_HEAD], embedding)
    ):
        wrong.append(f"{LM_HEAD} differs from the token embedding; PaliGemma ties the two.")
    if missing or unexpected or wrong:
        lines = [f"missing: {name}" for name in missing]
        lines += [f"unexpected: {name}" for name in unexpected]
        lines += [f"wrong shape: {line}" for line in wrong]
        raise HFConversionError(
            "The state dict does not fit its config (names without their layout prefix):\n  "
            + "\n  ".join(lines)
        )


# -- import --------------------------------------------------------------------


def import_hf_state_dict(state_dict: Mapping, hf_config, *, vocab_size: int | None = None):
    """Converts a transformers PaliGemma state dict to our parameters.

    Args:
      state_dict: name -> numpy, jax or torch array, in any of the key layouts
        (see the module docstring); `lm_head.weight` may be there or not.
      hf_config: its config.json as a dict, or a `PaliGemmaConfig`.
      vocab_size: keep only this many rows of the token table (e.g. 257_152
        to drop the rows Hugging Face adds for `<image>` and padding).
    Returns:
      (config, params): our explicit config and big_vision's nested parameter
      tree of numpy arrays, in the checkpoint's dtypes.
    Raises:
      HFConversionError: listing every missing, unexpected or mis-shaped key,
        or the config fields we cannot honour; or weights that are not
        floating point (integers of a quantized checkpoint).
    """
    config, resolution = from_hf_config(hf_config)
    dims = _dims(config, resolution)
    tensors = _short_names(state_dict)
    _check_tensors(tensors, dims)
    _check_float_dtypes(tensors)
    flat = {}
    for rule in _rules(dims):
        if rule.depth:
            layers = [
                rule.to_ours(*(tensors[n] for n in rule.hf_names(i))) for i in range(rule.depth)
            ]
            flat[rule.ours] = np.stack(layers)
        else:
            flat[rule.ours] = rule.to_ours(*(tensors[n] for n in rule.hf))
    if vocab_size is not None:
        flat["llm/embedder/input_embedding"] = _trim_vocab(
            flat["llm/embedder/input_embedding"], vocab_size
        )
        config["llm"]["vocab_size"] = vocab_size
    return config, flax.traverse_util.unflatten_dict(flat, sep="/")


def _trim_vocab(embedding: np.ndarray, vocab_size: int) -> np.ndarray:
    if vocab_size > embedding.shape[0]:
        raise HFConversionError(
            f"vocab_size={vocab_size} is more than the checkpoint's {embedding.shape[0]} rows."
        )
    return embedding[:vocab_size]


def _read_json(path: pathlib.Path, *, should_hold: str):
    """A JSON file's content, or an HFConversionError naming the file and where it breaks."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HFConversionError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            f"it should hold {should_hold}. Download or export the folder again."
        ) from None
    except UnicodeDecodeError:
        raise HFConversionError(
            f"{path} is not UTF-8 text; it should hold {should_hold}."
        ) from None


def _shard_files(index: pathlib.Path) -> list[str]:
    """The file names a `model.safetensors.index.json` maps weights to."""
    content = _read_json(index, should_hold='{"weight_map": {tensor name: file name}}')
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise HFConversionError(
            f'{index} has no "weight_map" of tensor names to file names; '
            "download or export the folder again."
        )
    return sorted(set(weight_map.values()))


def _load_safetensors_file(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the shard index of {path.parent} names it.")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise HFConversionError(
            f"{path} is not a readable safetensors file ({err}): it is truncated, e.g. by an "
            "interrupted download, or damaged. Download or export it again."
        ) from None


def _read_safetensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a folder's *.safetensors files, following a shard index."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        paths = [folder / name for name in _shard_files(index)]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"No *.safetensors file in {folder}.")
    tensors = {}
    for path in paths:
        for name, array in _load_safetensors_file(path).items():
            if name in tensors:
                raise HFConversionError(f"{name!r} is in more than one file of {folder}.")
            tensors[name] = array
    return tensors


def import_hf(folder: str | os.PathLike, *, vocab_size: int | None = None):
    """Reads a transformers PaliGemma folder (config.json + *.safetensors).

    Returns (config, params) as `import_hf_state_dict` does; the image
    resolution is `from_hf_config(...)[1]` or the size of `img/pos_embedding`.
    """
    folder = pathlib.Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} does not exist: is {folder} a transformers model folder?"
        )
    hf_config = _read_json(config_path, should_hold="a PaliGemmaConfig as a JSON object")
    if not isinstance(hf_config, dict):
        raise HFConversionError(
            f"{config_path} holds a JSON {type(hf_config).__name__}, not the object of a "
            "PaliGemmaConfig; download or export the folder again."
        )
    return import_hf_state_dict(_read_safetensors(folder), hf_config, vocab_size=vocab_size)


# -- export --------------------------------------------------------------------


def _check_params(flat: Mapping[str, np.ndarray], config: Mapping, resolution: int) -> None:
    """Raises one HFConversionError listing every parameter that does not fit the config."""
    expected = {
        name: tuple(s.shape)
        for name, s in flax.traverse_util.flatten_dict(
            param_shapes(Model(**config), resolution), sep="/"
        ).items()
    }
    lines = [f"missing: {name}" for name in sorted(set(expected) - set(flat))]
    lines += [f"unexpected: {name}" for name in sorted(set(flat) - set(expected))]
    lines += [
        f"wrong shape: {name}: {flat[name].shape}, expected {shape}"
        for name, shape in expected.items()
        if name in flat and flat[name].shape != shape
    ]
    if lines:
        raise HFConversionError(
            f"The parameters do not fit the config at resolution {resolution}:\n  "
            + "\n  ".join(lines)
        )


def to_hf_state_dict(params: Mapping, config: Mapping, *, resolution: int) -> dict[str, np.ndarray]:
    """Converts our parameters to a transformers PaliGemma state dict.

    Args:
      params: big_vision's nested tree (numpy or jax arrays; dtypes are kept).
      config: our `{"img": {...}, "llm": {...}}`.
      resolution: image side in pixels the parameters are for.
    Returns:
      name -> numpy array with the names of
      `PaliGemmaForConditionalGeneration.state_dict()`; `lm_head.weight` is the
      token embedding itself (the two are tied).
    """
    flat = {k: _to_numpy(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
    _check_params(flat, config, resolution)
    state_dict = {}
    for rule in _rules(_dims(config, resolution)):
        weight = flat[rule.ours]
        for layer, part in enumerate(weight if rule.depth else [weight]):
            for name, tensor in zip(rule.hf_names(layer), rule.to_hf(part), strict=True):
                state_dict[_EXPORT_PREFIX + name] = tensor
    state_dict[LM_HEAD] = state_dict[_EXPORT_PREFIX + "language_model.embed_tokens.weight"]
    return state_dict


def export_hf(
    params: Mapping,
    config: Mapping,
    out_dir: str | os.PathLike,
    *,
    resolution: int,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes a folder that `PaliGemmaForConditionalGeneration.from_pretrained` loads.

    The folder holds config.json and model.safetensors (in the parameters'
    dtype: bfloat16 stays bfloat16). It is written next to `out_dir` under a
    temporary name and renamed into place, so a crash never leaves half a
    model behind. Tokenizer and processor files are not written.

    Args:
      params: big_vision's nested tree.
      config: our `{"img": {...}, "llm": {...}}`.
      out_dir: the folder to create.
      resolution: image side in pixels.
      overwrite: replace `out_dir` if it exists (otherwise that is an error).
    Returns:
      The folder's path.
    """
    from safetensors.numpy import save_file

    state_dict = to_hf_state_dict(params, config, resolution=resolution)
    del state_dict[LM_HEAD]  # tied: transformers' own files leave it out too
    dtype = state_dict[_EXPORT_PREFIX + "language_model.embed_tokens.weight"].dtype
    hf_config = to_hf_config(config, resolution=resolution, dtype=str(dtype))
    with atomic_folder(out_dir, overwrite=overwrite) as tmp_dir:
        (tmp_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        tensors = {name: np.ascontiguousarray(t) for name, t in state_dict.items()}
        save_file(tensors, tmp_dir / "model.safetensors", metadata={"format": "pt"})
    return pathlib.Path(out_dir)
