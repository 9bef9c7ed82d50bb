"""history.jsonl: append-only, one record per line, torn last line repaired."""

import json

import pytest

from nas.errors import NasInputError
from nas.history import History, make_record


def _rec(n):
    return make_record(n, f"id{n}", {"a": n}, "ok", {"accuracy": 0.5, "val_accuracy": 0.5,
                                                    "params": 10}, reward=0.5, seconds=1.0)


def test_append_and_load_round_trip(tmp_path):
    h = History(tmp_path / "history.jsonl")
    assert h.load() == []
    for n in range(3):
        h.append(_rec(n))
    records = h.load()
    assert [r["arch_id"] for r in records] == ["id0", "id1", "id2"]
    assert records[0]["cost"] == {"params": 10} and records[0]["status"] == "ok"
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 3


def test_torn_last_line_is_dropped_and_the_file_repaired(tmp_path, capsys):
    path = tmp_path / "history.jsonl"
    h = History(path)
    h.append(_rec(0))
    h.append(_rec(1))
    with open(path, "a") as f:
        f.write(json.dumps(_rec(2))[:40])  # the process died mid-write
    assert [r["n"] for r in h.load()] == [0, 1]
    assert "incomplete last line" in capsys.readouterr().err
    h.append(_rec(2))  # appends after a clean newline, not glued to the torn text
    assert [r["n"] for r in h.load()] == [0, 1, 2]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(_rec(0)) + "\n" + json.dumps(_rec(1)))
    assert [r["n"] for r in History(path).load()] == [0, 1]
    assert path.read_text().endswith("\n")


def test_corrupt_middle_line_is_an_input_error_and_nothing_is_rewritten(tmp_path):
    path = tmp_path / "history.jsonl"
    text = json.dumps(_rec(0)) + "\n{oops\n" + json.dumps(_rec(2)) + "\n"
    path.write_text(text)
    with pytest.raises(NasInputError, match="line 2 is not a history record"):
        History(path).load()
    assert path.read_text() == text


def test_bad_status_is_rejected():
    with pytest.raises(ValueError):
        make_record(0, "x", {}, "maybe")
