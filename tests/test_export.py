"""Export: packed integer weights, orbax, StableHLO and ONNX round trips, sizes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from nas.archfile import ArchFile
from nas.blocks.quant import fake_quant_weight, init_quant_steps
from nas.errors import NasInputError
from nas.export.exporter import (ExportOptions, compare_logits, export_model, fp32_counterpart_bytes,
                        load_orbax, parse_formats)
from nas.export.packed import (load_packed, pack_bits, pack_variables, packed_nbytes,
                             quantize_weight, save_packed, unpack_bits, unpack_variables)
from nas.model import build_model, init_variables
from nas.space import Space
from quant_helpers import quant_space



def mixed_arch(space: Space) -> dict:
    """An Arch mixing int8 layers, weight-only quantized layers, float layers, pruning, rank, SE,
    and an int8 Fused-MBConv (4-bit weights, SE, pruned, kernel 5)."""
    return space.validate({
        "s1_b1_op": "dwsep", "s1_b1_kernel": 3, "s1_b1_bits_w": 8, "s1_b1_bits_a": 32,
        "s2_b1_op": "mbconv", "s2_b1_kernel": 5, "s2_b1_expand": 6, "s2_b1_bits_w": 4, "s2_b1_bits_a": 8, "s2_b1_width": 0.5,
        "s2_b2_op": "mbconv", "s2_b2_kernel": 3, "s2_b2_expand": 3, "s2_b2_bits_w": 32,
        "s2_b2_bits_a": 32, "s2_b2_width": 1.0,
        "s3_b1_op": "mbconv", "s3_b1_kernel": 3, "s3_b1_expand": 3, "s3_b1_se": True, "s3_b1_bits_w": 8, "s3_b1_bits_a": 8,
        "s3_b1_width": 0.5,
        "s3_b2_op": "fused_mbconv", "s3_b2_kernel": 5, "s3_b2_expand": 3, "s3_b2_se": True,
        "s3_b2_bits_w": 4, "s3_b2_bits_a": 8, "s3_b2_width": 0.5,
        "s4_b1_kernel": 3, "s4_b1_expand": 6, "s4_b1_rank": 0.5, "s4_b1_bits_w": 4, "s4_b1_bits_a": 8})


def names_of(space: Space) -> tuple[str, ...]:
    return ("stem",) + tuple(s.prefix for s in space.slots) + ("head",)


def trained_like(model, rng_seed: int = 0, x: np.ndarray | None = None):
    """Variables as after training: non-trivial BatchNorm statistics (some negative BN scales),
    running activation ranges set, and (given images `x`) learned-style steps (LSQ's init)."""
    v = init_variables(model, jax.random.PRNGKey(rng_seed), (1, 16, 16, 1))
    rng = np.random.default_rng(rng_seed)

    def perturb(path, a):
        name = jax.tree_util.keystr(path)
        a = np.asarray(a)
        if "amax" in name:  # activation ranges as after training
            return np.full(a.shape, 6.0, np.float32)
        if "step" in name:
            return a
        if "var" in name:
            return (1.0 + 0.5 * rng.random(a.shape)).astype(np.float32)
        if "mean" in name or "bias" in name:
            return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        if "bn" in name and "scale" in name:  # negative multipliers flip the folded weights' sign
            return (rng.choice([-1.0, 1.0], a.shape) * (0.5 + rng.random(a.shape))).astype(np.float32)
        return a

    v = jax.tree_util.tree_map_with_path(perturb, v)
    return v if x is None else init_quant_steps(model, v, jnp.asarray(x[:64]))


@pytest.fixture(scope="module")
def setup():
    space = quant_space(extra_ops=("fused_mbconv",))
    arch = mixed_arch(space)
    model = build_model(space, arch)
    x = np.random.default_rng(1).standard_normal((192, 16, 16, 1)).astype(np.float32)
    variables = trained_like(model, x=x)
    return space, arch, model, variables, x


# ------------------------------------------------------------------------------ packing
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_bits_roundtrip_and_density(bits):
    q_max = 2 ** (bits - 1) - 1
    q = np.random.default_rng(bits).integers(-q_max, q_max + 1, size=(3, 5, 7)).astype(np.int8)
    packed = pack_bits(q, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-q.size * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, q.shape), q)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_weight_is_the_trained_grid(bits):
    w = np.random.default_rng(0).standard_normal((3, 3, 1, 12)).astype(np.float32)
    q, scale = quantize_weight(w, bits)
    assert np.abs(q).max() <= 2 ** (bits - 1) - 1 and scale.shape == (12,)
    np.testing.assert_allclose(q * scale, np.asarray(fake_quant_weight(jnp.asarray(w), bits)),
                               rtol=1e-6, atol=1e-7)


