"""Ranking fidelity: do the supernets rank Archs as training them from scratch does?

Trains the supernets (``--supernets``: spos = uniform single-path sampling with the sandwich rule
and in-place distillation over the single-path superkernel; fbnet and proxyless = the 'paths'
supernets, on the same space and data where their spaces allow), draws ``--archs`` distinct
Archs stratified over size (one per MACs quantile of a large random pool, so small and large
networks are both in the sample; Archs that are the same sub-network of the superkernel, e.g.
expand 6 at width 0.5 and expand 3 at width 1.0, count once), trains each from scratch with the
same short schedule (``--scratch-epochs``, averaged over ``--scratch-seeds``), scores each on
every supernet with per-sub-network BatchNorm recalibration
(:class:`nas.weight_sharing.SupernetScorer`, the fast path of ``evaluation.mode: supernet``)
and prints, per supernet, Kendall's tau and Spearman's rho between the supernet score and the
from-scratch accuracy (validation; test beside it). The issue's bar: tau >= 0.6 for spos.

Everything is kept under ``--workdir`` and a rerun resumes: supernet searches from their
checkpoints, from-scratch results from ``scratch.jsonl``.

The full run (the lead's, alone on a quiet machine; hours on 2 CPU cores):

    python experiments/bench/supernet_ranking.py --space tiny --data digits --archs 36 \
        --scratch-epochs 15 --scratch-seeds 2 --spos-epochs 60 --paths-epochs 30 \
        --workdir runs/supernet_ranking --out runs/supernet_ranking/ranking.json

On a task where Archs differ by more than training noise (measured 2026-12-05: the rank16
space on 3000 Fashion-MNIST images, ``experiments/data/mnist_subset.py``; on tiny/digits two
from-scratch seeds rank 36 Archs with tau 0.17, so nothing can be judged there):

    python experiments/bench/supernet_ranking.py --space experiments/spaces/rank16.yaml \
        --data npz:fashion3k.npz --archs 30 --scratch-epochs 5 --scratch-seeds 2 \
        --spos-epochs 30 --supernets spos --workdir runs/ranking_rank16

``--supernets none`` trains only from scratch: the seed-vs-seed tau it prints is the ceiling
any supernet can reach on that task.

A smoke run (end to end in minutes, meaningless numbers):

    python experiments/bench/supernet_ranking.py --archs 4 --scratch-epochs 1 \
        --spos-epochs 1 --paths-epochs 1 --supernets spos,fbnet --workdir /tmp/ranking_smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

from nas.data import load_data
from nas.errors import NasInputError
from nas.metrics import arch_metrics
from nas.runs.config import parse_config
from nas.runs.workdir import write_json_atomic
from nas.search import run_search
from nas.single_path.plan import levels_to_arch, space_plan
from nas.single_path.subnets import arch_levels
from nas.space import Space
from nas.strategies import registry
from nas.training.trainer import TrainConfig, train_arch
from nas.weight_sharing import SupernetScorer

SCRATCH_FILE = "scratch.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's settings (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny", help="a space name or YAML file")
    ap.add_argument("--data", default="digits", help="data spec (digits, npz:PATH, cifar10:DIR)")
    ap.add_argument("--seed", type=int, default=0, help="data split and supernet seed")
    ap.add_argument("--arch-seed", type=int, default=1, help="seed of the Arch sample")
    ap.add_argument("--archs", type=int, default=36, help="Archs ranked (>= 30 for the bar)")
    ap.add_argument("--pool", type=int, default=40, help="random Archs per sampled Arch")
    ap.add_argument("--scratch-epochs", type=int, default=15)
    ap.add_argument("--scratch-seeds", type=int, default=1,
                    help="from-scratch runs per Arch (seeds seed..seed+n-1), accuracies averaged")
    ap.add_argument("--supernets", default="spos,fbnet,proxyless",
                    help="comma-separated one-shot strategies to train and compare ('none': only "
                         "train from scratch, e.g. to see whether a task ranks Archs repeatably)")
    ap.add_argument("--spos-epochs", type=int, default=60)
    ap.add_argument("--spos-params", default="{}",
                    help='JSON strategy.params of spos, e.g. \'{"random_subnets": 2}\'')
    ap.add_argument("--paths-epochs", type=int, default=30, help="fbnet / proxyless epochs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=0.003)
    ap.add_argument("--calibration-images", type=int, default=512,
                    help="training images of each sub-network's BatchNorm recalibration")
    ap.add_argument("--workdir", required=True, help="folder of the supernets and results")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    return ap.parse_args(argv)


def supernet_config(name: str, a: argparse.Namespace) -> dict:
    """The search config that trains supernet `name` (metric macs: no latency table needed)."""
    base = {"space": a.space, "data": a.data, "seed": a.seed, "objective": {"metric": "macs"}}
    train = {"batch_size": a.batch_size, "learning_rate": a.learning_rate}
    if name == "spos":
        return {**base, "strategy": {"name": "spos", "params": json.loads(a.spos_params)},
                "train": {**train, "epochs": a.spos_epochs}}
    if name == "single_path":
        return {**base, "strategy": {"name": "single_path", "params": {"lam": 0.0}},
                "train": {**train, "epochs": a.spos_epochs}}
    return {**base, "strategy": {"name": name, "params": {
        "epochs": a.paths_epochs, "warmup_epochs": max(1, a.paths_epochs // 4),
        "batch_size": a.batch_size, "weight_lr": a.learning_rate}}}


def train_supernets(a: argparse.Namespace, root: Path) -> dict[str, str | None]:
    """Trains (or resumes) each supernet; {name: workdir, or None with the reason printed}."""
    out = {}
    for name in [n.strip() for n in a.supernets.split(",") if n.strip() not in ("", "none")]:
        if registry.entry(name).family != "one_shot":
            raise SystemExit(f"--supernets: {name} is not a one-shot strategy")
        t = time.perf_counter()
        try:
            summary = run_search(parse_config(supernet_config(name, a), f"{name}.yaml"),
                                 root / name).summary()
        except NasInputError as e:  # a space this supernet cannot hold
            print(f"{name}: not trained ({e})", flush=True)
            out[name] = None
            continue
        accuracy = summary.get("val_accuracy")
        print(f"{name}: supernet trained in {time.perf_counter() - t:.0f} s" + (
            "" if accuracy is None else f"; its derived Arch: {accuracy:.4f} val accuracy"),
            flush=True)
        out[name] = str((root / name).resolve())
    return out


def canonical(space: Space, arch: dict) -> dict:
    """The Arch's superkernel sub-network as an Arch (itself where the space does not nest)."""
    try:
        plans = space_plan(space)
    except NasInputError:
        return arch
    return levels_to_arch(space, plans, arch_levels(space, plans, arch))


