"""The `nas space` commands and the CLI's one-line errors."""

import json
import subprocess
import sys

import pytest

from nas.cli import main


def test_space_sample_prints_a_valid_arch(capsys):
    assert main(["space", "sample", "tiny", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    from nas.space import Space
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
