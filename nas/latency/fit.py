"""``nas latency fit``: a table from whole-network measurements of a device that times only whole
models (benchmark apps, NPU toolchains, a camera loop).

The device's latency of a network is modelled as the prior's per-layer contributions ``c_k``
(a table of the same space from another device, e.g. this machine's, with its calibration; or,
without one, a MACs estimate), corrected::

    latency = b + sum_k count_k * ((s + a_g(k)) * c_k + o_g(k) + d_k)

with ``b`` an intercept, ``s`` one scale (the device's speed relative to the prior), ``a_g`` and
``o_g`` a scale and a per-layer offset per layer group ``g`` (operator and precision class: a
device may run depthwise or int8 kernels relatively faster), and ``d_k`` a correction per layer.
It is fitted by relative-error least squares with ridge penalties pulling ``a``, ``o`` and ``d``
to zero (that is, toward the prior's structure); the two penalty strengths are chosen by k-fold
cross-validation on the measurements. With few networks the fit is essentially the prior
rescaled; with many, every layer gets its own correction (HELP, Lee et al. 2021, and nn-Meter's
kernel fitting are the references).

The table stores every layer's fitted latency as its entry (never below 1 us), the intercept as
its calibration, and the cross-validated accuracy of the fit as its validation.

Example:
    >>> points = read_measurements("pixel7.jsonl", space)
    >>> table, report = fit_table(space, points, "pixel7.json", prior=LatencyTable.load(...))
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from nas.errors import NasInputError
from nas.latency.build import energy_estimates, keys_to_measure
from nas.latency.bundle import proxy_table
from nas.latency.calibrate import CLASSES, layer_class, layer_contribution
from nas.latency.table import LatencyTable, new_table_data
from nas.latency.validate import accuracy_metrics
from nas.space import Space

#: Ridge strengths tried for the group terms and for the per-layer corrections.
LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
#: The penalty of the free columns (intercept, scale) in the dual ridge solve.
FREE_PENALTY = 1e-4
#: Entries are never below this (ms): a table entry must be positive.
MIN_ENTRY_MS = 1e-3


def read_measurements(path: str | os.PathLike, space: Space) -> list[dict]:
    """Reads ``{"arch": {label: value}, "latency_ms": x}`` lines.

    Returns:
        [{"arch": canonical Arch, "latency_ms": float}].

    Raises:
        NasInputError: unreadable file, or a bad line (one line naming it and the field).
    """
    src = str(path)
    try:
        text = open(path).read()
    except OSError as e:
        raise NasInputError(f"cannot be read ({e.strerror})", src) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise NasInputError(f"{where} is not JSON ({e.msg})", src, where) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("arch"), dict):
            raise NasInputError(f"{where}: expected {{\"arch\": {{label: value}}, \"latency_ms\": "
                                "x}", src, f"{where}.arch")
        ms = obj.get("latency_ms")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) \
                or ms <= 0:
            raise NasInputError(f"{where}: latency_ms must be a positive number, got {ms!r}",
                                src, f"{where}.latency_ms")
        out.append({"arch": space.validate(obj["arch"], f"{src} {where}"),
                    "latency_ms": float(ms)})
    if len(out) < 3:
        raise NasInputError(f"holds {len(out)} measurements; a fit needs 3 or more", src)
    return out


def _group(key: str) -> str:
    """A layer's group: its operator and precision class."""
    return f"{key.split('-', 1)[0]}/{layer_class(key)}"


