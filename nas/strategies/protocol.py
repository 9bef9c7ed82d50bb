"""The one-shot strategy protocol: a NamedTuple of pure functions over a pytree state (optax style).

Every one-shot strategy (fbnet, proxyless, single_path) is a :class:`OneShot`::

    state = strategy.init(rng)                                    # OneShotState
    state, metrics = strategy.weight_step(state, batch, rng, lr, epoch)
    state, metrics = strategy.arch_step(state, batch, rng, lr, epoch)
    arch = strategy.derive(state)                                 # an Arch of the space
    probs = strategy.distribution(state)                          # {label: {choice: p}}

* ``weight_step`` changes only ``state.weights``, ``state.weight_opt`` and ``state.stats``
  (batch statistics updated by a training forward pass); it never touches the architecture.
* ``arch_step`` changes only ``state.arch`` and ``state.arch_opt``.
* ``weight_step``'s metrics hold the batch sums ``loss_sum`` (cross-entropy), ``correct`` and
  ``count`` (as :func:`nas.training.trainer.batch_metrics`), which the trainer turns into the epoch's
  ``train_loss`` and ``train_accuracy``.
* ``derive(state)`` is the most probable Arch of ``distribution(state)`` (its argmax per label).

``lr`` is the weights' scheduled learning rate at this step (a strategy whose architecture
parameters follow their own fixed rate, as FBNet's Adam on the logits, ignores it in
``arch_step``); ``epoch`` is the epoch number as a float (FBNet's Gumbel temperature).
Both are traced arrays, so one compiled step serves the whole run.

A strategy whose loss holds numbers a user sweeps (Single-Path's cost weight ``lam``) lists them
in ``strategy.consts`` (a dict of arrays) and its steps take them as an optional last argument,
``weight_step(state, batch, rng, lr, epoch, consts)`` (left out: ``strategy.consts``, then
constants of the compiled program). The driver passes them as arguments of its compiled step,
so runs that differ only in those numbers share one compiled program (the persistent compile
cache's key is the program, not the numbers).

Build one with :func:`nas.strategies.registry.make_strategy`; the driver
(:mod:`nas.strategies.oneshot_loop`) only calls these five functions.

Example:
    >>> strategy = make_strategy("fbnet", space, {"objective": "none"})
    >>> state = strategy.init(jax.random.PRNGKey(0))
    >>> state, m = jax.jit(strategy.weight_step)(state, batch, key, 0.01, 0.0)
    >>> strategy.derive(state)
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple


class OneShotState(NamedTuple):
    """The state of a one-shot search (a pytree).

    Attributes:
        weights: the network weights the weight step trains.
        arch: the architecture parameters the arch step trains (FBNet/ProxylessNAS: one logit
            vector per label; Single-Path: the thresholds ``{slot: {t_<ladder>: value}}``).
        weight_opt: the weights' optimizer state.
        arch_opt: the architecture parameters' optimizer state.
        stats: arrays no gradient trains (the supernet's stem/head batch statistics; the
            superkernel's batch statistics, updated by the weight step's forward pass).
    """

    weights: Any
    arch: Any
    weight_opt: Any
    arch_opt: Any
    stats: Any


class OneShot(NamedTuple):
    """A one-shot strategy: pure functions (see the module docstring).

    Attributes:
        name: the registry name ('fbnet', 'proxyless', 'single_path').
        init: ``init(rng) -> OneShotState``.
        weight_step: ``weight_step(state, batch, rng, lr, epoch) -> (state, metrics)``.
        arch_step: ``arch_step(state, batch, rng, lr, epoch) -> (state, metrics)``.
        derive: ``derive(state) -> Arch`` (the argmax of ``distribution``).
        distribution: ``distribution(state) -> {label: {str(choice): probability}}``.
        consts: arrays the steps take as their optional last argument (see the module
            docstring); empty: the steps take five arguments.
    """

    name: str
    init: Callable[[Any], OneShotState]
    weight_step: Callable[..., tuple[OneShotState, dict]]
    arch_step: Callable[..., tuple[OneShotState, dict]]
    derive: Callable[[OneShotState], dict]
    distribution: Callable[[OneShotState], dict]
    consts: Mapping[str, Any] = MappingProxyType({})


def one_hot_distribution(space: Any, arch: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Returns the distribution that puts all mass on an Arch's choices (a deterministic search).

    Args:
        space: the Space.
        arch: a canonical Arch of it.

    Returns:
        ``{label: {str(choice): 1.0 or 0.0}}`` over every label of the space.
    """
    indices = space.encode(arch)
    out = {}
    for (label, vals), index in zip(space.decisions(), indices):
        out[label] = {str(v): float(i == index) for i, v in enumerate(vals)}
    return out
