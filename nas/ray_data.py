"""Data sets for Ray trials: sent once per node through Ray's object store, or read on each node.

A Ray trial may land on any node of the cluster. Its data set gets there one of two ways:

* **Small data sets** (prepared arrays of at most :func:`share_max_bytes`: 1 GiB, or
  ``NAS_RAY_DATA_MAX_GB``, and at most half the smallest node's object store) are loaded once
  by the driver and put into Ray's object store (``ray.put`` of the arrays the driver loaded);
  the trials get the object reference. Ray copies the object to a node the first time a trial
  there reads it, and every later trial on that node maps that copy (zero-copy numpy arrays):
  once per node, not once per trial, and the workers never open the data files.
* **Larger data sets** are loaded by each worker process from the spec's path (kept for its
  later candidates). The path must exist on every node, on a shared file system or copied to
  the same path everywhere; a trial on a node without it fails with one line naming the node,
  the path and the fix (:func:`check_on_node`).

The evaluators that load data (:class:`nas.training.evaluate.CandidateEvaluator`,
:class:`nas.runs.pipeline.RetrainJob`) have ``data``, ``space_json``, ``seed`` and
``shared_data`` fields: :func:`share_with_trials` fills ``shared_data`` for a Ray executor (and
makes a relative data path absolute, since trials run in folders of their own), and
:func:`trial_dataset` is what they call for the data set. With the local executor nothing
changes and Ray is not imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from typing import Any, Callable

from nas.data import Dataset, load_data, parse_spec
from nas.data.split_options import join_spec, split_spec
from nas.errors import NasInputError

MAX_GB_VARIABLE = "NAS_RAY_DATA_MAX_GB"
DEFAULT_MAX_GB = 1.0
#: fields an evaluator needs for :func:`share_with_trials` to hand it a shared data set
EVALUATOR_FIELDS = frozenset({"data", "space_json", "seed", "shared_data"})

_FETCHED: dict[str, Dataset] = {}  # this process's data sets read from the object store


def share_max_bytes() -> int:
    """Returns the largest data set sent through the object store (``NAS_RAY_DATA_MAX_GB``).

    Returns:
        Bytes of prepared arrays (default 1 GiB; 0 sends none, every worker reads the files).

    Raises:
        NasInputError: the variable is not a number >= 0.
    """
    text = os.environ.get(MAX_GB_VARIABLE, str(DEFAULT_MAX_GB))
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if not gib >= 0:
        raise NasInputError(f"{text!r} is not allowed; expected a number of GiB >= 0 (0: every "
                            "worker reads the data files)", "environment", MAX_GB_VARIABLE)
    return int(gib * 2 ** 30)


def data_path(spec: str) -> str | None:
    """Returns the file or folder a data spec reads (``npz:``, ``cifar10:``, ``folder:``).

    Args:
        spec: a data spec.

    Returns:
        The path as written in the spec, or None for specs without one (digits, synthetic).

    Raises:
        NasInputError: a malformed spec.
    """
    return parse_spec(spec)[1]


def absolute_spec(spec: str) -> str:
    """Returns the spec with its path made absolute against this process's folder.

    Args:
        spec: a data spec.

    Returns:
        ``kind:/absolute/path`` (split options kept), or the spec unchanged when it names no
        path.
    """
    path = data_path(spec)
    if path is None:
        return spec
    absolute = f"{parse_spec(spec)[0]}:{os.path.abspath(os.path.expanduser(path))}"
    return join_spec(absolute, split_spec(spec)[1])


def node_name() -> str:
    """Names this machine in messages.

    Returns:
        Its hostname, with its Ray node IP when this process is connected to Ray: ``host (IP)``.
    """
    host = socket.gethostname()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return f"{host} ({ray.util.get_node_ip_address()})"
    return host


def check_on_node(spec: str) -> None:
    """Checks that the data spec's path exists on this node.

    Args:
        spec: a data spec.

    Raises:
        NasInputError: the path is missing here; one line naming the node, the path and the fix.
    """
    path = data_path(spec)
    if path is not None and not os.path.exists(path):
        raise NasInputError(f"{path} is not on node {node_name()}; put the data on a shared path "
                            "every node reaches, or copy it to the same path on every node (a data "
                            f"set over {MAX_GB_VARIABLE}, default {DEFAULT_MAX_GB:g} GiB, is read "
                            "from its files on each node)", field="data")


def in_ray_worker() -> bool:
    """Tells a Ray worker (a trial's process) from a driver or a process without Ray.

    Returns:
        True in a Ray worker; Ray is not imported to find out.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE


@dataclasses.dataclass(frozen=True)
class SharedData:
    """A prepared data set in Ray's object store (picklable: trials receive it).

    Attributes:
        ref: the ``ray.ObjectRef`` of the Dataset's fields (numpy arrays and scalars).
        spec: the data spec it was loaded from.
        nbytes: bytes of its arrays.
    """

    ref: Any
    spec: str
    nbytes: int

    def get(self) -> Dataset:
        """Returns the Dataset (fetched to this node once; kept by this process for later trials).

        Returns:
            The Dataset; its arrays are read-only views of the node's copy.
        """
        key = self.ref.hex()
        if key not in _FETCHED:
            import ray

            _FETCHED.clear()  # one shared data set per search: drop a finished search's
            _FETCHED[key] = Dataset(**ray.get(self.ref))
        return _FETCHED[key]


def dataset_bytes(dataset: Dataset) -> int:
    """Returns the bytes of a Dataset's arrays.

    Args:
        dataset: the data set.

    Returns:
        The sum of its numpy arrays' sizes.
    """
    return sum(getattr(dataset, f.name).nbytes for f in dataclasses.fields(dataset)
               if hasattr(getattr(dataset, f.name), "nbytes"))


def smallest_object_store() -> int | None:
    """Finds the smallest object store of the connected cluster's live nodes.

    Returns:
        Its size in bytes, or None when the nodes do not say.
    """
    import ray

    sizes = [node["Resources"].get("object_store_memory") for node in ray.nodes() if node["Alive"]]
    sizes = [int(s) for s in sizes if s]
    return min(sizes) if sizes else None


def share_dataset(spec: str, space: Any, seed: int, max_bytes: int | None = None,
                  preloaded: Callable[[], Dataset] | None = None) -> SharedData | None:
    """Loads a data set on the driver and puts it into Ray's object store if it is small.

    The size is that of the prepared arrays, so the driver loads the data set to measure it; one
    over the limit is then dropped (a one-time cost on the driver, before any trial starts).

    Args:
        spec: the data spec (loaded as :func:`nas.data.load_data` does for ``space``, ``seed``).
        space: the Space the data is prepared for.
        seed: the split seed.
        max_bytes: the largest data set to share (default :func:`share_max_bytes`); it is also
            capped at half the smallest node's object store.
        preloaded: returns the data set when the driver already has it (no second load).

    Returns:
        The SharedData, or None when the data set is too large (each worker then reads the files).

    Raises:
        NasInputError: the data cannot be loaded on the driver (one line).
    """
    import ray

    limit = share_max_bytes() if max_bytes is None else max_bytes
    if limit <= 0:
        return None
    store = smallest_object_store()
    if store is not None:
        limit = min(limit, store // 2)
    dataset = preloaded() if preloaded is not None else load_data(spec, space, seed=seed)
    nbytes = dataset_bytes(dataset)
    if nbytes > limit:
        return None
    fields = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)}
    return SharedData(ray.put(fields), spec, nbytes)


