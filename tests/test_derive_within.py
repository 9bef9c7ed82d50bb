"""Deriving a one-shot search's Arch within the user's target and limits
(nas/supernet/derive_within.py, wired through nas/strategies/oneshot_driver.py)."""

import numpy as np
import pytest

from nas.runs.config import parse_config
from nas.space import Space
from nas.strategies.oneshot_driver import arch_bounds, print_summary
from nas.supernet.derive_within import derive_within, log_probabilities, relative_excess
from nas.supernet.gates import derive
from nas.supernet.synthetic import macs_latency_table

from test_supernet import SMALL


@pytest.fixture(scope="module")
def small():
    """(space, table, every Arch's index vector, its latency): SMALL's 256 index vectors."""
    space = Space.from_dict(SMALL)
    table = macs_latency_table(space)
    every = list(np.ndindex(*space.cardinalities()))
    return space, table, every, [table.predict(space.decode(list(ix))) for ix in every]


def _alpha(space, seed):
    rng = np.random.default_rng(seed)
    return {label: rng.normal(size=len(space.choices(label))) * 2 for label in space.labels()}


def _bound(table, limit):
    return lambda arch: relative_excess({"latency_ms": table.predict(arch)}, {"latency_ms": limit})


def test_relative_excess_sums_the_relative_overshoots():
    assert relative_excess({"a": 110.0, "b": 50.0}, {"a": 100.0, "b": 100.0}) == pytest.approx(0.1)
    assert relative_excess({"a": 150.0, "b": 300.0}, {"a": 100.0, "b": 100.0}) == pytest.approx(2.5)
    assert relative_excess({"a": 100.0}, {"a": 100.0}) == 0.0  # on the bound is within it


def test_an_argmax_arch_within_the_bound_is_kept(small):
    space, table, _, _ = small
    alpha = _alpha(space, 0)
    top = derive(space, alpha)
    found = derive_within(space, alpha, _bound(table, table.predict(top)))
    assert found.arch == top and found.feasible and found.changed == ()
    assert found.log_prob_drop == 0.0 and found.argmax_excess == 0.0


def test_an_arch_over_the_bound_is_repaired_to_the_most_probable_within_it(small):
    """Against every Arch of the space: the result is within the bound, no one-label change
    within it is more probable, and it is the most probable Arch within the bound in all but
    one of the seeded cases (a greedy search; the miss is by 0.18 nats)."""
    space, table, every, latencies = small
    exact, cases = 0, 0
    for seed in range(40):
        alpha = _alpha(space, seed)
        logp = log_probabilities(space, alpha)
        top = derive(space, alpha)
        limit = 0.8 * table.predict(top)
        if limit < min(latencies):
            continue
        found = derive_within(space, alpha, _bound(table, limit))
        assert found.feasible and table.predict(found.arch) <= limit
        assert found.argmax_arch == top and found.argmax_excess == pytest.approx(0.25)
        assert set(found.changed) == {k for k in space.labels() if found.arch[k] != top[k]}
        # its log-probability: of its most probable index vector (labels the Arch ignores,
        # e.g. the kernel of a skip, at their most probable choice)
        vectors = [ix for ix in every if space.decode(list(ix)) == found.arch]
        chosen = max(vectors, key=lambda ix: sum(lp[i] for lp, i in zip(logp, ix)))
        assert found.log_prob == pytest.approx(sum(lp[i] for lp, i in zip(logp, chosen)))
        for pos, lp in enumerate(logp):  # polished: no single change gains probability
            for choice in range(len(lp)):
                other = list(chosen)
                other[pos] = choice
                if table.predict(space.decode(other)) <= limit:
                    assert lp[choice] <= lp[chosen[pos]] + 1e-9
        best = max(sum(lp[i] for lp, i in zip(logp, ix))
                   for ix, lat in zip(every, latencies) if lat <= limit)
        assert found.log_prob <= best + 1e-9
        cases += 1
        exact += found.log_prob == pytest.approx(best)
    assert cases >= 25 and exact >= cases - 1


def test_an_unreachable_bound_gives_the_closest_arch_and_says_so(small):
    space, table, _, latencies = small
    found = derive_within(space, _alpha(space, 3), _bound(table, 0.5 * min(latencies)))
    assert not found.feasible
    assert table.predict(found.arch) == pytest.approx(min(latencies))
    assert found.excess == pytest.approx(1.0)
    assert found.to_dict(space)["feasible"] is False


def test_the_config_bounds_a_derived_arch_by_its_target_and_its_limits(capsys):
    from nas.cost_table import objective_table
    from nas.metrics import arch_metrics

    space = Space.from_dict(SMALL)
    small_arch, big_arch = space.decode([1] + [0] * 7), space.decode([0, 1, 1, 0, 1, 1, 1, 1])
    macs = {name: arch_metrics(space, a)["macs"] for name, a in
            (("small", small_arch), ("big", big_arch))}
    params = {name: arch_metrics(space, a)["params"] for name, a in
              (("small", small_arch), ("big", big_arch))}
    assert macs["small"] < macs["big"] and params["small"] < params["big"]
    table = objective_table(space, "macs", None)

    def bounds(objective):
        loaded = parse_config({"space": SMALL, "strategy": {"name": "fbnet"},
                               "objective": objective}, "c.yaml")
        return arch_bounds(loaded, space, table)

    assert bounds({"metric": "macs"}) is None  # nothing bounds the Arch: the argmax rule
    target = bounds({"metric": "macs", "target": macs["small"]})
    assert target(small_arch) == 0.0
    assert target(big_arch) == pytest.approx(macs["big"] / macs["small"] - 1)
    both = bounds({"metric": "macs", "target": macs["big"],
                   "limits": {"params": params["small"]}})
    assert both(small_arch) == 0.0
    assert both(big_arch) == pytest.approx(params["big"] / params["small"] - 1)

    print_summary({"strategy": "fbnet", "arch_id": "abc", "search_seconds": 1.0,
                   "workdir": "w", "best_arch": "w/best_arch.json",
                   "derivation": {"argmax_arch_id": "def", "changed": ["a", "b"],
                                  "feasible": True, "log_prob_drop": 0.5}})
    out = capsys.readouterr().out
    assert "most probable Arch def was over the target/limits; 2 label(s) changed" in out
    assert "derive: argmax" in out
