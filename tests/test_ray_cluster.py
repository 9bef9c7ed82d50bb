"""Ray trials on a two-node cluster on loopback (``ray.cluster_utils.Cluster``: one CPU and a
resource of its own per node): a search whose candidates run on both nodes, small data sets
sent through the object store instead of read from files, and the one-line error of a node
without the data's path. One cluster is shared by the module's tests.
"""

import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile

import numpy as np
import pytest
from ray import cloudpickle

import nas.search
import nas.training.evaluate
import nas.training.trainer
from nas.data import load_data
from nas.errors import NasInputError
from nas.executor import LocalExecutor, RayExecutor, start_ray
from nas.history import History
from nas.ray_data import (SharedData, absolute_spec, check_on_node, share_max_bytes,
                          share_with_trials, trial_dataset)
from nas.runs.config import parse_config
from nas.runs.pipeline import RetrainJob
from nas.search import run_search
from nas.space import Space
from nas.training.evaluate import CandidateEvaluator

sys.path.insert(0, os.path.dirname(__file__))
from ray_helpers import children_pids, exposed_sockets  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

SPACE = Space.by_name("tiny")
SPACE_JSON = json.dumps(SPACE.to_dict(), sort_keys=True)
NODES = ("node_head", "node_extra")  # each node's own resource


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node (1 CPU each) bound to 127.0.0.1; this process is their driver."""
    import ray
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
    with pytest.MonkeyPatch.context() as mp:
        # Cluster records its address in /tmp/ray/ray_current_cluster (and deletes that file at
        # shutdown), where other Rays of this machine keep theirs: left alone
        mp.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        mp.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
        head = {**loopback, "resources": {NODES[0]: 1}, "temp_dir": temp_dir,
                "include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        cluster.add_node(**loopback, resources={NODES[1]: 1})
        start_ray(cluster.address)
        yield cluster
        ray.shutdown()
        cluster.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def write_npz(path, n=60):
    """Writes a small npz data set for the tiny space (16x16x1 images, 10 classes)."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 255, (n, 16, 16, 1), dtype=np.uint8),
             y=np.arange(n) % 10)
    return path


def checksum(data) -> float:
    """The sum of a Dataset's images (equal sums: the same data)."""
    splits = (data.x_train, data.x_val, data.x_test)
    return float(sum(np.asarray(a, np.float64).sum() for a in splits))


@dataclasses.dataclass(frozen=True)
class DataProbe:
    """A stand-in evaluator: gets its data set as CandidateEvaluator does, appends a line saying
    where it ran and what data it saw to ``log_dir/<arch_id>``, and scores the Arch."""

    space_json: str
    data: str
    seed: int
    log_dir: str
    shared_data: SharedData | None = None

    def __call__(self, arch, report=None):
        import time

        import ray

        space = Space.from_dict(json.loads(self.space_json))
        data = trial_dataset(self.shared_data, self.data,
                             lambda: load_data(self.data, space, seed=self.seed))
        time.sleep(0.3)  # both nodes get a trial
        line = {"node": ray.get_runtime_context().get_node_id(), "checksum": checksum(data),
                "writeable": bool(data.x_train.flags.writeable)}
        if self.shared_data is not None:  # which object it read, and where that object has copies
            from ray.experimental import get_object_locations

            ref, node = self.shared_data.ref, line["node"]
            for _ in range(50):  # the owner learns of the node's copy asynchronously
                copies = get_object_locations([ref])[ref]["node_ids"]
                if node in copies:
                    break
                time.sleep(0.1)
            line.update(ref=ref.hex(), copies_on=copies)
        with open(os.path.join(self.log_dir, space.arch_id(arch)), "a") as f:
            f.write(json.dumps(line) + "\n")
        score = sum(v in (7, 6, True) for v in arch.values()) / len(arch)
        return {"accuracy": score, "val_accuracy": score, "macs": 1e6}


def node_resource(ray) -> dict:
    """Maps each live node's id to the resource naming it (NODES)."""
    return {n["NodeID"]: next(r for r in NODES if r in n["Resources"]) for n in ray.nodes()
            if n["Alive"]}


def hide_after_sharing(monkeypatch, path):
    """Makes the search delete ``path`` right after the driver shared the data: the data then
    exists on no node the trials run on."""
    real = nas.search.share_with_trials

    def share_then_hide(fn, executor):
        shared = real(fn, executor)
        os.remove(path)
        return shared

    monkeypatch.setattr(nas.search, "share_with_trials", share_then_hide)


SEARCH = {"space": "tiny", "seed": 1, "strategy": {"name": "random"},
          "objective": {"metric": "macs", "target": 2e6}}


