"""Readers of the raw data sources named by data specs.

Each reader returns ``(x, y, test)`` where ``x`` is ``N x H x W x C`` (uint8 or float32), ``y``
holds ``N`` integer labels and ``test`` is an optional ``(x_test, y_test)`` pair when the source
ships its own test split (CIFAR-10, MNIST-format folders, npz files with test arrays). Every problem with a user's file is a
:class:`~nas.errors.NasInputError` naming the file, what is wrong and the fix.

Sources:
    digits          scikit-learn's bundled 8x8 handwritten digits (1797 images, offline).
    npz:PATH        arrays ``x`` (N x H x W [x C], uint8 or float) and ``y`` (N ints), or
                    Keras's ``x_train``/``y_train``; optional ``x_test``/``y_test``.
    mnist:DIR       MNIST-format IDX files (MNIST, Fashion-MNIST, ...; nas.data.idx).
    cifar10:DIR     the standard binary folder: data_batch_1..5.bin and test_batch.bin.
    folder:DIR      one subfolder of images per class (class = subfolder name, sorted).
    synthetic       random class-dependent patterns (seeded), for smoke tests.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np

from nas.errors import NasInputError

Raw = tuple[np.ndarray, np.ndarray, "tuple[np.ndarray, np.ndarray] | None"]

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_digits() -> Raw:
    """Returns scikit-learn's bundled 8x8 digits as float32 in [0, 1], shape N x 8 x 8 x 1.

    Reads the CSV that scikit-learn ships (the file ``load_digits`` reads) without importing
    ``sklearn.datasets``, whose import alone takes about 1.6 s of every command's start.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise NasInputError("data: 'digits' needs scikit-learn installed (pip install scikit-learn)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    x = (table[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[..., None]
    return x, table[:, -1].astype(np.int32), None


