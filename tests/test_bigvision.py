"""Our PaliGemma against google-research/big_vision's own, parameter for parameter.

Runs when `BIG_VISION_DIR` names a big_vision checkout (the folder that holds the
`big_vision` package) and skips, saying what to set or install, otherwise:

    git clone https://github.com/google-research/big_vision /tmp/big_vision
    BIG_VISION_DIR=/tmp/big_vision pytest -m bigvision

Both models are built from the same tiny configs, big_vision's parameters are
randomised and fed to both, and their logits must agree in float32. big_vision
names its Gemma sizes only (`gemma_2b`, `gemma2_2b`), so the tests teach its
config lookup two tiny variant names; everything else runs big_vision's own code.
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import typing

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from solutions.model import Model, param_shapes
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_LLM_PG2, TINY_RESOLUTION

pytestmark = pytest.mark.bigvision

BIG_VISION_DIR = os.environ.get("BIG_VISION_DIR")

# The big_vision modules on the PaliGemma path; importing them checks every dependency.
BIG_VISION_MODULES = (
    "big_vision.models.proj.paligemma.paligemma",
    "big_vision.models.proj.paligemma.gemma_bv",
    "big_vision.models.ppp.gemma",
    "big_vision.models.vit",
)

# pip names of big_vision's imports where they differ from the module name.
PIP_NAMES = {"absl": "absl-py", "orbax": "orbax-checkpoint", "tensorflow": "tensorflow-cpu"}

# Gemma variants taught to big_vision's `gemma.get_config`, as it spells its own.
TINY_GEMMA_VARIANTS = {"tiny_gemma": TINY_LLM_PG1, "tiny_gemma2": TINY_LLM_PG2}

# The PG1-style case has one key/value head; the PG2-style one has grouped-query
# attention, both softcaps and post-norms.
CASES = {"pg1": "tiny_gemma", "pg2": "tiny_gemma2"}

ATOL, RTOL = 1e-5, 1e-5


class Pair(typing.NamedTuple):
    """The same PaliGemma twice, with the parameters both use."""

    ours: Model
    theirs: flax.linen.Module  # big_vision.models.proj.paligemma.paligemma.Model
    params: dict
    final_logits_softcap: float


@pytest.fixture(scope="module")
def big_vision():
    """big_vision's `paligemma` module, its Gemma taught the tiny variants.

    Skips, saying what to set or install, when big_vision cannot be imported.
    """
    if not BIG_VISION_DIR:
        pytest.skip(
            "set BIG_VISION_DIR=/path/to/big_vision, the folder holding the big_vision "
            "package (git clone https://github.com/google-research/big_vision)"
        )
    root = pathlib.Path(BIG_VISION_DIR).expanduser().resolve()
    if not (root / "big_vision" / "models" / "proj" / "paligemma" / "paligemma.py").is_file():
        pytest.fail(
            f"BIG_VISION_DIR={BIG_VISION_DIR} has no big_vision/models/proj/paligemma/"
            "paligemma.py: point it at the top folder of a big_vision clone."
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        modules = [_import_or_skip(name) for name in BIG_VISION_MODULES]
        if root not in pathlib.Path(modules[0].__file__).resolve().parents:
            pytest.fail(f"big_vision was imported from {modules[0].__file__}, not {root}.")
        gemma = modules[2]
        # Patched for the whole module: big_vision looks the variant up at every apply.
        patch.setattr(gemma, "get_config", _tiny_get_config(gemma.get_config))
        yield modules[0]


def _import_or_skip(name: str):
    """Imports a big_vision module, or skips naming the package it lacks."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        pytest.skip(
            f"big_vision needs {error.name}: pip install --no-deps {PIP_NAMES.get(top, top)} "
            "(--no-deps keeps the course's pinned jax and numpy)"
        )
    except ImportError as error:
        pytest.skip(f"big_vision's {name} does not import with jax {jax.__version__}: {error}")


def _tiny_get_config(get_config):
    """Wraps big_vision's `gemma.get_config` so it also knows the tiny variants."""

    def get_config_with_tiny(variant):
        if variant not in TINY_GEMMA_VARIANTS:
            return get_config(variant)
        # norm_eps has no default in big_vision's Gemma; its own variants all set 1e-6.
        # gemma_bv sets scan, remat, dropout and cache fields; the model defaults the rest.
        fields = {"variant": variant, "norm_eps": 1e-6, **TINY_GEMMA_VARIANTS[variant]}
        return ml_collections.ConfigDict(fields)

    return get_config_with_tiny


def _big_vision_img_config(img: dict) -> dict:
    """Our ViT fields in big_vision's spelling: a (h, w) patch, every patch token kept."""
    patch = img["patch_size"]
    return {**img, "patch_size": (patch, patch), "pool_type": "none", "scan": True}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, big_vision) -> Pair:
    variant = CASES[request.param]
    theirs = big_vision.Model(
        img=_big_vision_img_config(TINY_IMG),
        # big_vision caches keys and values in bfloat16 by default; float32 keeps it exact.
        llm={"variant": variant, "cache_dtype": None},
    )
    image = jnp.zeros((1, TINY_RESOLUTION, TINY_RESOLUTION, 3), jnp.float32)
    text = jnp.zeros((1, 2), jnp.int32)
    # An "rbg" key: on a CPU, init compiles twice as fast as with the default threefry.
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(theirs.init)(key, image, text, jnp.ones_like(text))
    # Noise on every leaf: zero-initialised norms and the zero `img/head` would hide bugs.
    params = _randomized(variables["params"])
    llm = TINY_GEMMA_VARIANTS[variant]
    return Pair(Model(img=TINY_IMG, llm=llm), theirs, params, llm.get("final_logits_softcap", 0.0))


