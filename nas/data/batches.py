"""Host-side batching with fixed batch shapes and a background prefetch thread.

Training batches have one fixed shape: the last partial batch of an epoch is *dropped* (the
shuffle changes every epoch, so every example is still seen). Evaluation batches are *padded*
to the fixed shape with a ``mask`` of zeros, so metrics count every example exactly once and
nothing recompiles.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """Returns the numpy generator of one epoch: a pure function of (seed, epoch, stream).

    Deriving it from the epoch number (not from a running generator) makes a resumed run see
    exactly the batches an uninterrupted run would.
    """
    return np.random.default_rng([seed, epoch, stream])


def train_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator,
                  augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
                  ) -> Iterator[Batch]:
    """Yields shuffled full batches {x, y, mask}; the last partial batch is dropped.

    Args:
        x, y: the training arrays.
        batch_size: examples per batch (must be <= len(x)).
        rng: shuffling (and augmentation) generator.
        augment: optional function (batch_x, rng) -> batch_x.
    """
    order = rng.permutation(len(x))
    ones = np.ones(batch_size, np.float32)
    for i in range(len(x) // batch_size):
        idx = order[i * batch_size:(i + 1) * batch_size]
        bx = x[idx]
        if augment is not None:
            bx = augment(bx, rng)
        yield {"x": bx, "y": y[idx], "mask": ones}


def eval_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Yields batches in order; the last one is zero-padded to `batch_size` with mask 0."""
    for i in range(0, len(x), batch_size):
        bx, by = x[i:i + batch_size], y[i:i + batch_size]
        n = len(bx)
        mask = np.ones(batch_size, np.float32)
        if n < batch_size:
            mask[n:] = 0
            bx = np.concatenate([bx, np.zeros((batch_size - n, *bx.shape[1:]), bx.dtype)])
            by = np.concatenate([by, np.zeros(batch_size - n, by.dtype)])
        yield {"x": bx, "y": by, "mask": mask}


def num_train_batches(n: int, batch_size: int) -> int:
    """Returns the number of training batches per epoch (partial batch dropped)."""
    return n // batch_size


def prefetch(batches: Iterable[Batch], size: int = 2, to_device: bool = True,
             put: Callable[[Batch], Batch] | None = None) -> Iterator[Batch]:
    """Produces batches in a background thread (and puts them on the device) ahead of use.

    Args:
        batches: any iterable of batches.
        size: how many batches to keep ready.
        to_device: whether to ``jax.device_put`` each batch in the thread.
        put: what puts a batch on the device(s) instead of ``jax.device_put`` (e.g. split over
            several, :meth:`nas.training.devices.DataParallel.shard`).

    Yields:
        The same batches, in order. An exception in the producer is re-raised here.
    """
    import jax

    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put((put or jax.device_put)(b) if to_device else b)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
