"""Builds the course's shipped model: a small PaliGemma pretrained on scenes.

    python -m capstone.pretrain                 # writes capstone/assets/tiny/
    python -m capstone.pretrain --steps 20 --out /tmp/try   # a quick trial

The real PaliGemma cannot be downloaded here, so the course ships its own:
the same architecture at small size, pretrained from scratch on images our
`solutions.scenes` generator draws. Like PaliGemma's pretraining it mixes
tasks, each named by its prefix:

    "caption en"  ->  "a large red circle and a small blue square"   (short captions)
    "count en"    ->  "two"                                          (how many shapes)

Long, longcap-style captions are kept out: teaching them is the capstone
fine-tune's job. The run is reproducible (same seed, same bytes) and writes,
atomically, `params.npz` (big_vision's format, bfloat16), `tokenizer.model`
(PaliGemma's id layout), `config.json` and `MODEL_CARD.md` with its scores on
the held-out test split (colour-kind pairs never seen in training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from tqdm.auto import tqdm

from solutions import scenes
from solutions.evaluate import decode
from solutions.files import write_atomic
from solutions.model import Model, count_params, init_params
from solutions.params import save_params
from solutions.preprocess import postprocess_tokens, preprocess_image, preprocess_tokens
from solutions.tokenizer import train_tokenizer
from solutions.train import cosine_schedule, init_train_state, make_update_fn, trainable_mask

ASSETS = pathlib.Path(__file__).resolve().parent / "assets" / "tiny"
RESOLUTION = 112  # 8x8 patches of 14 pixels -> 64 image tokens
SEQLEN = 32  # prefix + short caption fits easily
NUMBERS = ("zero", "one", "two", "three", "four")


def tiny_config(vocab_size: int) -> dict:
    """The shipped model's config: PaliGemma's architecture at about 2.5M parameters."""
    return {
        "img": {"width": 128, "depth": 3, "mlp_dim": 512, "num_heads": 4, "patch_size": 14},
        "llm": {
            "width": 192,
            "depth": 3,
            "mlp_dim": 768,
            "num_heads": 3,
            "num_kv_heads": 1,  # multi-query attention, as PaliGemma 1
            "head_dim": 64,
            "vocab_size": vocab_size,
        },
    }


@dataclasses.dataclass
class Settings:
    """Pretraining knobs; the defaults build the shipped model."""

    steps: int = 2500
    batch_size: int = 32
    learning_rate: float = 2e-3
    num_scenes: int = 8000
    num_eval: int = 64
    seed: int = 0


def _task_examples(scene: scenes.Scene) -> list[tuple[str, str]]:
    return [("caption en", scenes.short_caption(scene)), ("count en", NUMBERS[len(scene.shapes)])]


def tokenizer_text(num_scenes: int = 3000, seed: int = 0) -> list[str]:
    """Text the tokenizer learns from: all caption styles, so fine-tuning on
    long captions finds its words in the vocabulary."""
    text = ["caption en", "count en", *NUMBERS]
    for i in range(num_scenes):
        scene = scenes.sample_scene(scenes.example_seed(seed, "train", i))
        text += [scenes.short_caption(scene), scenes.long_caption(scene)]
    return text


def render_scenes(num: int, split: str, seed: int, desc: str) -> tuple[np.ndarray, list]:
    """float16[num, R, R, 3] images in [-1, 1] and their scenes."""
    images = np.zeros((num, RESOLUTION, RESOLUTION, 3), np.float16)
    drawn = []
    for i in tqdm(range(num), desc=desc, unit="img", leave=False):
        scene = scenes.sample_scene(scenes.example_seed(seed, split, i))
        images[i] = preprocess_image(scenes.render_scene(scene), RESOLUTION)
        drawn.append(scene)
    return images, drawn


def training_batches(images, drawn, tokenizer, settings: Settings):
    """Endless batches mixing both tasks, drawn with a seeded generator."""
    rng = np.random.default_rng(settings.seed)
    encoded = [
        [preprocess_tokens(p, s, SEQLEN, tokenizer=tokenizer) for p, s in _task_examples(scene)]
        for scene in drawn
    ]
    while True:
        rows = rng.integers(0, len(drawn), settings.batch_size)
        tasks = rng.integers(0, 2, settings.batch_size)
        text = np.stack([encoded[r][t] for r, t in zip(rows, tasks, strict=True)])
        yield {
            "image": images[rows].astype(np.float32),
            "text": text[:, 0],
            "mask_ar": text[:, 1],
            "mask_loss": text[:, 2],
        }


def evaluate_captions(params, model, tokenizer, images, drawn, prefix="caption en"):
    """Greedy captions of `images`; returns (captions, mean object F1, exact matches)."""
    prompt = [preprocess_tokens(prefix, None, None, tokenizer=tokenizer)] * len(drawn)
    batch = {
        "image": images.astype(np.float32),
        "text": np.stack([p[0] for p in prompt]),
        "mask_ar": np.stack([p[1] for p in prompt]),
        "mask_input": np.stack([p[3] for p in prompt]),
    }
    tokens = decode(params, batch, model=model, max_decode_len=SEQLEN)
    captions = [postprocess_tokens(row, tokenizer=tokenizer) for row in tokens]
    f1 = [scenes.object_f1(c, s)[2] for c, s in zip(captions, drawn, strict=True)]
    exact = [c == scenes.short_caption(s) for c, s in zip(captions, drawn, strict=True)]
    return captions, float(np.mean(f1)), float(np.mean(exact))


def pretrain(out: pathlib.Path, settings: Settings) -> dict:
    """Runs the whole recipe and writes the assets into `out`; returns the scores."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tokenizer_text(seed=settings.seed), out / "tokenizer.model")
    config = tiny_config(tokenizer.get_piece_size())
    model = Model(**config)
    params = init_params(model, RESOLUTION, seed=settings.seed)
    images, drawn = render_scenes(settings.num_scenes, "train", settings.seed, "train scenes")
    test_images, test_drawn = render_scenes(settings.num_eval, "test", settings.seed, "test")

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0))
    trainable = trainable_mask(params, "all")
    update_fn = make_update_fn(model, trainable, optimizer)
    state = init_train_state(params, trainable, optimizer)
    batches = training_batches(images, drawn, tokenizer, settings)
    bar = tqdm(range(1, settings.steps + 1), desc="pretraining", unit="step")
    losses = []
    for step in bar:
        lr = cosine_schedule(step, total_steps=settings.steps, base_lr=settings.learning_rate)
        state, loss = update_fn(state, next(batches), lr)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss {losses[-1]} at step {step}: lower --learning-rate")
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{float(lr):.2g}")

    params = jax.tree.map(lambda p: np.asarray(p).astype(ml_dtypes.bfloat16), state.params)
    save_params(params, out / "params.npz")
    shipped = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    captions, f1, exact = evaluate_captions(shipped, model, tokenizer, test_images, test_drawn)
    scores = {
        "test_object_f1": round(f1, 4),
        "test_exact_match": round(exact, 4),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "num_params": count_params(params),
        "seconds": round(time.perf_counter() - start, 1),
        "examples": [
            [scenes.short_caption(s), c] for s, c in zip(test_drawn[:5], captions[:5], strict=True)
        ],
    }
    card = {
        "config": config,
        "resolution": RESOLUTION,
        "seqlen": SEQLEN,
        "settings": dataclasses.asdict(settings),
        "scores": scores,
    }
    write_atomic(out / "config.json", json.dumps(card, indent=1) + "\n")
    write_atomic(out / "MODEL_CARD.md", _model_card(card))
    return scores


