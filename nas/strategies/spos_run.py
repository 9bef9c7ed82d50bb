"""The spos run: a config -> the uniform-sampling supernet trained -> a workdir to score on.

The strategy (parameters, sandwich step, the one-shot protocol) is :mod:`nas.strategies.spos`;
this module resolves a config, trains the superkernel network with the one-shot loop
(:func:`nas.strategies.oneshot_train.train_oneshot`: the weight step on every batch, no
architecture step) and writes what every search writes (:mod:`nas.strategies.outputs`):

* ``best_arch.json``: the largest sub-network (the in-place distillation's teacher; meta: its
  validation / test accuracy on the supernet with recalibrated BatchNorm, and the smallest
  sub-network's);
* ``summary.json``; ``history.jsonl``: one ``kind: "epoch"`` record per epoch, whose metrics
  hold ``val_accuracy`` (the largest sub-network's, as every one-shot record's is its derived
  Arch's) and ``smallest_val_accuracy``, each recalibrated on the same training images
  (:mod:`nas.single_path.scoring`);

plus the trainer's files (``arch.json`` = the largest Arch, orbax checkpoints of the
superkernel's variables in the single_path layout, ``metrics.jsonl``, ``tb/``) and ``child/``
(the largest Arch's weights with its recalibrated statistics, a 'nas train' workdir). The
workdir is what ``evaluation: {mode: supernet, supernet: WORKDIR}`` of a random / evolution /
RL config scores candidates on (:mod:`nas.weight_sharing`). Running again resumes.

Example:
    >>> summary = run_spos(load_config("experiments/digits_spos.yaml"), "runs/spos")
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

from nas.archfile import ArchFile
from nas.data import load_data
from nas.runs.config import train_config
from nas.runs.workdir import claim_workdir
from nas.single_path.export import export_child
from nas.single_path.network import SinglePathNetwork
from nas.single_path.plan import max_arch, space_plan
from nas.single_path.scoring import SubnetEvaluator
from nas.single_path.subnets import bottom_levels, network_gates, top_levels
from nas.space import resolve_space
from nas.strategies.oneshot_train import OneShotSchedule, train_oneshot
from nas.strategies.outputs import (BEST_ARCH_FILE, HISTORY_FILE, epoch_record,
                                    write_epoch_record, write_summary)
from nas.strategies.protocol import OneShotState
from nas.strategies.registry import entry
from nas.strategies.single_path_run import CHILD_DIR, superkernel_variables, write_child
from nas.strategies.spos import SposParams, spos_space_check
from nas.training.evaluate import CandidateEvaluator
from nas.training.recalibrate import calibration_batch

NAME = "spos"
#: Training images each sub-network's BatchNorm statistics are recomputed from (per-epoch
#: monitoring and the outputs; scoring candidates uses ``evaluation.calibration_images``).
CALIBRATION_IMAGES = 512


@dataclasses.dataclass
class SposSetup:
    """Everything a spos run needs, resolved from a config.

    Attributes:
        space, data, params (SposParams), train (TrainConfig), metric (the objective's cost
        metric, reported for the largest Arch), latency_table (absolute path or None).
    """

    space: Any
    data: Any
    params: SposParams
    train: Any
    metric: str
    latency_table: str | None


def setup_from_config(loaded: Any) -> SposSetup:
    """Resolves space, data and trainer settings of a loaded config (strategy spos).

    Raises:
        NasInputError: a bad setting (a space the superkernel cannot nest, bad params).
    """
    config = loaded.config
    params = entry(NAME).parse_params(config.strategy.params, loaded.source)
    space = resolve_space(config.space, loaded.source)
    spos_space_check(space)
    data = load_data(config.data, space, seed=config.seed)
    return SposSetup(space, data, params, train_config(config), config.objective.metric,
                     loaded.latency_table)


def train_supernet(setup: SposSetup, workdir: str | os.PathLike | None, progress: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    """Trains the supernet (or resumes it) and scores its largest and smallest sub-networks.

    Args:
        setup: the resolved settings.
        workdir: output/resume folder, or None (nothing written).
        progress: show the trainer's progress bar.
        seed: seed of initialization, batches, sampling and the calibration images.

    Returns:
        {"arch" (the largest), "arch_id", "val_accuracy", "test_accuracy" (the largest
        sub-network's), "smallest_val_accuracy", "smallest_test_accuracy", "costs" (the
        largest's cost metrics), "search_seconds", "train_seconds", "devices", "history",
        "variables" (the superkernel's), "child" (the largest's exported (arch, variables))}.
    """
    space, data = setup.space, setup.data
    train = dataclasses.replace(setup.train, progress=progress)
    net = SinglePathNetwork(space, depthwise_impl=train.depthwise_impl)
    strategy = entry(NAME).factory(space, setup.params, train, net=net)
    plans = space_plan(space)
    largest = max_arch(space, plans)
    scorer = SubnetEvaluator(net)
    x_cal = calibration_batch(data.x_train, CALIBRATION_IMAGES, seed)
    ends = {"largest": network_gates(plans, top_levels(plans)),
            "smallest": network_gates(plans, bottom_levels(plans))}
    costs = CandidateEvaluator.for_space(space, latency_table=setup.latency_table).costs(largest)

    def accuracy(variables: Mapping[str, Any], which: str, x: Any, y: Any) -> float | None:
        if x is None or not len(x):
            return None
        return scorer.accuracy(variables, ends[which], x_cal, x, y, train.eval_batch_size)

    def describe(state: OneShotState, epoch: int) -> dict[str, float]:
        del epoch
        variables = superkernel_variables(state)
        scores = {"val_accuracy": accuracy(variables, "largest", data.x_val, data.y_val),
                  "smallest_val_accuracy": accuracy(variables, "smallest", data.x_val, data.y_val)}
        return {name: value for name, value in scores.items() if value is not None}

    wd = Path(workdir).absolute() if workdir is not None else None

    def on_epoch(epoch: int, arch: dict, record: Mapping[str, Any]) -> None:
        if wd is not None:
            write_epoch_record(wd / HISTORY_FILE, epoch_record(
                NAME, space, epoch, arch, record, predicted_cost=costs.get(setup.metric),
                cost_metric=setup.metric, predicted_latency_ms=costs.get("latency_ms")))

    container = ArchFile(space, largest, {"strategy": NAME, "note": "the superkernel's largest Arch"})
    meta = {"strategy": NAME, **setup.params.model_dump()}
    t0 = time.perf_counter()
    out = train_oneshot(strategy, data, OneShotSchedule(train), model=net, container=container,
                        workdir=wd, seed=seed, meta=meta, describe=describe, on_epoch=on_epoch)
    final = superkernel_variables(out.state)
    scores = {f"{which}_{split}": accuracy(final, which, x, y) for which in ends
              for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test))}
    top_stats = scorer.recalibrate(final, ends["largest"], x_cal)
    child = export_child(space, {"params": final["params"], "batch_stats": top_stats},
                         top_levels(plans))
    return {"arch": largest, "arch_id": space.arch_id(largest),
            "val_accuracy": scores["largest_val"], "test_accuracy": scores["largest_test"],
            "smallest_val_accuracy": scores["smallest_val"],
            "smallest_test_accuracy": scores["smallest_test"], "costs": costs,
            "search_seconds": round(time.perf_counter() - t0, 3),
            "train_seconds": out.train_seconds, "devices": out.devices, "history": out.history,
            "variables": final, "child": child}


def run_spos(loaded: Any, workdir: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Runs (or resumes) ``strategy: spos`` of a loaded config (the ``nas search`` entry).

    Args:
        loaded: :func:`nas.runs.config.load_config`'s result.
        workdir: output folder.
        progress: show a progress bar.

    Returns:
        The summary dict (also in ``workdir/summary.json``).
    """
    setup = setup_from_config(loaded)
    config = loaded.config
    with claim_workdir(workdir, config):  # flock + search.json, held for the training
        out = train_supernet(setup, workdir, progress=progress, seed=config.seed)
        wd = Path(workdir).absolute()
        write_child(wd, setup.space, out["child"], "spos export (largest sub-network)")
        accuracies = {k: out[k] for k in ("val_accuracy", "test_accuracy",
                                          "smallest_val_accuracy", "smallest_test_accuracy")}
        predicted = out["costs"].get(setup.metric)
        ArchFile(setup.space, out["arch"], {
            "strategy": NAME, "arch_id": out["arch_id"], **accuracies,
            "cost_metric": setup.metric, "predicted_cost": predicted,
            "source": f"nas search (spos), {wd}",
            "note": "the supernet's largest sub-network (its in-place distillation teacher), "
                    "scored on the supernet with recalibrated BatchNorm, not retrained; search "
                    f"its sub-networks with evaluation: {{mode: supernet, supernet: {wd}}}"},
        ).save(wd / BEST_ARCH_FILE)
        target = config.objective.target
        summary = {
            "strategy": NAME, "family": entry(NAME).family, "workdir": str(wd),
            "best_arch": str(wd / BEST_ARCH_FILE), "arch_id": out["arch_id"], "arch": out["arch"],
            "cost_metric": setup.metric, "predicted_cost": predicted,
            "predicted_latency_ms": out["costs"].get("latency_ms"), "target": target,
            "target_ms": target if setup.metric == "latency_ms" else None,
            "meets_target": None if target is None or predicted is None else predicted <= target,
            **accuracies, "search_seconds": out["search_seconds"],
            "train_seconds": out["train_seconds"], "devices": out["devices"],
            "subnets_per_step": setup.params.subnets_per_step, "child": str(wd / CHILD_DIR),
            "scoring": {"mode": "supernet", "supernet": str(wd)}}
        write_summary(wd, summary)
    return summary
