"""The trainer's pieces: config, state, losses, optimizer, the jitted train and eval steps.

:mod:`nas.training.loop` runs them epoch by epoch; :mod:`nas.training.trainer` (``train_arch``) is the entry
that trains one Arch and re-exports these names.

The step is generic: it takes a *loss function* ``loss_fn(params, batch_stats, batch, rng,
consts) -> (loss, (batch_stats, metrics))`` and an optax transform, so the same step trains a
fixed Arch, a distillation student (``nas.training.distill``) or a supernet. ``params`` is a dict whose
``"model"`` entry holds the network's parameters; other entries are extra trained parameters
(a hint adapter, architecture weights). ``consts`` carries arrays the loss reads but does not
train (teacher variables), passed as arguments so they are not baked into the compiled program.

Batches have fixed shapes (the last partial training batch is dropped, the last evaluation batch
is padded with mask 0), so each step compiles once. Quantized, pruned and factorized knobs live
inside the blocks (fake-quant with STE), so quantization-aware training is plain training.

Example:
    >>> step = make_train_step(classification_loss(model), make_optimizer(TrainConfig()))
    >>> state, metrics = step(state, batch, jax.random.PRNGKey(0), 3e-3)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas.blocks.quant import QUANTIZERS, init_quant_steps, weight_count
from nas.data import Dataset, eval_batches
from nas.errors import NasInputError

LossFn = Callable[..., tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
        epochs: number of epochs.
        batch_size: training batch size (capped at the training set size).
        eval_batch_size: evaluation batch size.
        optimizer: 'adamw' or 'sgd' (momentum, Nesterov).
        learning_rate: peak learning rate of the cosine schedule.
        momentum: SGD momentum.
        weight_decay: decoupled weight decay on kernels (not on biases or BN parameters).
        warmup_epochs: linear warm-up from 0 to the peak, in epochs (may be fractional).
        final_lr_fraction: learning rate at the end of the cosine decay, relative to the peak.
        label_smoothing: label smoothing of the cross-entropy, in [0, 1).
        grad_clip: global-norm gradient clipping (None = off).
        seed: seed of initialization, shuffling, augmentation and dropout.
        checkpoint_every: epochs between checkpoints (the last epoch is always saved).
        keep_checkpoints: newest checkpoints kept (at least 2).
        progress: show a tqdm progress bar.
        depthwise_impl: depthwise conv implementation passed to the model.
        quantizer: 'lsq' (learned step sizes, initialized on the first training batch) or
            'minmax' (steps follow max |w| and the running max |x|); see :mod:`nas.blocks.quant`.
        devices: local devices to train on, data-parallel (0 = all; see
            :mod:`nas.training.devices`); the batch must split evenly over them.
    """

    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    seed: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    progress: bool = False
    depthwise_impl: str = "auto"
    quantizer: str = "lsq"
    devices: int = 0

    def validate(self) -> "TrainConfig":
        """Checks the values; returns self.

        Raises:
            NasInputError: a value is out of range (the message names the field).
        """
        checks = [("epochs", self.epochs >= 1, "an integer >= 1"),
                  ("batch_size", self.batch_size >= 1, "an integer >= 1"),
                  ("eval_batch_size", self.eval_batch_size >= 1, "an integer >= 1"),
                  ("optimizer", self.optimizer in ("adamw", "sgd"), "'adamw' or 'sgd'"),
                  ("learning_rate", self.learning_rate > 0, "a number > 0"),
                  ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                  ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, "in [0, epochs]"),
                  ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
                  ("checkpoint_every", self.checkpoint_every >= 1, "an integer >= 1"),
                  ("quantizer", self.quantizer in QUANTIZERS, " or ".join(map(repr, QUANTIZERS))),
                  ("devices", self.devices >= 0, "an integer >= 0 (0 = all local devices)")]
        for field, ok, expected in checks:
            if not ok:
                raise NasInputError(f"{getattr(self, field)!r} is not allowed; expected {expected}",
                                    field=field)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-able dict."""
        return dataclasses.asdict(self)


class NonFiniteLossError(NasInputError):
    """The training loss became NaN or infinite; the candidate is recorded as failed with this.

    Args:
        kind: 'nan' or 'inf'.
        epoch: the epoch (1-based).
        step: the global step (0-based) whose loss was not finite.
        source: what was trained (e.g. 'arch 1a2b3c').
    """

    def __init__(self, kind: str, epoch: int, step: int, source: str | None = None):
        self.kind, self.epoch, self.step = kind, int(epoch), int(step)
        super().__init__(f"loss became {kind} at epoch {epoch} step {step}; lower the learning "
                         "rate, set grad_clip, or check the data for NaN/inf", source)


class NonFiniteWeightsError(NasInputError):
    """A supernet's weights or statistics became NaN or infinite while its loss stayed finite
    (e.g. a rarely sampled sub-network overflowed); the run stops instead of going on at chance.

    Args:
        epoch: the epoch (1-based) after which the weights were checked.
        names: the first non-finite variables' paths.
        source: what was trained.
    """

    def __init__(self, epoch: int, names: list[str], source: str | None = None):
        self.epoch, self.names = int(epoch), list(names)
        super().__init__(f"weights became NaN or infinite in epoch {epoch} ({', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''}); lower the learning rate or set "
                         "train.grad_clip, then resume from the last finite checkpoint", source)


def non_finite_leaves(tree: Any, limit: int = 4) -> list[str]:
    """Returns the paths of up to `limit` floating-point leaves of `tree` holding NaN or inf.

    Args:
        tree: a pytree of arrays (weights, batch statistics).
        limit: the most paths returned.

    Returns:
        The leaves' paths (``jax.tree_util.keystr``), empty when everything is finite.
    """
    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
    if not leaves:
        return []
    flags = np.asarray(jnp.stack([jnp.all(jnp.isfinite(leaf)) for _, leaf in leaves]))
    return [jax.tree_util.keystr(leaves[i][0]) for i in np.flatnonzero(~flags)[:limit]]


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree)."""

    step: jax.Array
    params: dict[str, Any]
    batch_stats: Any
    opt_state: Any


