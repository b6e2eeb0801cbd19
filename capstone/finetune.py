"""Fine-tune PaliGemma to write long captions: the notebook's recipe as a CLI.

    python -m capstone.finetune                       # the shipped tiny model, offline
    python -m capstone.finetune --steps 200 --learning-rate 0.05 --out runs/mine
    python -m capstone.finetune --resume runs/mine    # carry on after Ctrl-C
    python -m capstone.finetune --trainable lora --lora-rank 8 --out runs/lora
    python -m capstone.finetune --model paligemma-3b-pt-224 --checkpoint kaggle --data longcap100

The default run loads the course's small PaliGemma (`capstone/assets/tiny`),
writes the scenes dataset in longcap100's layout (90 train / 10 val long
captions, plus a test split of colour-kind pairs never seen in training),
captions the validation and test images, fine-tunes as the notebook does
(attention weights only, plain SGD, cosine schedule with 10% warm-up, batch 8;
frozen weights in bfloat16, trained ones in float32), then captions them again
and scores both sets before and after. The notebook takes 64 steps at learning
rate 0.03 for the 3B model; the tiny one defaults to 256 steps at 0.3 on its
whole decoder (`--trainable llm`).

The run folder keeps everything: `checkpoint.npz` (big_vision's format,
written atomically every `--save-every` steps, on Ctrl-C and at the end),
`state.json` (the step to resume from), `metrics.json`, `loss.png` and
`report.html` (the images with their captions before and after). With
`--trainable lora` the frozen model gets low-rank adapters instead
(`solutions.lora`): `checkpoint.npz` holds them merged into the weights (it
loads like any checkpoint), `lora.npz` the adapters themselves (to resume), and
`peft/` the same adapters as Hugging Face PEFT loads them.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import itertools
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from capstone import cli
from solutions import data, scenes
from solutions import lora as lora_lib
from solutions.checkpoints import TINY_ASSETS, float32_params, load_real, load_tiny
from solutions.configs import UnknownCheckpointError, get_checkpoint
from solutions.downloads import LONGCAP100_SPLITS, TOKENIZER_FILENAME
from solutions.evaluate import make_predictions
from solutions.files import remove_stale_temporaries, write_atomic
from solutions.metrics import caption_report
from solutions.model import Model, param_shapes
from solutions.params import load_params, save_params
from solutions.peft_export import export_peft
from solutions.preprocess import postprocess_tokens, preprocess_tokens
from solutions.tokenizer import load_tokenizer
from solutions.train import (
    STRATEGIES,
    NonFiniteLossError,
    TrainingInterrupted,
    cast_params,
    cosine_schedule,
    make_update_fn,
    split_params,
    train_steps,
    trainable_mask,
)

DEFAULT_DATA = pathlib.Path("runs") / "scenes-longcap"
# (steps, SGD learning rate, what trains) of the reference notebook, and of the shipped tiny
# model: measured best within 3 CPU minutes (docs/capstone.md lists the recipes tried).
NOTEBOOK_RECIPE = (64, 0.03, "attn")
TINY_RECIPE = (256, 0.3, "llm")
PROMPT = "caption en"  # the prefix of every line of the scenes dataset and of longcap100


@dataclasses.dataclass
class EvalSet:
    """Examples captioned before and after; `scenes` (one per example) adds object scores."""

    name: str
    about: str
    examples: list
    scenes: list | None = None


@dataclasses.dataclass
class Run:
    """Everything one fine-tune needs, resolved from the command line."""

    model: Model
    resolution: int
    params: dict
    tokenizer: object
    train: list
    evals: list[EvalSet]
    out: pathlib.Path
    lora: lora_lib.LoraConfig | None = None  # set: LoRA adapters train, the params stay
    adapters: dict | None = None  # a resumed LoRA run's adapters (lora.npz)

    def starting_params(self) -> dict:
        """The model's parameters before this run trains: with adapters, merged into them."""
        if self.adapters is None:
            return self.params
        return lora_lib.merge_adapters(self.params, self.adapters, self.lora)


