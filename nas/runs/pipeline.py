"""The one-command pipeline: search -> retrain top-k -> distill the winner -> export -> report.

``run_pipeline(loaded, W)`` runs the stages of a pipeline config (a search config plus the
optional ``retrain``, ``distill`` and ``export`` sections of :mod:`nas.runs.config`). Each stage writes
its outputs under its own folder of the workdir and, when it completes, a marker
``W/stages/<stage>.json`` (written atomically, holding the stage's result). A rerun skips every
stage whose marker exists, and a stage interrupted midway resumes from what it left (the search
replays its history.jsonl, training resumes from its orbax checkpoints)::

    W/search/    history.jsonl, best_arch.json, summary.json   (nas search, every strategy)
    W/retrain/<arch_id>/   arch.json, checkpoints/, metrics.jsonl, tb/, result.json
    W/distill/student/   the distilled winner (same layout as a retrain folder)
    W/distill/teacher/<arch_id>-<key>/   a trained teacher ('largest', 'arch:'), once per setting
    W/distill/scratch/<arch_id>-<key>/   the winner from scratch with the student's settings
                                         (only when they differ from the retrain settings)
    W/export/    arch.json, model.npk, orbax/, model.stablehlo, model.onnx, export.json
    W/stages/    search.json, retrain.json, distill.json, export.json   (completion markers)
    W/report.md, W/plots/*.png, W/tb/    (rewritten at the end of every run)

Example:
    >>> summary = run_pipeline(load_config("experiments/digits_random_smoke.yaml"), "runs/smoke")
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.runs.config import LoadedConfig, SearchConfig
from nas.errors import NasInputError
from nas.runs.report import write_report
from nas.ray_data import SharedData, share_with_trials, trial_dataset
from nas.space import resolve_space
from nas.runs.stages import STAGES, read_marker, stage_marker, write_json_atomic
from nas.strategies import registry
from nas.strategies.outputs import HISTORY_FILE, candidate_records

#: one-shot searches with objective.limits: extra runner-ups drawn, as some may break the limits
RUNNER_UP_SPARE = 8


def _train_settings(config: SearchConfig, *overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config.train)
    for o in overrides:
        out.update(o)
    return out


@dataclasses.dataclass(frozen=True)
class RetrainJob:
    """Trains one Arch from scratch in its own work directory (picklable for Ray workers).

    Attributes:
        space_json: the space definition as JSON.
        data: data spec.
        seed: split and training seed.
        train: TrainConfig fields.
        root: folder holding one work directory per Arch (absolute).
        progress: show a per-epoch progress bar.
        shared_data: the data set in Ray's object store (set by
            :func:`nas.ray_data.share_with_trials`), or None: the process loads ``data``.
    """

    space_json: str
    data: str
    seed: int
    train: Mapping[str, Any]
    root: str
    progress: bool = False
    shared_data: SharedData | None = None

    def __call__(self, arch: Mapping[str, Any], report: Callable[[dict], None] | None = None) -> dict:
        """Trains `arch` (resuming from its checkpoints) and returns its result summary.

        Args:
            arch: the Arch.
            report: optional per-epoch callback ({'epoch', 'val_accuracy'}).

        Returns:
            {arch_id, val_accuracy, test_accuracy, train_seconds, params, epochs, workdir, pid}.

        Raises:
            NasInputError: the data cannot be loaded (on a Ray node: its path is missing there).
        """
        from nas.data import load_data
        from nas.space import Space
        from nas.training.trainer import TrainConfig, train_arch

        space = Space.from_dict(json.loads(self.space_json))
        data = trial_dataset(self.shared_data, self.data,
                             lambda: load_data(self.data, space, seed=self.seed))
        config = TrainConfig(**dict(self.train), seed=self.seed, progress=self.progress)
        workdir = Path(self.root) / space.arch_id(arch)

        def on_epoch_end(epoch: int, record: dict) -> None:
            if report is not None and record.get("val_accuracy") is not None:
                report({"epoch": int(epoch), "val_accuracy": float(record["val_accuracy"])})

        result = train_arch(space, arch, data, config, workdir=str(workdir), on_epoch_end=on_epoch_end)
        keep = ("arch_id", "val_accuracy", "test_accuracy", "train_seconds", "params", "epochs")
        return {**{k: result.get(k) for k in keep}, "workdir": str(workdir), "pid": os.getpid()}


class Pipeline:
    """The stages of one pipeline run (see the module docstring).

    Args:
        loaded: the validated config.
        workdir: output folder.
        progress: progress bars on stderr.
        log: where stage messages go (default stderr).
    """

    def __init__(self, loaded: LoadedConfig, workdir: str | os.PathLike, progress: bool = True,
                 log: Callable[[str], None] | None = None):

        self.loaded = loaded
        self.config = loaded.config
        self.space = resolve_space(self.config.space, loaded.source)
        self.workdir = Path(workdir).resolve()
        self.progress = progress
        self.log = log or (lambda m: sys.stderr.write(f"nas run: {m}\n"))
        self.objective = self.config.objective.build()
        self._data = None

    # ------------------------------------------------------------------------------- helpers
    @property
    def data(self):
        """The data set (loaded once, split with the config's seed like the search's)."""
        if self._data is None:
            from nas.data import load_data

            self._data = load_data(self.config.data, self.space, seed=self.config.seed)
        return self._data

    def space_json(self) -> str:
        """The space definition as JSON (what workers rebuild it from)."""
        return json.dumps(self.space.to_dict(), sort_keys=True)

    def costs(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Cost metrics of an Arch (latency_ms from the config's table, if any)."""
        from nas.training.evaluate import cost_function

        return cost_function(self.space, self.loaded.latency_table)(arch)

    def within_limits(self, archs: list[dict]) -> list[dict]:
        """Returns the Archs within ``objective.limits`` (all of them without limits); logs the
        ones left out.

        Raises:
            NasInputError: none is within the limits.
        """
        from nas.limits import violations, violations_text

        limits = self.config.objective.limits
        kept, dropped = [], []
        for arch in archs:
            broken = violations(self.costs(arch), limits) if limits else []
            (dropped if broken else kept).append((arch, broken))
        for arch, broken in dropped:
            self.log(f"search: {self.space.arch_id(arch)} left out: over objective.limits "
                     f"({violations_text(broken)})")
        if not kept:
            raise NasInputError(f"the one-shot search's derived Arch and its runner-ups all break "
                                f"objective.limits ({violations_text(dropped[0][1])} for the "
                                "derived one); weigh the cost more (strategy.params) or loosen "
                                "the limits", self.loaded.source, "objective.limits")
        return [arch for arch, _ in kept]

    def _executor(self):
        from nas.executor import make_executor

        ex = self.config.executor
        return make_executor(ex.kind, ex.address, ex.workers, ex.cpus_per_trial, ex.retries,
                             gpus_per_trial=ex.gpus_per_trial, storage=ex.storage)

    def stage_settings(self, stage: str, legacy: bool = False) -> str:
        """A hash of the config parts a stage's result depends on (its own and earlier stages').

        Args:
            stage: one of :data:`STAGES`.
            legacy: hash the search config as earlier versions did (space as written, see
                :meth:`nas.runs.config.SearchConfig.path_fingerprint`), for their markers.

        Returns:
            16 hex digits.
        """
        import hashlib

        search = self.config.path_fingerprint() if legacy else self.config.fingerprint()
        parts = {"search": search}
        for s in STAGES[1:STAGES.index(stage) + 1]:
            parts[s] = getattr(self.config, s).model_dump()
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run_stage(self, stage: str, fn: Callable[[], dict]) -> dict:
        """Runs a stage unless its marker exists; writes the marker when it completes.

        Raises:
            NasInputError: the stage finished earlier with other settings.
        """
        settings = self.stage_settings(stage)
        done = read_marker(self.workdir, stage)
        if done is not None:
            if done.get("settings") not in (None, settings, self.stage_settings(stage, legacy=True)):
                raise NasInputError(
                    f"stage {stage!r} finished with other settings (config sections up to "
                    f"'{stage}' changed); use a new --workdir, or delete this marker and the later "
                    "stages' markers to redo them", str(stage_marker(self.workdir, stage)))
            self.log(f"{stage}: already done, skipped")
            return done
        self.log(f"{stage}: started")
        start = time.time()
        result = fn()
        result["settings"] = settings
        result["seconds"] = round(time.time() - start, 2)
        write_json_atomic(stage_marker(self.workdir, stage), result)
        self.log(f"{stage}: done in {result['seconds']:.1f} s")
        return result

    # -------------------------------------------------------------------------------- stages
    @property
    def one_shot(self) -> bool:
        """Whether the strategy trains a supernet (fbnet, proxyless, single_path)."""
        return registry.entry(self.config.strategy.name, self.loaded.source).family == "one_shot"

    def search(self) -> dict:
        """Stage 1: the architecture search (resumable through its history or checkpoints)."""
        from nas.search import run_search

        if self.one_shot:  # fbnet / proxyless supernet, or single_path's superkernel
            summary = run_search(self.loaded, self.workdir / "search",
                                 progress=self.progress).summary()
            top_k = self.config.retrain.top_k
            spare = RUNNER_UP_SPARE if self.config.objective.limits else 0  # some may break them
            archs = runner_ups(self.space, summary["arch"], summary.get("distribution") or {},
                               top_k + spare, seed=self.config.seed)
            archs = self.within_limits(archs)[:top_k]
            cands = [{"arch_id": self.space.arch_id(a), "arch": a, "reward": None,
                      "accuracy": None, "status": "ok"} for a in archs]
            return {"summary": summary, "one_shot": True, "candidates": cands}
        result = run_search(self.loaded, self.workdir / "search", progress=self.progress)
        summary = result.summary()
        if summary["best"] is None:
            raise NasInputError("the search evaluated no candidate successfully; see "
                                f"{self.workdir / 'search' / 'history.jsonl'} for the errors",
                                str(self.workdir / "search"))
        return {"summary": summary, "history": str(self.workdir / "search" / "history.jsonl")}

    def top_candidates(self) -> list[dict]:
        """The top-k distinct ok candidates of the search history, best reward first (one-shot:
        the derived Arch and its runner-ups within ``objective.limits``, see :func:`runner_ups`).
        Candidates rejected for breaking the limits were never trained and are not candidates
        (``kind: "rejected"``, :func:`nas.strategies.outputs.rejected_records`)."""
        from nas.history import History

        marker = read_marker(self.workdir, "search") or {}
        if marker.get("one_shot"):
            return marker["candidates"][:self.config.retrain.top_k]

        records = candidate_records(History(self.workdir / "search" / HISTORY_FILE).load())
        ok = [r for r in records if r["status"] == "ok" and r.get("reward") is not None]
        ok.sort(key=lambda r: r["reward"], reverse=True)
        seen, top = set(), []
        for r in ok:
            if r["arch_id"] not in seen:
                seen.add(r["arch_id"])
                top.append(r)
        return top[:self.config.retrain.top_k]

    def retrain(self) -> dict:
        """Stage 2: retrain the top-k candidates from scratch (on Ray when configured)."""
        top = self.top_candidates()
        train = _train_settings(self.config, self.config.retrain.train)
        local = self.config.executor.kind == "local"
        job = RetrainJob(self.space_json(), self.config.data, self.config.seed, train,
                         str(self.workdir / "retrain"), progress=self.progress and local)
        executor = self._executor()
        try:
            job = share_with_trials(job, executor, preloaded=lambda: self.data)
            outcomes = executor.map(job, [r["arch"] for r in top])
        finally:
            executor.close()
        rows = []
        for rec, outcome in zip(top, outcomes):
            row = {"arch_id": rec["arch_id"], "arch": rec["arch"], "status": outcome.status,
                   "search_accuracy": rec.get("accuracy"), "search_reward": rec.get("reward"),
                   "error": outcome.error}
            if outcome.status == "ok":
                row.update(outcome.value)
                costs = self.costs(rec["arch"])
                row["cost"] = costs
                row["latency_ms"] = costs.get("latency_ms")
                row["reward"] = self.objective.reward({**costs, "accuracy": row["val_accuracy"]})
            rows.append(row)
        ok = [r for r in rows if r["status"] == "ok"]
        if not ok:
            errors = "; ".join(f"{r['arch_id']}: {r['error']}" for r in rows)
            raise NasInputError(f"no candidate could be retrained ({errors})",
                                str(self.workdir / "retrain"))
        winner = max(ok, key=lambda r: r["reward"])
        return {"candidates": rows, "winner": winner["arch_id"], "train": train}

    def distill(self, retrain: Mapping[str, Any]) -> dict:
        """Stage 3: distill the winner from the teacher (:mod:`nas.runs.teacher`), and train it
        from scratch for the same epochs (the KD table's baseline, :meth:`scratch_student`);
        keep the better (validation accuracy) of the KD student and the retrained winner."""
        from nas.runs.teacher import TeacherBuilder
        from nas.training.distill import DistillConfig, distill_arch
        from nas.training.trainer import TrainConfig

        winner = next(r for r in retrain["candidates"] if r["arch_id"] == retrain["winner"])
        d = self.config.distill
        if not d.enabled:
            return {"enabled": False, "final_workdir": winner["workdir"], "final": "retrained"}
        teacher_train = _train_settings(self.config, self.config.retrain.train, d.teacher_train)
        teacher = TeacherBuilder(self.space, self.data, self.config.data, self.config.seed,
                                 self.workdir, self.loaded.source, teacher_train, self.progress,
                                 self.log).build(d.teacher, retrain)
        train = _train_settings(self.config, self.config.retrain.train, d.train)
        config = TrainConfig(**train, seed=self.config.seed, progress=self.progress)
        dconfig = DistillConfig(temperature=d.temperature, kd_weight=d.kd_weight,
                                hint_weight=d.hint_weight).validate()
        wd = self.workdir / "distill" / "student"
        result = distill_arch(self.space, winner["arch"], self.data, config, dconfig,
                              teacher.members, workdir=str(wd), teacher_ids=[teacher.description])
        student = {k: result.get(k) for k in ("val_accuracy", "test_accuracy", "train_seconds",
                                              "epochs")}
        better = student["val_accuracy"] >= winner["val_accuracy"]
        return {"enabled": True, "teacher": teacher.description,
                "teacher_summary": teacher.summary(self.data, d.temperature),
                "student": student, "scratch": self.scratch_student(winner, train, retrain),
                "workdir": str(wd),
                "retrained": {k: winner.get(k) for k in ("val_accuracy", "test_accuracy", "epochs")},
                "final": "distilled" if better else "retrained",
                "final_workdir": str(wd) if better else winner["workdir"]}

    def scratch_student(self, winner: Mapping[str, Any], train: Mapping[str, Any],
                        retrain: Mapping[str, Any]) -> dict:
        """The distilled student trained from scratch with the same settings and seed.

        The retrain stage's run of the winner is that run when its settings are the student's;
        otherwise it is trained (once per setting) in ``W/distill/scratch/<arch_id>-<key>/``.

        Returns:
            {val_accuracy, test_accuracy, epochs, workdir, reused_retrain}.
        """
        from nas.runs.teacher import cached_training

        keep = ("val_accuracy", "test_accuracy", "epochs")
        if dict(train) == dict(retrain.get("train") or {}):
            return {**{k: winner.get(k) for k in keep}, "workdir": winner["workdir"],
                    "reused_retrain": True}
        wd, result = cached_training(self.space, winner["arch"], self.data, self.config.data, train,
                                     self.config.seed, self.workdir / "distill" / "scratch",
                                     self.progress,
                                     lambda m: self.log(f"distill: scratch student {m}"))
        return {**{k: result.get(k) for k in keep}, "workdir": str(wd), "reused_retrain": False}

    def export(self, distill: Mapping[str, Any]) -> dict:
        """Stage 4: export the final model (see :mod:`nas.export`)."""
        from nas.training.checkpoint import load_trained
        from nas.export.exporter import (ExportOptions, export_model, preprocess_meta,
                                raise_on_failed_check)

        af, _, variables, _ = load_trained(distill["final_workdir"])
        e = self.config.export
        options = ExportOptions(formats=e.formats, calibration=self.data.x_train[:e.calibration],
                                measure_latency=e.measure_latency,
                                latency_table=self.loaded.latency_table,
                                onnx_weight_only_int8=e.onnx_int8_weights,
                                onnx_recalibrate=e.recalibrate)
        meta = {"preprocess": preprocess_meta(self.data), "data": self.config.data,
                "trained": distill["final"], "source": f"nas run {self.loaded.source}"}
        report = export_model(af, variables, self.workdir / "export", options,
                              check=(self.data.x_test, self.data.y_test), meta=meta)
        raise_on_failed_check(report)  # the run stops here; earlier stages stay done
        return {"report": str(self.workdir / "export" / "export.json"), "ok": report["ok"],
                "files": report["files"], "latency": report.get("latency"),
                "sizes": report["sizes"], "checks": report["checks"]}

    # ----------------------------------------------------------------------------------- all
    def run(self) -> dict:
        """Runs every stage not yet done, then writes the report; returns the run's summary."""
        from nas.runs.workdir import lock_workdir

        claim = lock_workdir(self.workdir)  # flock, held for this run (re-entrant under `nas run`)
        write_json_atomic(self.workdir / "pipeline.json",
                          {"config": self.config.model_dump(), "source": self.loaded.source})
        start = time.time()
        results = {"search": self.run_stage("search", self.search)}
        results["retrain"] = self.run_stage("retrain", self.retrain)
        results["distill"] = self.run_stage("distill", lambda: self.distill(results["retrain"]))
        results["export"] = self.run_stage("export", lambda: self.export(results["distill"]))
        report = write_report(self.workdir, self.objective)
        claim.release()
        return {"workdir": str(self.workdir), "seconds": round(time.time() - start, 2),
                "stages": {s: results[s].get("seconds") for s in STAGES},
                "winner": report["winner"], "report": report["report_md"],
                "plots": report["plots"], "export_ok": results["export"]["ok"]}


