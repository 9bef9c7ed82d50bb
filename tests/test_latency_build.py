"""Building latency tables: resume after a kill, refusal of a foreign --out, real workers, CLI."""

import json

import pytest

from nas.errors import NasInputError
from nas.latency.build import build_table, keys_to_measure
from nas.latency.measure import TimingConfig
from nas.latency.processes import ProcessMedianMeasurer
from nas.single_thread import xla_flags_problem
from nas.latency.table import LatencyTable, sample_archs
from nas.space import Space

FAST = TimingConfig(warmup=2, min_reps=5, max_reps=50, min_seconds=0.005, rounds=2)


class Killed(Exception):
    """Stands for the process being killed mid-build."""


class FakeMeasurer:
    """Replies like the worker, with latencies from a formula; can 'die' after some items."""

    def __init__(self, die_after=None):
        self.die_after = die_after
        self.measured = []

    def measure(self, items):
        yield {"type": "info", "backend": "onnxruntime", "rule": "int8-if-both-le8",
               "versions": {"onnxruntime": "test"}, "device": "cpu", "cpu_model": "fake",
               "cores": [0], "threads": 1}
        for item in items:
            if self.die_after is not None and len(self.measured) >= self.die_after:
                raise Killed()
            self.measured.append(item["id"])
            ms = 0.01 * len(item["specs"]) + 0.001 * (len(item["id"]) % 7)
            yield {"type": "result", "id": item["id"], "median_ms": ms, "p10_ms": ms,
                   "p90_ms": ms, "n": 3}


def test_killed_build_resumes_and_measures_nothing_twice(tmp_path):
    space = Space.by_name("tiny")
    out = tmp_path / "t.json"
    first = FakeMeasurer(die_after=30)
    with pytest.raises(Killed):
        build_table(space, "onnxruntime", out, measurer=first, calibration_samples=6,
                    progress=False, flush_every=7)
    saved = json.loads(out.read_text())
    assert not saved["complete"] and 21 <= len(saved["entries"]) <= 30  # flushed every 7
    table_so_far = LatencyTable.load(out)  # a partial file is a valid table
    assert set(table_so_far.entries) == set(saved["entries"])

    second = FakeMeasurer()
    table = build_table(space, "onnxruntime", out, measurer=second, calibration_samples=6,
                        progress=False)
    assert not set(second.measured) & set(saved["entries"])  # nothing measured twice
    assert set(table.entries) == set(keys_to_measure(space, "int8-if-both-le8"))
    assert table.data["complete"] and len(table.data["calibration"]["points"]) == 6
    assert table.data["provenance"]["date"] == saved["provenance"]["date"]

    third = FakeMeasurer()
    build_table(space, "onnxruntime", out, measurer=third, calibration_samples=6, progress=False)
    assert third.measured == []  # a finished table needs nothing


def test_build_refuses_an_out_file_of_another_table(tmp_path):
    out = tmp_path / "t.json"
    build_table(Space.by_name("tiny"), "onnxruntime", out, measurer=FakeMeasurer(),
                calibration_samples=4, progress=False)
    before = out.read_bytes()
    with pytest.raises(NasInputError, match=r"space\.name.*'tiny'.*choose another --out"):
        build_table(Space.by_name("mixed"), "onnxruntime", out, measurer=FakeMeasurer(),
                    calibration_samples=4, progress=False)
    with pytest.raises(NasInputError, match=r"backend\.name"):
        build_table(Space.by_name("tiny"), "jax", out, measurer=FakeMeasurer(),
                    calibration_samples=4, progress=False)
    assert out.read_bytes() == before  # nothing overwritten


def test_calibration_archs_are_distinct_and_reproducible():
    space = Space.by_name("tiny")
    a = sample_archs(space, 20, 5)
    assert [space.arch_id(x) for x in a] == [space.arch_id(x) for x in sample_archs(space, 20, 5)]
    assert len({space.arch_id(x) for x in a}) == 20


