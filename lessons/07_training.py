# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 7: Fine-tuning
#
# A pretrained PaliGemma already sees and speaks. Fine-tuning teaches it a new habit, here a
# style of caption, from a few dozen batches. This lesson builds the training step of the
# reference fine-tuning notebook piece by piece, then runs it on the course's tiny PaliGemma
# and watches the loss fall.
#
# **What you will learn**
#
# - which parameters train, and why the decoder's attention alone is enough;
# - the loss: next-token cross-entropy on the caption tokens only, averaged per example;
# - the update step: gradients for the trainable parameters only, plain SGD, a jitted step
#   that hands its input buffers over to its output;
# - the learning-rate schedule: a linear warm-up, then a cosine decay to zero;
# - a real (short) fine-tune with a live loss curve, and captions before and after.
#
# **Time:** about 30 minutes with the exercises; the cells run in about a minute on a laptop CPU.

# %% tags=["setup"]
import functools
import itertools
import math
import pathlib
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import clear_output, display

from solutions import data, scenes
from solutions.checkpoints import load_tiny
from solutions.configs import get_checkpoint
from solutions.evaluate import make_predictions
from solutions.model import Model, count_params, param_shapes
from solutions.params import flatten_params
from solutions.preprocess import postprocess_tokens
from solutions.sharding import tree_map_with_names
from solutions.train import (
    STRATEGIES,
    cast_params,
    make_update_fn,
    merge_params,
    split_params,
    train_steps,
)
from tests.grading import check

# %% [markdown]
# ## The model and the data
#
# The course ships a small PaliGemma: the same architecture as Google's (a SigLIP image tower
# feeding a Gemma decoder), scaled down so it trains on a laptop. `load_tiny()` returns the
# model, its image resolution, its parameters (as numpy arrays) and its tokenizer.

# %%
model, resolution, params, tokenizer = load_tiny()
print(f"tiny PaliGemma: {count_params(params):,} parameters, {resolution}x{resolution} images")
print("decoder:", dict(model.llm))

# %% [markdown]
# The data is the scenes dataset of lesson 6, written in the layout of the notebook's
# `longcap100` (90 training and 10 validation examples), with *long* captions: a sentence per
# group of shapes, where they sit, and the background. The shipped model was pretrained to write
# short captions ("a large red circle and a small blue square"); teaching it this long style is
# the fine-tune's job, as longcap100 is for the real PaliGemma. The iterators of
# `solutions.data` shuffle, repeat and batch the data, 8 examples a batch as in the notebook.

# %%
SEQLEN = 80  # tokens per example: prompt, caption, EOS, padding
BATCH_SIZE = 8

workdir = pathlib.Path(tempfile.mkdtemp(prefix="lesson07-"))
paths = scenes.write_dataset(workdir, n_train=90, n_val=10, n_test=0, caption="long")
train_set, val_set = data.read_jsonl(paths["train"]), data.read_jsonl(paths["val"])
train_batches = data.batches(
    data.train_examples(train_set, tokenizer=tokenizer, seqlen=SEQLEN, image_size=resolution),
    BATCH_SIZE,
)
batch = next(train_batches)
for key, value in batch.items():
    print(f"{key:10s} {value.dtype}{list(value.shape)}")
longest = max(len(tokenizer.encode(example.suffix.lower())) for example in train_set)
print(f"\nlongest caption: {longest} tokens (SEQLEN = {SEQLEN} leaves room for prompt and EOS)")
print("first caption:", train_set[0].suffix)

# %% [markdown]
# Each row of `text` is the prompt `caption en\n` followed by the caption, an end-of-sequence
# token and padding. `mask_loss` marks what the model must learn to write: the caption and its
# EOS, not the prompt (it is given) and not the padding.

# %%
row = 0
print(f"{'token':>12s}  mask_ar  mask_loss")
columns = (batch["text"][row], batch["mask_ar"][row], batch["mask_loss"][row])
for token, ar, counted in list(zip(*columns, strict=True))[:10]:
    print(f"{tokenizer.id_to_piece(int(token))!r:>12s}  {ar:7d}  {counted:9d}")
print("...")

