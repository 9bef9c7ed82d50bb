"""`nas latency check`: a fixed sample re-measured, the drift ratio and its verdict; the quick
drift warning of `nas search` / `nas run`."""

import contextlib
import dataclasses
import io
import json

import pytest

from nas.cli import main
from nas.latency.build import build_table
from nas.latency.check import (SKIP_ENV, check_sample, check_table, drift_check_skipped,
                               quick_drift_warning, warn_if_drifted)
from nas.latency.measure import TimingConfig
from nas.latency.table import LatencyTable
from nas.space import Space
from test_latency_build import FAST, FakeMeasurer


class ScaledMeasurer:
    """Replies with the table's own figure times `factor` (entries, or calibration networks)."""

    def __init__(self, table, factor):
        self.table, self.factor, self.items = table, factor, []
        self.nets = {p["arch_id"]: p["measured"]["median_ms"]
                     for p in table.data.get("calibration", {}).get("points", [])}

    def measure(self, items):
        yield {"type": "info"}
        for item in items:
            self.items.append(item)
            base = self.table.entries[item["id"]]["median_ms"] if item["kind"] == "block" \
                else self.nets[item["id"]]
            ms = base * self.factor
            yield {"type": "result", "id": item["id"], "median_ms": ms, "p10_ms": ms,
                   "p90_ms": ms, "n": 5}


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables") / "tiny.json"
    return build_table(Space.by_name("tiny"), "onnxruntime", out, measurer=FakeMeasurer(),
                       calibration_samples=8, progress=False)


def test_check_sample_is_fixed_and_spans_the_entries(tiny_table):
    keys, nets = check_sample(tiny_table, 12, 3)
    assert (keys, nets) == check_sample(LatencyTable.load(tiny_table.source), 12, 3)
    medians = sorted(e["median_ms"] for e in tiny_table.entries.values())
    got = [tiny_table.entries[k]["median_ms"] for k in keys]
    assert len(set(keys)) == 12 and min(got) == medians[0] and max(got) == medians[-1]
    measured = sorted(p["measured"]["median_ms"] for p in tiny_table.data["calibration"]["points"])
    assert len({p["arch_id"] for p in nets}) == 3
    assert nets[0]["measured"]["median_ms"] == measured[0]
    assert nets[-1]["measured"]["median_ms"] == measured[-1]


@pytest.mark.parametrize("factor, fits, words", [(1.04, True, "table fits this machine"),
                                                 (2.0, False, "2.00 times slower"),
                                                 (0.5, False, "2.00 times faster")])
def test_drift_ratio_and_verdict(tiny_table, factor, fits, words):
    m = ScaledMeasurer(tiny_table, factor)
    report = check_table(tiny_table, measurer=m)
    assert report["n"] == 15 and {i["kind"] for i in m.items} == {"block", "network"}
    assert report["ratio_median"] == pytest.approx(factor, rel=1e-3)
    assert report["fits"] is fits and words in report["verdict"]
    if not fits:
        assert "rebuild with `nas latency build --space tiny --backend onnxruntime" in \
            report["verdict"]


def test_quick_warning_is_one_line_with_ratio_and_rebuild_command(tiny_table):
    assert quick_drift_warning(tiny_table, measurer=ScaledMeasurer(tiny_table, 1.0)) is None
    m = ScaledMeasurer(tiny_table, 1.3)
    line = quick_drift_warning(tiny_table, measurer=m)
    assert len(m.items) == 5  # 4 entries, 1 network: seconds, not a minute
    assert "\n" not in line and "measured / table = 1.30" in line
    assert "nas latency build --space tiny --backend onnxruntime" in line


def test_drift_check_is_skipped_by_flag_env_and_pytest(monkeypatch, tiny_table):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    assert drift_check_skipped(False)  # inside pytest
    monkeypatch.setenv(SKIP_ENV, "force")
    assert not drift_check_skipped(False)  # 'force' runs it even under pytest
    assert drift_check_skipped(True)  # --no-drift-check always wins
    err = io.StringIO()
    line = warn_if_drifted(tiny_table.source, tiny_table.space,
                           measurer=ScaledMeasurer(tiny_table, 1.5), stream=err)
    assert line and err.getvalue().count("\n") == 1 and "--no-drift-check" in err.getvalue()
    monkeypatch.setenv(SKIP_ENV, "1")
    assert warn_if_drifted(tiny_table.source, tiny_table.space,
                           measurer=ScaledMeasurer(tiny_table, 1.5), stream=err) is None


def test_cli_check_with_a_real_worker(tmp_path, micro_yaml):
    space = Space.by_name(str(micro_yaml))
    out = tmp_path / "micro.json"
    build_table(space, "onnxruntime", out, measurer=FakeMeasurer(), timing=FAST,
                calibration_samples=4, progress=False)  # made-up figures: the ratio is arbitrary
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["latency", "check", "--table", str(out), "--space", str(micro_yaml),
                   "--entries", "3", "--networks", "1", "--json"])
    report = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert rc == (0 if report["fits"] else 1), err.getvalue()
    assert report["n"] == 4 and all(i["measured_ms"] > 0 for i in report["items"])
    assert report["ratio_min"] <= report["ratio_median"] <= report["ratio_max"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["latency", "check", "--table", str(out), "--space", str(micro_yaml),
                     "--threshold", "0"]) == 2
    assert "--threshold" in err.getvalue()


def test_search_and_run_warn_once_before_they_start(monkeypatch, capsys):
    import nas.latency.check as check
    from nas.commands.search_cmd import drift_check
    from nas.runs.config import load_config

    loaded = load_config("experiments/digits_random.yaml")
    assert loaded.latency_table
    seen = []

    def fake_quick(table, threshold=0.15, measurer=None):
        seen.append(table.source)
        return "warning: latency table T: measured / table = 1.40; rebuild with `nas latency build`"

    monkeypatch.setattr(check, "quick_drift_warning", fake_quick)
    monkeypatch.setenv(SKIP_ENV, "force")
    drift_check(loaded, no_drift_check=False)
    err = capsys.readouterr().err
    assert seen == [loaded.latency_table] and err.count("\n") == 1 and "1.40" in err
    drift_check(loaded, no_drift_check=True)
    assert capsys.readouterr().err == "" and len(seen) == 1
    for command in ("search", "run"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--no-drift-check" in capsys.readouterr().out


def test_exported_model_is_timed_in_a_worker_with_the_tables_settings(micro_yaml):
    from nas.export.to_onnx import measure_latency_ms
    from nas.latency.onnx_blocks import network_to_onnx

    space = Space.by_name(str(micro_yaml))
    specs = space.block_specs(space.sample(0))
    model = network_to_onnx(specs, batch=1)  # input 'input', NCHW
    shape = (specs[0].cin, *specs[0].in_hw)
    # the table's (short) timing, not the default: n counts every round's repetitions, so
    # without extra rounds (taken only when a noisy machine leaves no round clean) the table's
    # timing gives at most rounds x max_reps, far fewer than the default's minimum
    quick = dataclasses.replace(FAST, extra_rounds=0)
    t = measure_latency_ms(model, shape, provenance={"threads": 1, "timing": quick.to_dict()})
    assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"]
    default = TimingConfig()
    assert t["n"] <= quick.rounds * quick.max_reps < default.rounds * default.min_reps
    with pytest.raises(RuntimeError, match="could not time the exported model"):
        measure_latency_ms(model, (5, 5, 5), provenance={"timing": FAST.to_dict()})