def test_packed_file_roundtrip(setup, tmp_path):
    space, arch, model, variables, x = setup
    packed = pack_variables(space.block_specs(arch), names_of(space), variables)
    entries = packed["manifest"]["entries"]
    four_bit = [k for k, e in entries.items() if e.get("bits") == 4]
    assert four_bit, "4-bit kernels are stored as integers"
    for k in four_bit:
        n = int(np.prod(entries[k]["shape"]))
        assert packed["arrays"][k].size == -(-n // 2)  # two 4-bit weights per byte
    assert not any("s2_b2/expand/kernel" in k and k.startswith("q:") for k in entries)  # float layer
    assert any(k.startswith("q:s4_b1/expand/kernel_u") for k in entries)  # low-rank factors kept
    # pruned: s2_b1 expands 16 -> 96 and keeps half
    assert packed["arrays"]["scale:s2_b1/expand/kernel"].shape == (48,)
    size = save_packed(packed, tmp_path / "m.npk")
    assert size < packed_nbytes(packed) + 16 * len(packed["arrays"]) + 4096
    back = load_packed(tmp_path / "m.npk")
    assert back["manifest"]["entries"] == entries
    assert any(np.ndim(v) == 0 for v in packed["arrays"].values())  # activation ranges
    for key, value in packed["arrays"].items():
        assert back["arrays"][key].shape == np.shape(value), key
        np.testing.assert_array_equal(back["arrays"][key], value)
    # without activation quantization the packed model is the trained one up to float rounding
    fspace = Space.by_name("tiny")
    farch = fspace.sample(3)
    fmodel = build_model(fspace, farch)
    fvars = trained_like(fmodel)
    fback = unpack_variables(pack_variables(fspace.block_specs(farch), names_of(fspace), fvars))
    fapply = jax.jit(lambda v, xb: fmodel.apply(v, xb))
    fref, fgot = np.asarray(fapply(fvars, x)), np.asarray(fapply(fback, x))
    np.testing.assert_allclose(fgot, fref, rtol=1e-4, atol=1e-4 * np.abs(fref).max())


def test_compressed_model_is_at_most_a_sixth_of_its_fp32_counterpart():
    space = quant_space(extra_ops=("fused_mbconv",))
    arch = dict(mixed_arch(space))
    for k in arch:
        if k.endswith("bits_w"):
            arch[k] = 4
        elif k.endswith("bits_a"):
            arch[k] = 8
        elif k.endswith("width"):
            arch[k] = 0.5
        elif k.endswith("_op") and arch[k] == "skip":
            arch[k] = "mbconv"
    arch = space.validate(arch)
    model = build_model(space, arch)
    v = init_variables(model, jax.random.PRNGKey(0), (1, 16, 16, 1))
    specs, names = space.block_specs(arch), names_of(space)
    compressed = packed_nbytes(pack_variables(specs, names, v))
    fp32 = fp32_counterpart_bytes(specs, names)
    assert compressed * 6 <= fp32
    # the counterpart is the same network uncompressed: packing it at 32 bits changes nothing
    params32 = sum(np.size(p) for p in jax.tree.leaves(v["params"]))
    assert fp32 > params32 * 4


# ------------------------------------------------------------------------------ formats
@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    space, arch, model, variables, x = setup
    out = tmp_path_factory.mktemp("export")
    logits = np.asarray(jax.jit(lambda v, xb: model.apply(v, xb))(variables, x))
    report = export_model(ArchFile(space, arch), variables, out,
                          ExportOptions(formats=parse_formats("all"), measure_latency=True),
                          check=(x, logits.argmax(-1)))  # every image, near-ties included
    return out, report


def test_every_format_is_written_loaded_back_and_matches(exported, setup):
    out, report = exported
    assert set(report["files"]) == {"json", "packed", "orbax", "stablehlo", "onnx", "tflite"}
    for fmt in ("standalone", "packed", "orbax", "stablehlo", "onnx", "tflite"):
        assert report["checks"][fmt]["ok"], (fmt, report["checks"][fmt])
        assert fmt == "standalone" or report["files"][fmt]["bytes"] > 0
    # every format computes the trained quantizers: the same logits up to float rounding, which
    # moves a value across a rounding boundary in a few images at most
    for fmt in ("standalone", "packed", "orbax", "stablehlo", "onnx", "tflite"):
        check = report["checks"][fmt]
        assert check["agreement"] == 1.0, (fmt, check)
        assert check["exact_fraction"] >= 0.97, (fmt, check)
    saved = json.loads((out / "export.json").read_text())
    assert saved["ok"] and saved["arch_id"] == report["arch_id"]
    meta = json.loads((out / "arch.json").read_text())["meta"]
    assert "export" in meta and "sizes" in meta["export"]
    lat = report["latency"]["measured"]
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]


def test_stablehlo_has_symbolic_batch(exported, setup):
    from nas.export.to_stablehlo import run_stablehlo

    out, _ = exported
    space, arch, model, variables, x = setup
    blob = (out / "model.stablehlo").read_bytes()
    x = x[:16]
    full = run_stablehlo(blob, x)  # the report compared these with the JAX model
    for n in (1, 5):
        np.testing.assert_allclose(run_stablehlo(blob, x[:n]), full[:n], rtol=1e-5,
                                   atol=1e-5 * np.abs(full).max())