# %% [markdown]
# ## What trains
#
# The notebook trains only the decoder's attention weights (`llm/layers/attn/...`) and freezes
# everything else. That is a small share of the model, yet enough to change how it writes, and
# it decides the memory bill: a trained parameter needs a gradient (and is kept in float32),
# a frozen one can sit in 16 bits.
#
# A *mask* says what trains: a tree shaped like the parameters with a Python bool at every leaf.
# Parameter names are slash-joined paths, as in big_vision checkpoints;
# `tree_map_with_names` hands each leaf to a function together with its name:

# %%
shapes_by_name = tree_map_with_names(lambda name, leaf: (name, leaf.shape), params)
for name, shape in list(flatten_params(shapes_by_name).values())[-6:]:
    print(f"{name:42s} {shape}")
print("\nstrategies (name prefixes that train):", STRATEGIES)

# %% [markdown]
# ### Exercise 7.1: the trainable mask
#
# Write `trainable_mask(params, strategy)`: True for every parameter whose name starts with one
# of the strategy's prefixes in `STRATEGIES`, False elsewhere. An unknown strategy must raise a
# `ValueError` that lists the known ones.


# %% tags=["exercise"]
def trainable_mask(params, strategy: str = "attn"):
    """A tree like `params` of Python bools: True where the parameter trains.

    Args:
      params: parameter tree (arrays or `jax.ShapeDtypeStruct`s), nested dicts.
      strategy: a key of `STRATEGIES`: "attn" (names starting with "llm/layers/attn/"),
        "llm" ("llm/") or "all" (every parameter).
    Returns:
      A tree with the structure of `params` and a bool at every leaf.
    Raises:
      ValueError: for an unknown strategy, naming the known ones.
    """
    # Hint: every leaf needs its slash-joined name, which `tree_map_with_names` hands over with the
    # leaf; the rest is a question about how a string starts.
    raise NotImplementedError("Exercise 7.1")


# %% tags=["check"]
check("ex7_1")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 7.1</summary>
#
# ```python
# prefixes = STRATEGIES[strategy]
# return tree_map_with_names(lambda name, leaf: name.startswith(prefixes), params)
# ```
#
# </details>

# %% [markdown]
# How much of a real PaliGemma is that? `param_shapes` builds the 3B model's parameter tree as
# shapes only (`jax.eval_shape`: no memory), so the mask can be counted. The memory needed to
# train is the trained parameters and their gradients in float32 (4 bytes each) plus the frozen
# parameters in bfloat16 (2 bytes each); plain SGD keeps no other state.

# %%
real_model = Model(**get_checkpoint("paligemma-3b-pt-224").config)
real_shapes = param_shapes(real_model, 224)
real_total = count_params(real_shapes)
memory_gb = {}
for strategy in STRATEGIES:
    mask = jax.tree.leaves(trainable_mask(real_shapes, strategy))
    trained = sum(
        leaf.size for leaf, on in zip(jax.tree.leaves(real_shapes), mask, strict=True) if on
    )
    memory_gb[strategy] = ((4 + 4) * trained + 2 * (real_total - trained)) / 1e9
    share = trained / real_total
    print(f"{strategy:4s}: {trained:>13,} of {real_total:,} parameters train ({share:.1%})")

figure, ax = plt.subplots(figsize=(5, 2.5))
ax.barh(list(memory_gb), list(memory_gb.values()), color="tab:blue")
ax.axvline(16, color="tab:red", linestyle="--", label="a 16 GB GPU (T4)")
ax.set(xlabel="GB for parameters + gradients", title="PaliGemma 3B, SGD, frozen in bfloat16")
ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# Activations come on top of these numbers, which is why the attention-only strategy is the one
# that fits a 16 GB GPU with room to spare.
#
# ## The loss
#
# PaliGemma is trained like any language model: at each position it predicts the next token.
# The model reads `text[:, :-1]` and its logits at position t are scored against
# `text[:, t + 1]`. The loss of one token is its negative log-probability,
# `-log_softmax(logits)[target]` (the cross-entropy against the true token).
#
# Only the caption counts: positions where `mask_loss[:, 1:]` is 1 (the targets are shifted by
# one too). Each example's loss is the *mean* over its own counted tokens, so a long caption and
# a short one weigh the same; the batch loss is the mean over examples. An example with no counted
# token (say, its caption was cut away) adds 0 rather than 0 / 0.
#
# ### Exercise 7.2: the loss
#
# Write `loss_fn(params, batch, *, model)`. The model call is the notebook's:
# `model.apply({"params": params}, image, text, mask_ar, train=True)` returns
# `(logits float32[B, T, V], out)`. The checks run your function under `jax.jit` (as training
# does), so compute with `jax.numpy`, not numpy.


