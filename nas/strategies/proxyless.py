"""ProxylessNAS (Cai et al. 2019): binarized paths, one active path per weight step.

Weight step: sample one choice per decision from ``p = softmax(alpha)`` and train only that
path (``"pick"`` forward: nested ``lax.switch``es, one per knob, weights sliced), so compute
and memory are those of one child network while XLA compiles each op once per channel count,
not once per combination of knob values.

Arch step (sec. 3.2.1): per decision, two choices sampled from p, one of them active (one-hot
binary gates ``g``); the ``"pair"`` forward runs the two sampled paths of each path decision and
masks for the knobs inside a path. ``dL/dg`` becomes a logit gradient with
``dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i)`` over the pair (``q`` = p renormalized over
the two); after the Adam update the pair's logits are rescaled so unsampled choices keep their
probabilities. The latency term ``E[LAT]`` under p (the paper's additive ``CE + lambda E[LAT]``
or multiplicative ``CE * (E[LAT] / T) ** beta``, or the hard-target hinge
``CE + lambda max(E[LAT] / T - 1, 0)``) is differentiated with respect to alpha directly.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from nas.strategies.oneshot_base import OneShotParams, masked_ce, paths_strategy
from nas.strategies.protocol import OneShot
from nas.supernet.gates import binary_gate_grad, probabilities, rescale_pair, sample_indices, sample_pairs
from nas.supernet.network import SuperNet, merge_trainable


def proxyless_strategy(net: SuperNet, objective: Callable[[Any, Any], Any],
                       cost: Callable[[Any], Any], params: OneShotParams) -> OneShot:
    """Returns ProxylessNAS (one sampled path per weight step, binary-gate arch step).

    Args:
        net: the supernet.
        objective: ``objective(ce, lat) -> loss``.
        cost: ``cost(probabilities) -> expected latency``.
        params: the search parameters (optimizers, temperature).

    Returns:
        The one-shot protocol (:mod:`nas.strategies.protocol`).
    """

    def weight_loss(trained, full, alpha, batch, rng, tau):
        k_gate, k_drop = jax.random.split(rng)
        index = sample_indices(jax.lax.stop_gradient(alpha), k_gate)
        logits = net.apply(merge_trainable(full, trained), batch["x"], "pick", index, rng=k_drop)
        return masked_ce(logits, batch)

    def arch_grads(alpha, full, batch, rng, tau):
        k_gate, k_drop = jax.random.split(rng)
        pairs, qs, gates = sample_pairs(alpha, k_gate)

        def loss_fn(g, a):
            logits = net.apply(full, batch["x"], "pair", g, pairs=pairs, rng=k_drop)
            ce, acc = masked_ce(logits, batch)
            lat = cost(probabilities(a))
            return objective(ce, lat), (ce, acc, lat)

        (loss, (ce, acc, lat)), (d_gates, d_alpha) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(gates, alpha)
        from_gates = binary_gate_grad(d_gates, pairs, qs)
        grads = jax.tree_util.tree_map(lambda x, y: x + y, from_gates, d_alpha)
        return grads, {"arch_loss": loss, "arch_ce": ce, "arch_acc": acc, "expected_latency": lat}, pairs

    def post_update(new, old, pairs):
        return rescale_pair(new, old, pairs)

    return paths_strategy("proxyless", net, params, weight_loss, arch_grads, post_update)
