"""Config files that extend other config files, and the smoke variant of a full config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas.runs.config import load_config
from nas.runs.config_compose import compose_config, deep_merge
from nas.errors import NasInputError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"train": {"epochs": 3, "batch_size": 64}, "formats": ["json", "onnx"], "seed": 0}
    merged = deep_merge(base, {"train": {"epochs": 1}, "formats": ["json"], "budget": 4})
    assert merged == {"train": {"epochs": 1, "batch_size": 64}, "formats": ["json"], "seed": 0,
                      "budget": 4}
    assert base["train"] == {"epochs": 3, "batch_size": 64}  # the base is not modified


def test_extends_is_relative_to_the_file_and_the_child_wins(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "full.yaml", {"space": "tiny", "budget": 24,
                                   "train": {"epochs": 3, "learning_rate": 0.003}})
    child = write(tmp_path / "sub" / "child.yaml",
                  {"extends": "../full.yaml", "budget": 8, "train": {"epochs": 1}})
    assert compose_config(child) == {"space": "tiny", "budget": 8,
                                     "train": {"epochs": 1, "learning_rate": 0.003}}


def test_smoke_overrides_apply_only_when_asked(tmp_path):
    full = write(tmp_path / "full.yaml", {"space": "tiny", "budget": 24, "train": {"epochs": 3},
                                          "smoke": {"budget": 2, "train": {"epochs": 1}}})
    assert compose_config(full) == {"space": "tiny", "budget": 24, "train": {"epochs": 3}}
    smoked = {"space": "tiny", "budget": 2, "train": {"epochs": 1}}
    assert compose_config(full, smoke=True) == smoked
    derived = write(tmp_path / "smoke.yaml", {"extends": "full.yaml", "smoke": True})
    assert compose_config(derived) == smoked
    # a file extending the smoke file can still change what it needs
    again = write(tmp_path / "again.yaml", {"extends": "smoke.yaml", "budget": 3})
    assert compose_config(again)["budget"] == 3


@pytest.mark.parametrize("files, field, words", [
    ({"a.yaml": {"extends": "b.yaml"}, "b.yaml": {"extends": "a.yaml"}}, "extends", "loop"),
    ({"a.yaml": {"extends": "a.yaml"}}, "extends", "loop"),
    ({"a.yaml": {"extends": "missing.yaml"}}, "extends", "missing.yaml"),
    ({"a.yaml": {"extends": 3}}, "extends", "path"),
    ({"a.yaml": {"space": "tiny", "smoke": "yes"}}, "smoke", "mapping"),
])
def test_bad_extends_or_smoke_is_one_line_naming_the_field(tmp_path, files, field, words):
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(NasInputError) as e:
        compose_config(tmp_path / "a.yaml")
    assert e.value.field == field
    assert words in e.value.message
    assert "\n" not in str(e.value)


def test_smoke_flag_on_a_config_without_a_smoke_variant_is_refused(tmp_path):
    path = write(tmp_path / "full.yaml", {"space": "tiny", "budget": 24})
    with pytest.raises(NasInputError) as e:
        load_config(path, smoke=True)
    assert e.value.field == "smoke" and "no smoke variant" in e.value.message


@pytest.mark.parametrize("smoke_file", sorted(p.name for p in EXPERIMENTS.glob("*_smoke.yaml")))
def test_every_shipped_smoke_config_is_derived_from_its_full_config(smoke_file):
    raw = yaml.safe_load((EXPERIMENTS / smoke_file).read_text())
    full_file = smoke_file.replace("_smoke.yaml", ".yaml")
    assert raw == {"extends": full_file, "smoke": True}
    from_file = load_config(EXPERIMENTS / smoke_file).config
    from_flag = load_config(EXPERIMENTS / full_file, smoke=True).config
    full = load_config(EXPERIMENTS / full_file).config
    assert from_file.model_dump() == from_flag.model_dump()
    assert from_file.model_dump() != full.model_dump()


def test_cli_smoke_flag_reaches_the_config(tmp_path):
    full = write(tmp_path / "full.yaml", {"space": "tiny", "budget": 24,
                                          "strategy": {"name": "random"}})
    ok = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(full), "--check"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(full), "--check",
                              "--smoke"], capture_output=True, text=True)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "smoke" in lines[0] and "no smoke variant" in lines[0]