# %% tags=["exercise"]
def loss_fn(params, batch, *, model) -> jax.Array:
    """Mean next-token negative log-likelihood over the suffix tokens.

    Args:
      params: the model's parameter tree.
      batch: {"image": float32[B, H, W, 3], "text": int32[B, T],
        "mask_ar": int32[B, T], "mask_loss": int32[B, T]}.
      model: a `solutions.model.Model`.
    Returns:
      float32[] scalar: for each example, the mean of -log p(text[:, t+1]) over the positions
      where mask_loss[:, t+1] is 1 (0 when there is none); then the mean over examples.
    """
    # Hint: inputs and targets are the same tokens shifted by one: the model reads all but the last,
    # and is scored on all but the first, the loss mask shifted like the targets. Pick each target's
    # log-probability without building a one-hot over the vocabulary.
    raise NotImplementedError("Exercise 7.2")


# %% tags=["check"]
check("ex7_2")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 7.2</summary>
#
# ```python
# logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
# target_logp = jnp.take_along_axis(logp, text[:, 1:, None], axis=-1)[..., 0]
# counted = batch["mask_loss"][:, 1:]
# ```
#
# </details>

# %% [markdown]
# Before any training, how does the model do on this batch? A model that knew nothing and
# spread its bets evenly over the vocabulary would score log V on every token.

# %%
params32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
batch_loss = jax.jit(functools.partial(loss_fn, model=model))
vocab_size = model.llm["vocab_size"]
print(f"loss on the first batch: {float(batch_loss(params32, batch)):.3f}")
print(f"uniform guess, log V:    {math.log(vocab_size):.3f}  (V = {vocab_size})")

# %% [markdown]
# The loss is an average; token by token, some words are much harder to predict than others.
# Here is every counted token of the first caption with the loss the model pays on it.

# %%
logits, _ = jax.jit(model.apply)(
    {"params": params32}, batch["image"][:1], batch["text"][:1, :-1], batch["mask_ar"][:1, :-1]
)
logp = jax.nn.log_softmax(np.asarray(logits[0], np.float32), axis=-1)
targets = batch["text"][0, 1:]
counted = batch["mask_loss"][0, 1:] == 1
token_loss = -np.asarray(logp)[np.arange(len(targets)), targets][counted]
pieces = [tokenizer.id_to_piece(int(t)).replace("▁", "") or "␣" for t in targets[counted]]

figure, ax = plt.subplots(figsize=(11, 2.8))
ax.bar(range(len(token_loss)), token_loss, color="tab:orange")
ax.set_xticks(range(len(token_loss)), pieces, rotation=90, fontsize=7)
ax.set(ylabel="-log p(token)", title="Loss per caption token, first example (</s> is EOS)")
plt.show()

# %% [markdown]
# ## The update step
#
# One step of the notebook's training: compute the loss and its gradient, move the trainable
# parameters a little downhill (`p ← p - learning_rate × gradient`, plain SGD), leave the rest
# alone. Three details make it cheap:
#
# - **Gradients for the trainable parameters only.** The parameters are split into two flat
#   dicts (`split_params`), and `jax.value_and_grad` differentiates with respect to the trainable
#   one; the frozen dict enters the loss as a constant, so its gradients are never computed.
# - **One compiled function.** `jax.jit` traces the step once and XLA compiles loss, gradient
#   and update together.
# - **Donation.** `donate_argnums=0` lets XLA write the new parameters into the buffers of the
#   old ones: the step never holds two copies of the model. The old arrays are dead afterwards.
#
# Here is the whole step, small enough to read at once:

# %%
trainable = trainable_mask(params, "attn")


@functools.partial(jax.jit, donate_argnums=0)
def sgd_step(params, batch, learning_rate):
    train, frozen = split_params(params, trainable)

    def loss_of_trainable(train):
        return loss_fn(merge_params(train, frozen), batch, model=model)

    loss, grads = jax.value_and_grad(loss_of_trainable)(train)
    train = jax.tree.map(lambda p, g: p - learning_rate * g, train, grads)
    return merge_params(train, frozen), loss


