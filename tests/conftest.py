"""Shared fixtures: tiny PaliGemma configs that run in milliseconds on a CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solutions.model import Model, init_params

# A PaliGemma-1-style decoder (one key/value head) and a PaliGemma-2-style one
# (grouped-query attention, softcaps, post-norms), both with a tiny ViT.
TINY_IMG = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
TINY_LLM_PG1 = dict(
    width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=8, vocab_size=96
)
TINY_LLM_PG2 = dict(
    width=32,
    depth=2,
    mlp_dim=64,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    vocab_size=96,
    post_norms=True,
    attn_logits_softcap=50.0,
    final_logits_softcap=30.0,
)
TINY_RESOLUTION = 16  # 2x2 patches of 8 pixels -> 4 image tokens


def randomize(params, seed: int = 0, scale: float = 0.2):
    """Adds noise to every leaf, so zero-initialised norms and biases matter too.

    Drawn by numpy: jax.random would compile once per leaf shape.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape), p.dtype),
        params,
    )


@pytest.fixture(scope="session", params=["pg1", "pg2"])
def tiny(request):
    """(model, randomized params, resolution) for a tiny PG1- or PG2-style model."""
    llm = TINY_LLM_PG1 if request.param == "pg1" else TINY_LLM_PG2
    model = Model(img=TINY_IMG, llm=llm)
    params = randomize(init_params(model, TINY_RESOLUTION))
    return model, params, TINY_RESOLUTION


@pytest.fixture
def tiny_batch():
    """A batch of 2: images float32[2,16,16,3], text int32[2,10], prefix of 4."""
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.uniform(-1, 1, (2, TINY_RESOLUTION, TINY_RESOLUTION, 3)), jnp.float32)
    text = jnp.asarray(rng.integers(3, 96, (2, 10)), jnp.int32)
    mask_ar = jnp.asarray([[0] * 4 + [1] * 6] * 2, jnp.int32)
    return {"image": image, "text": text, "mask_ar": mask_ar}
