"""Validating a latency table: predicted vs measured end-to-end latency of random Archs.

Each sampled Arch is measured as a whole network on the table's backend with the table's batch,
threading and pinning, and compared with ``LatencyTable.predict`` (and with the plain sum of
entries, to show what the calibration adds).

Example:
    >>> report = validate_table(LatencyTable.load(path), samples=50, seed=0)
    >>> report["within_10pct"]
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from nas.latency.build import Measurer, WorkerMeasurer, network_item, stored_timing
from nas.latency.measure import TimingConfig
from nas.latency.precision import effective_spec
from nas.latency.table import LatencyTable, sample_archs
from nas.safe_write import write_figure


def accuracy_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Returns how well predictions match measurements.

    Args:
        predicted: predicted latencies (ms).
        measured: measured latencies (ms), same order.

    Returns:
        {"within_10pct": share (0..1) with |pred - meas| <= 10% of meas, "rmse_ms",
        "rmspe": root mean squared percentage error (in %), "kendall_tau", "n"}.
    """
    from scipy.stats import kendalltau

    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    rel = (p - m) / m
    tau = float(kendalltau(p, m).statistic) if len(p) > 1 else float("nan")
    return {"within_10pct": round(float(np.mean(np.abs(rel) <= 0.10)), 4),
            "rmse_ms": round(float(np.sqrt(np.mean((p - m) ** 2))), 5),
            "rmspe": round(float(100 * np.sqrt(np.mean(rel ** 2))), 3),
            "kendall_tau": round(tau, 4), "n": int(len(p))}


def scatter_plot(path: str | os.PathLike, predicted: Sequence[float], measured: Sequence[float],
                 title: str) -> None:
    """Writes a predicted-vs-measured scatter plot (PNG) with the y = x and +-10% lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(measured)
    p = np.asarray(predicted)
    lo, hi = 0.9 * min(m.min(), p.min()), 1.1 * max(m.max(), p.max())
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="y = x")
    ax.plot([lo, hi], [0.9 * lo, 0.9 * hi], "k:", lw=1, label="+-10%")
    ax.plot([lo, hi], [1.1 * lo, 1.1 * hi], "k:", lw=1)
    ax.scatter(m, p, s=12)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)


def validate_table(table: LatencyTable, samples: int, seed: int, *,
                   measurer: Measurer | None = None, timing: TimingConfig | None = None,
                   core: int | None = None, plot: str | os.PathLike | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Measures random Archs end to end and compares them with the table's predictions.

    Args:
        table: the table.
        samples: number of random Archs.
        seed: their seed (use another than the build's calibration seed).
        measurer: what measures (default: a worker like the build's).
        timing: warm-up and repetitions (default: the build's).
        core: core to pin to (default: the last one).
        plot: where to write the scatter PNG (None: no plot).
        progress: show a progress bar.

    Returns:
        :func:`accuracy_metrics` of the calibrated prediction, plus the same for the plain sum
        under 'plain_sum', and per-Arch 'points' [{arch_id, predicted_ms, measured_ms}].
    """
    space = table.space
    prov = table.data["provenance"]
    if measurer is None:
        timing = timing or stored_timing(table.data)
        measurer = WorkerMeasurer(table.backend, prov["batch"], prov["threads"], core, timing,
                                  realtime=prov.get("scheduler") == "fifo")
    archs = {space.arch_id(a): a for a in sample_archs(space, samples, seed)}
    items = [network_item(aid, [effective_spec(s, table.rule) for s in space.block_specs(a)])
             for aid, a in archs.items()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"validate {space.name}/{table.backend}", unit="net")
    measured: dict[str, float] = {}
    errors = []
    try:
        for reply in measurer.measure(items):
            if reply["type"] == "result":
                measured[reply["id"]] = reply["median_ms"]
            elif reply["type"] == "error":
                errors.append(f"{reply['id']}: {reply['error']}")
            if bar is not None and reply["type"] != "info":
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} network(s) could not be measured, first: {errors[0]}")
    ids = [aid for aid in archs if aid in measured]
    pred = [table.predict(archs[a]) for a in ids]
    plain = [table.plain_sum(archs[a]) for a in ids]
    meas = [measured[a] for a in ids]
    report = accuracy_metrics(pred, meas)
    report["plain_sum"] = accuracy_metrics(plain, meas)
    report["points"] = [{"arch_id": a, "predicted_ms": round(p, 5), "measured_ms": m}
                        for a, p, m in zip(ids, pred, meas)]
    if plot:
        scatter_plot(plot, pred, meas,
                     f"{space.name} / {table.backend}: {100 * report['within_10pct']:.0f}% within "
                     f"+-10%, tau {report['kendall_tau']:.2f} (n={report['n']})")
    return report
