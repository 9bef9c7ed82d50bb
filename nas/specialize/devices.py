"""The inputs of ``nas specialize``, checked before anything heavy is loaded: the supernet
workdir (a spos / single_path search), the device tables (of the supernet's space) and their
latency targets. Each problem is one line naming the flag and the fix
(:class:`~nas.errors.NasInputError`).

Example:
    >>> record = supernet_record("runs/digits_spos")
    >>> devices = load_devices(["latency_tables/jax-cpu/tiny.json"], [0.2], record.space)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Sequence

from nas.errors import NasInputError
from nas.latency.table import LatencyTable
from nas.space import Space, resolve_space
from nas.strategies import registry
from nas.weight_sharing import SEARCH_RECORD

#: How to train a supernet this command reads (named in errors).
TRAIN_HINT = ("train one with 'nas search experiments/digits_spos.yaml --workdir W' (strategy: "
              "{name: spos})")


@dataclasses.dataclass(frozen=True)
class SupernetRecord:
    """What a supernet workdir's search record says.

    Attributes:
        workdir: the absolute workdir.
        strategy: its strategy (spos or single_path).
        space: its Space.
        data: its data spec.
    """

    workdir: Path
    strategy: str
    space: Space
    data: str


@dataclasses.dataclass(frozen=True)
class Device:
    """One device to specialize for.

    Attributes:
        name: its output subfolder (the table's backend and device, made unique).
        table: its latency table.
        target_ms: its hard latency target.
    """

    name: str
    table: LatencyTable
    target_ms: float

    @property
    def table_path(self) -> str:
        """The table file."""
        return str(self.table.source)


def supernet_record(workdir: str | Path) -> SupernetRecord:
    """Reads and checks a supernet workdir's search record (no weights loaded).

    Args:
        workdir: the ``--supernet`` value.

    Returns:
        The :class:`SupernetRecord`.

    Raises:
        NasInputError: missing folder, no search record, or a search whose supernet is not a
            single-path superkernel (field ``--supernet``).
    """
    wd = Path(workdir).expanduser()
    if not wd.is_dir():
        raise NasInputError(f"{workdir} is not a folder; give the workdir of a finished spos "
                            f"search, or {TRAIN_HINT}", field="--supernet")
    record = wd / SEARCH_RECORD
    try:
        config = json.loads(record.read_text())["config"]
        strategy = config["strategy"]["name"]
        space_def = config["space"]
    except (OSError, ValueError, KeyError, TypeError):
        raise NasInputError(f"{wd} holds no search record ({SEARCH_RECORD}); give the workdir of "
                            f"a finished spos search, or {TRAIN_HINT}", field="--supernet") from None
    kind = registry.entry(strategy).supernet if strategy in registry.names() else None
    if kind != "superkernel":
        accepted = " or ".join(registry.names("one_shot", supernet="superkernel"))
        raise NasInputError(f"{wd} holds a {strategy!r} search; specialize needs a supernet "
                            f"trained with strategy {accepted}: {TRAIN_HINT}", field="--supernet")
    space = resolve_space(space_def, str(record))
    return SupernetRecord(wd.resolve(), strategy, space, str(config.get("data", "digits")))


def device_name(table: LatencyTable) -> str:
    """Returns a table's device folder name: its backend and the first word of its device,
    e.g. 'onnxruntime-cpu', 'jax-cpu' (the shipped tables' folders)."""
    words = str(table.data["backend"].get("device", "")).split()
    name = table.backend + (f"-{words[0]}" if words and words[0] != table.backend else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "device"


def load_devices(tables: Sequence[str], targets: Sequence[float], space: Space) -> list[Device]:
    """Loads the device tables and pairs them with their targets.

    Args:
        tables: the ``--table`` files, one per device.
        targets: the ``--target`` values (ms): one for every device, or one per table.
        space: the supernet's Space (each table must measure it).

    Returns:
        One :class:`Device` per table, named uniquely.

    Raises:
        NasInputError: no table, a table of another space (or unreadable), a wrong number of
            targets, or a target that is not a positive number.
    """
    if not tables:
        raise NasInputError("give at least one device table (e.g. --table "
                            f"latency_tables/onnxruntime-cpu/{space.name}.json)", field="--table")
    if len(targets) not in (1, len(tables)):
        raise NasInputError(f"got {len(targets)} targets for {len(tables)} tables; give one "
                            "--target for every device or one per --table, in the same order",
                            field="--target")
    for t in targets:
        if not (math.isfinite(t) and t > 0):
            raise NasInputError(f"{t} is not a latency; give a positive number of milliseconds",
                                field="--target")
    loaded = []
    for path in tables:
        try:
            loaded.append(LatencyTable.load(path, space))
        except NasInputError as e:
            raise NasInputError(f"{e.one_line()} (the supernet's space is {space.name!r}: give "
                                "a table of that space)", field="--table") from None
    names: dict[str, int] = {}
    devices = []
    for table, target in zip(loaded, list(targets) * (len(tables) // len(targets))):
        base = device_name(table)
        names[base] = names.get(base, 0) + 1
        name = base if names[base] == 1 else f"{base}-{names[base]}"
        devices.append(Device(name, table, float(target)))
    return devices
