"""Training checkpoints: an orbax CheckpointManager plus the Arch JSON stored beside it.

A training work directory looks like::

    W/arch.json          the Arch (and its space) the checkpoints belong to
    W/checkpoints/<step>/{model,train,meta}   orbax items, newest `max_to_keep` kept
    W/metrics.jsonl      one JSON line per epoch       W/tb/   TensorBoard event files

Items: ``model`` = {"params", "batch_stats"} (all that inference needs: a teacher restores only
this), ``train`` = {"step", "opt_state", "aux"} (optimizer state and extra trained parameters
such as a distillation adapter), ``meta`` = JSON (epoch, arch id, config).

Restoring tries the newest step first; an unreadable one is skipped with a warning and the
previous one is used. A checkpoint of another Arch is refused with one error line.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from nas.archfile import ArchFile, load_arch
from nas.errors import NasInputError
from nas.model import build_model, init_variables
from nas.safe_write import write_atomic

ARCH_FILE = "arch.json"
CKPT_SUBDIR = "checkpoints"


class CheckpointCorruptWarning(UserWarning):
    """The newest checkpoint could not be read; an older one was used."""


def resolve_workdir(path: str | os.PathLike) -> Path:
    """Returns the training work directory of `path` (the directory itself or its checkpoints/).

    Raises:
        NasInputError: neither `path` nor its parent holds an arch.json.
    """
    p = Path(path).absolute()
    for cand in (p, p.parent):
        if (cand / ARCH_FILE).is_file():
            return cand
    raise NasInputError(f"no {ARCH_FILE} here; give the --workdir of a finished 'nas train' run", str(p))


def write_arch(workdir: str | os.PathLike, archfile: ArchFile) -> None:
    """Writes (atomically) the Arch JSON next to the checkpoints."""
    archfile.save(Path(workdir) / ARCH_FILE)


class Checkpointer:
    """Saves and restores training state for one Arch in ``workdir/checkpoints``.

    Args:
        workdir: the training work directory.
        arch_id: id of the Arch being trained (stored in every checkpoint and checked on restore).
        max_to_keep: newest checkpoints kept (>= 2 so that a corrupted newest one has a fallback).
    """

    def __init__(self, workdir: str | os.PathLike, arch_id: str, max_to_keep: int = 2):
        self.directory = Path(workdir).absolute() / CKPT_SUBDIR
        self.arch_id = arch_id
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=max(2, max_to_keep), create=True,
                cleanup_tmp_directories=True))  # a save killed midway leaves only a tmp folder

    def steps(self) -> list[int]:
        """Returns the saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, model: Any, train: Any, meta: Mapping[str, Any]) -> None:
        """Saves one checkpoint and waits until it is on disk.

        Args:
            step: the global step (the checkpoint's name).
            model: {"params", "batch_stats"} pytree.
            train: {"step", "opt_state", "aux"} pytree.
            meta: JSON-able metadata; "arch_id" is added.
        """
        meta = dict(meta, arch_id=self.arch_id)
        self._manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore(self, model_target: Any, train_target: Any | None = None,
                quarantine: bool = False) -> tuple[Any, Any, dict] | None:
        """Restores the newest readable checkpoint.

        Args:
            model_target: pytree with the structure of the saved "model" item.
            train_target: pytree of the "train" item, or None to skip it (inference only).
            quarantine: move unreadable newer checkpoints to ``checkpoints-corrupt/`` (kept for
                inspection, never deleted) so that training can save those steps again.

        Returns:
            (model, train or None, meta), or None when there is no checkpoint.

        Raises:
            NasInputError: the checkpoints belong to another Arch, or none is readable.
        """
        steps = self.steps()
        if not steps:
            return None
        errors = []
        for i, step in enumerate(reversed(steps)):
            try:
                meta = self._manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # noqa: BLE001 - any read failure means a bad checkpoint
                errors.append((step, e))
                continue
            if meta.get("arch_id") != self.arch_id:
                raise NasInputError(
                    f"checkpoint is of Arch {meta.get('arch_id')}, not {self.arch_id}; use another "
                    "--workdir or the Arch it was trained with", str(self.directory))
            items = {"model": ocp.args.StandardRestore(model_target)}
            if train_target is not None:
                items["train"] = ocp.args.StandardRestore(train_target)
            try:
                got = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001
                errors.append((step, e))
                continue
            for bad_step, err in errors:
                warnings.warn(f"checkpoint step {bad_step} in {self.directory} is unreadable "
                              f"({type(err).__name__}); falling back to step {step}",
                              CheckpointCorruptWarning, stacklevel=2)
                if quarantine:
                    self._quarantine(bad_step)
            return got["model"], got.get("train") if train_target is not None else None, dict(meta)
        step, err = errors[0]
        raise NasInputError(f"no readable checkpoint (newest step {step}: {type(err).__name__}); "
                            "delete the folder to start over", str(self.directory))

    def _quarantine(self, step: int) -> None:
        bad = self.directory.parent / "checkpoints-corrupt"
        bad.mkdir(exist_ok=True)
        target = bad / str(step)
        n = 1
        while target.exists():
            target, n = bad / f"{step}.{n}", n + 1
        os.replace(self.directory / str(step), target)
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def load_trained(path: str | os.PathLike, depthwise_impl: str = "auto"):
    """Rebuilds a trained model from a 'nas train' (or 'nas distill') work directory.

    Args:
        path: the work directory (or its checkpoints/ folder).
        depthwise_impl: passed to the model builder.

    Returns:
        (archfile, model, variables, meta): variables = {"params", "batch_stats"} of the newest
        readable checkpoint.

    Raises:
        NasInputError: no arch.json, no checkpoint, or checkpoints of another Arch.
    """

    workdir = resolve_workdir(path)
    archfile = load_arch(workdir / ARCH_FILE)
    space, arch = archfile.space, archfile.arch
    model = build_model(space, arch, depthwise_impl=depthwise_impl)
    h, w = space.resolution
    target = init_variables(model, jax.random.PRNGKey(0), (1, h, w, space.in_channels))
    target = {"params": target["params"], "batch_stats": target.get("batch_stats", {})}
    ckpt = Checkpointer(workdir, space.arch_id(arch))
    try:
        got = ckpt.restore(target)
    finally:
        ckpt.close()
    if got is None:
        raise NasInputError("no checkpoint in this work directory; train it first",
                            str(workdir / CKPT_SUBDIR))
    return archfile, model, got[0], got[2]


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Returns the records of a JSONL file (an unfinished last line is ignored)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_json_lines(path: str | os.PathLike, records: list[dict]) -> None:
    """Writes JSONL records atomically (temporary file, fsync, os.replace).

    Raises:
        NasInputError: the disk is full or the folder is not writable (old content intact).
    """
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
