"""LoRA: fine-tune a low-rank update of frozen weights instead of the weights themselves.

    W (frozen, 16 bits) ──►  W + (alpha / rank) * A @ B
                             A float32[in, rank], random;  B float32[rank, out], zeros

For a weight of `in` inputs and `out` outputs, the update trains rank * (in + out)
numbers instead of in * out (for the 3B model's attention at rank 8, 0.2% of
them), so gradients and optimizer state shrink with it, and B starting at zero
makes the adapted model start exactly where the base model is.

The adapters live in the flax collection "lora", beside the weights they adapt:
a pair `<name>_a`, `<name>_b` for the weight `<name>` (e.g.
`llm/layers/attn/q_einsum/w_a`), layers stacked on axis 0 as the weights are.
`model.apply({"params": params, "lora": scaled(adapters, config.scale)}, ...)`
runs the adapted model (`solutions.gemma` adds A @ B where it finds a pair); the
parameter tree is big_vision's, untouched. For training, `LoraModel` presents
base and adapters as one tree `{"base": params, "lora": adapters}` whose "lora"
half is the trainable subset (`trainable_adapters`), so the notebook's step,
mixed precision, NaN guard and loop (`solutions.train`) serve LoRA unchanged.

`merge_adapters` folds the update into the weights (a checkpoint that loads like
any other); `solutions.peft_export` writes the adapters as Hugging Face PEFT reads them.
"""

from __future__ import annotations

import dataclasses
import math
import string

import flax
import jax
import jax.numpy as jnp
import numpy as np

