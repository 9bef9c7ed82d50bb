"""Single-Path NAS's op switch during the warm-up (issue 17 note): while the thresholds are frozen,
the op gate of a slot choosing between two operators that do not nest is drawn per step
(Bernoulli 0.5, from the step's key), so both operators' branches train; after the warm-up it is
its threshold's; the draws are a function of the step key (rerun and resume draw the same); one
compiled step serves both phases.

Which branch a step selected is read from the weights: with plain SGD (no momentum, no weight
decay) a branch's weights move exactly when it received a gradient, i.e. when it was selected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.single_path.cost import SlotCosts
from nas.single_path.network import SinglePathNetwork
from nas.space import Space
from nas.strategies.single_path import SinglePathParams, single_path_strategy
from nas.training.trainer import TrainConfig
from single_path_helpers import one_slot_space

#: One slot choosing MBConv or Fused-MBConv (they share no weights: an op switch), at 8x8.
SPACE = one_slot_space("sp_op_warmup", {"op": ["mbconv", "fused_mbconv"], "kernel": 3, "expand": 2})
SLOT, FIRST, SECOND = "s1_b1", "mbconv", "fused_mbconv"
WARMUP = 24
LR = jnp.float32(0.01)


def _branch_vector(state, op):
    return np.concatenate([np.ravel(np.asarray(a))
                           for a in jax.tree_util.tree_leaves(state.weights[SLOT][op])])


def _selected(before, after) -> str:
    """The branch whose weights the step moved (exactly one of them must move)."""
    moved = [op for op in (FIRST, SECOND)
             if not np.array_equal(_branch_vector(before, op), _branch_vector(after, op))]
    assert len(moved) == 1, f"a step moved the weights of {moved or 'no branch'}"
    return moved[0]


def _with_t_op(state, value):
    arch = dict(state.arch)
    arch[SLOT] = {**arch[SLOT], "t_op": jnp.full((1,), value, jnp.float32)}
    return state._replace(arch=arch)


class Search:
    """The micro space's strategy and its joint step, as the search loop takes it
    (:func:`nas.strategies.oneshot_train.train_oneshot`: weight and arch step from one state,
    key ``fold_in(base, 2 * step)``)."""

    def __init__(self, warmup_steps: int):
        space = Space.from_dict(SPACE, "tests:sp_op_warmup")
        train = TrainConfig(optimizer="sgd", momentum=0.0, weight_decay=0.0, label_smoothing=0.0)
        self.strategy = single_path_strategy(
            space, SinglePathParams(lam=0.0, cost="macs"), SlotCosts.from_metric(space, "macs"),
            train=train, net=SinglePathNetwork(space), warmup_steps=warmup_steps)
        keys = jax.random.split(jax.random.PRNGKey(3), 2)
        self.batch = {"x": jax.random.normal(keys[0], (8, 8, 8, 1)),
                      "y": jax.random.randint(keys[1], (8,), 0, 4),
                      "mask": jnp.ones((8,), jnp.float32)}
        strategy = self.strategy

        @jax.jit
        def joint(state, batch, base, step):
            key = jax.random.fold_in(base, 2 * step)
            new, _ = strategy.weight_step(state, batch, key, LR, jnp.float32(0.0))
            after_arch, _ = strategy.arch_step(state, batch, key, LR, jnp.float32(0.0))
            return new._replace(arch=after_arch.arch, arch_opt=after_arch.arch_opt)

        self.joint = joint

    def init(self):
        return self.strategy.init(jax.random.PRNGKey(0))

    def run(self, state, steps, seed=0, start=0):
        """Runs joint steps start..start+steps-1; returns (state, [selected branch per step])."""
        base, picks = jax.random.PRNGKey(seed + 1), []
        for step in range(start, start + steps):
            new = self.joint(state, self.batch, base, jnp.int32(step))
            picks.append(_selected(state, new))
            state = new
        return state, picks


@pytest.fixture(scope="module")
def search():
    return Search(WARMUP)


@pytest.fixture(scope="module")
def warmed(search):
    """The initial state (every gate on: the op threshold selects the second operator), the
    state after the warm-up, and the branch each warm-up step selected."""
    start = search.init()
    end, picks = search.run(start, WARMUP)
    return start, end, picks


def test_warmup_draws_the_op_gate_so_both_branches_train(warmed):
    start, end, picks = warmed
    # the frozen threshold alone would select the second operator on every step
    assert float(start.arch[SLOT]["t_op"][0]) < 0
    first = picks.count(FIRST)
    assert 6 <= first <= WARMUP - 6, picks            # about half of 24 Bernoulli(0.5) draws
    for op in (FIRST, SECOND):                        # both branches trained
        assert not np.allclose(_branch_vector(start, op), _branch_vector(end, op))
    # the thresholds did not move during the warm-up
    np.testing.assert_array_equal(np.asarray(start.arch[SLOT]["t_op"]),
                                  np.asarray(end.arch[SLOT]["t_op"]))


def test_after_warmup_the_threshold_decides_and_one_compiled_step_serves_both(search, warmed):
    _, end, _ = warmed
    assert int(end.arch_opt.count) == WARMUP
    for t_op, expected in ((0.5, FIRST), (-0.5, SECOND)):   # gate = 1(-20 t_op > 0): second
        state, picks = search.run(_with_t_op(end, t_op), 6, start=WARMUP)
        assert picks == [expected] * 6, (t_op, picks)
        assert float(state.arch[SLOT]["t_op"][0]) != t_op    # the threshold now learns
    assert search.joint._cache_size() == 1


def test_draws_follow_the_step_key_so_reruns_and_resumes_repeat_them(search, warmed):
    start, end, picks = warmed
    again, picks_again = search.run(start, WARMUP)
    assert picks_again == picks
    np.testing.assert_array_equal(_branch_vector(again, FIRST), _branch_vector(end, FIRST))
    # resume: the state after 10 steps, through host memory, continued from step 10
    half, first_half = search.run(start, 10)
    resumed = jax.tree_util.tree_map(jnp.asarray, jax.device_get(half))
    _, second_half = search.run(resumed, WARMUP - 10, start=10)
    assert first_half + second_half == picks
    # another seed draws another sequence
    _, other = search.run(start, WARMUP, seed=5)
    assert other != picks


def test_without_warmup_nothing_is_drawn():
    search = Search(0)
    _, picks = search.run(search.init(), 6)
    assert picks == [SECOND] * 6
