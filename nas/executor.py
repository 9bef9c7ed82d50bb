"""Executors: run one function over many candidates, locally or as Ray Tune trials.

Both executors have the same ``map(fn, items) -> list[Outcome]`` (results in item order):

* :class:`LocalExecutor` calls ``fn`` in this process, one item after the other.
* :class:`RayExecutor` runs each item as a Ray Tune trial (``tune.Tuner`` over a grid of item
  indices, ``tune.with_resources`` CPUs per trial, ``max_concurrent_trials`` workers). A trial
  whose *worker dies* (process killed, node lost) is restarted by ``FailureConfig(max_failures=
  retries)``; a trial whose function *raises* is not retried (a bad candidate fails the same way
  again) and comes back with status 'error'. Optional ASHA early stopping needs ``fn`` to report
  per-epoch metrics through the ``report`` callable it receives.

``fn(item, report)``: ``report`` is None locally and a callable(dict) under Ray (per-epoch
metrics; ASHA reads 'val_accuracy'). ``fn`` must return a JSON-able dict.

Concurrent trials must not fight over cores. Each trial (see :func:`_isolate_trial`):

* claims a core of its own (an exclusive ``flock`` on ``cpu-N.lock`` in a folder shared by the
  executor's trials on a node; Ray hands out CPU *counts*, not core ids) and pins every thread
  of its process to it (``os.sched_setaffinity`` per thread: Linux pins only the calling thread,
  and JAX's pools already exist when an actor is reused); a 1-worker run is thus one core too;
* runs JAX with one XLA thread and single-threaded compilation (``XLA_FLAGS``) and numpy/BLAS
  pools of one thread (``OMP/OPENBLAS/MKL_NUM_THREADS``, set when the worker starts);
* uses the persistent JAX compile cache in a folder shared by all trials (an identical
  program compiles once).

Ray is started with the dashboard off, usage stats off, auth disabled and every server bound to
loopback (see :func:`start_ray`), with a short temp dir under /tmp; or joins an existing cluster
given its address.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

from nas.errors import NasInputError
from nas.ray_interrupt import interrupt_survives_ray
from nas.single_thread import ONE_THREAD_VARS, XLA_ONE_THREAD_FLAGS, trial_threads


@dataclasses.dataclass
class Outcome:
    """What became of one item.

    Attributes:
        status: 'ok', 'error' (fn raised), 'failed' (its worker died and retries ran out) or
            'stopped' (early-stopped by ASHA; value holds the last reported metrics).
        value: fn's return value (or the last reported metrics when stopped), else None.
        error: one-line error text when not ok.
        seconds: wall time of the successful (or last) attempt.
        attempts: how many times the item was started.
        cpus: the cores the trial was pinned to (None: not pinned, e.g. run locally).
    """

    status: str
    value: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    attempts: int = 1
    cpus: tuple[int, ...] | None = None


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:500]


class LocalExecutor:
    """Runs items one after the other in this process."""

    workers = 1

    def map(self, fn: Callable[..., dict], items: Sequence[Any],
            on_result: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Calls ``fn(item, None)`` for each item; an exception becomes an 'error' Outcome.

        Args:
            fn: the function (returns a JSON-able dict).
            items: the inputs.
            on_result: called with (index, Outcome) as soon as each item is done.

        Returns:
            One Outcome per item, in order.
        """
        out = []
        for index, item in enumerate(items):
            start = time.perf_counter()
            try:
                outcome = Outcome("ok", fn(item, None), seconds=time.perf_counter() - start)
            except Exception as e:  # noqa: BLE001 - a failing candidate must not stop the search
                outcome = Outcome("error", None, _error_text(e), time.perf_counter() - start)
            out.append(outcome)
            if on_result is not None:
                on_result(index, outcome)
        return out

    def close(self) -> None:
        """Nothing to release."""


_HOME_CPUS: tuple[int, ...] | None = None  # this process's cores before any trial pinned it


