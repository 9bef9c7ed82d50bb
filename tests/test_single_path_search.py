"""Single-Path NAS search behaviour: the cost weight shrinks every knob; without it accuracy
decides; the CLI writes best_arch.json and the child's weights, and resumes."""

from __future__ import annotations

import json

import pytest

from nas.data import load_data
from nas.errors import NasInputError
from nas.single_path.cost import SlotCosts
from nas.strategies import parse_params
from nas.strategies.single_path import SinglePathParams
from nas.strategies.single_path_run import SinglePathSetup, search
from nas.training.trainer import TrainConfig

from single_path_helpers import fake_table, small_space


EPOCHS = 3


@pytest.fixture(scope="module")
def runs():
    space = small_space()
    data = load_data("digits", space)
    costs = SlotCosts.from_metric(space, "bops")
    out = {}
    # the thresholds move by the shared RMS of their gradients, so a gate whose flip saves
    # little (s1_b1's expand conv) is slow: the large-lambda run gets a larger learning rate
    for lam, lr in ((0.0, 3e-3), (5.0, 1e-2)):
        setup = SinglePathSetup(space, data, None, costs, SinglePathParams(lam=lam, cost="bops"),
                                None, TrainConfig(epochs=EPOCHS, batch_size=32, learning_rate=lr))
        out[lam] = search(setup, None)
    return space, costs, out


def test_a_large_lambda_shrinks_kernels_channels_ranks_and_bits(runs):
    space, costs, out = runs
    arch = out[5.0]["arch"]
    # every slot at its cheapest level: dwsep instead of mbconv, skip where allowed, and in the
    # slot that cannot skip the smallest kernel, channels, rank and bit-width
    assert arch["s1_b1_op"] == "dwsep" and arch["s1_b1_kernel"] == 3
    assert arch["s2_b1_op"] == "skip"
    assert (arch["s3_b1_kernel"], arch["s3_b1_expand"], arch["s3_b1_rank"], arch["s3_b1_bits_w"]) \
        == (3, 3, 0.5, 8)
    assert out[5.0]["cost"] == pytest.approx(costs.extremes()[0], rel=1e-6)


def test_lambda_zero_keeps_what_accuracy_needs(runs):
    space, costs, out = runs
    big, small = out[0.0], out[5.0]
    assert big["cost"] > 2 * small["cost"]
    assert big["val_accuracy"] >= small["val_accuracy"] - 0.02
    assert big["val_accuracy"] > 0.8
    # with no cost pressure, no layer is dropped and the kernels stay at their largest
    arch = big["arch"]
    assert arch["s1_b1_op"] == "mbconv" and arch["s2_b1_op"] == "mbconv"


def test_history_logs_decisions_and_cost_per_epoch(runs):
    _, _, out = runs
    hist = out[5.0]["history"]
    assert len(hist) == EPOCHS
    assert hist[-1]["cost"] <= hist[0]["cost"]
    assert hist[-1]["decision/s3_b1_kernel"] == 3


def test_with_a_target_the_arch_lands_just_below_it_not_at_the_cheapest():
    # the hinge stops the latency pressure at T (1 - margin), and the thresholds, frozen during
    # the warm-up and moved by one shared RMS, flip one gate after another instead of all at once
    space = small_space()
    table = fake_table(space)
    costs = SlotCosts.from_table(space, table)
    lo, hi = costs.extremes()
    target = 1.2                                  # ms; the fake table spans 0.44 .. 2.95 ms
    setup = SinglePathSetup(space, load_data("digits", space), table, costs,
                            SinglePathParams(lam=2.0, margin=0.05, warmup_epochs=1), target,
                            TrainConfig(epochs=EPOCHS, batch_size=32, learning_rate=3e-3))
    out = search(setup, None)
    assert out["feasible"] and out["cost"] <= target
    assert lo < 0.4 * target and out["cost"] >= 0.7 * target   # not the cheapest Arch
    assert out["history"][0]["cost"] == pytest.approx(hi, rel=1e-5)   # warm-up: every gate on


