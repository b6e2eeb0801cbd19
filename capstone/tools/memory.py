"""Will it fit? Peak accelerator memory of one training step, before you try.

    python -m capstone.tools.memory --model paligemma-3b-pt-224 --batch-size 8 \\
        --seqlen 128 --trainable attn
    python -m capstone.tools.memory --trainable lora --lora-rank 16 --lora-targets attn+mlp
    python -m capstone.tools.memory --plan      # the largest batch per GPU and strategy

The step is the one `solutions.train.make_update_fn` builds (frozen parameters
in 16 bits, trainable ones in float32, plain SGD), compiled for abstract
inputs: XLA's memory analysis of the compiled program gives the bytes of its
arguments, outputs and temporaries. Nothing of the model is allocated, so
this runs on a laptop CPU for the 3B and 10B models alike. With `--trainable
lora` the step is the same one over `{"base": params, "lora": adapters}`
(`solutions.lora`): the base frozen, the adapters trained in float32. The numbers are
XLA's plan for the backend it compiles on (the CPU here); a GPU's compiler
fuses differently, so treat them as a close estimate, not a promise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import jax
import jax.numpy as jnp

from capstone import cli
from solutions import lora
from solutions.configs import CHECKPOINTS, UnknownCheckpointError, get_checkpoint, with_remat
from solutions.model import Model, param_shapes
from solutions.train import STRATEGIES, make_update_fn, trainable_mask

PLAN_STRATEGIES = (*STRATEGIES, "lora")
PLAN_MODELS = ("paligemma-3b-pt-224", "paligemma2-3b-pt-224", "paligemma2-3b-pt-448")

GIB = 1024**3

# Accelerators people fine-tune on, with the memory a program can use.
ACCELERATORS = {
    "T4 (16 GB)": 15.0 * GIB,
    "L4 (24 GB)": 22.0 * GIB,
    "A100 (40 GB)": 39.0 * GIB,
    "A100/H100 (80 GB)": 79.0 * GIB,
}


def abstract_inputs(
    model: Model,
    resolution: int,
    batch_size: int,
    seqlen: int,
    trainable: str,
    frozen_dtype,
    lora_config: lora.LoraConfig | None = None,
) -> tuple:
    """ShapeDtypeStructs for (params, mask, batch, learning_rate) of one SGD step; with
    LoRA the params are the tree `{"base": ..., "lora": ...}`."""
    shapes = param_shapes(model, resolution)
    if trainable == "lora":
        adapters = jax.eval_shape(lambda: lora.init_adapters(shapes, lora_config))
        shapes = {"base": shapes, "lora": adapters}
        mask = lora.trainable_adapters(shapes)
    else:
        mask = trainable_mask(shapes, trainable)
    params = jax.tree.map(
        lambda s, t: jax.ShapeDtypeStruct(s.shape, jnp.float32 if t else frozen_dtype),
        shapes,
        mask,
    )
    batch = {
        "image": jax.ShapeDtypeStruct((batch_size, resolution, resolution, 3), jnp.float32),
        "text": jax.ShapeDtypeStruct((batch_size, seqlen), jnp.int32),
        "mask_ar": jax.ShapeDtypeStruct((batch_size, seqlen), jnp.int32),
        "mask_loss": jax.ShapeDtypeStruct((batch_size, seqlen), jnp.int32),
    }
    return params, mask, batch, jax.ShapeDtypeStruct((), jnp.float32)


def _bytes(tree) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def training_step_memory(
    config: dict,
    resolution: int,
    *,
    batch_size: int,
    seqlen: int,
    trainable: str = "attn",
    frozen_dtype=jnp.float16,
    remat: bool = True,
    lora_config: lora.LoraConfig | None = None,
) -> dict:
    """Compiles one training step for abstract inputs and reports its memory.

    Args:
      config: model config `{"img": ..., "llm": ...}`.
      resolution: image side in pixels.
      batch_size, seqlen: the batch of the step (text tokens per example).
      trainable: "attn", "llm" or "all" (see `solutions.train.trainable_mask`), or
        "lora" (adapters as `lora_config` says; default `LoraConfig()`).
      frozen_dtype: dtype of frozen parameters (float16 on a T4).
      remat: recompute each layer's activations in the backward pass, as
        big_vision does, instead of keeping them.
    Returns:
      Bytes by kind: "params", "trainable_params", "batch", "temp",
      "output", "alias", and "peak" = arguments + outputs - aliased + temp.
    """
    model = Model(**(with_remat(config) if remat else config))
    lora_config = lora_config or lora.LoraConfig()
    params, mask, batch, lr = abstract_inputs(
        model, resolution, batch_size, seqlen, trainable, frozen_dtype, lora_config
    )
    step_model = lora.LoraModel(model, lora_config) if trainable == "lora" else model
    update_fn = make_update_fn(step_model, mask)
    compiled = update_fn.__wrapped__.lower(params, batch, lr).compile()
    stats = compiled.memory_analysis()
    trainable_bytes = _bytes(
        [p for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True) if t]
    )
    report = {
        "params": _bytes(params),
        "trainable_params": trainable_bytes,
        "batch": _bytes(batch),
        "argument": stats.argument_size_in_bytes,
        "output": stats.output_size_in_bytes,
        "alias": stats.alias_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
    }
    report["peak"] = report["argument"] + report["output"] - report["alias"] + report["temp"]
    return report


def largest_batches(
    config: dict,
    resolution: int,
    capacities: dict[str, float],
    *,
    seqlen: int,
    trainable: str,
    **step_options,
) -> dict[str, int]:
    """The largest batch whose compiled step fits each capacity (bytes); 0 where none does.

    XLA's plan grows about linearly with the batch once activations dominate (below
    batch 8 it reuses gradient buffers, so small batches cost less than the line says).
    So the line through batches 8 and 32 gives a first guess, and compiles at and next to
    the guess walk it to the edge: every batch returned has been compiled and fits, the
    next one has been compiled and does not.
    """

    @functools.cache
    def peak(batch: int) -> int:
        report = training_step_memory(
            config, resolution, batch_size=batch, seqlen=seqlen, trainable=trainable, **step_options
        )
        return report["peak"]

    slope = max((peak(32) - peak(8)) / 24, 1.0)
    found = {}
    for name, capacity in capacities.items():
        batch = max(int(8 + (capacity - peak(8)) // slope), 1)
        while batch > 1 and peak(batch) > capacity:
            batch -= max(1, batch // 16)  # down in small steps: the guess is close
        if peak(batch) > capacity:
            found[name] = 0
            continue
        while peak(batch + 1) <= capacity:
            batch += 1
        found[name] = batch
    return found


def plan_table(models: tuple[str, ...], *, seqlen: int, **step_options) -> str:
    """A Markdown table: for each model and strategy, the largest batch per accelerator."""
    names = list(ACCELERATORS)
    lines = [
        "| model | trains | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for name in models:
        checkpoint = get_checkpoint(name)
        for strategy in PLAN_STRATEGIES:
            batches = largest_batches(
                checkpoint.config,
                checkpoint.resolution,
                ACCELERATORS,
                seqlen=seqlen,
                trainable=strategy,
                **step_options,
            )
            cells = " | ".join(str(batches[n]) if batches[n] else "does not fit" for n in names)
            lines.append(f"| {name} | {strategy} | {cells} |")
    return "\n".join(lines)


@dataclasses.dataclass
class Settings:
    """What one planned training step is."""

    model: str = cli.setting("paligemma-3b-pt-224", f"one of {', '.join(sorted(CHECKPOINTS))}")
    batch_size: int = cli.setting(8, "examples per step", least=1)
    seqlen: int = cli.setting(128, "text tokens per example", least=1)
    trainable: str = cli.setting("attn", "what trains", choices=PLAN_STRATEGIES)
    lora_rank: int = cli.setting(8, "with --trainable lora: the adapters' rank", least=1)
    lora_targets: str = cli.setting(
        "attn", "with --trainable lora: the weights adapted", choices=tuple(lora.TARGETS)
    )
    frozen_dtype: str = cli.setting(
        "float16", "dtype of the frozen weights", choices=("float16", "bfloat16")
    )
    no_remat: bool = cli.setting(False, "keep activations instead of recomputing them")
    json: bool = cli.setting(False, "print only the JSON report")
    plan: bool = cli.setting(
        False,
        f"print the largest batch that fits each GPU, per strategy, for {', '.join(PLAN_MODELS)} "
        "(tens of minutes: a few compiles per cell)",
    )


def _print_report(settings: Settings, report: dict) -> None:
    print(
        f"\nOne training step of {settings.model}: batch {settings.batch_size}, "
        f"{settings.seqlen} text tokens, trainable={settings.trainable}, frozen in "
        f"{settings.frozen_dtype}, remat={not settings.no_remat}"
    )
    rows = [
        ("parameters", report["params"]),
        ("  of which trainable (float32)", report["trainable_params"]),
        ("batch", report["batch"]),
        ("temporaries (activations, gradients)", report["temp"]),
        ("peak", report["peak"]),
    ]
    for label, size in rows:
        print(f"  {label:40s} {size / GIB:8.2f} GiB")
    for accelerator, capacity in ACCELERATORS.items():
        verdict = "fits" if report["peak"] <= capacity else "does NOT fit"
        print(f"  {accelerator:40s} {verdict}")


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)
    lora_config = lora.LoraConfig(rank=settings.lora_rank, targets=settings.lora_targets)
    options = {
        "frozen_dtype": jnp.dtype(settings.frozen_dtype),
        "remat": not settings.no_remat,
        "lora_config": lora_config,
    }
    if settings.plan:
        print(plan_table(PLAN_MODELS, seqlen=settings.seqlen, **options))
        return 0
    try:
        checkpoint = get_checkpoint(settings.model)
    except UnknownCheckpointError as err:
        parser.error(f"--model: {err}")
    report = training_step_memory(
        checkpoint.config,
        checkpoint.resolution,
        batch_size=settings.batch_size,
        seqlen=settings.seqlen,
        trainable=settings.trainable,
        **options,
    )
    if not settings.json:
        _print_report(settings, report)
    peak_gib = round(report["peak"] / GIB, 3)
    print(json.dumps({"model": settings.model, **report, "peak_gib": peak_gib}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
