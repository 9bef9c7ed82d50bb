"""FBNet (Wu et al. 2019): differentiable search with Gumbel-softmax path weights.

Weight step: sample Gumbel-softmax weights ``m = softmax((alpha + G) / tau)`` per decision and
train the supernet's weights on the cross-entropy of the ``"soft"`` (mixed) forward pass.
Arch step: the same forward pass on held-out data; the loss is the configured objective (FBNet's
``CE * a * log(LAT) ** b`` by default) with ``LAT`` the table's expected latency under the same
Gumbel weights (FBNet eq. 7), differentiated with respect to alpha through the Gumbel-softmax.

Candidate blocks and ops are separate paths as in FBNet; factorized knobs inside a path are
masks of shared weights (FBNetV2-style), an approximation of FBNet's separate paths that keeps
the supernet's cost that of its paths, not of the product of knob choices.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from nas.strategies.oneshot_base import OneShotParams, masked_ce, paths_strategy
from nas.strategies.protocol import OneShot
from nas.supernet.gates import gumbel_softmax
from nas.supernet.network import SuperNet, merge_trainable


def fbnet_strategy(net: SuperNet, objective: Callable[[Any, Any], Any],
                   cost: Callable[[Any], Any], params: OneShotParams) -> OneShot:
    """Returns FBNet (weight and arch steps on Gumbel-softmax gates) for a supernet.

    Args:
        net: the supernet.
        objective: ``objective(ce, lat) -> loss`` (see :func:`nas.strategies.oneshot_base.make_objective`).
        cost: ``cost(probabilities) -> expected latency`` (LatencyTable.expected).
        params: the search parameters (optimizers, temperature).

    Returns:
        The one-shot protocol (:mod:`nas.strategies.protocol`).
    """

    def weight_loss(trained, full, alpha, batch, rng, tau):
        k_gate, k_drop = jax.random.split(rng)
        gates = gumbel_softmax(jax.lax.stop_gradient(alpha), tau, k_gate)
        logits = net.apply(merge_trainable(full, trained), batch["x"], "soft", gates, rng=k_drop)
        return masked_ce(logits, batch)

    def arch_grads(alpha, full, batch, rng, tau):
        k_gate, k_drop = jax.random.split(rng)

        def loss_fn(a):
            gates = gumbel_softmax(a, tau, k_gate)
            logits = net.apply(full, batch["x"], "soft", gates, rng=k_drop)
            ce, acc = masked_ce(logits, batch)
            lat = cost(gates)
            return objective(ce, lat), (ce, acc, lat)

        (loss, (ce, acc, lat)), grads = jax.value_and_grad(loss_fn, has_aux=True)(alpha)
        return grads, {"arch_loss": loss, "arch_ce": ce, "arch_acc": acc, "gumbel_latency": lat}, None

    return paths_strategy("fbnet", net, params, weight_loss, arch_grads, lambda new, old, aux: new)
