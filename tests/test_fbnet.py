"""FBNet: Gumbel-softmax search, latency term, task mechanism, outputs and resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.data import Dataset
from nas.metrics import arch_metrics
from nas.space import Space
from nas.strategies.oneshot_base import OneShotParams
from nas.strategies import make_strategy
from nas.strategies.oneshot_loop import run_oneshot
from nas.strategies.oneshot_train import make_steps
from nas.supernet.derive_within import relative_excess
from nas.supernet.gates import derive
from nas.supernet.network import SuperNet
from nas.supernet.synthetic import KERNEL_TASK_SPACE, macs_latency_table, pair_distance_task

from test_supernet import SMALL


def test_huge_latency_weight_derives_the_minimum_latency_arch():
    space = Space.from_dict(SMALL)
    table = macs_latency_table(space)
    net = SuperNet(space)
    # FBNet's own loss CE * a * log(LAT) ** b with a large b: the latency term dominates
    params = OneShotParams(objective="fbnet", fbnet_beta=20.0, arch_lr=0.1, tau0=1.0)
    strategy = make_strategy("fbnet", net.space, params, net=net, table=table)
    _, arch_step = make_steps(strategy)
    state = strategy.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for i in range(60):
        batch = {"x": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
                 "y": jnp.asarray(rng.integers(0, 10, 8), jnp.int32), "mask": jnp.ones(8)}
        state, m = arch_step(state, batch, jax.random.PRNGKey(i), jnp.float32(0.0), jnp.float32(0.0))
    all_latencies = [table.predict(space.decode(list(ix)))
                     for ix in np.ndindex(*space.cardinalities())]
    assert strategy.derive(state) == derive(space, state.arch)
    assert table.predict(strategy.derive(state)) == min(all_latencies)


def test_no_latency_weight_picks_the_kernel_the_task_needs_and_resumes(tmp_path):
    space = Space.from_dict(KERNEL_TASK_SPACE)
    x, y = pair_distance_task(1500, 0)
    data = Dataset("pairs", x[:1000], y[:1000], x[1000:1250], y[1000:1250], x[1250:], y[1250:], 2)
    params = dict(warmup_epochs=2, objective="none", arch_lr=0.05, weight_lr=0.01, batch_size=50)
    first = run_oneshot(space, data, "fbnet", OneShotParams(epochs=4, **params), None, tmp_path)
    assert [r["epoch"] for r in first["history"]] == [1, 2, 3, 4]
    result = run_oneshot(space, data, "fbnet", OneShotParams(epochs=8, **params), None, tmp_path)
    # resumed with more epochs: epochs 1-4 come from the checkpoint and metrics.jsonl, 5-8 are new
    assert [r["epoch"] for r in result["history"]] == list(range(1, 9))
    assert result["history"][3] == first["history"][3]
    assert np.allclose([r["temperature"] for r in result["history"]],
                       [5.0 * 0.956 ** e for e in range(8)])
    assert result["arch"] == {"s1_b1_kernel": 7}, result["distribution"]
    best = json.loads((tmp_path / "best_arch.json").read_text())
    assert best["arch"] == {"s1_b1_kernel": 7}
    assert set(best["meta"]["distribution"]["s1_b1_kernel"]) == {"3", "5", "7"}
    assert "macs" in best["meta"]["metrics"]
    assert (tmp_path / "tb").is_dir()
    # the same finished search derived within a MACs bound the 7x7 kernel breaks: the more
    # probable of the kernels within it (nothing retrained: the run resumes at its end)
    macs = {k: arch_metrics(space, {"s1_b1_kernel": k})["macs"] for k in (3, 5, 7)}
    bound = lambda arch: relative_excess({"macs": arch_metrics(space, arch)["macs"]},  # noqa: E731
                                         {"macs": macs[5]})
    within = run_oneshot(space, data, "fbnet", OneShotParams(epochs=8, **params), None, tmp_path,
                         bounds=bound)
    probs = result["distribution"]["s1_b1_kernel"]
    likelier = 5 if probs["5"] >= probs["3"] else 3
    assert within["history"] == result["history"] and within["alpha"] == result["alpha"]
    assert within["arch"] == {"s1_b1_kernel": likelier}
    assert within["derivation"]["changed"] == ["s1_b1_kernel"]
    assert within["derivation"]["argmax_arch_id"] == space.arch_id({"s1_b1_kernel": 7})
    assert within["derivation"]["argmax_excess"] == pytest.approx(macs[7] / macs[5] - 1)
    assert within["derivation"]["log_prob_drop"] == pytest.approx(
        np.log(probs["7"]) - np.log(probs[str(likelier)]), abs=1e-3)
    best = json.loads((tmp_path / "best_arch.json").read_text())
    assert best["arch"] == within["arch"] and best["meta"]["derivation"]["feasible"] is True
    papers = run_oneshot(space, data, "fbnet", OneShotParams(epochs=8, derive="argmax", **params),
                         None, tmp_path, bounds=bound)  # the papers' rule ignores the bound
    assert papers["arch"] == {"s1_b1_kernel": 7} and papers["derivation"] is None


def test_config_errors_are_one_line_naming_the_field():
    from nas.errors import NasInputError
    from nas.strategies import parse_params

    assert parse_params("fbnet", {"epochs": 3}).epochs == 3
    with pytest.raises(NasInputError) as e:
        parse_params("proxyless", {"epochs": 0}, "x.yaml")
    assert e.value.field == "strategy.params.epochs"
    with pytest.raises(NasInputError) as e:
        parse_params("fbnet", {"temprature": 1.0}, "x.yaml")
    assert "allowed fields" in e.value.message
    space = Space.from_dict(SMALL)
    with pytest.raises(NasInputError) as e:
        make_strategy("fbnet", space, OneShotParams(), table=None)  # FBNet's loss needs a table
    assert e.value.field == "latency_table"
