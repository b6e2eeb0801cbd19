"""Does the image tower see the kind of a shape whose colour-kind pair it never saw?

    python -m capstone.experiments.pair_probe                 # the shipped model, about 4 minutes
    python -m capstone.experiments.pair_probe --assets runs/pretrain-try

The shipped model never names a held-out colour-kind pair (`scenes.HELD_OUT_PAIRS`,
e.g. a blue triangle): it writes the colour, then a kind that went with that
colour in training. This probe tells whether the image tower or what reads it
is at fault. It freezes the tower and fits two linear read-outs of a patch's
kind on its tokens, then scores both on test scenes, apart for patches of seen
and of held-out pairs:

- one fitted on training scenes, whose pairs are restricted as the decoder's
  captions were: it may learn "blue is never a triangle" as the decoder did;
- one fitted on recoloured training scenes, where every colour goes with every
  kind equally often: it can only use what the tokens say about the outline.

If the second names held-out kinds about as well as seen ones, the tower sees
them and the failure lies in heads trained on restricted pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from capstone import cli
from capstone.factory import pretrain
from capstone.factory.pretrain_vision import OBJECT_WEIGHT, PATCH_LABELS, stack_targets
from solutions import checkpoints, scenes
from solutions.model import Model

KINDS = PATCH_LABELS["kind"]  # class 0 is background
COLOURS = PATCH_LABELS["colour"]


def recoloured_scenes(num: int, seed: int) -> list[scenes.Scene]:
    """Training-split layouts with every shape recoloured uniformly at random, so each
    colour-kind pair (held-out ones too) is equally likely. A stack of two shapes keeps
    two different colours, as `scenes.Scene` requires."""
    rng = np.random.default_rng(seed)
    colours = list(scenes.COLOURS)
    drawn = []
    for i in range(num):
        scene = scenes.sample_scene(scenes.example_seed(seed, "train", i))
        while True:
            shapes = tuple(
                dataclasses.replace(s, colour=str(rng.choice(colours))) for s in scene.shapes
            )
            try:
                drawn.append(dataclasses.replace(scene, shapes=shapes))
                break
            except ValueError:  # a stack drew one colour twice: draw again
                continue
    return drawn


def patch_features(model: Model, params: dict, drawn: list[scenes.Scene], desc: str):
    """(float32[P, width] tower tokens, int32[P] kind labels, int32[P] colour labels) of
    every patch of the scenes, P = len(drawn) * tokens per image."""
    images = pretrain.render_images(drawn, desc)
    embed = jax.jit(
        lambda image: model.apply(
            {"params": {"img": params["img"]}}, image, method=Model.embed_image
        )[0]
    )
    tokens = np.concatenate(
        [
            np.asarray(embed(jnp.asarray(images[i : i + 64], jnp.float32)))
            for i in range(0, len(images), 64)
        ]
    )
    grid = int(round(tokens.shape[1] ** 0.5))
    targets = stack_targets(drawn, grid, images.shape[1])
    return (
        tokens.reshape(-1, tokens.shape[-1]),
        targets["kind"].reshape(-1),
        targets["colour"].reshape(-1),
    )


def fit_readout(features: np.ndarray, kinds: np.ndarray, steps: int, learning_rate: float = 1e-2):
    """A linear kind classifier on standardised features, fitted full-batch with Adam;
    shape patches weigh `OBJECT_WEIGHT` times background ones, as in stage 0.
    Returns predict(float32[P, width]) -> int32[P]."""
    mean, scale = features.mean(0), features.std(0) + 1e-6
    x, y = jnp.asarray((features - mean) / scale), jnp.asarray(kinds)
    weights = jnp.where(y > 0, OBJECT_WEIGHT, 1.0)
    head = {"w": jnp.zeros((x.shape[1], len(KINDS))), "b": jnp.zeros(len(KINDS))}
    optimizer = optax.adam(learning_rate)

    def loss(head):
        losses = optax.softmax_cross_entropy_with_integer_labels(x @ head["w"] + head["b"], y)
        return (losses * weights).sum() / weights.sum()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(head, state):
        grads = jax.grad(loss)(head)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(head, updates), state

    state = optimizer.init(head)
    for _ in tqdm(range(steps), desc="read-out", unit="step", leave=False):
        head, state = step(head, state)

    def predict(other: np.ndarray) -> np.ndarray:
        return np.asarray((((other - mean) / scale) @ head["w"] + head["b"]).argmax(-1))

    return predict


def accuracy_by_pair(predicted, kinds, colours) -> dict[str, float]:
    """Kind accuracy over shape patches, for seen and for held-out colour-kind pairs."""
    shape = kinds > 0
    held = np.array(
        [
            (COLOURS[c], KINDS[k]) in scenes.HELD_OUT_PAIRS
            for c, k in zip(colours, kinds, strict=True)
        ],
        bool,
    )
    right = predicted == kinds
    return {
        "seen": float(right[shape & ~held].mean()),
        "held_out": float(right[shape & held].mean()),
    }


@dataclasses.dataclass
class Settings:
    """The probe's knobs (`probe` takes them as keywords)."""

    assets: pathlib.Path = cli.setting(checkpoints.TINY_ASSETS, "folder of the tiny model")
    num_train: int = cli.setting(3000, "scenes per read-out", least=1)
    num_test: int = cli.setting(400, "test scenes scored", least=1)
    steps: int = cli.setting(1500, "read-out fitting steps", least=1)
    seed: int = cli.setting(1, "seed of the scenes", least=0)


def probe(assets: pathlib.Path, num_train: int, num_test: int, steps: int, seed: int = 1) -> dict:
    """{"restricted pairs": {"seen", "held_out"}, "every pair": {...}}: the two read-outs'
    kind accuracy on test-scene patches (see the module docstring)."""
    model, _, params, _ = checkpoints.load_tiny(assets)
    params = checkpoints.float32_params(params)
    test = patch_features(model, params, scenes.split_scenes("test", num_test, seed), "test scenes")
    training_sets = {
        "restricted pairs": scenes.split_scenes("train", num_train, seed),
        "every pair": recoloured_scenes(num_train, seed),
    }
    results = {}
    for name, drawn in training_sets.items():
        features, kinds, _ = patch_features(model, params, drawn, name)
        predict = fit_readout(features, kinds, steps)
        results[name] = accuracy_by_pair(predict(test[0]), test[1], test[2])
    return results


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)
    results = probe(**dataclasses.asdict(settings))
    print(
        f"kind of a test patch, read linearly from the tower (chance {1 / (len(KINDS) - 1):.2f}):"
    )
    print(f"  {'read-out fitted on':22} {'seen pairs':>11} {'held-out pairs':>15}")
    for name, scores in results.items():
        print(f"  {name:22} {scores['seen']:11.2f} {scores['held_out']:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
