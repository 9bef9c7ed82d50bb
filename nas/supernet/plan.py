"""The static plan of a supernet, derived from a Space: per slot, its decisions, weight-sharing
paths and the distinct shapes its options take.

Nothing here is a second description of the space: every size comes from ``slot.spec(values)``
(a :class:`~nas.spec.BlockSpec`) of the slot's options (``space.slot_options(slot)``).

A slot's options are grouped into **paths**: options with the same operator, candidate block,
activation and groups share one set of weights (sized to the largest option of the path). Inside
a path the factorized knobs (kernel, expand, width, se, rank, bits) are slices or masks of those
weights. A path's **shapes** are the distinct (mid channels, kernel, SE, ranks) tuples its options
need; ProxylessNAS's weight step switches between them so only the sampled one runs.

Example:
    >>> plan = SuperPlan.from_space(Space.by_name("tiny"))
    >>> plan.slots[0].labels        # ['s1_b1_op', 's1_b1_kernel']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from nas.space import Space, Slot
from nas.supernet.path_program import path_program, stage_ranks
from nas.spec import BlockSpec

#: Knobs whose values are shared-weight slices or masks inside one path.
SHARED_KNOBS = ("kernel", "expand", "width", "se", "rank", "bits_w", "bits_a")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The tensor sizes of one option of a path (what a slice of the path's weights needs).

    Attributes:
        mid: depthwise channels (mbconv: expanded and pruned; dwsep: cin; skip: 0).
        kernel: depthwise kernel size.
        se: squeeze channels (0 = no SE).
        rank_in: inner channels of the first 1x1 conv (mbconv expand / dwsep project) or None.
        rank_out: inner channels of the mbconv project conv, or None.
    """

    mid: int
    kernel: int
    se: int
    rank_in: int | None
    rank_out: int | None


def option_shape(spec: BlockSpec) -> Shape:
    """Returns the :class:`Shape` of a layer, read from its op program (see
    :mod:`nas.supernet.path_program`: mid = output width of its first kxk conv, ranks of its
    'rank_in' / 'rank_out' 1x1 convs)."""
    pp = path_program(spec)
    if not pp.ops:
        return Shape(0, 0, 0, None, None)
    rank_in, rank_out = stage_ranks(spec)
    return Shape(pp.mid, spec.kernel, spec.se_channels, rank_in, rank_out)


@dataclasses.dataclass
class PathPlan:
    """One weight-sharing path of a slot.

    Attributes:
        name: param-tree name ('mbconv', 'dwsep', 'skip', or the candidate block's name).
        spec: the path's largest BlockSpec (weights are allocated for it).
        shapes: the distinct shapes of its options, in first-seen order.
        max_rank_in, max_rank_out: largest inner rank of its factorized convs (0 = none).
        full_in, full_out: whether some option uses the unfactorized conv.
        kernels: kernel sizes its options use.
        fixed: the path's knob values where they do not vary (from its first option).
        specs: one option's BlockSpec per shape (parallel to `shapes`).
    """

    name: str
    spec: BlockSpec
    shapes: list[Shape]
    max_rank_in: int = 0
    max_rank_out: int = 0
    full_in: bool = True
    full_out: bool = True
    kernels: tuple[int, ...] = ()
    fixed: dict = dataclasses.field(default_factory=dict)
    specs: list[BlockSpec] = dataclasses.field(default_factory=list)

    def option_spec(self, shape: Shape) -> BlockSpec:
        """Returns the BlockSpec of an option of this path with `shape` (one of `shapes`)."""
        return self.specs[self.shapes.index(shape)]


