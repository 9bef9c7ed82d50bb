"""One-shot searches that differ only in single_path's cost weight ``lam``, its target, or the
seed share one compiled train step: those numbers are arguments of the program
(:func:`nas.strategies.oneshot_train.step_consts`), not constants baked into it.

What is compared is the persistent compile cache's key of every program a run asks XLA for (the
key is a hash of the program: equal keys = one compile, the later runs load it from the cache
that tests/conftest.py configures). jax logs each request, hit or miss, with its key at DEBUG
level on the ``jax._src.compiler`` logger.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from nas.archfile import ArchFile
from nas.data import load_data
from nas.single_path.cost import SlotCosts
from nas.single_path.network import SinglePathNetwork
from nas.space import Space
from nas.strategies.oneshot_train import OneShotSchedule, train_oneshot
from nas.strategies.single_path import SinglePathParams, single_path_strategy
from nas.training.trainer import TrainConfig
from single_path_helpers import one_slot_space

#: One nestable slot (mbconv or skip, kernel 3 or 5) at 8x8: a train step that compiles fast.
#: The head's dropout draws from the step's key, so the seed's key reaches the program.
SPACE = one_slot_space("compile_reuse", {"op": ["mbconv", "skip"], "kernel": [3, 5], "expand": 2},
                       dropout=0.2)

#: The train step's module name in jax's compile log.
TRAIN_STEP = "jit_train_step"


def _compile_requests(records) -> set[tuple[str, str]]:
    """(module name, persistent cache key) of every compile request jax logged."""
    return {tuple(r.args) for r in records
            if "compilation cache" in str(r.msg).lower() and isinstance(r.args, tuple)
            and len(r.args) == 2}


@pytest.fixture(scope="module")
def setting():
    space = Space.from_dict(SPACE, "tests:compile_reuse")
    data = load_data("synthetic", space, synthetic_size=96)
    return space, data, SlotCosts.from_metric(space, "macs")


def _run(setting, caplog, lam: float, seed: int, target: float | None = None):
    """One 1-epoch single_path search; returns (final thresholds, compile requests)."""
    space, data, costs = setting
    train = TrainConfig(epochs=1, batch_size=16, learning_rate=0.05, seed=seed, progress=False)
    net = SinglePathNetwork(space)
    strategy = single_path_strategy(space, SinglePathParams(lam=lam, cost="macs"), costs,
                                    target, train, net=net)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="jax._src.compiler"):
        out = train_oneshot(strategy, data, OneShotSchedule(train), model=net,
                            container=ArchFile(space, space.sample(np.random.default_rng(0)), {}),
                            workdir=None, seed=seed)
    thresholds = np.concatenate([np.ravel(np.asarray(a))
                                 for a in jax.tree_util.tree_leaves(out.state.arch)])
    return thresholds, _compile_requests(caplog.records)


def test_runs_differing_in_lam_target_or_seed_share_one_compiled_train_step(setting, caplog):
    base, base_requests = _run(setting, caplog, lam=0.0, seed=0)
    steps = {key for name, key in base_requests if name == TRAIN_STEP}
    assert len(steps) == 1, base_requests          # the log shows the train step's compile

    for lam, seed in ((5.0, 0), (0.0, 1)):
        thresholds, requests = _run(setting, caplog, lam=lam, seed=seed)
        assert not np.array_equal(thresholds, base), (lam, seed)   # the setting took effect
        assert {name for name, _ in requests} >= {TRAIN_STEP}
        # every program this run asked for is one the first run compiled: nothing new
        assert requests <= base_requests, (lam, seed, requests - base_requests)

    # with a target: two targets, two weights, one compiled step (another one than without)
    tight, first = _run(setting, caplog, lam=1.0, seed=0, target=5e3)
    loose, second = _run(setting, caplog, lam=3.0, seed=0, target=1.5e4)
    assert not np.array_equal(tight, loose)
    assert {k for n, k in first if n == TRAIN_STEP} == {k for n, k in second if n == TRAIN_STEP}
    assert {k for n, k in first if n == TRAIN_STEP}.isdisjoint(steps)
