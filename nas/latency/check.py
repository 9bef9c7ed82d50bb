"""Does a latency table still fit this machine? Re-measure a small fixed sample and compare.

``nas latency check`` re-measures a fixed sample of the table's entries (spread evenly over their
latencies) and of its calibration networks (the fastest, the median and the slowest measured at
build time), the way the table was measured (backend, batch, threads, pinning, scheduler, timing),
and reports the drift ratio measured / table (median and spread) with a verdict. The sample is
chosen deterministically from the table's content, so every check of a table measures the same
items. ``nas search`` and ``nas run`` run a quicker version (:func:`quick_drift_warning`) before
they start.

Example:
    >>> report = check_table(LatencyTable.load(path))
    >>> report["verdict"], report["ratio_median"]
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from nas.errors import NasInputError
from nas.latency.build import Measurer, block_item, keys_to_measure, network_item, stored_timing
from nas.latency.measure import TimingConfig
from nas.latency.precision import effective_spec
from nas.latency.table import LatencyTable, build_command
from nas.latency.validate import table_measurer

#: Drift beyond this (|ratio - 1|) gets a warning and a 'rebuild' verdict.
DRIFT_THRESHOLD = 0.15
#: Set (non-empty) to skip the drift check of ``nas search`` / ``nas run``; it is also skipped
#: inside pytest (``PYTEST_CURRENT_TEST``) unless this is set to 'force'.
SKIP_ENV = "NAS_NO_DRIFT_CHECK"


def _evenly(n_total: int, n: int) -> list[int]:
    """Returns up to n distinct indices spread evenly over range(n_total), ends included."""
    if n_total <= 0 or n <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n_total - 1, min(n, n_total))})


def check_sample(table: LatencyTable, n_entries: int = 12,
                 n_networks: int = 3) -> tuple[list[str], list[dict]]:
    """Returns the fixed sample a check re-measures: (entry keys, calibration points).

    Entries are taken evenly over the table's entries sorted by median (fastest and slowest
    included), networks evenly over the calibration points sorted by measured median. Entries
    of layers no Arch uses any more cannot occur: every key is one the table measured.

    Args:
        table: the table.
        n_entries: how many entries.
        n_networks: how many calibration networks (0 when the table has none).
    """
    entries = sorted(table.entries.items(), key=lambda kv: (kv[1]["median_ms"], kv[0]))
    keys = [entries[i][0] for i in _evenly(len(entries), n_entries)]
    points = sorted(table.data.get("calibration", {}).get("points", []),
                    key=lambda p: (p["measured"]["median_ms"], p["arch_id"]))
    nets = [points[i] for i in _evenly(len(points), n_networks)]
    return keys, nets


def verdict(ratio: float, table: LatencyTable, threshold: float = DRIFT_THRESHOLD) -> str:
    """Returns the one-line verdict for a median drift ratio (measured / table).

    Args:
        ratio: the median ratio measured / table.
        table: the table (named in the rebuild command).
        threshold: the drift tolerated.
    """
    if abs(ratio - 1.0) <= threshold:
        return f"table fits this machine (measured / table = {ratio:.2f})"
    how = f"{ratio:.2f} times slower" if ratio > 1 else f"{1 / ratio:.2f} times faster"
    cmd = build_command(table.space.name, table.backend, "NEW_FILE")
    return f"this machine is {how} than the table: rebuild with `{cmd}`"


def check_table(table: LatencyTable, *, n_entries: int = 12, n_networks: int = 3,
                measurer: Measurer | None = None, timing: TimingConfig | None = None,
                core: int | None = None, threshold: float = DRIFT_THRESHOLD) -> dict[str, Any]:
    """Re-measures the table's fixed sample (:func:`check_sample`) and reports the drift.

    Args:
        table: the table.
        n_entries: entries to re-measure.
        n_networks: calibration networks to re-measure.
        measurer: what measures (default: a worker like the build's).
        timing: timing settings (default: the table's own).
        core: core to pin to (default: the last one).
        threshold: the drift tolerated by the verdict.

    Returns:
        {"ratio_median", "ratio_p10", "ratio_p90", "ratio_min", "ratio_max", "fits", "verdict",
        "n", "items": [{"id", "kind", "table_ms", "measured_ms", "ratio"}]}.

    Raises:
        RuntimeError: an item could not be measured.
    """
    if table.remote_device is not None:
        raise NasInputError(f"was measured on {table.remote_device}, not on this machine; check "
                            "it there by running the bundle's measure.py again and importing",
                            table.source, "provenance.remote")
    keys, nets = check_sample(table, n_entries, n_networks)
    specs = keys_to_measure(table.space, table.rule)
    items = [block_item(k, specs[k]) for k in keys if k in specs]
    items += [network_item(p["arch_id"], [effective_spec(s, table.rule)
                                          for s in table.space.block_specs(p["arch"])])
              for p in nets]
    expected = {k: table.entries[k]["median_ms"] for k in keys}
    expected.update({p["arch_id"]: p["measured"]["median_ms"] for p in nets})
    measurer = measurer or table_measurer(table, core, timing)
    rows, errors = [], []
    for reply in measurer.measure(items):
        if reply["type"] == "result":
            want = float(expected[reply["id"]])
            rows.append({"id": reply["id"], "kind": "network" if reply["id"] not in table.entries
                         else "layer", "table_ms": want, "measured_ms": reply["median_ms"],
                         "ratio": round(reply["median_ms"] / want, 4)})
        elif reply["type"] == "error":
            errors.append(f"{reply['id']}: {reply['error']}")
    if errors or not rows:
        raise RuntimeError(f"{len(errors)} item(s) could not be measured"
                           + (f", first: {errors[0]}" if errors else ""))
    return summarize_drift(rows, table, threshold)


def summarize_drift(rows: Sequence[Mapping[str, Any]], table: LatencyTable,
                    threshold: float = DRIFT_THRESHOLD) -> dict[str, Any]:
    """Returns the drift statistics and verdict of measured items.

    Args:
        rows: [{"id", "kind", "table_ms", "measured_ms", "ratio"}].
        table: the table.
        threshold: the drift tolerated.
    """
    ratios = np.array([r["ratio"] for r in rows], np.float64)
    med = float(np.median(ratios))
    p10, p90 = np.percentile(ratios, [10, 90])
    return {"ratio_median": round(med, 4), "ratio_p10": round(float(p10), 4),
            "ratio_p90": round(float(p90), 4), "ratio_min": round(float(ratios.min()), 4),
            "ratio_max": round(float(ratios.max()), 4), "n": int(len(ratios)),
            "threshold": threshold, "fits": abs(med - 1.0) <= threshold,
            "verdict": verdict(med, table, threshold), "items": list(rows)}


#: The quick check before a search: few items, few rounds (a few seconds with a warm worker).
QUICK_TIMING_CAP = {"rounds": 3, "extra_rounds": 2, "min_seconds": 0.15}


def drift_check_skipped(no_drift_check: bool = False) -> bool:
    """Returns whether the pre-search drift check is off (flag, :data:`SKIP_ENV`, or pytest)."""
    flag = os.environ.get(SKIP_ENV, "")
    if no_drift_check:
        return True
    if flag == "force":
        return False
    return bool(flag) or "PYTEST_CURRENT_TEST" in os.environ


def quick_drift_warning(table: LatencyTable, threshold: float = DRIFT_THRESHOLD,
                        measurer: Measurer | None = None) -> str | None:
    """Runs a quick drift check (4 entries, 1 network) and returns one warning line, or None.

    Args:
        table: the configured latency table.
        threshold: the drift tolerated.
        measurer: what measures (default: a worker like the build's, with fewer rounds).

    Returns:
        None when the table fits (or could not be checked: that is the search's own problem
        later); else "warning: latency table FILE: measured / table = R ...: rebuild with ...".
    """
    timing = stored_timing(table.data)
    quick = TimingConfig(**{**timing.to_dict(), **{k: min(getattr(timing, k), v)
                                                    for k, v in QUICK_TIMING_CAP.items()}})
    try:
        report = check_table(table, n_entries=4, n_networks=1, measurer=measurer, timing=quick,
                             threshold=threshold)
    except RuntimeError:
        return None
    if report["fits"]:
        return None
    return (f"warning: latency table {table.source}: measured / table = "
            f"{report['ratio_median']:.2f} (p10 {report['ratio_p10']:.2f}, p90 "
            f"{report['ratio_p90']:.2f}, n={report['n']}); {report['verdict']}")


def warn_if_drifted(table_path: str | None, space, no_drift_check: bool = False,
                    measurer: Measurer | None = None, stream=None) -> str | None:
    """The hook of ``nas search`` / ``nas run``: a quick drift check of the configured table.

    Prints one warning line (to stderr by default) when the table no longer fits this machine.

    Args:
        table_path: the configured latency table (None: nothing to check).
        space: the Space the table must measure.
        no_drift_check: the command's ``--no-drift-check`` flag.
        measurer: what measures (default: a worker like the build's).
        stream: where to print (default: sys.stderr).

    Returns:
        The warning printed, or None.
    """
    if not table_path or drift_check_skipped(no_drift_check):
        return None
    table = LatencyTable.load(table_path, space)
    if table.remote_device is not None:  # another device's table: nothing to compare here
        return None
    line = quick_drift_warning(table, measurer=measurer)
    if line:
        print(line + " (skip this check with --no-drift-check)", file=stream or sys.stderr,
              flush=True)
    return line
