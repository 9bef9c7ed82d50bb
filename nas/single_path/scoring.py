"""Scoring sub-networks of a trained superkernel, each with its own BatchNorm statistics.

A sub-network (:mod:`nas.single_path.subnets`: one level per ladder per slot, as hard gates)
is scored as Once-for-All scores its children: its BatchNorm statistics (and activation
quantizer ranges) are recomputed for it from one batch of training images
(:mod:`nas.training.recalibrate`), then it classifies the evaluation images at inference. Both
passes run the superkernel network with the sub-network's gates, so one compiled program scores
every sub-network (gates are arrays), and the result equals the exported child
(:func:`nas.single_path.export.export_child` of the recalibrated variables) run standalone:
exactly for float and float-activation layers; a layer with integer activations and weights
differs only by the child's rounding of its BatchNorm bias onto the integer kernel's grid
(:mod:`nas.single_path.superblock`).

Example:
    >>> scorer = SubnetEvaluator(SinglePathNetwork(space))
    >>> gates = network_gates(space_plan(space), arch_levels(space, space_plan(space), arch))
    >>> scorer.accuracy(variables, gates, x_cal, data.x_val, data.y_val)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nas.blocks.layers import BN_MOMENTUM
from nas.single_path.network import SinglePathNetwork
from nas.training.recalibrate import cleared_stats, recalibrated_stats, stacked_batches

#: The dropout key of the recalibration pass (dropout never touches a BatchNorm input here; the
#: key only has to exist).
_DROPOUT_KEY = 0


class SubnetEvaluator:
    """Recalibrates and classifies sub-networks of one superkernel network, compiled once (one
    recalibration program and one classification program per batch shape, whatever the gates).

    Args:
        net: the :class:`~nas.single_path.network.SinglePathNetwork`.
    """

    def __init__(self, net: SinglePathNetwork):
        self.net = net
        self._recalibrate = jax.jit(self._recalibrated)
        self._classify = jax.jit(self._classes)

    def _recalibrated(self, variables: Mapping[str, Any], gates: Any, x_cal: jax.Array) -> Any:
        stats0 = cleared_stats(variables["batch_stats"])
        _, upd = self.net.apply({"params": variables["params"], "batch_stats": stats0}, x_cal,
                                train=True, gates=gates, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.PRNGKey(_DROPOUT_KEY)})
        return recalibrated_stats(stats0, upd["batch_stats"], BN_MOMENTUM)

    def _classes(self, variables: Mapping[str, Any], gates: Any, x: jax.Array) -> jax.Array:
        return jnp.argmax(self.net.apply(variables, x, train=False, gates=gates), -1)

    def recalibrate(self, variables: Mapping[str, Any], gates: Any, x_cal: Any) -> Any:
        """Returns the superkernel's batch_stats recomputed for one sub-network.

        Args:
            variables: the superkernel network's {"params", "batch_stats"}.
            gates: the sub-network's hard gates (:func:`~nas.single_path.subnets.network_gates`).
            x_cal: the recalibration images [N, H, W, C].

        Returns:
            batch_stats whose BatchNorm moments and quantizer ranges are those of `x_cal`
            through this sub-network (channels it does not use hold values nothing reads).
        """
        return self._recalibrate(variables, gates, jnp.asarray(x_cal))

    def predict(self, variables: Mapping[str, Any], gates: Any, x_cal: Any, x: Any,
                batch_size: int = 512) -> np.ndarray:
        """Returns the sub-network's predicted classes of `x` after recalibrating on `x_cal`.

        Args:
            variables: the superkernel network's {"params", "batch_stats"}.
            gates: the sub-network's hard gates.
            x_cal: the recalibration images.
            x: the images to classify.
            batch_size: evaluation batch size (the last batch is padded).

        Returns:
            [len(x)] integer classes.
        """
        recalibrated = {"params": variables["params"],
                        "batch_stats": self.recalibrate(variables, gates, x_cal)}
        size = min(batch_size, len(x))
        preds = [self._classify(recalibrated, gates, jnp.asarray(batch))
                 for batch in stacked_batches(np.asarray(x), size)]
        return np.concatenate([np.asarray(p) for p in preds])[:len(x)]

    def accuracy(self, variables: Mapping[str, Any], gates: Any, x_cal: Any, x: Any, y: Any,
                 batch_size: int = 512) -> float:
        """Returns the sub-network's accuracy on (x, y) after recalibrating on `x_cal`."""
        predicted = self.predict(variables, gates, x_cal, x, batch_size)
        return float(np.mean(predicted == np.asarray(y)))