# ----------------------------------------------------------------------------------- losses
def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy with label smoothing over the unmasked examples.

    The smoothed target is ``(1 - s) * one_hot + s / K``.

    Args:
        logits: [B, K].
        labels: [B] integer labels.
        mask: [B] weights (1 = counted, 0 = padding); None counts all.
        label_smoothing: s in [0, 1).

    Returns:
        Scalar loss.
    """
    k = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
    per_example = optax.softmax_cross_entropy(logits, targets)
    if mask is None:
        return per_example.mean()
    return (per_example * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def batch_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array, loss: jax.Array
                  ) -> dict[str, jax.Array]:
    """Returns summable metrics of a batch: loss_sum, correct, count."""
    correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
    count = mask.sum()
    return {"loss_sum": loss * count, "correct": correct, "count": count}


def classification_loss(model: Any, label_smoothing: float = 0.0) -> LossFn:
    """Returns the loss function of plain supervised training of `model`.

    Args:
        model: a Flax module called as ``model.apply(variables, x, train=True, ...)``.
        label_smoothing: label smoothing of the cross-entropy.

    Returns:
        loss_fn(params, batch_stats, batch, rng, consts) -> (loss, (batch_stats, metrics)).
    """

    def loss_fn(params, batch_stats, batch, rng, consts=None):
        logits, updates = model.apply({"params": params["model"], "batch_stats": batch_stats},
                                      batch["x"], train=True, mutable=["batch_stats"],
                                      rngs={"dropout": rng})
        loss = cross_entropy(logits, batch["y"], batch["mask"], label_smoothing)
        return loss, (updates.get("batch_stats", batch_stats),
                      batch_metrics(logits, batch["y"], batch["mask"], loss))

    return loss_fn


# ---------------------------------------------------------------------------- optimization
def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Returns the learning-rate schedule: linear warm-up then cosine decay, per step."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=min(warmup, total - 1),
        decay_steps=total, end_value=config.learning_rate * config.final_lr_fraction)


def _decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Returns the optax optimizer of a config *without* its learning rate.

    The transform outputs the update direction (AdamW: Adam step plus decoupled weight decay;
    SGD: decayed gradient through Nesterov momentum); the train step scales it by ``-lr``. The
    same arithmetic as ``optax.adamw`` / ``optax.sgd``, but the learning rate is an argument of
    the step, so schedules, epochs and seeds do not change the compiled program. Weight decay
    applies to kernels only (not to biases or BatchNorm parameters).
    """
    parts = []
    if config.grad_clip:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    if config.optimizer == "adamw":
        parts += [optax.scale_by_adam(), optax.add_decayed_weights(config.weight_decay, _decay_mask)]
    else:
        parts += [optax.add_decayed_weights(config.weight_decay, _decay_mask),
                  optax.trace(decay=config.momentum, nesterov=True)]
    return optax.chain(*parts)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
    """Returns the jitted train step ``step(state, batch, key, lr, consts) -> (state, metrics)``.

    The step's random key is ``fold_in(key, state.step)``, so a resumed run draws the same
    randomness as an uninterrupted one. The update is ``-lr * tx(grads)`` (see
    :func:`make_optimizer`). The old state's buffers are donated.

    Args:
        loss_fn: see the module docstring.
        tx: the optimizer's direction transform (no learning rate).
    """

    def step(state: TrainState, batch, key, lr, consts=None):
        rng = jax.random.fold_in(key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch, rng,
                                                     consts)
        direction, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree_util.tree_map(lambda p, d: p - lr * d, state.params, direction)
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=(0,))


def make_eval_step(model: Any):
    """Returns the jitted eval step ``eval(variables, batch) -> metrics`` (inference mode)."""

    def step(variables, batch):
        logits = model.apply(variables, batch["x"], train=False)
        loss = cross_entropy(logits, batch["y"], batch["mask"])
        return batch_metrics(logits, batch["y"], batch["mask"], loss)

    return jax.jit(step)


def evaluate(eval_step, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
             batch_size: int) -> dict[str, float]:
    """Returns {"accuracy", "loss"} of a model on (x, y); every example counted once."""
    totals = None
    for batch in eval_batches(x, y, batch_size):
        m = eval_step(variables, batch)
        totals = m if totals is None else jax.tree_util.tree_map(jnp.add, totals, m)
    if totals is None:
        return {"accuracy": float("nan"), "loss": float("nan")}
    count = float(totals["count"])
    return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss_sum"]) / count}


def init_quantizers(model: Any, variables: Mapping[str, Any], data: Dataset,
                    config: TrainConfig) -> dict[str, Any]:
    """Initializes the learned quantizer steps (``quantizer: lsq``) on the first training batch.

    Args:
        model: the network.
        variables: its fresh variables.
        data: the training data (its first ``batch_size`` images are used).
        config: the training config (``quantizer``, ``batch_size``, ``seed``).

    Returns:
        The variables, steps set (unchanged for 'minmax' or a float network).
    """
    if config.quantizer != "lsq":
        return dict(variables)
    x = jnp.asarray(data.x_train[:min(config.batch_size, len(data.x_train))], jnp.float32)
    return init_quant_steps(model, variables, x, jax.random.PRNGKey(config.seed))


def count_params(params: Any) -> int:
    """Returns the number of scalars in a parameter pytree (quantizer steps left out)."""
    return weight_count(params)