@dataclasses.dataclass
class Settings:
    """The fine-tune's knobs, one flag each (`num_val` -> `--num-val`). `steps`,
    `learning_rate` and `trainable` left None take the model's recipe (`with_recipe`)."""

    model: str = cli.setting("tiny", "'tiny' (shipped) or a real name, e.g. paligemma-3b-pt-224")
    assets: pathlib.Path = cli.setting(TINY_ASSETS, "folder of the shipped tiny model")
    checkpoint: str | None = cli.setting(None, "a .npz path, or 'kaggle' to download")
    data: str | None = cli.setting(None, "a longcap100-style folder (default: scenes)")
    num_val: int = cli.setting(
        50, "validation scenes to write and score (scenes data only; longcap100 has 10)", least=1
    )
    steps: int | None = cli.setting(
        None, f"default: {TINY_RECIPE[0]} (tiny), {NOTEBOOK_RECIPE[0]} (real)", least=1
    )
    batch_size: int = cli.setting(8, "examples per step", least=1)
    learning_rate: float | None = cli.setting(
        None,
        f"SGD peak; default: {TINY_RECIPE[1]} (tiny), {NOTEBOOK_RECIPE[1]} (real, the notebook's)",
        least=0,
    )
    trainable: str | None = cli.setting(
        None,
        f"what trains; default: {TINY_RECIPE[2]} (tiny), {NOTEBOOK_RECIPE[2]} (real); lora: "
        "low-rank adapters of the decoder, see --lora-rank",
        choices=(*STRATEGIES, "lora"),
    )
    lora_rank: int = cli.setting(8, "with --trainable lora: the adapters' rank", least=1)
    lora_alpha: float = cli.setting(
        16.0, "with --trainable lora: the update is scaled by alpha / rank", least=0
    )
    lora_targets: str = cli.setting(
        "attn", "with --trainable lora: the weights adapted", choices=tuple(lora_lib.TARGETS)
    )
    seqlen: int = cli.setting(80, "tokens per example: prompt, caption and padding")
    max_decode_len: int = cli.setting(72, "most tokens a caption may have", least=1)
    save_every: int = cli.setting(50, "steps between checkpoints", least=1)
    seed: int = cli.setting(0, "seed of the data order", least=0)  # numpy takes none below 0
    on_error: str = cli.setting(
        "raise", "bad dataset lines: stop, or skip and count them", choices=("raise", "skip")
    )
    out: pathlib.Path | None = cli.setting(None, "run folder (default: runs/finetune-<time>)")
    resume: pathlib.Path | None = cli.setting(None, "run folder to continue")
    # For experts studying a diverged run; documented in docs/troubleshooting.md.
    allow_nonfinite_weights: bool = cli.setting(False, hidden=True)

    def with_recipe(self) -> Settings:
        """These settings with every None filled: the model's recipe, and a run folder."""
        # The notebook's 64 steps at 0.03 on the attention weights move a 3B model; the tiny
        # one, whose 3-layer decoder is far from long captions, needs more and bigger steps
        # of the same SGD, on the whole decoder.
        steps, learning_rate, trainable = TINY_RECIPE if self.model == "tiny" else NOTEBOOK_RECIPE
        out = (
            self.out
            or self.resume
            or pathlib.Path("runs") / time.strftime("finetune-%Y%m%d-%H%M%S")
        )
        return dataclasses.replace(
            self,
            steps=steps if self.steps is None else self.steps,
            learning_rate=learning_rate if self.learning_rate is None else self.learning_rate,
            trainable=trainable if self.trainable is None else self.trainable,
            out=out,
        )


