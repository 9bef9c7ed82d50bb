"""Data sets named by data spec strings, split, normalized and resized for a Space.

Specs (the same everywhere: CLI, configs, library):
    ``digits`` (default), ``npz:PATH``, ``mnist:DIR``, ``cifar10:DIR``, ``folder:DIR``,
    ``synthetic``; each may end in split options, e.g. ``npz:PATH?val=0.3``
    (:mod:`nas.data.split_options`).

Example:
    >>> data = load_data("digits", Space.by_name("tiny"), seed=0)
    >>> data.x_train.shape      # (N, 16, 16, 1), float32, standardized per channel
    >>> fold = data.fold(0, k=5)  # K-fold cross-validation over train + val
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nas.data.batches import (Batch, epoch_rng, eval_batches, num_train_batches, prefetch,
                              train_batches)
from nas.data.idx import read_mnist_folder
from nas.data.split_options import SPLIT_OPTIONS, split_spec
from nas.data.sources import read_cifar10, read_digits, read_folder, read_npz, read_synthetic
from nas.data.transforms import (channel_stats, match_channels, random_crop_flip, resize_images,
                                 to_unit_float)
from nas.errors import NasInputError

__all__ = ["Dataset", "load_data", "parse_spec", "stratified_split", "kfold_indices", "Batch",
           "epoch_rng", "eval_batches", "train_batches", "num_train_batches", "prefetch",
           "SPEC_HELP"]

SPEC_HELP = ("digits, synthetic, npz:PATH, mnist:DIR, cifar10:DIR or folder:DIR (optionally "
             "followed by ?val=F, e.g. npz:PATH?val=0.3)")
AUGMENT_MIN_SIZE = 32


@dataclasses.dataclass
class Dataset:
    """A data set ready for training: standardized float32 NHWC splits at the model's size.

    Attributes:
        name: the spec it came from.
        x_train, y_train, x_val, y_val, x_test, y_test: the splits.
        num_classes: number of classes of the model.
        augment: whether training batches get random crop + flip.
        mean, std: per-channel statistics used for standardization (from the training split).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augment: bool = False
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.x_train.shape[1:])

    def augment_fn(self):
        """Returns the training augmentation function, or None when augmentation is off."""
        return random_crop_flip if self.augment else None

    def fold(self, index: int, k: int = 5, seed: int = 0) -> "Dataset":
        """Returns fold `index` of K-fold cross-validation over train + val (test unchanged).

        Args:
            index: which fold is the validation split, 0 <= index < k.
            k: number of folds.
            seed: shuffle seed of the fold assignment.
        """
        x = np.concatenate([self.x_train, self.x_val])
        y = np.concatenate([self.y_train, self.y_val])
        train_idx, val_idx = kfold_indices(y, k, seed)[index]
        return dataclasses.replace(self, x_train=x[train_idx], y_train=y[train_idx],
                                   x_val=x[val_idx], y_val=y[val_idx])

    def summary(self) -> dict[str, Any]:
        """Returns sizes and shapes as a JSON-able dict."""
        return {"name": self.name, "train": len(self.y_train), "val": len(self.y_val),
                "test": len(self.y_test), "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "augment": self.augment}


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Splits indices into parts with the given fractions, class by class (deterministic).

    Args:
        y: labels.
        fractions: fraction of each part except the first, which gets the rest.
        seed: shuffle seed.

    Returns:
        One sorted index array per part, len(fractions) + 1 parts in all.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        sizes = [int(round(f * len(idx))) for f in fractions]
        for p, size in enumerate(sizes, start=1):
            parts[p].append(idx[start:start + size])
            start += size
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, int) for p in parts]


