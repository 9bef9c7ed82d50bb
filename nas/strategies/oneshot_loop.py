"""The one-shot search loop: alternate weight and architecture training of a supernet, derive.

Per epoch: a weight pass over 80% of the training split (the supernet's weights, AdamW with a
cosine schedule), then, after ``warmup_epochs``, an arch pass over the held-out 20% (the
architecture logits, Adam). The Gumbel temperature follows ``tau0 * tau_decay ** epoch``.

A run with a work directory writes ``checkpoints/`` (orbax: weights, both optimizer states and
the logits; resumed from the newest), ``metrics.jsonl`` (one record per epoch: losses, expected
latency, per-label entropy), ``history.jsonl`` (one ``kind: "epoch"`` record per epoch: the
Arch derived after it and its predicted cost, see :mod:`nas.strategies.outputs`), TensorBoard
files under ``tb/``, and at the end ``best_arch.json`` (the derived Arch with its predicted cost
and latency, metrics and final per-label distribution) and ``summary.json`` (the result without
the per-epoch history: arch, distribution, entropy, alpha, ...). Restarted on the same directory
with the same settings it resumes.

Example:
    >>> result = run_oneshot(space, data, "fbnet", OneShotParams(epochs=8), table, "runs/fb")
    >>> result["arch"], result["predicted_latency_ms"]
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas.archfile import ArchFile
from nas.checkpoint import Checkpointer, read_json_lines, write_json_lines
from nas.data import Dataset, epoch_rng, stratified_split, train_batches
from nas.errors import NasInputError
from nas.metrics import arch_metrics
from nas.space import Space
from nas.strategies.oneshot_base import OneShotParams, OneShotStrategy
from nas.strategies.outputs import (BEST_ARCH_FILE, HISTORY_FILE, epoch_record,
                                    write_epoch_record, write_summary)
from nas.strategies.registry import entry, make_strategy
from nas.supernet.gates import (derive, distribution, entropy, init_arch_params, probabilities,
                                temperature)
from nas.supernet.network import SuperNet, merge_trainable, trainable
from nas.train import TrainConfig, make_optimizer, make_schedule

METRICS_FILE = "metrics.jsonl"


def _run_id(space: Space, name: str, params: OneShotParams, seed: int) -> str:
    body = json.dumps({"space": space.to_dict(), "strategy": name, "seed": seed,
                       "params": params.model_dump(exclude={"progress", "checkpoint_every", "epochs"})},
                      sort_keys=True, default=str)
    return "oneshot-" + hashlib.sha256(body.encode()).hexdigest()[:12]


def make_steps(strategy: OneShotStrategy, tx: Any, arch_tx: Any) -> tuple[Any, Any]:
    """Returns the jitted ``(weight_step, arch_step)`` of a one-shot strategy.

    Args:
        strategy: the OneShotStrategy (:func:`nas.strategies.registry.make_strategy`).
        tx: the weights' optax transform (its updates are scaled by the step's learning rate).
        arch_tx: the architecture logits' optax optimizer.

    Returns:
        ``weight_step(trained, opt_state, full, alpha, batch, key, lr, tau) -> (trained,
        opt_state, metrics)`` and ``arch_step(alpha, arch_state, full, batch, key, tau) ->
        (alpha, arch_state, metrics)``.
    """
    def weight_step(trained, opt_state, full, alpha, batch, key, lr, tau):
        grad_fn = jax.value_and_grad(strategy.weight_loss, has_aux=True)
        (ce, acc), grads = grad_fn(trained, full, alpha, batch, key, tau)
        updates, opt_state = tx.update(grads, opt_state, trained)
        trained = jax.tree_util.tree_map(lambda p, u: p - lr * u, trained, updates)
        return trained, opt_state, {"weight_ce": ce, "weight_acc": acc}

    def arch_step(alpha, arch_state, full, batch, key, tau):
        grads, metrics, aux = strategy.arch_grads(alpha, full, batch, key, tau)
        updates, arch_state = arch_tx.update(grads, arch_state, alpha)
        new = optax.apply_updates(alpha, updates)
        return strategy.post_update(new, alpha, aux), arch_state, metrics

    return jax.jit(weight_step), jax.jit(arch_step)


def _mean(records: list[dict]) -> dict[str, float]:
    if not records:
        return {}
    return {k: float(np.mean([float(r[k]) for r in records])) for k in records[0]}


def run_oneshot(space: Space, data: Dataset, name: str, params: OneShotParams, table: Any = None,
                workdir: str | os.PathLike | None = None, seed: int = 0,
                net: SuperNet | None = None, *, cost_metric: str = "latency_ms",
                latency: Any = None) -> dict[str, Any]:
    """Runs a one-shot search and derives its Arch.

    Args:
        space: the Space.
        data: the Dataset (its training split is divided 80/20 for weights/arch).
        name: 'fbnet' or 'proxyless'.
        params: search parameters.
        table: LatencyTable of the space (None: no latency term; objective must allow it).
        workdir: output and resume directory (None: nothing written).
        seed: seed of initialization, splits, batches and sampling.
        net: a prebuilt supernet (default: ``SuperNet(space)``).
        cost_metric: the metric `table` predicts ('latency_ms', or a cost table's metric such
            as 'params').
        latency: a LatencyTable for the predicted latency when `table` is a cost table.

    Returns:
        {"strategy", "arch", "arch_id", "cost_metric", "predicted_cost",
        "predicted_latency_ms", "distribution", "entropy", "history", "search_seconds",
        "seed", "params", "alpha"}.
    """
    expected = (*space.resolution, space.in_channels)
    if tuple(data.image_shape) != expected:
        raise NasInputError(f"data images are {data.image_shape}, the space {space.name!r} "
                            f"expects {expected}", data.name)
    net = net or SuperNet(space, params.depthwise_impl)
    strategy = make_strategy(name, space, params, net=net, table=table)
    if latency is None and cost_metric == "latency_ms":
        latency = table
    predict = _predictor(space, name, table, cost_metric, latency)
    w_idx, a_idx = stratified_split(data.y_train, (params.arch_fraction,), seed)
    xw, yw, xa, ya = data.x_train[w_idx], data.y_train[w_idx], data.x_train[a_idx], data.y_train[a_idx]
    batch = min(params.batch_size, len(yw), len(ya))
    steps_per_epoch = len(yw) // batch
    tconf = TrainConfig(epochs=params.epochs, batch_size=batch, learning_rate=params.weight_lr,
                        weight_decay=params.weight_decay, seed=seed)
    tx, arch_tx = make_optimizer(tconf), optax.adam(params.arch_lr)
    lrs = np.asarray(make_schedule(tconf, steps_per_epoch)(
        jnp.arange(params.epochs * steps_per_epoch + 1)), np.float32)

    full = net.init(jax.random.PRNGKey(seed))
    trained = trainable(full)
    opt_state = tx.init(trained)
    alpha = init_arch_params(space)
    arch_state = arch_tx.init(alpha)
    step = 0
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0

    wd = Path(workdir).absolute() if workdir is not None else None
    ckpt = None
    if wd is not None:
        wd.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(wd, _run_id(space, name, params, seed))
        got = ckpt.restore(trained, {"step": jnp.zeros((), jnp.int32), "opt_state": opt_state,
                                     "aux": {"alpha": alpha, "arch_state": arch_state}},
                           quarantine=True)
        if got is not None:
            trained, train_item, meta = got
            opt_state, step = train_item["opt_state"], int(train_item["step"])
            alpha, arch_state = train_item["aux"]["alpha"], train_item["aux"]["arch_state"]
            start_epoch, elapsed = int(meta["epoch"]) + 1, float(meta.get("search_seconds", 0.0))
            history = [r for r in read_json_lines(wd / METRICS_FILE) if r["epoch"] < start_epoch] \
                if (wd / METRICS_FILE).exists() else []

    weight_step, arch_step = make_steps(strategy, tx, arch_tx)
    base = jax.random.PRNGKey(seed + 1)
    writer = _tensorboard(wd)
    bar = _progress(params, start_epoch)
    try:
        for epoch in range(start_epoch, params.epochs):
            t0 = time.time()
            tau = jnp.float32(temperature(epoch, params.tau0, params.tau_decay))
            w_metrics, a_metrics = [], []
            for b in train_batches(xw, yw, batch, epoch_rng(seed, epoch, 0)):
                key = jax.random.fold_in(base, 2 * step)
                trained, opt_state, m = weight_step(trained, opt_state, full, alpha, b, key,
                                                    jnp.float32(lrs[step]), tau)
                w_metrics.append(m)
                step += 1
            full = merge_trainable(full, trained)
            if epoch >= params.warmup_epochs:
                for i, b in enumerate(train_batches(xa, ya, batch, epoch_rng(seed, epoch, 1))):
                    key = jax.random.fold_in(base, 2 * (step + i) + 1)
                    alpha, arch_state, m = arch_step(alpha, arch_state, full, b, key, tau)
                    a_metrics.append(m)
            elapsed += time.time() - t0
            record = _epoch_record(space, epoch, float(tau), alpha, table, w_metrics, a_metrics, elapsed)
            history.append(record)
            _log(writer, record)
            if wd is not None:
                write_json_lines(wd / METRICS_FILE, history)
                write_epoch_record(wd / HISTORY_FILE, predict(epoch + 1, derive(space, alpha), record))
                if (epoch + 1) % params.checkpoint_every == 0 or epoch + 1 == params.epochs:
                    ckpt.save(step, trained, {"step": jnp.asarray(step, jnp.int32),
                                              "opt_state": opt_state,
                                              "aux": {"alpha": alpha, "arch_state": arch_state}},
                              {"epoch": epoch, "search_seconds": elapsed, "strategy": name})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=round(record.get("arch_loss", record["weight_ce"]), 3),
                                lat=record.get("expected_latency_ms"))
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    return _finish(space, name, params, alpha, history, elapsed, wd, seed, predict, latency)


def _epoch_record(space, epoch, tau, alpha, table, w_metrics, a_metrics, elapsed) -> dict:
    record = {"epoch": epoch, "temperature": tau, **_mean(w_metrics), **_mean(a_metrics),
              "search_seconds": elapsed}
    ent = entropy(alpha)
    record["mean_entropy"] = float(np.mean(list(ent.values()))) if ent else 0.0
    record["entropy"] = ent
    if table is not None:
        record["expected_latency_ms"] = float(table.expected(probabilities(alpha)))
        record["derived_latency_ms"] = float(table.predict(derive(space, alpha)))
    return record


def _predictor(space: Space, name: str, table: Any, cost_metric: str, latency: Any):
    """Returns ``predict(epoch, arch, metrics) -> epoch record`` with the Arch's predicted cost
    (from `table`, in `cost_metric` units) and latency (from `latency`)."""

    def predict(epoch: int, arch: dict, metrics: Mapping[str, Any]) -> dict:
        return epoch_record(
            name, space, epoch, arch, metrics, cost_metric=cost_metric,
            predicted_cost=float(table.predict(arch)) if table is not None else None,
            predicted_latency_ms=float(latency.predict(arch)) if latency is not None else None)

    return predict


def _finish(space, name, params, alpha, history, elapsed, wd, seed, predict,
            latency) -> dict[str, Any]:
    arch = derive(space, alpha)
    final = predict(len(history), arch, {})
    result = {"strategy": name, "family": entry(name).family, "arch": arch,
              "arch_id": space.arch_id(arch), "cost_metric": final["cost_metric"],
              "predicted_cost": final["predicted_cost"],
              "predicted_latency_ms": final["predicted_latency_ms"],
              "distribution": distribution(space, alpha), "entropy": entropy(alpha),
              "history": history, "search_seconds": elapsed, "seed": seed,
              "params": params.model_dump(),
              "alpha": {k: np.asarray(v).tolist() for k, v in alpha.items()}}
    if wd is not None:
        meta = {"source": f"nas search ({name})", "strategy": name,
                "cost_metric": result["cost_metric"], "predicted_cost": result["predicted_cost"],
                "predicted_latency_ms": result["predicted_latency_ms"],
                "metrics": arch_metrics(space, arch), "distribution": result["distribution"],
                "search_seconds": elapsed, "latency_table": getattr(latency, "source", None)}
        ArchFile(space, arch, meta).save(wd / BEST_ARCH_FILE)
        write_summary(wd, {**{k: v for k, v in result.items() if k != "history"},
                           "workdir": str(wd), "best_arch": str(wd / BEST_ARCH_FILE)})
    return result


def _tensorboard(wd: Path | None):
    if wd is None:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=str(wd / "tb"), flush_secs=30)


def _log(writer, record: Mapping[str, Any]) -> None:
    if writer is None:
        return
    epoch = record["epoch"]
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "epoch":
            writer.add_scalar(f"search/{key}", value, epoch)
    for label, value in record["entropy"].items():
        writer.add_scalar(f"entropy/{label}", value, epoch)


def _progress(params: OneShotParams, start_epoch: int):
    if not params.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=params.epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True)
