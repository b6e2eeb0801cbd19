"""Fine-tuning (lesson 7): a masked loss, a trainable subset, SGD on a schedule.

One training step, as in the reference PaliGemma fine-tuning notebook:

    batch ──► model(image, text[:, :-1]) ──► log p(text[:, 1:])
          ──► mean over suffix tokens (mask_loss) ──► mean over examples = loss
          ──► gradients of the trainable parameters only ──► p -= lr * grad

Only the decoder's attention weights train by default (`trainable_mask`);
they stay float32 while the frozen rest is kept in 16 bits (`cast_params`),
which is how a 3B model fine-tunes on one 16 GB GPU.

    trainable = trainable_mask(params, "attn")
    params = cast_params(params, trainable)
    update_fn = make_update_fn(model, trainable)
    schedule = functools.partial(cosine_schedule, total_steps=steps + 1, base_lr=0.03)
    params, losses = train_steps(update_fn, params, batches, schedule)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from solutions.params import flatten_params, unflatten_params
from solutions.sharding import flatten_like, tree_map_with_names

__all__ = [
    "STRATEGIES",
    "NonFiniteLossError",
    "TrainState",
    "TrainingInterrupted",
    "cast_params",
    "cosine_schedule",
    "init_train_state",
    "loss_fn",
    "make_update_fn",
    "merge_params",
    "split_params",
    "train_steps",
    "trainable_mask",
    "warmup_steps",
]

# Which parameters train, by name prefix. "attn" is the notebook's choice: it
# fits a T4 and is enough to teach the model a new captioning style.
STRATEGIES: dict[str, tuple[str, ...]] = {
    "attn": ("llm/layers/attn/",),
    "llm": ("llm/",),
    "all": ("",),
}


# -- what trains ---------------------------------------------------------------


def trainable_mask(params, strategy: str = "attn"):
    """A tree like `params` of Python bools: True where the parameter trains.

    Args:
      params: parameter tree (arrays or `jax.ShapeDtypeStruct`s).
      strategy: "attn" (the decoder's attention, `llm/layers/attn/…`), "llm"
        (the whole decoder, `llm/…`) or "all".
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"Unknown trainable strategy {strategy!r}; choose one of "
            f"{', '.join(repr(s) for s in STRATEGIES)}."
        )
    prefixes = STRATEGIES[strategy]
    return tree_map_with_names(lambda name, _: name.startswith(prefixes), params)


def split_params(params, trainable) -> tuple[dict, dict]:
    """Splits a tree into two flat dicts {"llm/…/w": array}: (trainable, frozen)."""
    flat = flatten_params(params)
    mask = flatten_params(trainable)
    if flat.keys() != mask.keys():
        raise ValueError(
            "The trainable mask does not match the parameters; build it with "
            "`trainable_mask(params, strategy)` from these same parameters."
        )
    train = {name: x for name, x in flat.items() if mask[name]}
    frozen = {name: x for name, x in flat.items() if not mask[name]}
    return train, frozen


def merge_params(train: dict, frozen: dict) -> dict:
    """The inverse of `split_params`: two flat dicts back into one nested tree."""
    return unflatten_params({**train, **frozen})


# -- the loss ------------------------------------------------------------------


def loss_fn(params, batch, *, model) -> jax.Array:
    """Mean next-token negative log-likelihood over the suffix tokens.

    The model reads `text[:, :-1]` and predicts `text[:, 1:]`. Each example's
    loss is the mean over its counted tokens (`mask_loss[:, 1:]`: the suffix,
    not the prefix or padding), so long and short captions weigh the same;
    the batch loss is the mean over examples.

    Args:
      params: the model's parameter tree.
      batch: {"image": float32[B, H, W, 3], "text": int32[B, T],
        "mask_ar": int32[B, T], "mask_loss": int32[B, T]}.
      model: a `solutions.model.Model`.
    Returns:
      float32[] scalar.
    """
    text, mask_ar = batch["text"], batch["mask_ar"]
    logits, _ = model.apply(
        {"params": params}, batch["image"], text[:, :-1], mask_ar[:, :-1], train=True
    )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # Picking the target's log-probability (rather than a one-hot product)
    # avoids a [B, T, V] one-hot array, and 0 * -inf = NaN on saturated logits.
    target_logp = jnp.take_along_axis(logp, text[:, 1:, None], axis=-1)[..., 0]
    mask_loss = batch["mask_loss"][:, 1:].astype(jnp.float32)
    example_loss = -jnp.sum(target_logp * mask_loss, axis=-1)
    example_loss /= jnp.clip(jnp.sum(mask_loss, axis=-1), 1.0)  # empty examples count 0
    return jnp.mean(example_loss)


