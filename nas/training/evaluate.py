"""Evaluating one candidate: train it, measure its costs, return one JSON-able result.

:class:`CandidateEvaluator` is what the search loop hands to an executor. It is a small,
picklable description (space definition, data spec, train settings, latency table path), so Ray
can ship it to workers; each process loads the Space, data set and latency table once and keeps
them for later candidates.

The trainer and the latency predictor can be injected (``train_fn``, ``latency_fn``) - tests
use synthetic ones; by default they are :func:`nas.training.trainer.train_arch` and
:meth:`nas.latency.table.LatencyTable.predict`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
import time
from typing import Any, Callable, Mapping

import jax

from nas.data import load_data
from nas.latency.table import LatencyTable
from nas.metrics import arch_metrics
from nas.ray_data import SharedData, trial_dataset
from nas.space import Arch, Space
from nas.training.trainer import TrainConfig, train_arch


@functools.lru_cache(maxsize=4)
def _space(definition_json: str) -> Space:
    return Space.from_dict(json.loads(definition_json))


@functools.lru_cache(maxsize=2)
def _dataset(spec: str, definition_json: str, seed: int):
    return load_data(spec, _space(definition_json), seed=seed)


@functools.lru_cache(maxsize=2)
def _table(path: str, definition_json: str):
    return LatencyTable.load(path, _space(definition_json))


def cost_function(space: Space,
                  latency_table: str | None = None) -> Callable[[Mapping[str, Any]], dict]:
    """Returns ``costs(arch)``: an Arch's costs known without training it.

    Args:
        space: the Space.
        latency_table: path of a latency table (adds latency_ms), or None.

    Returns:
        :meth:`CandidateEvaluator.costs` of an evaluator for the space: params, macs, bops,
        size_bytes, energy_mj, peak_activation_bytes (:mod:`nas.metrics`) and latency_ms.
    """
    return CandidateEvaluator.for_space(space, latency_table=latency_table).costs


@dataclasses.dataclass(frozen=True)
class CandidateEvaluator:
    """Trains and measures one Arch.

    Attributes:
        space_json: the space definition as JSON text (``json.dumps(space.to_dict())``).
        data: the data spec ('digits', 'npz:PATH', ...).
        train: TrainConfig fields (epochs, batch_size, ...).
        seed: data split and training seed.
        latency_table: absolute path of a latency table, or None.
        train_fn: injected trainer ``(space, arch, report) -> {val_accuracy, test_accuracy, ...}``
            (None = the real trainer).
        latency_fn: injected predictor ``(space, arch) -> ms`` (None = the table, if any).
        shared_data: the data set in Ray's object store (set by
            :func:`nas.ray_data.share_with_trials`), or None: the process loads ``data``.
    """

    space_json: str
    data: str = "digits"
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    latency_table: str | None = None
    train_fn: Callable[..., Mapping[str, Any]] | None = None
    latency_fn: Callable[[Space, Arch], float] | None = None
    shared_data: SharedData | None = None

    @classmethod
    def for_space(cls, space: Space, **kwargs) -> "CandidateEvaluator":
        """Returns an evaluator for a Space object (other fields as keyword arguments)."""
        return cls(json.dumps(space.to_dict(), sort_keys=True), **kwargs)

    def costs(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Returns the Arch's cost metrics (params, MACs, ..., latency_ms when a table is set)."""
        space = _space(self.space_json)
        m = arch_metrics(space, arch)
        out = {k: m[k] for k in ("params", "macs", "bops", "size_bytes", "energy_mj",
                                 "peak_activation_bytes") if k in m}
        if self.latency_fn is not None:
            out["latency_ms"] = float(self.latency_fn(space, arch))
        elif self.latency_table:
            out["latency_ms"] = float(_table(self.latency_table, self.space_json).predict(arch))
        return out

    def __call__(self, arch: Mapping[str, Any], report: Callable[[dict], None] | None = None) -> dict:
        """Trains and measures one Arch.

        Args:
            arch: the candidate.
            report: optional per-epoch callback (gets {'epoch', 'val_accuracy', costs...}).

        Returns:
            {'accuracy' (= val_accuracy, what the search optimizes), 'val_accuracy',
            'test_accuracy', 'train_seconds', cost metrics, 'latency_ms' if known, 'node' (the
            host name of the machine that trained it), and where the trainer says them
            'devices' (local devices it trained on, data-parallel) and 'platform' (JAX's
            platform of those devices: 'cpu', 'gpu', 'tpu')}.
        """
        space = _space(self.space_json)
        arch = space.validate(arch)
        costs = self.costs(arch)
        start = time.perf_counter()
        if self.train_fn is not None:
            trained = dict(self.train_fn(space, arch, report))
        else:
            trained = self._train(space, arch, costs, report)
        result = dict(costs)
        result["val_accuracy"] = float(trained["val_accuracy"])
        result["test_accuracy"] = (None if trained.get("test_accuracy") is None
                                   else float(trained["test_accuracy"]))
        result["accuracy"] = result["val_accuracy"]
        result["train_seconds"] = float(trained.get("train_seconds", time.perf_counter() - start))
        if trained.get("devices") is not None:
            result["devices"] = int(trained["devices"])
        if trained.get("platform") is not None:
            result["platform"] = str(trained["platform"])
        result["node"] = socket.gethostname()
        return result

    def _train(self, space: Space, arch: Arch, costs: Mapping[str, Any],
               report: Callable[[dict], None] | None) -> dict:
        data = trial_dataset(self.shared_data, self.data,
                             lambda: _dataset(self.data, self.space_json, self.seed))
        config = TrainConfig(**dict(self.train), seed=self.seed, progress=False)

        def on_epoch_end(epoch: int, record: dict) -> None:
            if report is not None and record.get("val_accuracy") is not None:
                report({**costs, "epoch": int(epoch),
                        "val_accuracy": float(record["val_accuracy"]),
                        "accuracy": float(record["val_accuracy"])})

        result = train_arch(space, arch, data, config, on_epoch_end=on_epoch_end)
        out = {k: result.get(k) for k in ("val_accuracy", "test_accuracy", "train_seconds",
                                          "devices")}
        out["platform"] = jax.local_devices()[0].platform  # DataParallel trains on local devices
        return out
