"""Training steps per second on this machine's accelerator, and the share of its peak.

    python -m capstone.tools.step_speed                              # bench config, then 3B-224
    python -m capstone.tools.step_speed --models bench --steps 5     # on a laptop CPU
    python -m capstone.tools.step_speed --models paligemma-3b-pt-224 --frozen-dtype float16

Each model runs the notebook's fine-tuning step as `solutions.train.make_update_fn`
builds it: plain SGD on the trainable weights (by default the attention
weights, in float32), the frozen ones in 16 bits, layers recomputed in the
backward pass as big_vision does. The weights are random (drawn on the device,
leaf by leaf, in their final dtypes: nothing is downloaded), and so is the
batch: `--batch-size` images and `--seqlen` text tokens each.

For each model it prints the compile time, steps/s and examples/s (median of
`--steps` timed steps after one warm-up) and, where the accelerator's peak is
known (`PEAK_TFLOPS`, or `--peak-tflops`), the share of that peak the step
reaches: XLA's count of the compiled step's floating-point operations times
steps/s, over the peak. The last line is JSON.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from capstone import cli
from capstone.tools.memory import abstract_inputs
from solutions.configs import (
    BENCH_CONFIG,
    BENCH_RESOLUTION,
    CHECKPOINTS,
    UnknownCheckpointError,
    get_checkpoint,
    with_remat,
)
from solutions.model import Model
from solutions.train import STRATEGIES, make_update_fn

BENCH = "bench"  # the name of `BENCH_CONFIG` among --models
LEARNING_RATE = 1e-3
WEIGHT_SCALE = 0.02  # random weights ~ N(0, 0.02^2): finite activations at any depth

# Dense 16-bit tensor-core peaks from the vendors' data sheets, in TFLOP/s,
# looked up by a substring of `jax.Device.device_kind` (first match wins).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "T4": 65.0,
}


def peak_tflops(device_kind: str) -> float | None:
    """The 16-bit peak of an accelerator named `device_kind`, or None if unknown."""
    for name, peak in PEAK_TFLOPS.items():
        if name in device_kind:
            return peak
    return None


def config_and_resolution(name: str) -> tuple[dict, int]:
    """`bench` or a checkpoint name -> (model config, image side in pixels)."""
    if name == BENCH:
        return BENCH_CONFIG, BENCH_RESOLUTION
    checkpoint = get_checkpoint(name)
    return checkpoint.config, checkpoint.resolution


def random_like(abstract, seed: int = 0):
    """Random arrays of the shapes and dtypes of a tree of ShapeDtypeStructs, made on
    the device one leaf at a time (float leaves ~ N(0, WEIGHT_SCALE^2); int leaves
    in [3, 100), valid token ids)."""
    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    arrays = []
    for key, leaf in zip(keys, leaves, strict=True):
        if jnp.issubdtype(leaf.dtype, jnp.integer):
            array = jax.random.randint(key, leaf.shape, 3, 100, leaf.dtype)
        else:
            array = (WEIGHT_SCALE * jax.random.normal(key, leaf.shape)).astype(leaf.dtype)
        if not isinstance(array, jax.core.Tracer):  # wait: one leaf's float32 draw at a time
            array.block_until_ready()
        arrays.append(array)
    return jax.tree.unflatten(treedef, arrays)


def time_training_step(
    name: str,
    *,
    batch_size: int,
    seqlen: int,
    trainable: str,
    frozen_dtype,
    remat: bool,
    steps: int,
) -> dict:
    """Compiles and times one model's training step; returns the report's figures."""
    config, resolution = config_and_resolution(name)
    model = Model(**(with_remat(config) if remat else config))
    params, mask, batch, _ = abstract_inputs(
        model, resolution, batch_size, seqlen, trainable, frozen_dtype
    )
    params, batch = random_like(params), random_like(batch, seed=1)
    suffix = jnp.arange(seqlen) >= seqlen // 4  # a quarter prefix, the rest suffix
    batch["mask_ar"] = jnp.broadcast_to(suffix, (batch_size, seqlen)).astype(jnp.int32)
    batch["mask_loss"] = batch["mask_ar"]
    update_fn = make_update_fn(model, mask)
    learning_rate = jnp.float32(LEARNING_RATE)

    start = time.perf_counter()
    compiled = update_fn.__wrapped__.lower(params, batch, learning_rate).compile()
    compile_s = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get("flops")

    def step():
        nonlocal params
        params, loss = compiled(params, batch, learning_rate)
        return loss.block_until_ready()

    loss = float(step())  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    steps_per_s = 1.0 / statistics.median(times)
    return {
        "model": name,
        "compile_s": round(compile_s, 2),
        "steps_per_s": steps_per_s,
        "examples_per_s": steps_per_s * batch_size,
        "step_tflop": flops / 1e12 if flops else None,
        "loss": loss,
    }


@dataclasses.dataclass
class Settings:
    """What the speed check runs."""

    models: str = cli.setting(
        f"{BENCH},paligemma-3b-pt-224",
        f"comma-separated: {BENCH!r} (the benchmark config) and/or checkpoint names",
    )
    batch_size: int = cli.setting(8, "examples per step", least=1)
    seqlen: int = cli.setting(128, "text tokens per example", least=2)
    trainable: str = cli.setting("attn", "what trains", choices=STRATEGIES)
    frozen_dtype: str = cli.setting(
        "bfloat16", "dtype of the frozen weights (float16 on a T4)", choices=("bfloat16", "float16")
    )
    no_remat: bool = cli.setting(False, "keep activations instead of recomputing them")
    steps: int = cli.setting(10, "timed steps per model", least=1)
    peak_tflops: float = cli.setting(
        0.0, "the accelerator's peak in TFLOP/s (0: look it up by device name)", least=0
    )


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)
    names = [name.strip() for name in settings.models.split(",") if name.strip()]
    for name in names:
        if name != BENCH:
            try:
                get_checkpoint(name)
            except UnknownCheckpointError as err:
                parser.error(f"--models: {str(err).rstrip('.')}, or {BENCH!r}.")
    if not names:
        parser.error(f"--models: name at least one of {BENCH!r}, {', '.join(sorted(CHECKPOINTS))}")

    device = jax.devices()[0]
    peak = settings.peak_tflops or peak_tflops(device.device_kind)
    print(f"device: {device.device_kind} ({device.platform}), peak: {peak or 'unknown'} TFLOP/s")
    reports = []
    for name in names:
        report = time_training_step(
            name,
            batch_size=settings.batch_size,
            seqlen=settings.seqlen,
            trainable=settings.trainable,
            frozen_dtype=jnp.dtype(settings.frozen_dtype),
            remat=not settings.no_remat,
            steps=settings.steps,
        )
        achieved = report["step_tflop"] and report["step_tflop"] * report["steps_per_s"]
        report["share_of_peak"] = achieved / peak if achieved and peak else None
        share = f"{report['share_of_peak']:.1%} of peak" if report["share_of_peak"] else ""
        print(
            f"{name:24s} compile {report['compile_s']:7.1f} s   {report['steps_per_s']:8.2f} "
            f"steps/s   {report['examples_per_s']:8.1f} examples/s   {share}"
        )
        if not np.isfinite(report["loss"]):
            print(f"  (the random weights gave a non-finite loss, {report['loss']})")
        reports.append(report)
    print(json.dumps({"device": device.device_kind, "peak_tflops": peak, "runs": reports}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
