"""Builds the course's shipped model: a small PaliGemma pretrained on scenes.

    python -m capstone.factory.pretrain                 # writes capstone/assets/tiny/
    python -m capstone.factory.pretrain --steps 20 --out /tmp/try   # a quick trial

The real PaliGemma cannot be downloaded here, so the course ships its own:
the same architecture at small size, pretrained from scratch on images our
`solutions.scenes` generator draws. Like PaliGemma's pretraining it mixes
tasks, each named by its prefix:

    "caption en"   ->  "a large red circle and a small blue square"      (short captions)
    "describe en"  ->  "a large red circle in the top left; a small blue square at the
                        top; on a striped grey background"               (a layout list)
    "count en"     ->  "two"                                             (how many shapes)

Longcap-style prose is kept out: turning "caption en" into paragraphs ("Two
shapes sit on ... The red circle is above the blue square.") is the capstone
fine-tune's job, as longcap100 is for the real model. The run is reproducible
(same seed, same bytes) and writes, atomically, `params.npz` (big_vision's
format, bfloat16), `tokenizer.model` (PaliGemma's id layout), `config.json`
and `MODEL_CARD.md` with its scores on validation scenes and on the held-out
test split (colour-kind pairs never seen in training). Every `--eval-every`
steps it prints those scores and saves the parameters so far, so a stopped
run keeps its last evaluated state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from tqdm import tqdm

from capstone import cli
from capstone.factory import pretrain_vision
from solutions import scenes
from solutions.checkpoints import TINY_ASSETS, float32_params, load_tiny, read_tiny_card
from solutions.evaluate import decode
from solutions.files import write_atomic
from solutions.model import Model, count_params, init_params
from solutions.params import save_params
from solutions.preprocess import postprocess_tokens, preprocess_image, preprocess_tokens
from solutions.tokenizer import train_tokenizer
from solutions.train import (
    cosine_schedule,
    init_train_state,
    make_update_fn,
    train_steps,
    trainable_mask,
)

# 3 x 3 patches of 32 pixels -> 9 image tokens, one per grid cell of a scene: every shape
# lies whole inside one patch, so the tower sees each shape's outline at once.
RESOLUTION = 96
SEQLEN = 48  # prefix + the longest layout list (four shapes and a background): 46 tokens
NUMBERS = ("zero", "one", "two", "three", "four")
# How often each task is drawn: captions and layouts teach what is where, counting is cheap.
TASK_WEIGHTS = {"caption en": 0.45, "describe en": 0.45, "count en": 0.10}


def tiny_config(vocab_size: int) -> dict:
    """The shipped model's config: PaliGemma's architecture at about 3M parameters."""
    return {
        "img": {"width": 128, "depth": 4, "mlp_dim": 512, "num_heads": 4, "patch_size": 32},
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

    # Stage 0: the image tower alone (capstone.factory.pretrain_vision). Kinds come last: it
    # reads a validation patch's kind right 67% of the time after 2,000 steps, 93% after
    # 10,000 and 98% after 16,000, as the learning rate comes down.
    vision_steps: int = cli.setting(16000, "stage 0 steps (the image tower alone)", least=0)
    vision_batch_size: int = cli.setting(32, "stage 0 scenes per step", least=1)
    vision_learning_rate: float = cli.setting(2e-3, "stage 0 peak Adam learning rate", least=0)
    steps: int = cli.setting(8000, "stage 1 steps (the whole model, the task mixture)", least=1)
    # Stage 1 steps over which the image tower's learning rate climbs from 0 to the decoder's:
    # the decoder's first gradients are noise that would wipe out what stage 0 taught the
    # tower (PaliGemma warms its image encoder up slowly for the same reason).
    tower_warmup: int = cli.setting(2000, "stage 1 steps of the image tower's ramp", least=0)
    batch_size: int = cli.setting(16, "stage 1 scenes per step", least=1)
    learning_rate: float = cli.setting(1.5e-3, "stage 1 peak Adam learning rate", least=0)
    # 16,000 stage 0 steps of 32 see each scene 13 times.
    num_scenes: int = cli.setting(40000, "training scenes drawn", least=1)
    num_eval: int = cli.setting(64, "validation and test scenes scored", least=1)
    eval_every: int = cli.setting(2000, "steps between scores and saves", least=1)
    seed: int = cli.setting(0, "seed of the scenes and the initial weights", least=0)


def layout_text(scene: scenes.Scene) -> str:
    """The "describe en" target: every grid cell's shapes with their position, then the
    background, e.g. "a small blue star on top of a large green square in the centre;
    a large red circle on the right; on a dotted white background"."""
    parts = []
    for group in scenes.cell_groups(scene):
        names = [f"a {s.size} {s.colour} {s.kind}" for s in reversed(group)]
        parts.append(f"{' on top of '.join(names)} {scenes.POSITIONS[group[0].position]}")
    background = scene.background
    parts.append(f"on a {background.pattern} {background.tone} background")
    return "; ".join(parts)


