"""Can the tiny image tower learn to tell shape kinds? A quick, controlled probe.

    python -m capstone.experiments.vision_probe            # as shipped: 96 px, 32-px patches
    python -m capstone.experiments.vision_probe --resolution 224 --patch-size 28  # as before

A tiny image tower learns colours and sizes quickly and shape kinds only after
thousands of steps (see "What the tiny model sees" in the capstone docs). This
probe isolates the image tower: it sees one
shape on a plain white background, and the tower, with its tokens averaged
and a linear head on top, learns to name the shape's kind (six kinds, chance
1/6). No text, no decoder, no clutter: if the tower cannot learn this, it
cannot name kinds in a caption either. Every `--eval-every` steps it prints the
accuracy on the training images and on unseen ones, so a change to the tower
(patch size, width, learning rate, initialisation) can be judged in minutes.

    probe(settings) -> [{"step", "loss", "train_accuracy", "val_accuracy"}, ...]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from capstone import cli
from capstone.factory import pretrain
from solutions import scenes
from solutions.model import Model, init_params
from solutions.train import cosine_schedule


@dataclasses.dataclass
class ProbeSettings:
    """The probe's knobs; the defaults are the shipped tower's config."""

    resolution: int = cli.setting(pretrain.RESOLUTION, "image side in pixels", least=1)
    patch_size: int = cli.setting(
        pretrain.tiny_config(vocab_size=16)["img"]["patch_size"], "patch side in pixels", least=1
    )
    steps: int = cli.setting(2000, "training steps", least=1)
    batch_size: int = cli.setting(32, "images per step", least=1)
    learning_rate: float = cli.setting(1e-3, "peak Adam learning rate", least=0)
    num_train: int = cli.setting(12000, "training images", least=1)
    num_val: int = cli.setting(300, "unseen images scored", least=1)
    eval_every: int = cli.setting(250, "steps between scores", least=1)
    seed: int = cli.setting(0, "seed of the images and the weights", least=0)


def one_shape_scene(rng: np.random.Generator) -> tuple[scenes.Scene, int]:
    """A white background with one shape of random kind, colour, size, cell, offset and
    angle (as `scenes.sample_scene` jitters them); returns (scene, kind index)."""
    kind = int(rng.integers(len(scenes.KINDS)))
    shape = scenes.Shape(
        kind=scenes.KINDS[kind],
        colour=str(rng.choice(list(scenes.COLOURS))),
        size=str(rng.choice(list(scenes.SIZES))),
        position=str(rng.choice(list(scenes.POSITIONS))),
        offset=tuple(float(v) for v in rng.uniform(-0.2, 0.2, 2)),
        angle=float(rng.uniform(-scenes.MAX_ANGLE, scenes.MAX_ANGLE)),
    )
    return scenes.Scene(scenes.Background("white"), (shape,)), kind


def one_shape_images(
    num: int, seed: int, desc: str, resolution: int = pretrain.RESOLUTION
) -> tuple[np.ndarray, np.ndarray]:
    """float16[num, R, R, 3] images in [-1, 1] and int32[num] kind indices."""
    rng = np.random.default_rng(seed)
    drawn, kinds = zip(*(one_shape_scene(rng) for _ in range(num)), strict=True)
    return pretrain.render_images(list(drawn), desc, resolution), np.array(kinds, np.int32)


def _logits(trained: dict, image: jax.Array, *, model: Model) -> jax.Array:
    """float[B, len(KINDS)]: the linear head on the mean of the tower's tokens."""
    tokens, _ = model.apply({"params": {"img": trained["img"]}}, image, method=Model.embed_image)
    return tokens.mean(axis=1) @ trained["head"]["w"] + trained["head"]["b"]


def _accuracy(trained: dict, images: np.ndarray, kinds: np.ndarray, model: Model) -> float:
    predicted = [
        np.asarray(_logits(trained, images[i : i + 100].astype(np.float32), model=model)).argmax(-1)
        for i in range(0, len(images), 100)
    ]
    return float((np.concatenate(predicted) == kinds).mean())


def probe(settings: ProbeSettings) -> list[dict]:
    """Trains a fresh tiny image tower (`settings.patch_size`, `settings.resolution`) on
    one-shape images and returns its scores every `eval_every` steps (accuracy on the first
    `num_val` training images and on `num_val` unseen ones)."""
    config = pretrain.tiny_config(vocab_size=16)  # the decoder is not used
    config["img"]["patch_size"] = settings.patch_size
    model = Model(**config)
    width = config["llm"]["width"]  # the tower's head projects its tokens to this width
    trained = {
        "img": init_params(model, settings.resolution, seed=settings.seed)["img"],
        "head": {"w": jnp.zeros((width, len(scenes.KINDS))), "b": jnp.zeros(len(scenes.KINDS))},
    }
    images, kinds = one_shape_images(
        settings.num_train, settings.seed, "train images", settings.resolution
    )
    val_images, val_kinds = one_shape_images(
        settings.num_val, settings.seed + 1, "val images", settings.resolution
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0))
    opt_state = optimizer.init(trained)

    def loss_fn(trained, image, kind):
        logits = _logits(trained, image, model=model)
        return optax.softmax_cross_entropy_with_integer_labels(logits, kind).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(trained, opt_state, image, kind, lr):
        loss, grads = jax.value_and_grad(loss_fn)(trained, image, kind)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        updates = jax.tree.map(lambda u: lr * u, updates)  # optax.adam(1.0) points downhill
        return optax.apply_updates(trained, updates), opt_state, loss

    rng = np.random.default_rng(settings.seed)
    history = []
    bar = tqdm(range(1, settings.steps + 1), desc="probe", unit="step")
    for i in bar:
        rows = rng.integers(0, settings.num_train, settings.batch_size)
        lr = cosine_schedule(i, total_steps=settings.steps, base_lr=settings.learning_rate)
        trained, opt_state, loss = step(
            trained, opt_state, images[rows].astype(np.float32), kinds[rows], lr
        )
        bar.set_postfix(loss=f"{float(loss):.3f}")
        if i % settings.eval_every == 0 or i == settings.steps:
            seen = slice(0, settings.num_val)
            history.append(
                {
                    "step": i,
                    "loss": round(float(loss), 4),
                    "train_accuracy": _accuracy(trained, images[seen], kinds[seen], model),
                    "val_accuracy": _accuracy(trained, val_images, val_kinds, model),
                }
            )
            bar.write(json.dumps(history[-1]))
    return history


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, ProbeSettings, argv)
    history = probe(settings)
    accuracy, chance = history[-1]["val_accuracy"], 1 / len(scenes.KINDS)
    print(f"kind accuracy on unseen images: {accuracy:.3f} (chance {chance:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
