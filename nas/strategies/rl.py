"""MnasNet's reinforcement-learning search: an LSTM controller trained with REINFORCE.

Each ``ask`` samples token sequences from the controller (:mod:`nas.strategies.controller`) and
decodes them into Archs. Each ``tell`` takes one policy-gradient step (Williams 1992, as in
Zoph & Le 2017 and Tan et al. 2019):

    loss = -mean_i[(R_i - b) / s * log pi(tokens_i)] - entropy_weight * mean_i H(pi)

where ``b`` is an exponential moving average of past rewards (the baseline), ``s`` an optional
moving estimate of the rewards' standard deviation (so the step size does not depend on how
closely accuracies cluster), and the entropy bonus keeps the controller exploring. Failed
candidates (reward None) are left out of the update. Candidates rejected before training for
breaking ``objective.limits`` get ``rejected_reward`` (default 0: as bad as a network that never
classifies right, so the update pushes the controller away from the decisions that broke a limit;
None leaves them out like failed ones). MnasNet itself used PPO; REINFORCE with a
baseline is the simpler estimator of the same gradient.

All state (controller params, Adam state, baseline) lives in :class:`RLState`, a pytree; the
random key is derived from (seed, step), so replaying recorded rewards rebuilds the state exactly.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic

from nas.space import Space
from nas.strategies.base import Observation, Proposal, Strategy
from nas.strategies.controller import Controller


class RLParams(pydantic.BaseModel):
    """Controller and REINFORCE settings.

    Attributes:
        hidden: LSTM width.
        lr: Adam learning rate of the controller.
        entropy_weight: weight of the entropy bonus.
        baseline_decay: decay of the reward moving average (0.95 = slow).
        normalize: divide advantages by a moving estimate of the rewards' std.
        tanh_constant: bound C of the logits, C * tanh(logits / C); 0 = unbounded.
        rejected_reward: the reward of a candidate rejected for breaking ``objective.limits``
            (None: left out of the update).
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    hidden: int = pydantic.Field(64, ge=1)
    lr: float = pydantic.Field(0.02, gt=0)
    entropy_weight: float = pydantic.Field(0.1, ge=0)
    baseline_decay: float = pydantic.Field(0.9, ge=0, lt=1)
    normalize: bool = True
    tanh_constant: float = pydantic.Field(1.5, ge=0)
    rejected_reward: float | None = 0.0


class RLState(NamedTuple):
    """Attributes: seed; step (asks so far); params; opt_state; baseline (EMA of rewards);
    sq (EMA of squared deviation from the baseline); updates (policy steps taken)."""

    seed: int
    step: int
    params: Any
    opt_state: Any
    baseline: jax.Array
    sq: jax.Array
    updates: int


@functools.lru_cache(maxsize=16)
def _compiled(cardinalities: tuple[int, ...], params_json: str):
    """Returns the jitted (init, update, sample) functions for one controller shape.

    Cached so that several searches over the same space (seeds, tests) compile once.
    """
    p = RLParams.model_validate_json(params_json)
    controller = Controller(cardinalities, hidden=p.hidden, tanh_constant=p.tanh_constant or None)
    optimizer = optax.adam(p.lr)

    @jax.jit
    def init(key):
        cparams = controller.init(key)
        return cparams, optimizer.init(cparams)

    @jax.jit
    def update(cparams, opt_state, baseline, sq, first, tokens, rewards):
        mean = jnp.mean(rewards)
        baseline = jnp.where(first, mean, baseline)
        sq = jnp.where(first, jnp.var(rewards), sq)
        scale = jnp.sqrt(sq) + 1e-8 if p.normalize else 1.0
        advantage = (rewards - baseline) / scale

        def loss_fn(cp):
            logp, entropy = controller.log_prob_and_entropy(cp, tokens)
            return -jnp.mean(advantage * logp) - p.entropy_weight * jnp.mean(entropy)

        grads = jax.grad(loss_fn)(cparams)
        updates, opt_state = optimizer.update(grads, opt_state, cparams)
        cparams = optax.apply_updates(cparams, updates)
        d = p.baseline_decay
        new_baseline = d * baseline + (1 - d) * mean
        new_sq = d * sq + (1 - d) * jnp.mean((rewards - baseline) ** 2)
        return cparams, opt_state, new_baseline, new_sq

    return init, update, jax.jit(controller.sample, static_argnums=2)


def reinforce(space: Space, params: RLParams | None = None) -> Strategy:
    """Returns the MnasNet RL Strategy (LSTM controller + REINFORCE).

    Args:
        space: the search space (its decisions are the controller's tokens).
        params: controller and optimizer settings.
    """
    p = params or RLParams()
    _init, _update, sample = _compiled(tuple(space.cardinalities()), p.model_dump_json())

    def init(seed: int) -> RLState:
        cparams, opt_state = _init(jax.random.PRNGKey(int(seed)))
        return RLState(int(seed), 0, cparams, opt_state, jnp.zeros(()), jnp.zeros(()), 0)

    def ask(state: RLState, n: int) -> tuple[RLState, list[Proposal]]:
        key = jax.random.fold_in(jax.random.PRNGKey(state.seed), state.step + 1)
        tokens = np.asarray(sample(state.params, key, int(n)))
        proposals = [Proposal(space.decode(list(t)), tuple(int(i) for i in t)) for t in tokens]
        return state._replace(step=state.step + 1), proposals

    def tell(state: RLState, observations: Sequence[Observation]) -> RLState:
        done = [(o, p.rejected_reward if o.rejected else o.reward) for o in observations]
        done = [(o, r) for o, r in done if r is not None]
        if not done:
            return state
        tokens = jnp.asarray([o.proposal.tokens for o, _ in done], jnp.int32)
        rewards = jnp.asarray([r for _, r in done], jnp.float32)
        cparams, opt_state, baseline, sq = _update(
            state.params, state.opt_state, state.baseline, state.sq, state.updates == 0, tokens, rewards)
        return state._replace(params=cparams, opt_state=opt_state, baseline=baseline, sq=sq,
                              updates=state.updates + 1)

    return Strategy("rl", init, ask, tell)
