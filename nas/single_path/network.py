"""The single-path network: stem, one superkernel block per slot, head.

Submodules are named like :class:`nas.model.Network`'s ('stem', slot prefixes, 'head'), and
every block uses the child param names, so the params of the Arch the gates select are slices
of this network's params (:func:`nas.single_path.export.export_child`).

Example:
    >>> net = SinglePathNetwork(Space.by_name("tiny"))
    >>> variables = init_single_path(net, jax.random.key(0))
    >>> logits = net.apply(variables, x)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.depthwise import resolve_impl
from nas.blocks.layers import make_block
from nas.single_path.plan import space_plan
from nas.single_path.superblock import SuperBlock
from nas.space import Space


class SinglePathNetwork(nn.Module):
    """One over-parameterized network holding every Arch of a Space as a nested slice.

    Attributes:
        space: the Space (every slot must be nestable, see :func:`space_plan`).
        depthwise_impl: 'auto' (shift on CPU, XLA on GPU/TPU), 'shift' or 'xla'.
    """

    space: Space
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, gates: dict | None = None) -> jax.Array:
        """Runs the network with the gates its thresholds select.

        Args:
            x: images [N, H, W, C].
            train: batch statistics and dropout (mutable "batch_stats", a "dropout" rng).
            gates: {slot prefix: {ladder: [gates]}} computed from the params (see
                :func:`nas.single_path.gates.slot_gates`); None computes them in each block.

        Returns:
            Logits [N, num_classes].
        """
        impl = resolve_impl(self.depthwise_impl)
        space_plan(self.space)  # refuses a space that cannot be nested, before building
        x = make_block(self.space.stem_spec, "stem", impl)(x, train)
        for i, slot in enumerate(self.space.slots):
            x = SuperBlock(self.space, i, impl, name=slot.prefix)(
                x, train, None if gates is None else gates[slot.prefix])
        return make_block(self.space.head_spec, "head", impl)(x, train)


def init_single_path(net: SinglePathNetwork, rng: jax.Array, batch: int = 1) -> dict[str, Any]:
    """Initializes a single-path network's variables.

    Args:
        net: the network.
        rng: a PRNG key.
        batch: batch size of the dummy input.

    Returns:
        {"params": ..., "batch_stats": ...}.
    """
    space = net.space
    shape = (batch, *space.resolution, space.in_channels)

    @jax.jit
    def _init(key):
        return net.init({"params": key, "dropout": key}, jnp.zeros(shape, jnp.float32), train=False)

    v = _init(rng)
    return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