def stratified_archs(space: Space, n: int, pool: int, seed: int) -> list[dict]:
    """`n` distinct sub-networks, one drawn from each MACs quantile of ``n * pool`` random ones."""
    rng = np.random.default_rng(seed)
    seen, candidates = set(), []
    for _ in range(n * pool):
        arch = canonical(space, space.sample(rng))
        key = space.arch_id(arch)
        if key not in seen:
            seen.add(key)
            candidates.append((arch_metrics(space, arch)["macs"], key, arch))
    candidates.sort(key=lambda c: (c[0], c[1]))
    strata = np.array_split(np.arange(len(candidates)), min(n, len(candidates)))
    return [candidates[int(rng.choice(s))][2] for s in strata]


def scratch_results(space: Space, archs: list[dict], a: argparse.Namespace, root: Path) -> dict:
    """{arch_id: {"val", "test", "seconds"}} trained from scratch on the supernets' data split
    (``--seed``), one run per training seed, averaged (resumed from scratch.jsonl)."""
    path = root / SCRATCH_FILE
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["arch_id"], r["seed"])] = r
    data = load_data(a.data, space, seed=a.seed)
    for seed in range(a.seed, a.seed + a.scratch_seeds):
        config = TrainConfig(epochs=a.scratch_epochs, batch_size=a.batch_size,
                             learning_rate=a.learning_rate, seed=seed)
        for arch in archs:
            key = (space.arch_id(arch), seed)
            if key in done:
                continue
            t = time.perf_counter()
            r = train_arch(space, arch, data, config)
            done[key] = {"arch_id": key[0], "seed": seed, "val": r["val_accuracy"],
                         "test": r["test_accuracy"], "seconds": time.perf_counter() - t,
                         "epochs": a.scratch_epochs}
            with path.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
            print(f"scratch {key[0]} seed {seed}: val {r['val_accuracy']:.4f} in "
                  f"{done[key]['seconds']:.0f} s", flush=True)
    out = {}
    for arch in archs:
        rows = [done[(space.arch_id(arch), s)] for s in range(a.seed, a.seed + a.scratch_seeds)]
        out[space.arch_id(arch)] = {f"{k}_{r['seed']}": r[k] for r in rows for k in ("val", "test")}
        out[space.arch_id(arch)].update({k: statistics.mean(r[k] for r in rows if r[k] is not None)
                                         for k in ("val", "test", "seconds")})
    return out


