"""The Single-Path NAS run: a config -> the superkernel trained -> the derived Arch and outputs.

The strategy (parameters, loss, the one-shot protocol) is :mod:`nas.strategies.single_path`;
this module resolves a config into a :class:`SinglePathSetup`, trains the superkernel network
with the one-shot loop (:func:`nas.strategies.oneshot_train.train_oneshot`, joint schedule: the
protocol's ``weight_step`` and ``arch_step`` taken from the same state on each batch, so weights
and thresholds learn together) and writes the outputs every search writes
(:mod:`nas.strategies.outputs`):

* ``best_arch.json``: the derived Arch (meta: cost, predicted latency, target, feasibility,
  supernet accuracy, thresholds and gates);
* ``summary.json``: the summary ``nas search --json`` prints;
* ``history.jsonl``: one ``kind: "epoch"`` record per epoch (the Arch the gates select after
  it, its cost and predicted latency, the epoch's metrics);

plus the trainer's files (``arch.json`` = the superkernel's largest Arch, orbax checkpoints,
``metrics.jsonl``, ``tb/``) and ``child/`` (the derived Arch's weights cut out of the
superkernel, a 'nas train' work directory ``load_trained`` reads). Running again on the same
directory resumes.

Example:
    >>> summary = run_single_path(load_config("experiments/digits_single_path.yaml"), "runs/sp")
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from nas.archfile import ArchFile
from nas.training.checkpoint import Checkpointer, write_arch
from nas.runs.config import train_config
from nas.data import load_data
from nas.latency.table import LatencyTable
from nas.single_path.cost import SlotCosts
from nas.single_path.export import (derive_levels, export_child, gate_values,
                                    network_gate_values)
from nas.single_path.network import SinglePathNetwork
from nas.single_path.plan import max_arch, space_plan
from nas.space import resolve_space
from nas.strategies.outputs import (BEST_ARCH_FILE, HISTORY_FILE, epoch_record,
                                    write_epoch_record, write_summary)
from nas.strategies.registry import entry
from nas.strategies.protocol import OneShotState
from nas.strategies.oneshot_train import OneShotSchedule, train_oneshot
from nas.strategies.single_path import (SinglePathParams, check_settings, decision_metrics,
                                        effective_params, merge_thresholds,
                                        target_in_cost_units)
from nas.runs.workdir import claim_workdir

CHILD_DIR = "child"
NAME = "single_path"


@dataclasses.dataclass
class SinglePathSetup:
    """Everything a single-path run needs, resolved from a config.

    Attributes:
        space, data, table (LatencyTable or None), costs (SlotCosts), params, target (in the
        cost's unit, or None), train (TrainConfig).
    """

    space: Any
    data: Any
    table: Any
    costs: Any
    params: SinglePathParams
    target: float | None
    train: Any


def setup_from_config(loaded: Any) -> SinglePathSetup:
    """Resolves space, data, latency table, costs and trainer settings of a loaded config.

    Args:
        loaded: :func:`nas.runs.config.load_config`'s result (strategy single_path).

    Returns:
        The SinglePathSetup.

    Raises:
        NasInputError: a bad setting (space not nestable, cost latency without a table...).
    """
    config = loaded.config
    params = effective_params(entry(NAME).parse_params(config.strategy.params, loaded.source),
                              config.objective.metric)
    space = resolve_space(config.space, loaded.source)
    space_plan(space)
    table = LatencyTable.load(loaded.latency_table, space) if loaded.latency_table else None
    objective = config.objective
    train = train_config(config)
    check_settings(params, objective, table is not None, train.epochs, loaded.source)
    if params.cost == "latency":
        costs = SlotCosts.from_table(space, table)
    else:
        costs = SlotCosts.from_metric(space, params.cost)
    data = load_data(config.data, space, seed=config.seed)
    return SinglePathSetup(space, data, table, costs, params,
                           target_in_cost_units(params, objective), train)


def cost_metric(setup: SinglePathSetup) -> str:
    """Returns the objective metric name of the setup's cost ('latency_ms' for cost latency)."""
    return "latency_ms" if setup.params.cost == "latency" else setup.params.cost


def search(setup: SinglePathSetup, workdir: str | os.PathLike | None, progress: bool = False,
           seed: int = 0) -> dict[str, Any]:
    """Trains the superkernel network and derives the Arch.

    Args:
        setup: the resolved settings.
        workdir: output/resume folder, or None (nothing written).
        progress: show the trainer's progress bar.
        seed: initialization seed.

    Returns:
        {"arch", "arch_id", "cost", "predicted_latency_ms", "target", "feasible",
        "val_accuracy", "test_accuracy" (of the superkernel with its gates), "search_seconds",
        "levels", "gates", "variables", "history"}.
    """
    space, train = setup.space, dataclasses.replace(setup.train, progress=progress)
    net = SinglePathNetwork(space, depthwise_impl=train.depthwise_impl)
    steps_per_epoch = len(setup.data.y_train) // min(train.batch_size, len(setup.data.y_train))
    strategy = entry(NAME).factory(
        space, setup.params, setup.costs, setup.target, train, net=net,
        warmup_steps=int(round(setup.params.warmup_epochs * steps_per_epoch)))
    container = ArchFile(space, max_arch(space, space_plan(space)),
                         {"strategy": NAME, "note": "the superkernel's largest Arch"})
    meta = {"strategy": NAME, "lam": setup.params.lam, "cost": setup.params.cost,
            "margin": setup.params.margin, "target": setup.target,
            "warmup_epochs": setup.params.warmup_epochs}
    wd = Path(workdir).absolute() if workdir is not None else None

    def describe(state: OneShotState, epoch: int) -> dict[str, float]:
        del epoch
        return decision_metrics(space, setup.costs, merge_thresholds(state.weights, state.arch),
                                state.stats)

    def on_epoch(epoch: int, arch: dict, record: Mapping[str, Any]) -> None:
        if wd is not None:
            write_epoch_record(wd / HISTORY_FILE, epoch_record(
                NAME, space, epoch, arch, record, predicted_cost=record.get("cost"),
                cost_metric=cost_metric(setup),
                predicted_latency_ms=setup.table.predict(arch) if setup.table is not None else None))

    t0 = time.perf_counter()
    out = train_oneshot(strategy, setup.data, OneShotSchedule(train, evaluate=True), model=net,
                        container=container, workdir=wd, seed=seed, meta=meta, describe=describe,
                        on_epoch=on_epoch, model_variables=superkernel_variables)
    seconds = time.perf_counter() - t0
    final = superkernel_variables(out.state)
    arch = strategy.derive(out.state)
    gates = network_gate_values(space, final["params"], final["batch_stats"])
    cost = float(setup.costs.expected([gates[plan.prefix] for plan in space_plan(space)]))
    predicted = setup.table.predict(arch) if setup.table is not None else None
    result = {
        "arch": arch, "arch_id": space.arch_id(arch), "cost": cost, "cost_unit": setup.costs.unit,
        "predicted_latency_ms": predicted, "target": setup.target,
        "feasible": None if setup.target is None or predicted is None else predicted <= setup.target,
        "val_accuracy": out.val_accuracy, "test_accuracy": out.test_accuracy,
        "search_seconds": round(seconds, 3), "train_seconds": out.train_seconds,
        "levels": derive_levels(space, final["params"], final["batch_stats"]),
        "gates": gate_values(space, final["params"], final["batch_stats"]),
        "history": out.history, "variables": final, "lam": setup.params.lam,
        "devices": out.devices,
    }
    if wd is not None:
        _write_outputs(wd, space, result, export_child(space, final))
    return result


def superkernel_variables(state: OneShotState) -> dict[str, Any]:
    """The superkernel network's variables of a single-path state (weights and thresholds
    merged back into one params tree)."""
    return {"params": merge_thresholds(state.weights, state.arch), "batch_stats": state.stats}


def _write_outputs(wd: Path, space: Any, out: Mapping[str, Any], child: tuple) -> None:
    """Writes best_arch.json and child/ (summary.json is written by :func:`run_single_path`)."""
    meta = {k: out[k] for k in ("arch_id", "cost", "cost_unit", "predicted_latency_ms", "target",
                                "feasible", "val_accuracy", "test_accuracy", "search_seconds",
                                "levels", "gates", "lam")}
    meta["source"] = f"nas search (single_path), {wd}"
    meta["strategy"] = NAME
    meta["note"] = "val/test accuracy: the superkernel network with these gates (not retrained)"
    ArchFile(space, out["arch"], meta).save(wd / BEST_ARCH_FILE)
    write_child(wd, space, child, "single_path export")


def write_child(wd: Path, space: Any, child: tuple, source: str) -> Path:
    """Writes ``wd/child/``: an Arch's weights cut from the superkernel, as a 'nas train' work
    directory (arch.json + an orbax checkpoint) that ``load_trained`` reads.

    Args:
        wd: the search's workdir.
        space: the Space.
        child: (arch, {"params", "batch_stats"}) of :func:`nas.single_path.export.export_child`.
        source: what cut it (stored in the checkpoint's metadata).

    Returns:
        The child folder.
    """
    arch, variables = child
    child_dir = wd / CHILD_DIR
    if child_dir.exists():
        shutil.rmtree(child_dir)
    child_dir.mkdir(parents=True)
    write_arch(child_dir, ArchFile(space, arch, {"source": f"cut from the superkernel in {wd}"}))
    ckpt = Checkpointer(child_dir, space.arch_id(arch))
    try:
        ckpt.save(0, jax.device_get(variables), {"step": np.zeros((), np.int32)},
                  {"epoch": 0, "source": source})
    finally:
        ckpt.close()
    return child_dir


def run_single_path(loaded: Any, workdir: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Runs (or resumes) ``strategy: single_path`` of a loaded config (the ``nas search`` entry).

    Args:
        loaded: :func:`nas.runs.config.load_config`'s result.
        workdir: output folder.
        progress: show a progress bar.

    Returns:
        The summary dict (also in ``workdir/summary.json``).
    """
    setup = setup_from_config(loaded)
    with claim_workdir(workdir, loaded.config):  # flock + search.json, held for the search
        out = search(setup, workdir, progress=progress, seed=loaded.config.seed)
        wd = Path(workdir).absolute()
        summary = {k: v for k, v in out.items() if k not in ("variables", "history", "levels", "gates")}
        summary.update(strategy=NAME, family=entry(NAME).family, workdir=str(wd),
                       best_arch=str(wd / BEST_ARCH_FILE), cost_metric=cost_metric(setup),
                       predicted_cost=out["cost"],
                       target_ms=setup.target if setup.costs.unit == "ms" else None,
                       meets_target=out["feasible"], child=str(wd / CHILD_DIR))
        write_summary(wd, summary)
    return summary