def runner_ups(space: Any, arch: Mapping[str, Any], distribution: Mapping[str, Mapping[str, float]],
               k: int, seed: int = 0) -> list[dict]:
    """Returns the derived Arch of a one-shot search and up to k - 1 runner-ups.

    A runner-up changes one decision of the derived Arch to its second most probable choice;
    the decisions the supernet was least sure about (smallest gap between its two most probable
    choices) come first. Invalid or duplicate Archs are skipped. When the distribution yields
    fewer than k - 1 (Single-Path NAS has thresholds, not probabilities), the rest are random
    neighbours: one decision changed (``space.mutate`` seeded with `seed`).

    Args:
        space: the Space.
        arch: the derived Arch.
        distribution: {label: {str(choice): probability}} of the final architecture weights.
        k: how many Archs to return at most.
        seed: seed of the random neighbours.

    Returns:
        [arch, runner-up 1, ...], distinct canonical Archs.
    """
    out = [space.validate(arch)]
    seen = {space.arch_id(out[0])}
    choices = dict(space.decisions())
    gaps = []
    for label, probs in distribution.items():
        if label not in choices or len(probs) < 2:
            continue
        ranked = sorted(probs.items(), key=lambda kv: kv[1], reverse=True)
        by_text = {str(v): v for v in choices[label]}
        if ranked[1][0] in by_text:
            gaps.append((ranked[0][1] - ranked[1][1], label, by_text[ranked[1][0]]))
    for _, label, value in sorted(gaps, key=lambda g: (g[0], g[1])):
        if len(out) >= k:
            break
        try:
            cand = space.validate({**out[0], label: value})
        except NasInputError:
            continue
        if space.arch_id(cand) not in seen:
            seen.add(space.arch_id(cand))
            out.append(cand)
    if len(out) < k and space.size() > 1:
        import numpy as np

        rng = np.random.default_rng(seed)
        for _ in range(20 * k):
            if len(out) >= k:
                break
            cand = space.mutate(out[0], rng)
            if space.arch_id(cand) not in seen:
                seen.add(space.arch_id(cand))
                out.append(cand)
    return out[:k]


def run_pipeline(loaded: LoadedConfig, workdir: str | os.PathLike, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> dict:
    """Runs (or resumes) the whole pipeline; see :class:`Pipeline`.

    Returns:
        {"workdir", "seconds", "stages" (seconds of each stage run now or before), "winner",
        "report", "plots", "export_ok"}.
    """
    return Pipeline(loaded, workdir, progress, log).run()
