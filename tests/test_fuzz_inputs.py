"""Property-based fuzzing of every user input through the real CLI (issue #9, bad input).

Kinds: experiment configs (``nas search CFG --check``), space YAML (``nas space show/sample``),
arch JSON (``nas arch summary``), latency tables (``nas latency show``), data files (npz,
image folders, CIFAR-10 binary folders, through ``nas search CFG --check``). Each input is a
mutation of a valid shipped file or random garbage; every one must give exit code 0 (accepted)
or 2 with exactly one stderr line and no traceback, and leave the input file unchanged. Valid
shipped files must be accepted.

Examples per test: ``NAS_FUZZ_EXAMPLES`` (default 50, derandomized for CI). The inputs tried per
kind are printed at the end and saved in ``.pytest_cache/v/nas/fuzz_counts``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzz_helpers import (ACCEPTED, COUNTS, FUZZ_SETTINGS, ROOT, broken_text, dump_json,
                          dump_yaml, mutated_tree, names_input, run_cli)
from nas.latency.schema import content_checksum

CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
ARCHS = sorted((ROOT / "search_spaces" / "published").glob("*.json")) + \
    [ROOT / "experiments" / "digits_teacher_arch.json"]
TABLES = sorted((ROOT / "latency_tables").glob("*/*.json"))
DIGITS_CONFIGS = [p for p in CONFIGS if "cifar10" not in p.name]


@pytest.fixture(scope="module", autouse=True)
def fuzz_counts(request):
    """Prints and saves the number of inputs tried per kind when the module ends."""
    yield
    counts = {k: {"tried": COUNTS[k], "accepted": ACCEPTED[k]} for k in sorted(COUNTS)}
    counts["total"] = sum(COUNTS.values())
    if os.environ.get("NAS_FUZZ_COUNTS_FILE"):
        Path(os.environ["NAS_FUZZ_COUNTS_FILE"]).write_text(json.dumps(counts))
    if getattr(request.config, "cache", None) is not None:
        request.config.cache.set("nas/fuzz_counts", counts)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nfuzz inputs tried: {json.dumps(counts)}")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A scratch folder the generated inputs are written to."""
    return tmp_path_factory.mktemp("fuzz")


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --------------------------------------------------------------------------------- valid files
@pytest.mark.parametrize("config", DIGITS_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_pass_check(config):
    rc, out, _ = run_cli("config", ["search", str(config), "--check", "--json"], [config])
    assert rc == 0
    summary = json.loads(out.splitlines()[-1])
    assert summary["data"]["num_classes"] == 10 and summary["slots"] >= 1


def test_shipped_spaces_archs_tables_pass():
    for space in SPACES:
        assert run_cli("space", ["space", "show", str(space)], [space])[0] == 0
    for arch in ARCHS:
        assert run_cli("arch", ["arch", "summary", str(arch), "--json"], [arch])[0] == 0
    for table in TABLES:
        assert run_cli("latency_table", ["latency", "show", "--table", str(table), "--json"],
                       [table])[0] == 0


# ------------------------------------------------------------------------------------ configs
def _config_base(index: int) -> dict:
    return yaml.safe_load(CONFIGS[index % len(CONFIGS)].read_text())


@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(CONFIGS) - 1))
def test_fuzz_config_fields(work, data, index):
    cfg = data.draw(mutated_tree(_config_base(index)))
    path = _write(work / "config.yaml", dump_yaml(cfg))
    rc, _, err = run_cli("config", ["search", str(path), "--check"], [path])
    if rc == 2 and "data" not in err:  # a data/latency file error names that file instead
        assert names_input(err, path) or "latency" in err or "space" in err, err


@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(CONFIGS) - 1))
def test_fuzz_config_text(work, data, index):
    text = CONFIGS[index % len(CONFIGS)].read_text()
    path = _write(work / "config_text.yaml", data.draw(broken_text(text)))
    run_cli("config", ["search", str(path), "--check"], [path])


# ------------------------------------------------------------------------------------- spaces
@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(SPACES) - 1))
def test_fuzz_space_fields(work, data, index):
    space = data.draw(mutated_tree(yaml.safe_load(SPACES[index].read_text())))
    path = _write(work / "space.yaml", dump_yaml(space))
    rc, _, err = run_cli("space", ["space", "show", str(path)], [path])
    if rc == 2:
        assert names_input(err, path), err
    else:
        assert run_cli("space", ["space", "sample", str(path), "--seed", "3"], [path])[0] == 0


