"""Measurement bundles: everything a device that cannot run this package needs to time a space.

``nas latency bundle --space S --out DIR`` writes (:func:`write_bundle`):

- ``layers/*.onnx``: one ONNX model per distinct layer key of the space under the onnxruntime
  precision rule (stem, every slot option at its input shape, head; int8 layers in QDQ form),
  exactly the graphs ``nas latency build --backend onnxruntime`` times;
- ``networks/*.onnx``: ``--calibration-samples`` whole networks to calibrate the table and
  ``--validation-samples`` others to validate it (disjoint; validation includes the fastest and
  slowest Archs), drawn stratified over a proxy of their latency: the ``--prior`` table of the
  same space (e.g. this machine's), else a MACs-based estimate;
- ``manifest.json``: the space (name, definition hash), batch, precision rule, and every item
  (id, role 'layer' | 'calibration' | 'validation', file, sha256, input shape, the layer key or
  the Arch), with a checksum of its own content;
- ``measure.py``: the standalone runner (:mod:`nas.latency.bundle_runner`: Python + numpy +
  onnxruntime), which writes ``results.json`` on the device.

``nas latency import results.json --out TABLE`` (:mod:`nas.latency.bundle_import`) turns the
results into a table every strategy can use.

Example:
    >>> write_bundle(Space.by_name("tiny"), "bundle-tiny", calibration_samples=40)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from nas.errors import NasInputError
from nas.latency.build import CALIBRATION_SEED, calibration_archs, keys_to_measure
from nas.export.to_tflite import block_to_tflite, network_to_tflite
from nas.latency.onnx_blocks import block_to_onnx, network_to_onnx
from nas.blocks.act_points import runs_int8
from nas.latency.precision import RULES, effective_spec
from nas.latency.sampling import extreme_archs, stratified_archs
from nas.latency.table import LatencyTable, new_table_data, space_hash
from nas.metrics import layer_costs
from nas.safe_write import write_json_atomic
from nas.space import Space

BUNDLE_FORMAT = "nas-latency-bundle/1"
MANIFEST_FILE = "manifest.json"
RUNNER_FILE = "measure.py"
RESULTS_FILE = "results.json"
#: Bundle formats -> the backend whose graphs they hold (the runner times them with its runtime).
FORMAT_BACKENDS = {"onnx": "onnxruntime", "tflite": "tflite"}
#: Seed of the validation draw of a bundle.
VALIDATION_SEED = 0
#: MACs proxy of a layer's latency where no prior table is given: overhead + MACs * rate.
PROXY_LAYER_MS, PROXY_MS_PER_MAC = 0.01, 1e-6


def file_sha256(path: str | os.PathLike) -> str:
    """Returns the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """Returns 'sha256:<hex>' of a manifest's content without its checksum field."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def proxy_table(space: Space, prior: LatencyTable | None = None, backend: str = "onnxruntime"
                ) -> LatencyTable:
    """Returns the table the bundle's networks are drawn over: `prior`, or a MACs estimate.

    Args:
        space: the Space.
        prior: a table of the same space (any backend), or None.
        backend: the backend whose precision rule the MACs estimate's keys follow.

    Raises:
        NasInputError: `prior` measures another space definition.
    """
    if prior is not None:
        if prior.data["space"]["hash"] != space_hash(space):
            raise NasInputError(f"the prior table measures another definition of space "
                                f"{prior.data['space']['name']!r}; give a table of this space",
                                prior.source, "space.hash")
        return prior
    rule = RULES[backend]
    data = new_table_data(space, {"name": backend, "precision_rule": rule, "versions": {},
                                  "device": "MACs proxy"}, {})
    for key, spec in keys_to_measure(space, rule).items():
        ms = PROXY_LAYER_MS + PROXY_MS_PER_MAC * layer_costs(spec)["macs"]
        data["entries"][key] = {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "n": 1}
    return LatencyTable(data, space)


def bundle_archs(proxy: LatencyTable, calibration: int, validation: int, seed: int = VALIDATION_SEED
                 ) -> tuple[list[dict], list[tuple[str, dict]]]:
    """Returns (calibration Archs, [(role, validation Arch)]), disjoint.

    Calibration: stratified over the proxy's plain sum (as a build draws them), never the
    extremes; validation: the proxy's fastest and slowest Archs, then stratified ones.
    """
    space = proxy.space
    cal = calibration_archs(proxy, calibration, CALIBRATION_SEED)
    fastest, slowest = extreme_archs(proxy)
    val = [("fastest", fastest)]
    if space.arch_id(slowest) != space.arch_id(fastest):
        val.append(("slowest", slowest))
    exclude = {space.arch_id(a) for a in cal} | {space.arch_id(a) for _, a in val}
    rest = stratified_archs(proxy, max(0, validation - len(val)), seed, "validation",
                            exclude=exclude)
    return cal, val[:validation] + [("stratified", a) for a in rest]


def _write_model(model: bytes, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return file_sha256(path)


def _models(fmt: str):
    """(layer model, network model, input shape) writers of a bundle format."""
    if fmt == "tflite":
        return (lambda spec, batch: block_to_tflite(spec, batch),
                lambda specs, batch: network_to_tflite(specs, batch=batch),
                lambda spec, batch: [batch, *spec.in_hw, spec.cin])
    return (lambda spec, batch: block_to_onnx(spec, runs_int8(spec), batch).SerializeToString(),
            lambda specs, batch: network_to_onnx(specs, batch=batch).SerializeToString(),
            lambda spec, batch: [batch, spec.cin, *spec.in_hw])


def write_bundle(space: Space, out: str | os.PathLike, *, batch: int = 1,
                 calibration_samples: int = 40, validation_samples: int = 100,
                 prior: LatencyTable | None = None, seed: int = VALIDATION_SEED,
                 fmt: str = "onnx") -> dict[str, Any]:
    """Writes a measurement bundle of `space` into the folder `out` (see the module docstring).

    Args:
        space: the Space.
        out: the folder (must not exist, or be empty).
        batch: batch size of every model's input.
        calibration_samples: whole networks for calibration (>= 3).
        validation_samples: whole networks for validation (>= 2).
        prior: a table of the same space to draw the networks over (default: a MACs proxy).
        seed: seed of the validation draw.
        fmt: 'onnx' (timed with onnxruntime; int8 layers as QDQ) or 'tflite' (timed with the
            LiteRT interpreter; float kernels).

    Returns:
        The manifest.

    Raises:
        NasInputError: `out` holds files, or bad counts.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise NasInputError("the folder is not empty; give a new --out folder", str(out), "out")
    if calibration_samples < 3 or validation_samples < 2:
        raise NasInputError("a bundle needs >= 3 calibration and >= 2 validation networks",
                            field="calibration_samples")
    if fmt not in FORMAT_BACKENDS:
        raise NasInputError(f"unknown bundle format {fmt!r}; choose from "
                            f"{', '.join(FORMAT_BACKENDS)}", field="format")
    backend = FORMAT_BACKENDS[fmt]
    rule = RULES[backend]
    layer_model, network_model, input_shape = _models(fmt)
    items = []
    for i, (key, spec) in enumerate(sorted(keys_to_measure(space, rule).items())):
        name = f"layers/layer_{i:04d}.{fmt}"
        sha = _write_model(layer_model(spec, batch), out / name)
        items.append({"id": key, "role": "layer", "file": name, "sha256": sha,
                      "input_shape": input_shape(spec, batch)})
    cal, val = bundle_archs(proxy_table(space, prior, backend), calibration_samples,
                            validation_samples, seed)
    nets = [("calibration", "calibration", a) for a in cal] + [("validation", r, a) for r, a in val]
    for i, (role, kind, arch) in enumerate(nets):
        specs = [effective_spec(s, rule) for s in space.block_specs(arch)]
        name = f"networks/{role}_{i:04d}.{fmt}"
        sha = _write_model(network_model(specs, batch), out / name)
        items.append({"id": space.arch_id(arch), "role": role, "kind": kind, "file": name,
                      "sha256": sha, "input_shape": input_shape(specs[0], batch),
                      "arch": dict(arch)})
    manifest = {
        "format": BUNDLE_FORMAT, "created": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds"),
        "space": {"name": space.name, "hash": space_hash(space)},
        "model_format": fmt, "backend": backend, "precision_rule": rule, "batch": batch,
        "calibration_seed": CALIBRATION_SEED, "validation_seed": seed,
        "sampling": "prior table" if prior is not None else "MACs proxy",
        "items": items}
    manifest["checksum"] = manifest_checksum(manifest)
    write_json_atomic(out / MANIFEST_FILE, manifest, indent=1)
    shutil.copyfile(Path(__file__).with_name("bundle_runner.py"), out / RUNNER_FILE)
    return manifest