def task_examples(scene: scenes.Scene) -> dict[str, str]:
    """Every pretraining task's target for one scene, keyed by prefix."""
    return {
        "caption en": scenes.short_caption(scene),
        "describe en": layout_text(scene),
        "count en": NUMBERS[len(scene.shapes)],
    }


def tokenizer_text(num_scenes: int = 3000, seed: int = 0) -> list[str]:
    """Text the tokenizer learns from: all caption styles, so fine-tuning on
    long captions finds its words in the vocabulary."""
    text = [*TASK_WEIGHTS, *NUMBERS]
    for i in range(num_scenes):
        scene = scenes.sample_scene(scenes.example_seed(seed, "train", i))
        text += [*task_examples(scene).values(), scenes.long_caption(scene)]
    return text


def render_images(drawn: list[scenes.Scene], desc: str, resolution: int = RESOLUTION) -> np.ndarray:
    """float16[N, R, R, 3]: the scenes drawn (at 224 pixels, as the datasets store them) and
    preprocessed to R = `resolution`, in [-1, 1]."""
    images = np.zeros((len(drawn), resolution, resolution, 3), np.float16)
    for i, scene in enumerate(tqdm(drawn, desc=desc, unit="img", leave=False)):
        images[i] = preprocess_image(scenes.render_scene(scene), resolution)
    return images


def render_scenes(num: int, split: str, seed: int, desc: str) -> tuple[np.ndarray, list]:
    """float16[num, R, R, 3] images in [-1, 1] and their scenes."""
    drawn = scenes.split_scenes(split, num, seed)
    return render_images(drawn, desc), drawn


def training_batches(images, drawn, tokenizer, settings: Settings):
    """Endless batches mixing the tasks by `TASK_WEIGHTS`, drawn with a seeded generator."""
    rng = np.random.default_rng(settings.seed)
    prefixes = list(TASK_WEIGHTS)
    encoded = [
        [
            preprocess_tokens(prefix, target, SEQLEN, tokenizer=tokenizer)
            for prefix, target in task_examples(scene).items()
        ]
        for scene in drawn
    ]
    weights = np.array([TASK_WEIGHTS[p] for p in prefixes])
    while True:
        rows = rng.integers(0, len(drawn), settings.batch_size)
        tasks = rng.choice(len(prefixes), settings.batch_size, p=weights / weights.sum())
        text = np.stack([encoded[r][t] for r, t in zip(rows, tasks, strict=True)])
        yield {
            "image": images[rows].astype(np.float32),
            "text": text[:, 0],
            "mask_ar": text[:, 1],
            "mask_loss": text[:, 2],
        }


def generate(params, model, tokenizer, images, prefix: str) -> list[str]:
    """Greedy answers to `prefix` for float[N, R, R, 3] `images`."""
    prompt = preprocess_tokens(prefix, None, None, tokenizer=tokenizer)
    batch = {
        "image": np.asarray(images, np.float32),
        "text": np.tile(prompt[0], (len(images), 1)),
        "mask_ar": np.tile(prompt[1], (len(images), 1)),
        "mask_input": np.tile(prompt[3], (len(images), 1)),
    }
    tokens = decode(params, batch, model=model, max_decode_len=SEQLEN)
    return [postprocess_tokens(row, tokenizer=tokenizer) for row in tokens]