def rank_correlations(scores: list[float], truth: list[float]) -> dict:
    """Kendall's tau and Spearman's rho (with p-values) of two lists."""
    tau, rho = kendalltau(scores, truth), spearmanr(scores, truth)
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue)}


def with_macs_prior(scores: list[float], macs: list[float]) -> list[float]:
    """Returns the rank average of supernet scores and MACs (ties share their mean rank).

    Weight sharing under-trains the large sub-networks (they get as many updates as the small
    ones but need more), so a supernet tends to rank large networks too low; from scratch,
    larger networks of a space are mostly more accurate. Averaging the two ranks (no labels,
    no fitted weight: a rule fixed before it was measured on a fresh Arch sample) corrects the
    score by size.

    Args:
        scores: supernet accuracies of the Archs.
        macs: their MACs.

    Returns:
        The combined score of each Arch (higher ranks higher).
    """
    return list((rankdata(scores) + rankdata(macs)) / 2.0)


def macs_prior_correlations(rows: list[dict], name: str) -> dict:
    """Rank correlations of supernet `name`'s scores rank-averaged with MACs
    (:func:`with_macs_prior`) against from-scratch accuracy: val-scored vs scratch val and
    test, and (where scored) test-scored vs scratch test."""
    macs = [r["macs"] for r in rows]
    val = with_macs_prior([r[name] for r in rows], macs)
    out = {"vs_scratch_val": rank_correlations(val, [r["scratch_val"] for r in rows]),
           "vs_scratch_test": rank_correlations(val, [r["scratch_test"] for r in rows])}
    if all(r[f"{name}_test"] is not None for r in rows):
        out["test_score_vs_scratch_test"] = rank_correlations(
            with_macs_prior([r[f"{name}_test"] for r in rows], macs),
            [r["scratch_test"] for r in rows])
    return out