# -- learning rate -------------------------------------------------------------


def warmup_steps(total_steps: int, warmup_fraction: float = 0.1) -> int:
    """Warmup length in steps: the fraction of `total_steps`, rounded.

    As big_vision rounds it: to the nearest integer (Python's `round`, so
    6.5 -> 6), but at least 1 whenever the fraction is not 0.
    """
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1], got {warmup_fraction}.")
    steps = warmup_fraction * total_steps
    return max(1, round(steps)) if steps else 0


def cosine_schedule(
    step, *, total_steps: int, base_lr: float, warmup_fraction: float = 0.1
) -> jax.Array:
    """Learning rate at `step`: linear warmup, then a cosine decay to 0.

    big_vision's `create_learning_rate_schedule(total_steps, base=base_lr,
    decay_type="cosine", warmup_percent=warmup_fraction)`, with W warmup steps
    (`warmup_steps`):

        progress = clip((step - W) / (total_steps - W), 0, 1)
        lr = base_lr * 0.5 * (1 + cos(pi * progress)) * min(1, step / W)

    So lr(0) = 0, lr(W) = base_lr, lr(total_steps) = 0. The notebook counts
    steps from 1 and passes `total_steps = steps + 1`, so its last step still
    learns a little. Works on Python numbers and inside `jax.jit`.

    Returns:
      float32[] scalar.
    """
    warmup = warmup_steps(total_steps, warmup_fraction)
    if total_steps <= warmup:
        raise ValueError(
            f"Warmup of {warmup} steps leaves nothing of total_steps={total_steps}; "
            "train for more steps or lower warmup_fraction."
        )
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / (total_steps - warmup), 0.0, 1.0)
    lr = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    if warmup:
        lr = lr * jnp.minimum(1.0, step / warmup)
    return lr.astype(jnp.float32)


# -- the update step -----------------------------------------------------------


class TrainState(NamedTuple):
    """What an optax update step carries: the parameters and the optimizer state.

    `opt_state` covers the trainable parameters only (the flat dict of
    `split_params`), so Adam's two moments cost memory for those alone.
    """

    params: Any
    opt_state: optax.OptState


def init_train_state(params, trainable, optimizer: optax.GradientTransformation) -> TrainState:
    """A `TrainState` for `make_update_fn(model, trainable, optimizer)`."""
    train, _ = split_params(params, trainable)
    return TrainState(params, optimizer.init(train))


def _keep_old_unless_finite(loss, new_tree, old_tree):
    """`new_tree` when `loss` is finite, else `old_tree`, leaf by leaf.

    An element-wise select fuses with the update that produced `new_tree`, so
    XLA can still write the result into the donated input buffers: guarding
    costs no extra memory.
    """
    finite = jnp.isfinite(loss)
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_tree, old_tree)


def _float32_learning_rate(update_fn):
    """Passes the learning rate on as a float32 array, so a Python float and a
    schedule's float32 share one compiled step (JAX traces a bare Python float
    as a "weakly typed" value: another signature, another compile)."""

    @functools.wraps(update_fn)
    def update_with_float32_lr(state, batch, learning_rate):
        return update_fn(state, batch, jnp.asarray(learning_rate, jnp.float32))

    return update_with_float32_lr


