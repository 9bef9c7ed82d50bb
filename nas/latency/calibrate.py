"""The calibrated latency model: what turns a sum of per-layer table entries into a network's
end-to-end latency.

Timing one layer alone includes a fixed per-call cost (Python dispatch, argument and output
handling, the runtime's per-run setup) that a whole network pays once, not once per layer; a skip
layer timed alone is nothing but that cost, while inside a network it is free (onnxruntime
removes the Identity, XLA forwards the buffer); and between two int8 layers onnxruntime drops the
DequantizeLinear -> QuantizeLinear pair that each int8 layer timed alone pays at its ends.
A plain sum therefore over-estimates, more so for small, fast networks. The model is additive
per layer::

    latency = intercept + sum_i (scale[c_i] * median_ms(layer_i) + offset[c_i])

with classes c = ``float``, ``int8`` (both by effective precision) and ``skip``; a skip layer
contributes only its offset, and the float offset is 0 (a network has a fixed number of layers,
so one class offset is the intercept's). It is fitted by relative-error least squares on
end-to-end measurements of random Archs taken at build time. Being additive over layers, the
expectation over per-slot choice probabilities (``LatencyTable.expected``) stays exact.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

CLASSES = ("float", "int8", "skip")
#: Fitted scales outside this range mean the fit is not trustworthy (too few / too alike samples).
SCALE_RANGE = (0.2, 5.0)

IDENTITY_MODEL = {"kind": "plain-sum", "intercept_ms": 0.0, "scale": {c: 1.0 for c in CLASSES},
                  "offset_ms": {c: 0.0 for c in CLASSES}}


def layer_class(key: str) -> str:
    """Returns the calibration class of a table key: 'skip', 'int8' or 'float'."""
    if key.startswith("skip-"):
        return "skip"
    return "int8" if "-bw:8-ba:8" in key else "float"


def layer_contribution(model: Mapping, key: str, median_ms: float) -> float:
    """Returns one layer's share of the model's latency (ms)."""
    c = layer_class(key)
    return model["scale"][c] * median_ms + model.get("offset_ms", {}).get(c, 0.0)


def class_stats(keys: Sequence[str], entries: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Returns a network's per-class sums of medians ('S_<class>') and layer counts ('N_<class>')."""
    stats = {f"{p}_{c}": 0.0 for p in ("S", "N") for c in CLASSES}
    for key in keys:
        c = layer_class(key)
        stats[f"S_{c}"] += float(entries[key]["median_ms"])
        stats[f"N_{c}"] += 1
    return stats


def apply_model(model: Mapping, stats: Mapping[str, float]) -> float:
    """Returns the model's latency (ms) of a network given its :func:`class_stats`."""
    offsets = model.get("offset_ms", {})
    return float(model["intercept_ms"] + sum(
        model["scale"][c] * stats[f"S_{c}"] + offsets.get(c, 0.0) * stats[f"N_{c}"]
        for c in CLASSES))


#: Model forms tried in order: (kind, scale groups, offset classes). A scale group shares one
#: factor; classes in no group get scale 0 (skip) or 1.
_FORMS = [
    ("per-class", [["float"], ["int8"]], ["skip", "int8"]),
    ("one-scale+skip", [["float", "int8"]], ["skip"]),
    ("one-scale", [["float", "int8", "skip"]], []),
]


def _fit_form(stats: Sequence[Mapping[str, float]], y: np.ndarray, groups, offsets) -> dict | None:
    groups = [g for g in groups if any(s[f"S_{c}"] > 0 for s in stats for c in g)]
    offsets = [c for c in offsets if len({s[f"N_{c}"] for s in stats}) > 1]
    cols = [np.ones(len(y))]
    cols += [np.array([sum(s[f"S_{c}"] for c in g) for s in stats]) for g in groups]
    cols += [np.array([s[f"N_{c}"] for s in stats]) for c in offsets]
    rows = np.stack(cols, axis=1)
    if len(y) < rows.shape[1] + 3 or np.linalg.matrix_rank(rows) < rows.shape[1]:
        return None
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(rows * w[:, None], y * w, rcond=None)
    scale = {c: (0.0 if c == "skip" else 1.0) for c in CLASSES}
    for g, value in zip(groups, coef[1:1 + len(groups)]):
        if not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:
            return None
        scale.update({c: float(value) for c in g})
    offset = {c: 0.0 for c in CLASSES}
    offset.update({c: float(v) for c, v in zip(offsets, coef[1 + len(groups):])})
    if "skip" not in offsets and not any("skip" in g for g in groups):
        scale["skip"] = 1.0
    return {"intercept_ms": float(coef[0]), "scale": scale, "offset_ms": offset}


def _fit_forms(stats: Sequence[Mapping[str, float]], y: np.ndarray) -> dict:
    if len(y) >= 4:
        for kind, groups, offsets in _FORMS:
            fit = _fit_form(stats, y, groups, offsets)
            if fit is not None:
                return {"kind": kind, **fit}
    plain = np.array([sum(s[f"S_{c}"] for c in CLASSES) for s in stats])
    intercept = float(np.median(y - plain)) if len(y) else 0.0
    return dict(IDENTITY_MODEL, kind="sum-plus-intercept", intercept_ms=intercept)


def fit_model(stats: Sequence[Mapping[str, float]], measured_ms: Sequence[float]) -> dict:
    """Fits the calibrated model to end-to-end measurements, robustly.

    Tries the per-class form (a scale per precision class, a per-layer offset for skip and int8
    layers), then one scale plus a skip offset, then one scale, then the plain sum with a fitted
    intercept; classes absent from the data are left out of the fit. Networks whose relative
    residual is an outlier (beyond 4 robust standard deviations and 5%: a measurement spoilt by
    another process) are dropped and the model refitted once.

    Args:
        stats: per network, :func:`class_stats` of its layers.
        measured_ms: per network, the measured end-to-end median.

    Returns:
        {"kind", "intercept_ms", "scale": {class: factor}, "offset_ms": {class: ms}, "n",
        "outliers"}.
    """
    y = np.asarray(measured_ms, np.float64)
    stats = list(stats)
    model = _fit_forms(stats, y)
    outliers = 0
    if len(y) >= 8:
        rel = np.array([apply_model(model, s) for s in stats]) / y - 1.0
        sigma = 1.4826 * np.median(np.abs(rel - np.median(rel)))
        keep = np.abs(rel - np.median(rel)) <= max(4 * sigma, 0.05)
        if 0 < (~keep).sum() <= len(y) // 4:
            outliers = int((~keep).sum())
            model = _fit_forms([s for s, k in zip(stats, keep) if k], y[keep])
    return {**model, "n": len(y), "outliers": outliers}


def describe_model(model: Mapping) -> str:
    """Returns a one-line description of a calibrated model."""
    offsets = model.get("offset_ms", {})
    parts = [f"{c} x{model['scale'][c]:.3f}{offsets.get(c, 0.0):+.4f} ms" for c in CLASSES]
    return (f"{model['kind']} on {model.get('n', 0)} networks: intercept "
            f"{model['intercept_ms']:+.4f} ms; per layer " + ", ".join(parts))