def read_synthetic(num_classes: int, shape: tuple[int, int, int], n: int = 1200,
                   seed: int = 0) -> Raw:
    """Returns a learnable synthetic set: one random template per class plus noise.

    Args:
        num_classes: number of classes.
        shape: (H, W, C) of the images.
        n: number of examples.
        seed: random seed (the same seed gives the same data).
    """
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 1, (num_classes, *shape)).astype(np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    x = 0.6 * templates[y] + 0.4 * rng.uniform(0, 1, (n, *shape)).astype(np.float32)
    return x, y, None


NPZ_LAYOUTS = (("x", "y"), ("x_train", "y_train"))
NPZ_TEST = ("x_test", "y_test")


def read_npz(path: str) -> Raw:
    """Reads images and labels from an .npz file (no pickled objects allowed).

    Two layouts: arrays ``x`` and ``y``, or Keras's ``x_train`` and ``y_train`` (as in its
    ``mnist.npz``); either may add ``x_test`` and ``y_test``, which then become the test split.

    Raises:
        NasInputError: missing/unreadable file, missing arrays, wrong shapes or dtypes.
    """
    src = str(path)
    if not os.path.isfile(path):
        raise NasInputError("file not found; give an existing .npz with arrays 'x' and 'y'", src)
    try:
        with open(path, "rb") as raw:  # our own handle: closed on every error too
            magic = raw.read(6)
            raw.seek(0)
            if not magic.startswith(b"PK"):
                what = "a single .npy array" if magic == b"\x93NUMPY" else "no zip signature"
                raise NasInputError(f"not a readable .npz file ({what}); expected an archive "
                                    "with arrays 'x' and 'y' written with numpy.savez", src)
            f = np.load(raw, allow_pickle=False)
            names = set(f.files)
            layout = next((pair for pair in NPZ_LAYOUTS if pair[0] in names), NPZ_LAYOUTS[0])
            for name in layout:
                if name not in names:
                    raise NasInputError(f"missing array; the file has {sorted(names)}, "
                                        "expected 'x' (N x H x W x C images) and 'y' (N labels)",
                                        src, name)
            present = [n for n in NPZ_TEST if n in names]
            if len(present) == 1:
                other = NPZ_TEST[1 - NPZ_TEST.index(present[0])]
                raise NasInputError(f"'{present[0]}' without '{other}'; give both test arrays "
                                    "or neither", src, other)
            arrays = [f[n] for n in layout] + [f[n] for n in present]
    except NasInputError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip/npy fails in many ways (zlib, struct...)
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        raise NasInputError(f"not a readable .npz file ({type(e).__name__}: {reason}); "
                            "write it with numpy.savez", src) from None
    x, y = check_image_arrays(arrays[0], arrays[1], src, layout)
    if not present:
        return x, y, None
    x_test, y_test = check_image_arrays(arrays[2], arrays[3], src, NPZ_TEST)
    if x_test.shape[1:] != x.shape[1:]:
        raise NasInputError(f"test images are {x_test.shape[1:]}, training images "
                            f"{x.shape[1:]}; they must have the same H x W x C", src, "x_test")
    return x, y, (x_test, y_test)


def check_image_arrays(x: np.ndarray, y: np.ndarray, src: str,
                       names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    """Checks and normalizes an image array and its labels read from a user's file.

    Args:
        x: images, N x H x W or N x H x W x C (C in 1, 3, 4; an alpha channel is dropped).
        y: N integer labels (N or N x 1).
        src: the file, for error messages.
        names: the arrays' names in the file, for error messages.

    Returns:
        ``(x, y)``: N x H x W x C images (float32 if they were floating point) and int32 labels.

    Raises:
        NasInputError: wrong shapes, dtypes, counts, negative labels or non-finite values.
    """
    xname, yname = names
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or 0 in x.shape[1:3]:
        raise NasInputError(f"shape {x.shape} is not N x H x W x C with H, W >= 1 and C in "
                            "(1, 3, 4)", src, xname)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise NasInputError(f"dtype {x.dtype} is not numeric; use uint8 or float", src, xname)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise NasInputError(f"expected a 1-D array of integer labels, got shape {y.shape} "
                            f"dtype {y.dtype}", src, yname)
    if len(x) != len(y):
        raise NasInputError(f"{len(y)} labels for {len(x)} images; the counts must match", src, yname)
    if y.size and (int(y.min()) < 0 or int(y.max()) > np.iinfo(np.int32).max):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise NasInputError(f"label {bad} is not a class index (0, 1, ...)", src, yname)
    if x.shape[-1] == 4:
        x = x[..., :3]
    if np.issubdtype(x.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise NasInputError("contains NaN or infinite values (or values beyond float32's "
                                "range)", src, xname)
    return x, y.astype(np.int32)


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise NasInputError(f"cannot read CIFAR-10 batch ({e.strerror})", str(path)) from None
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise NasInputError(f"size {raw.size} bytes is not a multiple of {_CIFAR_RECORD} "
                            "(1 label byte + 3072 pixel bytes); the file is truncated or not "
                            "a CIFAR-10 binary batch", str(path))
    rec = raw.reshape(-1, _CIFAR_RECORD)
    y = rec[:, 0].astype(np.int32)
    if y.max() > 9:
        raise NasInputError(f"label {int(y.max())} out of range [0, 10); not a CIFAR-10 batch",
                            str(path))
    x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, y


def read_cifar10(folder: str) -> Raw:
    """Reads the CIFAR-10 binary version (``cifar-10-batches-bin``).

    Raises:
        NasInputError: the folder or a batch file is missing, truncated or has bad labels.
    """
    d = Path(folder)
    if not d.is_dir():
        raise NasInputError("folder not found; give the 'cifar-10-batches-bin' folder", folder)
    missing = [f for f in (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE) if not (d / f).is_file()]
    if missing:
        raise NasInputError(f"missing {missing[0]}; the folder needs data_batch_1..5.bin and "
                            "test_batch.bin", folder)
    parts = [_read_cifar_file(d / f) for f in CIFAR_TRAIN_FILES]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return x, y, _read_cifar_file(d / CIFAR_TEST_FILE)


def read_folder(folder: str, hw: tuple[int, int], channels: int) -> Raw:
    """Reads one subfolder of images per class, resizing each image to `hw` on load.

    Args:
        folder: the root folder; its sorted subfolder names are the classes 0..K-1.
        hw: (height, width) every image is resized to.
        channels: 1 (grayscale) or 3 (RGB).

    Raises:
        NasInputError: no class subfolders, an empty class, or an image that cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(folder)
    if not root.is_dir():
        raise NasInputError("folder not found; give a folder with one subfolder per class", folder)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise NasInputError("needs at least 2 class subfolders holding images", folder)
    xs, ys = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, cdir in enumerate(classes):
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                       and p.is_file())
        if not files:
            raise NasInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folder", str(cdir))
        for f in files:
            try:
                with warnings.catch_warnings():  # a huge image is refused, not decoded
                    warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": stderr stays clean
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        im = im.convert(mode).resize((hw[1], hw[0]), Image.BILINEAR)
                        arr = np.asarray(im, dtype=np.uint8)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                raise NasInputError(f"image is too large to decode safely (over "
                                    f"{Image.MAX_IMAGE_PIXELS} pixels); shrink it", str(f)) from None
            except Exception as e:  # noqa: BLE001 - decoders raise many types on damaged files
                kind = "not an image" if isinstance(e, UnidentifiedImageError) else type(e).__name__
                raise NasInputError(f"cannot decode image ({kind}); remove or replace the file",
                                    str(f)) from None
            xs.append(arr.reshape(hw[0], hw[1], channels))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, np.int32), None
