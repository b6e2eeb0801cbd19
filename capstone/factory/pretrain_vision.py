"""Stage 0 of the shipped model: teach the image tower to see, patch by patch.

The real PaliGemma starts from a SigLIP encoder that was trained on its own
(contrastively, on billions of images) before the two towers met. The course's
tiny model has no such encoder to download, and a ViT learning from scratch
through a captioning loss alone learns slowly: a caption says little about
each image patch. So the tiny model gets its own stage 0: the image tower, with
small linear read-outs on top, learns what every patch of a scene shows (the
kind, colour and size of the shape covering it, or background) and what the
background is. The read-outs are thrown away; the tower's weights start
`capstone.factory.pretrain`, exactly where the real PaliGemma's SigLIP weights start
its multimodal pretraining.

    patch_targets(scene, grid=3)  -> {"kind": int32[9], "colour": ..., "kind_2": ...}
    train_vision(model, params, images, scenes, ...) -> params with a trained `img` tower
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from solutions import scenes
from solutions.model import Model
from solutions.train import cosine_schedule

OBJECT_WEIGHT = 5.0  # loss weight of a patch showing a shape, relative to background
# ... and of a patch showing a second shape, for those heads: stacks are rare (15% of scenes)
SECOND_WEIGHT = 20.0
MIN_COVER = 0.04  # a patch shows a shape when the shape covers at least this share of it
SHAPE_LABELS = {  # class 0 of each is "background" (or, for the second shape, "none")
    "kind": ("background", *scenes.KINDS),
    "colour": ("background", *scenes.COLOURS),
    "size": ("background", *scenes.SIZES),
}
# Each patch is labelled with the shape covering most of it, and with the one covering the
# second most ("kind_2", ...): a small shape stacked on a large one, in the patch of its cell.
PATCH_LABELS = {
    **SHAPE_LABELS,
    **{f"{name}_2": labels for name, labels in SHAPE_LABELS.items()},
}
IMAGE_LABELS = {"pattern": scenes.PATTERNS, "tone": tuple(scenes.TONES)}
# Which patch of the grid a token is: its class is its own index. A decoder that names the
# grid cell of a shape reads it from the shape's token, so the tower must keep it there.
CELL_LABEL = "cell"


def patch_targets(scene: scenes.Scene, grid: int, size: int = 224) -> dict[str, np.ndarray]:
    """What each of the grid x grid patches shows (reading order) and the background.

    A patch takes the labels of the shape covering most of it ("kind", "colour",
    "size") and of the one covering the second most ("kind_2", ...), each when
    it covers at least `MIN_COVER` of the patch, otherwise class 0. Returns
    int32[grid * grid] for each of `PATCH_LABELS` and for "cell" (the patch's
    own index), and int32[] for "pattern" and "tone".
    """
    ids = scenes.render_object_ids(scene, size)
    side = size // grid
    blocks = ids[: grid * side, : grid * side].reshape(grid, side, grid, side)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(grid * grid, side * side)
    cover = np.stack([(blocks == i).mean(axis=1) for i in range(1, len(scene.shapes) + 1)], 1)
    ranked = np.argsort(-cover, axis=1, kind="stable")  # shape indices, most cover first
    tables = {  # label of "owner" 0 (no shape), 1, 2, ... (the shapes in drawing order)
        name: np.array([0] + [labels.index(getattr(s, name)) for s in scene.shapes], np.int32)
        for name, labels in SHAPE_LABELS.items()
    }
    targets = {}
    for rank, suffix in enumerate(("", "_2")):
        owner = np.zeros(grid * grid, np.int64)
        if rank < cover.shape[1]:
            index = ranked[:, rank]
            shown = np.take_along_axis(cover, index[:, None], 1)[:, 0] >= MIN_COVER
            owner = np.where(shown, index + 1, 0)
        for name, table in tables.items():
            targets[name + suffix] = table[owner]
    targets[CELL_LABEL] = np.arange(grid * grid, dtype=np.int32)
    for name, labels in IMAGE_LABELS.items():
        targets[name] = np.int32(labels.index(getattr(scene.background, name)))
    return targets


def stack_targets(drawn: list[scenes.Scene], grid: int, size: int = 224) -> dict[str, np.ndarray]:
    """`patch_targets` of many scenes, stacked: int32[N, grid * grid] and int32[N]."""
    each = [patch_targets(s, grid, size) for s in drawn]
    return {name: np.stack([t[name] for t in each]) for name in each[0]}


def init_readouts(width: int, num_patches: int, seed: int = 0) -> dict:
    """Linear read-outs from the tower's float[B, N, width] tokens, one per label set."""
    rng = np.random.default_rng(seed)
    labels = {**PATCH_LABELS, CELL_LABEL: range(num_patches), **IMAGE_LABELS}
    return {
        name: {
            "w": jnp.asarray(rng.normal(0, width**-0.5, (width, len(classes))), jnp.float32),
            "b": jnp.zeros((len(classes),), jnp.float32),
        }
        for name, classes in labels.items()
    }


