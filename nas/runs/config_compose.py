"""Config files built from other config files: ``extends:`` and the ``smoke:`` variant.

A config may start from another one and change only what differs::

    extends: digits_random.yaml      # relative to this file
    budget: 48                       # mappings merge key by key; lists and scalars replace

A full config carries its own smoke variant, the overrides that shrink it to a run of seconds
to minutes (fewer candidates and epochs, a local executor)::

    smoke:
      budget: 4
      train: {epochs: 2}

``nas run CONFIG --smoke`` (and ``nas search``) applies them; so does a file that says
``extends: FULL.yaml`` and ``smoke: true``. The shipped ``experiments/*_smoke.yaml`` are such
two-line files: the smoke run is derived from the full config, never a copy of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from nas.errors import NasInputError
from nas.yaml_file import read_yaml_file

#: how many files one ``extends:`` chain may hold.
MAX_DEPTH = 8


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Returns `base` updated by `override`: mappings merge recursively, anything else replaces.

    Args:
        base: the mapping to start from (not modified).
        override: the values that win.

    Returns:
        A new mapping.
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _layer(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Reads one file of an ``extends:`` chain.

    Returns:
        (config without ``extends``/``smoke``, smoke overrides collected along the chain,
        whether they were applied: a ``smoke: true`` file applies them under its own values).
    """
    source = str(path)
    data = read_yaml_file(path, "config file")
    if not isinstance(data, Mapping):
        raise NasInputError("expected a mapping of config sections (space, strategy, ...)", source)
    data = dict(data)
    base: dict[str, Any] = {}
    smoke_overrides: dict[str, Any] = {}
    applied = False
    if "extends" in data:
        parent = data.pop("extends")
        if not isinstance(parent, str) or not parent:
            raise NasInputError("expected the path of the config this one starts from", source,
                                "extends")
        parent_path = (path.parent / parent).resolve()
        if parent_path in chain or parent_path == path.resolve():
            raise NasInputError(f"{parent} extends itself (a loop of extends:); remove one link",
                                source, "extends")
        if len(chain) >= MAX_DEPTH:
            raise NasInputError(f"more than {MAX_DEPTH} files in one extends: chain", source,
                                "extends")
        if not parent_path.is_file():
            raise NasInputError(f"no such config file {str(parent_path)!r}; the path is relative "
                                "to this file", source, "extends")
        base, smoke_overrides, applied = _layer(parent_path, chain + (path.resolve(),))
    smoke = data.pop("smoke", None)
    if isinstance(smoke, Mapping):
        smoke_overrides = deep_merge(smoke_overrides, smoke)
    elif smoke is True:
        if not smoke_overrides:
            raise NasInputError("the config this one extends has no smoke variant; add a 'smoke:' "
                                "section of overrides to it", source, "smoke")
        base, applied = deep_merge(base, smoke_overrides), True
    elif smoke is not None and smoke is not False:
        raise NasInputError("expected a mapping of overrides (the smoke variant of this config) "
                            "or true (run the smoke variant of the config it extends)", source,
                            "smoke")
    return deep_merge(base, data), smoke_overrides, applied


def compose_config(path: str | os.PathLike, smoke: bool = False) -> dict[str, Any]:
    """Reads a config file, following ``extends:`` and applying ``smoke:`` when asked.

    Args:
        path: the YAML config file.
        smoke: apply the smoke overrides (as ``--smoke`` does).

    Returns:
        The composed config mapping (no ``extends`` or ``smoke`` keys left).

    Raises:
        NasInputError: unreadable file, a bad ``extends``/``smoke`` field, a loop of extends,
            or ``--smoke`` on a config that has no smoke variant.
    """
    path = Path(path)
    data, overrides, applied = _layer(path, ())
    if smoke and not applied:
        if not overrides:
            raise NasInputError("this config has no smoke variant; add a 'smoke:' section of "
                                "overrides or run it without --smoke", str(path), "smoke")
        data = deep_merge(data, overrides)
    return data
