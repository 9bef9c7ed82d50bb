"""Executors: LocalExecutor, and RayExecutor (Ray Tune trials) with worker-death retries.

One Ray session (2 CPUs, dashboard off, loopback) is shared by the module's tests.
"""

import os
import signal
import sys

import pytest
from ray import cloudpickle

from nas.runs.config import parse_config
from nas.executor import LocalExecutor, RayExecutor, start_ray
from nas.history import History
from nas.search import run_search
from nas.single_thread import XLA_ONE_THREAD_FLAGS
from nas.space import Space


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


def work(item, report):
    """Test function: returns its item, raises for 'raise', dies once for ('die', marker)."""
    kind, arg = item
    if kind == "raise":
        raise ValueError("bad candidate")
    if kind == "die" and not os.path.exists(arg):
        open(arg, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-trial
    if kind == "die_always":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"arg": arg, "xla": os.environ.get("XLA_FLAGS"), "pid": os.getpid(),
            "omp": os.environ.get("OMP_NUM_THREADS"), "nice": os.nice(0)}


class KillOnceEvaluator:
    """Synthetic candidate evaluator whose worker dies the first time it sees one Arch."""

    def __init__(self, space_name, victim_id, marker, always=False):
        self.space_name, self.victim_id, self.marker, self.always = space_name, victim_id, marker, always

    def __call__(self, arch, report=None):
        space = Space.by_name(self.space_name)
        if space.arch_id(arch) == self.victim_id and (self.always or not os.path.exists(self.marker)):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        score = sum(v in (7, 6, True) for v in arch.values()) / len(arch)
        return {"accuracy": score, "val_accuracy": score, "test_accuracy": score, "macs": 1e6}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    owned = start_ray(None, num_cpus=2)
    yield ray
    if owned:
        ray.shutdown()


