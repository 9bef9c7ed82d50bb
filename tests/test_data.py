"""Data specs, splits, K-fold, resizing, augmentation, batching and bad data files."""

import numpy as np
import pytest

from nas.data import (eval_batches, kfold_indices, load_data, parse_spec, prefetch, train_batches,
                      epoch_rng)
from nas.data.sources import read_digits
from nas.data.transforms import random_crop_flip
from nas.errors import NasInputError
from nas.space import Space


@pytest.fixture(scope="module")
def tiny():
    return Space.by_name("tiny")


def _mnist_like_npz(path, n=300):
    """Writes digits upscaled to MNIST's format: x N x 28 x 28 x 1 uint8, y N int64."""
    import jax

    x, y, _ = read_digits()
    x = np.asarray(jax.image.resize(x[:n], (n, 28, 28, 1), "linear"))
    np.savez(path, x=np.clip(x * 255, 0, 255).astype(np.uint8), y=y[:n].astype(np.int64))
    return y[:n]


def test_digits_splits_are_deterministic_disjoint_and_stratified(tiny):
    a = load_data("digits", tiny, seed=3)
    b = load_data("digits", tiny, seed=3)
    c = load_data("digits", tiny, seed=4)
    assert a.x_train.shape[1:] == (16, 16, 1) and a.x_train.dtype == np.float32
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_test, c.y_test)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    # disjoint: no test image appears in train
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1)}
    assert sum(r.tobytes() in train_rows for r in a.x_test.reshape(len(a.x_test), -1)) < 3
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    assert abs(float(a.x_train.mean())) < 1e-3 and abs(float(a.x_train.std()) - 1) < 1e-3
    assert not a.augment  # 16 px: no crop/flip


def test_kfold_puts_each_example_in_exactly_one_validation_fold():
    y = np.repeat(np.arange(5), 13)
    folds = kfold_indices(y, 4, seed=1)
    seen = np.concatenate([v for _, v in folds])
    assert sorted(seen.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert np.bincount(y[va], minlength=5).min() >= 3  # stratified
    with pytest.raises(NasInputError):
        kfold_indices(y, 1)


def test_dataset_fold_keeps_test_and_repartitions_train_val(tiny):
    d = load_data("digits", tiny)
    f0, f1 = d.fold(0, 5), d.fold(1, 5)
    assert len(f0.y_train) + len(f0.y_val) == len(d.y_train) + len(d.y_val)
    assert np.array_equal(f0.x_test, d.x_test)
    assert not np.array_equal(f0.y_val[:20], f1.y_val[:20]) or len(f0.y_val) != len(f1.y_val)


def test_npz_mnist_format_is_resized_to_the_space(tmp_path, tiny):
    labels = _mnist_like_npz(tmp_path / "mnist.npz")
    d = load_data(f"npz:{tmp_path / 'mnist.npz'}", tiny, test_fraction=0.2)
    assert d.image_shape == (16, 16, 1)
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == len(labels)
    assert sorted(np.concatenate([d.y_train, d.y_val, d.y_test]).tolist()) == sorted(labels.tolist())


def test_cifar10_binary_folder_and_augmentation(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}.bin", 8) for i in range(1, 6)), ("test_batch.bin", 10)]:
        rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], 1)
        rec.astype(np.uint8).tofile(tmp_path / name)
    d = load_data(f"cifar10:{tmp_path}", resolution=(32, 32), channels=3, num_classes=10)
    assert d.image_shape == (32, 32, 3) and len(d.y_test) == 10 and d.augment
    assert len(d.y_train) + len(d.y_val) == 40
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(NasInputError, match="data_batch_3.bin.*multiple of 3073"):
        load_data(f"cifar10:{tmp_path}", resolution=(32, 32), channels=3, num_classes=10)


