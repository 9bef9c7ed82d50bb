"""Reading user YAML files safely, with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NasInputError


def read_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """Reads a YAML file with the safe loader.

    Args:
        path: the file.
        what: what the file is, for the error message (e.g. "space file", "config file").

    Returns:
        The parsed YAML document.

    Raises:
        NasInputError: the file cannot be read or is not valid YAML (one line, naming the file
            and the line of the problem).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise NasInputError(f"cannot read {what} ({e.strerror})", str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise NasInputError(f"not valid YAML{where}: {getattr(e, 'problem', e)}", str(path)) from None
