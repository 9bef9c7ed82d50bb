"""The `nas space` commands and the CLI's one-line errors."""

import json
import subprocess
import sys

import pytest

from nas.cli import main
from nas.space import Space


def test_space_sample_prints_a_valid_arch(capsys):
    assert main(["space", "sample", "tiny", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    space = Space.by_name("tiny")
    assert out["space"] == "tiny" and space.validate(out["arch"]) == out["arch"]


def test_space_show_json(capsys):
    assert main(["space", "show", "fbnet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slots"] == 22 and 20 < out["log10_size"] < 22


@pytest.mark.parametrize("argv", [["space", "show", "nope"], ["space", "show", "/nonexistent/x.yaml"]])
def test_bad_input_is_one_line_exit_2(argv):
    proc = subprocess.run([sys.executable, "-m", "nas.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_malformed_yaml_is_one_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\nstages: [\n")
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "space", "show", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_space_show_lists_each_slots_decisions(capsys):
    assert main(["space", "show", "tiny"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["s1_b1"].endswith("op=['mbconv', 'dwsep'], kernel=[3, 5]")
    assert "op=['mbconv', 'skip'], kernel=[3, 5, 7], expand=[3, 6]" in lines["s2_b2"]
    assert lines["s4_b1"].endswith("rank=[None, 0.5], bits_w=[8, 32]")


def test_space_sample_out_records_a_user_space_relative_to_the_file(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text(
        Space.by_name("tiny").file.read_text().replace("name: tiny", "name: mine"))
    out = tmp_path / "archs" / "a.json"
    assert main(["space", "sample", str(tmp_path / "mine.yaml"), "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    data = json.loads(out.read_text())
    assert (data["space"], data["space_file"]) == ("mine", "../mine.yaml")
    assert data["space_fingerprint"].startswith("sha256:")
