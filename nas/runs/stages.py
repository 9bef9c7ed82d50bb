"""Stage markers of a pipeline workdir: ``W/stages/<stage>.json``, one per finished stage.

Shared by :mod:`nas.runs.pipeline` (which writes them) and :mod:`nas.runs.report` (which reads them), so
neither imports the other to reach them.

Example:
    >>> read_marker(Path("runs/smoke"), "retrain")["winner"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nas.errors import NasInputError
from nas.safe_write import write_json_atomic as write_json_file

STAGES = ("search", "retrain", "distill", "export")
STAGE_DIR = "stages"


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON to `path` atomically (its folder created first; numpy numbers as floats).

    Args:
        path: the file.
        data: a JSON-able object.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_file(path, data, default=float)


def stage_marker(workdir: Path, stage: str) -> Path:
    """Returns the path of a stage's completion marker.

    Args:
        workdir: the pipeline's workdir.
        stage: one of :data:`STAGES`.
    """
    return workdir / STAGE_DIR / f"{stage}.json"


def read_marker(workdir: Path, stage: str) -> dict | None:
    """Returns a finished stage's result, or None when the stage has not completed.

    Args:
        workdir: the pipeline's workdir.
        stage: one of :data:`STAGES`.

    Raises:
        NasInputError: the marker exists but is not JSON (names the file and the fix).
    """
    path = stage_marker(workdir, stage)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise NasInputError("unreadable stage marker; delete it to rerun the stage", str(path)) from None