def _model_card(card: dict) -> str:
    s, scores = card["settings"], card["scores"]
    examples = "\n".join(f"| {want} | {got} |" for want, got in scores["examples"])
    return f"""# The course's tiny PaliGemma

PaliGemma's architecture (SigLIP ViT + Gemma decoder, prefix-LM) at
{scores["num_params"]:,} parameters, stored in bfloat16 in big_vision's npz format.
Config: `config.json`. Tokenizer: `tokenizer.model` (PaliGemma's id layout).

## How it was made

`python -m capstone.pretrain`: {s["steps"]} Adam steps (batch {s["batch_size"]}, peak
learning rate {s["learning_rate"]}, cosine schedule with 10% warm-up) over
{s["num_scenes"]} generated scenes at {card["resolution"]}px, tasks "caption en" (short
captions) and "count en". Seed {s["seed"]}; the same seed gives the same file.
It took {scores["seconds"]:.0f} s on the machine that built it.

## Scores on the held-out test split

{len(scores["examples"])} examples below; scores over the first {s["num_eval"]} test
scenes, whose colour-kind pairs never appear in training:

- object F1 (size, colour, kind; `solutions.scenes.object_f1`): {scores["test_object_f1"]}
- exact short caption: {scores["test_exact_match"]}

| reference | model |
| --- | --- |
{examples}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=ASSETS)
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name)
        )
    args = parser.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    scores = pretrain(args.out, settings)
    print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