class _Design:
    """The model's columns for a set of networks (see the module docstring)."""

    def __init__(self, prior: LatencyTable, keys: Sequence[str]):
        self.prior, self.keys = prior, list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.groups = sorted({_group(k) for k in self.keys})
        self.contrib = np.array([max(layer_contribution(prior.model, k, prior.entry_ms(k)), 1e-6)
                                 for k in self.keys])
        self.group_of = np.array([self.groups.index(_group(k)) for k in self.keys])

    def counts(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """[networks, keys] layer counts."""
        x = np.zeros((len(archs), len(self.keys)))
        for n, arch in enumerate(archs):
            for k in self.prior.network_keys(self.prior.space.block_specs(arch)):
                x[n, self.index[k]] += 1
        return x

    def columns(self, x: np.ndarray) -> np.ndarray:
        """[networks, 2 + 2 G + K]: intercept, prior sum, group sums, group counts, counts."""
        g = np.zeros((len(self.keys), len(self.groups)))
        g[np.arange(len(self.keys)), self.group_of] = 1.0
        return np.concatenate([np.ones((len(x), 1)), (x @ self.contrib)[:, None],
                               x @ (self.contrib[:, None] * g), x @ g, x], axis=1)

    def penalties(self, lam_group: float, lam_layer: float) -> np.ndarray:
        """Ridge weights per column (0: intercept and scale are free); offsets and corrections
        are penalized relative to the group's / layer's prior contribution."""
        mean_c = np.array([self.contrib[self.group_of == j].mean() for j in range(len(self.groups))])
        return np.concatenate([[0.0, 0.0], np.full(len(self.groups), math.sqrt(lam_group)),
                               math.sqrt(lam_group) / mean_c,
                               math.sqrt(lam_layer) / self.contrib])


def _solve(cols: np.ndarray, y: np.ndarray, pen: np.ndarray) -> np.ndarray:
    """Ridge solution of the relative residuals, ``argmin |A t - 1|^2 + |diag(pen) t|^2`` with
    ``A = cols / y``, in its dual form ``t = W A^T (A W A^T + I)^-1 1`` (``W = pen^-2``): an
    N x N solve, as there are far fewer networks than layers. Free columns (pen 0) get the
    penalty :data:`FREE_PENALTY`, negligible beside residuals of a percent."""
    a = cols / y[:, None]
    inv = 1.0 / np.maximum(pen, FREE_PENALTY) ** 2
    gram = (a * inv) @ a.T + np.eye(len(y))
    return inv * (a.T @ np.linalg.solve(gram, np.ones(len(y))))


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def _cross_validated(cols: np.ndarray, y: np.ndarray, pen: np.ndarray, folds) -> np.ndarray:
    pred = np.zeros_like(y)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        pred[test] = cols[test] @ _solve(cols[train], y[train], pen)
    return pred


def fit_entries(prior: LatencyTable, archs: Sequence[Mapping[str, Any]], measured_ms: Sequence[float]
                ) -> dict[str, Any]:
    """Fits the model of the module docstring.

    Args:
        prior: the prior table (or a MACs proxy, :func:`nas.latency.bundle.proxy_table`).
        archs: the measured networks.
        measured_ms: their latencies.

    Returns:
        {"entries": {key: ms}, "intercept_ms", "scale", "lambdas": (group, layer),
        "cv_predicted": out-of-fold predictions (ms) of the measured networks, "folds"}.
    """
    keys = sorted(keys_to_measure(prior.space, prior.rule))
    design = _Design(prior, keys)
    y = np.asarray(measured_ms, np.float64)
    cols = design.columns(design.counts(archs))
    folds = _folds(len(y), min(5, len(y)))
    best = None
    for lam_g, lam_l in itertools.product(LAMBDAS, LAMBDAS):
        pen = design.penalties(lam_g, lam_l)
        pred = _cross_validated(cols, y, pen, folds)
        err = float(np.sqrt(np.mean((pred / y - 1.0) ** 2)))
        if best is None or err < best[0]:
            best = (err, (lam_g, lam_l), pred)
    _, lams, cv_pred = best
    coef = _solve(cols, y, design.penalties(*lams))
    n_groups = len(design.groups)
    scale, group_scale = coef[1], coef[2:2 + n_groups]
    group_offset, per_layer = coef[2 + n_groups:2 + 2 * n_groups], coef[2 + 2 * n_groups:]
    values = ((scale + group_scale[design.group_of]) * design.contrib
              + group_offset[design.group_of] + per_layer)
    return {"entries": {k: float(max(v, MIN_ENTRY_MS)) for k, v in zip(keys, values)},
            "intercept_ms": float(coef[0]), "scale": float(scale), "lambdas": lams,
            "cv_predicted": cv_pred.tolist(), "folds": len(folds)}


def fit_table(space: Space, points: Sequence[Mapping[str, Any]], out: str | os.PathLike, *,
              prior: LatencyTable | None = None, device: str = "device",
              source: str = "") -> tuple[LatencyTable, dict[str, Any]]:
    """Fits and writes a table of `space` from whole-network measurements.

    Args:
        space: the Space.
        points: :func:`read_measurements`'s result.
        out: the table file to write (must not exist).
        prior: a table of the same space (default: a MACs estimate under onnxruntime's rule).
        device: the device's name (recorded).
        source: the measurements file (recorded).

    Returns:
        (the table, the cross-validation report: :func:`accuracy_metrics` of the out-of-fold
        predictions plus "lambdas", "scale", "folds").

    Raises:
        NasInputError: `out` exists, or the prior measures another space.
    """
    out = str(out)
    if os.path.exists(out):
        raise NasInputError("exists; give a new --out", out, "out")
    base = proxy_table(space, prior)
    archs = [p["arch"] for p in points]
    y = [p["latency_ms"] for p in points]
    fit = fit_entries(base, archs, y)
    report = {**accuracy_metrics(fit["cv_predicted"], y), "lambdas": list(fit["lambdas"]),
              "scale": fit["scale"], "folds": fit["folds"]}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    backend = {"name": base.backend, "precision_rule": base.rule, "versions": {},
               "device": f"{device} (fitted from {len(y)} whole networks)"}
    provenance = {"cpu_model": device, "threads": int(base.data["provenance"].get("threads", 1)),
                  "batch": int(base.data["provenance"].get("batch", 1)), "date": now,
                  "remote": {"device": {"name": device}, "fitted_from": source, "n": len(y),
                             "prior": prior.source if prior is not None else "MACs estimate",
                             "lambdas": list(fit["lambdas"])}}
    data = new_table_data(space, backend, provenance)
    data["entries"] = {k: {"median_ms": v, "p10_ms": v, "p90_ms": v, "n": 1}
                       for k, v in fit["entries"].items()}
    data["calibration"] = {
        "seed": 0, "sampling": f"measured networks ({source})",
        "points": [{"arch_id": space.arch_id(a), "arch": dict(a),
                    "measured": {"median_ms": m, "p10_ms": m, "p90_ms": m, "n": 1}}
                   for a, m in zip(archs, y)],
        "model": {"kind": "fitted-from-networks", "intercept_ms": fit["intercept_ms"],
                  "scale": {c: 1.0 for c in CLASSES}, "offset_ms": {c: 0.0 for c in CLASSES},
                  "n": len(y), "outliers": 0}}
    data["energy"] = energy_estimates(space)
    data["complete"] = True
    data["validation"] = {**{k: report[k] for k in ("within_10pct", "rmse_ms", "rmspe",
                                                     "kendall_tau", "n")},
                          "sampling": f"{fit['folds']}-fold cross-validation on the measurements",
                          "date": now, "machine": {"cpu_model": device}}
    table = LatencyTable(data, space, out)
    table.save(out)
    return table, report