# The weights of a Gemma layer (names under llm/layers) that LoRA can adapt, each with
# its per-layer shape's (group axes, input axes); the other axes are outputs. A group axis
# holds separate projections fused in one array (key and value, gate and up): each gets
# its own A and B, as transformers' separate k_proj and v_proj would.
ADAPTABLE: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "attn/q_einsum/w": ((), (1,)),  # [N, D, H]
    "attn/kv_einsum/w": ((0,), (2,)),  # [2, K, D, H]
    "attn/qkv_einsum/w": ((0,), (2,)),  # [3, N, D, H] (every head its own k/v)
    "attn/attn_vec_einsum/w": ((), (0, 1)),  # [N, H, D]
    "mlp/gating_einsum": ((0,), (1,)),  # [2, D, F]
    "mlp/linear": ((), (0,)),  # [F, D]
}
TARGETS: dict[str, tuple[str, ...]] = {
    "attn": ("attn/q_einsum/w", "attn/kv_einsum/w", "attn/qkv_einsum/w", "attn/attn_vec_einsum/w"),
    "attn+mlp": tuple(ADAPTABLE),
}
LAYERS = "llm/layers/"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which weights get an update, of what rank, scaled how.

    Attributes:
      rank: the inner size r of A [in, r] and B [r, out].
      alpha: the update is scaled by alpha / rank (PEFT's `lora_alpha`), so changing
        the rank keeps the update's size at initialisation comparable.
      targets: a key of `TARGETS`: "attn" (the attention projections) or "attn+mlp".
    """

    rank: int = 8
    alpha: float = 16.0
    targets: str = "attn"

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"LoRA rank must be a whole number of at least 1, not {self.rank}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number above 0, not {self.alpha}")
        if self.targets not in TARGETS:
            raise ValueError(f"LoRA targets must be one of {sorted(TARGETS)}, not {self.targets!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _axes(key: str, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    group, inputs = ADAPTABLE[key]
    outputs = tuple(axis for axis in range(ndim) if axis not in group + inputs)
    return group, inputs, outputs


def lora_delta(a: jax.Array, b: jax.Array, key: str, ndim: int) -> jax.Array:
    """The update A @ B laid out like the weight `key` of `ndim` axes (per layer).

    Args:
      a: float[*group, *inputs, r], or with a leading layer axis [L, ...].
      b: float[*group, r, *outputs], with the same leading layer axis if `a` has one.
      key: a key of `ADAPTABLE`, e.g. "attn/q_einsum/w".
      ndim: the number of axes of one layer's weight (3 for q_einsum's [N, D, H]).
    Returns:
      float[...weight's shape], with the layer axis first if the inputs had one.
    """
    group, inputs, outputs = _axes(key, ndim)
    letters = string.ascii_lowercase[:ndim]
    layer = "y" if a.ndim == len(group) + len(inputs) + 1 + 1 else ""
    a_subscripts = layer + "".join(letters[i] for i in group + inputs) + "z"
    b_subscripts = layer + "".join(letters[i] for i in group) + "z"
    b_subscripts += "".join(letters[i] for i in outputs)
    return jnp.einsum(f"{a_subscripts},{b_subscripts}->{layer}{letters}", a, b)


def adapter_shapes(weight_shape: tuple[int, ...], key: str, rank: int):
    """(A's shape, B's shape) for a stacked weight [L, ...] and rank r."""
    depth, per_layer = weight_shape[0], weight_shape[1:]
    group, inputs, outputs = _axes(key, len(per_layer))
    dims = [per_layer[i] for i in group]
    a = (depth, *dims, *(per_layer[i] for i in inputs), rank)
    b = (depth, *dims, rank, *(per_layer[i] for i in outputs))
    return a, b


def _targeted(flat_params: dict, targets: str) -> list[str]:
    """The weights of `flat_params` that `targets` adapts, as keys of `ADAPTABLE`."""
    return [key for key in TARGETS[targets] if LAYERS + key in flat_params]


def init_adapters(params, config: LoraConfig, seed: int = 0) -> dict:
    """Fresh adapters for `params`: A uniform in +-1/sqrt(fan_in) (PEFT's default), B zeros.

    Args:
      params: the model's parameter tree (arrays or `jax.ShapeDtypeStruct`s).
      config: rank and targets.
      seed: seeds A.
    Returns:
      The "lora" collection: a nested dict of float32 arrays, `<name>_a` and `<name>_b`
      beside each targeted weight's path.
    """
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    rng = np.random.default_rng(seed)
    adapters = {}
    for key in _targeted(flat, config.targets):
        a_shape, b_shape = adapter_shapes(flat[LAYERS + key].shape, key, config.rank)
        _, inputs, _ = _axes(key, len(flat[LAYERS + key].shape) - 1)
        fan_in = math.prod(flat[LAYERS + key].shape[1 + i] for i in inputs)
        bound = 1.0 / math.sqrt(fan_in)
        adapters[LAYERS + key + "_a"] = rng.uniform(-bound, bound, a_shape).astype(np.float32)
        adapters[LAYERS + key + "_b"] = np.zeros(b_shape, np.float32)
    if not adapters:
        raise ValueError(f"LoRA targets {config.targets!r} match no weight of this model")
    return flax.traverse_util.unflatten_dict(adapters, sep="/")


def adapter_pairs(adapters) -> dict[str, tuple]:
    """{flat weight name: (A, B)} of an adapters tree, e.g. "llm/layers/mlp/linear"."""
    flat = flax.traverse_util.flatten_dict(adapters, sep="/")
    return {name[:-2]: (flat[name], flat[name[:-2] + "_b"]) for name in flat if name.endswith("_a")}


def scaled(adapters, scale: float):
    """The adapters with every B times `scale`: what the model adds is then A @ B."""
    flat = flax.traverse_util.flatten_dict(adapters, sep="/")
    return flax.traverse_util.unflatten_dict(
        {k: v * scale if k.endswith("_b") else v for k, v in flat.items()}, sep="/"
    )


def merge_adapters(params, adapters, config: LoraConfig) -> dict:
    """`params` with each adapted weight replaced by W + scale * A @ B, in float32 (a
    16-bit weight would round a small update away); every other leaf is kept as is.

    The result loads, saves and decodes like any checkpoint, and its logits equal those
    of the base with the adapters applied.
    """
    flat = dict(flax.traverse_util.flatten_dict(params, sep="/"))
    for name, (a, b) in adapter_pairs(adapters).items():
        weight = flat[name]
        delta = lora_delta(jnp.asarray(a), jnp.asarray(b), name[len(LAYERS) :], weight.ndim - 1)
        flat[name] = jnp.asarray(weight, jnp.float32) + config.scale * delta
    return flax.traverse_util.unflatten_dict(flat, sep="/")


@dataclasses.dataclass(frozen=True)
class LoraModel:
    """A `Model` seen through one tree `{"base": params, "lora": adapters}`.

    `apply({"params": tree}, ...)` runs the base model with the scaled adapters added,
    so `solutions.train.make_update_fn(LoraModel(model, config), trainable_adapters(tree))`
    trains the adapters alone with the notebook's step.
    """

    model: object
    config: LoraConfig

    def apply(self, variables, *args, **kwargs):
        tree = variables["params"]
        others = {k: v for k, v in variables.items() if k != "params"}
        lora = scaled(tree["lora"], self.config.scale)
        return self.model.apply({**others, "params": tree["base"], "lora": lora}, *args, **kwargs)


def trainable_adapters(tree) -> dict:
    """The trainable mask of a `{"base": params, "lora": adapters}` tree: the adapters."""
    return {
        "base": jax.tree.map(lambda _: False, tree["base"]),
        "lora": jax.tree.map(lambda _: True, tree["lora"]),
    }


def with_adapter(module, name: str, weight: jax.Array, key: str) -> jax.Array:
    """`weight` plus its update A @ B when the apply() call holds adapters `<name>_a`,
    `<name>_b` (collection "lora") in `module`'s scope; else `weight` itself.

    Called by the Gemma modules on their weights. The update is added layer by layer
    inside the scan, so no stacked copy of the updated weights is ever made.
    """
    if not module.has_variable("lora", f"{name}_a"):
        return weight
    a = module.get_variable("lora", f"{name}_a")
    b = module.get_variable("lora", f"{name}_b")
    return weight.astype(jnp.float32) + lora_delta(a, b, key, weight.ndim)


def lora_linear(x: jax.Array, w: jax.Array, a: jax.Array, b: jax.Array, scale: float):
    """A LoRA-adapted linear layer (lesson 7's exercise): x @ W + scale * (x @ A) @ B.

    The update is applied without forming A @ B: two thin matmuls through the rank-r
    bottleneck cost r * (in + out) per token instead of in * out.

    Args:
      x: float[M, in] activations.
      w: [in, out] frozen weight, any float dtype.
      a: float32[in, r]; b: float32[r, out].
      scale: alpha / rank.
    Returns:
      float32[M, out].
    """
    x = jnp.asarray(x, jnp.float32)
    return x @ jnp.asarray(w, jnp.float32) + scale * ((x @ a) @ b)


def count_adapter_params(adapters) -> int:
    """How many numbers the adapters hold."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(adapters))