@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(SPACES) - 1))
def test_fuzz_space_text(work, data, index):
    path = _write(work / "space_text.yaml", data.draw(broken_text(SPACES[index].read_text())))
    rc, _, err = run_cli("space", ["space", "show", str(path)], [path])
    if rc == 2:
        assert names_input(err, path), err


# -------------------------------------------------------------------------------------- archs
@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(ARCHS) - 1))
def test_fuzz_arch_fields(work, data, index):
    arch = data.draw(mutated_tree(json.loads(ARCHS[index].read_text())))
    path = _write(work / "arch.json", dump_json(arch))
    rc, _, err = run_cli("arch", ["arch", "summary", str(path), "--json", "--layers"], [path])
    if rc == 2:
        assert names_input(err, path), err


@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(ARCHS) - 1))
def test_fuzz_arch_text(work, data, index):
    path = _write(work / "arch_text.json", data.draw(broken_text(ARCHS[index].read_text())))
    rc, _, err = run_cli("arch", ["arch", "summary", str(path)], [path])
    if rc == 2:
        assert names_input(err, path), err


# ----------------------------------------------------------------------------- latency tables
_TABLE_CACHE: dict[Path, dict] = {}


def _table_base(index: int) -> dict:
    path = TABLES[index]
    if path not in _TABLE_CACHE:
        _TABLE_CACHE[path] = json.loads(path.read_text())
    return _TABLE_CACHE[path]


@st.composite
def _small_table(draw, index: int) -> dict:
    """A shipped table with most entries dropped (fast to mutate) or whole."""
    table = json.loads(json.dumps(_table_base(index)))
    if draw(st.booleans()):
        keep = sorted(table["entries"])[:draw(st.integers(0, 6))]
        table["entries"] = {k: table["entries"][k] for k in keep}
        table["calibration"]["points"] = table["calibration"]["points"][:2]
        table["energy"] = {k: v for k, v in list(table.get("energy", {}).items())[:3]}
    return table


@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(TABLES) - 1), resign=st.booleans())
def test_fuzz_latency_table_fields(work, data, index, resign):
    table = json.loads(dump_json(data.draw(mutated_tree(data.draw(_small_table(index))))))
    if resign and isinstance(table, dict):  # get past the checksum to the deeper checks
        table["checksum"] = content_checksum(table)
    path = _write(work / "table.json", dump_json(table))
    space = _table_base(index)["space"]["name"]
    arch = work / f"arch_{space}.json"
    if not arch.exists():
        from nas.space import Space

        s = Space.by_name(space)
        arch.write_text(json.dumps({"space": space, "arch": s.sample(1)}))
    argv = ["latency", "show", "--table", str(path), "--json"]
    argv += ["--arch", str(arch)] if data.draw(st.booleans()) else []
    rc, _, err = run_cli("latency_table", argv, [path, arch])
    if rc == 2:
        assert names_input(err, path, arch), err


@FUZZ_SETTINGS
@given(data=st.data(), index=st.integers(0, len(TABLES) - 1))
def test_fuzz_latency_table_text(work, data, index):
    text = json.dumps(data.draw(_small_table(index)))
    path = _write(work / "table_text.json", data.draw(broken_text(text)))
    rc, _, err = run_cli("latency_table", ["latency", "show", "--table", str(path)], [path])
    if rc == 2:
        assert names_input(err, path), err


# --------------------------------------------------------------------------------- data files
def _data_config(work: Path, spec: str) -> Path:
    return _write(work / "data_config.yaml",
                  dump_yaml({"space": "tiny", "data": spec, "strategy": {"name": "random"}}))


def _check_data(kind: str, work: Path, spec: str, data_path: Path) -> tuple[int, str]:
    config = _data_config(work, spec)
    rc, _, err = run_cli(kind, ["search", str(config), "--check"], [config, data_path])
    return rc, err


DTYPES = ["uint8", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool",
          "complex64", "<U2", "S2", "datetime64[s]", "object", "V4"]