def _randomized(params, seed: int = 0, scale: float = 0.2):
    """Every leaf plus Gaussian noise, drawn by numpy (jax.random would compile per shape)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: np.asarray(p) + scale * rng.standard_normal(p.shape).astype(p.dtype), params
    )


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _softcap(logits, cap: float):
    return cap * np.tanh(logits / cap) if cap else logits


def test_parameter_trees_are_identical(pair):
    theirs = _flat_shapes(pair.params)
    ours = _flat_shapes(param_shapes(pair.ours, TINY_RESOLUTION))
    missing = sorted(set(theirs) - set(ours))
    unexpected = sorted(set(ours) - set(theirs))
    wrong = {k: (ours[k], v) for k, v in theirs.items() if k in ours and ours[k] != v}
    assert not (missing or unexpected or wrong), (
        f"missing from ours: {missing}; only in ours: {unexpected}; "
        f"shape (ours, big_vision): {wrong}"
    )


def test_text_logits_match(pair, tiny_batch):
    """Same parameters, same image, text and prefix-LM mask: same logits."""
    variables = {"params": pair.params}
    ours, ours_out = jax.jit(pair.ours.apply)(variables, **tiny_batch)
    theirs, theirs_out = jax.jit(pair.theirs.apply)(variables, **tiny_batch)
    np.testing.assert_allclose(ours_out["img/zimg"], theirs_out["img/zimg"], atol=ATOL, rtol=RTOL)
    # big_vision's `compute_logits` leaves Gemma 2's final softcap out of this
    # forward pass (its decoder applies it only when extending the cache).
    theirs = _softcap(np.asarray(theirs), pair.final_logits_softcap)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL)


def _cached_logits(model, variables, image, prompt, input_mask, next_tokens):
    """Prefills a cache with image + ragged prompt, then feeds `next_tokens` one at a time.

    Args:
      model: ours or big_vision's; both have the same method names.
      image: float32[B, H, W, 3]. prompt: int32[B, P], each row's real tokens first.
      input_mask: bool[B, P]. next_tokens: int32[B, S], fed column by column.
    Returns:
      (prefill logits float32[B, 1, V], extend logits float32[B, S, V]).
    """
    (x, full_mask, full_ar), _ = model.apply(
        variables,
        image,
        prompt,
        input_mask=input_mask,
        mask_ar=jnp.zeros_like(prompt),
        method="embed_image_and_text",
    )
    cache_size = x.shape[1] + next_tokens.shape[1]
    prefill_logits, cache = model.apply(
        variables,
        x,
        full_mask,
        full_ar,
        cache_size=cache_size,
        method="prefill_cache",
        mutable=["cache"],
    )
    steps = []
    for column in range(next_tokens.shape[1]):
        embedded = model.apply(variables, next_tokens[:, column : column + 1], method="embed_text")
        if isinstance(embedded, tuple):  # big_vision's embed_text also returns an out dict.
            embedded = embedded[0]
        logits, cache = model.apply(
            {**variables, **cache}, embedded, method="extend_cache", mutable=["cache"]
        )
        steps.append(logits)
    return prefill_logits, jnp.concatenate(steps, axis=1)


def test_kv_cache_decoding_matches(pair, tiny_batch):
    """Prefill with prompts of different lengths, then four decode steps.

    big_vision right-aligns the prompts inside its cache and we keep them
    left-aligned, so only the logits are compared.
    """
    variables = {"params": pair.params}
    image, text = tiny_batch["image"], tiny_batch["text"]
    prompt_lengths, prompt_width, steps = (4, 3), 4, 4
    input_mask = jnp.arange(prompt_width)[None, :] < jnp.array(prompt_lengths)[:, None]
    prompt = jnp.where(input_mask, text[:, :prompt_width], 0)
    next_tokens = jnp.stack([text[row, n : n + steps] for row, n in enumerate(prompt_lengths)])
    args = (image, prompt, input_mask, next_tokens)

    # Compiled whole: run eagerly, every scanned apply would compile anew.
    ours_prefill, ours_steps = jax.jit(functools.partial(_cached_logits, pair.ours))(
        variables, *args
    )
    theirs_prefill, theirs_steps = jax.jit(functools.partial(_cached_logits, pair.theirs))(
        variables, *args
    )
    # As in the forward pass, big_vision's prefill logits skip the final softcap.
    theirs_prefill = _softcap(np.asarray(theirs_prefill), pair.final_logits_softcap)
    np.testing.assert_allclose(ours_prefill, theirs_prefill, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(ours_steps, theirs_steps, atol=ATOL, rtol=RTOL)