def _claim_cores(lock_dir: str, count: int) -> tuple[tuple[int, ...], list[int]]:
    """Claims ``count`` cores no other trial of this executor holds (non-blocking file locks).

    Args:
        lock_dir: folder of the ``cpu-N.lock`` files (created if missing).
        count: cores wanted.

    Returns:
        (claimed cores, open lock file descriptors); no cores (and no descriptors) when fewer
        than ``count`` are free, e.g. more concurrent trials than cores.
    """
    global _HOME_CPUS
    if _HOME_CPUS is None:
        _HOME_CPUS = tuple(sorted(os.sched_getaffinity(0)))
    os.makedirs(lock_dir, exist_ok=True)
    current = set(os.sched_getaffinity(0))
    order = sorted(_HOME_CPUS, key=lambda c: (c not in current, c))  # keep a reused actor's core
    cpus, fds = [], []
    for cpu in order:
        if len(cpus) == count:
            break
        fd = os.open(os.path.join(lock_dir, f"cpu-{cpu}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        cpus.append(cpu)
        fds.append(fd)
    if len(cpus) < count:
        for fd in fds:
            os.close(fd)
        return (), []
    return tuple(cpus), fds


def _pin_process(cpus: Sequence[int]) -> None:
    """Pins every thread of this process (not only the calling one) to ``cpus``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


@contextlib.contextmanager
def _isolate_trial(lock_dir: str | None, cores: int, compile_cache: str | None,
                   gpu: float = 0.0) -> Iterator[tuple]:
    """Runs the body on cores of its own, with thread pools sized to its CPUs and the shared
    compile cache; a GPU trial runs JAX on the GPU Ray gave it.

    Args:
        lock_dir: folder of the per-core locks (None: do not pin).
        cores: cores to claim, and the threads its runtimes may use.
        compile_cache: JAX persistent compile cache folder (None: leave JAX's setting).
        gpu: the share of a GPU the trial holds (Ray sets CUDA_VISIBLE_DEVICES; 0: none). JAX
            then runs on it and, where the share is a fraction, preallocates only that share of
            the GPU's memory (JAX's default, 75%, would starve the other trials on the GPU).

    Yields:
        The pinned cores (empty when none were free or pinning is off).
    """
    flags, pools = trial_threads(cores)
    os.environ["XLA_FLAGS"] = flags  # before this worker first uses JAX
    os.environ.update(pools)
    if gpu:  # the driver's 'cpu' default is for CPU trials; JAX reads it when imported
        if gpu < 1:
            os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.75 * gpu:.3f}")
        os.environ.pop("JAX_PLATFORMS", None)
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_platforms", None)
    if compile_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    cpus, fds = _claim_cores(lock_dir, cores) if lock_dir else ((), [])
    if cpus:
        _pin_process(cpus)
    elif _HOME_CPUS:
        _pin_process(_HOME_CPUS)  # no free core: undo an earlier trial's pin
    try:
        yield cpus
    finally:
        for fd in fds:
            os.close(fd)  # releases the lock; the next trial on this core may claim it


def _trial(config: dict, fn: Callable[..., dict], items: Sequence[Any], lock_dir: str | None = None,
           cores: int = 1, compile_cache: str | None = None, gpu: float = 0.0) -> None:
    """The Ray Tune trainable: runs fn on one item (isolated on its own cores) and reports it."""
    from ray import tune

    with _isolate_trial(lock_dir, cores, compile_cache, gpu) as cpus:
        item = items[config["index"]]
        start = time.perf_counter()
        last = {"epoch": 0, "val_accuracy": 0.0}  # every report carries the scheduler's fields

        def report(metrics: dict) -> None:
            last.update(_scalars(metrics))
            tune.report({"status": "running", "value_json": json.dumps(metrics), **last})

        try:
            value = fn(item, report)
        except Exception as e:  # noqa: BLE001 - reported as the candidate's error
            traceback.print_exc()
            tune.report({"status": "error", "error": _error_text(e), **last, "cpus": _cpus_text(cpus),
                         "seconds": time.perf_counter() - start, "done": True})
            return
        tune.report({"status": "ok", "value_json": json.dumps(value), **{**last, **_scalars(value)},
                     "cpus": _cpus_text(cpus), "seconds": time.perf_counter() - start, "done": True})


def _cpus_text(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k in ("val_accuracy", "epoch")}


@contextlib.contextmanager
def _local_node_ip_is_loopback() -> Iterator[None]:
    """Makes ``ray.init`` keep 127.0.0.1 as the node IP of a Ray it starts, or as the address of
    a cluster it joins (Ray 2.60).

    ``ray.init(_node_ip_address="127.0.0.1")`` alone does not work: ``ray.init`` passes it through
    ``services.resolve_ip_for_localhost``, which swaps a loopback address for the machine's
    outward IP; the GCS, raylet, core workers and agents then bind to *all* interfaces ('::'),
    because Ray binds loopback only when the node IP is loopback; a join swaps a loopback
    cluster address the same way and then cannot reach the cluster. That swap is skipped when
    ``ray_constants.ENABLE_RAY_CLUSTER`` is off (env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read at
    import), so it is switched off for the duration of ``ray.init`` only.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Starts (or joins) Ray unless this process is already connected.

    A locally started Ray has the dashboard off, every server (GCS, raylet, object manager,
    core workers, agents) listening on 127.0.0.1 only, and workers at the driver's niceness.

    Args:
        address: 'auto' or HOST:PORT of an existing cluster; None starts a local one.
        num_cpus: CPUs of a locally started Ray (default: all).

    Returns:
        True when this call connected (so the caller should shut Ray down when done).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"XLA_FLAGS": XLA_ONE_THREAD_FLAGS, "RAY_AUTH_MODE": "disabled", **ONE_THREAD_VARS,
                        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}}
    common = dict(runtime_env=env, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address:
        with _local_node_ip_is_loopback():  # joining 127.0.0.1:PORT keeps loopback
            ray.init(address=address, **common)
    else:
        # worker_niceness 0: Ray renices its workers by +15 by default, so trials would yield
        # to every other process on a shared machine (and run at nice 19 under a niced driver)
        with _local_node_ip_is_loopback():
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
                     _system_config={"worker_niceness": 0}, **common)
    return True


