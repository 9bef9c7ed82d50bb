"""Validating a latency table: predicted vs measured end-to-end latency of Archs.

The Archs are the table's exact fastest and slowest Archs plus Archs drawn stratified over its
predicted-latency range (:mod:`nas.latency.sampling`), none of them one the table was calibrated
on; or given Archs (``--archs FILE...``). Each is measured as a whole network on the table's
backend with the table's batch, threading and pinning, and compared with ``LatencyTable.predict``
(and with the plain sum of entries, to show what the calibration adds). The result is stored in
the table (:func:`store_validation`, field ``validation``) and shown by ``nas latency show``.

Example:
    >>> report = validate_table(LatencyTable.load(path), samples=50, seed=0)
    >>> report["within_10pct"]
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any, Mapping, Sequence

import numpy as np

from nas.latency.build import Measurer, WorkerMeasurer, network_item, stored_timing
from nas.latency.measure import TimingConfig, cpu_model
from nas.latency.precision import effective_spec
from nas.latency.processes import ProcessMedianMeasurer
from nas.latency.sampling import extreme_archs, stratified_archs
from nas.latency.table import LatencyTable
from nas.safe_write import write_figure


def accuracy_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Returns how well predictions match measurements.

    Args:
        predicted: predicted latencies (ms).
        measured: measured latencies (ms), same order.

    Returns:
        {"within_10pct": share (0..1) with |pred - meas| <= 10% of meas, "rmse_ms",
        "rmspe": root mean squared percentage error (in %), "kendall_tau" (None for fewer than
        two Archs or constant values), "n"}.
    """
    from scipy.stats import kendalltau

    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    rel = (p - m) / m
    tau = float(kendalltau(p, m).statistic) if len(p) > 1 else float("nan")
    return {"within_10pct": round(float(np.mean(np.abs(rel) <= 0.10)), 4),
            "rmse_ms": round(float(np.sqrt(np.mean((p - m) ** 2))), 5),
            "rmspe": round(float(100 * np.sqrt(np.mean(rel ** 2))), 3),
            "kendall_tau": round(tau, 4) if np.isfinite(tau) else None, "n": int(len(p))}


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


#: How validation Archs are drawn (recorded in the table's ``validation.sampling``).
VALIDATION_SAMPLING = "stratified-predicted+extremes"


def validation_archs(table: LatencyTable, samples: int, seed: int) -> list[tuple[str, dict]]:
    """Returns the Archs a validation measures: [(role, Arch)], role 'fastest', 'slowest' or
    'stratified'.

    The table's exact fastest and slowest Archs always come first; the rest are drawn stratified
    over the predicted range from the 'validation' random stream, leaving out every Arch the
    table was calibrated on.

    Args:
        table: the table.
        samples: how many Archs in all (at least 2).
        seed: the seed of the stratified draw.
    """
    space = table.space
    fastest, slowest = extreme_archs(table)
    out = [("fastest", fastest)]
    if space.arch_id(slowest) != space.arch_id(fastest):
        out.append(("slowest", slowest))
    calibrated = {p["arch_id"] for p in table.data.get("calibration", {}).get("points", [])}
    exclude = calibrated | {space.arch_id(a) for _, a in out}
    rest = stratified_archs(table, max(0, samples - len(out)), seed, "validation", exclude=exclude)
    return out + [("stratified", a) for a in rest]


def _measure_networks(table: LatencyTable, archs: Mapping[str, dict], measurer: Measurer,
                      progress: bool) -> tuple[dict[str, float], dict]:
    """Measures Archs end to end; returns ({arch_id: median ms}, the worker's info reply)."""
    space = table.space
    return measure_specs_ms(table, {aid: space.block_specs(a) for aid, a in archs.items()},
                            measurer, progress)


def measure_specs_ms(table: LatencyTable, networks: Mapping[str, Sequence[Any]],
                     measurer: Measurer | None = None, progress: bool = False
                     ) -> tuple[dict[str, float], dict]:
    """Measures networks given as their layers end to end, as `table`'s validation does.

    Args:
        table: the table (its precision rule, and by default its measurement settings).
        networks: {id: [BlockSpec, ...]} (any layers, e.g. a published network's).
        measurer: what measures (default: :func:`table_measurer`).
        progress: show a progress bar.

    Returns:
        ({id: median ms}, the worker's info reply).

    Raises:
        RuntimeError: a network could not be measured.
    """
    measurer = measurer or table_measurer(table)
    space = table.space
    items = [network_item(nid, [effective_spec(s, table.rule) for s in specs])
             for nid, specs in networks.items()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"validate {space.name}/{table.backend}", unit="net")
    measured: dict[str, float] = {}
    info: dict = {}
    errors = []
    try:
        for reply in measurer.measure(items):
            if reply["type"] == "info":
                info = reply
            elif reply["type"] == "result":
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
    return measured, info


def table_measurer(table: LatencyTable, core: int | None = None,
                   timing: TimingConfig | None = None) -> WorkerMeasurer:
    """Returns a worker measuring the way `table` was built (batch, threads, scheduler, timing).

    Args:
        table: the table.
        core: core to pin to (default: the last one).
        timing: timing settings (default: the table's own).
    """
    prov = table.data["provenance"]
    return WorkerMeasurer(table.backend, prov["batch"], prov["threads"], core,
                          timing or stored_timing(table.data),
                          realtime=prov.get("scheduler") == "fifo")


