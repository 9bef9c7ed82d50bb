"""Sample-based search summaries name the devices their candidates trained on (``devices``,
``devices_by_node``, ``platforms``), as ``nas train`` and one-shot summaries name theirs.
(The real trainer's figures are checked end to end in tests/test_cifar_search.py.)"""

import json
import socket

from nas.cli import main
from nas.history import History
from nas.search import devices_used
from nas.space import Space
from nas.training.evaluate import CandidateEvaluator

SPACE = Space.by_name("tiny")


class TwoNodeEvaluator:
    """Pretends every other candidate trained on node 'big' (2 GPUs), the rest on 'small' (1)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, arch, report=None):
        self.calls += 1
        node, devices = ("big", 2) if self.calls % 2 else ("small", 1)
        return {"accuracy": 0.5, "val_accuracy": 0.5, "test_accuracy": 0.5, "macs": 1e6,
                "devices": devices, "platform": "gpu", "node": node}


def test_the_summary_gives_the_most_devices_and_each_nodes_count(tmp_path, monkeypatch, capsys):
    import nas.search

    monkeypatch.setattr(nas.search.CandidateEvaluator, "for_space",
                        classmethod(lambda cls, space, **kw: TwoNodeEvaluator()))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\nbudget: 3\nstrategy: {name: random}\n"
                   "objective: {metric: macs, target: 1.5e6}\n")
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["devices"] == 2
    assert summary["devices_by_node"] == {"big": 2, "small": 1}
    assert summary["platforms"] == ["gpu"]
    records = History(tmp_path / "w" / "history.jsonl").load()
    assert [(r["node"], r["devices"]) for r in records] == [("big", 2), ("small", 1), ("big", 2)]
    # the plain summary (a resumed, finished search) says it in one line
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "devices: up to 2 per candidate (gpu; by node: big 2, small 1)" in out


def test_records_without_devices_leave_the_figure_unknown():
    old = [{"status": "ok"}, {"status": "error", "devices": None}]
    assert devices_used(old) == {"devices": None, "devices_by_node": {}, "platforms": []}
    one = [{"devices": 1, "platform": "cpu", "node": "n"}, {"status": "ok"}]
    assert devices_used(one) == {"devices": 1, "devices_by_node": {"n": 1}, "platforms": ["cpu"]}


def test_the_evaluator_passes_on_the_trainers_devices_and_its_host():
    def train_fn(space, arch, report):
        return {"val_accuracy": 0.25, "test_accuracy": 0.5, "devices": 4, "platform": "tpu"}

    ev = CandidateEvaluator.for_space(SPACE, train_fn=train_fn)
    result = ev(SPACE.sample(0))
    assert (result["devices"], result["platform"]) == (4, "tpu")
    assert result["node"] == socket.gethostname()
