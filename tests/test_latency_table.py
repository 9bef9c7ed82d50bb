"""Latency tables: loading checks, predict, expected (value and gradient), missing keys."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.errors import NasInputError
from nas.latency.build import keys_to_measure
from nas.latency.calibrate import fit_model
from nas.latency.precision import effective_key
from nas.latency.schema import content_checksum
from nas.latency.table import LatencyTable, new_table_data, write_json_atomic
from nas.space import Space
from nas.spec import BlockSpec

MODEL = {"kind": "per-class", "intercept_ms": -0.02,
         "scale": {"float": 0.9, "int8": 1.1, "skip": 0.5},
         "offset_ms": {"float": 0.0, "int8": -0.001, "skip": 0.003}, "n": 10}


def _fake_ms(key: str) -> float:
    """A deterministic, key-dependent latency."""
    return 0.01 + (sum(map(ord, key)) % 97) / 1000.0


def make_table_data(space: Space, backend: str = "onnxruntime") -> dict:
    rule = {"onnxruntime": "int8-if-both-le8", "jax": "float"}[backend]
    data = new_table_data(space, {"name": backend, "precision_rule": rule, "versions": {"x": "1"},
                                  "device": "cpu"},
                          {"cpu_model": "test", "cores": [0], "threads": 1, "batch": 1,
                           "date": "2026-01-01"})
    for key in keys_to_measure(space, rule):
        ms = _fake_ms(key)
        data["entries"][key] = {"median_ms": ms, "p10_ms": 0.9 * ms, "p90_ms": 1.2 * ms, "n": 50}
    data["calibration"] = {"seed": 1, "points": [], "model": MODEL}
    data["complete"] = True
    data["checksum"] = content_checksum(data)
    return data


@pytest.fixture(scope="module")
def tiny():
    return Space.by_name("tiny")


@pytest.fixture(scope="module")
def mixed():
    return Space.by_name("mixed")


@pytest.fixture
def tiny_table_path(tmp_path, tiny):
    path = tmp_path / "tiny.json"
    write_json_atomic(path, make_table_data(tiny))
    return path


def _resave(path, data):
    data["checksum"] = content_checksum(data)
    path.write_text(json.dumps(data))


def test_predict_is_calibrated_sum_of_entries(tiny_table_path, tiny):
    table = LatencyTable.load(tiny_table_path)
    arch = tiny.sample(3)
    specs = tiny.block_specs(arch)
    keys = [effective_key(s, "int8-if-both-le8") for s in specs]
    want = MODEL["intercept_ms"]
    for k in keys:
        cls = "skip" if k.startswith("skip") else "float"  # tiny never has both bits <= 8
        want += MODEL["scale"][cls] * _fake_ms(k) + MODEL["offset_ms"][cls]
    assert table.predict(arch) == pytest.approx(want, rel=1e-9)
    assert table.plain_sum(arch) == pytest.approx(sum(_fake_ms(k) for k in keys), rel=1e-9)


def test_refuses_table_of_another_space_definition(tiny_table_path, tiny):
    d = tiny.to_dict()
    d["stages"][0]["channels"] = 20  # same name, other shapes
    with pytest.raises(NasInputError, match=r"space\.hash.*another definition of space 'tiny'"):
        LatencyTable.load(tiny_table_path, Space.from_dict(d))
    with pytest.raises(NasInputError, match=r"space\.name.*not 'mixed'"):
        LatencyTable.load(tiny_table_path, Space.by_name("mixed"))


def test_refuses_table_of_another_backend_or_rule(tiny_table_path):
    with pytest.raises(NasInputError, match=r"backend\.name.*'onnxruntime', not 'jax'.*nas latency build"):
        LatencyTable.load(tiny_table_path, backend="jax")
    data = json.loads(tiny_table_path.read_text())
    data["backend"]["precision_rule"] = "float"
    _resave(tiny_table_path, data)
    with pytest.raises(NasInputError, match=r"precision_rule"):
        LatencyTable.load(tiny_table_path)


@pytest.mark.parametrize("edit, match", [
    (lambda text: text[: len(text) // 2], r"not valid JSON at line \d+ column \d+"),
    (lambda text: text.replace('"median_ms": ', '"median_ms": -', 1), r"entries\..*less than or equal"),
    (lambda text: text.replace('"n": 50', '"n": "many"', 1), r"entries\..*\.n: 'many' is not of type"),
    (lambda text: text.replace('"format": "nas-latency-table"', '"format": "other"'), r"format:"),
])
def test_malformed_table_is_one_clear_line(tiny_table_path, edit, match):
    text = json.dumps(json.loads(tiny_table_path.read_text()), indent=1)
    tiny_table_path.write_text(edit(text))
    with pytest.raises(NasInputError, match=match) as info:
        LatencyTable.load(tiny_table_path)
    line = info.value.one_line()
    assert "\n" not in line and str(tiny_table_path) in line


def test_tampered_values_fail_the_checksum(tiny_table_path):
    data = json.loads(tiny_table_path.read_text())
    key = next(iter(data["entries"]))
    data["entries"][key]["median_ms"] *= 1.01  # still schema-valid, but edited
    data["entries"][key]["p90_ms"] *= 2
    tiny_table_path.write_text(json.dumps(data))
    with pytest.raises(NasInputError, match=r"checksum: content does not match its checksum"):
        LatencyTable.load(tiny_table_path)


def test_inverted_percentiles_are_refused(tiny_table_path):
    data = json.loads(tiny_table_path.read_text())
    key = next(iter(data["entries"]))
    data["entries"][key]["p10_ms"] = 10 * data["entries"][key]["median_ms"]
    _resave(tiny_table_path, data)
    with pytest.raises(NasInputError, match=r"p10_ms <= median_ms <= p90_ms"):
        LatencyTable.load(tiny_table_path)


def test_missing_key_names_key_and_command(tiny_table_path, tiny):
    data = json.loads(tiny_table_path.read_text())
    arch = tiny.sample(0)
    missing = effective_key(tiny.block_specs(arch)[2], "int8-if-both-le8")
    del data["entries"][missing]
    _resave(tiny_table_path, data)
    table = LatencyTable.load(tiny_table_path)
    with pytest.raises(NasInputError) as info:
        table.predict(arch)
    msg = info.value.one_line()
    assert missing in msg
    assert f"nas latency build --space tiny --backend onnxruntime --out {tiny_table_path}" in msg


def test_cli_reports_bad_table_in_one_line(tiny_table_path, capsys):
    from nas.cli import main

    tiny_table_path.write_text('{"format": ')
    assert main(["latency", "show", "--table", str(tiny_table_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err and "Traceback" not in err


def _one_hot(space, arch):
    return {label: np.eye(len(vals))[list(vals).index(arch[label])]
            for label, vals in space.decisions()}


@pytest.mark.parametrize("space_name", ["tiny", "mixed"])
def test_expected_equals_predict_on_one_hot(tmp_path, space_name):
    space = Space.by_name(space_name)
    path = tmp_path / "t.json"
    write_json_atomic(path, make_table_data(space))
    table = LatencyTable.load(path)
    for seed in range(5):
        arch = space.sample(seed)
        assert float(table.expected(_one_hot(space, arch))) == pytest.approx(table.predict(arch),
                                                                             rel=1e-5)


def test_expected_gradient_is_exact(tmp_path, mixed):
    """expected() is linear in each vector: d E / d p_label[j] = E(p_label = e_j) - E(p_label = 0),
    and central finite differences agree."""
    path = tmp_path / "t.json"
    write_json_atomic(path, make_table_data(mixed))
    table = LatencyTable.load(path)
    expected = jax.jit(table.expected)
    rng = np.random.default_rng(0)
    probs = {label: jax.nn.softmax(jnp.asarray(rng.standard_normal(len(vals)), jnp.float32))
             for label, vals in mixed.decisions()}
    grad = jax.jit(jax.grad(table.expected))(probs)
    for label in ["s2_b1_kernel", "s2_b2_op", "s3_b3_bits_w", "s4_b2_expand", "s6_b2_rank"]:
        n = len(mixed.choices(label))
        base = float(expected(dict(probs, **{label: jnp.zeros(n)})))
        for j in range(n):
            with_j = float(expected(dict(probs, **{label: jnp.eye(n)[j]})))
            assert float(grad[label][j]) == pytest.approx(with_j - base, rel=1e-4, abs=1e-6)
            step = 0.05 * jnp.eye(n)[j]
            fd = (float(expected(dict(probs, **{label: probs[label] + step})))
                  - float(expected(dict(probs, **{label: probs[label] - step})))) / 0.1
            assert float(grad[label][j]) == pytest.approx(fd, rel=1e-2, abs=1e-5)


def test_expected_checks_its_input(tiny_table_path, tiny):
    table = LatencyTable.load(tiny_table_path)
    probs = {label: np.ones(len(vals)) / len(vals) for label, vals in tiny.decisions()}
    label = tiny.labels()[0]
    with pytest.raises(NasInputError, match=label):
        table.expected({k: v for k, v in probs.items() if k != label})
    with pytest.raises(NasInputError, match="one per choice"):
        table.expected(dict(probs, **{label: np.ones(7) / 7}))


def test_calibration_fit_recovers_a_known_model():
    rng = np.random.default_rng(0)
    stats = []
    for _ in range(30):
        n_skip, n_int8 = int(rng.integers(0, 4)), int(rng.integers(0, 6))
        stats.append({"S_float": rng.uniform(0.1, 1), "S_int8": n_int8 * rng.uniform(0.01, 0.05),
                      "S_skip": 0.005 * n_skip, "N_float": 10 - n_skip - n_int8, "N_int8": n_int8,
                      "N_skip": n_skip})
    measured = [0.05 + 0.8 * s["S_float"] + 1.3 * s["S_int8"] + 0.004 * s["N_skip"]
                - 0.002 * s["N_int8"] for s in stats]
    model = fit_model(stats, measured)
    assert model["kind"] == "per-class"
    assert model["intercept_ms"] == pytest.approx(0.05, abs=1e-6)
    assert model["scale"]["float"] == pytest.approx(0.8, rel=1e-5)
    assert model["scale"]["int8"] == pytest.approx(1.3, rel=1e-5)
    assert model["offset_ms"]["skip"] == pytest.approx(0.004, abs=1e-7)
    assert model["offset_ms"]["int8"] == pytest.approx(-0.002, abs=1e-7)
    assert model["scale"]["skip"] == 0.0  # a skip layer costs its offset only


def test_effective_precision_rules():
    spec = BlockSpec("mbconv", 16, 24, 2, (8, 8), kernel=3, expand=3)
    key = lambda bw, ba, rule: effective_key(  # noqa: E731
        BlockSpec(**{**spec.to_dict(), "in_hw": (8, 8), "bits_w": bw, "bits_a": ba}), rule)
    ort = "int8-if-both-le8"
    assert key(4, 8, ort) == key(8, 8, ort) == key(2, 4, ort) and "-bw:8-ba:8" in key(4, 8, ort)
    assert key(8, 32, ort) == key(32, 8, ort) == key(32, 32, ort) and "-bw:32-ba:32" in key(8, 32, ort)
    assert len({key(bw, ba, "float") for bw in (2, 4, 8, 32) for ba in (8, 32)}) == 1


def test_show_predicts_an_arch_file(tiny_table_path, tiny, tmp_path, capsys):
    from nas.cli import main

    arch = tiny.sample(4)
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(json.dumps({"space": "tiny", "arch": arch}))
    assert main(["latency", "show", "--table", str(tiny_table_path), "--arch", str(arch_path),
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = LatencyTable.load(tiny_table_path)
    assert info["arch"]["predicted_ms"] == pytest.approx(table.predict(arch), abs=1e-5)
    assert info["arch"]["source"] == "estimated" and info["arch"]["energy_mj"] > 0
    assert info["space"]["name"] == "tiny" and info["entries"] == len(table.entries)
