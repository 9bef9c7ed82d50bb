"""Supernet cost benchmark: step time and peak memory of the one-shot supernets vs one child.

In one process, for one Space and batch, it compiles the gradient step of every row, reads
XLA's compiled memory analysis (arguments + outputs + temporaries, the step's peak working set),
warms each up, then times them *interleaved*: `--repeats` rounds, each running every row once
(in a rotated order), so that load from other processes hits all rows alike. Each row's step
time is the median over rounds of the wall time and of the process CPU time (the CPU time of a
one-thread step pinned to one core is what other processes' load changes least). It prints each
row's ratios to its base row (the child network it contains):

* ``child``: the largest child network (the Arch of maximum MACs), plain training step;
* ``fbnet_weight`` / ``fbnet_arch``: the Gumbel-softmax (all paths, masked knobs) steps
  (supernet rows time the protocol's ``weight_step`` / ``arch_step``, optimizer update included);
* ``proxyless_weight``: the single sampled path (``lax.switch``);
* ``proxyless_arch``: two sampled paths per path decision, masked knobs;
* ``single_path_child``: the largest Arch of the single-path superkernel (every ladder at its
  top), plain training step; ``single_path``: the superkernel's step (weights and thresholds,
  CE + lam * log(LAT)), compared with ``single_path_child``.

Rows are a registry (:data:`ROWS`): ``add_row(name, build, base)`` with ``build(space, batch) ->
(fn, args)`` adds one. The process pins itself to one core (``--core``) and XLA to one thread:

    python experiments/bench/supernet_cost.py --space tiny --batch 64
    python experiments/bench/supernet_cost.py --rows single_path_child,single_path --repeats 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("PJRT_NPROC", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nas.metrics import arch_metrics  # noqa: E402
from nas.model import build_model, init_variables  # noqa: E402
from nas.space import Space  # noqa: E402
from nas.strategies.oneshot_base import OneShotParams  # noqa: E402
from nas.strategies import make_strategy  # noqa: E402
from nas.supernet.network import SuperNet  # noqa: E402
from nas.supernet.synthetic import macs_latency_table  # noqa: E402
from nas.training.trainer import cross_entropy  # noqa: E402

ROWS: dict = {}
#: {row: the row its ratios are relative to}.
BASES: dict = {}


def add_row(name: str, build, base: str = "child") -> None:
    """Registers a row.

    Args:
        name: the row's name.
        build: ``build(space, batch) -> (fn, args)``; fn is jitted and timed on args.
        base: the row its ratios are relative to (the child network it contains).
    """
    ROWS[name] = build
    BASES[name] = base


def _batch(space: Space, n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"x": jnp.asarray(rng.normal(size=(n, *space.resolution, space.in_channels)), jnp.float32),
            "y": jnp.asarray(rng.integers(0, space.num_classes, n), jnp.int32),
            "mask": jnp.ones((n,), jnp.float32)}


def largest_arch(space: Space, samples: int = 200) -> dict:
    """Returns the Arch of maximum MACs among per-label maxima and random samples."""
    cands = [space.sample(i) for i in range(samples)]
    cands.append(space.decode([n - 1 for n in space.cardinalities()]))
    return max(cands, key=lambda a: arch_metrics(space, a)["macs"])


def _child(space: Space, n: int):
    model = build_model(space, largest_arch(space))
    v = init_variables(model, jax.random.PRNGKey(0), (1, *space.resolution, space.in_channels))
    batch = _batch(space, n)

    def step(params, bs, batch):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": bs}, batch["x"], train=True,
                                      mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
            return cross_entropy(logits, batch["y"], batch["mask"]), upd
        return jax.grad(loss, has_aux=True)(params)
    return step, (v["params"], v["batch_stats"], batch)


def _supernet(name: str, which: str):
    """A row timing one step of the one-shot protocol (weights or architecture, optimizer included)."""
    def build(space: Space, n: int):
        net = SuperNet(space)
        strategy = make_strategy(name, space, OneShotParams(objective="proxyless", lam=1.0),
                                 net=net, table=macs_latency_table(space))
        state = strategy.init(jax.random.PRNGKey(0))
        step = strategy.weight_step if which == "weight" else strategy.arch_step
        return step, (state, _batch(space, n), jax.random.PRNGKey(1), jnp.float32(1e-3),
                      jnp.float32(0.0))
    return build


add_row("child", _child)
add_row("fbnet_weight", _supernet("fbnet", "weight"))
add_row("fbnet_arch", _supernet("fbnet", "arch"))
add_row("proxyless_weight", _supernet("proxyless", "weight"))
add_row("proxyless_arch", _supernet("proxyless", "arch"))


def _single_path_child(space: Space, n: int):
    """The largest child the single-path superkernel contains (every ladder at its top)."""
    from nas.single_path.plan import max_arch, space_plan

    model = build_model(space, max_arch(space, space_plan(space)))
    v = init_variables(model, jax.random.PRNGKey(0), (1, *space.resolution, space.in_channels))
    return _child_step(model), (v["params"], v["batch_stats"], _batch(space, n))


def _child_step(model):
    def step(params, bs, batch):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": bs}, batch["x"], train=True,
                                      mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
            return cross_entropy(logits, batch["y"], batch["mask"]), upd
        return jax.grad(loss, has_aux=True)(params)
    return step


def _single_path(space: Space, n: int):
    """Single-Path NAS: one superkernel step, weights and thresholds, CE + lam * log(LAT)."""
    from nas.single_path.cost import SlotCosts
    from nas.single_path.network import SinglePathNetwork, init_single_path
    from nas.strategies.single_path import SinglePathParams, make_loss

    net = SinglePathNetwork(space)
    v = init_single_path(net, jax.random.PRNGKey(0))
    loss = make_loss(net, space, SlotCosts.from_table(space, macs_latency_table(space)),
                     SinglePathParams(lam=1.0), None)
    consts = {"lam": jnp.float32(1.0)}

    def step(params, bs, batch):
        return jax.grad(lambda p: loss({"model": p}, bs, batch, jax.random.PRNGKey(0), consts),
                        has_aux=True)(params)
    return step, (v["params"], v["batch_stats"], _batch(space, n))


add_row("single_path_child", _single_path_child, base="single_path_child")
add_row("single_path", _single_path, base="single_path_child")


def compile_row(fn, args, warmup: int = 3) -> dict:
    """Compiles a row's step, reads its memory analysis and warms it up.

    Args:
        fn: the step function.
        args: its arguments.
        warmup: untimed calls after compiling.

    Returns:
        {"run": a no-argument callable running one step to completion, "compile_s",
        "peak_bytes", "temp_bytes"}.
    """
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes

    def run():
        jax.block_until_ready(compiled(*args))

    for _ in range(warmup):
        run()
    return {"run": run, "compile_s": compile_s, "peak_bytes": peak,
            "temp_bytes": mem.temp_size_in_bytes}


def time_interleaved(rows: dict, repeats: int) -> dict:
    """Times every row once per round, rotating the order each round.

    Args:
        rows: {name: compile_row's dict}.
        repeats: rounds.

    Returns:
        {name: {"step_s": median wall seconds, "cpu_s": median process CPU seconds}}.
    """
    names = list(rows)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            t, c = time.perf_counter(), time.process_time()
            rows[name]["run"]()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
    return {n: {"step_s": statistics.median(wall[n]), "cpu_s": statistics.median(cpu[n])}
            for n in names}


def measure(fn, args, repeats: int) -> dict:
    """Returns compile seconds, median step seconds (wall, CPU) and peak bytes of one jitted fn."""
    row = compile_row(fn, args)
    timed = time_interleaved({"row": row}, repeats)["row"]
    return {k: v for k, v in row.items() if k != "run"} | timed


def pin_to_core(core: int) -> None:
    """Pins this process to one CPU core (-1: leave the affinity as it is)."""
    if core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def main() -> None:
    """Runs the rows and prints the table with ratios to the child."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30, help="interleaved timing rounds")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    a = ap.parse_args()
    pin_to_core(a.core)
    space = Space.by_name(a.space)
    names = a.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    for name in list(names):     # each row's base runs in the same rounds
        if BASES[name] in ROWS and BASES[name] not in names:
            names.insert(0, BASES[name])
    print(f"space {space.name}, batch {a.batch}, backend {jax.default_backend()}, "
          f"core {a.core}, {a.repeats} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    rows = {}
    for name in names:
        fn, args = ROWS[name](space, a.batch)
        rows[name] = compile_row(fn, args)
    timed = time_interleaved(rows, a.repeats)
    print(f"{'row':18s} {'compile s':>9s} {'step ms':>9s} {'cpu ms':>9s} {'peak MiB':>9s} "
          f"{'time x':>7s} {'cpu x':>7s} {'mem x':>7s}  vs")
    for name in names:
        r, t = rows[name], timed[name]
        base = BASES[name] if BASES[name] in rows else names[0]
        b, bt = rows[base], timed[base]
        print(f"{name:18s} {r['compile_s']:9.1f} {t['step_s'] * 1e3:9.2f} {t['cpu_s'] * 1e3:9.2f} "
              f"{r['peak_bytes'] / 2 ** 20:9.2f} {t['step_s'] / bt['step_s']:7.2f} "
              f"{t['cpu_s'] / bt['cpu_s']:7.2f} {r['peak_bytes'] / b['peak_bytes']:7.2f}  {base}",
              flush=True)


if __name__ == "__main__":
    main()
