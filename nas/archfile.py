"""Arch JSON files: an Arch together with the space it belongs to.

File format (JSON)::

    {"space": "tiny",            # a shipped space name, a YAML path, or an inline definition
     "arch": {"s1_b1_kernel": 5, ...},
     "meta": {"source": "...", ...}}   # optional, free-form

A bare mapping ``{label: value}`` is accepted too when the space is given separately.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from nas.errors import NasInputError
from nas.space import Arch, Space
from nas.yaml_file import read_json_file

_FILE_KEYS = {"space", "arch", "meta"}


class ArchFile:
    """An Arch, its Space and free-form metadata.

    Attributes:
        space: the Space the Arch belongs to.
        arch: the canonical Arch.
        meta: metadata (source, name, metrics...).
    """

    def __init__(self, space: Space, arch: Arch, meta: Mapping[str, Any] | None = None):
        self.space = space
        self.arch = space.validate(arch)
        self.meta = dict(meta or {})

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON-able file content; a shipped space is referenced by name."""
        shipped = self.space.source and Path(self.space.source).parent.resolve() == \
            Path(self.space.source).parent.resolve() and _is_shipped(self.space)
        space = self.space.name if shipped else self.space.to_dict()
        out = {"space": space, "arch": self.arch}
        if self.meta:
            out["meta"] = self.meta
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes the file atomically (a temporary file renamed over the target)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _is_shipped(space: Space) -> bool:
    from nas.space import spaces_dir
    if not space.source:
        return False
    return Path(space.source).resolve() == (spaces_dir() / f"{space.name}.yaml").resolve()


def load_arch(path: str | os.PathLike, space: Space | str | None = None) -> ArchFile:
    """Reads an arch JSON file.

    Args:
        path: the JSON file.
        space: the Space (or its name) to use when the file holds a bare mapping; if the file
            names a space too, the two must agree.

    Returns:
        The ArchFile with a validated, canonical Arch.

    Raises:
        NasInputError: unreadable file, invalid JSON, unknown space, or an invalid Arch.
    """
    path = Path(path)
    src = str(path)
    data = read_json_file(path, "arch file")
    if isinstance(space, str):
        space = Space.by_name(space)
    if not isinstance(data, dict):
        raise NasInputError("expected a JSON object {\"space\": ..., \"arch\": {...}}", src)
    if "arch" in data:
        unknown = sorted(set(data) - _FILE_KEYS)
        if unknown:
            raise NasInputError(f"unknown field; allowed fields: {sorted(_FILE_KEYS)}", src, unknown[0])
        file_space = data.get("space")
        if file_space is None and space is None:
            raise NasInputError("missing; name the space (e.g. \"tiny\") or embed its definition", src, "space")
        if file_space is not None:
            try:
                if isinstance(file_space, str):
                    resolved = Space.by_name(file_space)
                elif isinstance(file_space, dict):
                    resolved = Space.from_dict(file_space, f"{src}: space")
                else:
                    raise NasInputError("expected a space name or an inline space definition", src, "space")
            except NasInputError as e:
                raise e.with_source(src) from None
            if space is not None and resolved.name != space.name:
                raise NasInputError(f"file is for space {resolved.name!r}, not {space.name!r}", src, "space")
            space = resolved
        arch, meta = data["arch"], data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise NasInputError("expected an object", src, "meta")
    else:
        if space is None:
            raise NasInputError("bare arch mapping: wrap it as {\"space\": NAME, \"arch\": {...}} "
                                "or pass the space", src)
        arch, meta = data, None
    try:
        return ArchFile(space, arch, meta)
    except NasInputError as e:
        raise e.with_source(src) from None
