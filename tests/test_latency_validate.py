"""Validation Archs cover the predicted range and its exact extremes; calibration Archs are
drawn the same way but never the same; the result is stored in the table and shown."""

import contextlib
import io
import json

import numpy as np
import pytest

from nas.cli import main
from nas.latency.build import build_table, calibration_archs
from nas.latency.calibrate import IDENTITY_MODEL
from nas.latency.sampling import SlotOptions, extreme_archs, stratified_archs
from nas.latency.table import LatencyTable, sample_archs, write_json_atomic
from nas.latency.validate import (store_validation, validate_table, validation_archs,
                                  validation_record)
from nas.latency.worker import spec_from_dict
from nas.space import Space
from test_latency_build import FAST, FakeMeasurer
from test_latency_table import make_table_data

# a model whose skip offset makes a skip layer cost more than some real layers: the extremes
# must follow the calibrated contributions, not the raw entries
ODD_MODEL = {"kind": "per-class", "intercept_ms": -0.05,
             "scale": {"float": 0.8, "int8": 1.2, "skip": 0.0},
             "offset_ms": {"float": 0.0, "int8": -0.002, "skip": 0.04}, "n": 10}


class PredictingMeasurer:
    """Replies to network items with the table's prediction times `factor` (and records them)."""

    def __init__(self, table, factor=1.0):
        self.table, self.factor, self.ids = table, factor, []

    def measure(self, items):
        yield {"type": "info", "cpu_model": "fake cpu", "cores": [1], "threads": 1,
               "scheduler": "normal"}
        for item in items:
            self.ids.append(item["id"])
            specs = [spec_from_dict(s) for s in item["specs"]]
            ms = self.table.predict_specs(specs) * self.factor
            yield {"type": "result", "id": item["id"], "median_ms": ms, "p10_ms": ms,
                   "p90_ms": ms, "n": 5}


@pytest.fixture(scope="module", params=["tiny", "mixed"])
def table(request):
    space = Space.by_name(request.param)
    data = make_table_data(space)
    data["calibration"]["model"] = ODD_MODEL
    return LatencyTable(data, space)


def test_extremes_are_exact(table):
    space = table.space
    fastest, slowest = extreme_archs(table)
    lo, hi = table.predict(fastest), table.predict(slowest)
    preds = [table.predict(a) for a in sample_archs(space, 1500, 3)]
    assert lo <= min(preds) + 1e-12 and hi >= max(preds) - 1e-12
    assert lo < min(preds) or hi > max(preds)  # uniform sampling alone misses at least one end
    for label in space.labels():  # no single change makes the fastest faster, the slowest slower
        for value in space.choices(label):
            assert table.predict(space.canonical(dict(fastest, **{label: value}))) >= lo - 1e-12
            assert table.predict(space.canonical(dict(slowest, **{label: value}))) <= hi + 1e-12
    opts = SlotOptions(table)
    assert opts.predict([int(np.argmin(c)) for c in opts.contrib]) == pytest.approx(lo, rel=1e-9)


def test_stratified_archs_spread_over_the_range_and_are_reproducible(table):
    space = table.space
    fastest, slowest = extreme_archs(table)
    lo, hi = table.predict(fastest), table.predict(slowest)
    archs = stratified_archs(table, 20, 0, "validation")
    assert len({space.arch_id(a) for a in archs}) == 20
    bins = {min(int((table.predict(a) - lo) / (hi - lo) * 10), 9) for a in archs}
    assert len(bins) >= 9  # every tenth of the range but at most one
    uniform = [table.predict(a) for a in sample_archs(space, 20, 0)]
    spread = [table.predict(a) for a in archs]
    assert np.ptp(spread) > 1.5 * np.ptp(uniform)
    again = stratified_archs(table, 20, 0, "validation")
    assert [space.arch_id(a) for a in again] == [space.arch_id(a) for a in archs]


def test_calibration_reaches_both_ends_of_the_range():
    """Tilted draws over many slots stop short of the ends (fbnet at 224: the calibration
    networks ended at 1.45x the fastest Arch, so the model extrapolated there); the pool holds
    every Arch one slot away from the fastest and the slowest, so the end bins are drawn."""
    space = Space.by_name("fbnet")
    table = LatencyTable(make_table_data(space), space)
    fastest, slowest = extreme_archs(table)
    lo, hi = table.predict(fastest), table.predict(slowest)
    cal = stratified_archs(table, 40, 0, "calibration",
                           exclude={space.arch_id(fastest), space.arch_id(slowest)})
    preds = [table.predict(a) for a in cal]
    # within 1% of the range of either end (tilted draws alone: 1.8% and 3.2% here)
    assert min(preds) - lo <= 0.01 * (hi - lo) and hi - max(preds) <= 0.01 * (hi - lo)


def test_calibration_and_validation_never_share_archs(table):
    space = table.space
    cal = calibration_archs(table, 30, 0)
    cal_ids = {space.arch_id(a) for a in cal}
    same_seed = {space.arch_id(a) for a in stratified_archs(table, 30, 0, "validation")}
    assert len(cal_ids) == 30 and not cal_ids & same_seed
    extremes = {space.arch_id(a) for a in extreme_archs(table, IDENTITY_MODEL)}
    assert not cal_ids & extremes  # validation always measures those
    # a table calibrated on some Archs never validates on them
    data = dict(table.data, calibration=dict(table.data["calibration"], points=[
        {"arch_id": space.arch_id(a), "arch": a,
         "measured": {"median_ms": 1.0, "p10_ms": 1.0, "p90_ms": 1.0, "n": 1}}
        for a in stratified_archs(table, 30, 0, "validation")]))
    chosen = validation_archs(LatencyTable(data, space), 30, 0)
    assert [r for r, _ in chosen[:2]] == ["fastest", "slowest"]
    assert not {space.arch_id(a) for _, a in chosen} & same_seed
    assert len(chosen) == 30


