"""First-step (XLA compile + run) time of ProxylessNAS's weight step: nested vs flat switches.

The weight step runs one sampled path per slot. ``pick="flat"`` is one ``lax.switch`` per slot
over every distinct (path, shape) option, so XLA compiles every op once per combination of
knob values; ``pick="nested"`` nests one switch per knob (path -> channel count -> a switch
around each op a kernel / SE / rank choice changes). Both are timed in one run, side by side,
each in a fresh subprocess with no compile cache; printed as seconds and the ratio. On a shared
machine compare the CPU seconds of trace + compile (XLA compiles on one thread), not the wall
time.

    python experiments/bench/proxyless_compile.py --space tiny --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _one(space_name: str, pick: str, batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nas.space import Space
    from nas.strategies import make_strategy
    from nas.strategies.oneshot_base import OneShotParams
    from nas.supernet.network import SuperNet

    space = Space.by_name(space_name)
    net = SuperNet(space, pick=pick)
    strategy = make_strategy("proxyless", net.space, OneShotParams(objective="none"), net=net)
    weight_step = jax.jit(strategy.weight_step)
    state = strategy.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    shape = (batch, *space.resolution, space.in_channels)
    b = {"x": jnp.asarray(rng.normal(size=shape), jnp.float32),
         "y": jnp.asarray(rng.integers(0, space.num_classes, batch), jnp.int32),
         "mask": jnp.ones(batch)}
    lr, epoch = jnp.float32(1e-3), jnp.float32(0.0)
    c0 = time.process_time()
    t0 = time.perf_counter()
    lowered = weight_step.lower(state, b, jax.random.PRNGKey(0), lr, epoch)
    t_lower = time.perf_counter() - t0
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t0 - t_lower
    cpu_compile = time.process_time() - c0
    mem = compiled.memory_analysis()
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, _ = compiled(state, b, jax.random.PRNGKey(i), lr, epoch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    return {"pick": pick, "trace_lower_s": t_lower, "compile_s": t_compile,
            "trace_lower_compile_cpu_s": cpu_compile,
            "first_step_s": t_lower + t_compile + times[0],
            "median_step_s": float(np.median(times[1:])) if steps > 1 else None,
            "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
            "hlo_chars": len(lowered.as_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--picks", default="nested,flat")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_one(a.space, a.child, a.batch, a.steps)))
        return
    rows = {}
    for pick in a.picks.split(","):
        env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
        out = subprocess.run([sys.executable, __file__, "--space", a.space, "--batch", str(a.batch),
                              "--steps", str(a.steps), "--child", pick],
                             capture_output=True, text=True, env=env, check=True)
        rows[pick] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[pick]), flush=True)
    if "nested" in rows and "flat" in rows:
        n, f = rows["nested"], rows["flat"]
        key = "trace_lower_compile_cpu_s"
        print(f"trace + compile CPU time (insensitive to other load): flat {f[key]:.1f} s, nested "
              f"{n[key]:.1f} s -> flat/nested {f[key] / n[key]:.2f}x")
        print(f"first step (trace + compile + run): flat {f['first_step_s']:.1f} s, nested "
              f"{n['first_step_s']:.1f} s -> flat/nested {f['first_step_s'] / n['first_step_s']:.2f}x; "
              f"step time nested/flat {n['median_step_s'] / f['median_step_s']:.2f}x; "
              f"temp memory nested/flat {n['temp_bytes'] / max(f['temp_bytes'], 1):.2f}x")


if __name__ == "__main__":
    main()
