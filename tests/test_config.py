"""Experiment configs: validation errors are one line naming the field; shipped configs load."""

import subprocess
import sys
from pathlib import Path

import pytest

from nas.runs.config import load_config, parse_config
from nas.errors import NasInputError

ROOT = Path(__file__).resolve().parents[1]
BASE = {"space": "tiny", "strategy": {"name": "rl"}}


@pytest.mark.parametrize("patch, field", [
    ({"budget": 0}, "budget"),
    ({"seed": -1}, "seed"),
    ({"bugdet": 3}, "bugdet"),
    ({"strategy": {"name": "rl", "params": {"lr": -1}}}, "strategy.params.lr"),
    ({"strategy": {"name": "hill"}}, "strategy.name"),
    ({"executor": {"kind": "slurm"}}, "executor.kind"),
    ({"executor": {"workers": 0}}, "executor.workers"),
    ({"executor": {"address": "auto"}}, "executor.address"),
    ({"objective": {"constraint": "medium"}}, "objective.constraint"),
    ({"objective": {"target": 1.0}}, "objective.metric"),  # latency needs a table
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"epoch": 3}}, "train.epoch"),
    ({"latency_table": "/nonexistent/table.json"}, "latency_table"),
])
def test_bad_field_is_named(patch, field):
    with pytest.raises(NasInputError) as e:
        parse_config({**BASE, **patch}, "c.yaml")
    assert e.value.field == field and e.value.source == "c.yaml"
    assert "\n" not in e.value.one_line()


def test_unknown_field_lists_the_allowed_ones():
    with pytest.raises(NasInputError, match=r"executor\.workrs: unknown field; allowed fields: .*workers"):
        parse_config({**BASE, "executor": {"workrs": 2}}, "c.yaml")


def test_defaults_and_objective():
    loaded = parse_config({**BASE, "objective": {"metric": "macs", "target": 1e6, "constraint": "hard"}})
    c = loaded.config
    assert c.executor.kind == "local" and c.proposals_per_round == 1
    objective = c.objective.build()
    assert (objective.alpha, objective.beta) == (0.0, -1.0)
    assert objective.reward({"accuracy": 0.9, "macs": 2e6}) == pytest.approx(0.45)


def test_fingerprint_ignores_budget_and_executor_only():
    a = parse_config({**BASE, "budget": 5}).config.fingerprint()
    assert a == parse_config({**BASE, "budget": 50, "executor": {"kind": "ray"}}).config.fingerprint()
    assert a != parse_config({**BASE, "budget": 5, "seed": 1}).config.fingerprint()


@pytest.mark.parametrize("name", ["digits_rl", "digits_evolution", "digits_random"])
def test_shipped_configs_load(name):
    loaded = load_config(ROOT / "experiments" / f"{name}.yaml")
    assert loaded.config.strategy.name == name.split("_")[1]


def test_cli_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("space: tiny\nstrategy: {name: rl}\nbudget: -3\n")
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(bad), "--workdir",
                           str(tmp_path / "w")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "budget" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