@pytest.mark.parametrize("backend", ["onnxruntime", "jax"])
def test_real_worker_build_and_validate(tmp_path, micro_yaml, backend):
    space = Space.by_name(str(micro_yaml))
    out = tmp_path / f"{backend}.json"
    table = build_table(space, backend, out, timing=FAST, calibration_samples=4, progress=False)
    prov = table.data["provenance"]
    assert prov["threads"] == 1 and len(prov["cores"]) == 1 and prov["cpu_model"]
    assert prov["scheduler"] == "normal"  # real-time priority only when asked for
    env = prov["thread_env"]  # what the worker really ran with: one-thread pools, flags XLA reads
    assert env["PJRT_NPROC"] == "1" and xla_flags_problem(env["XLA_FLAGS"]) is None
    assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"].split()
    assert table.data["backend"]["name"] == backend and table.data["backend"]["versions"]
    rule = {"onnxruntime": "int8-if-both-le8", "jax": "float"}[backend]
    assert set(table.entries) == set(keys_to_measure(space, rule))
    assert all(e["median_ms"] > 0 for e in table.entries.values())
    if backend == "onnxruntime":  # int8 and float variants of the same block are both measured
        assert any("-bw:8-ba:8" in k for k in table.entries)
    assert table.predict(space.sample(0)) > 0
    if backend == "jax":
        return  # compiling networks is slow; the CLI's validate runs on onnxruntime below

    from nas.cli import main
    import io
    import contextlib

    buf = io.StringIO()
    plot = tmp_path / "scatter.png"
    with contextlib.redirect_stdout(buf):
        rc = main(["latency", "validate", "--table", str(out), "--space", str(micro_yaml),
                   "--samples", "3", "--seed", "1", "--json", "--no-progress", "--plot", str(plot)])
    assert rc == 0
    report = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert report["n"] == 3 and 0 <= report["within_10pct"] <= 1
    assert set(report) >= {"within_10pct", "rmse_ms", "rmspe", "kendall_tau", "n"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_killed_during_calibration_resumes_the_networks_left(tmp_path):
    space = Space.by_name("tiny")
    out = tmp_path / "t.json"
    n_keys = len(keys_to_measure(space, "int8-if-both-le8"))
    with pytest.raises(Killed):
        build_table(space, "onnxruntime", out, measurer=FakeMeasurer(die_after=n_keys + 5),
                    calibration_samples=8, progress=False, flush_every=1)
    saved = json.loads(out.read_text())
    done = {p["arch_id"] for p in saved["calibration"]["points"]}
    assert len(saved["entries"]) == n_keys and len(done) == 5
    second = FakeMeasurer()
    table = build_table(space, "onnxruntime", out, measurer=second, calibration_samples=8,
                        progress=False)
    assert len(second.measured) == 3 and not set(second.measured) & done
    assert table.model["n"] == 8


class ProcessFakeMeasurer:
    """Each ``measure`` call is a 'process' whose whole-network times are scaled by its own
    factor (the per-process effect of whole jax networks); one item fails in one process."""

    def __init__(self, factors, fail=None):
        self.factors, self.calls, self.fail = list(factors), 0, fail

    def measure(self, items):
        factor = self.factors[self.calls % len(self.factors)]
        self.calls += 1
        yield from FakeMeasurer().measure([])  # the info reply
        for item in items:
            if item["id"] == self.fail and self.calls == 2:
                yield {"type": "error", "id": item["id"], "error": "boom"}
                continue
            ms = (0.01 * len(item["specs"]) + 0.001 * (len(item["id"]) % 7)) * factor
            yield {"type": "result", "id": item["id"], "median_ms": ms, "p10_ms": ms,
                   "p90_ms": ms, "n": 3}


def test_process_median_measurer_keeps_the_median_over_fresh_processes():
    items = [{"id": "a", "specs": [1, 2]}, {"id": "bb", "specs": [1]}]
    fake = ProcessFakeMeasurer([1.0, 1.3, 0.9], fail="bb")
    replies = list(ProcessMedianMeasurer(lambda: fake, 3).measure(items))
    assert fake.calls == 3 and [r["type"] for r in replies] == ["info", "result", "error"]
    a = replies[1]
    base = 0.02 + 0.001
    assert a["median_ms"] == pytest.approx(base) and a["p10_ms"] == pytest.approx(0.9 * base)
    assert a["p90_ms"] == pytest.approx(1.3 * base) and len(a["processes"]) == 3
    assert replies[2]["id"] == "bb"          # failed in one process: reported, not hidden
    with pytest.raises(ValueError, match="processes"):
        ProcessMedianMeasurer(lambda: fake, 0)


def test_build_times_calibration_networks_in_several_processes(tmp_path):
    space = Space.by_name("tiny")
    fake = ProcessFakeMeasurer([1.0])            # the layers: one process, factor 1
    out = tmp_path / "t.json"
    table = build_table(space, "onnxruntime", out, measurer=fake, calibration_samples=6,
                        progress=False, network_processes=3)
    assert fake.calls == 1 + 3                   # layers once, the networks in 3 processes
    assert table.data["provenance"]["network_processes"] == 3
    fake3 = ProcessFakeMeasurer([1.0, 1.5, 0.5])
    plain = build_table(space, "onnxruntime", tmp_path / "u.json", measurer=fake3,
                        calibration_samples=6, progress=False, network_processes=3)
    # layers were timed at factor 1 (first call); each network's median over x1.5 and x0.5
    # processes and the layers' process is the unscaled time
    for p in plain.data["calibration"]["points"]:
        m = p["measured"]
        assert m["p10_ms"] < m["median_ms"] < m["p90_ms"]
        assert m["p90_ms"] == pytest.approx(3 * m["p10_ms"])