def _kind_of(name: str) -> str:
    """The kind label that says whether a patch shows the shape `name` labels: "kind" for
    the first shape's labels, "kind_2" for the second's."""
    return "kind_2" if name.endswith("_2") else "kind"


def _cross_entropy(logits: jax.Array, labels: jax.Array, weights=None) -> jax.Array:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum()


def vision_loss(trained: dict, image: jax.Array, targets: dict, *, model: Model):
    """Mean cross-entropy of every read-out; `trained` holds {"img": ..., "readouts": ...}."""
    tokens, _ = model.apply({"params": {"img": trained["img"]}}, image, method=Model.embed_image)
    pooled = tokens.mean(axis=1)
    # Most patches are background; weighting the others up keeps the shapes from drowning.
    weights = {
        kind: 1.0 + (weight - 1.0) * (targets[kind] > 0)
        for kind, weight in (("kind", OBJECT_WEIGHT), ("kind_2", SECOND_WEIGHT))
    }
    losses = []
    for name, head in trained["readouts"].items():
        logits = (pooled if name in IMAGE_LABELS else tokens) @ head["w"] + head["b"]
        patch_weights = None
        if name in PATCH_LABELS:
            patch_weights = weights[_kind_of(name)]
        losses.append(_cross_entropy(logits, targets[name], patch_weights))
    return sum(losses) / len(losses)


def readout_accuracy(trained: dict, image, targets: dict, *, model: Model) -> dict[str, float]:
    """Accuracy per label set; for shape labels, over the patches that show such a shape
    (a first one for "kind", "colour", "size"; a second one for "kind_2", ...), leaving
    out a label set no patch of `image` shows."""
    tokens, _ = model.apply({"params": {"img": trained["img"]}}, image, method=Model.embed_image)
    scores = {}
    for name, head in trained["readouts"].items():
        source = tokens.mean(axis=1) if name in IMAGE_LABELS else tokens
        right = np.asarray((source @ head["w"] + head["b"]).argmax(-1) == targets[name])
        if name in PATCH_LABELS:
            shown = np.asarray(targets[_kind_of(name)]) > 0
            if not shown.any():
                continue
            right = right[shown]
        scores[name] = float(right.mean())
    return scores


def train_vision(
    model: Model,
    params: dict,
    images: np.ndarray,
    drawn: list[scenes.Scene],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    held_out: tuple[np.ndarray, list[scenes.Scene]] | None = None,
    eval_every: int = 0,
) -> tuple[dict, dict]:
    """Trains `params["img"]` on patch and background labels of float16[N, R, R, 3] `images`.

    `held_out` (images and scenes never trained on) is scored every `eval_every`
    steps, so a long run shows whether the tower is learning kinds yet; without
    it the first 64 training scenes stand in. Returns (params with the new image
    tower, final read-out accuracy and the mean loss of the last 100 steps).
    """
    resolution = images.shape[1]
    grid = resolution // model.img["patch_size"]
    targets = stack_targets(drawn, grid, resolution)
    width = params["img"]["head"]["bias"].size
    trained = {"img": params["img"], "readouts": init_readouts(width, grid * grid)}
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0))
    opt_state = optimizer.init(trained)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(trained, opt_state, image, batch_targets, lr):
        loss, grads = jax.value_and_grad(vision_loss)(trained, image, batch_targets, model=model)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        updates = jax.tree.map(lambda u: lr * u, updates)  # optax.adam(1.0) already points downhill
        return optax.apply_updates(trained, updates), opt_state, loss

    if held_out is None:
        scored = slice(0, min(64, len(drawn)))
        check_images = images[scored].astype(np.float32)
        check_targets = {name: values[scored] for name, values in targets.items()}
    else:
        check_images = np.asarray(held_out[0], np.float32)
        check_targets = stack_targets(held_out[1], grid, resolution)

    rng = np.random.default_rng(seed)
    losses = []
    bar = tqdm(range(1, steps + 1), desc="stage 0: image tower", unit="step")
    for i in bar:
        rows = rng.integers(0, len(drawn), batch_size)
        lr = cosine_schedule(i, total_steps=steps, base_lr=learning_rate)
        batch_targets = {name: values[rows] for name, values in targets.items()}
        trained, opt_state, loss = step(
            trained, opt_state, images[rows].astype(np.float32), batch_targets, lr
        )
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if eval_every and i % eval_every == 0 and i < steps:
            accuracy = readout_accuracy(trained, check_images, check_targets, model=model)
            bar.write(f"stage 0 step {i}: read-out accuracy {_rounded(accuracy)}")
    accuracy = readout_accuracy(trained, check_images, check_targets, model=model)
    accuracy["final_loss"] = float(np.mean(losses[-100:]))
    bar.write(f"stage 0 read-out accuracy: {_rounded(accuracy)}")
    return {**params, "img": trained["img"]}, accuracy


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in scores.items()}