def random_kind_f1(drawn: list[scenes.Scene], draws: int = 20, seed: int = 0) -> float:
    """The "caption en" F1 of kinds alone for a model that sees every size and colour but
    names kinds at random: the level a model's kind F1 must beat to show it sees kinds."""
    rng = np.random.default_rng(seed)
    scores = []
    for scene in drawn:
        for _ in range(draws):
            guess = [
                dataclasses.replace(shape, kind=str(rng.choice(scenes.KINDS)))
                for shape in scene.shapes
            ]
            caption = scenes.short_caption(dataclasses.replace(scene, shapes=tuple(guess)))
            scores.append(scenes.attribute_f1(caption, scene)["kind"])
    return float(np.mean(scores))


def pair_recall(captions: list[str], drawn: list[scenes.Scene]) -> dict[str, float | None]:
    """Share of shapes whose colour and kind a caption names together, for shapes whose
    pair training showed ("seen") and for the pairs it held out ("held_out"; see
    `scenes.HELD_OUT_PAIRS`); None where the scenes have no such shape.

    A caption naming "a red star" twice finds two red stars at most: pairs are
    matched as multisets, so one right name cannot stand for two shapes.
    """
    found = {"seen": [0, 0], "held_out": [0, 0]}
    for caption, scene in zip(captions, drawn, strict=True):
        named = collections.Counter((o.colour, o.kind) for o in scenes.parse_caption(caption))
        for shape in scene.shapes:
            pair = (shape.colour, shape.kind)
            tally = found["held_out" if pair in scenes.HELD_OUT_PAIRS else "seen"]
            tally[1] += 1
            if named[pair] > 0:
                named[pair] -= 1
                tally[0] += 1
    return {name: right / total if total else None for name, (right, total) in found.items()}


def held_out_readings(layouts: list[str], drawn: list[scenes.Scene]) -> dict | None:
    """What a model says of the shapes whose colour-kind pair training never showed.

    Each such shape is looked up in the "describe en" layout list, among the
    shapes it names in the same grid cell: "both" when one of them has the right
    colour and kind, else "colour" (right colour, another kind), "kind" (right
    kind, another colour) or "neither". Returns {"shapes": count, "both" ...
    "neither": shares, "swaps": the three commonest [true pair, named pair,
    times]}, or None when the scenes hold no such shape.
    """
    outcomes, swaps = collections.Counter(), collections.Counter()
    for layout, scene in zip(layouts, drawn, strict=True):
        named = scenes.parse_caption(layout)
        for shape in scene.shapes:
            pair = (shape.colour, shape.kind)
            if pair not in scenes.HELD_OUT_PAIRS:
                continue
            here = [(o.colour, o.kind) for o in named if o.position == shape.position]
            if pair in here:
                outcomes["both"] += 1
                continue
            same_colour = [p for p in here if p[0] == shape.colour]
            same_kind = [p for p in here if p[1] == shape.kind]
            outcome = "colour" if same_colour else "kind" if same_kind else "neither"
            outcomes[outcome] += 1
            for said in (same_colour or same_kind or here)[:1]:
                swaps[(" ".join(pair), " ".join(said))] += 1
    total = sum(outcomes.values())
    if not total:
        return None
    return {
        "shapes": total,
        **{
            name: round(outcomes[name] / total, 4) for name in ("both", "colour", "kind", "neither")
        },
        "swaps": [[true, said, n] for (true, said), n in swaps.most_common(3)],
    }


