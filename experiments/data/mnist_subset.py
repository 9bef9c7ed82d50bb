"""Writes a class-balanced subset of an MNIST-format folder as an .npz for ``npz:PATH`` specs.

The benchmarks on 2 CPU cores use a few thousand of Fashion-MNIST's 60000 training images (Debian
ships the data set as the package ``dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist)::

    python experiments/data/mnist_subset.py /usr/share/datasets/fashion-mnist \
        --train 6000 --test 2000 --out fashion6k.npz

The npz holds ``x``/``y`` (training) and ``x_test``/``y_test`` (drawn from the t10k files), so a
run's test split is the data set's own.
"""

from __future__ import annotations

import argparse

import numpy as np

from nas.data import stratified_split
from nas.data.idx import read_mnist_folder


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Returns the indices of a stratified random subset of about ``n`` of the labels ``y``.

    Args:
        y: integer labels.
        n: the subset's size (all of ``y`` when n >= len(y)).
        seed: the draw's seed.

    Returns:
        Sorted indices into ``y``.
    """
    if n >= len(y):
        return np.arange(len(y))
    _, keep = stratified_split(y, (n / len(y),), seed)
    return np.sort(keep)


def main(argv=None) -> None:
    """Reads the folder, draws the subsets, writes the npz and prints the class counts."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="folder of the four IDX files (gzipped or not)")
    ap.add_argument("--train", type=int, default=6000, help="training images kept")
    ap.add_argument("--test", type=int, default=2000, help="test images kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the .npz to write")
    args = ap.parse_args(argv)
    x, y, (x_test, y_test) = read_mnist_folder(args.folder)
    tr, te = balanced_subset(y, args.train, args.seed), balanced_subset(y_test, args.test, args.seed)
    np.savez_compressed(args.out, x=x[tr, ..., 0], y=y[tr], x_test=x_test[te, ..., 0], y_test=y_test[te])
    print(f"{args.out}: {len(tr)} training, {len(te)} test images; training classes "
          f"{np.bincount(y[tr]).tolist()}")


if __name__ == "__main__":
    main()