@st.composite
def _array(draw, images: bool):
    import numpy as np

    if images:  # mostly N x 16 x 16 x C (the tiny space's size: no resize), some odd shapes
        ndim = draw(st.sampled_from([4, 4, 4, 3, 1, 2, 0, 5]))
        shape = [draw(st.sampled_from([12, 20, 0, 1, 3]))]
        shape += [draw(st.sampled_from([16, 16, 16, 8, 1, 0, 33])) for _ in range(max(0, ndim - 1))]
        if ndim == 4:
            shape[-1] = draw(st.sampled_from([1, 1, 3, 4, 2, 0]))
    else:
        ndim = draw(st.sampled_from([1, 1, 1, 2, 0, 3]))
        shape = [draw(st.sampled_from([12, 20, 11, 0, 1]))]
        shape += [draw(st.sampled_from([1, 2])) for _ in range(max(0, ndim - 1))]
    shape = shape[:ndim]
    dtype = draw(st.sampled_from(DTYPES[:8] * 3 + DTYPES[8:]))
    n = int(np.prod(shape)) if shape else 1
    fill = draw(st.sampled_from(["random", "random", "nan", "inf", "huge", "negative"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if images:
        base = rng.uniform(0, 255, n)
    else:
        base = rng.integers(0, draw(st.sampled_from([10, 10, 11, 3, 1000])), n).astype(float)
    if fill == "nan" and n:
        base[rng.integers(n)] = float("nan")
    elif fill == "inf" and n:
        base[rng.integers(n)] = float("inf")
    elif fill == "huge":
        base = base * 1e30
    elif fill == "negative":
        base = base - 300
    with np.errstate(all="ignore"):
        if dtype == "object":
            arr = np.empty(n, object)
            arr[:] = [float(v) for v in base]
        elif dtype in ("<U2", "S2"):
            arr = base.astype(int, casting="unsafe").astype(dtype) if np.all(np.isfinite(base)) \
                else base.astype(dtype)
        elif dtype == "V4":
            arr = np.zeros(n, "V4")
        elif dtype == "datetime64[s]":
            arr = np.nan_to_num(base).astype("int64").astype(dtype)
        else:
            arr = base.astype(dtype)
    return arr.reshape(shape)


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_npz(work, data):
    import numpy as np

    path = work / "data.npz"
    arrays = {}
    if data.draw(st.integers(0, 9)):
        arrays["x"] = data.draw(_array(True))
    if data.draw(st.integers(0, 9)):
        arrays["y"] = data.draw(_array(False))
    if data.draw(st.booleans()):
        arrays[data.draw(st.sampled_from(["z", "x_test", "labels"]))] = np.zeros(3)
    np.savez(path, **arrays) if arrays else path.write_bytes(b"")
    how = data.draw(st.sampled_from(["as is", "as is", "as is", "truncate", "garbage", "flip"]))
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=200)))
    elif how == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    rc, err = _check_data("data_npz", work, f"npz:{path}", path)
    if rc == 2:
        assert names_input(err, path), err


def test_npz_valid_and_pickled(work):
    import numpy as np

    rng = np.random.default_rng(0)
    path = work / "good.npz"
    np.savez(path, x=rng.integers(0, 255, (30, 16, 16), dtype=np.uint8), y=np.arange(30) % 10)
    assert _check_data("data_npz", work, f"npz:{path}", path)[0] == 0
    bad = work / "pickled.npz"
    np.savez(bad, x=np.array([{"a": 1}] * 12, dtype=object), y=np.arange(12) % 10)
    rc, err = _check_data("data_npz", work, f"npz:{bad}", bad)
    assert rc == 2 and "pickled.npz" in err


_IMAGE_MODES = ["L", "RGB", "RGBA", "P", "1", "I;16", "I", "F", "CMYK", "LA"]
_IMAGE_FORMATS = [(".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP"), (".gif", "GIF"),
                  (".tiff", "TIFF"), (".webp", "WEBP")]


