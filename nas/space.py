"""Search spaces declared as data, and Archs: points of a space.

A Space is read from YAML (``search_spaces/NAME.yaml``) or a dict: input resolution and
channels, a stem, stages of layer slots (channels, stride, repeats) with per-stage knobs, and a
head. Each knob of a stage is either fixed (a scalar) or searchable (a list of choices). A stage
may also list joint ``candidates`` (named presets of several knobs, as FBNet's 9 candidate
blocks): they become one decision labelled ``sX_bY_block``.
A stage (or ``defaults``) with ``skip_projection: true`` allows 'skip' where a layer changes
shape, as a 1x1 conv -> BN -> act (op 'skip_proj'); otherwise 'skip' is dropped there.

The grammar (every field checked, one error line naming it) is :mod:`nas.space_parse`.

An Arch is a plain JSON mapping ``{label: value}`` with one entry per searchable decision, labels
such as ``s3_b1_kernel`` (stage 3, block 1, both counted from 1). Everything else (supernet,
latency keys, metrics, export) derives from ``Space.block_specs(arch)``.

Example:
    >>> space = Space.by_name("tiny")
    >>> arch = space.sample(0)
    >>> specs = space.block_specs(arch)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from nas.errors import NasInputError
from nas.knobs import normalize_knob, relevant_knobs
from nas.slot import Slot
from nas.space_parse import SpaceParser
from nas.spec import BlockSpec
from nas.yaml_file import check_plain_tree, read_yaml_file

Arch = dict[str, Any]


def repo_root() -> Path:
    """Returns the project's root folder (the one holding ``search_spaces/``)."""
    return Path(__file__).resolve().parents[1]


def spaces_dir() -> Path:
    """Returns the folder of shipped spaces (override with the NAS_SPACES_DIR variable)."""
    return Path(os.environ.get("NAS_SPACES_DIR", repo_root() / "search_spaces"))


def shipped_space_names() -> list[str]:
    """Returns the names of the spaces shipped in ``search_spaces/``."""
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


