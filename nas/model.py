"""The model builder: an Arch of a Space -> a Flax Linen network.

The network is the stem, one block per slot and the head, each built from its BlockSpec
(``space.block_specs(arch)``). Submodules are named ``stem``, the slot's Arch label prefix
(``s1_b1``, ``s2_b1``...) and ``head``, so a layer's weights are found by its label prefix.

Collections: "params"; "batch_stats" (BatchNorm statistics and the running ranges of activation
quantizers; the only collection mutated in training); "intermediates" (each block's output,
sown as ``features``, when asked for with ``mutable=["intermediates"]``). Head dropout uses the
"dropout" rng when ``train=True``.

Example:
    >>> space = Space.by_name("tiny")
    >>> model = build_model(space, space.sample(0))
    >>> variables = init_variables(model, jax.random.key(0), (1, 16, 16, 1))
    >>> logits = model.apply(variables, x)                                   # eval
    >>> logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"],
    ...                           rngs={"dropout": key})                      # training
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nas.blocks.depthwise import resolve_impl
from nas.blocks.host_init import host_init
from nas.blocks.layers import make_block
from nas.blocks.program import Conv, program
from nas.blocks.quant import is_quant_step
from nas.errors import NasInputError
from nas.space import Space
from nas.spec import BlockSpec, op_traits


def default_block_names(specs: Sequence[BlockSpec]) -> tuple[str, ...]:
    """Names blocks like Space labels when no names are given: 'stem', 'sX_bY'..., 'head'.

    A new stage starts where the output channels change or the stride is not 1 (true of every
    shipped space; pass explicit names from ``space.slots`` otherwise, as :func:`build_model`
    does).

    Args:
        specs: stem, blocks, head.

    Returns:
        One name per spec.
    """
    names, stage, index, prev_cout = [], 0, 0, None
    for spec in specs:
        if spec.op in ("stem", "head"):
            names.append(spec.op)
            continue
        if prev_cout is None or spec.cout != prev_cout or spec.stride != 1:
            stage, index = stage + 1, 0
        index += 1
        prev_cout = spec.cout
        names.append(f"s{stage}_b{index}")
    return tuple(names)


class Network(nn.Module):
    """A feed-forward network of blocks, one per BlockSpec.

    Attributes:
        specs: ``space.block_specs(arch)``: stem, one spec per slot, head.
        depthwise_impl: 'auto' (shift on CPU, XLA on GPU/TPU), 'shift' or 'xla'.
        names: submodule name of each spec (default: :func:`default_block_names`).
    """

    specs: tuple[BlockSpec, ...]
    depthwise_impl: str = "auto"
    names: tuple[str, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Runs the network.

        Args:
            x: images [N, H, W, C] float32.
            train: batch statistics and dropout (needs mutable "batch_stats" and a "dropout" rng).

        Returns:
            Logits [N, num_classes].
        """
        names = self.names or default_block_names(self.specs)
        if len(names) != len(self.specs):
            raise ValueError(f"{len(names)} names for {len(self.specs)} specs")
        impl = resolve_impl(self.depthwise_impl)
        for spec, name in zip(self.specs, names):
            x = make_block(spec, name, impl)(x, train)
        return x


def check_buildable(specs: Sequence[BlockSpec], names: Sequence[str], source: str | None = None) -> None:
    """Checks knob combinations the blocks cannot build, with one clear error line.

    Raises:
        NasInputError: a block combines groups with rank, or the channels of one of its grouped
            1x1 convs (read from its program) are not divisible by its groups.
    """
    for spec, name in zip(specs, names):
        if spec.groups == 1 or not op_traits(spec.op).bottleneck:
            continue
        if spec.rank is not None:
            raise NasInputError("groups and rank cannot be combined in one block (a factorized 1x1 "
                                "conv is dense); set rank: null or groups: 1", source, name)
        grouped = [op for op in program(spec)
                   if isinstance(op, Conv) and op.kind == "pointwise" and op.groups > 1]
        for c in sorted({c for op in grouped for c in (op.cin, op.cout)}):
            if c % spec.groups:
                raise NasInputError(f"groups={spec.groups} does not divide {c} channels; choose "
                                    "a width/expand giving divisible channels or groups: 1",
                                    source, name)


def build_model(space: Space, arch: Mapping[str, Any], **kwargs: Any) -> Network:
    """Builds the network of an Arch.

    Args:
        space: the Space.
        arch: a valid Arch of `space` (validated).
        **kwargs: further :class:`Network` attributes (e.g. ``depthwise_impl``).

    Returns:
        An unbound :class:`Network` whose submodules are named 'stem', slot prefixes, 'head'.

    Raises:
        NasInputError: the Arch is invalid or holds a knob combination the blocks cannot build.
    """
    specs = tuple(space.block_specs(arch))
    names = ("stem",) + tuple(slot.prefix for slot in space.slots) + ("head",)
    check_buildable(specs, names, space.source)
    kwargs.setdefault("names", names)
    return Network(specs=specs, **kwargs)


