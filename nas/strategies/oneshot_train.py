"""The one training loop of every one-shot strategy: a :class:`~nas.strategies.protocol.OneShot`
run by the one trainer (:func:`nas.training.loop.run_training`).

The loop calls only the protocol's five functions. How the two steps share the data is the
strategy's schedule (:class:`OneShotSchedule`, declared by its registry entry):

* **held-out** (FBNet, ProxylessNAS; ``arch_fraction`` > 0): the training split is divided;
  every batch of the larger part runs ``weight_step``; after each epoch from
  ``warmup_epochs`` on, the trainer's arch hook runs ``arch_step`` over the held-out part.
* **joint** (Single-Path NAS; ``arch_fraction`` 0): every batch runs ``weight_step`` and
  ``arch_step`` from the same state with the same key (the joint gradient of one loss, each
  half with its own rule); the strategy itself holds the thresholds during its warm-up.

After every epoch the loop derives the Arch (``derive``), adds the caller's description of the
state (temperature, entropies, expected cost, decisions...) and the mean arch-step metrics to
the epoch's record, and hands (epoch, Arch, record) to the caller, who writes the search's
``history.jsonl``. The trainer's state holds ``params = {"model": weights, "arch": arch}``,
``opt_state = {"weights", "arch"}`` and ``batch_stats`` = the strategy's stats, so its
checkpoints, resume and ``metrics.jsonl`` serve every one-shot strategy alike.

Example:
    >>> out = train_oneshot(strategy, data, OneShotSchedule(train, arch_fraction=0.2),
    ...                     model=net, container=archfile, workdir="runs/fb", seed=0)
    >>> strategy.derive(out.state)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nas.archfile import ArchFile
from nas.data import Dataset, epoch_rng, stratified_split, train_batches
from nas.strategies.protocol import OneShot, OneShotState
from nas.training.loop import run_training
from nas.training.trainer import TrainConfig, TrainState, make_schedule
from nas.training.step import NonFiniteWeightsError, non_finite_leaves


@dataclasses.dataclass(frozen=True)
class OneShotSchedule:
    """How a one-shot strategy's steps are run (see the module docstring).

    Attributes:
        train: the weights' trainer settings (epochs, batch, optimizer, schedule, seed).
        arch_fraction: share of the training split held out for ``arch_step`` (0 = joint steps
            on every batch).
        warmup_epochs: held-out schedule: epochs before the first arch pass.
        evaluate: evaluate the network with its current choices on the validation split after
            each epoch and on validation and test at the end (needs ``model_variables``).
    """

    train: TrainConfig
    arch_fraction: float = 0.0
    warmup_epochs: float = 0.0
    evaluate: bool = False


@dataclasses.dataclass
class OneShotOutcome:
    """What :func:`train_oneshot` returns.

    Attributes:
        state: the final OneShotState.
        history: the epoch records (as in ``metrics.jsonl``).
        train_seconds: seconds of training (all epochs, resumed ones included).
        val_accuracy, test_accuracy: of the evaluated network (None without ``evaluate``).
        devices: local devices the weights trained on (data-parallel).
    """

    state: OneShotState
    history: list[dict]
    train_seconds: float
    val_accuracy: float | None
    test_accuracy: float | None
    devices: int = 1


def make_steps(strategy: OneShot) -> tuple[Any, Any]:
    """Returns the jitted ``(weight_step, arch_step)`` of a one-shot strategy.

    Args:
        strategy: the :class:`~nas.strategies.protocol.OneShot`
            (:func:`nas.strategies.registry.make_strategy`).

    Returns:
        ``weight_step(state, batch, key, lr, epoch) -> (state, metrics)`` and
        ``arch_step(state, batch, key, lr, epoch) -> (state, metrics)``, compiled once.
    """
    return jax.jit(strategy.weight_step), jax.jit(strategy.arch_step)


def step_consts(strategy: OneShot, seed: int) -> dict[str, Any]:
    """Returns the arrays :func:`train_oneshot`'s compiled train step takes as its ``consts``
    argument (so they are not constants of the program: a run at another seed, or with other
    ``strategy.consts``, reuses the compiled program).

    Args:
        strategy: the protocol's functions (its ``consts``, e.g. single_path's ``lam``).
        seed: the run's seed.

    Returns:
        ``{"base": PRNGKey(seed + 1), "strategy": dict(strategy.consts)}``: the steps' keys
        are ``fold_in(base, 2 * step)`` (the held-out arch pass's: the odd ones).
    """
    return {"base": jax.random.PRNGKey(seed + 1), "strategy": dict(strategy.consts)}


def strategy_args(consts: Mapping[str, Any]) -> tuple:
    """Returns the trailing arguments of a strategy's steps: ``(consts["strategy"],)``, or ``()``
    for a strategy without consts (its steps take five arguments).

    Args:
        consts: :func:`step_consts` (or the traced copy the compiled step received).
    """
    return (consts["strategy"],) if consts["strategy"] else ()


def to_oneshot(ts: TrainState) -> OneShotState:
    """Returns the OneShotState held by the trainer's TrainState (see :func:`to_train`).

    Args:
        ts: the trainer's state (params {"model": weights, "arch": arch}, opt_state
            {"weights", "arch"}, batch_stats = the strategy's stats).

    Returns:
        The strategy's state.
    """
    return OneShotState(ts.params["model"], ts.params["arch"], ts.opt_state["weights"],
                        ts.opt_state["arch"], ts.batch_stats)


def to_train(state: OneShotState, step: Any) -> TrainState:
    """Returns the trainer's TrainState of a OneShotState (checkpointed by run_training).

    Args:
        state: the strategy's state.
        step: the global weight-step count.

    Returns:
        The TrainState (see :func:`to_oneshot`).
    """
    return TrainState(jnp.asarray(step, jnp.int32), {"model": state.weights, "arch": state.arch},
                      state.stats, {"weights": state.weight_opt, "arch": state.arch_opt})


def _mean(records: list[dict]) -> dict[str, float]:
    if not records:
        return {}
    return {k: float(np.mean([float(r[k]) for r in records])) for k in records[0]}


def train_oneshot(strategy: OneShot, data: Dataset, schedule: OneShotSchedule, *, model: Any,
                  container: ArchFile, workdir: str | os.PathLike | None, seed: int,
                  meta: Mapping[str, Any] | None = None,
                  describe: Callable[[OneShotState, int], Mapping[str, float]] | None = None,
                  on_epoch: Callable[[int, dict, Mapping[str, Any]], None] | None = None,
                  model_variables: Callable[[OneShotState], dict] | None = None
                  ) -> OneShotOutcome:
    """Trains a one-shot strategy from ``init`` (or resumes it from `workdir`).

    Args:
        strategy: the protocol's functions.
        data: the Dataset.
        schedule: how the steps share the data (see :class:`OneShotSchedule`).
        model: the network (checkpoint metadata; evaluated with ``model_variables(state)``).
        container: the Arch the trainer's files are keyed by (the supernet's, not a result).
        workdir: output/resume directory, or None.
        seed: seed of initialization, splits, batches and step keys.
        meta: settings stored in the checkpoints; a resume with others is refused.
        describe: ``(state, epoch) -> {name: number}`` added to each epoch's record (0-based
            epoch), e.g. temperature, entropies, expected cost.
        on_epoch: ``(epoch, derived Arch, record)`` after each epoch (1-based), e.g. to write
            history.jsonl.
        model_variables: ``state -> {"params", "batch_stats"}`` of `model` (for ``evaluate``).

    Returns:
        The :class:`OneShotOutcome`.
    """
    train = schedule.train
    held_out = schedule.arch_fraction > 0
    if held_out:
        w_idx, a_idx = stratified_split(data.y_train, (schedule.arch_fraction,), seed)
        xa, ya = data.x_train[a_idx], data.y_train[a_idx]
        weight_data = dataclasses.replace(data, x_train=data.x_train[w_idx],
                                          y_train=data.y_train[w_idx], augment=False)
        batch = min(train.batch_size, len(w_idx), len(a_idx))
        train = dataclasses.replace(train, batch_size=batch)
    else:
        weight_data, batch = data, min(train.batch_size, len(data.y_train))
    steps_per_epoch = len(weight_data.y_train) // batch
    lrs = np.asarray(make_schedule(train, steps_per_epoch)(
        jnp.arange(train.epochs * steps_per_epoch + 1)), np.float32)
    state = strategy.init(jax.random.PRNGKey(seed))
    # arguments of the compiled steps, not constants: the same supernet at another seed, or
    # with other strategy.consts (single_path's lam), reuses the compiled program
    consts = step_consts(strategy, seed)
    base, extra = consts["base"], strategy_args(consts)
    weight_step, arch_step = make_steps(strategy)
    current: dict[str, OneShotState] = {}

    @jax.jit
    def train_step(ts, b, key, lr, consts):
        del key  # the one-shot keys: fold_in(seed + 1, 2 * step) (arch pass: odd ones)
        now, k = to_oneshot(ts), jax.random.fold_in(consts["base"], 2 * ts.step)
        epoch = (ts.step // steps_per_epoch).astype(jnp.float32)
        new, m = weight_step(now, b, k, lr, epoch, *strategy_args(consts))
        if not held_out:
            after_arch, _ = arch_step(now, b, k, lr, epoch, *strategy_args(consts))
            new = new._replace(arch=after_arch.arch, arch_opt=after_arch.arch_opt)
        return to_train(new, ts.step + 1), m

    def epoch_hook(ts, epoch: int):
        now, metrics = to_oneshot(ts), []
        if held_out and epoch >= schedule.warmup_epochs:
            step = int(ts.step)
            lr = jnp.float32(lrs[min(step, len(lrs) - 1)])
            for i, b in enumerate(train_batches(xa, ya, batch, epoch_rng(seed, epoch, 1))):
                key = jax.random.fold_in(base, 2 * (step + i) + 1)
                now, m = arch_step(now, b, key, lr, jnp.float32(epoch), *extra)
                metrics.append(m)
        current["state"] = now
        broken = non_finite_leaves({"weights": now.weights, "arch": now.arch, "stats": now.stats})
        if broken:  # before describe and any checkpoint: never score or save a broken supernet
            raise NonFiniteWeightsError(epoch + 1, broken, f"{strategy.name} supernet")
        record = _mean(metrics)
        if describe is not None:
            record.update(describe(now, epoch))
        return to_train(now, ts.step), record

    def on_epoch_end(epoch: int, record: Mapping[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch(epoch, strategy.derive(current["state"]), record)

    result = run_training(
        model=model, params={"model": state.weights, "arch": state.arch}, batch_stats=state.stats,
        loss_fn=None, data=weight_data, config=train, workdir=workdir, archfile=container,
        consts=consts,
        meta=meta, opt_state={"weights": state.weight_opt, "arch": state.arch_opt},
        train_step=train_step, arch_step=epoch_hook, on_epoch_end=on_epoch_end,
        evaluate_model=schedule.evaluate,
        model_variables=(lambda ts: model_variables(to_oneshot(ts))) if model_variables else None,
        extend_epochs=True, result_file=None)
    return OneShotOutcome(to_oneshot(result["state"]), result["history"],
                          float(result["train_seconds"]), result["val_accuracy"],
                          result["test_accuracy"], int(result["devices"]))
