"""``experiments/bench/gpu_check.sh --quick`` on a machine without a GPU (JAX on CPU, no GPU
visible to Ray): it says so, prints every part's figure as a number, shows nas's one-line
refusal of ``gpus_per_trial`` and ends with the summary table; the latency table goes to $OUT."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "bench" / "gpu_check.sh"
NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)"
PARTS = ["detect", "child", "supernet", "latency", "ray"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Runs the quick check once; returns (stdout, OUT folder)."""
    out = tmp_path_factory.mktemp("gpu_check")
    cache = os.environ.get("NAS_JAX_CACHE", str(ROOT / ".jax_cache"))
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               JAX_COMPILATION_CACHE_DIR=cache)
    run = subprocess.run(["bash", str(SCRIPT), "--quick"], capture_output=True, text=True,
                         env=env, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout, out


def _figure(pattern, text):
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in:\n{text}"
    return [float(g) for g in match.groups()]


def test_it_says_no_gpu_was_found_and_runs_every_part_on_cpu(quick_run):
    stdout, out = quick_run
    assert "no GPU found: running on CPU" in stdout
    for part in ("child", "supernet"):
        images_per_s, epoch_s = _figure(rf"^{part}: {NUMBER} images/s, epoch {NUMBER} s", stdout)
        assert images_per_s > 0 and epoch_s > 0
        assert f"{part}: " in stdout and ", cpu, 1 device(s)" in stdout
    (entries,) = _figure(rf"^latency: {NUMBER} entries", stdout)
    (sample_ms,) = _figure(rf"^latency: .* = {NUMBER} ms; table ", stdout)
    assert entries >= 2 and sample_ms > 0
    assert (out / "latency-jax.json").is_file()  # in $OUT, never in latency_tables/


def test_the_ray_gpu_trial_is_refused_in_one_line(quick_run):
    stdout, _ = quick_run
    line = next(x for x in stdout.splitlines() if x.startswith("ray: "))
    assert line.startswith("ray: gpus_per_trial refused: nas: error: executor.gpus_per_trial: "
                           "0.5 is not allowed: the Ray cluster has 0 GPUs")


def test_the_summary_table_times_every_part(quick_run):
    stdout, out = quick_run
    table = stdout[stdout.index("== gpu_check summary"):]
    seconds = {}
    for part in PARTS:
        (seconds[part],) = _figure(rf"^{part}\s+{NUMBER}  \S", table)
    assert all(s > 0 for s in seconds.values()), seconds
    assert _figure(rf"^child\s+{NUMBER}  {NUMBER} images/s", table)[1] > 0
    assert f"results: {out}" in table