trained_names = list(split_params(params32, trainable)[0])
print(f"gradients for {len(trained_names)} arrays:", *trained_names, sep="\n  ")

before = jax.tree.map(jnp.copy, params32)
old_query = before["llm"]["layers"]["attn"]["q_einsum"]["w"]
after, loss = sgd_step(before, batch, 0.03)
print(f"\nloss {float(loss):.3f}; old buffer deleted by donation: {old_query.is_deleted()}")
try:
    old_query + 1
except RuntimeError as error:
    print("using it now fails:", str(error).splitlines()[0])

# %% [markdown]
# `solutions.train.make_update_fn(model, trainable)` is this step with three additions:
# the learning rate is always passed as a float32 array (a Python float would trace as another
# type and compile a second step), each parameter keeps its dtype (16-bit frozen weights stay 16
# bits), and a NaN or infinite loss returns the inputs unchanged, so a blow-up never destroys
# the last good parameters. It also accepts any optax optimizer, such as Adam.
#
# ## The learning-rate schedule
#
# The notebook does not use one learning rate throughout. It **warms up**: the rate grows
# linearly from 0 over the first 10% of the steps, because the first gradients of a new task are
# large and noisy. Then it **decays** along half a cosine, from the base rate to 0 at the last
# step, so the final steps make only small corrections. With W warm-up steps:
#
#     progress = clip((step - W) / (total_steps - W), 0, 1)
#     lr = base_lr × 0.5 × (1 + cos(π × progress)) × min(1, step / W)
#
# ### Exercise 7.3: warm-up length
#
# `warmup_steps(total_steps, warmup_fraction)` rounds `warmup_fraction × total_steps` to the
# nearest integer with Python's `round` (as big_vision does: 6.5 becomes 6), but a warm-up that
# is not zero lasts at least one step. A fraction outside [0, 1] is a `ValueError`.


# %% tags=["exercise"]
def warmup_steps(total_steps: int, warmup_fraction: float = 0.1) -> int:
    """Warmup length in steps: the fraction of `total_steps`, rounded.

    Args:
      total_steps: length of the schedule, in steps.
      warmup_fraction: share of it spent warming up, in [0, 1].
    Returns:
      round(warmup_fraction * total_steps), but at least 1 when that product is not 0.
    Raises:
      ValueError: warmup_fraction outside [0, 1].
    """
    # Hint: three cases: a fraction outside [0, 1], a product of exactly 0 (no warm-up at all), and
    # everything else, which Python's `round` rounds but never below 1.
    raise NotImplementedError("Exercise 7.3")


# %% tags=["check"]
check("ex7_3")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 7.3</summary>
#
# ```python
# steps = warmup_fraction * total_steps
# return max(1, round(steps)) if steps else 0
# ```
#
# </details>

# %% [markdown]
# ### Exercise 7.4: the cosine schedule
#
# Write `cosine_schedule(step, *, total_steps, base_lr, warmup_fraction)` with the formula above,
# W = `warmup_steps(total_steps, warmup_fraction)`. It must work on Python numbers and inside
# `jax.jit` (where `step` is a traced array), and return a float32 scalar. With no warm-up, skip
# the ramp. If the warm-up would take all of `total_steps`, raise a `ValueError`.


# %% tags=["exercise"]
def cosine_schedule(
    step, *, total_steps: int, base_lr: float, warmup_fraction: float = 0.1
) -> jax.Array:
    """Learning rate at `step`: linear warmup, then a cosine decay to 0.

    Args:
      step: the step number, int or float, a Python number or a (traced) jax scalar.
      total_steps: the step at which the rate reaches 0.
      base_lr: the peak rate, reached at the end of the warmup.
      warmup_fraction: share of total_steps spent warming up (see `warmup_steps`).
    Returns:
      float32[] scalar: 0 at step 0, base_lr at step W, 0 from total_steps on.
    Raises:
      ValueError: when total_steps <= W, leaving no steps to decay over.
    """
    # Hint: only `step` can be a traced array: everything computed from it needs jax.numpy (no
    # Python min or max, no math.cos), while W, total_steps and base_lr are plain numbers that an
    # `if` may test.
    raise NotImplementedError("Exercise 7.4")


