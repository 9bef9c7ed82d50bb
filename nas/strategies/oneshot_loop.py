"""The run of the 'paths' one-shot strategies (fbnet, proxyless): a supernet of weight-sharing
paths trained by the one-shot loop (:func:`nas.strategies.oneshot_train.train_oneshot`, held-out
schedule): ``weight_step`` over 80% of the training split (the supernet's weights, AdamW with a
cosine schedule); after ``warmup_epochs``, ``arch_step`` over the held-out 20% after each epoch
(the architecture logits, Adam); ``derive`` and ``distribution`` after every epoch and at the end.
The Gumbel temperature follows ``tau0 * tau_decay ** epoch`` (computed by the strategy from the
epoch it is given).

A run with a work directory writes the trainer's files (``checkpoints/``: model item
{"params": supernet weights, "batch_stats": stem/head statistics}, train item {"step",
"opt_state": {"weights", "arch"}, "aux": {"arch": logits}}; ``metrics.jsonl``, one record per
epoch (1-based): train loss/accuracy of the weight pass, arch-step losses, temperature,
entropies, expected latency; ``arch.json``: a container Arch the checkpoints are keyed by),
``history.jsonl`` (one ``kind: "epoch"`` record per epoch: the
Arch derived after it and its predicted cost, see :mod:`nas.strategies.outputs`), TensorBoard
files under ``tb/``, and at the end ``best_arch.json`` (the derived Arch with its predicted cost
and latency, metrics and final per-label distribution) and ``summary.json`` (the result without
the per-epoch history: arch, distribution, entropy, alpha, ...). Restarted on the same directory
with the same settings it resumes; a rerun with more ``epochs`` (the only setting that may grow)
continues training from the newest checkpoint.

Example:
    >>> result = run_oneshot(space, data, "fbnet", OneShotParams(epochs=8), table, "runs/fb")
    >>> result["arch"], result["predicted_latency_ms"]
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from nas.archfile import ArchFile
from nas.data import Dataset
from nas.errors import NasInputError
from nas.metrics import arch_metrics
from nas.space import Arch, Space
from nas.strategies.oneshot_base import OneShotParams
from nas.strategies.outputs import (BEST_ARCH_FILE, HISTORY_FILE, epoch_record,
                                    write_epoch_record, write_summary)
from nas.strategies.protocol import OneShot, OneShotState
from nas.strategies.registry import entry, make_strategy
from nas.supernet.derive_within import derive_within
from nas.supernet.gates import entropy, probabilities, temperature
from nas.supernet.network import SuperNet
from nas.strategies.oneshot_train import OneShotSchedule, train_oneshot
from nas.training.trainer import TrainConfig


def _run_id(space: Space, name: str, params: OneShotParams, seed: int) -> str:
    body = json.dumps({"space": space.to_dict(), "strategy": name, "seed": seed,
                       "params": params.model_dump(exclude={"progress", "checkpoint_every", "epochs",
                                                            "devices", "derive"})},
                      sort_keys=True, default=str)
    return "oneshot-" + hashlib.sha256(body.encode()).hexdigest()[:12]


def run_oneshot(space: Space, data: Dataset, name: str, params: OneShotParams, table: Any = None,
                workdir: str | os.PathLike | None = None, seed: int = 0,
                net: SuperNet | None = None, *, cost_metric: str = "latency_ms",
                latency: Any = None, bounds: Callable[[Arch], float] | None = None
                ) -> dict[str, Any]:
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
        bounds: ``excess(arch)``, 0 when an Arch is within the user's target and limits (see
            :func:`nas.supernet.derive_within.derive_within`); with ``params.derive ==
            'within_target'`` the final Arch is derived within them. None: the argmax Arch.

    Returns:
        {"strategy", "arch", "arch_id", "cost_metric", "predicted_cost",
        "predicted_latency_ms", "distribution", "entropy", "history", "search_seconds",
        "seed", "params", "alpha", "derivation" (None, or how the Arch was derived within the
        bounds: :meth:`nas.supernet.derive_within.Derivation.to_dict`)}.
    """
    expected = (*space.resolution, space.in_channels)
    if tuple(data.image_shape) != expected:
        raise NasInputError(f"data images are {data.image_shape}, the space {space.name!r} "
                            f"expects {expected}", data.name)
    net = net or SuperNet(space, params.depthwise_impl, pick=params.pick)
    strategy = make_strategy(name, space, params, net=net, table=table)
    if latency is None and cost_metric == "latency_ms":
        latency = table
    predict = _predictor(space, name, table, cost_metric, latency)
    tconf = TrainConfig(epochs=params.epochs, batch_size=params.batch_size,
                        learning_rate=params.weight_lr, weight_decay=params.weight_decay, seed=seed,
                        progress=params.progress, checkpoint_every=params.checkpoint_every,
                        depthwise_impl=params.depthwise_impl, devices=params.devices)
    container = ArchFile(space, space.decode([0] * len(space.labels())),
                         {"strategy": name, "note": "a supernet search; its derived Arch is "
                          "best_arch.json"})
    wd = Path(workdir).absolute() if workdir is not None else None

    def describe(state: OneShotState, epoch: int) -> dict[str, float]:
        tau = float(temperature(epoch, params.tau0, params.tau_decay))
        return _arch_record(strategy, state, tau, table)

    def on_epoch(epoch: int, arch: dict, record: Mapping[str, Any]) -> None:
        if wd is not None:
            write_epoch_record(wd / HISTORY_FILE, predict(epoch, arch, record))

    out = train_oneshot(
        strategy, data, OneShotSchedule(tconf, params.arch_fraction, params.warmup_epochs),
        model=net, container=container, workdir=wd, seed=seed,
        meta={"strategy": name, "run_id": _run_id(space, name, params, seed)},
        describe=describe, on_epoch=on_epoch)
    within = bounds if params.derive == "within_target" else None
    return _finish(space, strategy, params, out, wd, seed, predict, latency, within)


