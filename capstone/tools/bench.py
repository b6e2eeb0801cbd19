"""Speed of the course's PaliGemma, side by side with Hugging Face transformers.

    python -m capstone.tools.bench                      # ours only
    python -m capstone.tools.bench --vs-transformers    # ours and transformers, same weights

Two measurements on `solutions.configs.BENCH_CONFIG` (112px images, 64 image
tokens; Gemma width 256, 4 layers, 1 key/value head, vocabulary 2048):

- train: one step of forward + backward + SGD on every parameter, batch 8,
  64 image tokens + 32 text tokens of which 4 are the prefix;
- decode: greedy generation of 32 new tokens for a batch of 8 after a
  4-token prefix, with no EOS, so every row runs the full 32 steps.

Compilation and warm-up are excluded; each figure is the median of several
timed repeats. With `--vs-transformers` the two implementations take turns,
one repeat each, so a change in the machine's speed during the run (other work
on a shared host) slows both alike instead of skewing their ratio.
The last line is JSON with `train_examples_per_s` and `decode_tokens_per_s`
(and the transformers figures and ratios with `--vs-transformers`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from capstone import cli
from solutions.configs import BENCH_CONFIG, BENCH_RESOLUTION
from solutions.evaluate import decode
from solutions.model import Model, init_params
from solutions.train import make_update_fn, trainable_mask

BATCH = 8
PREFIX_LEN = 4
TEXT_LEN = 32  # text tokens the model reads in a training step
NEW_TOKENS = 32
NO_EOS = -1  # a token id that is never generated
LEARNING_RATE = 1e-3


def _median_seconds(
    workloads: dict[str, dict[str, Callable[[], object]]], repeats: int, settle_s: float
) -> dict:
    """Times every workload `repeats` times, taking turns, and returns the medians.

    Args:
      workloads: {implementation: {measurement: fn}}, each fn already warm.
      repeats: timed calls of each fn.
      settle_s: untimed pause before each call: a library's worker threads keep
        spinning for a while after its last call, and would take cores from
        the other library's next call.
    Returns:
      {implementation: {measurement: median seconds}}.
    """
    times = {impl: {name: [] for name in fns} for impl, fns in workloads.items()}
    for _ in range(repeats):
        for impl, fns in workloads.items():
            for name, fn in fns.items():
                time.sleep(settle_s)
                start = time.perf_counter()
                fn()
                times[impl][name].append(time.perf_counter() - start)
    return {
        impl: {name: statistics.median(ts) for name, ts in by_name.items()}
        for impl, by_name in times.items()
    }


def _rates(seconds: dict) -> dict:
    """Median seconds per train step and per decode -> the two reported rates."""
    return {
        "train_examples_per_s": BATCH / seconds["train"],
        "decode_tokens_per_s": BATCH * NEW_TOKENS / seconds["decode"],
    }


def make_inputs(seed: int = 0) -> dict:
    """The benchmark batch as numpy arrays (shared by both implementations)."""
    rng = np.random.default_rng(seed)
    vocab = BENCH_CONFIG["llm"]["vocab_size"]
    # One more token than the model reads: the loss predicts text[:, 1:].
    text = rng.integers(3, vocab, (BATCH, TEXT_LEN + 1)).astype(np.int32)
    mask_ar = np.zeros_like(text)
    mask_ar[:, PREFIX_LEN:] = 1
    return {
        "image": rng.uniform(-1, 1, (BATCH, BENCH_RESOLUTION, BENCH_RESOLUTION, 3)).astype(
            np.float32
        ),
        "text": text,
        "mask_ar": mask_ar,
        "mask_loss": mask_ar.copy(),
        "prompt": text[:, :PREFIX_LEN],
    }


def workloads_ours(params, inputs: dict) -> dict:
    """Our jitted SGD step and our compiled greedy decode, compiled and warm."""
    model = Model(**BENCH_CONFIG)
    update_fn = make_update_fn(model, trainable_mask(params, "all"))
    batch = {k: jnp.asarray(inputs[k]) for k in ("image", "text", "mask_ar", "mask_loss")}
    state = {"params": jax.tree.map(jnp.array, params)}  # a copy: the step donates it

    def train_step():
        state["params"], loss = update_fn(state["params"], batch, LEARNING_RATE)
        loss.block_until_ready()

    prompt = inputs["prompt"]
    decode_batch = {
        "image": inputs["image"],
        "text": prompt,
        "mask_ar": np.zeros_like(prompt),
        "mask_input": np.ones_like(prompt),
    }

    def generate():
        return decode(
            params, decode_batch, model=model, max_decode_len=NEW_TOKENS, eos_token=NO_EOS
        )

    train_step(), generate()  # compile
    return {"train": train_step, "decode": generate}


def workloads_transformers(params, inputs: dict) -> dict:
    """transformers' PaliGemma on the same weights and inputs, warm."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    from solutions.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        folder = export_hf(params, BENCH_CONFIG, f"{tmp}/model", resolution=BENCH_RESOLUTION)
        hf = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    image_token = hf.config.image_token_index
    num_image_tokens = (BENCH_RESOLUTION // BENCH_CONFIG["img"]["patch_size"]) ** 2
    pixels = torch.from_numpy(inputs["image"]).permute(0, 3, 1, 2).contiguous()
    image_ids = torch.full((BATCH, num_image_tokens), image_token, dtype=torch.long)

    # Training: the model reads 64 image + 32 text tokens; the loss covers the suffix.
    text = torch.from_numpy(inputs["text"][:, :-1]).long()
    train_ids = torch.cat([image_ids, text], dim=1)
    suffix = torch.zeros_like(train_ids)
    suffix[:, num_image_tokens + PREFIX_LEN :] = 1
    labels = torch.cat([image_ids.new_full(image_ids.shape, -100), text], dim=1)
    labels[suffix == 0] = -100
    optimizer = torch.optim.SGD(hf.parameters(), lr=LEARNING_RATE)

    def train_step():
        hf.train()
        out = hf(
            input_ids=train_ids,
            pixel_values=pixels,
            token_type_ids=suffix,
            attention_mask=torch.ones_like(train_ids),
            labels=labels,
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prompt_ids = torch.cat([image_ids, torch.from_numpy(inputs["prompt"]).long()], dim=1)

    def generate():
        hf.eval()
        with torch.inference_mode():
            out = hf.generate(
                input_ids=prompt_ids,
                pixel_values=pixels,
                attention_mask=torch.ones_like(prompt_ids),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
            )
        assert out.shape[1] - prompt_ids.shape[1] == NEW_TOKENS

    train_step(), generate()  # warm up
    return {"train": train_step, "decode": generate}


@dataclasses.dataclass
class Settings:
    """What the benchmark runs."""

    vs_transformers: bool = cli.setting(
        False, "also run transformers' PaliGemma (needs the parity extra)"
    )
    repeats: int = cli.setting(10, "timed repeats per figure", least=1)
    settle_ms: float = cli.setting(
        50.0,
        "untimed pause before each timed call, so the other library's threads go idle",
        least=0,
    )


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)

    params = jax.device_get(init_params(Model(**BENCH_CONFIG), BENCH_RESOLUTION))
    inputs = make_inputs()
    workloads = {"ours": workloads_ours(params, inputs)}
    if settings.vs_transformers:
        workloads["transformers"] = workloads_transformers(params, inputs)
    seconds = _median_seconds(workloads, settings.repeats, settings.settle_ms / 1000)
    result = {"device": jax.devices()[0].device_kind, "ours": _rates(seconds["ours"])}
    result.update(result["ours"])
    print(
        f"ours          train {result['ours']['train_examples_per_s']:8.1f} examples/s   "
        f"decode {result['ours']['decode_tokens_per_s']:8.1f} tokens/s"
    )
    if settings.vs_transformers:
        theirs = result["transformers"] = _rates(seconds["transformers"])
        result["ratios"] = {k: result["ours"][k] / theirs[k] for k in theirs}
        print(
            f"transformers  train {theirs['train_examples_per_s']:8.1f} examples/s   "
            f"decode {theirs['decode_tokens_per_s']:8.1f} tokens/s"
        )
        print(
            f"ratio         train {result['ratios']['train_examples_per_s']:8.2f}x            "
            f"decode {result['ratios']['decode_tokens_per_s']:8.2f}x"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
