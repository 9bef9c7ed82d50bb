"""The jax backend: the Flax network of :mod:`nas.model` under ``jax.jit`` on jax's default device
(CPU here, a GPU where present). A single layer is timed as a one-layer ``Network``; parameters
are arguments of the jitted function (as in deployment), compilation is excluded.

On CPU, the worker process runs XLA on one thread (``XLA_FLAGS``, see
:data:`nas.single_thread.XLA_ONE_THREAD_FLAGS` and ``PJRT_NPROC=1``), set before jax
creates its client.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from nas.latency.precision import RULES
from nas.spec import BlockSpec

NAME = "jax"
RULE = RULES[NAME]


def info() -> dict:
    """Returns jax/flax versions and the device the measurements run on."""
    import flax
    import jax
    import jaxlib

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return {"versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                         "flax": flax.__version__},
            "device": f"{dev.platform} ({kind})"}


def random_variables(model, shape: Sequence[int]) -> dict:
    """Returns positive random variables shaped like ``model.init``'s, without compiling init.

    Latency does not depend on the values; positive values keep BatchNorm variances valid.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32),
                                                 train=False))
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda a: jnp.asarray(0.01 + 0.1 * np.abs(rng.standard_normal(a.shape)), a.dtype), abstract)


def _runner(specs: Sequence[BlockSpec], batch: int) -> tuple[Callable, float]:
    import jax
    import jax.numpy as jnp

    from nas.model import Network

    t0 = time.perf_counter()
    first = specs[0]
    model = Network(specs=tuple(specs))
    shape = (batch, *first.in_hw, first.cin)
    variables = random_variables(model, shape)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    apply = jax.jit(lambda v, inp: model.apply(v, inp, train=False))

    def call() -> None:
        apply(variables, x).block_until_ready()

    call()
    return call, time.perf_counter() - t0


def block_runner(spec: BlockSpec, batch: int, threads: int = 1) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running one layer (a one-layer Network), compiled."""
    return _runner([spec], batch)


def network_runner(specs: Sequence[BlockSpec], batch: int, threads: int = 1) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running a whole network, compiled."""
    return _runner(specs, batch)