def test_image_folder_loader(tmp_path, tiny):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    d = load_data(f"folder:{tmp_path}", resolution=(16, 16), channels=1, num_classes=2)
    assert d.image_shape == (16, 16, 1)
    assert sorted(set(np.concatenate([d.y_train, d.y_val, d.y_test]).tolist())) == [0, 1]
    (tmp_path / "dog" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(NasInputError, match="bad.png: cannot decode image"):
        load_data(f"folder:{tmp_path}", resolution=(16, 16), channels=1, num_classes=2)


@pytest.mark.parametrize("content, match", [
    (None, "file not found"),
    (b"garbage bytes, not a zip", "not a readable .npz"),
    ({"x": np.zeros((20, 8, 8, 1)), "y": np.full(20, 12)}, "y: label 12 out of range"),
    ({"x": np.zeros((20, 5)), "y": np.zeros(20, int)}, "x: shape .* is not N x H x W x C"),
    ({"x": np.zeros((20, 8, 8, 1)), "y": np.zeros(19, int)}, "y: 19 labels for 20 images"),
    ({"x": np.zeros((20, 8, 8, 1))}, "y: missing array"),
    ({"x": np.zeros((20, 8, 8, 1)), "y": np.zeros(20)}, "y: expected a 1-D array of integer"),
])
def test_bad_npz_files_give_one_line_errors(tmp_path, tiny, content, match):
    path = tmp_path / "d.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(NasInputError, match=match) as e:
        load_data(f"npz:{path}", tiny)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_bad_spec_strings():
    assert parse_spec("npz:/a/b.npz") == ("npz", "/a/b.npz")
    for bad in ("mnist", "npz", "digits:x"):
        with pytest.raises(NasInputError):
            parse_spec(bad)


def test_cli_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    from nas.cli import main

    arch = tmp_path / "a.json"
    assert main(["space", "sample", "tiny"]) == 0
    arch.write_text(capsys.readouterr().out)
    np.savez(tmp_path / "bad.npz", x=np.zeros((20, 8, 8, 1)), y=np.full(20, 99))
    rc = main(["train", "--arch", str(arch), "--data", f"npz:{tmp_path / 'bad.npz'}",
               "--epochs", "1", "--workdir", str(tmp_path / "w"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "label 99 out of range" in err
    assert not (tmp_path / "w").exists()


def test_batches_fixed_shapes_drop_and_pad():
    x = np.arange(10 * 2).reshape(10, 2, 1, 1).astype(np.float32)
    y = np.arange(10)
    tb = list(train_batches(x, y, 4, epoch_rng(0, 0)))
    assert len(tb) == 2 and all(b["x"].shape == (4, 2, 1, 1) for b in tb)
    assert len(set(np.concatenate([b["y"] for b in tb]).tolist())) == 8
    again = list(train_batches(x, y, 4, epoch_rng(0, 0)))
    assert all(np.array_equal(a["y"], b["y"]) for a, b in zip(tb, again))
    eb = list(eval_batches(x, y, 4))
    assert [b["mask"].sum() for b in eb] == [4, 4, 2] and eb[-1]["x"].shape == (4, 2, 1, 1)


def test_prefetch_keeps_order_and_reraises():
    out = [int(b["y"][0]) for b in prefetch(({"y": np.array([i])} for i in range(7)), to_device=False)]
    assert out == list(range(7))

    def broken():
        yield {"y": np.array([0])}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(broken(), to_device=False))


def test_random_crop_flip_moves_content_without_changing_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
    out = random_crop_flip(x, np.random.default_rng(1), pad=2)
    assert out.shape == x.shape
    hits = 0
    for i in range(64):
        for img in (x[i], x[i, :, ::-1]):
            p = np.pad(img, ((2, 2), (2, 2), (0, 0)))
            hits += any(np.array_equal(out[i], p[a:a + 8, b:b + 8]) for a in range(5) for b in range(5))
    assert hits >= 64
    flipped = sum(np.array_equal(random_crop_flip(x[i:i + 1], np.random.default_rng(i), pad=0)[0],
                                 x[i, :, ::-1]) for i in range(64))
    assert 15 < flipped < 50


def _write_idx(path, arr, gz=False, magic_type=0x08):
    """Writes an unsigned-byte IDX file the way MNIST's are written (big-endian header)."""
    import gzip

    header = bytes([0, 0, magic_type, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(arr, np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _mnist_folder(folder, n_train=40, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y, gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_folder_keeps_its_own_test_split(tmp_path, tiny, gz):
    from nas.data.idx import read_mnist_folder

    written = _mnist_folder(tmp_path, gz=gz)
    x, y, (x_test, y_test) = read_mnist_folder(str(tmp_path))
    assert np.array_equal(x[..., 0], written["train"][0]) and np.array_equal(y, written["train"][1])
    assert np.array_equal(x_test[..., 0], written["t10k"][0])
    d = load_data(f"mnist:{tmp_path}", tiny)
    assert d.image_shape == (16, 16, 1) and len(d.y_test) == 20
    assert sorted(d.y_test.tolist()) == sorted(written["t10k"][1].tolist())
    assert len(d.y_train) + len(d.y_val) == 40


@pytest.mark.parametrize("damage, match", [
    ("missing", "missing t10k-labels-idx1-ubyte"),
    ("truncated", "train-images-idx3-ubyte.gz: .* data bytes where the header declares"),
    ("magic", "train-images-idx3-ubyte.gz: not an IDX file"),
    ("type", "train-images-idx3-ubyte.gz: IDX value type 0x0d is not unsigned byte"),
    ("count", "train-labels-idx1-ubyte.gz: 39 labels for 40 images"),
])
def test_bad_mnist_folders_give_one_line_errors(tmp_path, tiny, damage, match):
    import gzip

    _mnist_folder(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    if damage == "missing":
        (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    elif damage == "truncated":
        raw = gzip.open(images).read()
        gzip.open(images, "wb").write(raw[:-5])
    elif damage == "magic":
        gzip.open(images, "wb").write(b"PK\x03\x04 not idx")
    elif damage == "type":
        _write_idx(images, np.zeros((40, 28, 28), np.uint8), gz=True, magic_type=0x0D)
    else:
        _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8), gz=True)
    with pytest.raises(NasInputError, match=match) as e:
        load_data(f"mnist:{tmp_path}", tiny)
    assert "\n" not in str(e.value)


def test_npz_in_keras_layout_uses_its_test_arrays(tmp_path, tiny):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), np.arange(50) % 10
    xt, yt = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), (np.arange(30) + 3) % 10
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    d = load_data(f"npz:{tmp_path / 'mnist.npz'}", tiny)
    assert len(d.y_test) == 30 and sorted(d.y_test.tolist()) == sorted(yt.tolist())
    assert len(d.y_train) + len(d.y_val) == 50
    np.savez(tmp_path / "half.npz", x=x, y=y, x_test=xt)
    with pytest.raises(NasInputError, match="y_test: 'x_test' without 'y_test'"):
        load_data(f"npz:{tmp_path / 'half.npz'}", tiny)
    np.savez(tmp_path / "shape.npz", x=x, y=y, x_test=xt[:, :20], y_test=yt)
    with pytest.raises(NasInputError, match="x_test: test images are"):
        load_data(f"npz:{tmp_path / 'shape.npz'}", tiny)