def share_with_trials(fn: Any, executor: Any, max_bytes: int | None = None,
                      preloaded: Callable[[], Dataset] | None = None) -> Any:
    """Returns ``fn`` ready for the executor's trials: with a Ray executor, its data set shared
    through the object store when small, and its data path made absolute.

    Args:
        fn: the per-candidate function; only a dataclass with the fields ``data``,
            ``space_json``, ``seed`` and ``shared_data`` is changed (others load no data here).
        executor: the executor that will run it; anything but a
            :class:`nas.executor.RayExecutor` gets ``fn`` back unchanged.
        max_bytes: see :func:`share_dataset`.
        preloaded: see :func:`share_dataset`.

    Returns:
        A copy of ``fn`` with ``shared_data`` set (None when the data set is too large), or ``fn``.

    Raises:
        NasInputError: the data cannot be loaded on the driver (one line).
    """
    from nas.executor import RayExecutor

    if not isinstance(executor, RayExecutor) or not dataclasses.is_dataclass(fn):
        return fn
    if not EVALUATOR_FIELDS <= {f.name for f in dataclasses.fields(fn)}:
        return fn
    from nas.space import Space

    spec = absolute_spec(fn.data)
    space = Space.from_dict(json.loads(fn.space_json))
    shared = share_dataset(spec, space, fn.seed, max_bytes, preloaded)
    return dataclasses.replace(fn, data=spec, shared_data=shared)


def trial_dataset(shared: SharedData | None, spec: str, load: Callable[[], Dataset]) -> Dataset:
    """Returns a trial's data set: the shared one, else ``load()`` after checking that this
    node has the data's path (checked in Ray workers only).

    Args:
        shared: the data set in the object store, or None.
        spec: the data spec.
        load: loads the data set from the spec (e.g. a per-process cached :func:`load_data`).

    Returns:
        The Dataset.

    Raises:
        NasInputError: a Ray worker's node lacks the data's path (one line naming both).
    """
    if shared is not None:
        return shared.get()
    if in_ray_worker():
        check_on_node(spec)
    return load()
