"""Choosing Archs to measure end to end: the table's fastest and slowest Archs, and Archs drawn
stratified over its predicted-latency range.

A latency-driven search drives to the extremes of the latency range, which uniform sampling
almost never reaches (a sum of many per-layer terms concentrates around its mean). So validation
always measures the exact fastest and slowest Archs and spreads the others evenly over the
predicted range; calibration networks are drawn the same way from another random stream (the
purpose is mixed into the seed, so the same seed never gives the same Archs), without the
extremes, and validation leaves out every Arch the table was calibrated on.

Prediction is additive over layers and every slot's layer depends only on that slot's decisions
(``LatencyTable.expected`` relies on the same), so the fastest Arch is exactly the per-slot
argmin of the layers' contributions and the slowest the per-slot argmax, whatever the signs of
the calibrated scales and offsets.

Example:
    >>> fastest, slowest = extreme_archs(table)
    >>> archs = stratified_archs(table, 50, seed=0, purpose="validation")
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from nas.latency.calibrate import layer_contribution
from nas.space import Arch

#: Mixed into the seed so that calibration and validation never share a random stream.
PURPOSES = {"calibration": 1, "validation": 2}
#: Tilts of the pool's per-slot choice distributions (0 = uniform): the pool then covers the
#: whole predicted range, not only its crowded middle.
TILTS = np.linspace(-3.0, 3.0, 9)


class SlotOptions:
    """Every slot's distinct layers with their contribution to a table's prediction.

    Args:
        table: a :class:`nas.latency.table.LatencyTable`.
        model: the calibrated model to predict with (default: the table's own; the build uses
            the plain sum, ``calibrate.IDENTITY_MODEL``, before it has a model).

    Attributes:
        labels: per slot, per option, {label: value} of that slot's decisions.
        contrib: per slot, an array of the options' contributions (ms).
        fixed_ms: the intercept plus the stem's and head's contributions.
    """

    def __init__(self, table, model: Mapping[str, Any] | None = None):
        space = table.space
        model = table.model if model is None else model
        decision_labels = space.labels()
        self.space = space
        self.labels: list[list[dict[str, Any]]] = []
        self.contrib: list[np.ndarray] = []
        for slot in space.slots:
            mine = [lb for lb in decision_labels if lb.startswith(slot.prefix + "_")]
            seen, opts, costs = set(), [], []
            for values in space.slot_options(slot):
                spec = slot.spec(values)
                if spec.key() in seen:  # knobs that change nothing (a skip layer's kernel)
                    continue
                seen.add(spec.key())
                opts.append({lb: values[lb[len(slot.prefix) + 1:]] for lb in mine})
                key = table.key(spec)
                costs.append(layer_contribution(model, key, table.entry_ms(key)))
            self.labels.append(opts)
            self.contrib.append(np.asarray(costs, np.float64))
        self.fixed_ms = float(model["intercept_ms"]) + sum(
            layer_contribution(model, table.key(s), table.entry_ms(table.key(s)))
            for s in (space.stem_spec, space.head_spec))

    def arch(self, indices) -> Arch:
        """Returns the canonical Arch choosing option ``indices[s]`` in slot s."""
        arch: dict[str, Any] = {}
        for opts, i in zip(self.labels, indices):
            arch.update(opts[int(i)])
        return self.space.canonical(arch)

    def predict(self, indices) -> float:
        """Returns the predicted latency (ms) of the options ``indices`` (one per slot)."""
        return self.fixed_ms + float(sum(c[int(i)] for c, i in zip(self.contrib, indices)))


def extreme_archs(table, model: Mapping[str, Any] | None = None) -> tuple[Arch, Arch]:
    """Returns the table's fastest and slowest Archs (exact: per-slot argmin / argmax).

    Args:
        table: a :class:`nas.latency.table.LatencyTable`.
        model: the model to predict with (default: the table's).

    Returns:
        (fastest Arch, slowest Arch).
    """
    opts = SlotOptions(table, model)
    fastest = opts.arch([int(np.argmin(c)) for c in opts.contrib])
    slowest = opts.arch([int(np.argmax(c)) for c in opts.contrib])
    return fastest, slowest


def _neighbours(opts: SlotOptions, pick) -> np.ndarray:
    """Returns the extreme Arch (``pick`` = np.argmin / np.argmax per slot) and every Arch one
    slot away from it, as option-index rows: the ends of the range, which tilted draws over
    many slots rarely reach (measured: a 22-slot space's calibration draws ended at 1.45x its
    fastest Arch, so the model extrapolated there)."""
    base = np.array([int(pick(c)) for c in opts.contrib], np.int64)
    rows = [base]
    for s, c in enumerate(opts.contrib):
        for i in range(len(c)):
            if i != base[s]:
                row = base.copy()
                row[s] = i
                rows.append(row)
    return np.stack(rows) if len(base) else np.zeros((1, 0), np.int64)


def _pool(opts: SlotOptions, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (distinct option-index rows [m, slots], their predictions) drawn at every tilt."""
    per_tilt = max(1, size // len(TILTS))
    rows = []
    for tilt in TILTS:
        cols = []
        for c in opts.contrib:
            z = (c - c.mean()) / (c.std() + 1e-12)
            p = np.exp(tilt * z - np.max(tilt * z))
            cols.append(rng.choice(len(c), size=per_tilt, p=p / p.sum()))
        rows.append(np.stack(cols, axis=1) if cols else np.zeros((per_tilt, 0), np.int64))
    rows += [_neighbours(opts, np.argmin), _neighbours(opts, np.argmax)]
    idx = np.unique(np.concatenate(rows), axis=0)
    idx = idx[rng.permutation(len(idx))]  # np.unique sorts; draw order must not follow it
    pred = opts.fixed_ms + sum(c[idx[:, s]] for s, c in enumerate(opts.contrib)) \
        if opts.contrib else np.full(len(idx), opts.fixed_ms)
    return idx, np.asarray(pred, np.float64)


def stratified_archs(table, n: int, seed: int, purpose: str, *,
                     exclude: Collection[str] = (), model: Mapping[str, Any] | None = None,
                     pool_size: int | None = None) -> list[Arch]:
    """Returns up to `n` distinct Archs spread evenly over the table's predicted-latency range.

    A pool of Archs is drawn (uniformly and tilted towards fast and slow layers, plus the fastest
    and slowest Archs and every Arch one slot away from them), predicted from
    the per-slot contributions, binned into `n` equal-width bins between the fastest and slowest
    prediction, and drawn from round-robin, one bin after the other; empty bins are skipped.

    Args:
        table: a :class:`nas.latency.table.LatencyTable`.
        n: how many Archs.
        seed: the seed; mixed with `purpose`, so calibration and validation differ.
        purpose: a key of :data:`PURPOSES`.
        exclude: arch ids never to return (calibration Archs, the extremes).
        model: the model to predict with (default: the table's).
        pool_size: Archs drawn before stratifying (default max(4000, 60 n)).

    Returns:
        The Archs, in draw order (reproducible for the same table, seed and purpose).
    """
    opts = SlotOptions(table, model)
    rng = np.random.default_rng([int(seed), PURPOSES[purpose]])
    idx, pred = _pool(opts, rng, pool_size or max(4000, 60 * n))
    if n <= 0 or len(idx) == 0:
        return []
    lo, hi = float(pred.min()), float(pred.max())
    bins = np.minimum(((pred - lo) / max(hi - lo, 1e-12) * n).astype(int), n - 1)
    queues = [list(np.flatnonzero(bins == b)) for b in range(n)]
    excluded, out = set(exclude), []
    while len(out) < n and any(queues):
        for q in queues:
            while q:
                arch = opts.arch(idx[q.pop(0)])
                aid = table.space.arch_id(arch)
                if aid not in excluded:
                    excluded.add(aid)
                    out.append(arch)
                    break
            if len(out) == n:
                break
    return out
