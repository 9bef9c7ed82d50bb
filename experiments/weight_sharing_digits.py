"""Weight-sharing fast path on digits/tiny: supernet scores vs from-scratch accuracies.

Samples N distinct random Archs of the supernet's space, scores each on the trained supernet
(:class:`nas.weight_sharing.SupernetScorer`: its path's weights, BatchNorm recalibrated on 512
training images, validation accuracy) and trains each from scratch
(:class:`nas.training.evaluate.CandidateEvaluator`, the same data split), then prints the seconds per
candidate of both and the Kendall rank correlation between the two accuracies.

    nas search experiments/digits_fbnet.yaml --workdir runs/ws_fbnet
    python experiments/weight_sharing_digits.py --supernet runs/ws_fbnet --archs 10 --epochs 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from scipy.stats import kendalltau

from nas.training.evaluate import CandidateEvaluator
from nas.latency.table import sample_archs
from nas.weight_sharing import SupernetScorer
from nas.runs.workdir import write_json_atomic


def main() -> None:
    """Scores and trains the sample; prints the per-Arch table and the summary figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--supernet", default="runs/ws_fbnet", help="workdir of an fbnet/proxyless search")
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=8, help="from-scratch training epochs")
    ap.add_argument("--seed", type=int, default=1, help="seed of the Arch sample")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args()
    scorer = SupernetScorer(str(Path(a.supernet).resolve()))
    t = time.perf_counter()
    sn = scorer.load()
    load_s = time.perf_counter() - t
    archs = sample_archs(sn.space, a.archs, a.seed)
    trainer = CandidateEvaluator.for_space(sn.space, data=sn.data, seed=sn.seed,
                                           train={"epochs": a.epochs, "batch_size": 64,
                                                  "learning_rate": 0.003})
    rows = []
    for arch in archs:
        t = time.perf_counter()
        s = scorer(arch)
        score_s = time.perf_counter() - t
        rows.append({"arch_id": sn.space.arch_id(arch), "supernet_val": s["val_accuracy"],
                     "supernet_test": s["test_accuracy"], "score_s": score_s})
        print(f"scored {rows[-1]['arch_id']}: {s['val_accuracy']:.4f} in {score_s:.2f} s", flush=True)
    for row, arch in zip(rows, archs):
        t = time.perf_counter()
        r = trainer(arch)
        row.update(scratch_val=r["val_accuracy"], scratch_test=r["test_accuracy"],
                   train_s=time.perf_counter() - t)
        print(f"trained {row['arch_id']}: {r['val_accuracy']:.4f} in {row['train_s']:.1f} s", flush=True)
    tau_val = kendalltau([r["supernet_val"] for r in rows], [r["scratch_val"] for r in rows])
    tau_test = kendalltau([r["supernet_val"] for r in rows], [r["scratch_test"] for r in rows])
    summary = {"supernet": sn.workdir, "supernet_strategy": sn.strategy, "supernet_epochs": sn.epochs,
               "archs": len(rows), "scratch_epochs": a.epochs, "supernet_load_s": load_s,
               "median_score_s": statistics.median(r["score_s"] for r in rows),
               "median_train_s": statistics.median(r["train_s"] for r in rows),
               "kendall_tau_val": tau_val.statistic, "kendall_p_val": tau_val.pvalue,
               "kendall_tau_scratch_test": tau_test.statistic, "rows": rows}
    summary["speedup"] = summary["median_train_s"] / summary["median_score_s"]
    print(f"\n{'arch':12s} {'supernet val':>12s} {'scratch val':>11s} {'scratch test':>12s} "
          f"{'score s':>8s} {'train s':>8s}")
    for r in rows:
        print(f"{r['arch_id']:12s} {r['supernet_val']:12.4f} {r['scratch_val']:11.4f} "
              f"{r['scratch_test']:12.4f} {r['score_s']:8.2f} {r['train_s']:8.1f}")
    print(f"\nsupernet {sn.strategy}, {sn.epochs} epochs ({sn.workdir}); {len(rows)} Archs; "
          f"scratch {a.epochs} epochs")
    print(f"seconds per candidate: scored {summary['median_score_s']:.2f} (median), trained "
          f"{summary['median_train_s']:.1f} (median): {summary['speedup']:.1f}x faster "
          f"(supernet load once: {load_s:.1f} s)")
    print(f"Kendall tau, supernet val vs scratch val: {tau_val.statistic:.3f} (p {tau_val.pvalue:.3f}); "
          f"vs scratch test: {tau_test.statistic:.3f}")
    if a.out:
        write_json_atomic(a.out, summary)


if __name__ == "__main__":
    main()