@dataclasses.dataclass
class SlotPlan:
    """A slot's decisions, paths and option tables.

    Attributes:
        slot: the Space's slot.
        labels: its decision labels, in canonical order.
        knobs: the knob of each label ('block' for candidates).
        choices: the allowed values of each label.
        paths: its weight-sharing paths.
        path_label: index into `labels` of the one label that picks the path (None when the
            slot has one path, or when several labels together pick it).
        option_path: int array [n_choice of each label...] -> path index.
        option_branch: int array [...] -> index into `branches`.
        branches: (path index, Shape) of every distinct shape of every path.
        tree: the nested switches of ProxylessNAS's single-path forward (:class:`PickTree`).
    """

    slot: Slot
    labels: list[str]
    knobs: list[str]
    choices: list[tuple]
    paths: list[PathPlan]
    path_label: int | None
    option_path: np.ndarray
    option_branch: np.ndarray
    branches: list[tuple[int, Shape]]
    tree: PickTree | None = None

    def values(self, index: tuple[int, ...]) -> dict[str, Any]:
        """Returns the slot's {knob: value} decisions of a tuple of choice indices."""
        return {k: c[i] for k, c, i in zip(self.knobs, self.choices, index)}


@dataclasses.dataclass
class PickTree:
    """ProxylessNAS's single-path forward of a slot as nested switches, one per knob.

    A slot's option runs as: switch over paths -> switch over the path's channel counts (every
    tensor after the first 1x1 conv has that size, so this one must be static) -> inside, one
    switch around each op a remaining size changes (depthwise kernel, SE, each 1x1 conv's rank).
    The traced ops then grow with the sum of those choices per channel count, not with the
    product of all knob choices (one switch over every distinct shape).

    Attributes:
        mids: per path, its distinct channel counts.
        sizes: per path, per channel count: {'kernel', 'se', 'rank_in', 'rank_out': values}.
        index: int array [n_branches, 6] -> (path, mid, kernel, se, rank_in, rank_out) indices
            into ``range(len(paths))``, ``mids[path]`` and ``sizes[path][mid][...]``.
    """

    mids: list[list[int]]
    sizes: list[list[dict[str, list]]]
    index: np.ndarray


SIZE_FIELDS = ("kernel", "se", "rank_in", "rank_out")


def pick_tree(paths: list["PathPlan"], branches: list[tuple[int, "Shape"]]) -> PickTree:
    """Builds the :class:`PickTree` of a slot from its paths and branches (path, Shape)."""
    mids = [[] for _ in paths]
    for pi, shape in branches:
        if shape.mid not in mids[pi]:
            mids[pi].append(shape.mid)
    sizes = [[{f: [] for f in SIZE_FIELDS} for _ in m] for m in mids]
    for pi, shape in branches:
        entry = sizes[pi][mids[pi].index(shape.mid)]
        for f in SIZE_FIELDS:
            if getattr(shape, f) not in entry[f]:
                entry[f].append(getattr(shape, f))
    index = np.zeros((max(len(branches), 1), 6), np.int32)
    for bi, (pi, shape) in enumerate(branches):
        mi = mids[pi].index(shape.mid)
        index[bi] = [pi, mi, *(sizes[pi][mi][f].index(getattr(shape, f)) for f in SIZE_FIELDS)]
    return PickTree(mids, sizes, index)


def _path_name(slot: Slot, values: Mapping[str, Any], resolved: Mapping[str, Any]) -> str:
    if "block" in values and len(slot.candidates) > 1:
        base = str(values["block"])
    else:
        base = resolved["op"]
    extras = []
    if resolved["act"] != slot.fixed.get("act") and "act" in slot.choices:
        extras.append(resolved["act"])
    if resolved["groups"] != 1 and "groups" in slot.choices:
        extras.append(f"g{resolved['groups']}")
    return "_".join([base, *extras])


def _largest_spec(specs: list[BlockSpec]) -> BlockSpec:
    """Returns a spec with every size at its maximum over `specs` (same op)."""
    base = specs[0]
    if base.op == "skip":
        return base
    expand_width = max(specs, key=lambda s: s.mid_channels)
    return dataclasses.replace(
        base, kernel=max(s.kernel for s in specs), expand=expand_width.expand,
        width=expand_width.width, se_ratio=max(s.se_ratio for s in specs),
        bits_w=32, bits_a=32, rank=None)