def prepare_data(data_arg: str | None, on_error: str, num_val: int = 50):
    """(train examples, [EvalSet]) for the run.

    Without `--data`, writes (once) the scenes dataset with long captions and
    scores two sets against the true scenes: `num_val` validation scenes
    (colour-kind pairs seen in training; longcap100 has 10, too few to tell
    recipes apart) and 50 test scenes
    (each with a pair never seen). A longcap100-style folder is scored on its
    data_val10.jsonl, with CIDEr only.
    """
    if data_arg is None:
        paths = scenes.write_dataset(
            DEFAULT_DATA, n_train=90, n_val=num_val, n_test=50, caption="long"
        )
        evals = [
            EvalSet(
                "validation",
                "colour-kind pairs seen in training",
                data.read_jsonl(paths["val"]),
                scenes.split_scenes("val", num_val),
            ),
            EvalSet(
                "test",
                "each holds a colour-kind pair never seen in training",
                data.read_jsonl(paths["test"]),
                scenes.split_scenes("test", 50),
            ),
        ]
        return data.read_jsonl(paths["train"]), evals
    root = pathlib.Path(data_arg)
    if not root.exists():
        from solutions import downloads

        root = downloads.download_longcap100(root)
    train = data.read_jsonl(root / "data_train90.jsonl", on_error=on_error)
    val = data.read_jsonl(root / "data_val10.jsonl", on_error=on_error)
    return train, [EvalSet("validation", str(root / "data_val10.jsonl"), val)]


def caption_all(run: Run, examples: list, params, decode: tuple[int, int, int]) -> list[str]:
    """Greedy captions of `examples`, in order; `decode` is (seqlen, max_decode_len,
    batch_size)."""
    seqlen, max_decode_len, batch_size = decode
    stream = data.validation_examples(
        examples, tokenizer=run.tokenizer, seqlen=seqlen, image_size=run.resolution
    )
    pairs = make_predictions(
        params,
        stream,
        model=run.model,
        batch_size=batch_size,
        max_decode_len=max_decode_len,
        postprocess=lambda row: postprocess_tokens(row, tokenizer=run.tokenizer),
        progress=False,
    )
    return [caption for _, caption in pairs]


def caption_sets(run: Run, params, decode: tuple[int, int, int]) -> dict[str, list[str]]:
    """{set name: greedy captions} for every evaluation set; `params` of any float dtype."""
    params = float32_params(params)
    return {e.name: caption_all(run, e.examples, params, decode) for e in run.evals}


def score(eval_set: EvalSet, captions: list[str]) -> dict:
    references = [[e.suffix.lower()] for e in eval_set.examples]
    return caption_report(captions, references, scenes=eval_set.scenes)


SCORE_ROWS = (  # (label, path into a caption_report) in the order a reader wants them
    ("layout F1 (shape and grid cell)", ("object_f1_position",)),
    ("CIDEr", ("cider",)),
    ("object F1 (size, colour, kind)", ("object_f1",)),
    *((f"F1 of {name} alone", ("attribute_f1", name)) for name in scenes.ATTRIBUTES),
    ("captions repeating a word 3x", ("repeating",)),
)


def format_score(value: float | int) -> str:
    """A score as the tables show it: counts whole, fractions to three places."""
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def score_rows(before: dict, after: dict) -> list[tuple[str, float, float]]:
    """(label, before, after) for each score both reports hold; object scores need scenes."""
    rows = []
    for label, path in SCORE_ROWS:
        values = []
        for report in (before, after):
            for key in path:
                report = report.get(key) if isinstance(report, dict) else None
            values.append(report)
        if None not in values:
            rows.append((label, *values))
    return rows


def lora_config(settings: Settings) -> lora_lib.LoraConfig | None:
    """The LoRA settings, when LoRA is what trains."""
    if settings.trainable != "lora":
        return None
    return lora_lib.LoraConfig(settings.lora_rank, settings.lora_alpha, settings.lora_targets)


