"""The output files every search writes, whatever its strategy.

A search work directory holds, for every strategy of :mod:`nas.strategies.registry`:

* ``best_arch.json``: an arch file (:class:`nas.archfile.ArchFile`) of the best Arch, with its
  metrics in ``meta`` (sample-based: the best-reward candidate; one-shot: the derived Arch).
* ``summary.json``: the run's JSON summary (what ``nas search --json`` prints). Common fields:
  ``strategy``, ``family``, ``workdir``, ``best_arch`` (path, None before a best exists),
  ``arch_id`` and ``arch`` (of the best Arch, None when there is none).
* ``history.jsonl``: one record per line. Sample-based strategies write one ``kind:
  "candidate"`` record per evaluated candidate (:func:`nas.history.make_record`; records of older
  runs have no ``kind`` and count as candidates); one-shot strategies write one ``kind:
  "epoch"`` record per supernet epoch (:func:`epoch_record`: the Arch derived after that epoch,
  its predicted cost and latency, the epoch's metrics). Readers of candidates use
  :func:`candidate_records`, so epoch records never enter a replay. A sample-based search with
  ``objective.limits`` also writes one ``kind: "rejected"`` record per distinct candidate it
  refused to train (:mod:`nas.limits`; :func:`rejected_records`); they are not candidates either.
* ``pareto.json`` (sample-based): the non-dominated front of the trained candidates over
  accuracy and the cost metrics of the search (:func:`write_pareto`).

Example:
    >>> write_epoch_record(wd / HISTORY_FILE, epoch_record("fbnet", space, 3, arch, {...}))
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from nas.history import History, record_value
from nas.pareto import non_dominated_sort
from nas.safe_write import write_atomic, write_json_atomic
from nas.space import Space

BEST_ARCH_FILE = "best_arch.json"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.jsonl"
PARETO_FILE = "pareto.json"
CANDIDATE = "candidate"
EPOCH = "epoch"
REJECTED = "rejected"


def record_kind(record: Mapping[str, Any]) -> str:
    """Returns a history record's kind ('candidate' when the record predates the field)."""
    return str(record.get("kind", CANDIDATE))


def candidate_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Returns the candidate records of a history (epoch records of one-shot runs left out).

    Args:
        records: history.jsonl records.

    Returns:
        The records whose kind is 'candidate' (or unset), in order.
    """
    return [dict(r) for r in records if record_kind(r) == CANDIDATE]


def epoch_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Returns the one-shot epoch records of a history, in order."""
    return [dict(r) for r in records if record_kind(r) == EPOCH]


def rejected_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Returns the records of candidates rejected for breaking ``objective.limits``, in order."""
    return [dict(r) for r in records if record_kind(r) == REJECTED]


def pareto_front_records(records: Sequence[Mapping[str, Any]],
                         metrics: Sequence[str]) -> tuple[list[dict], int]:
    """Returns the non-dominated trained candidates over accuracy (max) and cost metrics (min).

    Args:
        records: candidate records (only 'ok' ones with an accuracy and every metric count).
        metrics: cost metrics ('latency_ms', 'size_bytes', ...; :func:`nas.history.record_value`).

    Returns:
        (the front's records, cheapest in the first metric first; how many records were
        compared). Candidates with equal values are all kept: none dominates the other.
    """
    usable, points = [], []
    for r in records:
        values = [record_value(r, name) for name in ("accuracy", *metrics)]
        if r.get("status") == "ok" and all(v is not None for v in values):
            usable.append(r)
            points.append((-values[0], *values[1:]))
    fronts = non_dominated_sort(points)
    front = sorted(fronts[0] if fronts else [], key=lambda i: (points[i][1:], points[i][0], i))
    return [dict(usable[i]) for i in front], len(usable)


def write_pareto(workdir: str | Path, records: Sequence[Mapping[str, Any]],
                 metrics: Sequence[str]) -> dict[str, Any]:
    """Writes ``pareto.json``: the front of :func:`pareto_front_records`, atomically.

    Args:
        workdir: the search's work directory.
        records: its candidate records.
        metrics: the cost metrics of the front.

    Returns:
        What was written: ``{"objectives": [{"name", "goal": "max"|"min"}], "compared",
        "front": [{"arch_id", "arch", "n", "accuracy", "val_accuracy", "test_accuracy",
        "latency_ms", "cost", "reward"}]}``.
    """
    front, compared = pareto_front_records(records, metrics)
    keep = ("arch_id", "arch", "n", "accuracy", "val_accuracy", "test_accuracy", "latency_ms",
            "cost", "reward")
    data = {"objectives": [{"name": "accuracy", "goal": "max"}]
            + [{"name": m, "goal": "min"} for m in metrics],
            "compared": compared, "front": [{k: r.get(k) for k in keep} for r in front]}
    write_json_atomic(Path(workdir) / PARETO_FILE, data, default=json_default)
    return data


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epoch_record(strategy: str, space: Space, epoch: int, arch: Mapping[str, Any],
                 metrics: Mapping[str, Any], *, predicted_cost: float | None = None,
                 cost_metric: str | None = None,
                 predicted_latency_ms: float | None = None) -> dict:
    """Returns the history record of one one-shot epoch.

    Args:
        strategy: the strategy name.
        space: the Space.
        epoch: epochs completed (1 = the record after the first epoch).
        arch: the Arch derived after this epoch.
        metrics: the epoch's numeric metrics (non-numbers and an own 'epoch' are left out).
        predicted_cost: the derived Arch's cost in ``cost_metric`` units, or None.
        cost_metric: the objective's metric (e.g. 'latency_ms', 'bops'), or None.
        predicted_latency_ms: the derived Arch's latency from the latency table, or None.

    Returns:
        ``{"kind": "epoch", "n", "epoch", "strategy", "arch_id", "arch", "status": "ok",
        "predicted_cost", "cost_metric", "predicted_latency_ms", "metrics", "time"}``.
    """
    numbers = {k: _number(v) for k, v in metrics.items()
               if k != "epoch" and _number(v) is not None}  # the record's own epoch counts
    return {"kind": EPOCH, "n": int(epoch), "epoch": int(epoch), "strategy": strategy,
            "arch_id": space.arch_id(arch), "arch": dict(arch), "status": "ok",
            "predicted_cost": _number(predicted_cost), "cost_metric": cost_metric,
            "predicted_latency_ms": _number(predicted_latency_ms), "metrics": numbers,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_epoch_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Writes one epoch record to history.jsonl, replacing the records of this and later epochs.

    A resumed run repeats the epochs after its newest checkpoint; their records from before
    the interruption are replaced, so the file always holds one record per epoch, in order.
    The file is rewritten atomically (epochs are few).

    Args:
        path: the history.jsonl file.
        record: an :func:`epoch_record`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [r for r in History(path).load()
            if record_kind(r) != EPOCH or int(r["epoch"]) < int(record["epoch"])]
    kept.append(dict(record))
    write_atomic(path, "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n"
                               for r in kept))


def write_summary(workdir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Writes ``summary.json`` atomically.

    Args:
        workdir: the search's work directory.
        summary: the JSON-able summary (must hold the common fields of the module docstring).

    Returns:
        The path written.
    """
    path = Path(workdir) / SUMMARY_FILE
    write_json_atomic(path, dict(summary), default=json_default)
    return path


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for arrays and numpy scalars (lists / numbers), else str."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