def listening_sockets(pids):
    """Returns {(pid, name, ip, port)} of the listening TCP and bound UDP sockets of the pids."""
    import psutil

    out = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr):  # 2 = SOCK_DGRAM
                    out.add((pid, proc.name(), c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            pass
    return out


def ray_pids():
    """This process and every process it started (Ray's GCS, raylet, agents, workers)."""
    import psutil

    me = psutil.Process()
    return [me.pid] + [p.pid for p in me.children(recursive=True)]


def trial_pid(item, report):
    """Test function: returns its process id and cores (so the test sees the trial's workers)."""
    import time

    time.sleep(0.3)
    return {"pid": os.getpid(), "sockets": sorted(listening_sockets([os.getpid()])),
            "affinity": sorted(os.sched_getaffinity(0)),
            "threads": {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}}


def test_local_executor_keeps_order_and_captures_errors():
    seen = []
    out = LocalExecutor().map(work, [("ok", 1), ("raise", 2), ("ok", 3)],
                              on_result=lambda i, o: seen.append((i, o.status)))
    assert [o.status for o in out] == ["ok", "error", "ok"]
    assert out[1].error == "ValueError: bad candidate" and out[2].value["arg"] == 3
    assert seen == [(0, "ok"), (1, "error"), (2, "ok")]


def test_ray_executor_runs_trials_with_one_xla_thread(ray_session):
    ex = RayExecutor(workers=2, retries=0)
    out = ex.map(work, [("ok", 1), ("raise", 2), ("ok", 3)])
    ex.close()
    assert [o.status for o in out] == ["ok", "error", "ok"]
    assert [o.value["arg"] for o in (out[0], out[2])] == [1, 3]
    assert out[0].value["xla"] == XLA_ONE_THREAD_FLAGS and out[0].value["pid"] != os.getpid()
    assert out[0].value["omp"] == "1"  # numpy/BLAS pools of one thread
    assert out[0].value["nice"] == os.nice(0)  # not reniced by Ray (default +15)
    assert out[1].error == "ValueError: bad candidate" and out[1].attempts == 1  # not retried
    assert ray_session.is_initialized()  # the executor did not own, so did not stop, Ray


def test_ray_trials_size_their_threads_to_their_cpus(ray_session):
    ex = RayExecutor(workers=1, cpus_per_trial=2, retries=0)
    out = ex.map(work, [("ok", 1)])
    ex.close()
    assert out[0].status == "ok", out[0]
    assert out[0].value["xla"] == "" and out[0].value["omp"] == "2"   # XLA's threads, pools of 2
    assert len(out[0].cpus) == 2                                      # on two cores of its own


def test_gpus_per_trial_on_a_cluster_without_gpus_is_one_line(ray_session):
    from nas.errors import NasInputError

    with pytest.raises(NasInputError, match="executor.gpus_per_trial.*0 GPUs"):
        RayExecutor(workers=1, gpus_per_trial=0.5)
    assert ray_session.is_initialized()                 # the shared session is left running


def test_core_claims_are_exclusive_and_released(tmp_path):
    from nas.executor import _claim_cores

    home = sorted(os.sched_getaffinity(0))
    first, fds1 = _claim_cores(str(tmp_path), 1)
    second, fds2 = _claim_cores(str(tmp_path), len(home) - 1) if len(home) > 1 else ((), [])
    assert len(first) == 1 and first[0] in home
    assert not set(first) & set(second)  # a held core is not handed out again
    assert _claim_cores(str(tmp_path), 1) == ((), [])  # all held: no pin, no lock kept
    for fd in fds1:
        os.close(fd)  # the trial ended
    again, fds3 = _claim_cores(str(tmp_path), 1)
    assert again == first
    for fd in fds2 + fds3:
        os.close(fd)


def test_ray_servers_listen_on_loopback_only(ray_session):
    """Every socket Ray's processes listen on (GCS, raylet, object manager, core workers of the
    driver and trial workers, agents) is bound to 127.0.0.1, not to all interfaces."""
    ex = RayExecutor(workers=2, retries=0)
    out = ex.map(trial_pid, [1, 2, 3])
    sockets = listening_sockets(ray_pids())  # the trials' workers have ended by now:
    ex.close()
    workers = {tuple(s) for o in out for s in o.value["sockets"]}  # they listed their own
    assert {o.value["pid"] for o in out} == {pid for pid, _, _, _ in workers}
    sockets |= workers
    names = {name for _, name, _, _ in sockets}
    assert "gcs_server" in names and "raylet" in names  # the check saw Ray's servers
    exposed = {s for s in sockets if s[2] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
    assert not exposed, f"sockets not on loopback: {sorted(exposed)}"


def test_concurrent_trials_are_pinned_to_cores_of_their_own(ray_session):
    ex = RayExecutor(workers=2, retries=0)
    out = ex.map(trial_pid, list(range(6)))
    ex.close()
    assert all(o.status == "ok" and o.cpus and len(o.cpus) == 1 for o in out)
    for o in out:  # every thread of the trial's process, not only the calling one, is pinned
        assert o.value["affinity"] == list(o.cpus)
        assert all(cpus == list(o.cpus) for cpus in o.value["threads"].values())
    if len(os.sched_getaffinity(0)) >= 2:  # two workers -> two different cores
        by_pid = {o.value["pid"]: o.cpus for o in out}
        assert len(set(by_pid.values())) == 2


def test_killed_worker_is_retried_and_the_search_records_every_candidate_once(ray_session, tmp_path):
    config = parse_config({"space": "tiny", "seed": 2, "budget": 6, "batch": 3,
                           "strategy": {"name": "evolution", "params": {"population": 3}},
                           "objective": {"metric": "macs", "target": 2e6}})
    probe = []
    run_search(config, tmp_path / "probe",
               evaluate=lambda arch, report=None: probe.append(arch) or
               {"accuracy": 0.5, "val_accuracy": 0.5, "macs": 1e6})
    space = Space.by_name("tiny")
    victim = space.arch_id(probe[1])
    marker = str(tmp_path / "killed")
    ex = RayExecutor(workers=2, retries=2)
    result = run_search(config, tmp_path / "run", executor=ex,
                        evaluate=KillOnceEvaluator("tiny", victim, marker))
    ex.close()
    assert os.path.exists(marker)  # the worker really was killed
    records = History(tmp_path / "run" / "history.jsonl").load()
    ids = [r["arch_id"] for r in records]
    assert len(ids) == 6 == len(set(ids)) and victim in ids
    by_id = {r["arch_id"]: r for r in records}
    assert by_id[victim]["status"] == "ok" and by_id[victim]["attempts"] == 2
    assert all(r["status"] == "ok" for r in records) and result.best is not None


def test_worker_death_beyond_the_retries_is_recorded_as_failed(ray_session, tmp_path):
    out = RayExecutor(workers=2, retries=0).map(work, [("ok", 1), ("die_always", 2)])
    assert out[0].status == "ok"
    assert out[1].status == "failed" and out[1].error and out[1].value is None


def curve(item, report):
    """Test function: reports a constant validation accuracy for 4 epochs."""
    import time

    for epoch in range(1, 5):
        time.sleep(0.2)
        if report:
            report({"epoch": epoch, "val_accuracy": item, "accuracy": item})
    return {"val_accuracy": item, "accuracy": item}


def test_asha_stops_weak_candidates_early(ray_session):
    ex = RayExecutor(workers=2, retries=0, early_stopping=(1, 4))
    out = ex.map(curve, [0.9, 0.8, 0.2, 0.1, 0.05, 0.01])
    assert out[0].status == "ok" and out[0].value["accuracy"] == 0.9
    stopped = [o for o in out if o.status == "stopped"]
    assert stopped and out[-1].status == "stopped"
    # stopped at a rung below the last epoch, with the metrics reported up to then; the best
    # candidate is never stopped (which of the others are depends on arrival order at the rungs)
    assert all(o.value["epoch"] < 4 and o.value["accuracy"] < 0.9 for o in stopped)