def make_update_fn(
    model,
    trainable,
    optimizer: str | optax.GradientTransformation = "sgd",
    *,
    param_shardings=None,
):
    """Builds the jitted training step.

    Only trainable parameters are differentiated: the frozen ones enter the
    loss as constants, so their gradients are never computed or stored, and
    they come back untouched (the very same buffers). If the loss is NaN or
    inf the step returns its inputs unchanged, so the caller still holds the
    last good parameters although the inputs were donated (see `train_steps`).

    Args:
      model: a `solutions.model.Model`.
      trainable: tree of Python bools from `trainable_mask`.
      optimizer: "sgd" for the notebook's plain SGD, or an optax transformation
        built with learning rate 1.0 (e.g. `optax.adam(1.0)`): the step scales
        its updates by the `learning_rate` argument, so one schedule drives
        every optimizer.
      param_shardings: optional tree of `Sharding`s (from
        `solutions.sharding.infer_param_sharding`) that the updated parameters
        keep. Without it the compiler may lay some outputs out differently
        from the inputs, and the next step would then compile again.
    Returns:
      SGD: `update_fn(params, batch, learning_rate) -> (params, loss)`.
      optax: `update_fn(state, batch, learning_rate) -> (state, loss)` with
      `state = init_train_state(params, trainable, optimizer)`.
      The first argument is donated: don't use it after the call.
    """
    trainable = jax.tree.map(bool, trainable)  # static: it decides what to differentiate

    def loss_of_trainable(train, frozen, batch):
        return loss_fn(merge_params(train, frozen), batch, model=model)

    loss_and_grads = jax.value_and_grad(loss_of_trainable)

    def merge_keeping_layout(train, frozen):
        params = merge_params(train, frozen)
        if param_shardings is None:
            return params
        return jax.lax.with_sharding_constraint(params, param_shardings)

    def step_along(params, direction, learning_rate):
        """params + learning_rate * direction, keeping each parameter's dtype
        (a float32 learning rate would promote 16-bit ones)."""
        return jax.tree.map(lambda p, d: (p + learning_rate * d).astype(p.dtype), params, direction)

    if isinstance(optimizer, str):
        if optimizer != "sgd":
            raise ValueError(
                f"Unknown optimizer {optimizer!r}: pass 'sgd' or an optax "
                "GradientTransformation such as optax.adam(1.0)."
            )

        @functools.partial(jax.jit, donate_argnums=(0,))
        def sgd_update_fn(params, batch, learning_rate):
            train, frozen = split_params(params, trainable)
            loss, grads = loss_and_grads(train, frozen, batch)
            downhill = jax.tree.map(jnp.negative, grads)
            new_train = step_along(train, downhill, learning_rate)
            new_train = _keep_old_unless_finite(loss, new_train, train)
            return merge_keeping_layout(new_train, frozen), loss

        return _float32_learning_rate(sgd_update_fn)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def optax_update_fn(state, batch, learning_rate):
        train, frozen = split_params(state.params, trainable)
        loss, grads = loss_and_grads(train, frozen, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, train)
        new_train = step_along(train, updates, learning_rate)
        new_train, opt_state = _keep_old_unless_finite(
            loss, (new_train, opt_state), (train, state.opt_state)
        )
        return TrainState(merge_keeping_layout(new_train, frozen), opt_state), loss

    return _float32_learning_rate(optax_update_fn)


# -- mixed precision -----------------------------------------------------------


def cast_params(params, trainable, frozen_dtype=jnp.bfloat16, shardings=None):
    """Puts parameters on device(s): trainable in float32, frozen in 16 bits.

    Leaf by leaf, so memory peaks at the result plus one array, never at a
    second copy of the model. A host (numpy) leaf is cast before it travels,
    so only its final dtype reaches the device.

    Args:
      params: tree of numpy or jax arrays.
      trainable: tree of bools from `trainable_mask`.
      frozen_dtype: dtype of frozen parameters: bfloat16 (float32's range), or
        float16 for GPUs without bfloat16 such as the T4.
      shardings: optional tree of `Sharding`s from
        `solutions.sharding.infer_param_sharding`; default: the default device.
    Returns:
      The tree of `jax.Array`s.
    """
    leaves, treedef = jax.tree.flatten(params)
    masks = flatten_like(treedef, trainable, "trainable")
    targets = [None] * len(leaves)
    if shardings is not None:
        targets = flatten_like(treedef, shardings, "shardings")
    for i, (is_trainable, sharding) in enumerate(zip(masks, targets, strict=True)):
        dtype = jnp.dtype(jnp.float32 if is_trainable else frozen_dtype)
        leaf = leaves[i]
        if isinstance(leaf, np.ndarray):
            leaf = leaf.astype(dtype, copy=False)
        leaf = jax.device_put(leaf, sharding)
        leaves[i] = leaf if leaf.dtype == dtype else leaf.astype(dtype)
        leaves[i].block_until_ready()
    return jax.tree.unflatten(treedef, leaves)


