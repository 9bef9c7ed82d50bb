"""Architecture parameters and the gates made from them (FBNet and ProxylessNAS).

Architecture parameters are one logit vector per Arch label, ``{label: [n_choices]}``: the same
keys as :meth:`nas.latency.table.LatencyTable.expected`, kept in their own pytree with their own
optimizer. Probabilities are ``softmax(alpha)``.

* FBNet (Wu et al. 2019, eq. 6): Gumbel-softmax weights ``softmax((alpha + G) / tau)``, with
  the temperature annealed ``tau_e = 5.0 * 0.956 ** e``.
* ProxylessNAS (Cai et al. 2019, sec. 3.2.1): binary gates. The weight step samples one choice
  per decision from ``p``. The arch step samples two distinct choices, renormalizes their
  probabilities ``q`` over the pair, activates one of them (drawn from ``q``), and turns the
  gate gradient into a logit gradient ``dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i)`` over
  the two; after the update, both logits are shifted so the pair's total probability mass is
  unchanged (the paper's rescaling).

Example:
    >>> alpha = init_arch_params(space)
    >>> weights = gumbel_softmax(alpha, temperature(epoch), key)
    >>> arch = derive(space, alpha)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nas.space import Arch, Space

TAU0 = 5.0
TAU_DECAY = 0.956

ArchParams = dict[str, jax.Array]


def init_arch_params(space: Space) -> ArchParams:
    """Returns zero logits (uniform distribution) for every label of the space."""
    return {label: jnp.zeros((len(vals),), jnp.float32) for label, vals in space.decisions()}


def temperature(epoch: Any, tau0: float = TAU0, decay: float = TAU_DECAY) -> Any:
    """Returns FBNet's Gumbel-softmax temperature at an epoch: tau0 * decay ** epoch."""
    return tau0 * decay ** epoch


def probabilities(alpha: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Returns softmax(alpha) per label."""
    return {label: jax.nn.softmax(a) for label, a in alpha.items()}


def _label_keys(alpha: Mapping[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    labels = sorted(alpha)
    keys = jax.random.split(rng, len(labels))
    return dict(zip(labels, keys))


def gumbel_softmax(alpha: Mapping[str, jax.Array], tau: Any, rng: jax.Array) -> dict[str, jax.Array]:
    """Returns Gumbel-softmax weights softmax((alpha + G) / tau) per label (FBNet eq. 6)."""
    keys = _label_keys(alpha, rng)
    return {label: jax.nn.softmax((a + jax.random.gumbel(keys[label], a.shape)) / tau)
            for label, a in alpha.items()}


def sample_indices(alpha: Mapping[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
    """Samples one choice index per label from softmax(alpha) (ProxylessNAS weight step)."""
    keys = _label_keys(alpha, rng)
    return {label: jax.random.categorical(keys[label], a) for label, a in alpha.items()}


def sample_pairs(alpha: Mapping[str, jax.Array], rng: jax.Array):
    """Samples the arch step's binary gates (ProxylessNAS).

    Per label: two distinct choices drawn without replacement from softmax(alpha) (Gumbel
    top-2), their renormalized probabilities q, and a one-hot gate on one of them drawn from q.

    Returns:
        (pairs {label: int [2]}, q {label: [2]}, gates {label: one-hot [n]}).
    """
    keys = _label_keys(alpha, rng)
    pairs, qs, gates = {}, {}, {}
    for label, a in alpha.items():
        k1, k2 = jax.random.split(keys[label])
        _, pair = jax.lax.top_k(a + jax.random.gumbel(k1, a.shape), 2)
        q = jax.nn.softmax(a[pair])
        active = pair[jax.random.categorical(k2, jnp.log(q))]
        pairs[label], qs[label] = pair, q
        gates[label] = jax.nn.one_hot(active, a.shape[0], dtype=jnp.float32)
    return pairs, qs, gates


def binary_gate_grad(gate_grads: Mapping[str, jax.Array], pairs: Mapping[str, jax.Array],
                     qs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Turns dL/dg into dL/dalpha over each sampled pair (ProxylessNAS eq. 4, on two paths).

    Args:
        gate_grads: {label: dL/dg [n]}.
        pairs: {label: the two sampled indices}.
        qs: {label: their renormalized probabilities}.

    Returns:
        {label: [n]} with dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i) at the pair, 0 elsewhere.
    """
    out = {}
    for label, dg in gate_grads.items():
        pair, q = pairs[label], qs[label]
        dgp = dg[pair]
        jac = q[None, :] * (jnp.eye(2) - q[:, None])  # jac[i, j] = q_j (delta_ij - q_i)
        out[label] = jnp.zeros_like(dg).at[pair].add(jac @ dgp)
    return out


def rescale_pair(new: Mapping[str, jax.Array], old: Mapping[str, jax.Array],
                 pairs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Shifts each sampled pair's updated logits so the pair keeps its total mass.

    ProxylessNAS's rescaling: after the update, ``logsumexp(alpha[pair])`` is set back to its
    value before the update, so the gate gradient only moves probability between the two
    sampled choices. Logits outside the pair keep their updated values (they move only through
    a direct gradient, e.g. of the expected latency).

    Returns:
        {label: logits}.
    """
    out = {}
    for label, a in new.items():
        pair, o = pairs[label], old[label]
        shift = jax.nn.logsumexp(a[pair]) - jax.nn.logsumexp(o[pair])
        out[label] = a.at[pair].add(-shift)
    return out


def entropy(alpha: Mapping[str, jax.Array]) -> dict[str, float]:
    """Returns the entropy (nats) of each label's distribution."""
    out = {}
    for label, a in alpha.items():
        p = np.asarray(jax.nn.softmax(a))
        out[label] = float(-np.sum(p * np.log(np.maximum(p, 1e-12))))
    return out


def derive(space: Space, alpha: Mapping[str, jax.Array]) -> Arch:
    """Returns the Arch of the most probable choice of every label (canonical)."""
    indices = [int(np.argmax(np.asarray(alpha[label]))) for label in space.labels()]
    return space.decode(indices)


def distribution(space: Space, alpha: Mapping[str, jax.Array]) -> dict[str, dict[str, float]]:
    """Returns {label: {choice: probability}} (JSON-able, choices as strings)."""
    out = {}
    for label, vals in space.decisions():
        p = np.asarray(jax.nn.softmax(alpha[label]))
        out[label] = {str(v): round(float(pi), 4) for v, pi in zip(vals, p)}
    return out