def measure_arch_ms(table: LatencyTable, arch: Mapping[str, Any], core: int | None = None) -> dict:
    """Measures one Arch end to end exactly as `table`'s validation networks are measured.

    Args:
        table: the table (its backend, batch, threads, scheduler and timing are used).
        arch: an Arch of the table's space.
        core: core to pin to (default: the last one).

    Returns:
        {"median_ms", "backend"} of the whole network.

    Raises:
        RuntimeError: the worker could not run the network.
    """
    measured, _ = _measure_networks(table, {"arch": dict(arch)}, table_measurer(table, core), False)
    return {"median_ms": measured["arch"], "backend": table.backend}


def validate_table(table: LatencyTable, samples: int, seed: int, *,
                   archs: Sequence[tuple[str, Mapping[str, Any]]] | None = None,
                   measurer: Measurer | None = None, timing: TimingConfig | None = None,
                   core: int | None = None, plot: str | os.PathLike | None = None,
                   progress: bool = True, processes: int = 1) -> dict[str, Any]:
    """Measures Archs end to end and compares them with the table's predictions.

    Args:
        table: the table.
        samples: number of Archs (the fastest, the slowest and stratified ones) when `archs` is
            not given.
        seed: the seed of the stratified draw (its stream differs from calibration's).
        archs: [(name, Arch)] to validate instead (e.g. arch files).
        measurer: what measures (default: a worker like the build's, :func:`table_measurer`).
        timing: warm-up and repetitions (default: the build's).
        core: core to pin to (default: the last one).
        plot: where to write the scatter PNG (None: no plot).
        progress: show a progress bar.
        processes: fresh worker processes that time every Arch; the median of their medians
            is kept (:class:`~nas.latency.processes.ProcessMedianMeasurer`; 1 = one process).

    Returns:
        :func:`accuracy_metrics` of the calibrated prediction, plus the same for the plain sum
        under 'plain_sum', 'sampling', 'extremes' ({role: {arch_id, predicted_ms,
        measured_ms}}, sampled validations only), 'calibration_overlap' (validated Archs the
        table was calibrated on), 'machine' (where it was measured) and per-Arch 'points'
        [{arch_id, role, predicted_ms, measured_ms}].
    """
    space = table.space
    if measurer is None:
        measurer = ProcessMedianMeasurer(lambda: table_measurer(table, core, timing), processes)
    if archs is None:
        chosen = validation_archs(table, samples, seed)
        sampling = VALIDATION_SAMPLING
    else:
        chosen = [(str(name), space.validate(a, str(name))) for name, a in archs]
        sampling = "given"
    by_id: dict[str, dict] = {}
    role: dict[str, str] = {}
    for r, a in chosen:
        aid = space.arch_id(a)
        by_id.setdefault(aid, a)
        role.setdefault(aid, r)
    measured, info = _measure_networks(table, by_id, measurer, progress)
    ids = [aid for aid in by_id if aid in measured]
    pred = [table.predict(by_id[a]) for a in ids]
    plain = [table.plain_sum(by_id[a]) for a in ids]
    meas = [measured[a] for a in ids]
    report = accuracy_metrics(pred, meas)
    report["plain_sum"] = accuracy_metrics(plain, meas)
    report["sampling"] = sampling
    points = [{"arch_id": a, "role": role[a], "predicted_ms": round(p, 5), "measured_ms": m}
              for a, p, m in zip(ids, pred, meas)]
    report["extremes"] = {p["role"]: {k: p[k] for k in ("arch_id", "predicted_ms", "measured_ms")}
                          for p in points if p["role"] in ("fastest", "slowest")}
    calibrated = {p["arch_id"] for p in table.data.get("calibration", {}).get("points", [])}
    report["calibration_overlap"] = len(calibrated & set(ids))
    report["machine"] = machine_description(info)
    report["processes"] = processes
    report["points"] = points
    if plot:
        tau = report["kendall_tau"]
        scatter_plot(plot, pred, meas,
                     f"{space.name} / {table.backend}: {100 * report['within_10pct']:.0f}% within "
                     f"+-10%, tau {tau if tau is None else round(tau, 2)} (n={report['n']})")
    return report


def machine_description(info: Mapping[str, Any]) -> dict[str, Any]:
    """Returns where a measurement ran: CPU, host, cores, threads, scheduler, load, runtime.

    Args:
        info: the measuring worker's 'info' reply (may be empty).
    """
    out = {"cpu_model": str(info.get("cpu_model") or cpu_model()), "host": platform.node(),
           "host_load": [round(x, 2) for x in os.getloadavg()]}
    for key in ("cores", "threads", "scheduler", "versions", "thread_env"):
        if key in info:
            out[key] = info[key]
    return out


def validation_record(report: Mapping[str, Any], seed: int | None) -> dict[str, Any]:
    """Returns what a table stores of a validation report (its ``validation`` field).

    Args:
        report: :func:`validate_table`'s report.
        seed: the seed of the stratified draw (None for given Archs).
    """
    keys = ("within_10pct", "rmse_ms", "rmspe", "kendall_tau", "n", "plain_sum", "sampling",
            "extremes", "calibration_overlap", "machine", "processes")
    record = {k: report[k] for k in keys if k in report}
    record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if seed is not None:
        record["seed"] = int(seed)
    return record


def store_validation(table: LatencyTable, record: Mapping[str, Any]) -> None:
    """Writes a validation record into the table file (atomically; checksum refreshed)."""
    table.data["validation"] = dict(record)
    table.save()