# -- the loop ------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf. `.state` holds the last good parameters
    (or `TrainState`): the failing step returned its inputs unchanged.
    `.losses` are the losses of the steps before it."""

    def __init__(self, step: int, loss: float, learning_rate: float, state, losses=()):
        super().__init__(
            f"Loss is {loss} at step {step} (learning rate {learning_rate:.3g}); that update "
            "was skipped and this error's `.state` holds the parameters from before it. "
            "Lower the learning rate (halve it, say) or check that batch for bad values."
        )
        self.step, self.loss, self.learning_rate, self.state = step, loss, learning_rate, state
        self.losses = list(losses)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train_steps`. `.state` holds the parameters (or `TrainState`) after
    step `.step`, the last whose update went through (`.step` is first_step - 1 when none
    did); `.losses` are the losses read so far. Being a KeyboardInterrupt, it stops a
    program that does not catch it, as Ctrl-C always does."""

    def __init__(self, step: int, state, losses):
        super().__init__(f"interrupted after step {step}")
        self.step, self.state, self.losses = step, state, list(losses)


def train_steps(
    update_fn: Callable,
    state,
    batches: Iterable[dict],
    schedule: Callable[[int], Any],
    *,
    first_step: int = 1,
    on_step: Callable[[int, Any, float, float], bool | None] | None = None,
):
    """Runs one `update_fn` step per batch; every way it ends hands back a good state.

    Memory trade-off: the last good parameters are not copied (a copy would
    double the memory of a 3B model). The step itself returns its (donated)
    inputs when the loss is not finite, which costs no memory, only one host
    sync per step to read the loss. The guard catches a blow-up in the step
    where it shows in the loss; parameters that grew huge yet finite in earlier
    steps are still "good" to it (a caller that saves can check them first).

    Args:
      update_fn: from `make_update_fn`.
      state: its first argument: params (SGD) or a `TrainState` (optax). Donated:
        use the returned state, never this one, afterwards.
      batches: iterable of batches (dicts of arrays); one step each.
      schedule: step -> learning rate, e.g. a partial of `cosine_schedule`.
      first_step: number of the first step (the notebook counts from 1; a resumed
        run counts on from its checkpoint).
      on_step: optional `on_step(step, state, learning_rate, loss)` after every step,
        to draw progress, save or evaluate; returning True ends training after it.
    Returns:
      (state, losses: list of floats, one per step run).
    Raises:
      NonFiniteLossError: a NaN or inf loss; carries the step, the loss, the losses
        before it and the last good state.
      TrainingInterrupted: Ctrl-C; carries the last step done, its state and the losses.
    """
    losses: list[float] = []
    step = first_step - 1  # the last step whose update went through
    try:
        for batch_step, batch in enumerate(batches, start=first_step):
            learning_rate = schedule(batch_step)
            state, loss = update_fn(state, batch, learning_rate)
            # From here `state` is this step's result (or, on a NaN loss, its inputs), so a
            # Ctrl-C while the loss is read still hands back a usable state.
            step = batch_step
            loss = float(loss)
            if not math.isfinite(loss):
                raise NonFiniteLossError(step, loss, float(learning_rate), state, losses)
            losses.append(loss)
            if on_step is not None and on_step(step, state, float(learning_rate), loss):
                break
    except KeyboardInterrupt:
        raise TrainingInterrupted(step, state, losses) from None
    return state, losses