def evaluate(params, model, tokenizer, images, drawn) -> dict:
    """Scores on some scenes: object F1 of short captions (size, colour, kind) and of each
    of those alone, of layout lists with positions too, and counting accuracy. Returns
    floats and a few examples."""
    captions = generate(params, model, tokenizer, images, "caption en")
    layouts = generate(params, model, tokenizer, images, "describe en")
    counts = generate(params, model, tokenizer, images, "count en")
    pairs = list(zip(drawn, captions, layouts, counts, strict=True))
    per_attribute = [scenes.attribute_f1(c, s) for s, c, _, _ in pairs]
    return {
        "caption_object_f1": float(np.mean([scenes.object_f1(c, s)[2] for s, c, _, _ in pairs])),
        **{
            f"caption_{name}_f1": float(np.mean([scores[name] for scores in per_attribute]))
            for name in scenes.OBJECT_FIELDS
        },
        "caption_kind_f1_random": random_kind_f1(drawn),
        **{
            f"caption_pair_recall_{name}": value
            for name, value in pair_recall(captions, drawn).items()
        },
        "caption_exact": float(np.mean([c == scenes.short_caption(s) for s, c, _, _ in pairs])),
        "layout_object_f1_with_position": float(
            np.mean([scenes.object_f1(lay, s, match_position=True)[2] for s, _, lay, _ in pairs])
        ),
        "count_accuracy": float(np.mean([n == NUMBERS[len(s.shapes)] for s, _, _, n in pairs])),
        "held_out_readings": held_out_readings(layouts, drawn),
        "examples": [[scenes.short_caption(s), c] for s, c, _, _ in pairs[:5]],
    }


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def _shippable(params) -> dict:
    return jax.tree.map(lambda p: np.asarray(p).astype(ml_dtypes.bfloat16), params)


def stage1_optimizer(tower_warmup: int) -> optax.GradientTransformation:
    """Adam (learning rate 1.0: the step scales it by the schedule) whose updates to the
    image tower ("img/..." in the flat tree `make_update_fn` optimises) are scaled by a
    ramp from 0 to 1 over the first `tower_warmup` steps."""
    ramp = optax.scale_by_schedule(lambda count: jnp.minimum(1.0, count / max(tower_warmup, 1)))
    by_tower = optax.multi_transform(
        {"img": ramp, "llm": optax.identity()},
        lambda flat: {name: name.split("/")[0] for name in flat},
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0), by_tower)


def render_held_out(settings: Settings) -> dict[str, tuple[np.ndarray, list]]:
    """{"val": (images, scenes), "test": ...}: the scenes the model is scored on."""
    return {
        split: render_scenes(settings.num_eval, split, settings.seed, split)
        for split in ("val", "test")
    }


def score_held_out(params, model, tokenizer, held_out: dict) -> dict:
    """{"val": scores, "test": scores} of float32 `params` (see `evaluate`)."""
    return {
        split: _rounded(evaluate(params, model, tokenizer, *scenes_of_split))
        for split, scenes_of_split in held_out.items()
    }


def rescore(out: pathlib.Path) -> dict:
    """Scores the model in `out` again with today's `evaluate`, on the scenes its card names,
    and rewrites the scores in config.json and MODEL_CARD.md; training facts stay as they
    were. Greedy decoding is deterministic, so scores that existed before come back equal."""
    card = read_tiny_card(out)
    model, _, params, tokenizer = load_tiny(out)
    params = float32_params(params)
    settings = Settings(**card["settings"])
    card["scores"].update(score_held_out(params, model, tokenizer, render_held_out(settings)))
    write_atomic(out / "config.json", json.dumps(card, indent=1) + "\n")
    write_atomic(out / "MODEL_CARD.md", _model_card(card))
    return card["scores"]