def _arch_record(strategy: OneShot, state: OneShotState, tau: float, table: Any
                 ) -> dict[str, float]:
    """The epoch's architecture metrics: temperature, entropies, expected and derived latency."""
    alpha = state.arch
    record = {"temperature": tau}
    ent = entropy(alpha)
    record["mean_entropy"] = float(np.mean(list(ent.values()))) if ent else 0.0
    record.update({f"entropy/{label}": value for label, value in ent.items()})
    if table is not None:
        record["expected_latency_ms"] = float(table.expected(probabilities(alpha)))
        record["derived_latency_ms"] = float(table.predict(strategy.derive(state)))
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


def _finish(space, strategy, params, out, wd, seed, predict, latency, bounds) -> dict[str, Any]:
    state, history, elapsed = out.state, out.history, out.train_seconds
    name, alpha = strategy.name, state.arch
    arch, derivation = strategy.derive(state), None
    if bounds is not None:
        found = derive_within(space, alpha, bounds)
        arch, derivation = found.arch, found.to_dict(space)
    final = predict(len(history), arch, {})
    result = {"strategy": name, "family": entry(name).family, "arch": arch,
              "arch_id": space.arch_id(arch), "cost_metric": final["cost_metric"],
              "predicted_cost": final["predicted_cost"],
              "predicted_latency_ms": final["predicted_latency_ms"],
              "distribution": strategy.distribution(state), "entropy": entropy(alpha),
              "history": history, "search_seconds": elapsed, "seed": seed, "devices": out.devices,
              "params": params.model_dump(),
              "alpha": {k: np.asarray(v).tolist() for k, v in alpha.items()},
              "derivation": derivation}
    if wd is not None:
        meta = {"source": f"nas search ({name})", "strategy": name,
                "cost_metric": result["cost_metric"], "predicted_cost": result["predicted_cost"],
                "predicted_latency_ms": result["predicted_latency_ms"],
                "metrics": arch_metrics(space, arch), "distribution": result["distribution"],
                "search_seconds": elapsed, "latency_table": getattr(latency, "source", None),
                "derivation": derivation}
        ArchFile(space, arch, meta).save(wd / BEST_ARCH_FILE)
        write_summary(wd, {**{k: v for k, v in result.items() if k != "history"},
                           "workdir": str(wd), "best_arch": str(wd / BEST_ARCH_FILE)})
    return result
