"""Building a latency table: measure every distinct layer of a Space, then calibrate end to end.

The build writes the table atomically every few entries, so a killed build resumes where it
stopped (keys already in the file, and calibration networks already measured, are skipped).

Example:
    >>> build_table(Space.by_name("tiny"), "onnxruntime", "latency_tables/onnxruntime-cpu/tiny.json")
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from nas.errors import NasInputError
from nas.latency.backends import check_backend, precision_rule
from nas.latency.calibrate import IDENTITY_MODEL, class_stats, fit_model
from nas.latency.measure import TimingConfig
from nas.latency.precision import effective_spec
from nas.latency.processes import ProcessMedianMeasurer
from nas.latency.sampling import extreme_archs, stratified_archs
from nas.latency.table import LatencyTable, new_table_data, read_table_json, space_hash
from nas.latency.worker import make_job, run_worker
from nas.space import Space
from nas.spec import BlockSpec

#: Seed of the Archs measured end to end for calibration (validate with other seeds).
CALIBRATION_SEED = 1_000_003
DEFAULT_CALIBRATION_SAMPLES = 40
#: How calibration Archs are drawn (recorded in the table; older tables drew them uniformly).
CALIBRATION_SAMPLING = "stratified-plain-sum"


class Measurer(Protocol):
    """Measures items; yields an 'info' reply first, then one 'result'/'error' per item."""

    def measure(self, items: Sequence[Mapping[str, Any]]) -> Iterator[dict]: ...


class WorkerMeasurer:
    """Measures in a pinned single-thread worker subprocess (:mod:`nas.latency.worker`).

    Args:
        backend: backend name.
        batch: batch size.
        threads: 1 (pinned to one core, one thread) or 0 (the runtime's defaults, unpinned).
        core: the core to pin to (default: the last allowed core).
        timing: warm-up and repetitions.
    """

    def __init__(self, backend: str, batch: int = 1, threads: int = 1, core: int | None = None,
                 timing: TimingConfig = TimingConfig(), realtime: bool = False):
        self.backend, self.batch, self.threads, self.core, self.timing = \
            backend, batch, threads, core, timing
        self.realtime = realtime

    def measure(self, items: Sequence[Mapping[str, Any]]) -> Iterator[dict]:
        """Yields the worker's replies for `items`."""
        yield from run_worker(make_job(self.backend, items, self.batch, self.threads, self.core,
                                       self.timing, realtime=self.realtime))


def block_item(key: str, spec: BlockSpec) -> dict:
    """Returns a worker item measuring one layer."""
    return {"id": key, "kind": "block", "specs": [spec.to_dict()]}


def network_item(item_id: str, specs: Sequence[BlockSpec]) -> dict:
    """Returns a worker item measuring a whole network."""
    return {"id": item_id, "kind": "network", "specs": [s.to_dict() for s in specs]}


def keys_to_measure(space: Space, rule: str) -> dict[str, BlockSpec]:
    """Returns {key: effective spec} of every distinct layer of `space` under `rule`."""
    out: dict[str, BlockSpec] = {}
    for spec in space.unique_block_specs():
        eff = effective_spec(spec, rule)
        out.setdefault(eff.key(), eff)
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_resumable(data: dict, space: Space, backend: str, batch: int, out: str) -> None:
    want = {"space.name": space.name, "space.hash": space_hash(space), "backend.name": backend,
            "provenance.batch": batch}
    have = {"space.name": data["space"]["name"], "space.hash": data["space"]["hash"],
            "backend.name": data["backend"]["name"], "provenance.batch": data["provenance"]["batch"]}
    for field, value in want.items():
        if have[field] != value:
            raise NasInputError(f"holds a table with {field}={have[field]!r}, this build has "
                                f"{value!r}; choose another --out or remove the file", out, field)


class _Progress:
    """A tqdm bar (or nothing)."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)

    def update(self, text: str = "") -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[-40:], refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Builder:
    """State of one build: the table content and where it is written."""

    def __init__(self, space: Space, backend: str, out: str, batch: int, timing: TimingConfig,
                 flush_every: int, flush_seconds: float):
        self.space, self.backend, self.out, self.batch = space, backend, out, batch
        self.timing = timing
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.data: dict | None = None
        if Path(out).exists():
            self.data = read_table_json(out)
            _check_resumable(self.data, space, backend, batch, out)
        self._unsaved, self._last_save = 0, time.monotonic()

    def on_info(self, info: Mapping[str, Any]) -> None:
        backend = {"name": info["backend"], "precision_rule": info["rule"],
                   "versions": dict(info["versions"]), "device": info["device"]}
        if self.data is None:
            provenance = {"cpu_model": info["cpu_model"], "cores": list(info["cores"]),
                          "threads": int(info["threads"]), "batch": self.batch, "date": _now(),
                          "scheduler": info.get("scheduler", "normal"),
                          "thread_env": dict(info.get("thread_env", {})),
                          "timing": self.timing.to_dict(),
                          "host_load": [round(x, 2) for x in os.getloadavg()]}
            self.data = new_table_data(self.space, backend, provenance)
        elif self.data["backend"] != backend:
            raise NasInputError(f"was measured with {self.data['backend']}, this machine has "
                                f"{backend}; resume on the same runtime or choose another --out",
                                self.out, "backend")

    def saved(self, force: bool = False) -> None:
        self._unsaved += 1
        if force or self._unsaved >= self.flush_every or \
                time.monotonic() - self._last_save >= self.flush_seconds:
            table = LatencyTable(self.data, self.space, self.out)
            table.save(self.out)
            self._unsaved, self._last_save = 0, time.monotonic()

    def run(self, measurer: Measurer, items: list[dict], on_result: Callable[[dict], None],
            progress: _Progress) -> list[str]:
        errors = []
        if not items:
            return errors
        for reply in measurer.measure(items):
            if reply["type"] == "info":
                self.on_info(reply)
                continue
            if reply["type"] == "error":
                errors.append(f"{reply['id']}: {reply['error']}")
            else:
                on_result(reply)
                self.saved()
            progress.update(reply["id"])
        return errors


def stored_timing(data: Mapping[str, Any], default: TimingConfig = TimingConfig()) -> TimingConfig:
    """Returns the timing settings a table was measured with (`default` where not recorded)."""
    known = set(TimingConfig.__dataclass_fields__)
    given = {k: v for k, v in data["provenance"].get("timing", {}).items() if k in known}
    return TimingConfig(**given) if given else default


def timing_entry(reply: Mapping[str, Any]) -> dict:
    """Returns the table entry {median_ms, p10_ms, p90_ms, n} of a measurement reply."""
    return {k: reply[k] for k in ("median_ms", "p10_ms", "p90_ms", "n")}


def energy_estimates(space: Space) -> dict[str, dict]:
    """Returns per-layer energy estimates from :mod:`nas.metrics`, labelled 'estimated'."""
    try:
        from nas.metrics import layer_costs
    except ImportError:
        return {}
    return {s.key(): {"energy_mj": layer_costs(s)["energy_pj"] * 1e-9, "source": "estimated"}
            for s in space.unique_block_specs()}


def build_table(space: Space, backend: str, out: str | os.PathLike, *, batch: int = 1,
                measurer: Measurer | None = None, timing: TimingConfig = TimingConfig(),
                threads: int = 1, core: int | None = None, realtime: bool = False,
                calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
                calibration_seed: int = CALIBRATION_SEED, progress: bool = True,
                flush_every: int = 20, flush_seconds: float = 15.0,
                network_processes: int = 1) -> LatencyTable:
    """Measures (or resumes measuring) the latency table of a Space.

    Args:
        space: the Space.
        backend: 'jax' or 'onnxruntime'.
        out: the table file (resumed if it exists and matches space, backend and batch; a
            resumed build keeps the file's timing settings and threads).
        batch: batch size.
        measurer: what measures (default: a pinned worker subprocess, :class:`WorkerMeasurer`).
        timing: warm-up and repetitions per item.
        threads: 1 = one core, one thread (default); 0 = the runtime's defaults.
        core: core to pin to (default: the last one).
        realtime: run the worker at real-time priority where permitted
            (:func:`nas.latency.measure.set_realtime`), for shared machines.
        calibration_samples: Archs measured end to end to fit the calibrated model, drawn
            stratified over the entries' plain sum (:func:`calibration_archs`), after the layers.
        calibration_seed: their seed.
        progress: show a progress bar.
        flush_every: write the file after this many new measurements (and every
            `flush_seconds`).
        flush_seconds: see `flush_every`.
        network_processes: fresh worker processes that time every calibration network (the
            median of their medians is kept, :mod:`nas.latency.processes`); recorded in the
            provenance, and a resumed build keeps the file's.

    Returns:
        The finished table.

    Raises:
        NasInputError: `out` holds another table, or a layer could not be measured.
    """
    check_backend(backend)
    out = str(out)
    b = _Builder(space, backend, out, batch, timing, flush_every, flush_seconds)
    if b.data is not None:  # a resumed build measures the way the file's entries were measured
        timing = stored_timing(b.data, timing)
        threads = int(b.data["provenance"].get("threads", threads))
        realtime = b.data["provenance"].get("scheduler") == "fifo"
        network_processes = int(b.data["provenance"].get("network_processes", network_processes))
    measurer = measurer or WorkerMeasurer(backend, batch, threads, core, timing, realtime)
    todo = keys_to_measure(space, precision_rule(backend))
    have = b.data["entries"] if b.data else {}
    block_items = [block_item(k, s) for k, s in todo.items() if k not in have]

    # phase 1: every layer; phase 2: calibration networks, chosen from the layers' plain sum
    errors = _measure(b, measurer, block_items, {}, calibration_seed, progress, "layers")
    if b.data is None:  # nothing to measure and no file: an empty space cannot happen
        raise NasInputError("nothing was measured", out)
    if errors:  # calibration needs every layer
        raise NasInputError(f"{len(errors)} layer(s) could not be measured, first: {errors[0]}; "
                            "the file keeps what was measured", out)
    archs = calibration_archs(LatencyTable(b.data, space, out), calibration_samples,
                              calibration_seed)
    by_id = {space.arch_id(a): a for a in archs}
    done_ids = {p["arch_id"] for p in b.data.get("calibration", {}).get("points", [])}
    net_items = [network_item(aid, [effective_spec(s, precision_rule(backend))
                                    for s in space.block_specs(a)])
                 for aid, a in by_id.items() if aid not in done_ids]
    b.data["provenance"]["network_processes"] = network_processes
    networks = ProcessMedianMeasurer(lambda: measurer, network_processes)
    errors = _measure(b, networks, net_items, by_id, calibration_seed, progress, "networks")
    if errors:
        raise NasInputError(f"{len(errors)} item(s) could not be measured, first: {errors[0]}; "
                            "the file keeps what was measured", out)
    _finish(b, space, archs, calibration_seed)
    return LatencyTable(b.data, space, out)


def calibration_archs(table: LatencyTable, n: int, seed: int) -> list[dict]:
    """Returns the Archs a build measures end to end to calibrate `table`.

    Drawn stratified over the plain sum of the table's entries (the build has no model yet, and
    a resumed build must choose the same Archs), from the 'calibration' random stream, leaving
    out the fastest and slowest Archs (validation always measures those).

    Args:
        table: the table, with every layer measured.
        n: how many Archs.
        seed: their seed.

    Returns:
        The Archs (reproducible for the same entries and seed).
    """
    extremes = {table.space.arch_id(a) for a in extreme_archs(table, IDENTITY_MODEL)}
    return stratified_archs(table, n, seed, "calibration", exclude=extremes, model=IDENTITY_MODEL)


def _measure(b: _Builder, measurer: Measurer, items: list[dict], by_id: Mapping[str, Any],
             seed: int, progress: bool, what: str) -> list[str]:
    """Measures `items` into the builder's table (saved at the end); returns the errors."""
    bar = _Progress(len(items), progress, f"{b.space.name}/{b.backend} {what}")
    try:
        return b.run(measurer, items, lambda r: _store(b, r, by_id, seed), bar)
    finally:
        bar.close()
        if b.data is not None and items:
            b.saved(force=True)


def _store(b: _Builder, reply: Mapping[str, Any], archs_by_id: Mapping[str, Any], seed: int) -> None:
    if reply["id"] in archs_by_id:
        cal = b.data.setdefault("calibration", {"seed": seed, "points": []})
        cal["points"].append({"arch_id": reply["id"], "arch": archs_by_id[reply["id"]],
                              "measured": timing_entry(reply)})
    else:
        b.data["entries"][reply["id"]] = timing_entry(reply)


def fit_calibration(table: LatencyTable, points: Iterable[Mapping[str, Any]]) -> dict:
    """Fits the calibrated model of `table` to measured networks ({"arch", "measured"})."""
    sums, measured = [], []
    for p in points:
        keys = table.network_keys(table.space.block_specs(p["arch"]))
        sums.append(class_stats(keys, table.entries))
        measured.append(p["measured"]["median_ms"])
    return fit_model(sums, measured)


def _finish(b: _Builder, space: Space, archs: Sequence[Mapping[str, Any]], seed: int) -> None:
    wanted = {space.arch_id(a) for a in archs}
    cal = b.data.setdefault("calibration", {"seed": seed, "points": []})
    cal["seed"] = seed
    cal["sampling"] = CALIBRATION_SAMPLING
    points = [p for p in cal["points"] if p["arch_id"] in wanted]
    table = LatencyTable(b.data, space, b.out)
    cal["model"] = fit_calibration(table, points)
    if "energy" not in b.data:
        energy = energy_estimates(space)
        if energy:
            b.data["energy"] = energy
    b.data["complete"] = True
    b.data["provenance"]["finished"] = _now()
    table.save(b.out)