def _training_tree(run: Run, settings: Settings):
    """(tree, its trainable mask, the model that reads it): the parameters themselves, or
    with LoRA `{"base": params, "lora": adapters}` and a `LoraModel`."""
    if run.lora is None:
        return run.params, trainable_mask(run.params, settings.trainable), run.model
    adapters = run.adapters
    if adapters is None:
        adapters = lora_lib.init_adapters(run.params, run.lora, seed=settings.seed)
    tree = {"base": run.params, "lora": adapters}
    return tree, lora_lib.trainable_adapters(tree), lora_lib.LoraModel(run.model, run.lora)


def _model_params(run: Run, tree) -> dict:
    """The model's parameters a training tree stands for (with LoRA: merged)."""
    if run.lora is None:
        return tree
    return lora_lib.merge_adapters(tree["base"], tree["lora"], run.lora)


def _save(run: Run, tree, step: int) -> None:
    """Checkpoint (with LoRA, merged, and the adapters beside it in lora.npz), then state,
    each atomic: a crash between them resumes from the older step."""
    save_params(_model_params(run, tree), run.out / "checkpoint.npz")
    if run.lora is not None:
        save_params(tree["lora"], run.out / "lora.npz")
    write_atomic(run.out / "state.json", json.dumps({"step": step}))


@jax.jit
def _all_finite(tree) -> jax.Array:
    """bool[]: whether every value of every leaf is finite. Compiled, the checks fuse into
    one reduction per leaf: no boolean copy of the parameters is ever made."""
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def train(run: Run, settings: Settings, first_step: int) -> tuple[dict, list[float], str]:
    """The notebook's loop (`solutions.train.train_steps`); returns (params, losses, how it
    ended), saving into the run folder every `save_every` steps, on Ctrl-C and at the end.

    The run folder only ever receives finite parameters. A step whose loss is
    NaN or inf keeps its inputs (see `make_update_fn`), and those are saved.
    But an update can also turn the parameters NaN or inf while its own loss
    was finite (a learning rate far too high); the next save or stop then
    finds them so, saves nothing, and the returned params are the last finite
    ones: the folder's checkpoint, or the run's starting parameters.
    """
    tree, trainable, model = _training_tree(run, settings)
    params = cast_params(tree, trainable, frozen_dtype=jnp.bfloat16)
    update_fn = make_update_fn(model, trainable)
    stream = data.batches(
        data.train_examples(
            run.train,
            tokenizer=run.tokenizer,
            seqlen=settings.seqlen,
            image_size=run.resolution,
            seed=settings.seed + first_step,
        ),
        settings.batch_size,
    )
    # The notebook's total of steps + 1: its last step still learns a little.
    schedule = functools.partial(
        cosine_schedule, total_steps=settings.steps + 1, base_lr=settings.learning_rate
    )
    bar = tqdm(desc="fine-tuning", unit="step", initial=first_step - 1, total=settings.steps)
    saved = first_step - 1  # the step whose parameters the run folder holds (0: none)
    blew_up = None  # the step and learning rate at which the parameters were found NaN or inf

    def finite(params) -> bool:
        return bool(_all_finite(split_params(params, trainable)[0]))  # frozen ones never change

    def show_and_save(step, params, learning_rate, loss) -> bool:
        nonlocal saved, blew_up
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{learning_rate:.3g}")
        if step % settings.save_every:
            return False
        if not finite(params):
            blew_up = (step, learning_rate)
            return True  # stop: every later step would train on NaN
        _save(run, params, step)
        saved = step
        return False

    losses, stopped = [], False
    try:
        params, losses = train_steps(
            update_fn,
            params,
            itertools.islice(stream, settings.steps - first_step + 1),
            schedule,
            first_step=first_step,
            on_step=show_and_save,
        )
        step = first_step - 1 + len(losses)
        if blew_up is None:
            ended = "finished"
        else:
            step, learning_rate = blew_up
            ended, stopped = f"stopped at step {step} (learning rate {learning_rate:.3g})", True
    except TrainingInterrupted as err:
        params, losses, step = err.state, err.losses, err.step
        ended = f"interrupted after step {step}"
    except NonFiniteLossError as err:
        params, losses, step = err.state, err.losses, err.step - 1
        ended = f"stopped: Loss is {err.loss} at step {err.step} "
        ended += f"(learning rate {err.learning_rate:.3g})"
        stopped = True
    finally:
        bar.close()
    if finite(params):
        if step > saved:
            _save(run, params, step)
            saved = step
        if stopped:
            ended += (
                f"; that update was skipped, and the run folder keeps step {saved}. Lower "
                "--learning-rate (halve it, say) or check that batch for bad values"
            )
        return _model_params(run, params), losses, ended
    params, kept = _last_finite_params(run, saved, first_step)
    ended += f"; an update had turned the parameters NaN or inf, so {kept}"
    return params, losses, ended + ". Lower --learning-rate (halve it, say)"


