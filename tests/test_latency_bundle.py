"""Measurement bundles for devices: the standalone runner in a numpy + onnxruntime-only
environment, the import's checks, and an imported table against one built in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from nas.cli import main
from nas.errors import NasInputError
from nas.latency.backends.ort_backend import session as ort_session
from nas.latency.build import build_table, keys_to_measure
from nas.latency.onnx_blocks import block_to_onnx
from nas.blocks.act_points import runs_int8
from nas.latency.bundle import MANIFEST_FILE, RESULTS_FILE, RUNNER_FILE, write_bundle
from nas.latency.bundle_import import import_results
from nas.latency.check import check_table
from nas.latency.measure import TimingConfig
from nas.latency.table import LatencyTable
from nas.space import Space

#: Timing of both sides of the comparison (runner flags and the in-process build).
REPS, ROUNDS, MIN_SECONDS, WARMUP = 40, 4, 0.04, 5


def _device_python(root: Path, runtime: tuple[str, ...] = ("onnxruntime",)) -> str:
    """A virtual environment holding only numpy and `runtime` (linked from this one): what a
    device with 'pip install numpy onnxruntime' has. Run with -I (no user site, no PYTHONPATH)."""
    env = root / ("device-venv-" + runtime[0])
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-I", "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    here = Path(np.__file__).parent.parent
    for name in ("numpy", "numpy.libs", *runtime):
        if (here / name).exists():
            (Path(purelib) / name).symlink_to(here / name)
    assert Path(onnxruntime.__file__).parent.parent == here
    return str(python)


def test_tflite_bundle_runs_on_a_numpy_litert_only_env(tmp_path):
    from importlib.metadata import distribution

    from nas.latency.build import keys_to_measure

    dist = Path(distribution("ai-edge-litert")._path).name          # its version metadata too
    python = _device_python(tmp_path, ("ai_edge_litert", dist))
    probe = subprocess.run([python, "-I", "-c", "import onnxruntime"], capture_output=True)
    assert probe.returncode != 0                         # this device has LiteRT, not onnxruntime
    bundle = tmp_path / "tiny-tflite"
    space = Space.by_name("tiny")
    manifest = write_bundle(space, bundle, calibration_samples=4, validation_samples=3, fmt="tflite")
    assert all(it["file"].endswith(".tflite") for it in manifest["items"])
    run = _run_runner(python, bundle, "--reps", "8", "--rounds", "1", "--min-seconds", "0")
    assert run.returncode == 0, run.stderr[-2000:]
    table, report = import_results(bundle / RESULTS_FILE, tmp_path / "t.json")
    assert table.backend == "tflite" and table.rule == "float"
    assert set(table.entries) == set(keys_to_measure(space, "float"))
    assert "LiteRT" in table.remote_device and report["n"] == 3


def _import_runner(path: Path):
    """Imports the bundle's standalone runner script as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_runner_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_runner(python: str, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-I", str(bundle / RUNNER_FILE), "--reps", str(REPS),
                           "--rounds", str(ROUNDS), "--min-seconds", str(MIN_SECONDS),
                           "--warmup", str(WARMUP), "--device-name", "test-device", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def measured_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    python = _device_python(root)
    probe = subprocess.run([python, "-I", "-c", "import jax"], capture_output=True, text=True)
    assert probe.returncode != 0                        # the device has no jax, no nas
    bundle = root / "tiny"
    write_bundle(Space.by_name("tiny"), bundle, calibration_samples=6, validation_samples=5)
    core = str(sorted(__import__("os").sched_getaffinity(0))[-1])
    run = _run_runner(python, bundle, "--core", core)
    assert run.returncode == 0, run.stderr[-2000:]
    return root, bundle, python


def test_runner_on_a_numpy_onnxruntime_only_env_gives_the_in_process_table(measured_bundle, tmp_path):
    root, bundle, _ = measured_bundle
    results = json.loads((bundle / RESULTS_FILE).read_text())
    assert results["device"]["name"] == "test-device" and not results["errors"]
    imported, report = import_results(bundle / RESULTS_FILE, tmp_path / "imported.json")
    assert imported.remote_device.startswith("test-device")
    assert report["n"] == 5 and imported.data["validation"]["n"] == 5
    assert len(imported.data["calibration"]["points"]) == 6
    # The runner times exactly what an in-process build times: the same graphs ...
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    layers = {it["id"]: it for it in manifest["items"] if it["role"] == "layer"}
    wanted = keys_to_measure(Space.by_name("tiny"), imported.rule)
    assert set(imported.entries) == set(layers) == set(wanted)
    for key, spec in wanted.items():
        model = block_to_onnx(spec, runs_int8(spec), 1).SerializeToString()
        assert (bundle / layers[key]["file"]).read_bytes() == model, key
    # ... in sessions with the same options (the runner is standalone: it cannot import ours)
    runner = _import_runner(bundle / RUNNER_FILE)
    runner.import_runtime("onnx")
    item = next(iter(layers.values()))
    theirs = runner.make_session(str(bundle / item["file"]), 1, "CPUExecutionProvider")
    ours = ort_session((bundle / item["file"]).read_bytes(), 1)
    for option in ("graph_optimization_level", "execution_mode", "intra_op_num_threads",
                   "inter_op_num_threads"):
        assert getattr(theirs.get_session_options(), option) \
            == getattr(ours.get_session_options(), option), option
    # and its medians are milliseconds of the same calls: a gross check only (both sides are
    # timed minutes apart while other tests run, so they agree only as far as the load allows)
    timing = TimingConfig(warmup=WARMUP, min_reps=REPS, min_seconds=MIN_SECONDS, rounds=ROUNDS,
                          extra_rounds=2)
    local = build_table(Space.by_name("tiny"), "onnxruntime", tmp_path / "local.json",
                        timing=timing, calibration_samples=4, progress=False)
    ratios = np.array([imported.entries[k]["median_ms"] / local.entries[k]["median_ms"]
                       for k in local.entries])
    assert 0.5 < float(np.median(ratios)) < 2.0, np.sort(ratios)
    # an imported table is another device's: it is not re-measured here
    with pytest.raises(NasInputError, match="measured on test-device"):
        check_table(LatencyTable.load(tmp_path / "imported.json"))


