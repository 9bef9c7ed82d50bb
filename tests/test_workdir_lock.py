"""Workdir claims: an OS lock held for the run, refused while live, taken over once dead."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.cli import main
from nas.errors import NasInputError
from nas.runs.workdir import (HOLDER_FILE, WorkdirBusyError, check_workdir_usable, claim_workdir,
                         lock_workdir)

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\n"
        "from nas.runs.workdir import lock_workdir\n"
        "claim = lock_workdir(sys.argv[1], command='holder test')\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


def _holder(workdir):
    """Starts a process that claims `workdir` and sleeps; returns it once it holds the lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\nbudget: 2\nstrategy: {name: random}\n"
                   "objective: {metric: macs, target: 1.5e6}\n")
    return cfg


def test_live_holder_is_refused_even_with_resume_then_a_killed_one_is_taken_over(tmp_path, capsys):
    wd = tmp_path / "w"
    proc = _holder(wd)
    try:
        for resume in (False, True):
            with pytest.raises(WorkdirBusyError) as e:
                lock_workdir(wd, resume=resume)
            assert f"pid {proc.pid}" in str(e.value) and "holder test" in str(e.value)
            assert "--resume" in str(e.value)
        # through the CLI: exit 2, one line naming the holder, nothing run
        cfg = _config_file(tmp_path)
        assert main(["search", str(cfg), "--workdir", str(wd), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {proc.pid}" in err[0] and "Traceback" not in err[0]
        assert not (wd / "search.json").exists()
    finally:
        _kill(proc)
    # SIGKILL left no live lock: the same command takes over, with a warning naming the dead run
    with lock_workdir(wd) as claim:
        assert claim.previous["pid"] == proc.pid
        holder = json.loads((wd / HOLDER_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["state"] == "running"
    assert "ended without releasing" in capsys.readouterr().err
    assert json.loads((wd / HOLDER_FILE).read_text())["state"] == "released"
    # a cleanly released workdir is resumed without any warning
    with lock_workdir(wd, resume=True) as claim:
        assert claim.previous is None
    assert capsys.readouterr().err == ""


def test_killed_holder_with_resume_is_taken_over_silently(tmp_path, capsys):
    wd = tmp_path / "w"
    _kill(_holder(wd))
    with lock_workdir(wd, resume=True) as claim:
        assert claim.previous is not None
    assert capsys.readouterr().err == ""


def test_resume_with_nothing_to_resume_is_refused(tmp_path, capsys):
    with pytest.raises(NasInputError, match="holds no earlier run"):
        lock_workdir(tmp_path / "new", resume=True)
    cfg = _config_file(tmp_path)
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "typo"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no earlier run" in err[0]


def test_claims_are_reentrant_in_one_process_and_nested_ones_inherit_resume(tmp_path, capsys):
    wd = tmp_path / "w"
    (wd / "search").mkdir(parents=True)
    (wd / "search" / HOLDER_FILE).write_text(json.dumps({"pid": 1, "state": "running"}))
    (wd / "pipeline.json").write_text("{}")
    outer = lock_workdir(wd, resume=True)
    inner = lock_workdir(wd)  # same process: no self-deadlock
    nested = lock_workdir(wd / "search")  # dead holder inside a resumed run: no warning
    assert nested.previous["pid"] == 1 and capsys.readouterr().err == ""
    inner.release()
    proc = subprocess.run([sys.executable, "-c", HOLD, str(wd)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode != 0 and "WorkdirBusyError" in proc.stderr  # outer still holds it
    nested.release()
    outer.release()
    _kill(_holder(wd))  # free again once the outer claim is released


def test_another_config_in_the_workdir_is_refused_and_the_lock_released(tmp_path):
    from nas.runs.config import parse_config

    base = {"space": "tiny", "budget": 2}
    a = parse_config({**base, "strategy": {"name": "random"}}, "a.yaml").config
    b = parse_config({**base, "strategy": {"name": "rl"}}, "b.yaml").config
    claim_workdir(tmp_path, a).release()
    with pytest.raises(NasInputError, match="another config"):
        claim_workdir(tmp_path, b)
    claim_workdir(tmp_path, a).release()  # the refused claim did not keep the lock


def test_the_space_is_fingerprinted_by_its_contents_not_as_written(tmp_path, monkeypatch):
    """A space named, given relative or absolute resumes; an edited space file is refused."""
    import json

    import yaml

    from nas.runs.config import parse_config
    from nas.space import spaces_dir

    monkeypatch.chdir(tmp_path)
    space_file = tmp_path / "my.yaml"
    space_file.write_text((spaces_dir() / "tiny.yaml").read_text())
    wd = tmp_path / "wd"

    def config(space):
        return parse_config({"space": space, "budget": 2, "strategy": {"name": "random"}}).config

    claim_workdir(wd, config("my.yaml")).release()
    claim_workdir(wd, config(str(space_file))).release()  # absolute path: the same search
    claim_workdir(wd, config("tiny")).release()  # the shipped copy: the same definition
    definition = yaml.safe_load(space_file.read_text())
    definition["description"] = "reworded"
    space_file.write_text(yaml.safe_dump(definition))
    claim_workdir(wd, config("my.yaml")).release()  # the description is not part of the space
    definition["head"]["channels"] = 96
    space_file.write_text(yaml.safe_dump(definition))
    with pytest.raises(NasInputError, match="space's definition changed"):
        claim_workdir(wd, config("my.yaml"))
    # A record from an earlier version (the space as written, no space_fingerprint) resumes.
    old = config("my.yaml")
    (wd / "search.json").write_text(json.dumps({"fingerprint": old.path_fingerprint()}))
    claim_workdir(wd, old).release()
    assert json.loads((wd / "search.json").read_text())["fingerprint"] == old.fingerprint()
    with pytest.raises(NasInputError, match="another config"):  # and another config still not
        claim_workdir(wd, parse_config({"space": "my.yaml", "budget": 2, "seed": 3,
                                        "strategy": {"name": "random"}}).config)


def test_unwritable_workdir_is_reported_before_work_starts(tmp_path, monkeypatch, capsys):
    real_open = os.open

    def deny_probe(path, *args, **kw):
        if ".nas-probe-" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", deny_probe)
    with pytest.raises(NasInputError, match="not writable .permission denied.") as e:
        check_workdir_usable(tmp_path / "w")
    assert str(tmp_path / "w") in str(e.value)
    cfg = _config_file(tmp_path)
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0] and "--workdir" in err[0]
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == []  # nothing written


def test_full_disk_is_reported_before_work_starts(tmp_path, monkeypatch, capsys):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    cfg = _config_file(tmp_path)
    assert main(["search", str(cfg), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only 10 MiB free" in err[0] and str(tmp_path / "w") in err[0]
    monkeypatch.setenv("NAS_MIN_FREE_MB", "5")
    check_workdir_usable(tmp_path / "w")  # the minimum can be lowered


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NasInputError, match="is a file"):
        lock_workdir(tmp_path / "f")


def test_cli_train_holds_the_lock_and_takes_resume(tmp_path):
    """`nas train --workdir` is refused while another process holds that workdir."""
    wd = tmp_path / "t"
    proc = _holder(wd)
    try:
        out = subprocess.run([sys.executable, "-m", "nas.cli", "train", "--arch",
                              str(ROOT / "search_spaces/published/mobilenet_v2.json"), "--workdir",
                              str(wd), "--resume", "--epochs", "1"], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
    finally:
        _kill(proc)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "in use" in lines[0]
    time.sleep(0)  # the holder is gone now: the lock is free
    lock_workdir(wd).release()
