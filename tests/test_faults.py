"""Faults: a full disk or a denied write is one error line with the old content intact; a torn
history line is repaired; a candidate whose loss becomes NaN/inf fails with its reason and the
search goes on."""

import errno
import json
import os
import re

import numpy as np
import pytest

import nas.safe_write
from nas.cli import main
from nas.runs.config import parse_config
from nas.data import Dataset
from nas.errors import NasInputError
from nas.training.evaluate import CandidateEvaluator
from nas.history import History, make_record
from nas.search import run_search
from nas.space import Space
from nas.training.trainer import NonFiniteLossError, TrainConfig, train_arch
from nas.training.loop import check_finite
from nas.safe_write import append_line, write_atomic, write_json_atomic

SPACE = Space.by_name("tiny")


def _enospc(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_an_atomic_write_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"v": 1})
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(NasInputError) as e:
        write_json_atomic(path, {"v": 2})
    assert "no space left" in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_denied_write_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def deny(*args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(nas.safe_write.tempfile, "mkstemp", deny)
    with pytest.raises(NasInputError, match="permission denied; fix the permissions"):
        write_atomic(tmp_path / "x.json", "{}")


def test_full_disk_midway_through_a_history_append_leaves_no_partial_line(tmp_path, monkeypatch):
    history = History(tmp_path / "history.jsonl")
    first = make_record(0, "a", {"k": 3}, "ok", {"accuracy": 0.5}, 0.5)
    history.append(first)
    before = history.path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nas.safe_write.os, "write", half_then_full)
    with pytest.raises(NasInputError, match="no space left"):
        history.append(make_record(1, "b", {"k": 5}, "ok", {"accuracy": 0.6}, 0.6))
    monkeypatch.undo()
    assert history.path.read_bytes() == before
    assert [r["arch_id"] for r in history.load()] == ["a"]


def test_append_after_a_torn_line_repairs_it_first(tmp_path, capsys):
    history = History(tmp_path / "history.jsonl")
    history.append(make_record(0, "a", {"k": 3}, "ok"))
    with open(history.path, "a") as f:
        f.write('{"n": 1, "arch_id": "b", "ar')  # killed mid-write
    history.append(make_record(1, "c", {"k": 7}, "ok"))
    assert [r["arch_id"] for r in history.load()] == ["a", "c"]
    assert "dropped an incomplete last line" in capsys.readouterr().err
    assert history.path.read_text().count("\n") == 2


def test_append_line_ends_a_torn_line_before_appending(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1}\n{"epo')
    append_line(path, '{"epoch": 2}')
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epo', '{"epoch": 2}']


def test_cli_turns_a_disk_error_anywhere_into_one_line(tmp_path, monkeypatch, capsys):
    import nas.search

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt"))

    monkeypatch.setattr(nas.search, "run_search", full)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\nbudget: 2\nstrategy: {name: random}\n"
                   "objective: {metric: macs, target: 1.5e6}\n")
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and str(tmp_path / "ckpt") in err[0]


def test_check_finite_names_the_first_bad_step():
    check_finite([np.float32(1.0), np.float32(2.0)], 1, 0, "x")
    with pytest.raises(NonFiniteLossError) as e:
        check_finite([np.float32(1.0), np.float32(np.inf), np.float32(np.nan)], 3, 10, "abc")
    assert (e.value.kind, e.value.epoch, e.value.step) == ("inf", 3, 11)
    assert "loss became inf at epoch 3 step 11" in str(e.value) and "arch abc" in str(e.value)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2 step 5"):
        check_finite([np.float32(np.nan)], 2, 5, "abc")


def _noise_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 10, 96).astype(np.int32)
    return Dataset("noise", x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], 10)


def test_nan_candidate_fails_with_its_reason_and_the_search_goes_on(tmp_path):
    """A real training run that diverges (learning rate 1e38: the first update overflows) raises
    at epoch 1 step 1, writes no checkpoint, and the search records that candidate with status
    'error' and the reason, then goes on."""
    loaded = parse_config({"space": "tiny", "seed": 3, "budget": 3, "strategy": {"name": "random"},
                           "objective": {"metric": "macs", "target": 1.5e6}}, "t.yaml")
    calls = []

    def train_fn(space, arch, report):
        calls.append(space.arch_id(arch))
        if len(calls) == 2:  # the second candidate diverges
            config = TrainConfig(epochs=2, batch_size=32, learning_rate=1e38, warmup_epochs=0,
                                 depthwise_impl="shift")
            train_arch(space, arch, _noise_data(), config, workdir=tmp_path / "cand")
        return {"val_accuracy": 0.5 + 0.1 * len(calls), "test_accuracy": 0.5}

    evaluator = CandidateEvaluator.for_space(SPACE, train_fn=train_fn)
    result = run_search(loaded, tmp_path / "search", evaluate=evaluator)
    records = History(tmp_path / "search" / "history.jsonl").load()
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert re.search(r"loss became (nan|inf) at epoch 1 step 1;", records[1]["error"])
    assert records[1]["reward"] is None and records[1]["arch_id"] == calls[1]
    assert result.best["arch_id"] == records[2]["arch_id"]
    assert not list((tmp_path / "cand" / "checkpoints").glob("[0-9]*"))  # no diverged checkpoint
