"""``nas latency import``: a device's ``results.json`` (from a bundle's ``measure.py``) -> a table.

The results are checked against the bundle they were measured from (:mod:`nas.latency.bundle`):
the manifest's own checksum, the sha256 the results name, every model file present next to the
manifest, and the space (name and definition hash) the table is for; any mismatch is one line.
The table is then written as a build would write it: the layers' medians as entries, the
calibration networks fitted by :func:`nas.latency.build.fit_calibration`, and a validation on the
bundle's validation networks stored in the table (``nas latency show`` prints it); layers the
runner measured energy for (``--power-cmd`` / ``--rapl``) get measured energy entries. Its
provenance names the device (``remote``), so commands that would re-measure it on this machine
(``check``, the pre-search drift check, exports' latency check) say so instead.

Example:
    >>> table = import_results("bundle-tiny/results.json", "tables/pixel7-tiny.json")
    >>> table.data["validation"]["within_10pct"]
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from nas.errors import NasInputError
from nas.latency.build import energy_estimates, fit_calibration, timing_entry
from nas.latency.bundle import (BUNDLE_FORMAT, MANIFEST_FILE, file_sha256, manifest_checksum)
from nas.latency.table import LatencyTable, new_table_data, space_hash
from nas.latency.validate import validate_table, validation_record
from nas.space import Space, resolve_space
from nas.yaml_file import read_json_file

RESULTS_FORMAT = "nas-latency-results/1"
#: Calibration networks an import needs at least (the calibrated model has up to 3 parameters).
MIN_CALIBRATION = 3


class ReplayMeasurer:
    """A Measurer that answers with a device's stored results (for :func:`validate_table`).

    Args:
        results: {item id: {median_ms, p10_ms, p90_ms, n}}.
        info: the 'info' reply (the device's description).
    """

    def __init__(self, results: Mapping[str, Mapping[str, Any]], info: Mapping[str, Any]):
        self.results, self.info = results, dict(info)

    def measure(self, items: Sequence[Mapping[str, Any]]) -> Iterator[dict]:
        """Yields 'info', then one stored 'result' (or an 'error') per item."""
        yield {"type": "info", **self.info}
        for item in items:
            if item["id"] in self.results:
                yield {"type": "result", "id": item["id"], **self.results[item["id"]]}
            else:
                yield {"type": "error", "id": item["id"], "error": "not in results.json"}


def read_bundle(results_path: str | os.PathLike, bundle: str | os.PathLike | None = None
                ) -> tuple[dict, dict, Path]:
    """Reads and cross-checks a device's results and the bundle's manifest.

    Args:
        results_path: the results.json the runner wrote.
        bundle: the bundle folder (default: the results file's folder).

    Returns:
        (results, manifest, bundle folder).

    Raises:
        NasInputError: unreadable files, another bundle's results, a changed manifest or model.
    """
    src = str(results_path)
    results = read_json_file(results_path, "results file", "; run measure.py of the bundle")
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise NasInputError(f"is not a results file of measure.py (format {RESULTS_FORMAT})",
                            src, "format")
    for field, kind in (("results", dict), ("manifest_sha256", str), ("settings", dict)):
        if not isinstance(results.get(field), kind):
            raise NasInputError(f"lacks '{field}'; rerun measure.py", src, field)
    folder = Path(bundle) if bundle is not None else Path(results_path).parent
    manifest_path = folder / MANIFEST_FILE
    manifest = read_json_file(manifest_path, "bundle manifest",
                              "; give the bundle folder with --bundle")
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("checksum") != \
            manifest_checksum(manifest):
        raise NasInputError("is not an unchanged nas bundle manifest (checksum mismatch); "
                            "write the bundle again", str(manifest_path), "checksum")
    if file_sha256(manifest_path) != results["manifest_sha256"]:
        raise NasInputError("was measured from another bundle than the one in "
                            f"{folder}; import it with --bundle pointing at its bundle", src,
                            "manifest_sha256")
    for item in manifest["items"]:
        path = folder / item["file"]
        if path.exists() and file_sha256(path) != item["sha256"]:
            raise NasInputError("differs from the bundle's manifest (sha256); write the bundle "
                                "again", str(path), "sha256")
    return results, manifest, folder


def _remote_provenance(results: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict:
    device, settings = results.get("device", {}), results["settings"]
    cpu = str(device.get("cpu") or device.get("machine") or "unknown device")
    core = settings.get("core")
    return {"cpu_model": cpu, "threads": int(settings.get("threads", 1)),
            **({"cores": [int(core)]} if core is not None else {}),
            "batch": int(manifest["batch"]),
            "date": str(results.get("finished") or results.get("started") or ""),
            "timing": {"warmup": settings.get("warmup"), "min_reps": settings.get("reps"),
                       "min_seconds": settings.get("min_seconds"), "rounds": settings.get("rounds")},
            "remote": {"device": device, "provider": settings.get("provider"),
                       "core": settings.get("core"), "runtime": results.get("runtime", {}),
                       "bundle_checksum": manifest["checksum"],
                       "imported": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")}}


def _device_name(results: Mapping[str, Any]) -> str:
    device = results.get("device", {})
    name = device.get("name") or device.get("node") or device.get("cpu") or "device"
    return f"{name} ({results['settings'].get('provider', 'CPUExecutionProvider')})"


def import_results(results_path: str | os.PathLike, out: str | os.PathLike, *,
                   space: Space | str | None = None, bundle: str | os.PathLike | None = None
                   ) -> tuple[LatencyTable, dict[str, Any]]:
    """Writes the table of a device's results (see the module docstring).

    Args:
        results_path: results.json from the bundle's runner.
        out: the table file to write (must not exist).
        space: the Space (or its name / YAML path) the table is for (default: the bundle's,
            by name).
        bundle: the bundle folder (default: the results file's folder).

    Returns:
        (the table, the validation report).

    Raises:
        NasInputError: a mismatched bundle or space, missing layers, too few networks, or an
            existing `out` (one line each).
    """
    results, manifest, _ = read_bundle(results_path, bundle)
    out = str(out)
    if Path(out).exists():
        raise NasInputError("exists; give a new --out (an import never overwrites a table)", out,
                            "out")
    wanted = manifest["space"]
    if space is None or isinstance(space, str):
        space = resolve_space(space or wanted["name"], str(results_path))
    if space.name != wanted["name"] or space_hash(space) != wanted["hash"]:
        raise NasInputError(f"the bundle was written for space {wanted['name']!r} "
                            f"({wanted['hash'][:19]}...), not for {space.name!r} "
                            f"({space_hash(space)[:19]}...); write a bundle of this space",
                            str(results_path), "space")
    measured = results["results"]
    layers = [it for it in manifest["items"] if it["role"] == "layer"]
    missing = [it["id"] for it in layers if it["id"] not in measured]
    if missing:
        raise NasInputError(f"{len(missing)} of {len(layers)} layers were not measured (first: "
                            f"{missing[0]}: {results.get('errors', {}).get(missing[0], 'absent')}); "
                            "run measure.py again to finish", str(results_path), "results")
    backend = {"name": manifest["backend"], "precision_rule": manifest["precision_rule"],
               "versions": {k: str(v) for k, v in results.get("runtime", {}).items()
                            if isinstance(v, str)},
               "device": _device_name(results)}
    data = new_table_data(space, backend, _remote_provenance(results, manifest))
    data["entries"] = {it["id"]: timing_entry(measured[it["id"]]) for it in layers}
    points = [{"arch_id": it["id"], "arch": space.validate(it["arch"]),
               "measured": timing_entry(measured[it["id"]])}
              for it in manifest["items"] if it["role"] == "calibration" and it["id"] in measured]
    if len(points) < MIN_CALIBRATION:
        raise NasInputError(f"only {len(points)} calibration networks were measured; "
                            f"{MIN_CALIBRATION} or more are needed", str(results_path), "results")
    table = LatencyTable(data, space, out)
    data["calibration"] = {"seed": int(manifest["calibration_seed"]), "points": points,
                           "sampling": f"bundle ({manifest['sampling']})"}
    data["calibration"]["model"] = fit_calibration(table, points)
    data["energy"] = energy_estimates(space)
    data["energy"].update({it["id"]: {"energy_mj": float(measured[it["id"]]["energy_mj"]),
                                      "source": "measured"}
                           for it in layers if "energy_mj" in measured[it["id"]]})
    data["complete"] = True
    table.save(out)
    val = [(it.get("kind", "stratified"), it["arch"]) for it in manifest["items"]
           if it["role"] == "validation" and it["id"] in measured]
    report = {}
    if len(val) >= 2:
        info = {"cpu_model": data["provenance"]["cpu_model"],
                "threads": data["provenance"]["threads"], "versions": backend["versions"]}
        report = validate_table(table, len(val), 0, archs=val,
                                measurer=ReplayMeasurer(measured, info), progress=False)
        record = validation_record(report, int(manifest["validation_seed"]))
        record["sampling"] = f"bundle ({manifest['sampling']})"
        record["machine"] = {"cpu_model": data["provenance"]["cpu_model"],
                             "host": _device_name(results),
                             "threads": data["provenance"]["threads"]}
        table.data["validation"] = record
        table.save(out)
    return table, report