def kfold_indices(y: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns K stratified (train_idx, val_idx) pairs; each example is in exactly one val fold.

    Raises:
        NasInputError: k < 2 or k larger than the number of examples.
    """
    if not 2 <= k <= len(y):
        raise NasInputError(f"k={k} folds is not allowed; expected 2 <= k <= {len(y)}", field="folds")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (np.arange(len(idx)) + int(rng.integers(k))) % k
    return [(np.flatnonzero(fold_of != i), np.flatnonzero(fold_of == i)) for i in range(k)]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Splits a data spec into (kind, argument); split options (``?val=F``) are left out.

    Raises:
        NasInputError: unknown kind or a missing path.
    """
    kind, _, arg = split_spec(spec)[0].partition(":")
    kind = kind.strip().lower()
    if kind in ("digits", "synthetic"):
        if arg:
            raise NasInputError(f"'{kind}' takes no argument; expected one of {SPEC_HELP}", field="data")
        return kind, None
    if kind in ("npz", "mnist", "cifar10", "folder"):
        if not arg:
            raise NasInputError(f"'{kind}' needs a path, e.g. {kind}:/path; expected one of {SPEC_HELP}",
                                field="data")
        return kind, arg
    raise NasInputError(f"unknown data spec {spec!r}; expected one of {SPEC_HELP}", field="data")


def load_data(spec: str = "digits", space: Any = None, *, resolution: tuple[int, int] | None = None,
              channels: int | None = None, num_classes: int | None = None, seed: int = 0,
              val_fraction: float | None = None, test_fraction: float | None = None,
              augment: bool | str = "auto", synthetic_size: int = 1200) -> Dataset:
    """Loads, checks, splits, resizes and standardizes a data set for a model.

    Args:
        spec: data spec string (see module docstring).
        space: a Space; gives resolution, channels and num_classes unless given explicitly.
        resolution: (H, W) of the model input.
        channels: channels of the model input.
        num_classes: classes of the model; labels must lie in [0, num_classes).
        seed: split seed (the same seed gives the same splits).
        val_fraction: fraction of the non-test data held out for validation (default: the
            spec's ``val=`` option, else 0.1; see :mod:`nas.data.split_options`).
        test_fraction: fraction held out for test when the source has no test split (default:
            the spec's ``test=`` option, else 0.2).
        augment: True, False or "auto" (random crop + flip for images >= 32 px).
        synthetic_size: number of examples of the 'synthetic' source.

    Returns:
        The Dataset.

    Raises:
        NasInputError: bad spec, unreadable or malformed files, labels out of range.
    """
    if space is not None:
        resolution = resolution or space.resolution
        channels = channels or space.in_channels
        num_classes = num_classes or space.num_classes
    if resolution is None or channels is None or num_classes is None:
        raise ValueError("give a space or resolution, channels and num_classes")
    resolution = tuple(resolution)
    kind, arg = parse_spec(spec)
    source = arg or kind
    options = split_spec(spec)[1]
    val_fraction = val_fraction or options.get("val", SPLIT_OPTIONS["val"][0])
    test_fraction = test_fraction or options.get("test", SPLIT_OPTIONS["test"][0])
    if kind == "digits":
        x, y, test = read_digits()
    elif kind == "synthetic":
        x, y, test = read_synthetic(num_classes, (*resolution, channels), synthetic_size, seed)
    elif kind == "npz":
        x, y, test = read_npz(arg)
    elif kind == "mnist":
        x, y, test = read_mnist_folder(arg)
    elif kind == "cifar10":
        x, y, test = read_cifar10(arg)
    else:
        x, y, test = read_folder(arg, resolution, channels)
    _check_memory(len(y) + (len(test[1]) if test is not None else 0), resolution, channels, source)
    _check_labels(y, num_classes, source)
    if len(y) < 10:
        raise NasInputError(f"only {len(y)} examples; need at least 10 to split", source)
    if test is None:
        rest, test_idx = stratified_split(y, (test_fraction,), seed)
        test = (x[test_idx], y[test_idx])
        x, y = x[rest], y[rest]
    else:
        _check_labels(test[1], num_classes, source)
        if "test" in options:
            raise NasInputError(f"test={options['test']:g}: {source} has a test split of its own; "
                                "leave the option out", field="data")
    train_idx, val_idx = stratified_split(y, (val_fraction,), seed + 1)
    splits = [(x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), test]
    prepared = [_prepare(sx, resolution, channels, source) for sx, _ in splits]
    mean, std = channel_stats(prepared[0])
    xs = [((p - mean) / std).astype(np.float32) for p in prepared]
    if augment == "auto":
        augment = min(resolution) >= AUGMENT_MIN_SIZE
    return Dataset(str(spec), xs[0], splits[0][1], xs[1], splits[1][1], xs[2], splits[2][1],
                   num_classes, bool(augment), mean, std)


def max_data_bytes() -> int:
    """Returns the most memory a prepared data set may take (``NAS_DATA_MAX_GB``, default 16)."""
    import os

    try:
        return int(float(os.environ.get("NAS_DATA_MAX_GB", "16")) * 2 ** 30)
    except ValueError:
        raise NasInputError("expected a number of GiB", "environment", "NAS_DATA_MAX_GB") from None


def _check_memory(n: int, resolution: tuple[int, int], channels: int, source: str) -> None:
    """Refuses a data set whose float32 copy at the model's size would not fit the limit."""
    need = n * int(resolution[0]) * int(resolution[1]) * int(channels) * 4
    limit = max_data_bytes()
    if need > limit:
        raise NasInputError(f"{n} images at {resolution[0]}x{resolution[1]}x{channels} need "
                            f"{need / 2 ** 30:.1f} GiB as float32, over the {limit / 2 ** 30:.0f} GiB "
                            "limit (NAS_DATA_MAX_GB); use a smaller input resolution or fewer "
                            "images", source, "data")


def _check_labels(y: np.ndarray, num_classes: int, source: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise NasInputError(f"label {bad} out of range [0, {num_classes}) of the model; relabel "
                            "the data or use a space with more classes", source, "y")


def _prepare(x: np.ndarray, resolution: tuple[int, int], channels: int, source: str) -> np.ndarray:
    x = match_channels(to_unit_float(x), channels, source)
    return resize_images(x, resolution)
