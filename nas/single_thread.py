"""One-thread execution settings for jax, onnxruntime and BLAS, shared by every process that times.

Candidate workers (:mod:`nas.executor`) and latency workers (:mod:`nas.latency.worker`) both
run their runtimes on one thread; these are the flags and variables that make them so, and the
check that an ``XLA_FLAGS`` value is read in full.
"""

from __future__ import annotations

import os

#: XLA flags for one-thread CPU execution; they must be in the environment before jax creates
#: its CPU client, which is why measurement runs in a worker subprocess. Every token must start
#: with ``--``: XLA (jaxlib 0.10) aborts on an unknown ``--flag``, but silently stops parsing at
#: the first token without ``--`` and ignores it and everything after it (the old
#: ``intra_op_parallelism_threads=1`` was such a token; XLA has no flag of that name, and
#: ``--intra_op_parallelism_threads=1`` aborts with "Unknown flag in XLA_FLAGS"). See
#: :func:`xla_flags_problem`.
XLA_ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false --xla_cpu_parallel_codegen_split_count=1"

#: Environment variables that size runtimes' thread pools to one thread. ``PJRT_NPROC`` is what
#: really makes XLA's CPU client single-threaded: ``--xla_cpu_multi_thread_eigen=false`` alone
#: still leaves XLA's intra-op pool one thread per schedulable core (measured: two busy compute
#: threads on a 2-core machine), and PJRT's ``DefaultThreadPoolSize()`` reads ``PJRT_NPROC``
#: (then ``NPROC``) when the client is created, else the process's CPU affinity count.
ONE_THREAD_VARS = {name: "1" for name in (
    "PJRT_NPROC", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS")}


def xla_flags_problem(flags: str) -> str | None:
    """Returns why XLA would ignore part of an ``XLA_FLAGS`` value, or None if it reads it all.

    XLA reads ``XLA_FLAGS`` as a file name unless it starts with ``--``, and stops at the first
    token that does not start with ``--`` (that token and every later one are silently ignored).

    Args:
        flags: the value of ``XLA_FLAGS``.

    Returns:
        A one-line description naming the first ignored token, or None.
    """
    tokens = flags.split()
    for i, token in enumerate(tokens):
        if not token.startswith("--"):
            return (f"XLA_FLAGS token {token!r} does not start with '--': XLA ignores it and the "
                    f"{len(tokens) - i - 1} token(s) after it")
    return None


def single_thread_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Returns an environment in which jax, onnxruntime and BLAS use one thread.

    XLA gets :data:`XLA_ONE_THREAD_FLAGS` (added to any flags already set) and every pool size in
    :data:`ONE_THREAD_VARS` (``PJRT_NPROC=1`` is the one that sizes XLA's CPU thread pool).
    onnxruntime's threads are set on its session (``backends/ort_backend.py``).

    Args:
        base: the environment to extend (default: this process's).

    Returns:
        The new environment (a copy).
    """
    env = dict(os.environ if base is None else base)
    flags = env.get("XLA_FLAGS", "")
    for flag in XLA_ONE_THREAD_FLAGS.split():
        if flag.split("=")[0] not in flags:  # first: XLA stops at a malformed token of the user's
            flags = f"{flag} {flags}".strip()
    env["XLA_FLAGS"] = flags
    env.update(ONE_THREAD_VARS)
    return env


def trial_threads(threads: int) -> tuple[str, dict[str, str]]:
    """Returns (XLA_FLAGS, pool-size variables) for a worker that may use `threads` threads.

    One thread: :data:`XLA_ONE_THREAD_FLAGS` and :data:`ONE_THREAD_VARS`. More: XLA's own
    (multi-threaded) defaults, with every pool sized to `threads` (``PJRT_NPROC`` sizes XLA's).

    Args:
        threads: CPUs the worker was given (>= 1).
    """
    if threads <= 1:
        return XLA_ONE_THREAD_FLAGS, dict(ONE_THREAD_VARS)
    return "", {name: str(int(threads)) for name in ONE_THREAD_VARS}
