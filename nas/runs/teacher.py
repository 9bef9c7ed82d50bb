"""The distill stage's teacher (``distill.teacher`` of ``nas run``) and its cached trainings.

Forms of ``distill.teacher``:

* ``largest`` (the default): the space's largest Arch (:func:`nas.metrics.largest_arch`: every
  slot at its option with the most MACs - largest kernel, expansion and width, full rank, 32-bit
  weights and activations, no skip), trained with ``distill.teacher_train`` over the retrain
  settings: a teacher bigger than every candidate.
* ``best``: the most accurate retrained candidate other than the winner (the winner when it is
  the only one) - no bigger than the student.
* ``top:K``: an ensemble of the K most accurate retrained candidates (the winner included); the
  student's soft targets are the mean of their tempered softmaxes, not of their logits
  (:func:`nas.training.distill.soft_targets`), and so is the ensemble's reported accuracy.
* ``arch:PATH``: an Arch file (a bigger Arch of the space, or a published net of
  ``search_spaces/published/`` whose input and classes match), trained with ``teacher_train``.
* ``ckpt:DIR``: a finished ``nas train`` work directory.

Trainings the stage runs itself (a ``largest`` or ``arch:`` teacher, the from-scratch student of
the KD table) are cached under ``<root>/<arch_id>-<key>/`` where ``key`` hashes the training
settings, seed and data (:func:`cached_training`): a rerun or a resumed ``nas run`` reuses a
finished one (its ``result.json``) and resumes an unfinished one from its checkpoints; another
setting trains a new one beside it, never reusing the old one. A teacher Arch that the retrain
stage already trained with the same settings is not trained again: that run is the teacher.

Example:
    >>> builder = TeacherBuilder(space, data, "digits", 0, workdir, "run.yaml", {"epochs": 8})
    >>> teacher = builder.build("largest", retrain_marker)
    >>> teacher.summary(data, temperature=4.0)["test_accuracy"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nas.errors import NasInputError

#: The forms of ``distill.teacher``, as named in error messages.
TEACHER_FORMS = "'largest', 'best', 'top:K' (K >= 2), 'arch:PATH' or 'ckpt:DIR'"
#: The default teacher: the space's largest Arch.
DEFAULT_TEACHER = "largest"
#: Sub-folder of the distill stage holding its trained teachers.
TEACHER_DIR = "teacher"


def parse_teacher(value: str) -> tuple[str, str]:
    """Returns (kind, argument) of a ``distill.teacher`` value.

    Args:
        value: e.g. 'largest', 'best', 'top:3', 'arch:teacher.json', 'ckpt:runs/t'.

    Returns:
        (kind, argument): kind in largest, best, top, arch, ckpt; argument '' for largest and best.

    Raises:
        ValueError: not one of :data:`TEACHER_FORMS` (the config turns it into one line naming
            ``distill.teacher``).
    """
    kind, sep, arg = value.partition(":")
    if not sep and kind in ("largest", "best"):
        return kind, ""
    if kind in ("arch", "ckpt") and arg.strip():
        return kind, arg
    if kind == "top" and re.fullmatch(r"[0-9]+", arg) and int(arg) >= 2:
        return kind, arg
    raise ValueError(f"expected {TEACHER_FORMS}")


def check_teacher_setting(teacher: str, top_k: int, source: str | None) -> None:
    """Checks a ``top:K`` teacher against the number of retrained candidates.

    Args:
        teacher: the ``distill.teacher`` value (its form already checked).
        top_k: ``retrain.top_k``.
        source: the config file, named in the error.

    Raises:
        NasInputError: K exceeds ``retrain.top_k``.
    """
    kind, arg = parse_teacher(teacher)
    if kind == "top" and int(arg) > top_k:
        raise NasInputError(f"{teacher!r} averages {arg} retrained candidates but retrain.top_k is "
                            f"{top_k}; use top:{top_k} or raise retrain.top_k", source,
                            "distill.teacher")


def training_key(space_name: str, arch_id: str, settings: Mapping[str, Any], seed: int,
                 data: str) -> str:
    """Returns the cache key of one training: a hash of everything its result depends on."""
    text = json.dumps({"space": space_name, "arch": arch_id, "train": dict(settings), "seed": seed,
                       "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def cached_training(space: Any, arch: Mapping[str, Any], data: Any, data_spec: str,
                    settings: Mapping[str, Any], seed: int, root: Path, progress: bool = False,
                    log: Callable[[str], None] = lambda m: None) -> tuple[Path, dict]:
    """Trains an Arch from scratch once per setting, in ``root/<arch_id>-<key>/``.

    Args:
        space: the Arch's Space.
        arch: the Arch.
        data: the Dataset.
        data_spec: the data spec it was loaded from (part of the key).
        settings: TrainConfig fields.
        seed: split and training seed.
        root: the folder of the cached trainings.
        progress: per-epoch progress bar.
        log: where the "reused" / "trained" line goes.

    Returns:
        (work directory, its result.json as a dict).
    """
    from nas.training.loop import RESULT_FILE
    from nas.training.trainer import TrainConfig, train_arch

    arch_id = space.arch_id(arch)
    wd = root / f"{arch_id}-{training_key(space.name, arch_id, settings, seed, data_spec)}"
    done = wd / RESULT_FILE
    if done.exists():
        log(f"{arch_id}: reusing the finished training in {wd}")
    else:
        config = TrainConfig(**dict(settings), seed=seed, progress=progress)
        train_arch(space, arch, data, config, workdir=str(wd))
        log(f"{arch_id}: trained in {wd}")
    return wd, json.loads(done.read_text())


@dataclasses.dataclass
class Teacher:
    """A teacher of the distill stage.

    Attributes:
        kind: the form of ``distill.teacher`` (largest, best, top, arch, ckpt).
        description: what it is, in words (the report's and the checkpoints' teacher id).
        members: [(network, {"params", "batch_stats"})], one, or K for an ensemble.
        arch_ids: the members' Arch ids.
        epochs: the members' training epochs (None where unknown).
        costs: {"macs", "params"} summed over the members.
        workdirs: the members' work directories.
    """

    kind: str
    description: str
    members: list[tuple[Any, Mapping[str, Any]]]
    arch_ids: list[str]
    epochs: list[int | None]
    costs: dict[str, int]
    workdirs: list[str]

    def summary(self, data: Any, temperature: float) -> dict[str, Any]:
        """Returns the teacher's JSON-able summary with its validation and test accuracy (of the
        soft targets the student learns from: an ensemble's mean tempered softmax).

        Args:
            data: the run's Dataset.
            temperature: the distillation temperature T.
        """
        import numpy as np

        from nas.training.distill import ensemble_predictions

        pred = ensemble_predictions(self.members, np.concatenate([data.x_val, data.x_test]),
                                    temperature)
        n = len(data.y_val)
        return {"kind": self.kind, "description": self.description, "arch_ids": self.arch_ids,
                "epochs": self.epochs, **self.costs, "workdirs": self.workdirs,
                "val_accuracy": float(np.mean(pred[:n] == data.y_val)) if n else None,
                "test_accuracy": float(np.mean(pred[n:] == data.y_test))}


def _costs(pairs: Sequence[tuple[Any, Mapping[str, Any]]]) -> dict[str, int]:
    from nas.metrics import arch_metrics

    metrics = [arch_metrics(space, arch) for space, arch in pairs]
    return {"macs": sum(m["macs"] for m in metrics), "params": sum(m["params"] for m in metrics)}


class TeacherBuilder:
    """Builds the teacher a ``distill.teacher`` value names (see the module docstring).

    Args:
        space: the searched Space.
        data: the run's Dataset.
        data_spec: its data spec (part of the cache key).
        seed: the run's seed.
        workdir: the pipeline's workdir (trained teachers go to ``W/distill/teacher/``).
        source: the config file (relative paths are also looked up next to it; named in errors).
        teacher_train: TrainConfig fields of a trained teacher (retrain settings +
            ``distill.teacher_train``).
        progress: per-epoch progress bars.
        log: where stage messages go.
    """

    def __init__(self, space: Any, data: Any, data_spec: str, seed: int, workdir: Path,
                 source: str | None, teacher_train: Mapping[str, Any], progress: bool = False,
                 log: Callable[[str], None] = lambda m: None):
        self.space, self.data, self.data_spec, self.seed = space, data, data_spec, seed
        self.root = Path(workdir) / "distill" / TEACHER_DIR
        self.source, self.teacher_train = source, dict(teacher_train)
        self.progress, self.log = progress, log

    def build(self, spec: str, retrain: Mapping[str, Any]) -> Teacher:
        """Returns the teacher `spec` names, training it first where needed (once per setting).

        Args:
            spec: the ``distill.teacher`` value.
            retrain: the retrain stage's result (candidates, winner).

        Raises:
            NasInputError: a bad spec, a missing file, or a teacher with other input or classes
                (one line naming ``distill.teacher``).
        """
        try:
            kind, arg = parse_teacher(spec)
        except ValueError as e:
            raise NasInputError(f"{spec!r} is not allowed; {e}", self.source,
                                "distill.teacher") from None
        if kind in ("best", "top"):
            return self._retrained(kind, arg, retrain)
        if kind == "ckpt":
            return self._checkpoint(self._path(arg))
        if kind == "arch":
            from nas.archfile import load_arch

            path = self._path(arg)
            taf = load_arch(path)
            self._check_io(taf.space, path)
            return self._trained("arch", taf.space, taf.arch, f"arch {path}", retrain)
        from nas.metrics import largest_arch

        return self._trained("largest", self.space, largest_arch(self.space),
                             f"the largest Arch of space {self.space.name!r}", retrain)

    def _trained(self, kind: str, space: Any, arch: Mapping[str, Any], what: str,
                 retrain: Mapping[str, Any]) -> Teacher:
        """A teacher trained from scratch with ``teacher_train``: the retrain stage's run of the
        same Arch when its settings are the same, else a cached training of its own."""
        from nas.training.checkpoint import load_trained

        arch_id = space.arch_id(arch)
        same = [r for r in retrain["candidates"] if r["status"] == "ok" and r["arch_id"] == arch_id
                and space.name == self.space.name and dict(retrain.get("train") or {}) ==
                self.teacher_train]
        if same:
            wd, epochs = Path(same[0]["workdir"]), same[0].get("epochs")
            what = f"{what} (retrained candidate, {wd})"
            self.log(f"distill: teacher {arch_id} is a retrained candidate with the same settings; "
                     "its training is reused")
        else:
            wd, result = cached_training(space, arch, self.data, self.data_spec,
                                         self.teacher_train, self.seed, self.root, self.progress,
                                         lambda m: self.log(f"distill: teacher {m}"))
            epochs, what = result.get("epochs"), f"{what} (trained in {wd})"
        if arch_id == retrain.get("winner") and space.name == self.space.name:
            self.log(f"distill: the winner {arch_id} is the teacher's Arch itself")
        _, model, variables, _ = load_trained(wd)
        return Teacher(kind, what, [(model, variables)], [arch_id], [epochs],
                       _costs([(space, arch)]), [str(wd)])

    def _retrained(self, kind: str, arg: str, retrain: Mapping[str, Any]) -> Teacher:
        from nas.training.checkpoint import load_trained

        ok = [r for r in retrain["candidates"] if r["status"] == "ok"]
        if kind == "best":
            others = [r for r in ok if r["arch_id"] != retrain["winner"]] or ok
            rows = [max(others, key=lambda r: r["val_accuracy"])]
            what = f"retrained {rows[0]['arch_id']}"
        else:
            rows = sorted(ok, key=lambda r: r["val_accuracy"], reverse=True)[:int(arg)]
            if len(rows) < int(arg):
                self.log(f"distill: top:{arg} asked, {len(rows)} retrained candidates are ok; "
                         "the ensemble has those")
            what = (f"ensemble of the top {len(rows)} retrained ("
                    + ", ".join(r["arch_id"] for r in rows) + ")")
        members = [load_trained(r["workdir"])[1:3] for r in rows]
        return Teacher(kind, what, members, [r["arch_id"] for r in rows],
                       [r.get("epochs") for r in rows],
                       _costs([(self.space, r["arch"]) for r in rows]), [r["workdir"] for r in rows])

    def _checkpoint(self, path: str) -> Teacher:
        from nas.training.checkpoint import load_trained

        taf, model, variables, meta = load_trained(path)
        self._check_io(taf.space, path)
        return Teacher("ckpt", f"checkpoint {path}", [(model, variables)],
                       [taf.space.arch_id(taf.arch)], [meta.get("epoch")],
                       _costs([(taf.space, taf.arch)]), [str(path)])

    def _path(self, path: str) -> str:
        """Resolves a teacher's relative path like the config's other paths: the current folder,
        then the config's folder, then the project root (the first that exists; else as given,
        so that loading it names the missing file)."""
        from nas.space import repo_root

        p = Path(path).expanduser()
        if p.is_absolute():
            return str(p)
        bases = [Path.cwd()]
        if self.source:
            bases.append(Path(self.source).parent)
        bases.append(repo_root())
        for base in bases:
            if (base / p).exists():
                return str((base / p).resolve())
        return path

    def _check_io(self, space: Any, where: str) -> None:
        mine = (tuple(self.space.resolution), self.space.in_channels, self.space.num_classes)
        theirs = (tuple(space.resolution), space.in_channels, space.num_classes)
        if mine != theirs:
            raise NasInputError(f"teacher takes {theirs[0]}x{theirs[1]} inputs and {theirs[2]} "
                                f"classes, the searched space {mine[0]}x{mine[1]} and {mine[2]}; "
                                "use a teacher with the same input and classes", where,
                                "distill.teacher")