def test_import_refuses_another_space_a_changed_bundle_and_missing_layers(measured_bundle, tmp_path,
                                                                          capsys):
    _, bundle, _ = measured_bundle
    results = bundle / RESULTS_FILE
    rc = main(["latency", "import", str(results), "--out", str(tmp_path / "t.json"),
               "--space", "mixed"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "written for space 'tiny'" in err[0]
    assert not (tmp_path / "t.json").exists()
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["items"][0]["sha256"] = "0" * 64                      # tampered manifest
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(NasInputError, match="checksum mismatch"):
        import_results(copy / RESULTS_FILE, tmp_path / "t.json")
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    (copy / "layers" / "layer_0000.onnx").write_bytes(b"not the model")   # tampered model
    with pytest.raises(NasInputError, match="differs from the bundle's manifest"):
        import_results(copy / RESULTS_FILE, tmp_path / "t.json")
    shutil.copy(bundle / "layers" / "layer_0000.onnx", copy / "layers" / "layer_0000.onnx")
    data = json.loads((copy / RESULTS_FILE).read_text())
    first_layer = next(it["id"] for it in manifest["items"] if it["role"] == "layer")
    del data["results"][first_layer]
    (copy / RESULTS_FILE).write_text(json.dumps(data))
    with pytest.raises(NasInputError, match="layers were not measured"):
        import_results(copy / RESULTS_FILE, tmp_path / "t.json")
    other = tmp_path / "other"                                  # results of another bundle
    write_bundle(Space.by_name("tiny"), other, calibration_samples=3, validation_samples=2)
    shutil.copy(bundle / RESULTS_FILE, other / RESULTS_FILE)
    with pytest.raises(NasInputError, match="another bundle"):
        import_results(other / RESULTS_FILE, tmp_path / "t.json")


def test_power_command_gives_measured_energy_entries(measured_bundle, tmp_path):
    _, bundle, python = measured_bundle
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / RESULTS_FILE).unlink()
    run = subprocess.run([python, "-I", str(copy / RUNNER_FILE), "--reps", "4", "--rounds", "1",
                          "--min-seconds", "0", "--warmup", "1", "--power-cmd", "echo 2.5 W",
                          "--energy-seconds", "0.002"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    table, _ = import_results(copy / RESULTS_FILE, tmp_path / "t.json")
    energy = table.data["energy"]
    for key, entry in table.entries.items():      # 2.5 W x median ms = mJ per call
        assert energy[key] == {"energy_mj": pytest.approx(2.5 * entry["median_ms"], rel=1e-6),
                               "source": "measured"}
    arch = table.space.sample(0)
    assert table.energy_mj(arch)["source"] == "measured"


def test_runner_refuses_a_changed_model_before_timing(measured_bundle, tmp_path):
    _, bundle, python = measured_bundle
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / RESULTS_FILE).unlink()
    (copy / "networks" / "validation_0006.onnx").write_bytes(b"x")
    run = _run_runner(python, copy)
    assert run.returncode == 2 and "differs from the manifest" in run.stderr
    assert not (copy / RESULTS_FILE).exists()


def test_predict_prints_one_line_per_arch_and_names_a_bad_line(tmp_path, capsys):
    table = "latency_tables/onnxruntime-cpu/tiny.json"
    space = Space.by_name("tiny")
    archs = [space.sample(i) for i in range(50)]
    path = tmp_path / "archs.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in archs[:25])
                    + "\n" + "\n".join(json.dumps({"arch": a}) for a in archs[25:]) + "\n")
    assert main(["latency", "predict", "--table", table, "--archs", str(path)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    t = LatencyTable.load(table)
    assert [x["arch_id"] for x in lines] == [space.arch_id(a) for a in archs]
    assert [x["latency_ms"] for x in lines] == pytest.approx([t.predict(a) for a in archs], abs=1e-6)
    path.write_text(json.dumps(archs[0]) + "\n" + json.dumps({**archs[1], "s1_b1_kernel": 4}) + "\n")
    assert main(["latency", "predict", "--table", table, "--archs", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2" in err[0] and "s1_b1_kernel" in err[0]
