"""Supernet cost benchmark: step time and peak memory of the one-shot supernets vs one child.

In one process, for one Space and batch, it compiles and times (warm-up, median of repeats) the
gradient step of each row and reads XLA's compiled memory analysis (arguments + outputs +
temporaries, the step's peak working set), then prints each row's ratio to the child network:

* ``child``: the largest child network (the Arch of maximum MACs), plain training step;
* ``fbnet_weight`` / ``fbnet_arch``: the Gumbel-softmax (all paths, masked knobs) steps;
* ``proxyless_weight``: the single sampled path (``lax.switch``);
* ``proxyless_arch``: two sampled paths per path decision, masked knobs.

Rows are a registry (:data:`ROWS`): ``add_row(name, build)`` with ``build(space, batch) ->
(fn, args)`` adds one (the single-path supernet adds its own). Pin to one core for stable times:

    taskset -c 0 python experiments/bench/supernet_cost.py --space tiny --batch 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nas.metrics import arch_metrics  # noqa: E402
from nas.model import build_model, init_variables  # noqa: E402
from nas.space import Space  # noqa: E402
from nas.strategies.oneshot_base import OneShotParams  # noqa: E402
from nas.strategies.oneshot_loop import make_strategy  # noqa: E402
from nas.supernet.gates import init_arch_params  # noqa: E402
from nas.supernet.network import SuperNet, trainable  # noqa: E402
from nas.supernet.synthetic import macs_latency_table  # noqa: E402
from nas.train import cross_entropy  # noqa: E402

ROWS: dict = {}


def add_row(name: str, build) -> None:
    """Registers a row: ``build(space, batch) -> (fn, args)``; fn is jitted and timed on args."""
    ROWS[name] = build


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
    def build(space: Space, n: int):
        net = SuperNet(space)
        strategy = make_strategy(name, net, OneShotParams(objective="proxyless", lam=1.0),
                                 macs_latency_table(space))
        full = net.init(jax.random.PRNGKey(0))
        alpha = init_arch_params(space)
        batch = _batch(space, n)
        key = jax.random.PRNGKey(1)
        if which == "weight":
            def step(trained, full, alpha, batch, key):
                return jax.grad(lambda t: strategy.weight_loss(t, full, alpha, batch, key, 1.0)[0])(trained)
            return step, (trainable(full), full, alpha, batch, key)

        def arch(alpha, full, batch, key):
            return strategy.arch_grads(alpha, full, batch, key, 1.0)[0]
        return arch, (alpha, full, batch, key)
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


add_row("single_path_child", _single_path_child)
add_row("single_path", _single_path)


def measure(fn, args, repeats: int) -> dict:
    """Returns compile seconds, median step seconds and peak bytes of a jitted fn."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "step_s": statistics.median(times), "peak_bytes": peak,
            "temp_bytes": mem.temp_size_in_bytes}


def main() -> None:
    """Runs the rows and prints the table with ratios to the child."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (child first)")
    a = ap.parse_args()
    space = Space.by_name(a.space)
    names = a.rows.split(",")
    print(f"space {space.name}, batch {a.batch}, backend {jax.default_backend()}")
    print(f"{'row':18s} {'compile s':>9s} {'step ms':>9s} {'peak MiB':>9s} {'time x':>7s} {'mem x':>7s}")
    base = None
    for name in names:
        fn, args = ROWS[name](space, a.batch)
        r = measure(fn, args, a.repeats)
        base = base or r
        print(f"{name:18s} {r['compile_s']:9.1f} {r['step_s'] * 1e3:9.2f} "
              f"{r['peak_bytes'] / 2 ** 20:9.2f} {r['step_s'] / base['step_s']:7.2f} "
              f"{r['peak_bytes'] / base['peak_bytes']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
