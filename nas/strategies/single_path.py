"""Single-Path NAS (Stamoulis et al. 2019) as a search strategy: ``strategy: single_path``.

One superkernel network (:mod:`nas.single_path`) is trained once; its weights and its
thresholds are learned together on the training split with::

    loss = CE + lam * log(LAT)                          (no target)
    loss = CE + lam * max(0, log(LAT / (T * (1 - margin))))     (objective.target T set)

where LAT is the cost of the gates' Arch computed from the LatencyTable (or from a per-layer
metric such as BOPs) as a function of the relaxed indicators (:mod:`nas.single_path.cost`).
With a target, the penalty vanishes once the selected Arch is ``margin`` below T, so the search
spends the rest of its budget on accuracy, as the paper's tuned lambda does. The weights train
with the config's optimizer; the thresholds stay fixed for ``warmup_epochs`` and then follow their
own rule (:mod:`nas.single_path.threshold_opt`: momentum over the RMS of all threshold
gradients), so gates flip one after another, the cheapest trade first, instead of all at once.

Outputs in the work directory: the trainer's files (``arch.json`` = the superkernel's largest
Arch, orbax checkpoints, ``metrics.jsonl`` with per-epoch decisions and cost, TensorBoard
``tb/``, ``result.json``), then ``best_arch.json`` (the derived Arch; meta: predicted latency,
target, feasibility, supernet accuracy, thresholds and gates) and ``child/`` (the derived
Arch's weights cut out of the superkernel, a 'nas train' work directory ``load_trained`` reads).
Running again on the same directory resumes.

Example:
    >>> result = run_single_path(load_config("experiments/digits_single_path.yaml"), "runs/sp")
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pydantic

from nas.archfile import ArchFile
from nas.errors import NasInputError
from nas.space import resolve_space

BEST_FILE = "best_arch.json"
CHILD_DIR = "child"
SUMMARY_FILE = "summary.json"


class SinglePathParams(pydantic.BaseModel):
    """``strategy.params`` of single_path.

    Attributes:
        lam: weight of the log-cost term (0 = accuracy only).
        cost: 'latency' (the config's latency_table) or a per-layer metric of nas.metrics
            ('macs', 'bops', 'size_bits', 'energy_pj', 'params').
        margin: with a target T, the penalty stops at T * (1 - margin).
        warmup_epochs: epochs during which only the weights train (thresholds fixed, every gate
            on), so the gates then see a trained network's accuracy (fractional allowed).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    lam: float = pydantic.Field(1.0, ge=0)
    cost: Literal["latency", "macs", "bops", "size_bits", "energy_pj", "params"] = "latency"
    margin: float = pydantic.Field(0.05, ge=0, lt=1)
    warmup_epochs: float = pydantic.Field(0.0, ge=0)


def parse_params(params: Mapping[str, Any] | None, source: str | None = None) -> SinglePathParams:
    """Validates ``strategy.params``.

    Raises:
        NasInputError: unknown field or bad value (names ``strategy.params.FIELD``).
    """
    try:
        return SinglePathParams.model_validate(dict(params or {}))
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        field = "strategy.params" + (f".{loc}" if loc else "")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed fields: {sorted(SinglePathParams.model_fields)}"
        else:
            msg = f"{err.get('input')!r} is not allowed; {err['msg'].lower()}"
        raise NasInputError(msg, source, field) from None


@dataclasses.dataclass
class SinglePathSetup:
    """Everything a single-path run needs, resolved from a config.

    Attributes:
        space, data, table (LatencyTable or None), costs (SlotCosts), params, target (in the
        cost's unit, or None), train (TrainConfig), seed.
    """

    space: Any
    data: Any
    table: Any
    costs: Any
    params: SinglePathParams
    target: float | None
    train: Any


def penalty(cost: jax.Array, lam: Any, target: float | None, margin: float) -> jax.Array:
    """Returns the cost term of the loss (see the module docstring).

    Args:
        cost: the relaxed cost.
        lam: the weight (a traced scalar, so runs with other weights share one compiled step).
        target: T in the cost's unit, or None.
        margin: the penalty stops at T * (1 - margin).
    """
    if target is None:
        return lam * jnp.log(cost)
    return lam * jax.nn.relu(jnp.log(cost / (target * (1.0 - margin))))


def make_loss(net: Any, space: Any, costs: Any, params: SinglePathParams, target: float | None,
              label_smoothing: float = 0.0):
    """Returns ``loss_fn(params, batch_stats, batch, rng, consts)`` of the single-path search.

    ``consts["lam"]`` is the cost weight (an array argument of the compiled step).

    Metrics summed per epoch: loss_sum (of the cross-entropy), correct, count, cost_sum.
    """
    from nas.single_path.gates import slot_gates
    from nas.single_path.plan import space_plan
    from nas.train import batch_metrics, cross_entropy

    plans = space_plan(space)

    def loss_fn(p, batch_stats, batch, rng, consts=None):
        gates = {plan.prefix: slot_gates(plan, p["model"][plan.prefix]) for plan in plans}
        logits, updates = net.apply({"params": p["model"], "batch_stats": batch_stats}, batch["x"],
                                    train=True, gates=gates, mutable=["batch_stats"],
                                    rngs={"dropout": rng})
        ce = cross_entropy(logits, batch["y"], batch["mask"], label_smoothing)
        cost = costs.expected([gates[plan.prefix] for plan in plans])
        loss = ce + penalty(cost, consts["lam"], target, params.margin)
        return loss, (updates.get("batch_stats", batch_stats),
                      batch_metrics(logits, batch["y"], batch["mask"], ce))

    return loss_fn


def decision_metrics(space: Any, costs: Any, model_params: Mapping[str, Any]) -> dict[str, float]:
    """Returns the per-epoch log values: the cost and every decision of the gates' Arch.

    Decisions are logged as numbers: kernel, expand, width, bits_w, rank (1 = full), se and
    op (1 = mbconv / the layer kept, 0 = dwsep / skip).
    """
    from nas.single_path.export import derive_arch
    from nas.single_path.gates import slot_gates
    from nas.single_path.plan import space_plan

    gates = [slot_gates(plan, model_params[plan.prefix]) for plan in space_plan(space)]
    out = {"cost": float(costs.expected(gates))}
    for label, value in derive_arch(space, model_params).items():
        if isinstance(value, str):
            value = {"mbconv": 1.0, "dwsep": 0.0, "skip": 0.0}[value]
        out[f"decision/{label}"] = 1.0 if value is None else float(value)
    return out


def setup_from_config(loaded: Any) -> SinglePathSetup:
    """Resolves space, data, latency table, costs and trainer settings of a loaded config.

    Raises:
        NasInputError: a bad setting (space not nestable, cost latency without a table...).
    """
    from nas.config import train_config
    from nas.data import load_data
    from nas.latency.table import LatencyTable
    from nas.single_path.cost import SlotCosts
    from nas.single_path.plan import space_plan

    config = loaded.config
    params = parse_params(config.strategy.params, loaded.source)
    space = resolve_space(config.space, loaded.source)
    space_plan(space)
    table = LatencyTable.load(loaded.latency_table, space) if loaded.latency_table else None
    objective = config.objective
    if params.cost == "latency":
        if table is None:
            raise NasInputError("cost latency needs a latency table; set latency_table: PATH or "
                                "strategy.params.cost: bops", loaded.source, "latency_table")
        if objective.target is not None and objective.metric != "latency_ms":
            raise NasInputError(f"single_path with cost latency needs metric latency_ms, not "
                                f"{objective.metric!r}", loaded.source, "objective.metric")
        costs = SlotCosts.from_table(space, table)
    else:
        if objective.target is not None:
            raise NasInputError("a target is only supported with cost: latency; remove "
                                "objective.target or set strategy.params.cost: latency",
                                loaded.source, "objective.target")
        costs = SlotCosts.from_metric(space, params.cost)
    train = train_config(config)
    if params.warmup_epochs >= train.epochs:
        raise NasInputError(f"warmup_epochs {params.warmup_epochs} leaves no epoch to train the "
                            f"thresholds; use fewer than train.epochs ({train.epochs})",
                            loaded.source, "strategy.params.warmup_epochs")
    data = load_data(config.data, space)
    return SinglePathSetup(space, data, table, costs, params, objective.target, train)


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
    from nas.train_loop import run_training
    from nas.single_path.export import derive_arch, derive_levels, export_child, gate_values
    from nas.single_path.network import SinglePathNetwork, init_single_path
    from nas.single_path.plan import max_arch, space_plan
    from nas.single_path.threshold_opt import search_optimizer

    space, train = setup.space, dataclasses.replace(setup.train, progress=progress)
    net = SinglePathNetwork(space, depthwise_impl=train.depthwise_impl)
    variables = init_single_path(net, jax.random.PRNGKey(seed))
    loss_fn = make_loss(net, space, setup.costs, setup.params, setup.target, train.label_smoothing)
    container = ArchFile(space, max_arch(space, space_plan(space)),
                         {"strategy": "single_path", "note": "the superkernel's largest Arch"})
    meta = {"strategy": "single_path", "lam": setup.params.lam, "cost": setup.params.cost,
            "margin": setup.params.margin, "target": setup.target,
            "warmup_epochs": setup.params.warmup_epochs}
    steps_per_epoch = len(setup.data.y_train) // min(train.batch_size, len(setup.data.y_train))
    tx = search_optimizer(train, int(round(setup.params.warmup_epochs * steps_per_epoch)))
    t0 = time.perf_counter()
    result = run_training(model=net, params={"model": variables["params"]},
                          batch_stats=variables["batch_stats"], loss_fn=loss_fn, data=setup.data,
                          config=train, workdir=workdir, archfile=container, meta=meta,
                          consts={"lam": jnp.float32(setup.params.lam)}, tx=tx,
                          epoch_metrics=lambda st: decision_metrics(space, setup.costs,
                                                                    st.params["model"]))
    seconds = time.perf_counter() - t0
    state = result["state"]
    final = {"params": state.params["model"], "batch_stats": state.batch_stats}
    arch = derive_arch(space, final["params"])
    gates = [jax.device_get(g) for g in _gates(space, final["params"])]
    cost = float(setup.costs.expected(gates))
    predicted = setup.table.predict(arch) if setup.table is not None else None
    out = {
        "arch": arch, "arch_id": space.arch_id(arch), "cost": cost, "cost_unit": setup.costs.unit,
        "predicted_latency_ms": predicted, "target": setup.target,
        "feasible": None if setup.target is None or predicted is None else predicted <= setup.target,
        "val_accuracy": result["val_accuracy"], "test_accuracy": result["test_accuracy"],
        "search_seconds": round(seconds, 3), "train_seconds": result.get("train_seconds"),
        "levels": derive_levels(space, final["params"]), "gates": gate_values(space, final["params"]),
        "history": result["history"], "variables": final, "lam": setup.params.lam,
    }
    if workdir is not None:
        _write_outputs(Path(workdir).absolute(), space, out, export_child(space, final))
    return out


def _gates(space, params):
    from nas.single_path.gates import slot_gates
    from nas.single_path.plan import space_plan

    return [slot_gates(plan, params[plan.prefix]) for plan in space_plan(space)]


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _write_outputs(wd: Path, space: Any, out: Mapping[str, Any], child: tuple) -> None:
    from nas.checkpoint import Checkpointer, write_arch

    meta = {k: out[k] for k in ("arch_id", "cost", "cost_unit", "predicted_latency_ms", "target",
                                "feasible", "val_accuracy", "test_accuracy", "search_seconds",
                                "levels", "gates", "lam")}
    meta["source"] = f"nas search (single_path), {wd}"
    meta["note"] = "val/test accuracy: the superkernel network with these gates (not retrained)"
    ArchFile(space, out["arch"], meta).save(wd / BEST_FILE)
    arch, variables = child
    child_dir = wd / CHILD_DIR
    if child_dir.exists():
        import shutil

        shutil.rmtree(child_dir)
    child_dir.mkdir(parents=True)
    write_arch(child_dir, ArchFile(space, arch, {"source": f"cut from the superkernel in {wd}"}))
    ckpt = Checkpointer(child_dir, space.arch_id(arch))
    try:
        ckpt.save(0, jax.device_get(variables), {"step": np.zeros((), np.int32)},
                  {"epoch": 0, "source": "single_path export"})
    finally:
        ckpt.close()
    summary = {k: v for k, v in out.items() if k not in ("variables", "history")}
    summary["workdir"] = str(wd)
    _write_json_atomic(wd / SUMMARY_FILE, summary)


def run_single_path(loaded: Any, workdir: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Runs (or resumes) ``strategy: single_path`` of a loaded config (the ``nas search`` entry).

    Args:
        loaded: :func:`nas.config.load_config`'s result.
        workdir: output folder.
        progress: show a progress bar.

    Returns:
        The summary dict (also in ``workdir/summary.json``).
    """
    from nas.workdir import claim_workdir

    setup = setup_from_config(loaded)
    with claim_workdir(workdir, loaded.config):  # flock + search.json, held for the search
        out = search(setup, workdir, progress=progress, seed=loaded.config.seed)
    wd = Path(workdir).absolute()
    summary = {k: v for k, v in out.items() if k not in ("variables", "history", "levels", "gates")}
    summary.update(strategy="single_path", workdir=str(wd), best_arch=str(wd / BEST_FILE),
                   target_ms=setup.target if setup.costs.unit == "ms" else None,
                   meets_target=out["feasible"], child=str(wd / CHILD_DIR))
    return summary


def print_summary(summary: Mapping[str, Any]) -> None:
    """Prints a single-path search summary for people."""
    lat = summary.get("predicted_latency_ms")
    text = "" if lat is None else f", predicted latency {lat:.4f} ms"
    if summary.get("target_ms") is not None:
        text += f" (target {summary['target_ms']} ms: {'met' if summary['meets_target'] else 'NOT met'})"
    print(f"single_path: derived Arch {summary['arch_id']}{text}, cost {summary['cost']:.4g} "
          f"{summary['cost_unit']}; superkernel val accuracy {summary['val_accuracy']:.4f}; search "
          f"{summary['search_seconds']:.1f} s; workdir {summary['workdir']}")
    print(f"  best Arch: {summary['best_arch']}  (its weights, cut from the superkernel: "
          f"{summary['child']})")