class Space:
    """A search space: fixed skeleton plus per-slot decisions.

    Build one with :meth:`by_name`, :meth:`from_yaml` or :meth:`from_dict`.
    """

    def __init__(self, definition: Mapping[str, Any], source: str | None = None):
        """Parses and checks a space definition.

        Args:
            definition: the space as a mapping (the parsed YAML).
            source: the file it came from, named in errors.

        Raises:
            NasInputError: the definition is malformed (the message names the field).
        """
        self.source = source
        self.file: Path | None = None  # the YAML file it was read from (set by from_yaml)
        check_plain_tree(definition, source)
        self.definition = json.loads(json.dumps(definition))  # plain, JSON-able copy
        parsed = SpaceParser(source).parse(definition)
        self.name = parsed.name
        self.description = parsed.description
        self.resolution = parsed.resolution
        self.in_channels = parsed.in_channels
        self.num_classes = parsed.num_classes
        self.stem_spec = parsed.stem_spec
        self.slots: tuple[Slot, ...] = parsed.slots
        self.head_spec = parsed.head_spec
        self._decisions = [(slot, knob, slot.label(knob), vals)
                           for slot in self.slots for knob, vals in self._slot_decisions(slot)]
        self._by_label = {label: (slot, knob, vals) for slot, knob, label, vals in self._decisions}

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Space":
        """Reads a space from a YAML file (safe loader); ``file`` is set to its resolved path.

        Raises:
            NasInputError: the file is missing, not YAML, or not a valid space.
        """
        space = cls(read_yaml_file(path, "space file"), str(Path(path)))
        space.file = Path(path).resolve()
        return space

    @classmethod
    def by_name(cls, name: str) -> "Space":
        """Returns a shipped space by name, or reads it from a YAML path.

        Args:
            name: a shipped space's name (see :func:`shipped_space_names`) or a path to YAML.
        """
        if not isinstance(name, str) or not name:
            raise NasInputError(f"{name!r} is not allowed; expected a shipped space name or a "
                                "YAML path", field="space")
        if name.endswith((".yaml", ".yml")) or os.sep in name:
            return cls.from_yaml(name)
        if name not in shipped_space_names():
            raise NasInputError(
                f"unknown space {name!r}; shipped spaces: {shipped_space_names()} (or give a YAML path)",
                field="space")
        return cls.from_yaml(spaces_dir() / f"{name}.yaml")

    @classmethod
    def from_dict(cls, definition: Mapping[str, Any], source: str | None = None) -> "Space":
        """Builds a space from a mapping (e.g. one embedded in an arch JSON file)."""
        return cls(definition, source)

    @staticmethod
    def _slot_decisions(slot: Slot) -> Iterator[tuple[str, tuple]]:
        if len(slot.candidates) > 1:
            yield "block", tuple(slot.candidates)
        for knob, vals in slot.choices.items():
            if len(vals) > 1:
                yield knob, vals

    # ---------------------------------------------------------------------------- decisions
    def labels(self) -> list[str]:
        """Returns the Arch labels (searchable decisions), in canonical order."""
        return [label for _, _, label, _ in self._decisions]

    def choices(self, label: str) -> tuple:
        """Returns the allowed values of one label."""
        return self._by_label[label][2]

    def decisions(self) -> list[tuple[str, tuple]]:
        """Returns [(label, choices)] for every searchable decision, in canonical order."""
        return [(label, vals) for _, _, label, vals in self._decisions]

    def cardinalities(self) -> list[int]:
        """Returns the number of choices of each decision (for encoders and controllers)."""
        return [len(vals) for _, _, _, vals in self._decisions]

    def _distinct_options(self, slot: Slot) -> int:
        """Returns how many different layers a slot can hold (irrelevant knobs collapsed)."""
        return len({slot.spec(values).key() for values in self.slot_options(slot)})

    def size(self) -> int:
        """Returns the number of distinct networks (a skip layer's kernel does not count)."""
        return math.prod(self._distinct_options(slot) for slot in self.slots)

    def log10_size(self) -> float:
        """Returns log10 of :meth:`size`, for printing as 10^N."""
        return float(sum(math.log10(self._distinct_options(slot)) for slot in self.slots))

    def _slot_values(self, slot: Slot, arch: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        if len(slot.candidates) == 1:
            values["block"] = next(iter(slot.candidates))
        for knob, vals in slot.choices.items():
            if len(vals) == 1:
                values[knob] = vals[0]
        for knob, _ in self._slot_decisions(slot):
            values[knob] = arch[slot.label(knob)]
        return values

    # ------------------------------------------------------------------------------- Archs
    def validate(self, arch: Any, source: str | None = None) -> Arch:
        """Checks an Arch against the space and returns its canonical form.

        Args:
            arch: a mapping {label: value}.
            source: the file it came from, named in errors.

        Returns:
            The canonical Arch (see :meth:`canonical`).

        Raises:
            NasInputError: a label is missing or unknown, or a value is not among its choices.
        """
        if not isinstance(arch, Mapping):
            raise NasInputError(f"expected a mapping {{label: value}}, got {type(arch).__name__}", source, "arch")
        unknown = sorted(set(arch) - set(self._by_label))
        if unknown:
            raise NasInputError(f"unknown label for space {self.name!r}; labels look like "
                                f"{self.labels()[:3]}", source, unknown[0])
        out = {}
        for slot, knob, label, vals in self._decisions:
            if label not in arch:
                raise NasInputError(f"missing; allowed values: {list(vals)}", source, label)
            value = arch[label]
            if knob != "block":
                try:
                    value = normalize_knob(knob, value, label, source)
                except NasInputError:
                    value = object()  # reported below with the allowed values
            if value not in vals or (isinstance(value, bool) != isinstance(vals[0], bool)):
                raise NasInputError(f"{arch[label]!r} is not allowed; allowed values: {list(vals)}",
                                    source, label)
            out[label] = value
        return self.canonical(out)

    def canonical(self, arch: Mapping[str, Any]) -> Arch:
        """Returns the Arch with irrelevant decisions set to their first choice.

        A skip layer's kernel, or a dwsep layer's expansion ratio, changes nothing; setting such
        labels to their first choice makes equal networks have equal Archs (and ids).
        """
        out = {}
        for slot in self.slots:
            values = self._slot_values(slot, arch)
            op = slot.resolve(values)["op"]
            relevant = relevant_knobs(op)
            for knob, vals in self._slot_decisions(slot):
                label = slot.label(knob)
                out[label] = arch[label] if knob == "block" or knob in relevant else vals[0]
        return out

    def arch_id(self, arch: Mapping[str, Any]) -> str:
        """Returns a short stable id: a hash of the space name and the canonical Arch JSON."""
        text = json.dumps({"space": self.name, "arch": self.canonical(arch)}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @staticmethod
    def _rng(rng: Any) -> np.random.Generator:
        return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def sample(self, rng: Any = None) -> Arch:
        """Samples an Arch uniformly over every decision.

        Args:
            rng: a numpy Generator or an integer seed.

        Returns:
            A canonical Arch.
        """
        rng = self._rng(rng)
        return self.decode([int(rng.integers(n)) for n in self.cardinalities()])

    def mutate(self, arch: Mapping[str, Any], rng: Any = None) -> Arch:
        """Returns a copy of `arch` with one decision changed to another value that matters.

        Args:
            arch: a valid Arch.
            rng: a numpy Generator or an integer seed.

        Returns:
            A canonical Arch that differs from ``canonical(arch)`` (when the space has more than
            one Arch).
        """
        rng = self._rng(rng)
        base = self.canonical(arch)
        labels = self.labels()
        for _ in range(100):
            if not labels:
                return base
            label = labels[int(rng.integers(len(labels)))]
            vals = [v for v in self.choices(label) if v != base[label]]
            child = dict(base, **{label: vals[int(rng.integers(len(vals)))]})
            child = self.canonical(child)
            if child != base:
                return child
        return base

    def encode(self, arch: Mapping[str, Any]) -> list[int]:
        """Returns the Arch as a vector of choice indices (one per decision, canonical order)."""
        arch = self.validate(arch)
        return [vals.index(arch[label]) for _, _, label, vals in self._decisions]

    def decode(self, indices: Sequence[int]) -> Arch:
        """Returns the canonical Arch of a vector of choice indices.

        Raises:
            NasInputError: the vector has the wrong length or an index is out of range.
        """
        if len(indices) != len(self._decisions):
            raise NasInputError(f"expected {len(self._decisions)} indices, got {len(indices)}",
                                field="indices")
        arch = {}
        for i, ((_, _, label, vals), idx) in enumerate(zip(self._decisions, indices)):
            if not 0 <= int(idx) < len(vals):
                raise NasInputError(f"index {idx} out of range [0, {len(vals)})", field=label)
            arch[label] = vals[int(idx)]
        return self.canonical(arch)

    # ------------------------------------------------------------------------------ shapes
    def block_specs(self, arch: Mapping[str, Any]) -> list[BlockSpec]:
        """Returns the layers of the network an Arch describes: stem, one per slot, head.

        Args:
            arch: a valid Arch (validated here).
        """
        arch = self.validate(arch)
        return [self.stem_spec] + [slot.spec(self._slot_values(slot, arch)) for slot in self.slots] \
            + [self.head_spec]

    def slot_options(self, slot: Slot) -> list[dict[str, Any]]:
        """Returns every distinct decision assignment of one slot ({knob: value} dicts)."""
        options: list[dict[str, Any]] = [{}]
        for knob, vals in self._slot_decisions(slot):
            options = [dict(o, **{knob: v}) for o in options for v in vals]
        return [self._slot_values(slot, {slot.label(k): v for k, v in o.items()}) for o in options]

    def unique_block_specs(self) -> list[BlockSpec]:
        """Returns every distinct BlockSpec (with its input shape) any Arch can contain.

        This is what a latency table must measure: stem, head, and each slot's options.
        """
        seen: dict[str, BlockSpec] = {}
        for spec in [self.stem_spec, self.head_spec]:
            seen.setdefault(spec.key(), spec)
        for slot in self.slots:
            for values in self.slot_options(slot):
                spec = slot.spec(values)
                seen.setdefault(spec.key(), spec)
        return list(seen.values())

    def summary(self) -> dict[str, Any]:
        """Returns a JSON-able description: shapes, decisions and size."""
        return {
            "name": self.name,
            "description": self.description,
            "input": [*self.resolution, self.in_channels],
            "num_classes": self.num_classes,
            "slots": len(self.slots),
            "decisions": len(self._decisions),
            "log10_size": round(self.log10_size(), 2),
            "unique_block_specs": len(self.unique_block_specs()),
            "labels": {label: list(vals) for label, vals in self.decisions()},
        }

    def to_dict(self) -> dict[str, Any]:
        """Returns the space's definition (as read), for embedding in files."""
        return json.loads(json.dumps(self.definition))


def resolve_space(space: str | Mapping[str, Any], source: str | None = None) -> Space:
    """Returns the Space a config names (shipped name, YAML path or inline definition).

    Args:
        space: a shipped space's name, a YAML path, or an inline definition.
        source: the config file, for error messages.

    Returns:
        The Space.

    Raises:
        NasInputError: naming the ``space`` field of the config.
    """
    try:
        if isinstance(space, str):
            return Space.by_name(space)
        return Space.from_dict(space, f"{source}: space" if source else "space")
    except NasInputError as e:
        raise NasInputError(e.message, e.source or source, f"space.{e.field}" if e.field else "space") from None
