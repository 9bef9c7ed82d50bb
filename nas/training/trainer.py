"""The trainer: one jitted train step and eval step (:mod:`nas.training.step`), the epoch loop
(:mod:`nas.training.loop`) and :func:`train_arch`, the entry that trains one Arch.

The step is generic: it takes a *loss function* ``loss_fn(params, batch_stats, batch, rng,
consts) -> (loss, (batch_stats, metrics))`` and an optax transform, so the same step trains a
fixed Arch, a distillation student (``nas.training.distill``) or a supernet. Every name of
:mod:`nas.training.step` (TrainConfig, TrainState, make_train_step, ...) is importable from here.

Example:
    >>> result = train_arch(space, arch, load_data("digits", space), TrainConfig(epochs=30))
    >>> result["test_accuracy"], result["train_seconds"], result["params"]
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from nas.archfile import ArchFile
from nas.data import Dataset
from nas.errors import NasInputError
from nas.model import build_model, init_variables, leaf_shapes
from nas.training.loop import run_training
from nas.training.step import (LossFn, NonFiniteLossError, TrainConfig, TrainState, batch_metrics,
                            classification_loss, count_params, cross_entropy, evaluate,
                            init_quantizers, make_eval_step, make_optimizer, make_schedule,
                            make_train_step)

__all__ = ["LossFn", "NonFiniteLossError", "TrainConfig", "TrainState", "batch_metrics",
           "classification_loss", "count_params", "cross_entropy", "evaluate", "init_quantizers",
           "make_eval_step", "make_optimizer", "make_schedule", "make_train_step", "train_arch"]


# ----------------------------------------------------------------------------------- entry
def train_arch(space: Any, arch: Mapping[str, Any], data: Dataset, config: TrainConfig,
               workdir: str | None = None, model: Any = None,
               on_epoch_end: Callable[[int, dict], None] | None = None,
               initial: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trains one Arch from scratch, or fine-tunes it from `initial` (resuming from `workdir`
    if it holds checkpoints).

    Args:
        space: the Space.
        arch: a valid Arch of `space`.
        data: the Dataset (its image shape must match the space's input).
        config: hyper-parameters.
        workdir: where checkpoints, arch.json, metrics.jsonl and TensorBoard files go (None =
            nothing written, no resume).
        model: a prebuilt network to train instead of ``build_model(space, arch)`` (e.g. the
            same Arch with every layer at 8 bits); the checkpoints are still keyed by the Arch.
        on_epoch_end: called with (epoch, record) after each epoch (may raise to stop).
        initial: ``{"params", "batch_stats"}`` to start from instead of a fresh init (e.g. a
            sub-network's weights exported from a supernet, see
            :func:`nas.training.checkpoint.load_trained`); the optimizer starts fresh.

    Returns:
        {"test_accuracy", "val_accuracy" (of the final parameters), "test_loss",
        "train_seconds" (wall time of all epochs, XLA compile included), "params" (count),
        "epochs", "steps", "arch_id", "space", "data", "history" (one record per epoch),
        "state" (the final TrainState; not JSON)}.
    """
    config.validate()
    arch = space.validate(arch)
    if model is None:
        model = build_model(space, arch, depthwise_impl=config.depthwise_impl)
    variables = init_variables(model, jax.random.PRNGKey(config.seed),
                               (1, *data.image_shape))
    if initial is None:
        variables = init_quantizers(model, variables, data, config)
    else:
        variables = _start_from(variables, initial)
    params = {"model": variables["params"]}
    return run_training(
        model=model, params=params, batch_stats=variables["batch_stats"],
        loss_fn=classification_loss(model, config.label_smoothing), data=data, config=config,
        workdir=workdir, archfile=ArchFile(space, arch), on_epoch_end=on_epoch_end)


def _start_from(fresh: Mapping[str, Any], initial: Mapping[str, Any]) -> dict[str, Any]:
    """Returns `initial` as the network's variables, checked against a fresh init's tree.

    Raises:
        NasInputError: a weight missing, extra or of another shape (the first one named).
    """
    got = {"params": initial["params"], "batch_stats": initial.get("batch_stats", {})}
    want = {"params": fresh["params"], "batch_stats": fresh.get("batch_stats", {})}
    shapes = [leaf_shapes(got), leaf_shapes(want)]
    for name in sorted(set(shapes[0]) | set(shapes[1])):
        have, need = shapes[0].get(name), shapes[1].get(name)
        if have != need:
            raise NasInputError(f"the initial weights are not this network's: {name} is "
                                f"{'missing' if have is None else have} where the Arch has "
                                f"{'none' if need is None else need}; start from weights of "
                                "the same Arch", field="init")
    return jax.tree_util.tree_map(jax.numpy.array, got)  # copies: the step donates its buffers
