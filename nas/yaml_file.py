"""Reading user YAML files safely, with one-line errors.

Only ``yaml.safe_load`` is used (no Python tags: ``!!python/object`` is refused). A document is
also refused when it is not UTF-8, nests deeper than :data:`MAX_DEPTH` levels or holds more than
:data:`MAX_VALUES` values once its aliases are expanded (a "billion laughs" file).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NasInputError

#: Most nesting levels a user document may have (shipped files use fewer than 10).
MAX_DEPTH = 64
#: Most values (scalars and containers, aliases counted each time they are used) in a document.
MAX_VALUES = 200_000


#: Largest user YAML/JSON file read (shipped latency tables are under 1 MiB).
MAX_FILE_BYTES = 64 * 2 ** 20


def read_user_bytes(path: Path, what: str, fix: str = "") -> bytes:
    """Returns the bytes of a regular file of at most MAX_FILE_BYTES.

    Raises:
        NasInputError: missing, unreadable, not a regular file (a folder, a device such as
            /dev/zero, a pipe) or too large.
    """
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise NasInputError(f"{what} is not a regular file{fix}", str(path))
            raw = f.read(MAX_FILE_BYTES + 1)
    except NasInputError:
        raise
    except OSError as e:
        raise NasInputError(f"cannot read {what} ({e.strerror or e}){fix}", str(path)) from None
    except ValueError as e:  # e.g. an embedded NUL byte in the path
        raise NasInputError(f"cannot read {what} ({e}){fix}", str(path)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise NasInputError(f"{what} is larger than {MAX_FILE_BYTES // 2 ** 20} MiB{fix}", str(path))
    return raw


def check_tree_size(data: Any, source: str, what: str) -> None:
    """Refuses a parsed YAML/JSON tree that is too deep or too large (aliases counted expanded).

    Args:
        data: the parsed document.
        source: the file, named in errors.
        what: what the file is, for the error message.

    Raises:
        NasInputError: deeper than MAX_DEPTH or more than MAX_VALUES values.
    """
    stack, count = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise NasInputError(f"{what} is too large: more than {MAX_VALUES} values (do its "
                                "YAML aliases expand too far?)", source)
        if depth > MAX_DEPTH:
            raise NasInputError(f"{what} nests deeper than {MAX_DEPTH} levels", source)
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value if isinstance(k, (tuple, list, dict)))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def check_plain_tree(data: Any, source: str | None) -> None:
    """Refuses mapping keys that are not strings and values JSON cannot hold (YAML dates...).

    Raises:
        NasInputError: names the field and the offending key or value.
    """
    stack = [(data, "")]
    while stack:
        value, field = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise NasInputError(f"key {k!r} is not a string; quote it or rename it",
                                        source, f"{field}.{k}" if field else str(k))
                stack.append((v, f"{field}.{k}" if field else k))
        elif isinstance(value, list):
            stack.extend((v, f"{field}[{i}]") for i, v in enumerate(value))
        elif not isinstance(value, (str, int, float, bool, type(None))):
            raise NasInputError(f"{value!r} is a {type(value).__name__}; expected a string, "
                                "number, true/false, list or mapping", source, field or None)


def _flow_depth(text: str) -> int:
    """Returns the deepest nesting of [ and { in `text` (quotes ignored: an upper bound)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    for c in text:
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
    return deepest


def read_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """Reads a YAML file with the safe loader.

    Args:
        path: the file.
        what: what the file is, for the error message (e.g. "space file", "config file").

    Returns:
        The parsed YAML document.

    Raises:
        NasInputError: the file cannot be read, is not UTF-8, not valid YAML, or too deep or
            large (one line, naming the file and the line of the problem).
    """
    path = Path(path)
    raw = read_user_bytes(path, what)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise NasInputError(f"not UTF-8 text (byte {e.start}); save the {what} as UTF-8",
                            str(path)) from None
    if _flow_depth(text) > MAX_DEPTH:  # PyYAML takes seconds (quadratic) on deep [[[...]]]
        raise NasInputError(f"{what} nests deeper than {MAX_DEPTH} levels", str(path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise NasInputError(f"not valid YAML{where}: {problem}", str(path)) from None
    except RecursionError:
        raise NasInputError(f"{what} nests too deeply to read", str(path)) from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a date like 2001-13-45
        raise NasInputError(f"not valid YAML: {type(e).__name__}: {e}", str(path)) from None
    check_tree_size(data, str(path), what)
    return data


def read_json_file(path: str | os.PathLike, what: str, fix: str = "") -> Any:
    """Reads a user JSON file, with the same one-line errors and limits as YAML files.

    Args:
        path: the file.
        what: what the file is, for the error message (e.g. "arch file").
        fix: appended to parse errors (e.g. "; rebuild it with 'nas latency build'").

    Returns:
        The parsed JSON document.

    Raises:
        NasInputError: unreadable, not UTF-8, not JSON, or too deep or large.
    """
    import json

    path = Path(path)
    raw = read_user_bytes(path, what, fix)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise NasInputError(f"not UTF-8 text (byte {e.start}){fix}", str(path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NasInputError(f"not valid JSON at line {e.lineno} column {e.colno} ({e.msg}){fix}",
                            str(path)) from None
    except RecursionError:
        raise NasInputError(f"{what} nests too deeply to read{fix}", str(path)) from None
    check_tree_size(data, str(path), what)
    return data
