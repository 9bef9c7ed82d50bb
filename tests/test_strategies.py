"""Search strategies: the RL controller, regularized evolution and random search.

The reward here is a synthetic function of the Arch with a known optimum (no training): the
fraction of decisions that match a hidden target Arch.
"""

import itertools
import math

import jax
import numpy as np
import pytest

from nas.errors import NasInputError
from nas.space import Space
from nas.strategies import Observation, make_strategy, parse_params
from nas.strategies.controller import Controller

SPACE = Space.by_name("tiny")


def _target(seed):
    """A target Arch without skip layers (so every decision matters)."""
    rng = np.random.default_rng(100 + seed)
    while True:
        arch = SPACE.sample(rng)
        if "skip" not in arch.values():
            return arch


def _match_reward(target):
    labels = SPACE.labels()
    return lambda arch: sum(arch[k] == target[k] for k in labels) / len(labels)


def _run(name, seed, budget, batch=8, params=None):
    """Returns (samples until the optimum or None, best reward) of one search."""
    reward = _match_reward(_target(seed))
    strategy = make_strategy(name, SPACE, params or {})
    state, n, best = strategy.init(seed), 0, 0.0
    while n < budget:
        state, proposals = strategy.ask(state, batch)
        rewards = [reward(p.arch) for p in proposals]
        for r in rewards:
            n += 1
            best = max(best, r)
            if r == 1.0:
                return n, best
        state = strategy.tell(state, [Observation(p, r) for p, r in zip(proposals, rewards)])
    return None, best


def _uniform_hit_probability(target):
    """Exact probability that one uniform random search sample decodes to `target`."""
    labels, cards = SPACE.labels(), SPACE.cardinalities()
    p = 1.0
    for slot in SPACE.slots:
        idx = [i for i, label in enumerate(labels) if label.startswith(slot.prefix + "_")]
        hits = 0
        for combo in itertools.product(*(range(cards[i]) for i in idx)):
            values = {labels[i]: SPACE.choices(labels[i])[c] for i, c in zip(idx, combo)}
            full = dict(target, **values)
            hits += all(SPACE.canonical(full)[labels[i]] == target[labels[i]] for i in idx)
        p *= hits / math.prod(cards[i] for i in idx)
    return p


def test_rl_finds_the_known_optimum_far_sooner_than_random_search():
    seeds, budget = range(4), 1500
    rl = [_run("rl", s, budget) for s in seeds]
    assert all(n is not None for n, _ in rl), rl  # every seed reaches the optimum
    rl_mean = float(np.mean([n for n, _ in rl]))
    random_best = [_run("random", s, budget)[1] for s in seeds]
    # random search, given as many samples as RL's slowest seed needed, never found it ...
    assert max(random_best) < 1.0 and np.mean(random_best) < 0.9
    # ... and needs 1/p samples on average, orders of magnitude more than RL
    expected_random = np.mean([1.0 / _uniform_hit_probability(_target(s)) for s in seeds])
    assert expected_random > 1000 * rl_mean, (expected_random, rl_mean)


def test_evolution_beats_random_at_the_same_budget():
    evo = [_run("evolution", s, 400, params={"population": 20, "sample_size": 5})[1] for s in range(3)]
    rnd = [_run("random", s, 400)[1] for s in range(3)]
    assert np.mean(evo) > np.mean(rnd) + 0.05


def test_regularized_evolution_ages_out_the_oldest_and_mutates_the_tournament_winner():
    strategy = make_strategy("evolution", SPACE, {"population": 3, "sample_size": 3})
    state = strategy.init(0)
    state, first = strategy.ask(state, 3)  # the initial population is random
    rewards = [0.9, 0.1, 0.2]  # the oldest member is the best one
    state = strategy.tell(state, [Observation(p, r) for p, r in zip(first, rewards)])
    state, (child,) = strategy.ask(state, 1)
    # tournament over the whole population picks the 0.9 member; the child differs in one decision
    parent = first[0].arch
    assert sum(child.arch[k] != parent[k] for k in SPACE.labels()) >= 1
    assert SPACE.canonical(child.arch) == child.arch
    diff = [k for k in SPACE.labels() if child.arch[k] != parent[k]]
    assert len({k.rsplit("_", 1)[0] for k in diff}) == 1  # one slot's decision (and its canonical effects)
    state = strategy.tell(state, [Observation(child, 0.0)])
    members = [a for a, _ in state.population]
    assert parent not in members  # aging removed the oldest although it was the best
    assert members == [first[1].arch, first[2].arch, child.arch]
    # failed candidates do not join the population
    state, (other,) = strategy.ask(state, 1)
    assert strategy.tell(state, [Observation(other, None)]).population == state.population


@pytest.mark.parametrize("name", ["random", "evolution", "rl"])
def test_same_seed_same_proposals(name):
    def trajectory():
        strategy = make_strategy(name, SPACE, {})
        state, out = strategy.init(3), []
        for _ in range(4):
            state, props = strategy.ask(state, 3)
            out += [p.arch for p in props]
            state = strategy.tell(state, [Observation(p, i / 10) for i, p in enumerate(props)])
        return out

    a, b = trajectory(), trajectory()
    assert a == b and len({SPACE.arch_id(x) for x in a}) > 1


def test_controller_is_a_proper_distribution_over_token_sequences():
    controller = Controller((2, 3, 1))
    params = controller.init(jax.random.PRNGKey(0))
    params["w"] = params["w"] * 200  # far from uniform
    seqs = np.array(list(itertools.product(range(2), range(3), range(1))), np.int32)
    logp, entropy = controller.log_prob_and_entropy(params, seqs)
    assert np.isclose(np.exp(np.asarray(logp)).sum(), 1.0, atol=1e-5)
    tokens = np.asarray(controller.sample(params, jax.random.PRNGKey(1), 4000))
    assert (tokens < np.array([2, 3, 1])).all()
    # empirical frequencies match the model's probabilities
    freq = np.array([np.mean((tokens == s).all(axis=1)) for s in seqs])
    assert np.allclose(freq, np.exp(np.asarray(logp)), atol=0.03)
    assert (np.asarray(entropy) >= 0).all()


def test_reinforce_raises_the_probability_of_rewarded_choices():
    strategy = make_strategy("rl", SPACE, {"lr": 0.05})
    state = strategy.init(0)
    first = SPACE.labels()[0]
    cards = SPACE.cardinalities()
    from nas.strategies.controller import Controller as C

    controller = C(cards, hidden=64, tanh_constant=1.5)

    def prob_first_choice(st):
        seqs = np.zeros((1, len(cards)), np.int32)
        logits = controller._run(st.params, jax.random.PRNGKey(0), seqs[0])[1]
        return float(jax.nn.softmax(logits[0])[0])

    before = prob_first_choice(state)
    for _ in range(10):
        state, props = strategy.ask(state, 8)
        rewards = [1.0 if p.tokens[0] == 0 else 0.0 for p in props]
        state = strategy.tell(state, [Observation(p, r) for p, r in zip(props, rewards)])
    assert prob_first_choice(state) > before + 0.2, first


def test_bad_strategy_params_name_the_field():
    with pytest.raises(NasInputError, match=r"strategy\.params\.population"):
        parse_params("evolution", {"population": 1})
    with pytest.raises(NasInputError, match=r"strategy\.params\.lrr: unknown field"):
        parse_params("rl", {"lrr": 0.1})
    with pytest.raises(NasInputError, match="choose one of"):
        parse_params("annealing", {})