def pretrain(out: pathlib.Path, settings: Settings) -> dict:
    """Runs the whole recipe and writes the assets into `out`; returns the scores."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tokenizer_text(seed=settings.seed), out / "tokenizer.model")
    config = tiny_config(tokenizer.get_piece_size())
    model = Model(**config)
    params = init_params(model, RESOLUTION, seed=settings.seed)
    images, drawn = render_scenes(settings.num_scenes, "train", settings.seed, "train scenes")
    held_out = render_held_out(settings)

    vision_scores = {}
    if settings.vision_steps:
        params, vision_scores = pretrain_vision.train_vision(
            model,
            params,
            images,
            drawn,
            steps=settings.vision_steps,
            batch_size=settings.vision_batch_size,
            learning_rate=settings.vision_learning_rate,
            seed=settings.seed,
            held_out=held_out["val"],
            eval_every=settings.eval_every,
        )

    optimizer = stage1_optimizer(settings.tower_warmup)
    trainable = trainable_mask(params, "all")
    update_fn = make_update_fn(model, trainable, optimizer)
    state = init_train_state(params, trainable, optimizer)
    batches = training_batches(images, drawn, tokenizer, settings)
    bar = tqdm(total=settings.steps, desc="pretraining", unit="step")
    history, recent_losses = [], collections.deque(maxlen=100)

    def score_and_save(step, state, learning_rate, loss):
        recent_losses.append(loss)
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{learning_rate:.2g}")
        if step % settings.eval_every == 0 and step < settings.steps:
            val = evaluate(state.params, model, tokenizer, *held_out["val"])
            history.append({"step": step, "loss": float(np.mean(recent_losses)), **val})
            bar.write(
                json.dumps(_rounded({k: v for k, v in history[-1].items() if k != "examples"}))
            )
            save_params(_shippable(state.params), out / "params.npz")

    # The shipped model was built with total_steps=steps (its last step at learning rate 0);
    # kept, so that this script rebuilds it bit for bit.
    schedule = functools.partial(
        cosine_schedule, total_steps=settings.steps, base_lr=settings.learning_rate
    )
    state, losses = train_steps(
        update_fn,
        state,
        itertools.islice(batches, settings.steps),
        schedule,
        on_step=score_and_save,
    )
    bar.close()

    params = _shippable(state.params)
    save_params(params, out / "params.npz")
    shipped = float32_params(params)
    scores = {
        "num_params": count_params(params),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "seconds": round(time.perf_counter() - start, 1),
        "stage0_readout_accuracy": _rounded(vision_scores),
        **score_held_out(shipped, model, tokenizer, held_out),
    }
    card = {
        "config": config,
        "resolution": RESOLUTION,
        "seqlen": SEQLEN,
        "tasks": TASK_WEIGHTS,
        "settings": dataclasses.asdict(settings),
        "scores": scores,
        "history": [_rounded({k: v for k, v in h.items() if k != "examples"}) for h in history],
    }
    write_atomic(out / "config.json", json.dumps(card, indent=1) + "\n")
    write_atomic(out / "MODEL_CARD.md", _model_card(card))
    return scores


SCORE_LABELS = {
    "caption_object_f1": '"caption en" object F1 (size, colour, kind)',
    "caption_size_f1": '"caption en" F1 of sizes alone',
    "caption_colour_f1": '"caption en" F1 of colours alone',
    "caption_kind_f1": '"caption en" F1 of kinds alone',
    "caption_kind_f1_random": "... of kinds named at random, for comparison",
    "caption_pair_recall_seen": '"caption en" recall of colour-kind pairs seen in training',
    "caption_pair_recall_held_out": "... of colour-kind pairs never seen in training",
    "caption_exact": '"caption en" exact match',
    "layout_object_f1_with_position": '"describe en" object F1 with position',
    "count_accuracy": '"count en" accuracy',
}


def _limits(test: dict) -> str:
    """What the scores say the model cannot do yet, in a sentence or two."""
    kind, chance = test["caption_kind_f1"], test["caption_kind_f1_random"]
    if kind <= chance + 0.05:
        kinds = f", but its F1 of kinds ({kind}) is no better than"
    else:
        kinds = f"; its F1 of kinds ({kind}) is above"
    text = (
        f"On test scenes it names sizes (F1 {test['caption_size_f1']}) and colours "
        f"(F1 {test['caption_colour_f1']}){kinds} naming kinds at random ({chance}); "
        "object F1 needs all three right."
    )
    held_out = test.get("caption_pair_recall_held_out")
    if held_out is not None:
        text += (
            f" It names colour and kind together for {test['caption_pair_recall_seen']:.0%} of "
            f"the shapes whose colour-kind pair it saw in training, and for {held_out:.0%} of "
            "those whose pair it never saw."
        )
    return text


def _held_out_story(test: dict) -> str:
    """What the model does with a colour-kind pair it never saw, from its layout lists."""
    readings = test.get("held_out_readings")
    if not readings:
        return ""
    swaps = "; ".join(f'"{true}" read as "{said}" ({n}x)' for true, said, n in readings["swaps"])
    return (
        "\n\n## Colour-kind pairs it never saw\n\n"
        f"The test scenes hold {readings['shapes']} shapes whose colour-kind pair no "
        'training caption named. In its "describe en" layout list, in the grid cell of '
        f"each, the model names colour and kind both right for {readings['both']:.0%}, "
        f"the right colour with another kind for {readings['colour']:.0%}, the right kind "
        f"with another colour for {readings['kind']:.0%}, and neither for "
        f"{readings['neither']:.0%}. Its commonest swaps: {swaps or 'none'}."
    )


def _cell(value) -> str:
    return "n/a" if value is None else str(value)


def _model_card(card: dict) -> str:
    s, scores = card["settings"], card["scores"]
    val, test = scores["val"], scores["test"]
    examples = "\n".join(f"| {want} | {got} |" for want, got in test["examples"])
    rows = "\n".join(
        f"| {label} | {_cell(val.get(key))} | {_cell(test.get(key))} |"
        for key, label in SCORE_LABELS.items()
    )
    tasks = ", ".join(f'"{name}" ({weight:.0%})' for name, weight in card["tasks"].items())
    patch = card["config"]["img"]["patch_size"]
    grid = card["resolution"] // patch
    side = card["resolution"]
    reads = (
        f"It reads {side}x{side} images in patches of {patch} pixels, {grid} x {grid} image tokens:"
    )
    return f"""# The course's tiny PaliGemma