def test_warmup_must_leave_epochs_for_the_thresholds(tmp_path, capsys):
    import yaml

    from nas.cli import main

    from single_path_helpers import SMALL

    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({"space": SMALL, "data": "digits", "train": {"epochs": 2},
                                    "strategy": {"name": "single_path",
                                                 "params": {"cost": "bops", "warmup_epochs": 2}}}))
    assert main(["search", str(path), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "strategy.params.warmup_epochs" in err and len(err.splitlines()) == 1


def test_bad_strategy_params_name_the_field():
    with pytest.raises(NasInputError, match="strategy.params.lam"):
        parse_params("single_path", {"lam": -1})
    with pytest.raises(NasInputError, match="strategy.params.temperature"):
        parse_params("single_path", {"temperature": 1})


def test_cli_search_writes_best_arch_and_child_weights_and_resumes(tmp_path, capsys):
    import yaml

    from nas.archfile import load_arch
    from nas.training.checkpoint import load_trained
    from nas.cli import main

    from single_path_helpers import SMALL

    config = {"space": SMALL, "data": "digits", "seed": 0,
              "strategy": {"name": "single_path", "params": {"lam": 5.0, "cost": "bops"}},
              "train": {"epochs": 1, "batch_size": 32}}
    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump(config))
    wd = tmp_path / "run"
    assert main(["search", str(path), "--workdir", str(wd), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    best = load_arch(wd / "best_arch.json")
    assert best.space.arch_id(best.arch) == first["arch_id"]
    assert best.meta["gates"] and best.meta["cost_unit"] == "bops"
    archfile, _, variables, _ = load_trained(wd / "child")
    assert archfile.space.arch_id(archfile.arch) == first["arch_id"]
    # the same command again resumes from the finished checkpoint: nothing is retrained
    assert main(["search", str(path), "--workdir", str(wd), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["arch_id"] == first["arch_id"] and again["cost"] == first["cost"]
    # other settings on the same workdir are refused in one line
    config["strategy"]["params"]["lam"] = 1.0
    path.write_text(yaml.safe_dump(config))
    assert main(["search", str(path), "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err.strip()       # the workdir's claim names the config change
    assert len(err.splitlines()) == 1 and "--workdir" in err


def test_cli_refuses_latency_cost_without_a_table(tmp_path, capsys):
    import yaml

    from nas.cli import main

    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({"space": "tiny", "strategy": {"name": "single_path"}}))
    assert main(["search", str(path), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "latency_table" in err and len(err.splitlines()) == 1


def test_check_refuses_a_space_single_path_cannot_nest_as_the_run_would(tmp_path, capsys):
    import yaml

    from nas.cli import main

    # three operators in one layer (besides skip) cannot be searched
    from single_path_helpers import SMALL

    space = json.loads(json.dumps(SMALL))
    space["stages"][1]["knobs"]["op"] = ["mbconv", "fused_mbconv", "dwsep"]
    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({"space": space, "data": "synthetic",
                                    "strategy": {"name": "single_path", "params": {"cost": "bops"}}}))
    assert main(["search", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s2_b1_op" in err and "single_path cannot" in err
    assert "two operators" in err
    assert main(["search", str(path), "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip() == err             # the run refuses the same line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("objective, params, field", [
    ({"metric": "macs", "target": 2e7}, {"cost": "bops"}, "objective.metric"),
    ({"metric": "peak_activation_bytes", "target": 2e5}, {}, "objective.metric"),
    ({}, {"cost": "bops", "warmup_epochs": 2}, "strategy.params.warmup_epochs"),
    ({}, {}, "latency_table"),
])
def test_check_refuses_the_settings_the_run_refuses(tmp_path, capsys, objective, params, field):
    import yaml

    from nas.cli import main

    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({"space": "tiny", "data": "synthetic", "objective": objective,
                                    "train": {"epochs": 2},
                                    "strategy": {"name": "single_path", "params": params}}))
    assert main(["search", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err
    assert main(["search", str(path), "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip() == err             # the run refuses the same line


@pytest.mark.parametrize("metric, target, cost, in_cost_units", [
    ("macs", 2e7, "macs", 2e7), ("size_bytes", 3e4, "size_bits", 2.4e5),
    ("energy_mj", 0.02, "energy_pj", 2e7)])
def test_a_target_of_any_cost_metric_is_aimed_at_in_the_costs_unit(tmp_path, capsys, metric,
                                                                    target, cost, in_cost_units):
    """Without strategy.params.cost the metric's own per-layer cost is used - by --check as by
    the run - and the target is converted to its unit (no latency table needed)."""
    import yaml

    from nas.cli import main
    from nas.runs.config import load_config
    from nas.strategies.single_path_run import setup_from_config

    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump({"space": "tiny", "data": "synthetic",
                                    "objective": {"metric": metric, "target": target},
                                    "train": {"epochs": 2}, "strategy": {"name": "single_path"}}))
    assert main(["search", str(path), "--check"]) == 0, capsys.readouterr().err
    setup = setup_from_config(load_config(path))
    assert setup.params.cost == cost and setup.costs.unit == cost
    assert setup.target == pytest.approx(in_cost_units)