def test_build_draws_calibration_stratified_after_the_layers(tmp_path):
    space = Space.by_name("tiny")
    out = tmp_path / "t.json"
    table = build_table(space, "onnxruntime", out, measurer=FakeMeasurer(),
                        calibration_samples=10, calibration_seed=4, progress=False)
    ids = [p["arch_id"] for p in table.data["calibration"]["points"]]
    fresh = LatencyTable(dict(table.data, calibration={"seed": 4, "points": []}), space)
    assert ids == [space.arch_id(a) for a in calibration_archs(fresh, 10, 4)]
    assert table.data["calibration"]["sampling"] == "stratified-plain-sum"


def test_validate_reports_extremes_and_stores_the_result(tmp_path, table):
    path = tmp_path / "t.json"
    LatencyTable(json.loads(json.dumps(table.data)), table.space).save(path)
    t = LatencyTable.load(path)
    report = validate_table(t, 12, 0, measurer=PredictingMeasurer(t, 1.05), progress=False)
    assert report["n"] == 12 and report["within_10pct"] == 1.0 and report["kendall_tau"] == 1.0
    fastest, slowest = extreme_archs(t)
    assert report["extremes"]["fastest"]["arch_id"] == t.space.arch_id(fastest)
    assert report["extremes"]["slowest"]["measured_ms"] == pytest.approx(
        1.05 * t.predict(slowest))
    assert report["calibration_overlap"] == 0 and report["machine"]["cpu_model"] == "fake cpu"
    store_validation(t, validation_record(report, 0))
    again = LatencyTable.load(path)  # schema and checksum accept it
    val = again.data["validation"]
    assert val["n"] == 12 and val["seed"] == 0 and val["date"] and val["machine"]["host_load"]
    assert val["sampling"] == "stratified-predicted+extremes"

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["latency", "show", "--table", str(path)]) == 0
    assert f"validation ({val['date']}, n=12" in buf.getvalue()
    assert "within +-10%: 100.0%" in buf.getvalue()


def test_old_table_without_validation_still_loads_and_show_says_so(tmp_path):
    path = tmp_path / "old.json"
    write_json_atomic(path, make_table_data(Space.by_name("tiny")))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["latency", "show", "--table", str(path), "--json"]) == 0
    assert json.loads(buf.getvalue())["validation"] is None


@pytest.fixture
def micro_table(tmp_path, micro_yaml):
    space = Space.by_name(str(micro_yaml))
    out = tmp_path / "tables" / "micro.json"
    out.parent.mkdir()
    build_table(space, "onnxruntime", out, measurer=FakeMeasurer(), timing=FAST,
                calibration_samples=4, progress=False)
    return out


def _cli(args):
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, buf.getvalue(), err.getvalue()


def test_cli_validate_plots_in_the_current_folder_and_stores(tmp_path, micro_table, micro_yaml,
                                                           monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.name for p in micro_table.parent.iterdir())
    rc, out, err = _cli(["latency", "validate", "--table", str(micro_table), "--space",
                         str(micro_yaml), "--samples", "4", "--seed", "3", "--json",
                         "--no-progress"])
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n"] == 4 and report["stored"] and set(report["extremes"]) == {"fastest",
                                                                                 "slowest"}
    assert (work / "validate-micro-onnxruntime.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in micro_table.parent.iterdir()) == before  # nothing new there
    stored = LatencyTable.load(micro_table, Space.by_name(str(micro_yaml))).data["validation"]
    assert stored["n"] == 4 and stored["seed"] == 3

    monkeypatch.chdir(micro_table.parent)  # the default would land next to the table: refused
    rc, out, err = _cli(["latency", "validate", "--table", str(micro_table), "--space",
                         str(micro_yaml), "--samples", "4", "--no-progress"])
    assert rc == 2 and "--plot" in err and len(err.strip().splitlines()) == 1


def test_cli_validate_given_arch_files(tmp_path, micro_table, micro_yaml):
    space = Space.by_name(str(micro_yaml))
    files = []
    for i, arch in enumerate(sample_archs(space, 2, 8)):
        f = tmp_path / f"a{i}.json"
        f.write_text(json.dumps({"space": "micro", "arch": arch}))
        files.append(str(f))
    before = micro_table.read_bytes()
    rc, out, err = _cli(["latency", "validate", "--table", str(micro_table), "--space",
                         str(micro_yaml), "--archs", *files, "--plot", str(tmp_path / "p.png"),
                         "--json", "--no-progress"])
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n"] == 2 and report["sampling"] == "given" and not report["stored"]
    assert micro_table.read_bytes() == before  # given Archs are not stored
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"space": "micro", "arch": {"s1_b1_op": "conv9"}}))
    rc, out, err = _cli(["latency", "validate", "--table", str(micro_table), "--space",
                         str(micro_yaml), "--archs", str(bad), "--plot",
                         str(tmp_path / "q.png"), "--no-progress"])
    assert rc == 2 and "bad.json" in err and len(err.strip().splitlines()) == 1
