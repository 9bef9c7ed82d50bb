"""A small folder in the CIFAR-10 binary format (``cifar-10-batches-bin``), for tests that read
``data: cifar10:DIR`` without the real data set (the ``cifar_folder`` fixture of conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The files of the binary version: five training batches and one test batch.
CIFAR_BATCH_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
#: One record: a label byte, then 32x32 pixels of the red, green and blue planes.
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32


def write_cifar_folder(folder: str | Path, images_per_file: int = 20, seed: int = 0) -> Path:
    """Writes data_batch_1..5.bin and test_batch.bin of random images.

    Labels cycle through 0..9 in every file, so each class is present in every split.

    Args:
        folder: the folder to write (created if missing).
        images_per_file: records per file (5x this many training images, this many test images).
        seed: seed of the pixel values.

    Returns:
        The folder, for ``data: cifar10:<folder>``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = (np.arange(images_per_file) % 10)[:, None]
    for name in CIFAR_BATCH_FILES:
        pixels = rng.integers(0, 256, (images_per_file, CIFAR_RECORD_BYTES - 1))
        np.concatenate([labels, pixels], 1).astype(np.uint8).tofile(folder / name)
    return folder
