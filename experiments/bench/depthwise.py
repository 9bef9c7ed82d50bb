"""Depthwise conv benchmark: the shift formulation vs XLA's grouped conv, side by side.

For each shape it times, in one process, the forward pass and the gradient w.r.t. input and
kernel of both implementations (jit-compiled, warmed up, median of repeats) and prints the
ratio xla / shift (> 1: shift is faster). Pin to one core and one thread for stable figures:

    taskset -c 0 python experiments/bench/depthwise.py            # all shapes
    taskset -c 0 python experiments/bench/depthwise.py --quick    # small shapes only
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

from nas.blocks.depthwise import depthwise_shift, depthwise_xla  # noqa: E402

# (batch, height, width, channels, kernel, stride)
REALISTIC = [(64, 32, 32, 192, k, s) for k in (3, 5, 7) for s in (1, 2)]
TINY = [(32, 16, 16, 48, 3, 1), (32, 16, 16, 96, 7, 2), (32, 8, 8, 144, 5, 1), (32, 4, 4, 384, 3, 1)]


def _median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_shape(shape, repeats: int) -> dict[str, float]:
    """Returns median seconds of forward and gradient for both implementations of one shape.

    Args:
        shape: (batch, height, width, channels, kernel, stride).
        repeats: timed runs per measurement.

    Returns:
        {'fwd_shift', 'fwd_xla', 'grad_shift', 'grad_xla'} in seconds.
    """
    n, h, w, c, k, s = shape
    x = jax.random.normal(jax.random.key(0), (n, h, w, c))
    kernel = jax.random.normal(jax.random.key(1), (k, k, 1, c))
    out = {}
    for name, fn in (("shift", depthwise_shift), ("xla", depthwise_xla)):
        fwd = jax.jit(lambda x, kern, fn=fn: fn(x, kern, s))
        grad = jax.jit(jax.grad(lambda x, kern, fn=fn: jnp.sum(fn(x, kern, s) ** 2), (0, 1)))
        out[f"fwd_{name}"] = _median_time(fwd, (x, kernel), repeats)
        out[f"grad_{name}"] = _median_time(grad, (x, kernel), repeats)
    return out


def main() -> None:
    """Runs the benchmark and prints one table row per shape."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-space shapes only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = TINY if args.quick else TINY + REALISTIC
    print(f"backend={jax.default_backend()} repeats={args.repeats} (median ms; ratio = xla/shift)")
    print(f"{'N':>3} {'HxW':>6} {'C':>4} {'k':>2} {'s':>2} | {'fwd shift':>9} {'fwd xla':>9} "
          f"{'ratio':>6} | {'grad shift':>10} {'grad xla':>9} {'ratio':>6}")
    for shape in shapes:
        r = bench_shape(shape, args.repeats)
        n, h, w, c, k, s = shape
        print(f"{n:>3} {f'{h}x{w}':>6} {c:>4} {k:>2} {s:>2} | {r['fwd_shift'] * 1e3:9.2f} "
              f"{r['fwd_xla'] * 1e3:9.2f} {r['fwd_xla'] / r['fwd_shift']:6.1f} | "
              f"{r['grad_shift'] * 1e3:10.2f} {r['grad_xla'] * 1e3:9.2f} "
              f"{r['grad_xla'] / r['grad_shift']:6.1f}", flush=True)


if __name__ == "__main__":
    main()
