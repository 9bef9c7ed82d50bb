"""How close the child training step gets to this CPU: achieved FLOP/s against dense matmul.

Measured in one process (pinned to one core, one XLA thread, by the caller), side by side:

* the CPU's dense matmul FLOP/s (float32, 1024^3, the best this core does);
* MobileNetV2 (the published channel plan, at 32x32x3 and 10 classes) training step at batch 128:
  FLOPs = 3 x 2 x MACs x batch (forward, input gradient, weight gradient of every conv and the
  classifier), FLOP/s = FLOPs / step time; XLA's own count of the compiled step is printed too;
* its 1x1 convs and its depthwise convs alone (forward + both gradients, each layer timed at
  its real shape): their FLOP/s, and the step time they account for;
* the rest of the step (BatchNorm, activations, pooling, optimizer-free gradient plumbing):
  the step time minus the two.

Used by ``experiments/bench/scale.py --flops``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

MATMUL_N = 1024
BATCH = 128


def _median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_flops(repeats: int) -> float:
    """Returns the dense float32 matmul FLOP/s of this process (2 n^3 per product)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(MATMUL_N, MATMUL_N)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(MATMUL_N, MATMUL_N)), jnp.float32)
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2 * MATMUL_N ** 3 / _median_seconds(lambda: jax.block_until_ready(f(a, b)), repeats)


def mobilenet_v2_cifar():
    """Returns (space, arch) of MobileNetV2's published plan at 32x32x3 input, 10 classes."""
    from nas.archfile import load_arch
    from nas.space import Space

    root = Path(__file__).resolve().parents[2]
    published = load_arch(root / "search_spaces" / "published" / "mobilenet_v2.json")
    definition = published.space.to_dict()
    definition.update(input={"resolution": 32, "channels": 3}, num_classes=10,
                      name="mobilenet_v2_32")
    space = Space.from_dict(definition)
    return space, space.validate(published.arch)


def _layer_grad_seconds(fn, x, w, repeats: int) -> float:
    g = jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1)))
    c = g.lower(x, w).compile()
    return _median_seconds(lambda: jax.block_until_ready(c(x, w)), repeats)


def layer_class_seconds(space, arch, repeats: int) -> dict:
    """Times every 1x1 conv and every depthwise conv of the network alone at its real shape
    (forward + input and weight gradients, batch :data:`BATCH`).

    Returns:
        {"pointwise": (seconds, FLOPs), "depthwise": (seconds, FLOPs)}, summed over layers.
    """
    from nas.blocks.depthwise import depthwise_conv
    from nas.metrics import layer_ops

    rng = np.random.default_rng(0)
    sums = {"pointwise": [0.0, 0.0], "depthwise": [0.0, 0.0]}
    cache: dict = {}
    for spec in space.block_specs(arch):
        for op in layer_ops(spec):
            if op.kernel == 1 and op.groups == 1 and op.in_hw != (1, 1):
                kind, key = "pointwise", ("pw", op.in_hw, op.cin, op.cout)
            elif op.groups > 1 and op.groups == op.cin:
                stride = op.in_hw[0] // op.out_hw[0]
                kind, key = "depthwise", ("dw", op.in_hw, op.cin, op.kernel, stride)
            else:
                continue
            if key not in cache:
                x = jnp.asarray(rng.normal(size=(BATCH, *op.in_hw, op.cin)), jnp.float32)
                if kind == "pointwise":
                    w = jnp.asarray(rng.normal(size=(op.cin, op.cout)), jnp.float32)
                    cache[key] = _layer_grad_seconds(lambda a, k: a @ k, x, w, repeats)
                else:
                    w = jnp.asarray(rng.normal(size=(op.kernel, op.kernel, 1, op.cin)), jnp.float32)
                    cache[key] = _layer_grad_seconds(
                        lambda a, k, s=stride: depthwise_conv(a, k, s), x, w, repeats)
            sums[kind][0] += cache[key]
            sums[kind][1] += 6.0 * op.macs * BATCH
    return {k: tuple(v) for k, v in sums.items()}


def measure_utilization(repeats: int) -> dict:
    """Measures the figures of the module docstring.

    Args:
        repeats: timed runs per figure (medians).

    Returns:
        A JSON-able dict: matmul_flops, step_s, step_flops, xla_step_flops, macs, and
        {pointwise,depthwise}_{s,flops}.
    """
    from nas.metrics import arch_metrics
    from nas.model import build_model, init_variables
    from nas.training.trainer import cross_entropy

    peak = matmul_flops(repeats)
    space, arch = mobilenet_v2_cifar()
    model = build_model(space, arch)
    v = init_variables(model, jax.random.PRNGKey(0), (1, 32, 32, 3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)

    def step(params, stats):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
            return cross_entropy(logits, y, jnp.ones((BATCH,))), upd
        return jax.grad(loss, has_aux=True)(params)

    compiled = jax.jit(step).lower(v["params"], v["batch_stats"]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    step_s = _median_seconds(lambda: jax.block_until_ready(compiled(v["params"], v["batch_stats"])),
                             repeats)
    macs = arch_metrics(space, arch)["macs"]
    parts = layer_class_seconds(space, arch, repeats)
    return {"matmul_flops": peak, "step_s": step_s, "step_flops": 6.0 * macs * BATCH,
            "xla_step_flops": float(cost.get("flops", float("nan"))), "macs": macs,
            **{f"{k}_s": v[0] for k, v in parts.items()},
            **{f"{k}_flops": v[1] for k, v in parts.items()}}


def print_utilization(m: dict) -> None:
    """Prints :func:`measure_utilization`'s figures as rates and shares of the step."""
    g = 1e9
    peak = m["matmul_flops"]
    achieved = m["step_flops"] / m["step_s"]
    print(f"\nFLOP/s utilization (MobileNetV2 at 32x32x3, batch {BATCH}, {m['macs'] / 1e6:.1f} M MACs"
          f" per image)")
    print(f"  dense matmul {MATMUL_N}^3 float32: {peak / g:.1f} GFLOP/s (the reference)")
    print(f"  training step: {m['step_s'] * 1e3:.0f} ms, {m['step_flops'] / g:.1f} GFLOP "
          f"(XLA counts {m['xla_step_flops'] / g:.1f}) -> {achieved / g:.1f} GFLOP/s = "
          f"{achieved / peak:.0%} of matmul")
    rest = m["step_s"]
    for kind in ("pointwise", "depthwise"):
        s, f = m[f"{kind}_s"], m[f"{kind}_flops"]
        rest -= s
        print(f"  {kind:9s} convs alone: {s * 1e3:6.0f} ms ({s / m['step_s']:.0%} of the step), "
              f"{f / g:.1f} GFLOP ({f / m['step_flops']:.0%}), {f / s / g:.1f} GFLOP/s = "
              f"{f / s / peak:.0%} of matmul")
    print(f"  the rest (stem conv, BatchNorm, activations, pooling, loss, gradient plumbing): "
          f"{rest * 1e3:.0f} ms ({rest / m['step_s']:.0%} of the step)")