def default_compile_cache() -> str:
    """Returns the JAX compile cache folder trials share: this process's JAX setting if any,
    else $NAS_JAX_CACHE, else ~/.cache/nas/jax."""
    import sys

    if "jax" in sys.modules:
        configured = sys.modules["jax"].config.jax_compilation_cache_dir
        if configured:
            return os.path.abspath(configured)
    if os.environ.get("NAS_JAX_CACHE"):
        return os.path.abspath(os.environ["NAS_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nas", "jax")


class RayExecutor:
    """Runs items as Ray Tune trials.

    Args:
        address: cluster address ('auto' or HOST:PORT); None starts Ray locally.
        workers: trials running at the same time.
        cpus_per_trial: CPUs reserved per trial.
        retries: restarts of a trial whose worker died.
        early_stopping: (grace_epochs, max_epochs) for ASHA on 'val_accuracy', or None.
        num_cpus: CPUs of a locally started Ray (default: workers * cpus_per_trial).
        reuse_actors: run later trials in the same worker processes (saves the JAX import and
            data loading per candidate; a worker that dies is replaced).
        pin_cores: pin each CPU-only trial to ceil(cpus_per_trial) cores of its own (its
            runtimes then use that many threads).
        compile_cache: JAX compile cache folder shared by the trials ('auto':
            :func:`default_compile_cache`; None: leave the workers' JAX setting).
        gpus_per_trial: GPUs per trial (fractions share a GPU); JAX then runs on it.
        storage: Tune's storage (a folder every node reaches, or a URI such as s3://...);
            None: a temporary folder of the driver, removed at :meth:`close` (one node only).

    Raises:
        NasInputError: GPUs asked for where the cluster has none (one line).
    """

    def __init__(self, address: str | None = None, workers: int = 1, cpus_per_trial: float = 1.0,
                 retries: int = 2, early_stopping: tuple[int, int] | None = None,
                 num_cpus: int | None = None, reuse_actors: bool = True, pin_cores: bool = True,
                 compile_cache: str | None = "auto", gpus_per_trial: float = 0.0,
                 storage: str | None = None):
        self.reuse_actors = bool(reuse_actors)
        self.pin_cores = bool(pin_cores)
        self.compile_cache = default_compile_cache() if compile_cache == "auto" else compile_cache
        self.workers = int(workers)
        self.cpus_per_trial = float(cpus_per_trial)
        self.retries = int(retries)
        self.early_stopping = early_stopping
        self.gpus_per_trial = float(gpus_per_trial)
        cpus = num_cpus or max(1, int(round(self.workers * self.cpus_per_trial)))
        self._owns_ray = start_ray(address, None if address else cpus)
        if self.gpus_per_trial > 0:
            import ray

            have = float(ray.cluster_resources().get("GPU", 0.0))
            if have < self.gpus_per_trial:
                self.close()
                raise NasInputError(f"{self.gpus_per_trial:g} is not allowed: the Ray cluster has "
                                    f"{have:g} GPUs; set 0, or join a cluster with GPUs "
                                    "(--ray-address)", field="executor.gpus_per_trial")
        self._owns_storage = storage is None
        self._storage = storage or tempfile.mkdtemp(prefix="nas-tune-")
        # per-core lock files: node-local (made on each node by the first trial that claims)
        self._locks = tempfile.mkdtemp(prefix="nas-cores-")

    def map(self, fn: Callable[..., dict], items: Sequence[Any],
            on_result: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Runs ``fn(item, report)`` for every item as a trial.

        Args:
            fn: a picklable function returning a JSON-able dict.
            items: the inputs (picklable).
            on_result: called with (index, Outcome) for each item, in item order, once the
                batch's trials have all finished (a driver crash loses at most this batch).

        Returns:
            One Outcome per item, in order; worker deaths beyond the retries are 'failed'.
        """
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter obeys verbose=0
        # Ctrl-C must stop the search, not only this batch: Tune's own SIGINT handler ends the
        # fit "gracefully", so every trial in flight came back without a result and was
        # recorded as failed while the search went on. Without it the KeyboardInterrupt reaches
        # the CLI (exit 130); nothing of the batch is recorded and a resume retrains it.
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        from ray import tune

        if not items:
            return []
        recoveries = _recovery_counter()
        scheduler = None
        if self.early_stopping:
            from ray.tune.schedulers import ASHAScheduler

            grace, max_t = self.early_stopping
            scheduler = ASHAScheduler(metric="val_accuracy", mode="max", time_attr="epoch",
                                      grace_period=grace, max_t=max_t + 1, reduction_factor=2)
            # max_t + 1: a candidate that trains all its epochs ends with its own final report
        gpu = self.gpus_per_trial > 0
        lock_dir = None if gpu or not self.pin_cores else self._locks
        cores = max(1, math.ceil(self.cpus_per_trial))
        resources = {"cpu": self.cpus_per_trial, **({"gpu": self.gpus_per_trial} if gpu else {})}
        trainable = tune.with_resources(
            tune.with_parameters(_trial, fn=fn, items=list(items), lock_dir=lock_dir, cores=cores,
                                 compile_cache=self.compile_cache, gpu=self.gpus_per_trial),
            resources)
        name = f"map-{time.strftime('%H%M%S')}-{os.getpid()}"
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(items))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.workers, scheduler=scheduler,
                                        reuse_actors=self.reuse_actors),
            run_config=tune.RunConfig(
                name=name, storage_path=self._storage, verbose=0, callbacks=[recoveries],
                failure_config=tune.FailureConfig(max_failures=self.retries)))
        with interrupt_survives_ray():
            results = tuner.fit()
        outcomes: list[Outcome | None] = [None] * len(items)
        for result in results:
            index = int(result.config["index"])
            outcomes[index] = _outcome(result, 1 + recoveries.count.get(index, 0))
        shutil.rmtree(os.path.join(self._storage, name), ignore_errors=True)
        outcomes = [o or Outcome("failed", error="trial produced no result") for o in outcomes]
        if on_result is not None:
            for index, outcome in enumerate(outcomes):
                on_result(index, outcome)
        return outcomes

    def close(self) -> None:
        """Shuts Ray down if this executor started it; removes Tune's scratch folder (never a
        storage the config named)."""
        if getattr(self, "_owns_storage", False):
            shutil.rmtree(self._storage, ignore_errors=True)
        if getattr(self, "_locks", None):
            shutil.rmtree(self._locks, ignore_errors=True)
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False


def _outcome(result: Any, attempts: int) -> Outcome:
    metrics = result.metrics or {}
    status = metrics.get("status")
    seconds = float(metrics.get("seconds") or metrics.get("time_total_s") or 0.0)
    text = metrics.get("cpus")
    cpus = tuple(int(c) for c in text.split(",") if c) if isinstance(text, str) else None
    if result.error is not None and status not in ("ok", "error"):
        return Outcome("failed", None, _error_text(result.error), seconds, attempts)
    if status == "ok":
        return Outcome("ok", json.loads(metrics["value_json"]), None, seconds, attempts, cpus)
    if status == "error":
        return Outcome("error", None, metrics.get("error"), seconds, attempts, cpus)
    if status == "running" and "value_json" in metrics:  # stopped by the scheduler
        return Outcome("stopped", json.loads(metrics["value_json"]), "stopped early by ASHA",
                       seconds, attempts)
    return Outcome("failed", None, "trial ended without a result", seconds, attempts)


def _recovery_counter():
    """Returns a Tune callback counting, per item index, restarts after a worker died."""
    from ray.tune import Callback

    class RecoveryCounter(Callback):
        def __init__(self):
            self.count: dict[int, int] = {}

        def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: D401 - Tune hook
            index = int(trial.config["index"])
            self.count[index] = self.count.get(index, 0) + 1

    return RecoveryCounter()


def make_executor(kind: str = "local", address: str | None = None, workers: int = 1,
                  cpus_per_trial: float = 1.0, retries: int = 2,
                  early_stopping: tuple[int, int] | None = None, gpus_per_trial: float = 0.0,
                  storage: str | None = None):
    """Returns a LocalExecutor or RayExecutor from config values.

    Args:
        kind: 'local' or 'ray'.
        address, workers, cpus_per_trial, retries, early_stopping, gpus_per_trial, storage:
            see :class:`RayExecutor`.
    """
    if kind == "local":
        return LocalExecutor()
    return RayExecutor(address, workers, cpus_per_trial, retries, early_stopping,
                       gpus_per_trial=gpus_per_trial, storage=storage)
