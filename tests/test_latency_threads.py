"""One-thread measurement is real: XLA parses every flag we give it, and a one-thread process
runs its computation on one compute thread (what the latency worker and the executor rely on)."""

import json
import os
import subprocess
import sys

import pytest

from nas.single_thread import ONE_THREAD_VARS, XLA_ONE_THREAD_FLAGS, single_thread_env, xla_flags_problem

RUN_JAX = "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"

# Runs a jitted matmul + conv loop and prints, per thread of the process, the CPU ticks it used
# during the loop (busiest first). The work is sized so that XLA splits it when it may.
BUSY_THREADS = r"""
import os, time
def ticks():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = int(f[11]) + int(f[12])
        except OSError:
            pass
    return out
import jax, jax.numpy as jnp
a = jnp.ones((512, 512), jnp.float32)
img = jnp.ones((1, 64, 64, 64), jnp.float32)
w = jnp.ones((3, 3, 64, 64), jnp.float32)
f = jax.jit(lambda a, i, w: (a @ a @ a).sum() + jax.lax.conv_general_dilated(
    i, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum())
f(a, img, w).block_until_ready()
before = ticks()
t0 = time.time()
while time.time() - t0 < 0.8:
    f(a, img, w).block_until_ready()
after = ticks()
import json
print(json.dumps(sorted((after[t] - before.get(t, 0) for t in after), reverse=True)[:4]))
"""


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    env = dict(env, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def _busy_threads(env: dict) -> int:
    """Returns how many threads used at least 15% of the busiest one's CPU time."""
    proc = _run(BUSY_THREADS, env)
    assert proc.returncode == 0, proc.stderr[-500:]
    busy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert busy[0] > 0
    return sum(1 for t in busy if t >= 0.15 * busy[0])


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PJRT_NPROC", "NPROC")}
    return env


def test_flag_strings_have_no_token_xla_would_ignore():
    worker_flags = single_thread_env(_base_env())["XLA_FLAGS"]
    for flags in (XLA_ONE_THREAD_FLAGS, worker_flags):
        assert xla_flags_problem(flags) is None, flags
    old = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 --xla_x=1"
    assert "'intra_op_parallelism_threads=1'" in xla_flags_problem(old)
    assert "1 token(s) after it" in xla_flags_problem(old)


def test_xla_reads_every_flag_up_to_the_end():
    """An unknown '--' flag makes XLA abort; appended after ours, it proves XLA parsed them all
    (it stops silently at a token without '--', which is how the old flag was lost)."""
    flags = XLA_ONE_THREAD_FLAGS
    ok = _run(RUN_JAX, dict(_base_env(), XLA_FLAGS=flags))
    assert ok.returncode == 0 and ok.stdout.strip() == "3.0", ok.stderr[-300:]
    sentinel = _run(RUN_JAX, dict(_base_env(), XLA_FLAGS=f"{flags} --xla_nas_sentinel_flag=1"))
    assert sentinel.returncode != 0 and "xla_nas_sentinel_flag" in sentinel.stderr
    # the old setting hid whatever followed it
    old = _run(RUN_JAX, dict(_base_env(), XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                                                    "intra_op_parallelism_threads=1 "
                                                    "--xla_nas_sentinel_flag=1"))
    assert old.returncode == 0


def test_one_thread_env_runs_xla_on_one_compute_thread():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to tell one compute thread from several")
    # the latency worker's environment (not pinned here: the pool size alone must do it)
    assert _busy_threads(single_thread_env(_base_env())) == 1
    # the executor's trial environment
    assert _busy_threads(dict(_base_env(), XLA_FLAGS=XLA_ONE_THREAD_FLAGS, **ONE_THREAD_VARS)) == 1
    # control: the flags alone leave XLA's pool at one thread per core
    assert _busy_threads(dict(_base_env(), XLA_FLAGS=XLA_ONE_THREAD_FLAGS)) >= 2
