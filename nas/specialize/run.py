"""``nas specialize``: one trained supernet, one searched and exported Arch per device.

The supernet (a spos or single_path workdir, :mod:`nas.weight_sharing`) and its data are loaded
once; every device then runs its own constrained evolution (:mod:`nas.specialize.evolution`)
against its own latency table and target, while the supernet scores of sub-networks are cached
and shared by all devices (a sub-network's accuracy does not depend on the device). Nothing is
trained. With ``predictor="mlp"`` the evolution ranks by an MLP fitted on supernet scores of
uniformly drawn sub-networks (:mod:`nas.specialize.predictor`; its held-out rank correlation is
reported), and the ``recheck`` best feasible candidates of each device are scored on the
supernet, the most accurate of them kept. With ``prior="macs"`` every accuracy estimate is
combined with the sub-network's MACs, both as percentiles of a fixed reference sample scored
once (:mod:`nas.specialize.prior`: weight sharing ranks large sub-networks too low). Each
device's Arch is written with its child weights (:mod:`nas.specialize.export`).

A device whose target not even the fastest sub-network meets gets one line saying so (and its
fastest latency) and no Arch; when no device can be met, nothing is loaded.

Example:
    >>> record = supernet_record("runs/digits_spos")
    >>> devices = load_devices(["latency_tables/jax-cpu/tiny.json"], [0.2], record.space)
    >>> summary = specialize(record, devices, Path("runs/spec"), SpecializeOptions())
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nas.data import load_data
from nas.errors import NasInputError
from nas.metrics import arch_metrics
from nas.specialize.devices import Device, SupernetRecord
from nas.specialize.evolution import EvolutionSettings, constrained_evolution, rank_key
from nas.specialize.export import export_subnet, write_summary_file
from nas.specialize.genome import Genome, SubnetGenome
from nas.specialize.predictor import MlpPredictor, rank_check, split_held_out
from nas.specialize.prior import MacsPrior
from nas.single_path.subnets import bottom_levels, top_levels
from nas.training.recalibrate import calibration_batch
from nas.weight_sharing import SupernetScorer, path_accuracy

PREDICTORS = ("none", "mlp")


@dataclasses.dataclass(frozen=True)
class SpecializeOptions:
    """Settings of ``nas specialize``.

    Attributes:
        evolution: the per-device search's settings.
        predictor: 'none' (every candidate scored on the supernet) or 'mlp'.
        predictor_archs: sub-networks scored on the supernet to fit and check the predictor.
        held_out_fraction: share of them held out for its rank check.
        recheck: with a predictor, the best feasible candidates per device re-scored on the
            supernet.
        prior: 'none' (rank by the accuracy estimate) or 'macs' (by the mean of its and the
            MACs' percentiles in a fixed reference sample, :mod:`nas.specialize.prior`).
        prior_archs: distinct uniform sub-networks in that reference sample.
        calibration_images: training images each sub-network's BatchNorm is recalibrated on.
        eval_batch_size: batch size of the evaluation passes.
    """

    evolution: EvolutionSettings = EvolutionSettings()
    predictor: str = "none"
    predictor_archs: int = 200
    held_out_fraction: float = 0.2
    recheck: int = 10
    prior: str = "none"
    prior_archs: int = 64
    calibration_images: int = 512
    eval_batch_size: int = 512


class SupernetAccuracy:
    """Supernet validation accuracies of sub-networks, cached by genome (shared by every
    device); the test split is scored only for the Archs that are kept (:meth:`with_test`).

    Args:
        gs: the space's genomes.
        score: ``score(arch, with_test) -> {"val": accuracy, "test": accuracy or None}``.

    Attributes:
        scored: sub-networks scored (validation cache misses).
        seconds: time spent scoring.
    """

    def __init__(self, gs: SubnetGenome, score: Callable[[Any, bool], dict]):
        self.gs, self.score = gs, score
        self.cache: dict[Genome, float] = {}
        self.scored, self.seconds = 0, 0.0

    def __call__(self, genome: Genome) -> float:
        """Returns the validation accuracy of a canonical genome's sub-network."""
        if genome not in self.cache:
            t0 = time.perf_counter()
            self.cache[genome] = float(self.score(self.gs.arch(genome), False)["val"])
            self.seconds += time.perf_counter() - t0
            self.scored += 1
        return self.cache[genome]

    def val_many(self, genomes: Sequence[Genome]) -> list[float]:
        """Returns the validation accuracies of canonical genomes."""
        return [self(g) for g in genomes]

    def with_test(self, genome: Genome) -> dict:
        """Returns {"val", "test"} of a sub-network (the test split scored now, not cached)."""
        t0 = time.perf_counter()
        out = dict(self.score(self.gs.arch(genome), True))
        self.seconds += time.perf_counter() - t0
        return out


def fit_predictor(gs: SubnetGenome, accuracy: SupernetAccuracy, options: SpecializeOptions,
                  ) -> tuple[MlpPredictor, dict[str, Any]]:
    """Scores ``predictor_archs`` distinct uniform sub-networks on the supernet, fits the MLP on
    most of them and checks its ranking on the rest.

    Returns:
        (the predictor, {"kind", "train", "held_out", "kendall_tau", "spearman", "rmse",
        "train_rmse", "seconds"}).
    """
    t0 = time.perf_counter()
    pool = uniform_genomes(gs, options.predictor_archs, options.evolution.seed)
    scores = accuracy.val_many(pool)
    train, held = split_held_out(len(pool), options.held_out_fraction, options.evolution.seed)
    features = gs.features(pool)
    predictor = MlpPredictor.fit(features[train], [scores[i] for i in train],
                                 seed=options.evolution.seed)
    check = rank_check(predictor.predict(features[held]), [scores[i] for i in held])
    return predictor, {"kind": "mlp", "train": int(len(train)), "held_out": check["n"],
                       "kendall_tau": check["kendall_tau"], "spearman": check["spearman"],
                       "rmse": check["rmse"], "train_rmse": predictor.train_rmse,
                       "seconds": round(time.perf_counter() - t0, 3)}


def uniform_genomes(gs: SubnetGenome, count: int, seed: int) -> list[Genome]:
    """Returns up to `count` distinct canonical genomes drawn uniformly (fewer where the space
    has fewer); the same seed gives the same sequence, so a shorter draw is a prefix of a
    longer one (the predictor's pool and the prior's reference share their supernet scores)."""
    rng = np.random.default_rng(seed + 7919)
    genomes: dict[Genome, None] = {}
    for _ in range(20 * count):
        genomes[gs.sample(rng)] = None
        if len(genomes) == count:
            break
    return list(genomes)


class SubnetMacs:
    """MACs of sub-networks, cached by genome.

    Args:
        gs: the space's genomes.
    """

    def __init__(self, gs: SubnetGenome):
        self.gs, self.cache = gs, {}

    def __call__(self, genomes: Sequence[Genome]) -> list[float]:
        """Returns the MACs of canonical genomes' sub-networks."""
        for g in genomes:
            if g not in self.cache:
                self.cache[g] = float(arch_metrics(self.gs.space, self.gs.arch(g))["macs"])
        return [self.cache[g] for g in genomes]


def sandwich_ends(gs: SubnetGenome) -> list[Genome]:
    """The smallest and the largest sub-network: the sandwich rule trains them on every step,
    so they start every device's population where they meet its target."""
    return [gs.of_levels(bottom_levels(gs.plans)), gs.of_levels(top_levels(gs.plans))]


def unmet_line(device: Device, fastest_ms: float) -> str:
    """The one line of a device whose target no sub-network meets."""
    return (f"{device.name}: no sub-network of the supernet meets --target {device.target_ms:g} "
            f"ms on {device.table_path} (its fastest predicts {fastest_ms:.6g} ms); give a "
            f"target >= {fastest_ms:.6g}")


def fastest_latencies(gs: SubnetGenome, devices: Sequence[Device]) -> list[float]:
    """Returns each device's fastest sub-network's predicted latency (ms)."""
    return [float(d.table.predict(gs.arch(gs.fastest(d.table.predict)))) for d in devices]


def specialize(record: SupernetRecord, devices: Sequence[Device], out: Path,
               options: SpecializeOptions = SpecializeOptions(),
               log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Searches and exports one Arch per device.

    Args:
        record: the checked supernet workdir.
        devices: the checked devices.
        out: the output folder (one subfolder per device, plus specialize.json).
        options: search, predictor and scoring settings.
        log: called with a progress line per stage.

    Returns:
        The summary (also ``out/specialize.json``): supernet, predictor, and per device its
        target, fastest latency, whether it was met, Arch, predicted latency, supernet
        accuracy, seconds and files.

    Raises:
        NasInputError: `out` is a file, no device's target can be met (one line), or the
            supernet workdir has no checkpoint.
    """
    t_start = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise NasInputError(f"{out} is a file; give a folder (created if missing)", field="--out")
    gs = SubnetGenome(record.space)
    fastest = fastest_latencies(gs, devices)
    unmet = {d.name: unmet_line(d, f) for d, f in zip(devices, fastest) if f > d.target_ms}
    if len(unmet) == len(devices):
        raise NasInputError("; ".join(unmet.values()), field="--target")
    t0 = time.perf_counter()
    try:
        sn = SupernetScorer(str(record.workdir), options.calibration_images,
                            options.eval_batch_size).load()
    except NasInputError as e:
        raise NasInputError(e.message, field="--supernet") from None
    data = load_data(sn.data, sn.space, seed=sn.seed)
    x_cal = calibration_batch(data.x_train, options.calibration_images, sn.seed)
    load_seconds = time.perf_counter() - t0
    log(f"loaded the {sn.strategy} supernet {sn.workdir} ({sn.space.name}, {sn.epochs} epochs, "
        f"data {sn.data}) in {load_seconds:.1f} s")
    val_only = dataclasses.replace(data, x_test=None, y_test=None)   # the search never sees test

    def score(arch: Any, with_test: bool) -> dict:
        return path_accuracy(sn, arch, data if with_test else val_only,
                             options.calibration_images, options.eval_batch_size)

    accuracy = SupernetAccuracy(gs, score)
    predictor, predictor_info = None, None
    if options.predictor == "mlp":
        predictor, predictor_info = fit_predictor(gs, accuracy, options)
        log(f"predictor: mlp fitted on {predictor_info['train']} supernet-scored sub-networks; "
            f"held-out ({predictor_info['held_out']}) kendall tau "
            f"{_fmt(predictor_info['kendall_tau'])}, spearman {_fmt(predictor_info['spearman'])}")
    macs = SubnetMacs(gs)
    priors, prior_info = {}, None
    if options.prior == "macs":
        priors, prior_info = macs_priors(gs, accuracy, predictor, macs, options)
        log(f"prior: MACs, against {prior_info['reference_archs']} uniform sub-networks scored "
            "on the supernet")
    results = []
    for device, fastest_ms in zip(devices, fastest):
        if device.name in unmet:
            results.append({**_device_head(device, fastest_ms), "met": False,
                            "message": unmet[device.name]})
            continue
        results.append(_specialize_device(device, fastest_ms, gs, accuracy, predictor, sn,
                                          x_cal, out, options, macs, priors))
        r = results[-1]
        log(f"{device.name}: {r['arch_id']} {r['latency_ms']:.6g} ms <= {device.target_ms:g} ms, "
            f"supernet val accuracy {r['val_accuracy']:.4f}, {r['seconds']:.1f} s")
    summary = {"command": "specialize", "supernet": str(sn.workdir), "strategy": sn.strategy,
               "space": sn.space.name, "data": sn.data, "supernet_epochs": sn.epochs,
               "calibration_images": options.calibration_images,
               "evolution": dataclasses.asdict(options.evolution), "predictor": predictor_info,
               "prior": prior_info,
               "supernet_scored": accuracy.scored,
               "supernet_score_seconds": round(accuracy.seconds, 3),
               "load_seconds": round(load_seconds, 3), "out": str(out), "devices": results,
               "unmet": list(unmet.values()),
               "seconds": round(time.perf_counter() - t_start, 3)}
    summary["summary_file"] = write_summary_file(out, summary)
    return summary


def macs_priors(gs: SubnetGenome, accuracy: SupernetAccuracy, predictor: MlpPredictor | None,
                macs: SubnetMacs, options: SpecializeOptions,
                ) -> tuple[dict[str, MacsPrior], dict[str, Any]]:
    """Scores ``prior_archs`` uniform sub-networks on the supernet (and by the predictor, if
    any) and returns the MACs priors of both kinds of estimate.

    Returns:
        ({"supernet": prior[, "predictor": prior]}, {"kind", "reference_archs",
        "reference_arch_ids"}).
    """
    reference = uniform_genomes(gs, options.prior_archs, options.evolution.seed)
    reference_macs = macs(reference)
    priors = {"supernet": MacsPrior(accuracy.val_many(reference), reference_macs)}
    if predictor is not None:
        priors["predictor"] = MacsPrior(predictor.predict(gs.features(reference)), reference_macs)
    return priors, {"kind": "macs", "reference_archs": len(reference),
                    "reference_arch_ids": [gs.space.arch_id(gs.arch(g)) for g in reference]}


def _device_head(device: Device, fastest_ms: float) -> dict[str, Any]:
    """The device fields every result has."""
    return {"device": device.name, "table": device.table_path, "backend": device.table.backend,
            "table_device": str(device.table.data["backend"].get("device", "")),
            "target_ms": device.target_ms, "fastest_ms": fastest_ms}


def _specialize_device(device: Device, fastest_ms: float, gs: SubnetGenome,
                       accuracy: SupernetAccuracy, predictor: MlpPredictor | None, sn: Any,
                       x_cal: Any, out: Path, options: SpecializeOptions, macs: SubnetMacs,
                       priors: dict[str, MacsPrior]) -> dict[str, Any]:
    """One device's search (scored on the supernet or by the predictor, then rechecked; with
    a prior, each estimate combined with MACs) and export; returns its result record."""
    t0 = time.perf_counter()
    scored_before = accuracy.scored

    def with_prior(kind: str, estimates: Sequence[float], genomes: Sequence[Genome]) -> list[float]:
        if kind not in priors:
            return list(estimates)
        return [float(v) for v in priors[kind].combine(estimates, macs(genomes))]

    if predictor is None:
        def score_many(genomes: Sequence[Genome]) -> list[float]:
            return with_prior("supernet", accuracy.val_many(genomes), genomes)
    else:
        def score_many(genomes: Sequence[Genome]) -> list[float]:
            return with_prior("predictor", predictor.predict(gs.features(genomes)), genomes)
    result = constrained_evolution(gs, device.table.predict, device.target_ms, score_many,
                                   options.evolution, seeds=sandwich_ends(gs))
    predicted_accuracy = None
    if predictor is None:
        best = result.best
    else:
        finalists = result.ranked()[:max(1, options.recheck)]
        rechecked = [dataclasses.replace(c, score=with_prior("supernet", [accuracy(c.genome)],
                                                             [c.genome])[0]) for c in finalists]
        best = min(rechecked, key=rank_key)
        predicted_accuracy = float(predictor.predict(gs.features([best.genome]))[0])
    scores = accuracy.with_test(best.genome)
    record = {**_device_head(device, fastest_ms), "met": best.latency_ms <= device.target_ms,
              "arch_id": best.arch_id, "arch": best.arch, "latency_ms": best.latency_ms,
              "val_accuracy": scores["val"], "test_accuracy": scores["test"],
              "predicted_accuracy": predicted_accuracy, "macs": macs([best.genome])[0],
              "score": best.score, "candidates": len(result.candidates),
              "proposals": result.proposals,
              "supernet_scored": accuracy.scored - scored_before}
    folder = out / device.name
    meta = {"source": f"nas specialize, supernet {sn.workdir}",
            "scored_by": "supernet + MACs prior" if priors else "supernet",
            "note": "scored on the supernet with recalibrated BatchNorm, not retrained; "
                    "child/ holds its weights cut from the supernet",
            **{k: record[k] for k in ("device", "table", "backend", "table_device",
                                      "target_ms", "fastest_ms", "arch_id", "latency_ms",
                                      "val_accuracy", "test_accuracy", "predicted_accuracy")}}
    record.update(export_subnet(folder, sn, x_cal, best.arch, meta))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["summary_file"] = write_summary_file(folder, record)
    return record


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"

