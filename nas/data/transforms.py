"""Array transforms of image data: scaling, channel matching, resizing, augmentation.

All functions work on host numpy arrays laid out N x H x W x C.
"""

from __future__ import annotations

import numpy as np

from nas.errors import NasInputError


def to_unit_float(x: np.ndarray) -> np.ndarray:
    """Returns images as float32: uint8 scaled to [0, 1], other integers by their max, floats as is."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.integer):
        top = max(int(x.max()), 1) if x.size else 1
        return x.astype(np.float32) / float(top)
    return x.astype(np.float32)


def match_channels(x: np.ndarray, channels: int, source: str) -> np.ndarray:
    """Converts images to `channels` channels (gray -> RGB by repetition, RGB -> gray by luma).

    Raises:
        NasInputError: no conversion exists between the two channel counts.
    """
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = np.asarray([0.299, 0.587, 0.114], np.float32)
        return (x.astype(np.float32) @ luma)[..., None].astype(x.dtype if x.dtype != np.uint8 else np.float32)
    raise NasInputError(f"images have {have} channels but the space expects {channels}; "
                        "convert them to 1 (gray) or 3 (RGB)", source, "x")


def resize_images(x: np.ndarray, hw: tuple[int, int], chunk: int = 2048) -> np.ndarray:
    """Resizes float images to `hw` with bilinear interpolation (antialiased when shrinking).

    Args:
        x: N x H x W x C float32 images.
        hw: target (height, width).
        chunk: images resized per call (bounds the memory used).

    Returns:
        N x hw[0] x hw[1] x C float32 images (`x` itself when the size already matches).
    """
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    import jax

    out = []
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        shape = (len(part), hw[0], hw[1], x.shape[-1])
        out.append(np.asarray(jax.image.resize(part, shape, method="linear", antialias=True)))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *hw, x.shape[-1]), np.float32)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns per-channel mean and standard deviation (std floored at 1e-3)."""
    mean = x.mean(axis=(0, 1, 2)).astype(np.float32)
    std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3).astype(np.float32)
    return mean, std


def random_crop_flip(x: np.ndarray, rng: np.random.Generator, pad: int | None = None,
                     flip: bool = True) -> np.ndarray:
    """Standard augmentation: random crop of a zero-padded image, random horizontal flip.

    Args:
        x: B x H x W x C batch (already normalized, so zero padding is the mean).
        rng: numpy random generator.
        pad: padding on each side (default H // 8, i.e. 4 px at 32 px).
        flip: whether to flip half of the images left-right.

    Returns:
        The augmented batch, same shape.
    """
    b, h, w, _ = x.shape
    pad = max(1, h // 8) if pad is None else pad
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.integers(0, 2 * pad + 1, b)
    ox = rng.integers(0, 2 * pad + 1, b)
    rows = oy[:, None] + np.arange(h)[None]
    cols = ox[:, None] + np.arange(w)[None]
    if flip:
        flips = rng.random(b) < 0.5
        cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