def plan_slot(space: Space, slot: Slot) -> SlotPlan:
    """Builds the plan of one slot from the Space.

    Raises:
        ValueError: a path combines grouped 1x1 convs with varying channel counts (first-k
            slicing would break the groups; give such candidates their own path).
    """
    decisions = [(label, vals) for label, vals in space.decisions()
                 if label.startswith(slot.prefix + "_")]
    labels = [label for label, _ in decisions]
    knobs = [label[len(slot.prefix) + 1:] for label in labels]
    choices = [tuple(vals) for _, vals in decisions]
    dims = [len(c) for c in choices] or [1]
    option_path = np.zeros(dims, np.int32)
    option_branch = np.zeros(dims, np.int32)
    path_index: dict[str, int] = {}
    path_specs: list[list[BlockSpec]] = []
    path_fixed: list[dict] = []
    option_specs: dict[tuple, tuple[int, BlockSpec]] = {}
    for index in np.ndindex(*dims):
        values = {k: c[i] for k, c, i in zip(knobs, choices, index)}
        full = space._slot_values(slot, {slot.label(k): v for k, v in values.items()})
        spec = slot.spec(full)
        name = _path_name(slot, full, slot.resolve(full))
        if name not in path_index:
            path_index[name] = len(path_specs)
            path_specs.append([])
            path_fixed.append(slot.resolve(full))
        pi = path_index[name]
        path_specs[pi].append(spec)
        option_specs[index] = (pi, spec)
        option_path[index] = pi
    paths = []
    for name, pi in sorted(path_index.items(), key=lambda kv: kv[1]):
        specs = path_specs[pi]
        big = _largest_spec(specs)
        if big.groups != 1 and len({s.mid_channels for s in specs}) > 1:
            raise ValueError(f"slot {slot.prefix}: path {name!r} has grouped 1x1 convs with "
                             "varying channels; weight slicing cannot keep the groups")
        shapes: list[Shape] = []
        shape_specs: list[BlockSpec] = []
        for s in specs:
            shape = option_shape(s)
            if shape not in shapes:
                shapes.append(shape)
                shape_specs.append(s)
        paths.append(PathPlan(
            name=name, spec=big, shapes=shapes,
            max_rank_in=max((sh.rank_in or 0) for sh in shapes),
            max_rank_out=max((sh.rank_out or 0) for sh in shapes),
            full_in=any(sh.rank_in is None for sh in shapes),
            full_out=any(sh.rank_out is None for sh in shapes),
            kernels=tuple(sorted({sh.kernel for sh in shapes})), fixed=path_fixed[pi],
            specs=shape_specs))
    branches: list[tuple[int, Shape]] = []
    for index, (pi, spec) in option_specs.items():
        key = (pi, option_shape(spec))
        if key not in branches:
            branches.append(key)
        option_branch[index] = branches.index(key)
    path_label = None
    if len(paths) > 1:
        for li in range(len(labels)):
            moved = np.moveaxis(option_path, li, 0).reshape(dims[li], -1)
            if np.all(moved == moved[:, :1]):
                path_label = li
                break
    return SlotPlan(slot, labels, knobs, choices, paths, path_label, option_path, option_branch,
                    branches, pick_tree(paths, branches))


@dataclasses.dataclass
class SuperPlan:
    """The plan of a whole supernet.

    Attributes:
        space: the Space.
        slots: one :class:`SlotPlan` per slot.
    """

    space: Space
    slots: list[SlotPlan]

    @classmethod
    def from_space(cls, space: Space) -> "SuperPlan":
        """Derives the plan from a Space."""
        return cls(space, [plan_slot(space, slot) for slot in space.slots])

    def labels(self) -> list[str]:
        """Returns every decision label (the space's canonical order)."""
        return self.space.labels()

    def num_paths(self) -> int:
        """Returns the number of weight-sharing paths summed over slots."""
        return sum(len(s.paths) for s in self.slots)
