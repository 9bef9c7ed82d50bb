"""A size prior for supernet scores: accuracy and MACs, each as a percentile of a fixed sample.

Weight sharing under-trains a supernet's large sub-networks (they get as many updates as the
small ones but need more), so supernet accuracy ranks large networks too low, while from scratch
the larger networks of a space are mostly the more accurate. The ranking bench
(``experiments/bench/supernet_ranking.py``) measured that averaging a supernet's rank with the
MACs rank raises Kendall tau against from-scratch accuracy on a held-out Arch sample by
0.17-0.30 for every supernet (spos 0.17 -> 0.40, FBNet 0.40 -> 0.57, ProxylessNAS 0.31 -> 0.62,
validation-scored, Fashion-MNIST on rank16).

A search cannot rank-average over "all Archs": its population changes every generation. Here
both terms are percentiles of a *fixed* reference sample of the space (uniform sub-networks,
scored once on the supernet), so a sub-network's combined score does not depend on what else is
scored with it, and equals the bench's rank average when the reference is the scored set itself.

Example:
    >>> prior = MacsPrior(reference_scores=[0.5, 0.6, 0.7], reference_macs=[1e6, 2e6, 3e6])
    >>> prior.combine([0.6], [3e6])   # the median accuracy, the largest size
    array([0.66666667])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Accepted values of ``nas specialize --prior``.
PRIORS = ("none", "macs")


def mid_percentile(sorted_reference: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Returns each value's mid-rank percentile in a sorted reference: the share of the
    reference below it plus half the share equal to it (0 below every member, 1 above all).

    Args:
        sorted_reference: the reference values, ascending.
        values: the values to place.

    Returns:
        Percentiles in [0, 1], one per value.
    """
    v = np.asarray(values, np.float64)
    below = np.searchsorted(sorted_reference, v, side="left")
    not_above = np.searchsorted(sorted_reference, v, side="right")
    return (below + not_above) / (2.0 * len(sorted_reference))


class MacsPrior:
    """Combines supernet accuracy with MACs against a fixed reference sample.

    Args:
        reference_scores: the reference sub-networks' accuracy estimates (the same kind of
            estimate - supernet or predictor - as the scores it will combine).
        reference_macs: their MACs.

    Raises:
        ValueError: the two references differ in length or are empty.
    """

    def __init__(self, reference_scores: Sequence[float], reference_macs: Sequence[float]):
        if len(reference_scores) != len(reference_macs) or not len(reference_scores):
            raise ValueError("the reference needs one MACs count per score, and at least one")
        self.scores = np.sort(np.asarray(reference_scores, np.float64))
        self.macs = np.sort(np.asarray(reference_macs, np.float64))

    def combine(self, scores: Sequence[float], macs: Sequence[float]) -> np.ndarray:
        """Returns the mean of each sub-network's accuracy and MACs percentiles.

        Args:
            scores: accuracy estimates of the sub-networks.
            macs: their MACs.

        Returns:
            Combined scores in [0, 1] (higher ranks higher), one per sub-network.
        """
        return 0.5 * (mid_percentile(self.scores, scores) + mid_percentile(self.macs, macs))
