"""MNIST's IDX file format (MNIST, Fashion-MNIST, KMNIST, EMNIST ship in it).

An IDX file is a big-endian header - two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions - then one 4-byte size per dimension, then the values. The data spec
``mnist:DIR`` reads the folder of the four standard files, gzipped or not::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

Nothing is unpickled; every problem is one :class:`~nas.errors.NasInputError` naming the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from nas.errors import NasInputError

IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
UBYTE = 0x08
MAX_IDX_BYTES = 4 << 30


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Reads one unsigned-byte IDX file (plain or gzipped, told apart by its first bytes).

    Args:
        path: the file.
        ndim: the number of dimensions the file must have (3 for images, 1 for labels).

    Returns:
        A uint8 array of the file's shape.

    Raises:
        NasInputError: unreadable file, wrong magic number, type or dimensions, or a size that
            disagrees with the header.
    """
    src = str(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00":
                raise NasInputError("not an IDX file (the first two bytes must be zero); give "
                                    "MNIST-format files such as train-images-idx3-ubyte", src)
            if header[2] != UBYTE:
                raise NasInputError(f"IDX value type 0x{header[2]:02x} is not unsigned byte "
                                    "(0x08); only ubyte images and labels are read", src)
            if header[3] != ndim:
                raise NasInputError(f"{header[3]} dimensions, expected {ndim} "
                                    f"({'images N x H x W' if ndim == 3 else 'labels N'})", src)
            sizes = np.frombuffer(f.read(4 * ndim), dtype=">u4")
            if len(sizes) != ndim:
                raise NasInputError("the header is cut short; the file is truncated", src)
            count = int(np.prod(sizes.astype(np.int64)))
            if count > MAX_IDX_BYTES:
                raise NasInputError(f"header declares {count} bytes (over 4 GiB); the file is "
                                    "damaged", src)
            data = f.read(count + 1)
    except NasInputError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise NasInputError(f"cannot read IDX file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})", src) from None
    if len(data) != count:
        raise NasInputError(f"{len(data)} data bytes where the header declares {count}; the file "
                            "is truncated or has trailing bytes", src)
    return np.frombuffer(data, dtype=np.uint8).reshape(tuple(int(s) for s in sizes))


def find_idx_file(folder: Path, stem: str) -> Path:
    """Returns ``folder/stem`` or ``folder/stem.gz``, whichever exists.

    Raises:
        NasInputError: neither exists.
    """
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise NasInputError(f"missing {stem}[.gz]; an MNIST-format folder holds "
                        f"{', '.join(IDX_FILES.values())} (gzipped or not)", str(folder))


def read_mnist_folder(folder: str):
    """Reads an MNIST-format folder: 60000-style training and 10000-style test split.

    Args:
        folder: the folder of the four IDX files.

    Returns:
        ``(x, y, (x_test, y_test))`` with images N x H x W x 1 uint8 and int32 labels.

    Raises:
        NasInputError: a missing or malformed file, or image and label counts that differ.
    """
    d = Path(folder)
    if not d.is_dir():
        raise NasInputError("folder not found; give the folder holding the MNIST-format files "
                            f"({', '.join(IDX_FILES.values())})", folder)
    parts = {}
    for key, stem in IDX_FILES.items():
        path = find_idx_file(d, stem)
        parts[key] = (read_idx(path, 3 if key.endswith("images") else 1), path)
    splits = []
    for split in ("train", "test"):
        (x, xpath), (y, ypath) = parts[f"{split}_images"], parts[f"{split}_labels"]
        if len(x) != len(y):
            raise NasInputError(f"{len(y)} labels for {len(x)} images in {xpath.name}; the counts "
                                "must match", str(ypath))
        splits.append((x[..., None], y.astype(np.int32)))
    (x, y), test = splits
    return x, y, test