# %% tags=["check"]
check("ex7_4")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 7.4</summary>
#
# ```python
# step = jnp.asarray(step, jnp.float32)
# progress = jnp.clip((step - warmup) / (total_steps - warmup), 0.0, 1.0)
# lr = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
# if warmup:
#     lr = lr * jnp.minimum(1.0, step / warmup)
# ```
#
# </details>

# %% [markdown]
# The notebook counts its steps from 1 and passes `total_steps = steps + 1`, so the last step
# still learns a little. Here is the schedule of the fine-tune below, next to warm-ups of other
# lengths:

# %%
STEPS, BASE_LR = 256, 0.3  # the capstone's rate for the tiny model (the notebook: 64 steps at 0.03)
schedule = functools.partial(cosine_schedule, total_steps=STEPS + 1, base_lr=BASE_LR)

figure, ax = plt.subplots(figsize=(6, 3))
step_axis = np.arange(0, STEPS + 2)
for fraction in (0.0, 0.1, 0.3):
    rates = [
        float(cosine_schedule(s, total_steps=STEPS + 1, base_lr=BASE_LR, warmup_fraction=fraction))
        for s in step_axis
    ]
    ax.plot(
        step_axis,
        rates,
        label=f"warm-up {fraction:.0%} ({warmup_steps(STEPS + 1, fraction)} steps)",
    )
ax.set(xlabel="step", ylabel="learning rate", title=f"Cosine schedule, {STEPS} steps")
ax.legend()
plt.show()

# %% [markdown]
# ## Fine-tuning the tiny PaliGemma
#
# Everything together, as the notebook does it: the attention weights train in float32 while
# the frozen rest drops to bfloat16 (`cast_params`), `make_update_fn` builds the jitted step,
# and `train_steps` runs one step per batch, calls `on_step(step, state, learning_rate, loss)`
# after each (here it redraws the curves; the capstone saves checkpoints in it), and stops with
# a clear error if the loss turns NaN, or on Ctrl-C, handing back the last good state.
#
# First, the model's captions for a few validation images *before* training, decoded greedily
# with `make_predictions` (lesson 8 opens that box), and the loss on a validation batch.

# %%
MAX_DECODE_LEN = 64
val_batch = next(
    data.batches(
        data.train_examples(val_set, tokenizer=tokenizer, seqlen=SEQLEN, image_size=resolution),
        BATCH_SIZE,
    )
)
val_prompts = list(
    data.validation_examples(val_set[:3], tokenizer=tokenizer, seqlen=SEQLEN, image_size=resolution)
)


def as_float32(params):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def captions_of(params):
    pairs = make_predictions(
        as_float32(params),
        val_prompts,
        model=model,
        batch_size=len(val_prompts),
        max_decode_len=MAX_DECODE_LEN,
        postprocess=lambda row: postprocess_tokens(row, tokenizer=tokenizer),
        progress=False,
    )
    return [caption for _, caption in pairs]


captions_before = captions_of(params)
val_loss_before = float(batch_loss(params32, val_batch))
print(f"validation loss before: {val_loss_before:.3f}")

# %% [markdown]
# Now the run: 256 steps of batch 8 at a base rate of 0.3, the curve redrawn every few steps. The
# notebook takes 64 steps at 0.03 for the 3B model; the tiny one, far from long captions, needs
# bigger steps of the same SGD (at 0.03 it only learns to start every caption with a count).

# %%
trainable = trainable_mask(params, "attn")
update_fn = make_update_fn(model, trainable)
figure, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
history = {"step": [], "loss": [], "lr": []}


def redraw(step, state, learning_rate, loss):
    for key, value in zip(history, (step, loss, learning_rate), strict=True):
        history[key].append(value)
    if step % 4 and step != STEPS:
        return
    for ax, key in ((loss_ax, "loss"), (lr_ax, "lr")):
        ax.clear()
        ax.plot(history["step"], history[key], marker=".")
        ax.set(xlabel="step", ylabel=key, xlim=(0, STEPS + 1))
    loss_ax.set_title(f"training loss: {loss:.3f} at step {step}/{STEPS}")
    lr_ax.set_title("learning rate")
    clear_output(wait=True)
    display(figure)


tuned, losses = train_steps(
    update_fn,
    cast_params(params, trainable),
    itertools.islice(train_batches, STEPS),
    schedule,
    on_step=redraw,
)
plt.close(figure)

