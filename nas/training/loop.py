"""The one epoch loop: training, distillation and supernets; batches, checkpoints, logs, resume.

Used through :func:`nas.training.trainer.train_arch`, :func:`nas.training.distill.distill_arch`, the Single-Path
search (:mod:`nas.strategies.single_path_run`) and the 'paths' one-shot searches
(:mod:`nas.strategies.oneshot_loop`: its own ``train_step`` = the strategy's weight step, and
an ``arch_step`` hook run after each epoch's weight pass). A run with a
work directory writes ``arch.json``, orbax checkpoints, ``metrics.jsonl`` (one record per
epoch), TensorBoard event files under ``tb/`` and ``result.json``; started again on the same
directory it resumes from the newest readable checkpoint and ends with the same parameters as
an uninterrupted run (shuffling and dropout keys are functions of (seed, epoch, step)).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nas.archfile import ArchFile, load_arch
from nas.training.checkpoint import (ARCH_FILE, Checkpointer, read_json_lines, write_arch,
                            write_json_lines)
from nas.data import Dataset, epoch_rng, prefetch, train_batches
from nas.training.devices import DataParallel
from nas.errors import NasInputError
from nas.safe_write import append_line, write_atomic
from nas.training.step import (NonFiniteLossError, TrainConfig, TrainState, count_params, evaluate,
                       make_eval_step, make_optimizer, make_schedule, make_train_step)

#: Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = {"progress", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                     "depthwise_impl", "devices"}
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"


def check_workdir(workdir: Path, archfile: ArchFile) -> None:
    """Refuses a work directory that belongs to another Arch (before anything is written).

    Raises:
        NasInputError: ``workdir/arch.json`` exists and describes another Arch.
    """
    path = workdir / ARCH_FILE
    if not path.exists():
        return
    other = load_arch(path)
    mine = archfile.space.arch_id(archfile.arch)
    theirs = other.space.arch_id(other.arch)
    if other.space.name != archfile.space.name or mine != theirs:
        raise NasInputError(f"work directory holds a run of Arch {theirs} (space "
                            f"{other.space.name!r}), not {mine}; use another --workdir",
                            str(workdir))


def _check_config(saved: Mapping[str, Any], config: TrainConfig, workdir: Path,
                  extend_epochs: bool = False) -> None:
    now = config.to_dict()
    for key, value in (saved or {}).items():
        if key in RESUMABLE_CHANGES or key not in now:
            continue
        if extend_epochs and key == "epochs" and now[key] >= value:
            continue
        if now[key] != value:
            raise NasInputError(f"resuming a run trained with {key}={value!r}, now {now[key]!r}; "
                                "use the same settings or another --workdir", str(workdir), key)


def _epoch_metrics(totals: Mapping[str, Any]) -> dict[str, float]:
    count = max(float(totals["count"]), 1.0)
    return {"train_loss": float(totals["loss_sum"]) / count,
            "train_accuracy": float(totals["correct"]) / count}


def check_finite(step_losses: list, epoch: int, first_step: int, arch_id: str) -> None:
    """Raises when a step's loss was NaN or infinite (checked once per epoch: no per-step sync).

    Args:
        step_losses: the epoch's per-step losses (device scalars), in order.
        epoch: the epoch (1-based, as in metrics.jsonl).
        first_step: global step number of the epoch's first step.
        arch_id: the Arch trained (named in the message).

    Raises:
        NonFiniteLossError: "loss became nan at epoch E step S" (S = the global step).
    """
    if not step_losses:
        return
    losses = np.asarray(jnp.stack(step_losses), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        i = int(bad[0])
        kind = "nan" if np.isnan(losses[i]) else "inf"
        raise NonFiniteLossError(kind, epoch, first_step + i, f"arch {arch_id}")


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def run_training(*, model: Any, params: dict[str, Any], batch_stats: Any, loss_fn: Callable,
                 data: Dataset, config: TrainConfig, workdir: str | os.PathLike | None,
                 archfile: ArchFile, consts: Any = None,
                 on_epoch_end: Callable[[int, dict], None] | None = None,
                 meta: Mapping[str, Any] | None = None,
                 epoch_metrics: Callable[[TrainState], Mapping[str, float]] | None = None,
                 tx: Any = None, result_file: str | None = RESULT_FILE,
                 train_step: Callable | None = None, opt_state: Any = None,
                 arch_step: Callable[[TrainState, int], tuple[TrainState, Mapping[str, float]]]
                 | None = None, evaluate_model: bool = True,
                 model_variables: Callable[[TrainState], dict[str, Any]] | None = None,
                 extend_epochs: bool = False) -> dict[str, Any]:
    """Trains `params` with `loss_fn` for ``config.epochs`` epochs, resuming if possible.

    Args:
        model: the network (evaluated with ``params["model"]``).
        params: {"model": network params, ...extra trained params}.
        batch_stats: the network's initial batch statistics.
        loss_fn: ``loss_fn(params, batch_stats, batch, rng, consts)`` (see :mod:`nas.training.trainer`).
        data: the Dataset.
        config: hyper-parameters (validated).
        workdir: output/resume directory, or None.
        archfile: the Arch trained (checkpoints are keyed by its id).
        consts: untrained arrays passed to every step (teacher variables).
        on_epoch_end: callback (epoch, record); an exception it raises stops training (the
            checkpoint of that epoch is already written).
        meta: extra JSON metadata stored in checkpoints and result.json.
        epoch_metrics: optional ``fn(state) -> {name: number}`` merged into each epoch's record
            (metrics.jsonl, TensorBoard), e.g. a supernet's decisions and expected latency.
        tx: the optimizer's direction transform (default :func:`nas.training.trainer.make_optimizer` of
            `config`), e.g. one with its own rule for architecture parameters.
        result_file: the file name of the result summary in the work directory (None: not
            written, e.g. a search that writes its own summary.json).
        train_step: ``step(state, batch, key, lr, consts) -> (state, metrics)`` replacing
            :func:`nas.training.trainer.make_train_step` of `loss_fn` (metrics must hold loss_sum, correct
            and count), e.g. a one-shot strategy's weight step.
        opt_state: the initial optimizer state (default ``tx.init(params)``).
        arch_step: hook ``(state, epoch) -> (state, metrics)`` run after each epoch's weight
            pass (epoch 0-based), before evaluation and the checkpoint: a one-shot strategy's
            architecture pass; its metrics join the epoch's record.
        evaluate_model: evaluate `model` on the validation split after each epoch and on
            validation and test at the end (False: no evaluation, accuracies are None).
        model_variables: ``state -> {"params", "batch_stats"}`` that `model` is evaluated with
            (default: ``params["model"]`` and the state's batch statistics).
        extend_epochs: a resumed run may have more ``config.epochs`` than the saved one.

    Returns:
        The result dict (see :func:`nas.training.trainer.train_arch`).
    """
    space, arch = archfile.space, archfile.arch
    expected = (*space.resolution, space.in_channels)
    if tuple(data.image_shape) != expected:
        raise NasInputError(f"data images are {data.image_shape}, the space {space.name!r} "
                            f"expects {expected}", data.name)
    n_train = len(data.y_train)
    batch_size = min(config.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    tx = make_optimizer(config) if tx is None else tx
    schedule = make_schedule(config, steps_per_epoch)
    lrs = np.asarray(schedule(jnp.arange(config.epochs * steps_per_epoch + 1)), np.float32)
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats,
                       tx.init(params) if opt_state is None else opt_state)
    parallel = DataParallel.create(config.devices)
    parallel.check_batch(batch_size)
    arch_id = space.arch_id(arch)
    run_meta = {"config": config.to_dict(), "space": space.name, **(meta or {})}

    wd = Path(workdir).absolute() if workdir is not None else None
    ckpt, history, start_epoch = None, [], 0
    if wd is not None:
        check_workdir(wd, archfile)
        wd.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(wd, arch_id, config.keep_checkpoints)
        aux = {k: v for k, v in state.params.items() if k != "model"}
        got = ckpt.restore({"params": state.params["model"], "batch_stats": state.batch_stats},
                           {"step": state.step, "opt_state": state.opt_state, "aux": aux},
                           quarantine=True)
        if got is not None:
            model_item, train_item, saved = got
            _check_config(saved.get("config"), config, wd, extend_epochs)
            for key, value in (meta or {}).items():
                if saved.get(key) != value:
                    raise NasInputError(f"resuming a run with other {key} settings "
                                        f"({saved.get(key)!r}); use another --workdir", str(wd), key)
            state = TrainState(train_item["step"], {"model": model_item["params"], **train_item["aux"]},
                               model_item["batch_stats"], train_item["opt_state"])
            start_epoch = int(saved["epoch"])
            history = [r for r in read_json_lines(wd / METRICS_FILE) if r.get("epoch", 0) <= start_epoch]
            write_json_lines(wd / METRICS_FILE, history)
        if not (wd / ARCH_FILE).exists():
            write_arch(wd, archfile)

    train_step = make_train_step(loss_fn, tx) if train_step is None else train_step
    state, consts = parallel.replicate(state), parallel.replicate(consts)
    step_key = jax.random.PRNGKey(config.seed)
    eval_step = make_eval_step(model) if evaluate_model else None
    variables_of = _variables if model_variables is None else model_variables
    writer = _tensorboard(wd)
    bar = _progress(config, start_epoch)
    augment = data.augment_fn()
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            batches = train_batches(data.x_train, data.y_train, batch_size,
                                    epoch_rng(config.seed, epoch), augment)
            totals, step = None, int(state.step)
            first_step, step_losses = step, []
            for batch in prefetch(batches, put=parallel.shard):
                lr = lrs[min(step, len(lrs) - 1)]
                state, m = train_step(state, batch, step_key, lr, consts)
                step += 1
                step_losses.append(m["loss_sum"])
                totals = m if totals is None else jax.tree_util.tree_map(jnp.add, totals, m)
            check_finite(step_losses, epoch + 1, first_step, arch_id)  # before any checkpoint
            hook_metrics = {}
            if arch_step is not None:
                state, hook_metrics = arch_step(state, epoch)
                state = parallel.replicate(state)
            record = {"epoch": epoch + 1, "step": int(state.step), **_epoch_metrics(totals)}
            seconds = time.perf_counter() - t0
            record.update({k: float(v) for k, v in hook_metrics.items()})
            if eval_step is not None:
                val = evaluate(eval_step, parallel.gather(variables_of(state)), data.x_val,
                               data.y_val, config.eval_batch_size)
                record.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
            record.update(lr=float(lrs[max(int(state.step) - 1, 0)]), seconds=round(seconds, 3))
            if epoch_metrics is not None:
                record.update({k: float(v) for k, v in epoch_metrics(state).items()})
            history.append(record)
            if ckpt is not None:  # the epoch's record first: a resume drops records past its
                append_line(wd / METRICS_FILE, json.dumps(record))  # checkpoint, never loses one
                last = epoch + 1 == config.epochs
                if last or (epoch + 1) % config.checkpoint_every == 0:
                    host = parallel.gather(state)
                    ckpt.save(int(state.step), _model_item(host), _train_item(host),
                              dict(run_meta, epoch=epoch + 1))
            if writer is not None:
                for key, value in record.items():
                    if key not in ("epoch", "step"):
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                val=f"{record.get('val_accuracy', float('nan')):.3f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
        test = val = {"accuracy": None, "loss": None}
        if eval_step is not None:
            final = parallel.gather(variables_of(state))
            test = evaluate(eval_step, final, data.x_test, data.y_test, config.eval_batch_size)
            val = evaluate(eval_step, final, data.x_val, data.y_val, config.eval_batch_size)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    result = {
        "test_accuracy": test["accuracy"], "val_accuracy": val["accuracy"],
        "test_loss": test["loss"],
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 3),
        "params": count_params(state.params["model"]), "epochs": config.epochs,
        "steps": int(state.step), "arch_id": arch_id, "space": space.name,
        "devices": parallel.count,
        "data": data.name, "history": history, **(meta or {})}
    if wd is not None and result_file:
        _write_json(wd / result_file, result)
    result["state"] = parallel.gather(state)
    return result


def _variables(state: TrainState) -> dict[str, Any]:
    return {"params": state.params["model"], "batch_stats": state.batch_stats}


def _model_item(state: TrainState) -> dict[str, Any]:
    return {"params": state.params["model"], "batch_stats": state.batch_stats}


def _train_item(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "opt_state": state.opt_state,
            "aux": {k: v for k, v in state.params.items() if k != "model"}}


def _tensorboard(wd: Path | None):
    if wd is None:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=str(wd / "tb"), flush_secs=30)


def _progress(config: TrainConfig, start_epoch: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True)
