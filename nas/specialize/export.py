"""A specialized sub-network written out: its arch JSON and its child weights sliced from the
supernet, with BatchNorm statistics recalibrated for it.

The folder of one device holds ``arch.json`` (the Arch; meta: device, table, target, predicted
latency, supernet accuracy, ...), ``child/`` (a 'nas train' work directory: the Arch's weights
cut from the superkernel by :func:`nas.single_path.export.export_child`, the statistics those of
the same calibration images its supernet score used, so the child classifies as it was scored;
``nas export --arch DIR/arch.json --ckpt DIR/child`` exports it) and ``specialize.json`` (the
device's summary).

Example:
    >>> export_subnet(Path("out/jax-cpu"), sn, x_cal, arch, {"latency_ms": 0.2})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from nas.archfile import ArchFile
from nas.safe_write import write_json_atomic
from nas.single_path.export import export_child
from nas.single_path.plan import space_plan
from nas.single_path.subnets import arch_levels, network_gates
from nas.strategies.single_path_run import CHILD_DIR, write_child
from nas.weight_sharing import Supernet

ARCH_FILE = "arch.json"
SUMMARY_FILE = "specialize.json"


def export_subnet(folder: Path, sn: Supernet, x_cal: Any, arch: Mapping[str, Any],
                  meta: Mapping[str, Any]) -> dict[str, str]:
    """Writes one specialized Arch and its child weights.

    Args:
        folder: the device's folder (created; its child/ replaced).
        sn: the loaded superkernel supernet.
        x_cal: the calibration images its scores used.
        arch: a canonical Arch the supernet contains.
        meta: the arch file's metadata.

    Returns:
        {"arch_file", "child"}: the paths written.

    Raises:
        RuntimeError: the child cut from the superkernel is not `arch` (a slicing bug).
    """
    plans = space_plan(sn.space)
    levels = arch_levels(sn.space, plans, arch)
    stats = sn.evaluator.recalibrate(sn.weights, network_gates(plans, levels), x_cal)
    child = export_child(sn.space, {"params": sn.weights["params"], "batch_stats": stats}, levels)
    if sn.space.arch_id(child[0]) != sn.space.arch_id(arch):
        raise RuntimeError(f"the superkernel's child at these levels is "
                           f"{sn.space.arch_id(child[0])}, not {sn.space.arch_id(arch)}")
    folder.mkdir(parents=True, exist_ok=True)
    write_child(folder, sn.space, child, f"nas specialize, cut from the supernet in {sn.workdir}")
    ArchFile(sn.space, arch, meta).save(folder / ARCH_FILE)
    return {"arch_file": str(folder / ARCH_FILE), "child": str(folder / CHILD_DIR)}


def write_summary_file(folder: Path, summary: Mapping[str, Any]) -> str:
    """Writes ``folder/specialize.json`` atomically; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / SUMMARY_FILE, dict(summary), indent=1, sort_keys=True)
    return str(folder / SUMMARY_FILE)