# %% [markdown]
# The training loss is measured on the batches the model learns from. The validation batch was
# never trained on, so its loss says whether the model learned the style or the examples:

# %%
val_loss_after = float(batch_loss(as_float32(tuned), val_batch))
print(f"training loss:   first step {losses[0]:.3f}, last step {losses[-1]:.3f}")
print(f"validation loss: before {val_loss_before:.3f}, after {val_loss_after:.3f}")

# %% [markdown]
# And the captions of three validation images, before and after, with their references (long
# captions are shortened to fit):

# %%
captions_after = captions_of(tuned)
figure, axes = plt.subplots(1, len(val_prompts), figsize=(11, 5.5), layout="constrained")
for ax, prompt, old, new in zip(axes, val_prompts, captions_before, captions_after, strict=True):
    ax.imshow(np.clip((prompt["image"] + 1) / 2, 0, 1))  # the model sees [-1, 1]
    ax.axis("off")
    parts = {"REFERENCE": prompt["caption"], "BEFORE": old, "AFTER": new}
    lines = [
        textwrap.fill(f"{label}: {textwrap.shorten(text, 220) or '(empty)'}", 44)
        for label, text in parts.items()
    ]
    ax.set_title("\n\n".join(lines), fontsize=7, loc="left")
plt.show()

# %% [markdown]
# ## LoRA: train a low-rank update instead of the weights
#
# Training the attention weights of the 3B model means float32 copies and gradients of 170
# million numbers. LoRA (low-rank adaptation) freezes *every* weight and learns, for a weight
# `W` [in, out], an update of rank r: `W + (alpha / r) × A @ B` with `A` [in, r] and `B`
# [r, out]. `B` starts at zero, so the adapted model starts exactly as the base model; `A` is
# random, so the first gradients of `B` are not zero. For r = 8 a 2048 x 2048 projection trains
# 8 × (2048 + 2048) = 32,768 numbers instead of 4 million. `solutions.lora` keeps the adapters
# in a flax collection "lora" beside the weights they adapt, so the parameter tree stays
# big_vision's and a real checkpoint still loads; how many numbers train on the real model:

# %%
from solutions import lora

for targets in sorted(lora.TARGETS):
    for rank in (8, 32):
        config = lora.LoraConfig(rank=rank, alpha=2.0 * rank, targets=targets)
        adapters = jax.eval_shape(lambda config=config: lora.init_adapters(real_shapes, config))
        trained = lora.count_adapter_params(adapters)
        print(
            f"LoRA rank {rank:2d} on {targets:8s}: {trained:>11,} numbers train "
            f"({trained / real_total:.3%} of the model)"
        )

# %% [markdown]
# ### Exercise 7.5: a LoRA layer
#
# Write `lora_linear(x, w, a, b, scale)`: the output of a linear layer `w` [in, out] adapted by
# `a` [in, r] and `b` [r, out], for activations `x` [M, in]. Compute it as `x @ w` plus `scale`
# times `(x @ a) @ b`, in float32 (the frozen `w` may be bfloat16): going through the
# r-wide bottleneck never forms the [in, out] update, which is how LoRA saves compute.


# %% tags=["exercise"]
def lora_linear(x, w, a, b, scale):
    """A LoRA-adapted linear layer: x @ W + scale * (x @ A) @ B.

    Args:
      x: float[M, in] activations.
      w: [in, out] frozen weight, any float dtype.
      a: float32[in, r]; b: float32[r, out].
      scale: alpha / rank.
    Returns:
      float32[M, out].
    """
    # Hint: cast x and w to float32 first; mind the brackets: (x @ a) @ b, not x @ (a @ b).
    raise NotImplementedError("Exercise 7.5")


# %% tags=["check"]
check("ex7_5")

# %% [markdown]
# <details class="tip" markdown="1"><summary>Stuck? Show me the key lines of exercise 7.5</summary>
#
# ```python
# x = jnp.asarray(x, jnp.float32)
# return x @ jnp.asarray(w, jnp.float32) + scale * ((x @ a) @ b)
# ```
#
# </details>