def with_bits(space: Space, arch: Mapping[str, Any], bits_w: int, bits_a: int,
              edge_bits: int | None = None, **kwargs: Any) -> Network:
    """Returns the Arch's network with every block at `bits_w` / `bits_a` bits.

    Args:
        space: the Space.
        arch: a valid Arch of `space`.
        bits_w: weight bit-width of every block (32 = float).
        bits_a: activation bit-width of every block.
        edge_bits: bit-width (weights and activations) of the stem and head (None: as blocks).
        **kwargs: further :class:`Network` attributes.

    Returns:
        An unbound :class:`Network` named like :func:`build_model`'s.
    """
    specs = []
    for s in space.block_specs(arch):
        if s.op in ("stem", "head") and edge_bits is not None:
            specs.append(dataclasses.replace(s, bits_w=edge_bits, bits_a=edge_bits))
        else:
            specs.append(dataclasses.replace(s, bits_w=bits_w, bits_a=bits_a))
    names = ("stem",) + tuple(slot.prefix for slot in space.slots) + ("head",)
    return Network(specs=tuple(specs), names=names, **kwargs)


def with_resolution(space: Space, resolution: int | tuple[int, int]) -> Space:
    """Returns a copy of `space` at another input resolution (e.g. fbnet at 64x64 for tests).

    Args:
        space: the Space.
        resolution: new input height = width, or (height, width).

    Returns:
        A Space with the same slots, decisions and labels, and shapes re-derived.
    """
    d = space.to_dict()
    res = list(resolution) if isinstance(resolution, (tuple, list)) else resolution
    d["input"] = dict(d["input"], resolution=res)
    return Space.from_dict(d, space.source)


def variable_shapes(model: nn.Module, batch_shape: Sequence[int]) -> dict[str, Any]:
    """Returns the shapes of a model's variables (tracing only: no compile, no compute).

    Args:
        model: a :class:`Network` (or any module of :mod:`nas.blocks` taking ``(x, train)``).
        batch_shape: input shape [N, H, W, C].

    Returns:
        {"params": ..., "batch_stats": ...} trees of ``jax.ShapeDtypeStruct``.
    """
    x = jax.ShapeDtypeStruct(tuple(int(d) for d in batch_shape), jnp.float32)
    rng = jax.random.key(0)
    shapes = jax.eval_shape(partial(model.init, train=False), {"params": rng, "dropout": rng}, x)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Returns {leaf path (``jax.tree_util.keystr``): shape} of a variables pytree.

    Two networks' variables are interchangeable when these are equal (e.g. weights sliced from
    a supernet, or restored, against a fresh init of the network).
    """
    return {jax.tree_util.keystr(path): tuple(jnp.shape(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def init_variables(model: nn.Module, rng: jax.Array, batch_shape: Sequence[int]) -> dict[str, Any]:
    """Initializes a model's variables, host-side (no XLA compile; see :mod:`nas.blocks.host_init`).

    Args:
        model: a :class:`Network` (or any module of :mod:`nas.blocks` taking ``(x, train)``).
        rng: a PRNG key (concrete: not inside jit).
        batch_shape: input shape [N, H, W, C].

    Returns:
        {"params": ..., "batch_stats": ...} of jax arrays (batch_stats is {} when there are none).
    """
    return jax.tree.map(jnp.asarray, host_init(variable_shapes(model, batch_shape), rng))


def add_missing_quant_steps(model: nn.Module, variables: Mapping[str, Any],
                            batch_shape: Sequence[int]) -> dict[str, Any]:
    """Adds the quantizer steps a model declares but `variables` lack, at 0 (= minmax).

    Variables made outside the model (supernet children) then have the model's full structure
    and compute what they computed without the steps; a quantizer whose only param is its step
    (absent where the parent's quantizer had no params, e.g. a Single-Path bits_a point) is
    added whole.

    Args:
        model: the network.
        variables: {"params", "batch_stats"}.
        batch_shape: input shape [N, H, W, C].

    Returns:
        The variables with every declared step present.
    """
    shapes = variable_shapes(model, batch_shape)["params"]

    def only_steps(declared: Mapping[str, Any]) -> bool:
        return all(only_steps(sub) if isinstance(sub, Mapping) else is_quant_step(name)
                   for name, sub in declared.items())

    def fill(declared: Mapping[str, Any], have: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(have)
        for name, sub in declared.items():
            if isinstance(sub, Mapping):
                if name in have or only_steps(sub):  # a quantizer with no params at all: added
                    out[name] = fill(sub, have.get(name, {}))
            elif name not in have and is_quant_step(name):
                out[name] = jnp.zeros(sub.shape, jnp.float32)
        return out

    return {**variables, "params": fill(shapes, variables.get("params", {}))}