def test_search_on_two_nodes_reads_the_data_from_the_object_store(two_nodes, tmp_path,
                                                                   monkeypatch):
    import ray

    npz = write_npz(tmp_path / "data.npz")
    monkeypatch.chdir(tmp_path)  # a relative data path, as configs often have
    expected = checksum(load_data("npz:data.npz", SPACE, seed=1))
    hide_after_sharing(monkeypatch, npz)
    (tmp_path / "log").mkdir()
    probe = DataProbe(SPACE_JSON, "npz:data.npz", 1, str(tmp_path / "log"))
    ex = RayExecutor(workers=2, retries=0)
    result = run_search(parse_config({**SEARCH, "budget": 6, "batch": 3}), tmp_path / "run",
                        executor=ex, evaluate=probe)  # two rounds of 3 trials
    ex.close()
    records = History(tmp_path / "run" / "history.jsonl").load()
    ids = [r["arch_id"] for r in records]
    assert len(ids) == 6 == len(set(ids)) and result.new == 6
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    assert not npz.exists()  # the trials never needed the file
    lines = {i: (tmp_path / "log" / i).read_text().splitlines() for i in ids}
    assert all(len(v) == 1 for v in lines.values())  # every candidate evaluated exactly once
    seen = [json.loads(v[0]) for v in lines.values()]
    names = node_resource(ray)
    assert {names[s["node"]] for s in seen} == set(NODES)  # candidates ran on both nodes
    # the driver's arrays, read-only: mapped from the node's copy in the object store
    assert all(s["checksum"] == expected and not s["writeable"] for s in seen)
    # put once per search, not once per trial or round: every trial of both rounds read the one
    # object, which has a copy on each node it ran on (Ray pulls it to a node once)
    assert len({s["ref"] for s in seen}) == 1
    assert all(s["node"] in s["copies_on"] for s in seen)
    assert not exposed_sockets(children_pids())  # both nodes listen on loopback only


def test_a_node_without_the_data_path_fails_each_candidate_in_one_line(two_nodes, tmp_path,
                                                                      monkeypatch):
    npz = write_npz(tmp_path / "data.npz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAS_RAY_DATA_MAX_GB", "0")  # too large to share: the workers read files
    hide_after_sharing(monkeypatch, npz)  # the path exists on the driver only
    config = parse_config({**SEARCH, "budget": 2, "batch": 2, "data": "npz:data.npz"})
    ex = RayExecutor(workers=2, retries=0)
    run_search(config, tmp_path / "run", executor=ex)  # the real CandidateEvaluator
    ex.close()
    records = History(tmp_path / "run" / "history.jsonl").load()
    assert len(records) == 2
    for r in records:
        assert r["status"] == "error"
        assert r["error"] == (f"NasInputError: data: {npz} is not on node {socket.gethostname()} "
                              "(127.0.0.1); put the data on a shared path every node reaches, or "
                              "copy it to the same path on every node (a data set over "
                              "NAS_RAY_DATA_MAX_GB, default 1 GiB, is read from its files on "
                              "each node)")


def test_evaluators_train_on_the_shared_arrays(two_nodes, tmp_path, monkeypatch):
    """CandidateEvaluator and RetrainJob get the object store's data set, not the file's; the
    local executor and data sets over the limit leave the evaluator loading from its path."""
    npz = write_npz(tmp_path / "data.npz")
    monkeypatch.chdir(tmp_path)
    expected = checksum(load_data("npz:data.npz", SPACE, seed=0))
    evaluator = CandidateEvaluator.for_space(SPACE, data="npz:data.npz", train={"epochs": 1})
    job = RetrainJob(SPACE_JSON, "npz:data.npz", 0, {"epochs": 1}, str(tmp_path / "retrain"))
    assert share_with_trials(evaluator, LocalExecutor()) is evaluator
    ex = RayExecutor(workers=1)
    big = share_with_trials(evaluator, ex, max_bytes=1)
    assert big.shared_data is None and big.data == f"npz:{npz}"  # absolute for the workers
    shared = [share_with_trials(evaluator, ex), share_with_trials(job, ex)]
    ex.close()
    os.remove(npz)
    seen = []

    def fake_train(space, arch, data, config, **kwargs):
        seen.append(data)
        return {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_seconds": 0.0}

    monkeypatch.setattr(nas.training.evaluate, "train_arch", fake_train)
    monkeypatch.setattr(nas.training.trainer, "train_arch", fake_train)
    arch = SPACE.sample(np.random.default_rng(0))
    for fn in shared:
        assert fn.shared_data.nbytes > 0
        fn(arch)
    assert len(seen) == 2
    assert all(checksum(d) == expected and not d.x_train.flags.writeable for d in seen)


def test_check_on_node_names_the_node_path_and_fix(tmp_path):
    check_on_node(f"npz:{write_npz(tmp_path / 'here.npz')}")  # present: no error
    check_on_node("digits")                                     # no path to check
    with pytest.raises(NasInputError) as e:
        check_on_node(f"folder:{tmp_path / 'gone'}")
    line = str(e.value)
    assert line.startswith(f"data: {tmp_path / 'gone'} is not on node {socket.gethostname()}")
    assert "shared path" in line and "\n" not in line


def test_share_limit_and_absolute_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("cifar10:c10") == f"cifar10:{tmp_path / 'c10'}"
    assert absolute_spec("synthetic") == "synthetic"
    assert share_max_bytes() == 2 ** 30
    monkeypatch.setenv("NAS_RAY_DATA_MAX_GB", "0.5")
    assert share_max_bytes() == 2 ** 29
    monkeypatch.setenv("NAS_RAY_DATA_MAX_GB", "lots")
    with pytest.raises(NasInputError, match="NAS_RAY_DATA_MAX_GB: 'lots' is not allowed"):
        share_max_bytes()