PaliGemma's architecture (SigLIP ViT + Gemma decoder, prefix-LM) at
{scores["num_params"]:,} parameters, stored in bfloat16 in big_vision's npz format.
{reads}
one per grid cell of a scene, so each shape lies whole in one patch (the real
PaliGemma reads 224 pixels or more in 14-pixel patches).
Config: `config.json`. Tokenizer: `tokenizer.model` (PaliGemma's id layout).

## How it was made

`python -m capstone.factory.pretrain`, in two stages over {s["num_scenes"]} generated scenes:

0. the image tower alone learns what each patch shows (kind, colour and size
   of its shape and of a shape stacked on it, or background) and the
   background's pattern and tone:
   {s["vision_steps"]} Adam steps, batch {s["vision_batch_size"]}, peak learning rate
   {s["vision_learning_rate"]} (`capstone.factory.pretrain_vision`; its read-outs are then dropped,
   as SigLIP's training heads are for the real model);
1. the whole model on the tasks {tasks}: {s["steps"]} Adam steps, batch
   {s["batch_size"]}, peak learning rate {s["learning_rate"]}.

Both use a cosine schedule with 10% warm-up. Seed {s["seed"]}; the same seed
gives the same file. It took {scores["seconds"]:.0f} s on the 2-core machine that built it.

## Scores

Greedy decoding on {s["num_eval"]} validation scenes (colour-kind pairs seen in
training) and {s["num_eval"]} test scenes (each holds a colour-kind pair never seen in
training):

| score | validation | test |
| --- | --- | --- |
{rows}

{_limits(test)}{_held_out_story(test)}

Test examples, "caption en":

| reference | model |
| --- | --- |
{examples}
"""


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=TINY_ASSETS, help="the model's folder")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="only score the model in --out again and rewrite its card (no training)",
    )
    settings, args = cli.parse_settings(parser, Settings, argv)
    if args.rescore:
        print(json.dumps(rescore(args.out), indent=1))
        return 0
    scores = pretrain(args.out, settings)
    print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