@st.composite
def _image_bytes(draw) -> tuple[str, bytes]:
    import numpy as np
    from PIL import Image

    suffix, fmt = draw(st.sampled_from(_IMAGE_FORMATS))
    how = draw(st.sampled_from(["image"] * 30 + ["truncated", "garbage", "empty"]))
    if how == "garbage":
        return suffix, draw(st.binary(max_size=100))
    if how == "empty":
        return suffix, b""
    mode = draw(st.sampled_from(_IMAGE_MODES))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    try:
        im.convert(mode).save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # mode not writable in this format
        im.save(buf, format=fmt)
    raw = buf.getvalue()
    if how == "truncated":
        raw = raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    return suffix, raw


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_image_folder(work, data):
    import shutil

    root = work / "images"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for c in range(data.draw(st.sampled_from([2, 2, 3, 1, 0]))):
        cdir = root / f"class{c}"
        cdir.mkdir()
        for i in range(data.draw(st.sampled_from([6, 6, 1, 0]))):
            suffix, raw = data.draw(_image_bytes())
            (cdir / f"img{i}{suffix}").write_bytes(raw)
        if data.draw(st.integers(0, 9)) == 0:
            (cdir / "dir.png").mkdir()
    rc, err = _check_data("data_folder", work, f"folder:{root}", root)
    if rc == 2:
        assert "images" in err, err


def test_valid_image_and_cifar10_folders_pass(work):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = work / "good_images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    assert _check_data("data_folder", work, f"folder:{root}", root)[0] == 0
    cifar = work / "good_cifar"
    cifar.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, 3)
        (cifar / name).write_bytes(rec.tobytes())
    assert _check_data("data_cifar10", work, f"cifar10:{cifar}", cifar)[0] == 0


def test_image_folder_decompression_bomb(work):
    """A PNG whose header claims a gigapixel image is refused in one line, not decoded."""
    import struct
    import zlib

    root = work / "bomb"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    w = h = 60_000
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) \
        + chunk(b"IEND", b"")
    for c in ("a", "b"):
        for i in range(6):
            (root / c / f"{i}.png").write_bytes(png)
    rc, err = _check_data("data_folder", work, f"folder:{root}", root)
    assert rc == 2 and "0.png" in err


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_cifar10_folder(work, data):
    import shutil

    import numpy as np

    root = work / "cifar"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        how = data.draw(st.sampled_from(["records", "records", "records", "missing", "garbage",
                                         "truncated", "bad_label", "empty"]))
        n = data.draw(st.integers(1, 3))
        rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        raw = rec.tobytes()
        if how == "missing":
            continue
        if how == "garbage":
            raw = data.draw(st.binary(max_size=50))
        elif how == "truncated":
            raw = raw[:-data.draw(st.integers(1, 3072))]
        elif how == "bad_label":
            raw = bytes([data.draw(st.integers(10, 255))]) + raw[1:]
        elif how == "empty":
            raw = b""
        (root / name).write_bytes(raw)
    rc, err = _check_data("data_cifar10", work, f"cifar10:{root}", root)
    if rc == 2:
        assert "cifar" in err, err


def test_internal_error_is_one_line_with_saved_traceback(monkeypatch, capsys):
    """A bug (not bad input) gives exit 1 and one line naming the file holding the traceback."""
    import nas.commands.space_cmd as space_cmd
    from nas.cli import main

    def broken(args):
        raise KeyError("boom\nsecond line")

    monkeypatch.delenv("NAS_DEBUG", raising=False)
    monkeypatch.setattr(space_cmd, "_list", broken)
    assert main(["space", "list"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "internal error: KeyError" in err
    saved = Path(err.split("traceback in ")[1].split(";")[0])
    assert "Traceback" in saved.read_text() and "boom" in saved.read_text()
    saved.unlink()
    monkeypatch.setenv("NAS_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["space", "list"])


def test_search_refuses_bad_latency_table_before_any_work(tmp_path):
    """A sample-based search used to record every candidate as failed; now it exits 2 first."""
    table = tmp_path / "table.json"
    table.write_text((ROOT / "latency_tables" / "onnxruntime-cpu" / "tiny.json").read_text()[:500])
    config = _write(tmp_path / "c.yaml", dump_yaml({
        "space": "tiny", "strategy": {"name": "random"}, "budget": 2, "latency_table": str(table),
        "objective": {"metric": "latency_ms", "target": 0.05}}))
    rc, _, err = run_cli("config", ["search", str(config), "--workdir", str(tmp_path / "w")],
                         [config, table])
    assert rc == 2 and "table.json" in err
    assert not (tmp_path / "w" / "history.jsonl").exists()
