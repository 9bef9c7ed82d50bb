"""The measurement worker: a subprocess pinned to one core whose runtimes use one thread.

XLA reads its threading flags once, when jax creates its CPU client, and a process may already
have jax initialized (tests, other commands); so the parent (``nas latency build|validate``)
starts ``python -m nas.latency.worker`` with the single-thread environment
(:func:`nas.single_thread.single_thread_env`), sends it one JSON job on stdin and reads one JSON
line per measured item on stdout.

Job: ``{"backend", "batch", "threads", "core", "realtime", "timing": TimingConfig, "chunk",
"items": [{"id", "kind": "block"|"network", "specs": [BlockSpec dicts]} or {"id", "kind":
"model", "path": model file, "shape": input shape}]}`` (``model``: onnxruntime only). Items are prepared (compiled) a chunk
at a time and timed round-robin ``timing.rounds`` times, so each item's reps are spread over time
and a burst of load from other processes spoils one round, not the figure. Replies (lines starting with ``@@nas ``):
``{"type": "info", ...}`` first, then ``{"type": "result", "id", "median_ms", "p10_ms", "p90_ms",
"n", "prepare_s"}`` or ``{"type": "error", "id", "error"}`` per item, then ``{"type": "done"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Iterator, Mapping, Sequence

from nas.latency.measure import (TimingConfig, best_round, cpu_model, pin_to_core, set_realtime,
                                 time_call)
from nas.single_thread import ONE_THREAD_VARS, single_thread_env
from nas.spec import BlockSpec

MARK = "@@nas "


def spec_from_dict(d: Mapping[str, Any]) -> BlockSpec:
    """Rebuilds a BlockSpec from :meth:`BlockSpec.to_dict` output."""
    d = dict(d)
    d["in_hw"] = tuple(d["in_hw"])
    return BlockSpec(**d)


def thread_env() -> dict[str, str]:
    """Returns the threading settings of this process's environment (recorded in a table).

    Returns:
        {name: value} of ``XLA_FLAGS`` and the pool-size variables that are set.
    """
    names = ("XLA_FLAGS", *ONE_THREAD_VARS)
    return {n: os.environ[n] for n in names if n in os.environ}


def _say(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(job: Mapping[str, Any]) -> None:
    """Runs a job in this process (the worker side), replying on stdout."""
    threads = int(job.get("threads", 1))
    cores = pin_to_core(job.get("core")) if threads == 1 else sorted(os.sched_getaffinity(0))
    scheduler = set_realtime() if job.get("realtime") else "normal"
    from nas.latency.backends import load_backend

    backend = load_backend(job["backend"])
    _say({"type": "info", "backend": backend.NAME, "rule": backend.RULE, **backend.info(),
          "cpu_model": cpu_model(), "cores": cores, "threads": threads,
          "scheduler": scheduler, "thread_env": thread_env()})
    timing = TimingConfig(**job.get("timing", {}))
    batch = int(job.get("batch", 1))
    items = list(job["items"])
    chunk = max(1, int(job.get("chunk", 16)))
    for start in range(0, len(items), chunk):
        _serve_chunk(backend, items[start:start + chunk], batch, threads, timing)
    _say({"type": "done"})


def _serve_chunk(backend, items, batch: int, threads: int, timing: TimingConfig) -> None:
    """Prepares a chunk of items, times them round-robin `timing.rounds` times, replies."""
    prepared = []
    for item in items:
        try:
            if item["kind"] == "model":  # a model file (e.g. an exported network), as is
                call, prep = backend.model_runner(item["path"], item["shape"], threads)
            elif item["kind"] == "block":
                call, prep = backend.block_runner(spec_from_dict(item["specs"][0]), batch, threads)
            else:
                call, prep = backend.network_runner([spec_from_dict(s) for s in item["specs"]],
                                                    batch, threads)
            prepared.append((item, call, prep, []))
        except Exception as e:  # reported to the parent, which names the item
            _say({"type": "error", "id": item["id"], "error": f"{type(e).__name__}: {e}"})
    one_round = timing.per_round()
    for _ in range(max(1, timing.rounds)):
        for item, call, prep, rounds in prepared:
            rounds.append(time_call(call, one_round))
    for _ in range(timing.extra_rounds):  # items whose every round was disturbed: try again
        dirty = [p for p in prepared if not any(timing.is_clean(t) for t in p[3])]
        if not dirty:
            break
        for item, call, prep, rounds in dirty:
            rounds.append(time_call(call, one_round))
    for item, call, prep, rounds in prepared:
        _say({"type": "result", "id": item["id"], **best_round(rounds).to_dict(),
              "prepare_s": round(prep, 3)})


def run_worker(job: Mapping[str, Any]) -> Iterator[dict]:
    """Starts a worker subprocess for `job` and yields its replies (the parent side).

    Args:
        job: the job (see the module docstring).

    Yields:
        Reply dicts: 'info' first, then one 'result' or 'error' per item.

    Raises:
        RuntimeError: the worker died (its last stderr lines are in the message).
    """
    env = single_thread_env() if int(job.get("threads", 1)) == 1 else dict(os.environ)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "nas.latency.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        try:
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            done = False
            for line in proc.stdout:
                if not line.startswith(MARK):
                    continue
                reply = json.loads(line[len(MARK):])
                if reply["type"] == "done":
                    done = True
                    break
                yield reply
            proc.wait()
            if not done:
                err.seek(0)
                tail = " | ".join(err.read().strip().splitlines()[-3:])
                raise RuntimeError(f"measurement worker exited with code {proc.returncode}: {tail}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def make_job(backend: str, items: Sequence[Mapping[str, Any]], batch: int = 1, threads: int = 1,
             core: int | None = None, timing: TimingConfig = TimingConfig(),
             chunk: int = 16, realtime: bool = False) -> dict:
    """Returns a worker job (see the module docstring)."""
    return {"backend": backend, "batch": batch, "threads": threads, "core": core,
            "realtime": realtime,
            "timing": timing.to_dict(), "chunk": chunk, "items": list(items)}


def main() -> None:
    """Worker entry point: reads a job from stdin and serves it."""
    serve(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    main()
