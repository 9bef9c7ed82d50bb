"""``nas latency fit``: per-layer entries fitted to whole-network latencies of a device, few-shot
with a prior table of the same space."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas.cli import main
from nas.errors import NasInputError
from nas.latency.calibrate import layer_contribution
from nas.latency.fit import fit_table, read_measurements
from nas.latency.table import LatencyTable

PRIOR = "latency_tables/onnxruntime-cpu/mixed.json"
#: The synthetic device: each operator runs at its own speed relative to the prior device.
DEVICE_SPEED = {"mbconv": 1.9, "fused_mbconv": 1.4, "dwsep": 2.6, "skip": 1.0, "stem": 3.0,
                "head": 1.5}
INTERCEPT_MS = 0.02


def _device_ms(prior: LatencyTable, arch, noise: float) -> float:
    keys = prior.network_keys(prior.space.block_specs(arch))
    total = INTERCEPT_MS + sum(DEVICE_SPEED[k.split("-", 1)[0]] *
                               layer_contribution(prior.model, k, prior.entry_ms(k)) for k in keys)
    return total * (1.0 + noise)


@pytest.fixture(scope="module")
def device():
    prior = LatencyTable.load(PRIOR)
    space = prior.space
    rng = np.random.default_rng(0)
    archs = [space.sample(9000 + i) for i in range(130)]
    points = [{"arch": a, "latency_ms": _device_ms(prior, a, 0.02 * rng.standard_normal())}
              for a in archs]
    return prior, space, points[:30], points[30:]


def _held_out(table: LatencyTable, test) -> np.ndarray:
    return np.array([table.predict(p["arch"]) / p["latency_ms"] - 1.0 for p in test])


def test_thirty_networks_with_a_prior_fit_a_device_whose_operators_run_at_other_speeds(device, tmp_path):
    prior, space, train, test = device
    table, report = fit_table(space, train, tmp_path / "fitted.json", prior=prior, device="synthetic")
    rel = _held_out(LatencyTable.load(tmp_path / "fitted.json"), test)
    assert np.mean(np.abs(rel) <= 0.10) >= 0.95, np.sort(np.abs(rel))[-10:]
    assert report["n"] == 30 and table.data["validation"]["n"] == 30
    assert table.remote_device.startswith("synthetic")
    # the prior rescaled by one factor cannot follow operators that sped up differently
    one_scale = np.array([prior.predict(p["arch"]) for p in test])
    meas = np.array([p["latency_ms"] for p in test])
    best = np.exp(np.median(np.log(meas / one_scale)))
    assert np.mean(np.abs(best * one_scale / meas - 1.0) <= 0.10) < 0.9
    # without the prior (a MACs estimate instead) the same 30 networks fit worse
    _, no_prior = fit_table(space, train, tmp_path / "macs.json", device="synthetic")
    rel_macs = _held_out(LatencyTable.load(tmp_path / "macs.json"), test)
    assert np.sqrt(np.mean(rel_macs ** 2)) > 1.5 * np.sqrt(np.mean(rel ** 2))


def test_fit_cli_and_bad_measurement_lines(device, tmp_path, capsys):
    prior, space, train, _ = device
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in train[:12]))
    out = tmp_path / "t.json"
    assert main(["latency", "fit", "--space", "mixed", "--measurements", str(path), "--out",
                 str(out), "--prior", PRIOR, "--device", "board", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n"] == 12 and out.exists()
    for bad, field in ((json.dumps({"arch": train[0]["arch"]}), "line 2.latency_ms"),
                       (json.dumps({"arch": train[0]["arch"], "latency_ms": -1}), "line 2.latency_ms"),
                       ("{not json", "line 2"),
                       (json.dumps({"latency_ms": 1.0}), "line 2.arch")):
        path.write_text(json.dumps(train[0]) + "\n" + bad + "\n" + json.dumps(train[1]) + "\n")
        rc = main(["latency", "fit", "--space", "mixed", "--measurements", str(path), "--out",
                   str(tmp_path / "x.json")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and field in err[0], err
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(NasInputError, match="exists"):
        fit_table(space, read_measurements_of(train[:5], tmp_path, space), out, prior=prior)


def read_measurements_of(points, tmp_path, space):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in points))
    return read_measurements(path, space)