def _last_finite_params(run: Run, saved: int, first_step: int) -> tuple[dict, str]:
    """(params, where they are kept) when the trained ones are NaN or inf: the checkpoint
    this run saved last, or else the parameters it started from."""
    if saved == first_step - 1:
        if saved:
            return (
                run.starting_params(),
                f"the run folder keeps step {saved}, the one it resumed from",
            )
        return (
            run.starting_params(),
            "nothing is saved: the only finite parameters are the starting ones",
        )
    shapes = param_shapes(run.model, run.resolution)
    params = load_params(run.out / "checkpoint.npz", like=shapes)
    return params, f"the run folder keeps step {saved}, its last finite parameters"


def write_loss_curve(losses: list[float], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set(xlabel="step", ylabel="training loss", title="Fine-tuning loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _thumbnail_src(example) -> str:
    """The example's image as a 160-pixel JPEG data URL, for the report."""
    image = data.load_image(example).convert("RGB")
    image.thumbnail((160, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _set_title(eval_set: EvalSet) -> str:
    return f"{len(eval_set.examples)} {eval_set.name} examples ({eval_set.about})"


def write_report(run: Run, captions: dict, metrics: dict, path: pathlib.Path) -> None:
    """An HTML page: per evaluation set the scores before and after, then each image with
    its reference and both captions. `captions` is {"before"|"after": {set name: [str]}}."""
    parts = []
    for eval_set in run.evals:
        scores = "".join(
            f"<tr><td>{html.escape(label)}</td><td>{format_score(old)}</td>"
            f"<td>{format_score(new)}</td></tr>"
            for label, old, new in score_rows(
                metrics["before"][eval_set.name], metrics["after"][eval_set.name]
            )
        )
        parts.append(
            f"<h2>Scores on {html.escape(_set_title(eval_set))}</h2>"
            f"<table><tr><th>score</th><th>before</th><th>after</th></tr>{scores}</table>"
        )
    for eval_set in run.evals:
        before, after = captions["before"][eval_set.name], captions["after"][eval_set.name]
        rows = "".join(
            f"<tr><td><img src='{_thumbnail_src(example)}'></td>"
            f"<td>{html.escape(example.suffix)}</td>"
            f"<td>{html.escape(old)}</td><td>{html.escape(new)}</td></tr>"
            for example, old, new in zip(eval_set.examples, before, after, strict=True)
        )
        parts.append(
            f"<h2>Captions of the {html.escape(eval_set.name)} images</h2>"
            "<table><tr><th>image</th><th>reference</th><th>before</th><th>after</th></tr>"
            f"{rows}</table>"
        )
    write_atomic(
        path,
        "<!doctype html><meta charset='utf-8'><title>Captions before and after</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:6px;max-width:22em}"
        "tr:nth-child(even){background:#f4f4f4}</style>" + "".join(parts),
    )


def parse_settings(argv) -> Settings:
    """The command line as `Settings` with the recipe filled in; flags that cannot work are
    refused here, before any work (one line and exit code 2), each naming the flag and what
    it accepts."""
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)
    settings = settings.with_recipe()
    try:
        check_settings(settings)
    except ValueError as err:
        parser.error(str(err))
    return settings


def check_settings(settings: Settings) -> None:
    """Raises ValueError, naming the flag and what it accepts, for settings that would fail
    later (after minutes of loading, or at the last step) or quietly mislead; each field's
    own range is checked by `cli.check_settings`."""
    cli.check_settings(settings)
    _check_model(settings)
    _check_seqlen(settings)
    if settings.data is not None:
        _check_data_folder(pathlib.Path(settings.data))
    if settings.resume is not None:
        if settings.out != settings.resume:
            raise ValueError(
                f"--out {settings.out} and --resume {settings.resume} name two folders; a resumed "
                "run stays in its own folder, so drop --out"
            )
        done = _resumable_step(settings.resume)
        if settings.trainable == "lora" and not (settings.resume / "lora.npz").is_file():
            raise ValueError(
                f"--resume {settings.resume} has no lora.npz: it was not a LoRA run. Resume it "
                "as it was trained (without --trainable lora), or start a LoRA run with --out"
            )
        if settings.steps < done:
            raise ValueError(
                f"--steps {settings.steps} is fewer than the {done} steps {settings.resume} has "
                f"done; --steps is the total to reach, so pass at least {done}"
            )
    _check_writable_folder(settings.out)


def _check_model(settings) -> None:
    if settings.model == "tiny":
        if settings.checkpoint is not None:
            raise ValueError(
                "--checkpoint is for a real --model; the tiny model's weights are in --assets"
            )
        return
    try:
        get_checkpoint(settings.model)
    except UnknownCheckpointError as err:
        raise ValueError(f"--model: {err} Or 'tiny', the shipped model.") from None
    if settings.checkpoint is None:
        raise ValueError(
            f"--model {settings.model} needs --checkpoint: the path of its .npz, or 'kaggle' to "
            "download it"
        )
    if settings.checkpoint != "kaggle" and not pathlib.Path(settings.checkpoint).is_file():
        raise ValueError(f"--checkpoint {settings.checkpoint}: no such file; or pass 'kaggle'")


def _check_seqlen(settings) -> None:
    """--seqlen must hold the prompt and one caption token; the prompt is counted with the
    tokenizer when it is on disk already (the tiny model's, or one beside --checkpoint)."""
    if settings.model == "tiny":
        tokenizer_path = settings.assets / "tokenizer.model"
    elif settings.checkpoint != "kaggle":
        tokenizer_path = pathlib.Path(settings.checkpoint).parent / TOKENIZER_FILENAME
    else:
        tokenizer_path = None
    if tokenizer_path is None or not tokenizer_path.is_file():
        least, why = 4, "BOS, a prompt, the separator and a caption token need as many"
    else:
        tokenizer = load_tokenizer(tokenizer_path)
        prompt = len(preprocess_tokens(PROMPT, tokenizer=tokenizer)[0])
        least = prompt + 1
        why = f"the prompt {PROMPT!r} takes {prompt} tokens with BOS and the separator, and "
        why += "a caption at least one more"
    if settings.seqlen < least:
        raise ValueError(f"--seqlen must be at least {least}, not {settings.seqlen}: {why}")


def _check_data_folder(root: pathlib.Path) -> None:
    """A missing folder is fine (longcap100 is downloaded into it); one that exists must be a
    longcap100-style folder."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"--data {root} is a file; give a longcap100-style folder")
    missing = [name for name in LONGCAP100_SPLITS if not (root / name).is_file()]
    if missing:
        raise ValueError(
            f"--data {root} has no {' and no '.join(missing)}: a longcap100-style folder holds "
            f"{' and '.join(LONGCAP100_SPLITS)} and their images. To download longcap100 instead, "
            "name a folder that does not exist yet"
        )


def _resumable_step(folder: pathlib.Path) -> int:
    """The step a run folder's state.json says checkpoint.npz holds, checked."""
    if not folder.is_dir():
        raise ValueError(f"--resume {folder}: no such run folder")
    state_path, checkpoint = folder / "state.json", folder / "checkpoint.npz"
    if not state_path.is_file():
        raise ValueError(
            f"--resume {folder}: it has no state.json, so it is not a run folder, or its run "
            "stopped before its first save; start a new run with --out"
        )
    fix = (
        'it should read {"step": N}, N the step checkpoint.npz holds: write that, or start a '
        "new run with --out"
    )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{state_path} is damaged ({err}); {fix}") from None
    step = state.get("step") if isinstance(state, dict) else None
    if type(step) is not int or step < 0:  # bool is an int too, and no step count
        raise ValueError(f"{state_path} holds {json.dumps(state)[:80]}; {fix}")
    if not checkpoint.is_file():
        raise ValueError(
            f"--resume {folder}: state.json names step {step} but checkpoint.npz is missing; "
            "start a new run with --out"
        )
    return step


def _check_writable_folder(folder: pathlib.Path) -> None:
    """--out must be a folder, or a path where one can be made, that this user can write."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; name a folder (it is made if missing)")
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {folder}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {folder}: {existing} is not writable; choose another folder")


@cli.command
def main(argv: list[str]) -> int:
    settings = parse_settings(argv)
    start = time.perf_counter()
    out = settings.out  # made by its first write: a run that fails before one leaves no folder
    train_set, evals = prepare_data(
        settings.data, settings.on_error, settings.num_val
    )  # fails fastest
    if settings.model == "tiny":
        loaded = load_tiny(settings.assets, allow_nonfinite=settings.allow_nonfinite_weights)
    else:
        loaded = load_real(
            settings.model, settings.checkpoint, allow_nonfinite=settings.allow_nonfinite_weights
        )
    model, resolution, params, tokenizer = loaded
    run = Run(model, resolution, params, tokenizer, train_set, evals, out, lora_config(settings))

    first_step = 1
    if settings.resume:
        for name in ("checkpoint.npz", "state.json"):
            remove_stale_temporaries(out / name)  # of writes killed in the run resumed
        first_step = _resumable_step(out) + 1
        if run.lora is None:
            run.params = load_params(
                out / "checkpoint.npz",
                like=param_shapes(model, resolution),
                allow_nonfinite=settings.allow_nonfinite_weights,
            )
        else:  # the base stays the loaded model; the adapters carry on
            like = lora_lib.init_adapters(run.params, run.lora)  # the shapes and names
            run.adapters = load_params(out / "lora.npz", like=like)
        print(f"Resuming {out} from step {first_step}")

    decode = (settings.seqlen, settings.max_decode_len, 10)
    captions = {"before": caption_sets(run, run.starting_params(), decode)}
    params, losses, ended = train(run, settings, first_step)
    captions["after"] = caption_sets(run, params, decode)

    metrics = {
        **{
            when: {e.name: score(e, by_set[e.name]) for e in evals}
            for when, by_set in captions.items()
        },
        "steps": settings.steps,
        "ended": ended,
        "final_loss": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    if losses:
        write_loss_curve(losses, out / "loss.png")
    write_report(run, captions, metrics, out / "report.html")
    if run.lora is not None and (out / "lora.npz").is_file():
        # The adapters as the PyTorch world loads them, onto transformers' PaliGemma.
        adapters = load_params(out / "lora.npz")
        base = None if settings.model == "tiny" else f"google/{settings.model}"
        export_peft(adapters, run.lora, out / "peft", base_model=base)

    before, after = captions["before"][evals[0].name], captions["after"][evals[0].name]
    for example, old, new in list(zip(evals[0].examples, before, after, strict=True))[:3]:
        print(f"\n{example.image_path.name}\n  before: {old}\n  after:  {new}")
    print(f"\n{ended}.")
    for e in evals:
        print(f"Scores on {_set_title(e)}:")
        print(f"  {'':32} {'before':>7} {'after':>7}")
        for label, old, new in score_rows(metrics["before"][e.name], metrics["after"][e.name]):
            print(f"  {label:32} {format_score(old):>7} {format_score(new):>7}")
    print(f"Run folder: {out} ({metrics['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
