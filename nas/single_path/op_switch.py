"""The op switch of Single-Path NAS: a layer choosing between two operators that do not nest.

Single-Path NAS (Stamoulis et al. 2019) decides only nested choices: the smaller choice is a part
of the larger one, and a threshold on the norm of the outer part switches it on. Two operator
programs nest when one is the other less one contiguous run of ops with the same conv kinds and
the same mid channels (a DWSep is an MBConv at expand 1 less its expand conv: the op ladder of
:mod:`nas.single_path.plan`). Otherwise, e.g. MBConv (1x1 expand -> kxk depthwise) vs
Fused-MBConv (one kxk full conv cin -> mid), the operators share no weights, and the slot's
superkernel holds one *branch* per operator: a complete single-path superkernel of that operator
(its own weights, its own nested ladders and thresholds, under the operator's name in the
slot's variables: ``mbconv/dw/kernel``, ``fused_mbconv/t_kernel``...). The slot computes::

    y = g * fused(x) + (1 - g) * mbconv(x)        (exactly one of them: the exact ``select``)

with ``g`` the op gate (level 0 = the operator the space lists first, level 1 = the second;
every gate starts on, as in the paper, so a search starts at the second). So a switch slot
costs both branches during the search (both run on every batch; the paper has no such choice);
its exported child is one branch's child.

The op gate's rule. The outer-part norm of a nested choice measures what that part adds to the
smaller choice; two operators that do not nest have no such part, and the norm of the fused
operator's weights would be a poor stand-in: its kxk conv is followed by BatchNorm (the output
does not depend on the conv's scale), and while the other branch is selected its weights get no
gradient, so weight decay alone would shrink the norm and flip the gate. The op gate therefore
compares a constant score 0 with its learned threshold, ``g = 1(0 - 20 t_op > 0)``: the
threshold ``t_op`` is the slot's learned logit of the choice. It is relaxed like every other
gate (hard forward, sigmoid backward), so it learns from the difference the two branches make
to the loss, ``(fused(x) - mbconv(x)) . dL/dy``, and from the cost difference of the two
children, and it follows the thresholds' rule (warm-up, shared RMS,
:mod:`nas.single_path.threshold_opt`).

The op gate during the warm-up. While the thresholds are frozen (``warmup_epochs``, the steps
in which the threshold rule's updates are zero) every threshold gate stays on, so an op gate
left to its threshold would select the second operator on every step: the first operator's
branch would keep its initial weights, and once the op threshold starts learning it would
compare a trained branch with an untrained one (a bias towards the operator listed second).
So during the warm-up each op switch's op gate is drawn on every training step, uniformly
(Bernoulli 0.5, independently per slot, SPOS-style) from a key derived from the step's key
(:func:`sample_op_gates`; the same draw in the weight and the arch step of one batch, and the
same sequence on a rerun or a resume), and both branches train; after the warm-up it follows
its threshold. The nested ladders inside each branch (kernel, mid, bits...) stay all on during
the warm-up, as in the paper. Without a warm-up nothing is drawn. Whether a step is in the
warm-up is a traced value (the threshold rule's step count), so one compiled step serves the
whole search.

The other ladders (keep, mid, kernel, se, rank, bits, bits_a) nest inside each branch as in any
single-path slot, with each branch's thresholds (a depthwise and a full kxk kernel have norms
on different scales, so they cannot share one). Each branch runs at its own gates, so the op
gate compares the two children as they stand; the cost term is
``P(op=0) cost_0(gates_0) + P(op=1) cost_1(gates_1)`` (:mod:`nas.single_path.cost`).

Gate keys. A switch slot's gates are ``{"op": [g], "<operator>/<ladder>": [gates]}``
(:func:`branch_key`); an ordinary slot's are ``{"<ladder>": [gates]}``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from nas.blocks.program import Conv, Op, program
from nas.spec import BlockSpec
from nas.supernet.path_program import op_key, removed_run

#: The ladder whose levels are the two operators.
OP_LADDER = "op"


def strict_key(op: Op) -> tuple:
    """Returns an op's structural key, with a conv's kind ('pointwise', 'depthwise', 'full'):
    an MBConv's 1x1 ``expand`` is not a Fused-MBConv's kxk ``expand``."""
    return op_key(op) + ((op.kind,) if isinstance(op, Conv) else ())


def programs_nest(big: BlockSpec, small: BlockSpec) -> bool:
    """Whether `small`'s program is `big`'s less one contiguous run of ops (ops compared by
    :func:`strict_key`, so conv kinds must agree).

    Args:
        big: the larger operator's spec.
        small: the smaller operator's spec (same slot, same levels).

    Returns:
        True when a segment switch can turn `big` into `small`.
    """
    kb = [strict_key(op) for op in program(big)]
    ks = [strict_key(op) for op in program(small)]
    return removed_run(kb, ks) is not None


def branch_key(operator: str, ladder: str) -> str:
    """Returns the gate key of `ladder` in `operator`'s branch ('fused_mbconv/kernel')."""
    return f"{operator}/{ladder}"


def threshold_path(key: str) -> str:
    """Returns the params path of a gate key's threshold: 'op' -> 't_op',
    'fused_mbconv/kernel' -> 'fused_mbconv/t_kernel'."""
    parent, _, ladder = key.rpartition("/")
    return f"{parent}/t_{ladder}" if parent else f"t_{ladder}"


def ladder_of(key: str) -> str:
    """Returns the ladder name of a gate key ('fused_mbconv/kernel' -> 'kernel')."""
    return key.rpartition("/")[2]


def branch_gates(gates: Mapping[str, Any], operator: str) -> dict[str, Any]:
    """Returns one branch's gates {ladder: [gates]} out of a switch slot's gates."""
    prefix = operator + "/"
    return {k[len(prefix):]: v for k, v in gates.items() if k.startswith(prefix)}


def sample_op_gates(plans: Sequence[Any], gates: Mapping[str, Mapping[str, Any]],
                    key: jax.Array, warming: Any) -> dict[str, Any]:
    """Returns the network's gates with every op switch's op gate drawn at random while
    `warming` (see the module docstring: the op gate during the warm-up).

    Args:
        plans: the space's slot plans (:func:`nas.single_path.plan.space_plan`).
        gates: {slot prefix: {gate key: [gates]}} of the thresholds.
        key: a PRNG key of this step (slot i draws from ``fold_in(key, i)``).
        warming: a (traced) boolean: draw the op gates (True) or keep the thresholds' (False).

    Returns:
        The gates, an op switch's ``"op"`` gate replaced by an exact 0./1. Bernoulli(0.5) draw
        (no gradient to its threshold) where `warming`; every other gate unchanged.
    """
    out = dict(gates)
    for index, plan in enumerate(plans):
        if not plan.branches:
            continue
        slot = dict(gates[plan.prefix])
        drawn = jax.random.bernoulli(jax.random.fold_in(key, index), 0.5, slot[OP_LADDER].shape)
        slot[OP_LADDER] = jnp.where(warming, drawn.astype(slot[OP_LADDER].dtype), slot[OP_LADDER])
        out[plan.prefix] = slot
    return out