def main(argv=None) -> None:
    """Trains, samples, trains from scratch, scores; prints the per-Arch table and the taus."""
    a = parse_args(argv)
    root = Path(a.workdir)
    root.mkdir(parents=True, exist_ok=True)
    print("command: python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), flush=True)
    supernets = train_supernets(a, root)
    first = next((wd for wd in supernets.values() if wd), None)
    space = SupernetScorer(first).load().space if first else Space.by_name(a.space)
    archs = stratified_archs(space, a.archs, a.pool, a.arch_seed)
    print(f"{len(archs)} Archs, MACs {arch_metrics(space, archs[0])['macs']} .. "
          f"{arch_metrics(space, archs[-1])['macs']}", flush=True)
    scratch = scratch_results(space, archs, a, root)
    rows = [{"arch_id": space.arch_id(arch), "macs": arch_metrics(space, arch)["macs"],
             "scratch_val": scratch[space.arch_id(arch)]["val"],
             "scratch_test": scratch[space.arch_id(arch)]["test"], "arch": arch} for arch in archs]
    summary = {"settings": vars(a), "archs": len(rows), "supernets": {}}
    for name, wd in supernets.items():
        if wd is None:
            summary["supernets"][name] = {"trained": False}
            continue
        scorer = SupernetScorer(wd, calibration_images=a.calibration_images)
        seconds = []
        for row, arch in zip(rows, archs):
            t = time.perf_counter()
            scored = scorer(arch)
            row[name], row[f"{name}_test"] = scored["val_accuracy"], scored["test_accuracy"]
            seconds.append(time.perf_counter() - t)
        scores = [r[name] for r in rows]
        summary["supernets"][name] = {
            "trained": True, "epochs": scorer.load().epochs,
            "median_score_s": statistics.median(seconds),
            "vs_scratch_val": rank_correlations(scores, [r["scratch_val"] for r in rows]),
            "vs_scratch_test": rank_correlations(scores, [r["scratch_test"] for r in rows])}
        if all(r[f"{name}_test"] is not None for r in rows):  # scored on the larger test split
            summary["supernets"][name]["test_score_vs_scratch_test"] = rank_correlations(
                [r[f"{name}_test"] for r in rows], [r["scratch_test"] for r in rows])
        summary["supernets"][name]["with_macs_prior"] = macs_prior_correlations(rows, name)
    if a.scratch_seeds >= 2:  # how well training from scratch ranks the Archs against itself
        summary["seed_to_seed"] = {k: rank_correlations(
            [scratch[space.arch_id(x)][f"{k}_{a.seed}"] for x in archs],
            [scratch[space.arch_id(x)][f"{k}_{a.seed + 1}"] for x in archs]) for k in ("val", "test")}
    summary["vs_macs"] = rank_correlations([r["macs"] for r in rows], [r["scratch_val"] for r in rows])
    summary["vs_macs_test"] = rank_correlations([r["macs"] for r in rows],
                                                [r["scratch_test"] for r in rows])
    summary["rows"] = [{k: v for k, v in r.items() if k != "arch"} for r in rows]
    names = [n for n, wd in supernets.items() if wd]
    print(f"\n{'arch':12s} {'MACs':>9s} {'scratch val':>11s} {'scratch test':>12s} "
          + " ".join(f"{n:>10s}" for n in names))
    for r in rows:
        print(f"{r['arch_id']:12s} {r['macs']:9d} {r['scratch_val']:11.4f} {r['scratch_test']:12.4f} "
              + " ".join(f"{r[n]:10.4f}" for n in names))
    print(f"\n{len(rows)} Archs; from scratch {a.scratch_epochs} epochs x {a.scratch_seeds} seed(s)")
    for name, s in summary["supernets"].items():
        if not s["trained"]:
            print(f"{name:12s} not trained (its space does not allow it)")
            continue
        v, t = s["vs_scratch_val"], s["vs_scratch_test"]
        print(f"{name:12s} ({s['epochs']} epochs): Kendall tau {v['kendall_tau']:+.3f} "
              f"(p {v['kendall_p']:.3g}), Spearman {v['spearman_rho']:+.3f} vs scratch val; "
              f"tau {t['kendall_tau']:+.3f} vs scratch test; {s['median_score_s']:.2f} s per Arch")
        if "test_score_vs_scratch_test" in s:
            c = s["test_score_vs_scratch_test"]
            print(f"{'':12s} scored on the test split instead: Kendall tau {c['kendall_tau']:+.3f} "
                  f"(p {c['kendall_p']:.3g}), Spearman {c['spearman_rho']:+.3f} vs scratch test")
        p = s["with_macs_prior"]
        line = (f"{'':12s} rank-averaged with MACs: tau {p['vs_scratch_val']['kendall_tau']:+.3f} "
                f"vs scratch val, {p['vs_scratch_test']['kendall_tau']:+.3f} vs scratch test")
        if "test_score_vs_scratch_test" in p:
            line += (f"; test-scored {p['test_score_vs_scratch_test']['kendall_tau']:+.3f} "
                     "vs scratch test")
        print(line)
    m = summary["vs_macs"]
    print(f"{'MACs alone':12s}: Kendall tau {m['kendall_tau']:+.3f}, Spearman "
          f"{m['spearman_rho']:+.3f} vs scratch val; tau {summary['vs_macs_test']['kendall_tau']:+.3f} "
          "vs scratch test (the baseline a supernet must beat)")
    for k, c in summary.get("seed_to_seed", {}).items():
        print(f"{'seed vs seed':12s}: Kendall tau {c['kendall_tau']:+.3f}, Spearman "
              f"{c['spearman_rho']:+.3f} between two from-scratch seeds' {k} accuracies (the "
              "ceiling: a target that does not rank itself cannot be ranked)")
    if a.out:
        write_json_atomic(a.out, summary)


if __name__ == "__main__":
    main()
