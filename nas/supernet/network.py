"""The supernet of a Space: stem, one mixed slot per Space slot, head.

Three ways to run it (``mode``):

* ``"soft"``: every path of a slot, weighted (FBNet's Gumbel-softmax). Paths (ops, candidate
  blocks) are separate as in FBNet; the factorized knobs inside a path are masks of shared
  weights (FBNetV2-style), so a slot's cost grows with its number of paths, not with the product
  of its knob choices. ``gates`` = {label: weight vector}.
* ``"pick"``: one option per slot (ProxylessNAS's weight step, or evaluating a sampled Arch);
  ``gates`` = {label: int index}. Only the sampled *path* of a slot runs. How the knobs inside
  it are picked (``pick``):

  - ``"masked"`` (default): one ``lax.switch`` over the slot's paths; inside the picked path
    the picked kernel, channel counts and ranks are masks of the path's largest weights (one-hot
    :class:`~nas.supernet.mixing.Mix`), the picked bit-widths the quantizer's grid at the traced
    index. Equal to the sampled child up to float rounding. Its program is one path per path
    (the FBNet forward's size), so it compiles ~3x faster than ``"nested"`` on the ``mixed``
    space; each step runs the path at its largest shape.
  - ``"nested"``: nested ``lax.switch``es, one per knob: over paths, then the path's channel
    counts, then one switch around each op that a kernel, SE or rank choice changes
    (:class:`~nas.supernet.plan.PickTree`), so only the sampled shape runs (faster steps: worth
    its compile time on long searches). Each op is compiled once per channel count.
  - ``"flat"``: one switch over the slot's distinct (path, shape) options (the product; the
    reference, and for the compile-time benchmark).
* ``"pair"``: ProxylessNAS's arch step: ``gates`` = {label: one-hot gate vector} (differentiated)
  and ``pairs`` = {label: [2] sampled indices}; the path decision runs only its two sampled
  paths (``out = g_a o_a + g_b o_b``, each picked by ``lax.switch``), the knobs inside a path are
  masks at the one-hot gates, so dL/dg_j is available for every sampled j.

Stem and head are the Linen blocks of :mod:`nas.blocks.layers` (BatchNorm on batch statistics).

Example:
    >>> net = SuperNet(Space.by_name("tiny"))
    >>> params = net.init(jax.random.key(0))
    >>> logits = net.apply(params, x, "soft", gates)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nas.blocks.depthwise import resolve_impl
from nas.blocks.layers import Head, Stem
from nas.space import Space
from nas.supernet.mixing import Choice, Fixed, Mix, Pick
from nas.supernet.paths import (branch_call, init_path_params, masked_call, picked_call, run_path,
                                slice_path_params)
from nas.supernet.plan import SHARED_KNOBS, SIZE_FIELDS, PathPlan, SlotPlan, SuperPlan

MODES = ("soft", "pick", "pair")
#: How the pick mode selects one option (module docstring).
PICKS = ("masked", "nested", "flat")


class SuperNet:
    """A supernet over a Space (weights as a plain pytree, no Linen state to carry).

    Args:
        space: the Space (the supernet is derived from it).
        depthwise_impl: 'auto' | 'shift' | 'xla'.
        on_path: optional host callback ``f(slot_index, event)`` called (through
            ``jax.debug.callback``) each time a piece of a path actually executes; tests use it
            to count the candidate ops a step runs. Events: ``("path", path_index)`` (soft and
            pair modes: a whole masked path), ``("branch", branch_index)`` (flat pick),
            ``("path", path_index, mid)``, ``("kernel", k)``, ``("se", n)``, ``("rank_in", r)``,
            ``("rank_out", r)`` (nested pick: the path at a channel count, then each op).
        pick: 'masked' (default), 'nested' or 'flat': how the pick mode picks (module docstring).
    """

    def __init__(self, space: Space, depthwise_impl: str = "auto",
                 on_path: Callable[[Any, Any], None] | None = None, pick: str = "masked"):
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
        self.pick = pick
        self.space = space
        self.plan = SuperPlan.from_space(space)
        self.impl = resolve_impl(depthwise_impl)
        self.on_path = on_path
        self._stem = Stem(space.stem_spec)
        self._head = Head(space.head_spec)

    # ------------------------------------------------------------------------------ params
    def init(self, rng: jax.Array) -> dict[str, Any]:
        """Initializes the weights.

        Returns:
            {"stem", "head": Linen variables {"params", "batch_stats"}, "slots": {prefix:
            {path name: params}}}. Only "params" leaves are trained (see :func:`split_state`).
        """
        k_stem, k_head, k_slots = jax.random.split(rng, 3)
        x = jnp.zeros((1, *self.space.resolution, self.space.in_channels), jnp.float32)
        stem_vars = self._stem.init(k_stem, x, train=False)
        h = jnp.zeros((1, *self.space.head_spec.in_hw, self.space.head_spec.cin), jnp.float32)
        head_vars = self._head.init({"params": k_head, "dropout": k_head}, h, train=False)
        slots = {}
        for i, sp in enumerate(self.plan.slots):
            keys = jax.random.split(jax.random.fold_in(k_slots, i), len(sp.paths))
            slots[sp.slot.prefix] = {path.name: init_path_params(path, key)
                                     for path, key in zip(sp.paths, keys)}
        return {"stem": {"params": stem_vars["params"], "batch_stats": stem_vars.get("batch_stats", {})},
                "head": {"params": head_vars["params"], "batch_stats": head_vars.get("batch_stats", {})},
                "slots": slots}

    # ----------------------------------------------------------------------------- forward
    def apply(self, params: Mapping[str, Any], x: jax.Array, mode: str,
              gates: Mapping[str, Any], pairs: Mapping[str, Any] | None = None,
              rng: jax.Array | None = None) -> jax.Array:
        """Runs the supernet (always in training mode: BatchNorm on batch statistics).

        Args:
            params: from :meth:`init`.
            x: images [N, H, W, C].
            mode: 'soft', 'pick' or 'pair' (see the module docstring).
            gates: per label: weights ('soft'), index ('pick') or one-hot gates ('pair').
            pairs: 'pair' mode: per label the two sampled indices.
            rng: dropout key of the head (needed when the head has dropout).

        Returns:
            Logits [N, num_classes].
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        rng = jax.random.PRNGKey(0) if rng is None else rng
        y, _ = self._stem.apply(params["stem"], x, train=True, mutable=["batch_stats", "intermediates"])
        for i, sp in enumerate(self.plan.slots):
            p = params["slots"][sp.slot.prefix]
            if mode == "pick":
                y = self._slot_pick(i, sp, p, y, gates)
            elif mode == "pair" and sp.path_label is not None:
                y = self._slot_pair(i, sp, p, y, gates, pairs)
            else:
                y = self._slot_soft(i, sp, p, y, gates)
        logits, _ = self._head.apply(params["head"], y, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": rng})
        return logits

    def _trace(self, slot_index: int, *event: Any) -> None:
        if self.on_path is not None:
            jax.debug.callback(functools.partial(self.on_path, slot_index, tuple(event)))

    def _choices(self, sp: SlotPlan, path: PathPlan, gates, kind: str) -> dict[str, Choice]:
        out: dict[str, Choice] = {}
        for knob in SHARED_KNOBS:
            if knob in sp.knobs:
                vals = sp.choices[sp.knobs.index(knob)]
                g = gates[sp.labels[sp.knobs.index(knob)]]
                out[knob] = Pick(vals, g) if kind == "pick" else Mix(vals, g)
            else:
                out[knob] = Fixed(path.fixed[knob])
        return out

    def _path_weights(self, sp: SlotPlan, gates) -> list[Any]:
        """Returns each path's total weight under independent per-label weights."""
        if len(sp.paths) == 1:
            return [1.0]
        if sp.path_label is not None:
            label = sp.labels[sp.path_label]
            moved = np.moveaxis(sp.option_path, sp.path_label, 0).reshape(len(sp.choices[sp.path_label]), -1)
            of_choice = moved[:, 0]
            g = gates[label]
            return [jnp.sum(jnp.where(jnp.asarray(of_choice == pi), g, 0.0))
                    for pi in range(len(sp.paths))]
        joint = jnp.ones(())
        for label in sp.labels:
            joint = joint[..., None] * gates[label]
        return [jnp.sum(jnp.where(jnp.asarray(sp.option_path == pi), joint, 0.0))
                for pi in range(len(sp.paths))]

    def _run_masked(self, i: int, sp: SlotPlan, pi: int, p, y, gates):
        path = sp.paths[pi]
        self._trace(i, "path", pi)
        return run_path(path, p[path.name], y, masked_call(path, self._choices(sp, path, gates, "mix")),
                        self.impl)

    def _slot_soft(self, i: int, sp: SlotPlan, p, y, gates):
        out = None
        for pi, w in enumerate(self._path_weights(sp, gates)):
            term = self._run_masked(i, sp, pi, p, y, gates)
            term = term if len(sp.paths) == 1 else w * term
            out = term if out is None else out + term
        return out

    def _slot_pair(self, i: int, sp: SlotPlan, p, y, gates, pairs):
        label = sp.labels[sp.path_label]
        moved = np.moveaxis(sp.option_path, sp.path_label, 0).reshape(len(sp.choices[sp.path_label]), -1)
        path_of_choice = jnp.asarray(moved[:, 0])
        branches = [lambda a, pi=pi: self._run_masked(i, sp, pi, p, a, gates)
                    for pi in range(len(sp.paths))]
        g = gates[label]
        out = None
        for j in range(2):
            c = pairs[label][j]
            term = g[c] * jax.lax.switch(path_of_choice[c], branches, y)
            out = term if out is None else out + term
        return out

    def _branch_index(self, sp: SlotPlan, gates) -> jax.Array:
        """Returns the traced index into ``sp.branches`` of the picked option."""
        if not sp.labels:
            return jnp.zeros((), jnp.int32)
        table = jnp.asarray(sp.option_branch)
        return table[tuple(jnp.asarray(gates[label]) for label in sp.labels)]

    def _slot_pick(self, i: int, sp: SlotPlan, p, y, gates):
        if self.pick == "masked":
            return self._slot_pick_masked(i, sp, p, y, gates)
        if self.pick == "flat":
            return self._slot_pick_flat(i, sp, p, y, gates)
        tree = sp.tree
        row = jnp.asarray(tree.index)[self._branch_index(sp, gates)]

        def at_mid(pi: int, mi: int):
            path = sp.paths[pi]
            ch = self._choices(sp, path, gates, "pick")
            sizes = tree.sizes[pi][mi]
            picks = [Pick(tuple(sizes[f]), row[2 + k]) for k, f in enumerate(SIZE_FIELDS)]

            def run(a):
                self._trace(i, "path", pi, tree.mids[pi][mi])
                on_run = None if self.on_path is None else (
                    lambda stage, value: self._trace(i, stage, value))
                call = picked_call(tree.mids[pi][mi], *picks, ch["bits_w"], ch["bits_a"], on_run)
                return run_path(path, p[path.name], a, call, self.impl)
            return run

        def of_path(pi: int):
            fns = [at_mid(pi, mi) for mi in range(len(tree.mids[pi]))]
            return fns[0] if len(fns) == 1 else lambda a: jax.lax.switch(row[1], fns, a)

        fns = [of_path(pi) for pi in range(len(sp.paths))]
        return fns[0](y) if len(fns) == 1 else jax.lax.switch(row[0], fns, y)

    def _slot_pick_masked(self, i: int, sp: SlotPlan, p, y, gates):
        """One ``lax.switch`` over the slot's paths; inside the picked path, the picked kernel,
        channel counts and ranks are masks of its largest weights (one-hot :class:`Mix`), the
        picked bit-widths the quantizer's grid at the traced index."""
        if sp.labels:
            table = jnp.asarray(sp.option_path)
            path_index = table[tuple(jnp.asarray(gates[label]) for label in sp.labels)]
        else:
            path_index = jnp.zeros((), jnp.int32)

        def run(pi: int):
            path = sp.paths[pi]
            choices = {}
            for knob, choice in self._choices(sp, path, gates, "pick").items():
                if isinstance(choice, Pick) and knob not in ("bits_w", "bits_a"):
                    choice = Mix(choice.values, jax.nn.one_hot(choice.index, len(choice.values)))
                choices[knob] = choice

            def body(a):
                self._trace(i, "path", pi)
                return run_path(path, p[path.name], a, masked_call(path, choices), self.impl)
            # rematerialized: a switch's residuals are the union over its branches (zeros
            # for the branches not taken); recomputing the picked path in the backward pass
            # keeps only its inputs. On mixed (batch 128): temporaries 493 vs 1822 MiB, the
            # same step time and compile time (experiments/bench/scale.py)
            return jax.checkpoint(body)

        fns = [run(pi) for pi in range(len(sp.paths))]
        return fns[0](y) if len(fns) == 1 else jax.lax.switch(path_index, fns, y)

    def _slot_pick_flat(self, i: int, sp: SlotPlan, p, y, gates):
        branch = self._branch_index(sp, gates)

        def make(bi: int):
            pi, shape = sp.branches[bi]
            path = sp.paths[pi]
            ch = self._choices(sp, path, gates, "pick")

            def run(a):
                self._trace(i, "branch", bi)
                return run_path(path, p[path.name], a, branch_call(path, shape, ch["bits_w"],
                                                                   ch["bits_a"]), self.impl)
            return run

        fns = [make(bi) for bi in range(len(sp.branches))]
        if len(fns) == 1:
            return fns[0](y)
        return jax.lax.switch(branch, fns, y)


def child_params(net: SuperNet, params: Mapping[str, Any], arch: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the Linen params of an Arch's child network, sliced from the supernet's weights.

    Args:
        net: the supernet.
        params: its weights.
        arch: a valid Arch of its space.

    Returns:
        A params tree for ``nas.model.build_model(space, arch)`` ({"stem", "<prefix>"..., "head"}).
    """
    arch = net.space.validate(arch)
    out = {"stem": params["stem"]["params"], "head": params["head"]["params"]}
    for sp in net.plan.slots:
        index = tuple(sp.choices[k].index(arch[label]) for k, label in enumerate(sp.labels))
        pi, shape = sp.branches[int(sp.option_branch[index] if index else 0)]
        path = sp.paths[pi]
        out[sp.slot.prefix] = slice_path_params(path, params["slots"][sp.slot.prefix][path.name],
                                                  shape)
    return out


def trainable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the trained leaves of supernet weights (the BN statistics of stem/head are not)."""
    return {"stem": params["stem"]["params"], "head": params["head"]["params"], "slots": params["slots"]}


def merge_trainable(params: Mapping[str, Any], trained: Mapping[str, Any]) -> dict[str, Any]:
    """Puts trained leaves back into a full supernet weight tree."""
    return {"stem": {"params": trained["stem"], "batch_stats": params["stem"]["batch_stats"]},
            "head": {"params": trained["head"], "batch_stats": params["head"]["batch_stats"]},
            "slots": trained["slots"]}
