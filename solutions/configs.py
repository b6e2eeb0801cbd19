"""Named model configs: the real PaliGemma checkpoints and the course's small ones.

A config is `{"img": {...}, "llm": {...}}` exactly as big_vision writes it, so
`Model(**config)` builds the model. `CHECKPOINTS` adds where each real
checkpoint lives on Kaggle and the image resolution it was trained at.
"""

from __future__ import annotations

import dataclasses
import difflib

PALIGEMMA_VOCAB_SIZE = 257_152  # 256,000 word pieces + 1,024 <loc> + 128 <seg>


def _paligemma(llm_variant: str, **llm_extra) -> dict:
    return {
        "img": {"variant": "So400m/14", "pool_type": "none", "scan": True},
        "llm": {"variant": llm_variant, "vocab_size": PALIGEMMA_VOCAB_SIZE, **llm_extra},
    }


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A released PaliGemma checkpoint.

    Attributes:
      name: the checkpoint's name, e.g. "paligemma2-3b-pt-224".
      config: the model config (`Model(**config)`).
      resolution: image side in pixels the checkpoint was trained at.
      kaggle_handle: versioned kagglehub handle `owner/model/framework/variation/version`.
      filename: the .npz file inside the Kaggle model.
    """

    name: str
    config: dict
    resolution: int
    kaggle_handle: str
    filename: str


def _checkpoints() -> dict[str, Checkpoint]:
    found = {}
    for res in (224, 448, 896):
        name = f"paligemma-3b-pt-{res}"
        found[name] = Checkpoint(
            name,
            _paligemma("gemma_2b"),
            res,
            f"google/paligemma/jax/{name}/1",
            f"{name}.f16.npz",
        )
        # PaliGemma 2 ships with Gemma 2's final-logit softcap; the reference
        # fine-tuning notebook turns it off (0.0) for better transfer.
        for size, llm in (("3b", "gemma2_2b"), ("10b", "gemma2_9b")):
            name = f"paligemma2-{size}-pt-{res}"
            found[name] = Checkpoint(
                name,
                _paligemma(llm, final_logits_softcap=0.0),
                res,
                f"google/paligemma-2/jax/{name}/1",
                f"{name}.b16.npz",
            )
    return found


CHECKPOINTS: dict[str, Checkpoint] = _checkpoints()

# The benchmark model of `capstone.tools.bench`: small enough for a laptop CPU, shaped
# like PaliGemma 1 (one key/value head). 112px images, 14px patches -> 64 tokens.
# Both towers unroll their few layers (`scan_unroll`): faster on a CPU.
BENCH_CONFIG = {
    "img": {
        "width": 192,
        "depth": 4,
        "mlp_dim": 768,
        "num_heads": 3,
        "patch_size": 14,
        "scan_unroll": 4,
    },
    "llm": {
        "width": 256,
        "depth": 4,
        "mlp_dim": 1024,
        "num_heads": 4,
        "num_kv_heads": 1,
        "head_dim": 64,
        "vocab_size": 2048,
        "scan_unroll": 4,
    },
}
BENCH_RESOLUTION = 112


class UnknownCheckpointError(KeyError, ValueError):
    """No real checkpoint has this name. A KeyError (a failed look-up) and a ValueError
    (a bad value given by the user), printed as its message without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_checkpoint(name: str) -> Checkpoint:
    """Looks a real checkpoint up by name; an unknown name raises `UnknownCheckpointError`
    listing the known ones and the closest."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        closest = difflib.get_close_matches(name, CHECKPOINTS, n=1, cutoff=0.5)
        guess = f"; did you mean {closest[0]!r}?" if closest else "."
        raise UnknownCheckpointError(
            f"Unknown checkpoint {name!r}; known: {', '.join(sorted(CHECKPOINTS))}{guess}"
        ) from None


def with_remat(config: dict, policy: str = "nothing_saveable") -> dict:
    """`config` with both towers recomputing layer activations in the backward pass: a few %
    more compute for a large cut in memory (the notebook trains the 3B model this way)."""
    return {tower: {**config[tower], "remat_policy": policy} for tower in ("img", "llm")}