def test_orbax_restores_float_variables(exported, setup):
    out, _ = exported
    space, arch, model, variables, x = setup
    target = jax.tree.map(np.asarray, variables)
    back = load_orbax(out / "orbax", target)
    assert jax.tree.structure(back) == jax.tree.structure(target)


def test_onnx_runs_int8_where_both_bitwidths_are_8_or_less(exported):
    from nas.export.to_onnx import run_onnx

    out, report = exported
    model = onnx.load(str(out / "model.onnx"))
    assert report["onnx"]["int8_layers"] == ["stem", "s2_b1", "s3_b1", "s3_b2", "s4_b1", "head"]
    assert report["onnx"]["weight_only_int8_layers"] == []
    assert not report["onnx"]["recalibrated"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 6
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    fp32 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and
            len(t.dims) == 4 and np.prod(t.dims) > 64]
    assert int8, "quantized weights are stored as int8"
    # the only big float kernels are those of the float layer s2_b2 and the weight-only s1_b1
    assert len(fp32) == 5
    logits = run_onnx(model.SerializeToString(), np.zeros((2, 16, 16, 1), np.float32))
    assert logits.shape == (2, 10)


def test_onnx_weight_only_layers_can_store_int8_weights(setup):
    from nas.export.to_onnx import export_onnx, run_onnx

    space, arch, model, variables, x = setup
    specs, names = space.block_specs(arch), names_of(space)
    fv = unpack_variables(pack_variables(specs, names, variables))
    plain, _ = export_onnx(specs, names, fv, calibration=x[:64])
    small, info = export_onnx(specs, names, fv, calibration=x[:64], weight_only_int8=True)
    assert info["weight_only_int8_layers"] == ["s1_b1"]
    assert len(small.SerializeToString()) < len(plain.SerializeToString())
    a, b = run_onnx(plain.SerializeToString(), x[:16]), run_onnx(small.SerializeToString(), x[:16])
    # 8-bit weights with BatchNorm folded per channel are exactly on the int8 grid
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_compare_logits_tolerances():
    ref = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    assert compare_logits(ref, ref + 1e-4, quantized=False)["ok"]
    assert not compare_logits(ref, ref + 0.1, quantized=False)["ok"]
    assert compare_logits(ref, ref + 0.1, quantized=True)["ok"]
    swapped = -ref
    res = compare_logits(ref, swapped, quantized=True, labels=np.array([0, 1]))
    assert not res["ok"] and res["agreement"] == 0.0 and res["reference_accuracy"] == 1.0


# ---------------------------------------------------------------------------- bad input
def test_bad_formats_and_files(tmp_path):
    with pytest.raises(NasInputError, match="coreml"):
        parse_formats("json,coreml")
    assert parse_formats("all")[0] == "json"
    bad = tmp_path / "m.npk"
    bad.write_text("not a zip")
    with pytest.raises(NasInputError, match="m.npk"):
        load_packed(bad)
    with pytest.raises(NasInputError, match="missing.npk"):
        load_packed(tmp_path / "missing.npk")
    truncated = tmp_path / "t.npk"
    truncated.write_bytes(b"NASPACK1" + (40).to_bytes(4, "little") + b'{"format": "nas-pa' + bytes(30))
    with pytest.raises(NasInputError, match="corrupt manifest"):
        load_packed(truncated)


def _fake_trained_workdir(path, space, arch):
    from nas.training.checkpoint import Checkpointer, write_arch

    model = build_model(space, arch)
    v = trained_like(model)
    af = ArchFile(space, arch)
    write_arch(path, af)
    ck = Checkpointer(path, space.arch_id(arch))
    ck.save(1, v, {"step": np.zeros((), np.int32)}, {"epoch": 1})
    ck.close()


def test_cli_export_and_mismatched_arch(tmp_path):
    space = Space.by_name("tiny")
    arch, other = space.sample(0), space.sample(1)
    _fake_trained_workdir(tmp_path / "wd", space, arch)
    ArchFile(space, arch).save(tmp_path / "a.json")
    ArchFile(space, other).save(tmp_path / "b.json")
    run = lambda *a: subprocess.run([sys.executable, "-m", "nas.cli", "export", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("--arch", str(tmp_path / "b.json"), "--ckpt", str(tmp_path / "wd"), "--out",
            str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--ckpt holds Arch" in r.stderr
    r = run("--arch", str(tmp_path / "a.json"), "--ckpt", str(tmp_path / "wd"), "--out",
            str(tmp_path / "out"), "--format", "json,packed,onnx", "--no-latency", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(report["files"]) == {"json", "packed", "onnx"}
    assert report["meta"]["preprocess"]["layout"] == "NHWC"
    assert (tmp_path / "out" / "model.onnx").exists()
