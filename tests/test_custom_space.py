"""Custom spaces all the way through: a user's space YAML -> sample -> train / export / arch.

The arch file records the space's name, its YAML (relative to the arch file, or absolute when
printed) and the definition's fingerprint; every command reading arch files finds the space
again, or says in one line which file is missing or changed and how to fix it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nas.archfile import ArchFile, load_arch
from nas.cli import main
from nas.errors import NasInputError
from nas.latency.table import space_hash
from nas.model import with_resolution
from nas.space import Space
from nas.space_files import space_fingerprint

# 8x8 input (the digits' own size), 2 slots: training one epoch takes a second or two
MY_SPACE = """\
name: my_space
description: a small custom space (copied from tiny and cut down)
input: {resolution: 8, channels: 1}
num_classes: 10
stem: {channels: 8, kernel: 3, stride: 1, act: relu}
head: {channels: 16, act: relu}
stages:
  - {channels: 8, stride: 1, repeats: 1, knobs: {op: [mbconv, skip], kernel: [3, 5], expand: [1, 2]}}
  - {channels: 16, stride: 2, repeats: 1, knobs: {kernel: [3, 5], expand: 2}}
"""
FAST = ["--epochs", "1", "--no-progress", "--json"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's folder holding my_space.yaml, as the current folder."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "my_space.yaml").write_text(MY_SPACE)
    monkeypatch.chdir(folder)
    return folder


def _sample(capsys, *extra) -> dict:
    """Runs `nas space sample my_space.yaml --seed 1 [--out FILE]`; returns the arch file."""
    capsys.readouterr()
    assert main(["space", "sample", "my_space.yaml", "--seed", "1", *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(Path(extra[1]).read_text() if extra else out)


def _nas(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_sample_then_train_then_export(project, capsys):
    # nas space sample my_space.yaml --seed 1 > a.json
    data = _sample(capsys)
    assert data["space"] == "my_space"
    assert Path(data["space_file"]) == project / "my_space.yaml"  # printed: absolute
    assert data["space_fingerprint"] == space_fingerprint(Space.from_yaml("my_space.yaml"))
    Path("a.json").write_text(json.dumps(data))

    # nas train --arch a.json
    assert main(["train", "--arch", "a.json", "--workdir", "w", *FAST]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["space"] == "my_space" and result["arch_id"] == data["meta"]["id"]
    # the workdir's arch.json points back at the space, relative to itself
    written = json.loads(Path("w/arch.json").read_text())
    assert written["space_file"] == "../my_space.yaml"
    assert written["space_fingerprint"] == data["space_fingerprint"]

    # nas export reads both arch files (--arch and the workdir's) and writes one more, with a
    # copy of the space beside it: the export folder stands alone
    assert main(["export", "--arch", "a.json", "--ckpt", "w", "--format", "json,packed",
                 "--no-latency", "--out", "exp", "--json"]) == 0
    exported = json.loads(Path("exp/arch.json").read_text())
    assert exported["space_file"] == "my_space.yaml"
    assert Path("exp/my_space.yaml").read_text() == MY_SPACE  # the user's text, comments kept
    shutil.move("exp", project.parent / "shipped_elsewhere")
    Path("my_space.yaml").write_text(MY_SPACE.replace("expand: 2}}", "expand: 3}}"))
    moved = load_arch(project.parent / "shipped_elsewhere" / "arch.json")
    assert moved.arch == data["arch"] and moved.space.name == "my_space"


@pytest.mark.parametrize("how", ["--out", "stdout"])
def test_arch_moved_with_its_space_loads(project, tmp_path, capsys, how):
    if how == "--out":
        _sample(capsys, "--out", "archs/a.json")  # recorded relative: ../my_space.yaml
    else:
        Path("archs").mkdir()
        Path("archs/a.json").write_text(json.dumps(_sample(capsys)))  # recorded absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy("archs/a.json", elsewhere / "a.json")
    shutil.move("my_space.yaml", elsewhere / "my_space.yaml")  # the original is gone
    assert main(["arch", "summary", str(elsewhere / "a.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["space"] == "my_space"
    # without the space next to it, the arch left behind cannot load: one line, exit 2
    assert main(["arch", "summary", "archs/a.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "space_file" in err and "not found" in err


def test_edited_space_file_is_one_line_exit_2(project, capsys):
    _sample(capsys, "--out", "a.json")
    text = MY_SPACE.replace("channels: 16, stride: 2", "channels: 24, stride: 2")
    Path("my_space.yaml").write_text(text)
    proc = _nas(["train", "--arch", "a.json", *FAST], project)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    err = proc.stderr
    assert err.startswith("nas: error: a.json: space_fingerprint: space file my_space.yaml "
                          "changed since this arch was written")
    assert "restore it, or resample the arch" in err
    # rewording the description changes no Arch: the file stays valid
    Path("my_space.yaml").write_text(MY_SPACE.replace("a small custom space", "reworded"))
    assert load_arch("a.json").space.name == "my_space"


def test_missing_space_file_is_one_line_exit_2(project, capsys):
    _sample(capsys, "--out", "a.json")
    Path("my_space.yaml").rename("kept.yaml")
    proc = _nas(["train", "--arch", "a.json", *FAST], project)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "a.json: space_file: space file my_space.yaml not found" in proc.stderr
    assert "pass --space FILE" in proc.stderr
    # the fix it names: --space FILE
    assert main(["arch", "summary", "a.json", "--space", "kept.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["space"] == "my_space"


def test_explicit_space_must_be_the_same_space(project, capsys):
    _sample(capsys, "--out", "a.json")
    Path("other.yaml").write_text(MY_SPACE.replace("expand: 2}}", "expand: 3}}"))
    assert main(["arch", "summary", "a.json", "--space", "other.yaml"]) == 2
    err = capsys.readouterr().err
    assert "space_fingerprint" in err and "other.yaml is not the one this arch was written for" in err
    assert main(["arch", "summary", "a.json", "--space", "tiny"]) == 2
    assert "is for space 'my_space', not 'tiny'" in capsys.readouterr().err


def test_old_arch_file_finds_the_space_next_to_it(project):
    # written before space files were recorded: the name alone
    arch = Space.from_yaml("my_space.yaml").sample(3)
    Path("old.json").write_text(json.dumps({"space": "my_space", "arch": arch}))
    assert load_arch("old.json").arch == arch
    Path("my_space.yaml").unlink()
    with pytest.raises(NasInputError) as info:
        load_arch("old.json")
    assert info.value.field == "space" and "unknown space 'my_space'" in info.value.message
    assert "my_space.yaml next to the arch file" in info.value.message


def test_fingerprint_is_the_latency_tables_space_hash(project):
    space = Space.from_yaml("my_space.yaml")
    assert space_fingerprint(space) == space_hash(space)
    assert space_fingerprint(space) != space_fingerprint(with_resolution(space, 16))


def test_bundled_space_never_replaces_another_file(project):
    space = Space.from_yaml("my_space.yaml")
    arch = space.sample(0)
    Path("out").mkdir()
    Path("out/my_space.yaml").write_text(MY_SPACE.replace("expand: 2}}", "expand: 3}}"))
    ArchFile(space, arch).save("out/a.json", with_space=True)
    assert json.loads(Path("out/a.json").read_text())["space_file"] == "../my_space.yaml"
    assert "expand: 3}}" in Path("out/my_space.yaml").read_text()  # left alone
    assert load_arch("out/a.json").space.to_dict() == space.to_dict()
    # in the space's own folder: the file itself is recorded, nothing copied
    ArchFile(space, arch).save("b.json", with_space=True)
    assert json.loads(Path("b.json").read_text())["space_file"] == "my_space.yaml"


def test_writers_name_shipped_spaces_and_embed_others(tmp_path):
    tiny = Space.by_name("tiny")
    arch = tiny.sample(0)
    ArchFile(tiny, arch).save(tmp_path / "a.json")
    assert set(json.loads((tmp_path / "a.json").read_text())) == {"space", "arch"}
    # a space changed in code (no file) is embedded, not named after the file it came from
    small = with_resolution(tiny, 8)
    ArchFile(small, arch).save(tmp_path / "b.json")
    embedded = json.loads((tmp_path / "b.json").read_text())["space"]
    assert embedded["input"]["resolution"] == 8
    assert load_arch(tmp_path / "b.json").space.resolution == (8, 8)


@pytest.mark.parametrize("fields, field", [
    ({"space_file": 3}, "space_file"),
    ({"space_fingerprint": "md5:123"}, "space_fingerprint"),
    ({"space": {"name": "x"}, "space_file": "x.yaml"}, "space_file"),
])
def test_malformed_space_fields_name_the_field(project, capsys, fields, field):
    data = dict(_sample(capsys), **fields)
    Path("bad.json").write_text(json.dumps(data))
    with pytest.raises(NasInputError) as info:
        load_arch("bad.json")
    assert info.value.field == field and info.value.source == "bad.json"
