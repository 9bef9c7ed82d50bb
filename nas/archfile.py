"""Arch JSON files: an Arch together with the space it belongs to.

File format (JSON)::

    {"space": "tiny",            # a shipped space name, or an inline definition, or the name of
     "space_file": "...",        #   a user's space, with its YAML (relative to this file) and
     "space_fingerprint": "...", #   the definition's fingerprint (see nas.space_files)
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
from nas.safe_write import write_atomic
from nas.space import Arch, Space
from nas.space_files import bundle_space, find_arch_space, SPACE_FIELDS, space_reference
from nas.yaml_file import read_json_file

_FILE_KEYS = {*SPACE_FIELDS, "arch", "meta"}


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

    def to_dict(self, dest: str | os.PathLike | None = None,
                space_file: Path | None = None) -> dict[str, Any]:
        """Returns the JSON-able file content.

        Args:
            dest: where the file will be written: a user's space file is recorded relative to
                its folder (None: as an absolute path).
            space_file: a copy of the space YAML to record instead of the one it was read from.

        Returns:
            ``{"space": ..., "arch": ..., "meta": ...}``; a shipped space is named, a user's space
            YAML is named with its path and fingerprint, any other space is embedded (see
            :func:`nas.space_files.space_reference`).
        """
        out = {**space_reference(self.space, dest, space_file), "arch": self.arch}
        if self.meta:
            out["meta"] = self.meta
        return out

    def save(self, path: str | os.PathLike, with_space: bool = False) -> None:
        """Writes the file atomically (see :func:`nas.safe_write.write_atomic`).

        Args:
            path: the target file (its folder is created).
            with_space: also copy a user's space YAML next to it, so that the folder stands
                alone (exports; see :func:`nas.space_files.bundle_space`).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        copy = bundle_space(self.space, path.parent) if with_space else None
        text = json.dumps(self.to_dict(path, copy), indent=2, sort_keys=True)
        write_atomic(path, text + "\n")


def load_arch(path: str | os.PathLike, space: Space | str | None = None) -> ArchFile:
    """Reads an arch JSON file.

    Args:
        path: the JSON file.
        space: the Space (or a shipped name or YAML path, e.g. a ``--space`` option) to use when
            the file holds a bare mapping or its space cannot be found otherwise; if the file
            names a space too, the two must agree (name, and fingerprint when recorded).

    Returns:
        The ArchFile with a validated, canonical Arch.

    Raises:
        NasInputError: unreadable file, invalid JSON, unknown space, a space file that is missing
            or changed since the arch was written, or an invalid Arch (one line each).
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
            raise NasInputError(f"unknown field; allowed fields: {sorted(_FILE_KEYS)}", src,
                                unknown[0])
        if data.get("space") is None and space is None:
            raise NasInputError("missing; name the space (e.g. \"tiny\") or embed its definition",
                                src, "space")
        try:
            space = find_arch_space(data, path, space)
        except NasInputError as e:
            raise e.with_source(src) from None
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
