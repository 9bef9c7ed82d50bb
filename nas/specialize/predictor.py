"""An accuracy predictor for a supernet's sub-networks: a small MLP on the genome encoding.

Once-for-All scores its evolution with a predictor (an MLP on the one-hot architecture
encoding, trained on sub-networks whose accuracy was measured on the supernet) because a
prediction costs microseconds where a supernet score costs a recalibration and an evaluation
pass. Here the input is :meth:`nas.specialize.genome.SubnetGenome.features` (one-hot level per
ladder per slot), the target the supernet's validation accuracy (standardized), the loss the
mean squared error, the optimizer Adam with full batches. :func:`rank_check` reports the
Kendall tau and Spearman rho of predictions against supernet scores of held-out sub-networks:
what decides whether the predictor can stand in for the supernet in a search.

Example:
    >>> predictor = MlpPredictor.fit(gs.features(train_genomes), train_scores, seed=0)
    >>> rank_check(predictor.predict(gs.features(held_out)), held_out_scores)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import kendalltau, spearmanr


@dataclasses.dataclass(frozen=True)
class MlpPredictor:
    """A fitted MLP predictor.

    Attributes:
        params: the MLP's weights [(w, b), ...].
        mean: mean of the training targets.
        std: standard deviation of the training targets (> 0).
        train_rmse: root mean squared error on its training set (in target units).
    """

    params: Any
    mean: float
    std: float
    train_rmse: float

    @staticmethod
    def fit(features: np.ndarray, targets: Sequence[float], seed: int = 0,
            hidden: tuple[int, ...] = (64, 64), steps: int = 800,
            learning_rate: float = 3e-3, weight_decay: float = 1e-4) -> "MlpPredictor":
        """Fits the MLP to (features, targets).

        Args:
            features: [N, D] inputs.
            targets: [N] scores.
            seed: initialization seed.
            hidden: hidden layer widths (ReLU).
            steps: full-batch Adam steps.
            learning_rate: Adam's learning rate.
            weight_decay: decoupled weight decay (AdamW).

        Returns:
            The fitted predictor.
        """
        x = jnp.asarray(features, jnp.float32)
        y = np.asarray(targets, np.float64)
        mean, std = float(y.mean()), float(max(y.std(), 1e-6))
        yz = jnp.asarray((y - mean) / std, jnp.float32)
        sizes = [x.shape[1], *hidden, 1]
        keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
        params = [(jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros(b))
                  for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
        params, final = _train(params, x, yz, steps, learning_rate, weight_decay)
        return MlpPredictor(jax.device_get(params), mean, std,
                            float(np.sqrt(float(final))) * std)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Returns the predicted scores [N] of [N, D] features."""
        out = _forward(self.params, jnp.asarray(features, jnp.float32))
        return np.asarray(out, np.float64) * self.std + self.mean


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate", "weight_decay"))
def _train(params: Any, x: jax.Array, y: jax.Array, steps: int, learning_rate: float,
           weight_decay: float) -> tuple[Any, jax.Array]:
    """Full-batch AdamW on the mean squared error (one compile per shape and settings);
    returns (params, final loss)."""
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss(p):
        return jnp.mean((_forward(p, x) - y) ** 2)

    def step(carry, _):
        p, opt = carry
        grads = jax.grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, loss(params)


def _forward(params: Any, x: jax.Array) -> jax.Array:
    """The MLP: ReLU hidden layers, a linear output [N]."""
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return (x @ w + b)[:, 0]


def rank_check(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, float | int | None]:
    """Returns how well predictions rank sub-networks: {"kendall_tau", "spearman", "n",
    "rmse"} (a correlation is None when either side is constant)."""
    p, a = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    constant = len(p) < 2 or np.ptp(p) == 0 or np.ptp(a) == 0
    return {"kendall_tau": None if constant else float(kendalltau(p, a).statistic),
            "spearman": None if constant else float(spearmanr(p, a).statistic),
            "n": int(len(p)), "rmse": float(np.sqrt(np.mean((p - a) ** 2))) if len(p) else None}


def split_held_out(n: int, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train indices, held-out indices) of `n` items, disjoint, shuffled by `seed`; at
    least 2 of each when n >= 4."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(2, int(round(held_out_fraction * n))), max(n - 2, 0))
    return np.sort(order[k:]), np.sort(order[:k])
