"""A search joined (``--ray-address``) to a cluster started with ``ray start --head``, whose
driver is SIGKILLed mid-search, or interrupted with Ctrl-C: the same command resumes with nothing
lost or evaluated twice.

The test's cluster listens on 127.0.0.1 only, in a temp dir of its own, and is stopped by its
process group (``ray stop`` would stop every Ray of the machine, other users' too). The driver is
tests/crash_driver.py (the real CLI with a synthetic evaluator), as in tests/test_crash_resume.py.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from nas.history import History

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_driver import SyntheticEvaluator  # noqa: E402
from crash_helpers import after, count_lines, finish, kill_when, start_driver  # noqa: E402
from ray_helpers import exposed_sockets  # noqa: E402


def free_port() -> int:
    """Returns a TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return out


@pytest.fixture
def ray_head():
    """``ray start --head --block`` (2 CPUs) as a child in a process group of its own; yields
    (address, temp dir, process); kills the group (GCS, raylet, agents, workers) afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # keeps 127.0.0.1 (see nas.executor)
    ray_cli = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", temp_dir,
         "--dashboard-agent-listen-port", str(free_port())],  # not the default other Rays use
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        end = time.time() + 60
        while not os.path.exists(os.path.join(temp_dir, "ray_current_cluster")):
            if proc.poll() is not None or time.time() > end:
                raise AssertionError(f"ray start failed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", temp_dir, proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM: Ray takes ~10 s to wind down
        proc.wait(timeout=10)
        end = time.time() + 10
        while group_pids(proc.pid) and time.time() < end:
            time.sleep(0.1)
        assert not group_pids(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


SEARCH = {"space": "tiny", "seed": 4, "budget": 6, "batch": 3,
          "strategy": {"name": "evolution", "params": {"population": 3, "sample_size": 2}},
          "objective": {"metric": "macs", "target": 1.5e6}, "executor": {"workers": 2}}


def test_joined_search_killed_mid_batch_resumes_without_loss_or_repeats(ray_head, tmp_path,
                                                                        monkeypatch):
    import nas.training.evaluate
    from nas.cli import main

    address, temp_dir, head = ray_head
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SEARCH))
    monkeypatch.setattr(nas.training.evaluate.CandidateEvaluator, "for_space",
                        classmethod(lambda cls, space, **kw: SyntheticEvaluator()))
    local = tmp_path / "local.yaml"  # the uninterrupted reference, without starting a Ray
    local.write_text(yaml.safe_dump({**SEARCH, "executor": {"kind": "local"}}))
    assert main(["search", str(local), "--workdir", str(tmp_path / "whole"), "--json"]) == 0
    whole = [r["arch_id"] for r in History(tmp_path / "whole" / "history.jsonl").load()]

    wd = tmp_path / "split"
    hist = wd / "history.jsonl"
    args = ["--synthetic", "0.6", "search", str(cfg), "--workdir", str(wd), "--ray-address",
            address, "--json"]
    # killed while the second batch runs: its 3 trials on 2 workers take over 1.2 s
    delay = random.Random("ray-join").uniform(0.1, 0.5)
    assert kill_when(start_driver(args), after(lambda: count_lines(hist) >= 3, delay), timeout=120)
    assert count_lines(hist) == 3  # the first batch was recorded, the second was not
    summary, err = finish(args, timeout=120)
    assert "ended without releasing" in err  # the dead driver's lock was taken over

    records = History(hist).load()
    ids = [r["arch_id"] for r in records]
    assert ids == whole and len(set(ids)) == SEARCH["budget"]  # nothing lost or repeated
    assert [r["n"] for r in records] == list(range(SEARCH["budget"]))
    assert all(r["status"] == "ok" for r in records)
    assert summary["new"] == 3 and summary["candidates"] == SEARCH["budget"]  # 3 replayed

    # Ctrl-C (SIGINT) mid-batch: the search stops (exit 130, one line); the batch in flight is
    # not recorded - Tune's own SIGINT handler used to end it with every trial 'failed' and let
    # the search go on - and the same command finishes the search as if never interrupted
    wd = tmp_path / "ctrl-c"
    hist = wd / "history.jsonl"
    args[args.index("--workdir") + 1] = str(wd)
    proc = start_driver(args)
    assert kill_when(proc, after(lambda: count_lines(hist) >= 3, delay), timeout=120,
                     sig=signal.SIGINT)
    err = proc.stderr.read()
    assert proc.returncode == 130 and "nas: interrupted" in err, err[-2000:]
    assert count_lines(hist) == 3
    finish(args, timeout=120)
    records = History(hist).load()
    assert [r["arch_id"] for r in records] == whole and all(r["status"] == "ok" for r in records)
    drivers = list(Path(temp_dir).glob("session_latest/logs/python-core-driver-*"))
    assert len(drivers) == 4, drivers  # every run joined the cluster, none started its own Ray
    assert not exposed_sockets(group_pids(head.pid))  # the cluster listened on loopback only
