"""Latency lookup tables: load (schema-checked), save (atomic), predict and expected latency.

A table holds, for one Space and one backend, the measured latency of every distinct layer the
Space can produce (keys are ``BlockSpec.key()`` at the backend's effective precision, see
:mod:`nas.latency.precision`), plus end-to-end calibration measurements and the model fitted to
them (:mod:`nas.latency.calibrate`). The file format is JSON (``latency_tables/README.md``).

Example:
    >>> table = LatencyTable.load("latency_tables/onnxruntime-cpu/tiny.json")
    >>> table.predict(table.space.sample(0))            # ms
    >>> table.expected({label: probs, ...})               # differentiable in JAX
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nas.errors import NasInputError
from nas.latency.calibrate import IDENTITY_MODEL, apply_model, class_stats, layer_contribution
from nas.latency.precision import RULES, effective_key
from nas.latency.schema import FORMAT, VERSION, check_table_json, content_checksum
from nas.metrics import layer_costs
from nas.safe_write import write_json_atomic as write_json
from nas.space import Arch, Space, shipped_space_names
from nas.spec import BlockSpec
from nas.yaml_file import read_json_file

_HASH_IGNORED = ("description", "source")


def space_hash(space: Space) -> str:
    """Returns 'sha256:<hex>' of the space definition (description and source ignored)."""
    body = {k: v for k, v in space.to_dict().items() if k not in _HASH_IGNORED}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def build_command(space_name: str, backend: str, path: str | None) -> str:
    """Returns the command that measures (or resumes measuring) a table."""
    return f"nas latency build --space {space_name} --backend {backend} --out {path or 'FILE'}"


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes JSON to `path` through a temporary file and os.replace (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data, indent=1, default=None)


def read_table_json(path: str | os.PathLike) -> dict:
    """Reads and checks a table file (schema, timing order, checksum).

    Raises:
        NasInputError: unreadable, not JSON, or not a valid table (one line).
    """
    source = str(path)
    data = read_json_file(path, "latency table", "; build one with 'nas latency build'")
    check_table_json(data, source)
    return data


def new_table_data(space: Space, backend: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict:
    """Returns the content of an empty table (no entries yet).

    Args:
        space: the Space measured.
        backend: {"name", "precision_rule", "versions", "device"}.
        provenance: {"cpu_model", "cores", "threads", "batch", "date", "timing", ...}.
    """
    data = {"format": FORMAT, "version": VERSION, "complete": False,
            "space": {"name": space.name, "hash": space_hash(space)},
            "backend": dict(backend), "provenance": dict(provenance), "entries": {}}
    data["checksum"] = content_checksum(data)
    return data


class LatencyTable:
    """A loaded, checked latency table bound to its Space.

    Attributes:
        data: the file's content.
        source: the file it came from (named in errors).
        space: the Space it measures.
    """

    def __init__(self, data: dict, space: Space, source: str | None = None):
        self.data = data
        self.space = space
        self.source = source
        self._slot_tensors: tuple[np.ndarray, np.ndarray, float] | None = None

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike, space: Space | None = None,
             backend: str | None = None) -> "LatencyTable":
        """Loads a table and checks it agrees with its Space and backend.

        Args:
            path: the table file.
            space: the Space it must measure (default: the shipped space it names).
            backend: the backend it must have been measured with (default: any).

        Raises:
            NasInputError: malformed file, or a table of another space definition, backend or
                precision rule (one line naming the file, the field and the fix).
        """
        data = read_table_json(path)
        source = str(path)
        name = data["backend"]["name"]
        if backend is not None and name != backend:
            raise NasInputError(f"table was measured with backend {name!r}, not {backend!r}; "
                                f"build one with '{build_command(data['space']['name'], backend, 'FILE')}'",
                                source, "backend.name")
        rule = data["backend"]["precision_rule"]
        if name not in RULES or RULES[name] != rule:
            raise NasInputError(f"backend {name!r} with precision rule {rule!r} is not one this "
                                f"version reads (known: {RULES}); rebuild the table", source,
                                "backend.precision_rule")
        want = data["space"]["name"]
        if space is None:
            if want not in shipped_space_names():
                raise NasInputError(f"table measures space {want!r}, which is not a shipped space; "
                                    "give its YAML file (--space PATH)", source, "space.name")
            space = Space.by_name(want)
        if space.name != want:
            raise NasInputError(f"table measures space {want!r}, not {space.name!r}; build one with "
                                f"'{build_command(space.name, name, 'FILE')}'", source, "space.name")
        if space_hash(space) != data["space"]["hash"]:
            raise NasInputError(f"table was built for another definition of space {want!r} (its "
                                "hash differs); rebuild it with "
                                f"'{build_command(want, name, source)}' into a new file", source,
                                "space.hash")
        return cls(data, space, source)

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Writes the table atomically (refreshing its checksum)."""
        self.data["checksum"] = content_checksum(self.data)
        write_json_atomic(path or self.source, self.data)

    # ----------------------------------------------------------------------------- metadata
    @property
    def backend(self) -> str:
        """The backend's name."""
        return self.data["backend"]["name"]

    @property
    def remote_device(self) -> str | None:
        """The device a table imported from a measurement bundle was measured on (None: measured
        by this package on its own machine, so it can be re-measured here)."""
        remote = self.data["provenance"].get("remote")
        return None if not remote else str(self.data["backend"]["device"])

    @property
    def rule(self) -> str:
        """The backend's precision rule."""
        return self.data["backend"]["precision_rule"]

    @property
    def entries(self) -> dict[str, dict]:
        """{key: {median_ms, p10_ms, p90_ms, n}}."""
        return self.data["entries"]

    @property
    def model(self) -> dict:
        """The calibrated model (the plain sum when the table has none)."""
        return self.data.get("calibration", {}).get("model") or IDENTITY_MODEL

    def key(self, spec: BlockSpec) -> str:
        """Returns the table key of a layer (at the backend's effective precision)."""
        return effective_key(spec, self.rule)

    def entry_ms(self, key: str) -> float:
        """Returns the median latency (ms) of one key.

        Raises:
            NasInputError: the key is missing (names it and the command that measures it).
        """
        entry = self.entries.get(key)
        if entry is None:
            raise NasInputError(
                f"no entry for layer {key}; measure it with "
                f"'{build_command(self.space.name, self.backend, self.source)}' (a build resumes "
                "and measures only missing keys)", self.source, f"entries.{key}")
        return float(entry["median_ms"])

    # ----------------------------------------------------------------------------- predict
    def network_keys(self, specs: Sequence[BlockSpec]) -> list[str]:
        """Returns the table keys of a network's layers (checking each is present)."""
        keys = [self.key(s) for s in specs]
        for k in keys:
            self.entry_ms(k)
        return keys

    def plain_sum(self, arch: Mapping[str, Any]) -> float:
        """Returns the plain sum of the entries of an Arch's layers (ms), no calibration."""
        return sum(self.entry_ms(k) for k in self.network_keys(self.space.block_specs(arch)))

    def predict_specs(self, specs: Sequence[BlockSpec]) -> float:
        """Returns the calibrated latency (ms) of a network given as its layers."""
        return apply_model(self.model, class_stats(self.network_keys(specs), self.entries))

    def predict(self, arch: Mapping[str, Any]) -> float:
        """Returns the predicted end-to-end latency (ms) of an Arch.

        The sum of its layers' entries, corrected by the calibrated model (per-call overhead and
        per-class factors, see :mod:`nas.latency.calibrate`).

        Raises:
            NasInputError: invalid Arch, or a layer missing from the table.
        """
        return self.predict_specs(self.space.block_specs(arch))

    def predict_many(self, archs: Sequence[Mapping[str, Any]]) -> list[float]:
        """Returns :meth:`predict` of many valid Archs at once (each slot's contribution is
        computed once per distinct choice of that slot and then looked up).

        Args:
            archs: canonical Archs of the table's space (:meth:`Space.validate`).
        """
        space, model = self.space, self.model
        fixed = float(model["intercept_ms"]) + sum(
            layer_contribution(model, self.key(s), self.entry_ms(self.key(s)))
            for s in (space.stem_spec, space.head_spec))
        slot_labels = [[lb for lb in space.labels() if lb.startswith(slot.prefix + "_")]
                       for slot in space.slots]
        caches: list[dict[tuple, float]] = [{} for _ in space.slots]
        out = []
        for arch in archs:
            total = fixed
            for slot, labels, cache in zip(space.slots, slot_labels, caches):
                choice = tuple(arch[lb] for lb in labels)
                if choice not in cache:
                    spec = space.block_specs(arch)[1 + space.slots.index(slot)]
                    cache[choice] = layer_contribution(model, self.key(spec),
                                                       self.entry_ms(self.key(spec)))
                total += cache[choice]
            out.append(total)
        return out

    def layer_ms(self, key: str) -> float:
        """Returns one layer's contribution to :meth:`predict` (ms): scale * median + offset."""
        return layer_contribution(self.model, key, self.entry_ms(key))

    # ---------------------------------------------------------------------------- expected
    def _options(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Precomputes every slot option's contribution and where its probability comes from.

        Returns:
            (contrib [n_options] ms, index [n_options, max_decisions] into the concatenation of
            all labels' probability vectors followed by a constant 1, fixed ms: intercept plus
            stem and head).
        """
        if self._slot_tensors is None:
            labels = self.space.labels()
            offset, start = {}, 0
            for label in labels:
                offset[label] = start
                start += len(self.space.choices(label))
            one = start  # index of the constant 1 appended to the probabilities
            rows, contrib = [], []
            for slot in self.space.slots:
                mine = [label for label in labels if label.startswith(slot.prefix + "_")]
                for values in self.space.slot_options(slot):
                    row = []
                    for label in mine:
                        knob = label[len(slot.prefix) + 1:]
                        row.append(offset[label] + self.space.choices(label).index(values[knob]))
                    rows.append(row)
                    contrib.append(self.layer_ms(self.key(slot.spec(values))))
            width = max([len(r) for r in rows] + [1])
            index = np.array([r + [one] * (width - len(r)) for r in rows], np.int32)
            fixed = self.model["intercept_ms"] + sum(
                self.layer_ms(self.key(s)) for s in (self.space.stem_spec, self.space.head_spec))
            self._slot_tensors = (np.asarray(contrib, np.float32), index, float(fixed))
        return self._slot_tensors

    def expected(self, arch_probs: Mapping[str, Any]):
        """Returns the expected latency (ms) under independent per-decision probabilities.

        For a slot with several decisions the expectation runs over the product distribution of
        its options: each option's contribution (precomputed) times the product of its choices'
        probabilities. Equals :meth:`predict` on one-hot probabilities; differentiable and
        jittable in JAX (a gather, a product and a dot, whatever the space's size).

        Args:
            arch_probs: {label: probability vector over ``space.choices(label)``} for every
                label of the space.

        Returns:
            A JAX scalar (ms).

        Raises:
            NasInputError: a label is missing or a vector has the wrong length.
        """
        import jax.numpy as jnp

        contrib, index, fixed = self._options()
        parts = []
        for label in self.space.labels():
            if label not in arch_probs:
                raise NasInputError("missing probability vector", field=label)
            p = jnp.asarray(arch_probs[label], jnp.float32)
            n = len(self.space.choices(label))
            if p.shape != (n,):
                raise NasInputError(f"probability vector has shape {p.shape}, expected ({n},) "
                                    "(one per choice)", field=label)
            parts.append(p)
        probs = jnp.concatenate(parts + [jnp.ones((1,), jnp.float32)])
        weights = jnp.prod(probs[index], axis=1)
        return fixed + jnp.dot(weights, jnp.asarray(contrib))

    # ------------------------------------------------------------------------------ energy
    def energy_mj(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Returns the energy of an Arch (mJ): table entries where present, else the estimate.

        Returns:
            {"energy_mj": float, "source": "measured" | "estimated"} ("estimated" when any layer
            comes from :mod:`nas.metrics`' per-operation estimate).
        """
        table = self.data.get("energy", {})
        total, sources = 0.0, set()
        for spec in self.space.block_specs(arch):
            entry = table.get(self.key(spec))  # measured entries: at the effective precision
            if entry is None or entry["source"] != "measured":
                entry = table.get(spec.key())
            if entry is None:
                entry = {"energy_mj": layer_costs(spec)["energy_pj"] * 1e-9, "source": "estimated"}
            total += entry["energy_mj"]
            sources.add(entry["source"])
        return {"energy_mj": total, "source": "measured" if sources == {"measured"} else "estimated"}


def sample_archs(space: Space, n: int, seed: int) -> list[Arch]:
    """Returns `n` distinct random Archs (fewer if the space is smaller), reproducibly."""
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    for _ in range(20 * n):
        arch = space.sample(rng)
        aid = space.arch_id(arch)
        if aid not in seen:
            seen.add(aid)
            out.append(arch)
        if len(out) == n:
            break
    return out
