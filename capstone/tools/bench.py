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
timed repeats. The last line is JSON with `train_examples_per_s` and
`decode_tokens_per_s` (and the transformers figures and ratios with
`--vs-transformers`).
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


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def bench_ours(params, inputs: dict, repeats: int) -> dict:
    """Times our jitted SGD step and our compiled greedy decode."""
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
    train_s = _median_seconds(train_step, repeats)
    decode_s = _median_seconds(generate, repeats)
    return {
        "train_examples_per_s": BATCH / train_s,
        "decode_tokens_per_s": BATCH * NEW_TOKENS / decode_s,
    }


def bench_transformers(params, inputs: dict, repeats: int) -> dict:
    """Times transformers' PaliGemma on the same weights and inputs."""
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
    train_s = _median_seconds(train_step, repeats)
    decode_s = _median_seconds(generate, repeats)
    return {
        "train_examples_per_s": BATCH / train_s,
        "decode_tokens_per_s": BATCH * NEW_TOKENS / decode_s,
    }


@dataclasses.dataclass
class Settings:
    """What the benchmark runs."""

    vs_transformers: bool = cli.setting(
        False, "also run transformers' PaliGemma (needs the parity extra)"
    )
    repeats: int = cli.setting(10, "timed repeats per figure", least=1)


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)

    params = jax.device_get(init_params(Model(**BENCH_CONFIG), BENCH_RESOLUTION))
    inputs = make_inputs()
    result = {
        "device": jax.devices()[0].device_kind,
        "ours": bench_ours(params, inputs, settings.repeats),
    }
    result.update(result["ours"])
    print(
        f"ours          train {result['ours']['train_examples_per_s']:8.1f} examples/s   "
        f"decode {result['ours']['decode_tokens_per_s']:8.1f} tokens/s"
    )
    if settings.vs_transformers:
        theirs = bench_transformers(params, inputs, settings.repeats)
        result["transformers"] = theirs
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
