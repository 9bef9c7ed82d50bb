"""``history.jsonl``: the append-only record of a search, one JSON object per evaluated candidate.

Each line is written whole and fsync'd before the search moves on, so a crash loses at most the
candidate being written. A torn last line (the process died mid-write) is dropped on load, and the
file is rewritten without it atomically (temporary file + os.replace); a malformed line anywhere
else is an input error naming the line, since silently skipping it would lose a result.

Record fields (see :func:`make_record`): n, arch_id, arch, status ('ok' | 'error' | 'failed' |
'stopped' | 'rejected'),
accuracy, val_accuracy, test_accuracy, latency_ms, reward, cost {params, macs, ...}, seconds,
attempts, error, time, and where the evaluation said them devices, platform and node (what the
candidate trained on; records of older runs lack them).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from nas.errors import NasInputError
from nas.safe_write import append_line, write_atomic

STATUSES = ("ok", "error", "failed", "stopped", "rejected")
#: What a candidate trained on, copied from its evaluation result when present.
DEVICE_KEYS = ("devices", "platform", "node")
_REQUIRED = ("arch_id", "arch", "status")


def make_record(n: int, arch_id: str, arch: Mapping[str, Any], status: str,
                result: Mapping[str, Any] | None = None, reward: float | None = None,
                seconds: float | None = None, attempts: int = 1, error: str | None = None) -> dict:
    """Returns one history record.

    Args:
        n: the candidate's position in the search (0-based, in evaluation order).
        arch_id: Space.arch_id of the Arch.
        arch: the canonical Arch.
        status: 'ok' (evaluated), 'error' (the evaluation raised: a bad candidate), 'failed'
            (the worker died and retries were exhausted), 'stopped' (ASHA stopped it early; accuracy
            is the last reported validation accuracy), 'rejected' (over ``objective.limits``,
            never trained: see :mod:`nas.limits`).
        result: the evaluation result (accuracy, val_accuracy, test_accuracy, latency_ms and cost
            metrics); missing keys are recorded as null. Its devices (local devices the
            candidate trained on), platform ('cpu', 'gpu', ...) and node (host name) are recorded
            when present.
        reward: the objective's reward, None when not ok.
        seconds: wall time of the evaluation.
        attempts: how many times it was started (retries + 1).
        error: the error text, None when ok.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    result = dict(result or {})
    cost_keys = ("params", "macs", "bops", "size_bytes", "energy_mj", "peak_activation_bytes")
    return {
        "n": int(n), "arch_id": arch_id, "arch": dict(arch), "status": status,
        "accuracy": result.get("accuracy"), "val_accuracy": result.get("val_accuracy"),
        "test_accuracy": result.get("test_accuracy"), "latency_ms": result.get("latency_ms"),
        "reward": reward,
        "cost": {k: result[k] for k in cost_keys if result.get(k) is not None},
        "seconds": None if seconds is None else round(float(seconds), 3),
        "attempts": int(attempts), "error": error,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: result[k] for k in DEVICE_KEYS if result.get(k) is not None},
    }


def record_value(record: Mapping[str, Any], name: str) -> float | None:
    """Returns one metric of a record: 'accuracy', 'latency_ms' (top level) or a cost metric.

    Args:
        record: a history record (:func:`make_record`).
        name: 'accuracy', 'val_accuracy', 'test_accuracy', 'latency_ms', or a key of its
            ``cost`` (params, macs, bops, size_bytes, energy_mj, peak_activation_bytes).

    Returns:
        The value as a float, or None when the record does not have it.
    """
    value = record[name] if name in record else (record.get("cost") or {}).get(name)
    return None if value is None else float(value)


def _parse(line: str) -> dict | None:
    """Returns the record on one line, or None when the line is not a valid record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or any(k not in record for k in _REQUIRED):
        return None
    return record


class History:
    """An append-only JSONL file of candidate records.

    Args:
        path: the history.jsonl file (created on first append).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> list[dict]:
        """Reads every record, repairing a torn last line.

        Returns:
            The records in file order (empty when the file does not exist).

        Raises:
            NasInputError: a line other than the last is not a valid record.
        """
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        body, tail = lines[:-1], lines[-1]  # tail is "" when the file ends with a newline
        records = []
        for i, line in enumerate(body, start=1):
            if line.strip():
                record = _parse(line)
                if record is None:
                    raise NasInputError(f"line {i} is not a history record (fix or delete that line)",
                                        str(self.path))
                records.append(record)
        if tail.strip():
            record = _parse(tail)
            if record is None:
                sys.stderr.write(f"nas: warning: {self.path}: dropped an incomplete last line "
                                 "(interrupted write)\n")
            else:
                records.append(record)
            self._rewrite(records)
        return records

    def __iter__(self) -> Iterator[dict]:
        return iter(self.load())

    def append(self, record: Mapping[str, Any]) -> None:
        """Appends one record as a line and fsyncs it.

        A failed append (disk full, permissions) leaves the file as it was and raises one error
        line; a torn last line left by a crash is ended first so it never merges with this one.

        Args:
            record: a JSON-able mapping (see :func:`make_record`).

        Raises:
            NasInputError: the history cannot be written (the message names the file and fix).
        """
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._torn():
            self.load()  # drops the torn last line (atomic rewrite) before appending
        append_line(self.path, line)

    def _torn(self) -> bool:
        """Whether the file's last line is unfinished (a crash during an append)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def _rewrite(self, records: list[dict]) -> None:
        write_atomic(self.path, "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n"
                                        for r in records))
