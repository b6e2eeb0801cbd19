"""Loading a whole model: the shipped tiny PaliGemma, or a released one from Kaggle.

    load_tiny()  ──► (Model, resolution, params, tokenizer)   from capstone/assets/tiny
    load_real(name, "kaggle" | path) ──► the same four, for a real 3B checkpoint

Every command and lesson that needs a model starts here, so a model is built,
loaded and checked one way. The loaders return the checkpoint's own dtypes
(bfloat16 for the shipped model); `float32_params` casts for CPU work.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp

from solutions.configs import get_checkpoint, with_remat
from solutions.model import Model, param_shapes
from solutions.params import load_params
from solutions.tokenizer import load_tokenizer

# The shipped model: params.npz (bfloat16), tokenizer.model, config.json and MODEL_CARD.md.
TINY_ASSETS = pathlib.Path(__file__).resolve().parent.parent / "capstone" / "assets" / "tiny"
BUILD_COMMAND = "python -m capstone.factory.pretrain"


def read_tiny_card(assets: pathlib.Path = TINY_ASSETS) -> dict:
    """The shipped model's config.json: {"config", "resolution", "settings", "scores", ...}.

    Raises:
      FileNotFoundError: the folder has no config.json.
      ValueError: config.json is not the card the pretraining script writes.
    """
    card_path = assets / "config.json"
    if not card_path.exists():
        raise FileNotFoundError(
            f"{card_path} is missing: the shipped model lives in capstone/assets/tiny "
            f"(rebuild it with `{BUILD_COMMAND}`)."
        )
    try:
        card = json.loads(card_path.read_text())
        problem = None if isinstance(card, dict) else f"a JSON {type(card).__name__}, not an object"
    except ValueError as err:
        problem = f"not JSON: {err}"
    if problem is None:
        missing = [field for field in ("config", "resolution") if field not in card]
        problem = f"no {' or '.join(missing)} field" if missing else None
    if problem is not None:
        raise ValueError(
            f"{card_path} is not the model card `{BUILD_COMMAND}` writes ({problem}); "
            "restore it from git, or rebuild the model."
        )
    return card


def load_tiny(assets: pathlib.Path = TINY_ASSETS, *, allow_nonfinite: bool = False):
    """The shipped model: (Model, resolution, params as numpy, tokenizer).

    Args:
      assets: a folder holding params.npz, tokenizer.model and config.json.
      allow_nonfinite: load weights holding NaN or inf instead of refusing them.
    """
    card = read_tiny_card(assets)
    model = Model(**card["config"])
    params = load_params(
        assets / "params.npz",
        like=param_shapes(model, card["resolution"]),
        allow_nonfinite=allow_nonfinite,
    )
    return model, card["resolution"], params, load_tokenizer(assets / "tokenizer.model")


def load_real(name: str, checkpoint: str, *, allow_nonfinite: bool = False):
    """A released PaliGemma: (Model, resolution, params, tokenizer).

    Args:
      name: a checkpoint name of `solutions.configs.CHECKPOINTS`, e.g. "paligemma-3b-pt-224".
      checkpoint: "kaggle" (download once, with consent and credentials) or a .npz path; the
        tokenizer is looked for next to it.
      allow_nonfinite: load weights holding NaN or inf instead of refusing them.
    """
    from solutions import downloads  # kagglehub and its friends only load for real models

    info = get_checkpoint(name)
    path = downloads.download_checkpoint(info) if checkpoint == "kaggle" else checkpoint
    # Recomputing activations is what lets the 3B fine-tune fit a 16 GB T4 (capstone.tools.memory).
    model = Model(**with_remat(info.config))
    params = load_params(
        path, like=param_shapes(model, info.resolution), allow_nonfinite=allow_nonfinite
    )
    tokenizer = load_tokenizer(downloads.download_tokenizer(pathlib.Path(path).parent))
    return model, info.resolution, params, tokenizer


def float32_params(params) -> dict:
    """The tree with every leaf as a float32 jax array: the shipped bfloat16 weights,
    ready to decode or train on a CPU."""
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
