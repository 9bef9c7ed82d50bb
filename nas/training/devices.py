"""Data-parallel training on the local devices: a one-axis ``jax.sharding`` mesh over the batch.

Parameters, optimizer state and batch statistics are replicated on every device; each training
batch is split along its first axis. The compiled step stays the single-device program: under
``jit`` the partitioner turns every reduction over the batch (the loss mean, BatchNorm's batch
moments, the quantizers' batch ranges) into a cross-device reduction, so the step computes what
one device computes on the whole batch (up to the order of float sums) and every device holds the
same parameters after it - one model, not one per device.

Example:
    >>> dp = DataParallel.create(0)            # every local device
    >>> state = dp.replicate(state)
    >>> state, metrics = step(state, dp.shard(batch), key, lr, consts)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nas.errors import NasInputError

#: The mesh axis the batch is split over.
BATCH_AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The devices a run trains on.

    Attributes:
        devices: the local devices used (one: plain single-device training).
    """

    devices: tuple[Any, ...]

    @classmethod
    def create(cls, wanted: int = 0) -> "DataParallel":
        """Uses the first `wanted` local devices (0 = all of them).

        Raises:
            NasInputError: more devices wanted than there are.
        """
        local = jax.local_devices()
        if wanted < 0 or wanted > len(local):
            raise NasInputError(f"{wanted} is not allowed; this machine has {len(local)} "
                                f"{local[0].platform} device(s) (0 = all)", field="train.devices")
        return cls(tuple(local[:wanted or len(local)]))

    @property
    def count(self) -> int:
        """Number of devices."""
        return len(self.devices)

    def check_batch(self, batch_size: int) -> None:
        """Refuses a batch that does not split evenly over the devices (one line)."""
        if batch_size % self.count:
            raise NasInputError(f"{batch_size} does not split over {self.count} devices; use a "
                                f"multiple of {self.count} or set train.devices",
                                field="train.batch_size")

    @functools.cached_property
    def _mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (BATCH_AXIS,))

    def replicate(self, tree: Any) -> Any:
        """Puts a pytree on every device (single device: as it is)."""
        if self.count == 1:
            return tree
        return jax.device_put(tree, NamedSharding(self._mesh, PartitionSpec()))

    def shard(self, batch: Any) -> Any:
        """Splits every array of a batch along its first axis over the devices (the mesh is
        built once per run, not per batch)."""
        if self.count == 1:
            return jax.device_put(batch)
        return jax.device_put(batch, NamedSharding(self._mesh, PartitionSpec(BATCH_AXIS)))

    def gather(self, tree: Any) -> Any:
        """Returns a replicated pytree as arrays of the first device (for evaluation, saving)."""
        if self.count == 1:
            return tree
        return jax.device_put(tree, self.devices[0])
