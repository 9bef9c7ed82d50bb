"""The space behind an arch file: how it is recorded, found again and checked unchanged.

How an arch file names its space (``"space"`` and two optional fields beside it)::

    {"space": "tiny", ...}                          # a shipped space: its name alone
    {"space": {"name": "t", "stages": [...]}, ...}  # a space without a file: embedded in full
    {"space": "my_space",                           # a user's space YAML:
     "space_file": "my_space.yaml",                 #   relative to the arch file (or absolute)
     "space_fingerprint": "sha256:<64 hex>", ...}   #   of the definition the arch was made from

:func:`space_reference` writes these fields and :func:`find_arch_space` reads them back. The
space is looked for, in order: the ``--space FILE`` a command was given; a shipped space, when no
space file is recorded; the recorded ``space_file``; a file of the same name, or ``<space>.yaml``,
next to the arch file (so an arch copied together with its space YAML still loads); of these
files the first holding the recorded fingerprint wins. When a fingerprint is recorded the space
found must have it: a space file edited since the arch was
written is refused with one line naming the file and the fix, never used silently. Exports copy
the space YAML next to their arch file (:func:`bundle_space`), so the folder stands alone.

Example:
    >>> space = Space.from_yaml("my_space.yaml")
    >>> space_reference(space, Path("runs/a/arch.json"))["space_file"]
    '../../my_space.yaml'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from nas.errors import NasInputError
from nas.safe_write import write_atomic
from nas.space import Space, shipped_space_names, spaces_dir

#: Fields of an arch file that locate its space.
SPACE_FIELDS = ("space", "space_file", "space_fingerprint")
#: Definition fields that do not change any Arch (left out of the fingerprint).
FINGERPRINT_IGNORED = ("description", "source")
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_FIX = "put the space YAML there or pass --space FILE"


def space_fingerprint(space: Space) -> str:
    """Returns 'sha256:<hex>' of the canonical JSON of a space's definition.

    The same hash as a latency table's space hash: the description (and free-form source) are
    left out, so rewording them keeps old arch files valid.

    Args:
        space: the Space.

    Returns:
        The fingerprint, e.g. ``"sha256:3f2a..."`` (64 hex digits).
    """
    body = {k: v for k, v in space.to_dict().items() if k not in FINGERPRINT_IGNORED}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def is_shipped(space: Space) -> bool:
    """Returns whether `space` was read from the shipped ``search_spaces/<name>.yaml``.

    Args:
        space: the Space.
    """
    shipped = spaces_dir() / f"{space.name}.yaml"
    return space.file is not None and shipped.is_file() and space.file == shipped.resolve()


def space_reference(space: Space, dest: str | os.PathLike | None = None,
                    file: Path | None = None) -> dict[str, Any]:
    """Returns the fields that name `space` in an arch file written at `dest`.

    Args:
        space: the Space of the Arch.
        dest: where the arch file will be written; the space file is recorded relative to its
            folder. None (e.g. printed to stdout): recorded as an absolute path.
        file: a copy of the space's YAML to record instead of ``space.file`` (see
            :func:`bundle_space`).

    Returns:
        ``{"space": name}`` for a shipped space; ``{"space": name, "space_file": path,
        "space_fingerprint": fp}`` for one read from another YAML file; ``{"space":
        definition}`` for one without a file (inline in a config, or derived in code).
    """
    if is_shipped(space):
        return {"space": space.name}
    if space.file is None:
        return {"space": space.to_dict()}
    file = space.file if file is None else file.resolve()
    path = str(file)
    if dest is not None:
        try:
            path = os.path.relpath(file, Path(dest).absolute().parent.resolve())
        except ValueError:  # another drive (Windows): keep the absolute path
            pass
    return {"space": space.name, "space_file": Path(path).as_posix(),
            "space_fingerprint": space_fingerprint(space)}


def bundle_space(space: Space, folder: str | os.PathLike) -> Path | None:
    """Copies a user's space YAML into `folder`, so that an arch file written there stands alone.

    The copy keeps the file's name (and its text while the file still holds this definition;
    otherwise the definition is written out). An existing file of that name is never replaced:
    it is used when it holds the same definition, else the original is referenced.

    Args:
        space: the Space of the Arch.
        folder: the arch file's folder (it must exist).

    Returns:
        The copy to record as the arch file's ``space_file``, or None to record the original
        (a shipped space, a space without a file, or one already in `folder`).
    """
    if space.file is None or is_shipped(space):
        return None
    target = Path(folder) / space.file.name
    fingerprint = space_fingerprint(space)
    if _is_file(target):
        if target.resolve() == space.file:
            return None
        try:
            same = space_fingerprint(Space.from_yaml(target)) == fingerprint
        except NasInputError:
            same = False
        return target if same else None
    try:
        unchanged = space_fingerprint(Space.from_yaml(space.file)) == fingerprint
    except NasInputError:
        unchanged = False
    text = space.file.read_text(encoding="utf-8-sig") if unchanged else \
        yaml.safe_dump(space.to_dict(), sort_keys=False)
    write_atomic(target, text)
    return target


def add_space_option(parser: argparse.ArgumentParser) -> None:
    """Adds ``--space FILE``: the space YAML of an arch file whose space cannot be found.

    Args:
        parser: the command's parser (the value lands in ``args.space``).
    """
    parser.add_argument("--space", default=None, metavar="FILE",
                        help="space YAML of the arch file (default: the shipped space it names, "
                             "its recorded space_file, or <space>.yaml next to it)")


def _check_fields(data: Mapping[str, Any], src: str) -> tuple[Any, str | None, str | None]:
    """Returns (space, space_file, space_fingerprint) of an arch file, checked."""
    space, file, fingerprint = (data.get(k) for k in SPACE_FIELDS)
    if space is not None and not isinstance(space, (str, dict)):
        raise NasInputError("expected a space name or an inline space definition", src, "space")
    if isinstance(space, str) and not space:
        raise NasInputError("expected a non-empty space name", src, "space")
    if file is not None and (not isinstance(file, str) or not file):
        raise NasInputError("expected the path of the space YAML (a non-empty string)", src,
                            "space_file")
    if fingerprint is not None and (not isinstance(fingerprint, str)
                                    or not _FINGERPRINT.fullmatch(fingerprint)):
        raise NasInputError("expected 'sha256:' and 64 hex digits; remove the field or resample "
                            "the arch", src, "space_fingerprint")
    if (file or fingerprint) and not isinstance(space, str):
        field = "space_file" if file else "space_fingerprint"
        raise NasInputError("only allowed with a space name in \"space\"", src, field)
    return space, file, fingerprint


def _short(fingerprint: str) -> str:
    return fingerprint[:19]  # 'sha256:' + 12 hex digits


def _check_same(found: Space, name: str | None, fingerprint: str | None, where: str,
                src: str, given: bool = False) -> Space:
    """Returns `found` if it is the space the arch file names; raises otherwise."""
    if fingerprint is not None and space_fingerprint(found) != fingerprint and given:
        raise NasInputError(
            f"space {where} is not the one this arch was written for (fingerprint "
            f"{_short(fingerprint)} != {_short(space_fingerprint(found))}); pass the space YAML "
            "the arch was made from, or resample the arch from this one", src, "space_fingerprint")
    if fingerprint is not None and space_fingerprint(found) != fingerprint:
        raise NasInputError(
            f"space file {where} changed since this arch was written (fingerprint "
            f"{_short(fingerprint)} != {_short(space_fingerprint(found))}); restore it, or "
            f"resample the arch from the new file ('nas space sample {where}')", src,
            "space_fingerprint")
    if name is not None and found.name != name:
        raise NasInputError(f"the arch is for space {name!r} but {where} defines {found.name!r}; "
                            "give the space YAML the arch was made from", src, "space")
    return found


def _is_file(path: Path) -> bool:
    """Returns whether `path` is a file; False for names the OS refuses (too long, NUL...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _candidates(name: str, file: str | None, folder: Path) -> list[Path]:
    """Returns the paths where the space YAML may be, in order (no duplicates)."""
    paths = []
    if file is not None:
        recorded = Path(file)
        paths.append(recorded if recorded.is_absolute() else folder / recorded)
        paths.append(folder / recorded.name)
    paths.append(folder / f"{name}.yaml")
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _from_files(name: str, file: str | None, fingerprint: str | None, folder: Path,
                src: str) -> Space:
    """Returns the space read from the first candidate file that matches the arch file."""
    paths = _candidates(name, file, folder)
    found = [p for p in paths if _is_file(p)]
    if not found:
        if file is None:
            raise NasInputError(f"unknown space {name!r} and no {paths[-1]} next to the arch "
                                f"file (shipped spaces: {shipped_space_names()}); {_FIX}",
                                src, "space")
        others = f" (nor {', '.join(str(p) for p in paths[1:])})" if paths[1:] else ""
        raise NasInputError(f"space file {paths[0]} not found{others}; {_FIX}", src, "space_file")
    spaces = []
    for path in found:
        spaces.append(Space.from_yaml(path))
        if fingerprint is None or space_fingerprint(spaces[-1]) == fingerprint:
            return _check_same(spaces[-1], name, None, str(path), src)
    return _check_same(spaces[0], name, fingerprint, str(found[0]), src)


def find_arch_space(data: Mapping[str, Any], path: str | os.PathLike,
                    given: Space | None = None) -> Space | None:
    """Returns the Space an arch file names (see the module docstring for the search order).

    Args:
        data: the parsed arch file (its ``space``, ``space_file``, ``space_fingerprint``).
        path: the arch file (relative space files are relative to its folder; named in errors).
        given: the Space the caller was told to use (``--space FILE``, a config's or a latency
            table's space), or None.

    Returns:
        The Space; `given` when the file names no space; None when neither names one.

    Raises:
        NasInputError: one line naming the arch file and the field: a space file that is
            missing, changed since the arch was written (fingerprint differs), or defines
            another space; an unknown space name; a space that disagrees with `given`.
    """
    src = str(path)
    space, file, fingerprint = _check_fields(data, src)
    if space is None:
        return given
    if isinstance(space, dict):
        found = Space.from_dict(space, f"{src}: space")
        if given is not None and found.name != given.name:
            raise NasInputError(f"file is for space {found.name!r}, not {given.name!r}", src,
                                "space")
        return found
    if given is not None:
        name = None if space.endswith((".yaml", ".yml")) or os.sep in space else space
        if name is not None and name != given.name:
            raise NasInputError(f"file is for space {space!r}, not {given.name!r}; pass the space "
                                "YAML the arch was made from", src, "space")
        return _check_same(given, None, fingerprint, given.source or given.name, src, given=True)
    folder = Path(path).parent
    if space.endswith((".yaml", ".yml")) or os.sep in space:  # older files: "space": "a/b.yaml"
        nearby = folder / space
        found = Space.from_yaml(nearby if _is_file(nearby) else space)
        return _check_same(found, None, fingerprint, found.source or space, src)
    if file is None and space in shipped_space_names():
        found = Space.by_name(space)
        return _check_same(found, None, fingerprint, found.source or space, src)
    return _from_files(space, file, fingerprint, folder, src)