# %% [markdown]
# The same sum can be written `x @ (w + scale × a @ b)`: fold the update into the weight once
# and the adapted layer costs nothing extra. That is `lora.merge_adapters`, which the fine-tune
# uses to save a LoRA run as an ordinary checkpoint. On the tiny PaliGemma, with random
# adapters, both ways give the same logits:

# %%
lora_config = lora.LoraConfig(rank=4, alpha=8.0, targets="attn+mlp")
rng = np.random.default_rng(0)
random_adapters = jax.tree.map(
    lambda x: rng.normal(0, 0.05, x.shape).astype(np.float32),
    lora.init_adapters(params32, lora_config),
)
probe_batch = {k: v[:2] for k, v in val_batch.items()}


def logits_of(variables):
    out, _ = model.apply(
        variables, probe_batch["image"], probe_batch["text"], probe_batch["mask_ar"]
    )
    return np.asarray(out)


adapted = logits_of({"params": params32, "lora": lora.scaled(random_adapters, lora_config.scale)})
merged = logits_of({"params": lora.merge_adapters(params32, random_adapters, lora_config)})
plain = logits_of({"params": params32})
print(f"adapters change the logits by up to {np.abs(adapted - plain).max():.3f}")
print(f"merged weights differ from the adapted model by {np.abs(adapted - merged).max():.1e}")

# %% [markdown]
# `python -m capstone.finetune --trainable lora --lora-rank 32 --lora-targets attn+mlp` trains
# adapters on the tiny model with this lesson's step (the adapters are the trainable subset of
# one tree `{"base": params, "lora": adapters}`), saves the merged checkpoint, and writes the
# adapters as a Hugging Face PEFT folder that `peft.PeftModel.from_pretrained` loads onto
# transformers' PaliGemma.

# %% [markdown]
# 256 steps of 8 examples is still a short run: 2,048 examples seen, each training image about
# 23 times. The capstone runs the same 256 SGD steps at 0.3 on the tiny model, but trains its
# whole decoder (`--trainable llm`): the attention weights of a 3-layer decoder alone learn the
# long form but lose more of what it saw (docs/capstone.md has the measurements). For a real
# checkpoint the capstone takes the notebook's recipe instead: 64 steps of 8 examples (512
# examples seen) at 0.03, attention weights only. Run longer, change the learning rate or train
# `trainable_mask(params, "llm")`, and compare the curves.
#
# ## The same recipe as a command
#
# `python -m capstone.finetune` runs this lesson's loop as a program, with what a long run
# needs on top:
#
# - **checkpoints**: the parameters in big_vision's `.npz` format, written atomically every
#   `--save-every` steps, on Ctrl-C and at the end, so a crash never leaves half a file;
# - **resume**: `--resume runs/mine` reads `state.json` and carries on from the last saved step;
# - **a report**: `metrics.json` (loss, CIDEr and object F1 before and after), `loss.png`, and
#   `report.html` with every test image, its reference and both captions;
# - **the real model**: `--model paligemma-3b-pt-224 --checkpoint kaggle --data longcap100` is the
#   notebook's fine-tune of the released checkpoint, on a GPU.
#
# ```
# python -m capstone.finetune --out runs/mine        # the tiny model: 256 steps at 0.3, llm
# ```
#
# ## What you built
#
# - `trainable_mask`: which parameters train, by name;
# - `loss_fn`: the per-example mean of the caption tokens' negative log-likelihood;
# - a jitted SGD step that differentiates the trainable parameters only and donates its input;
# - `warmup_steps` and `cosine_schedule`: big_vision's warm-up and cosine decay;
# - `lora_linear`: a low-rank update of a frozen layer, the idea behind LoRA;
# - a fine-tune of a real (small) PaliGemma, with its loss curve and captions before and after.
#
# ## Go further
#
# 1. Train with the strategy "llm" instead of "attn" (same steps and rate). Does the training
#    loss fall faster? Does the validation loss follow? What does that cost on the 3B model?
# 2. Set the warm-up fraction to 0 and raise the base rate until the loss jumps in the first
#    steps. What rate does the warm-up let you use safely?
# 3. Averaging per example weighs a short caption's tokens more than a long one's. Write the
#    other choice (one mean over every counted token in the batch) and compare the captions'
#    lengths after training.
# 4. Replace SGD with `make_update_fn(model, trainable, optax.adam(1.0))` (and
#    `init_train_state`). Which base rate suits it?
