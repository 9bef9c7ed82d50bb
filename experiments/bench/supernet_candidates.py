"""How supernet cost grows with the number of candidate blocks per layer (FBNet vs ProxylessNAS).

From the tiny space's dict it derives variants whose every layer chooses among the first N of
nine candidate blocks (N = 1, 2, 4, 6, 9 by default; stages, channels and strides as in tiny),
then, in one process, measures with :func:`supernet_cost.measure` (compile, warm-up, median of
repeats; XLA's compiled memory: arguments + outputs + temporaries):

* ``child``: the plain training step of the N = 1 network (every layer k3_e3), the base;
* ``fbnet_weight``: FBNet's Gumbel-softmax weight step, every candidate computed;
* ``proxyless_weight``: ProxylessNAS's weight step, one sampled path (``lax.switch``);

and prints each row's step time and peak memory as ratios to the base child, plus the largest
child of each variant (what one sampled path can cost at most). Peak memory includes the
arguments and outputs: every candidate's weights and their gradients, which grow with N for any
supernet; the temporaries (activations) are what FBNet multiplies by N and ProxylessNAS does not. Expected: FBNet grows roughly
linearly in N, ProxylessNAS stays within a small factor of one child.

    taskset -c 0 python experiments/bench/supernet_candidates.py --batch 64 --repeats 10
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import supernet_cost as sc  # noqa: E402  (sets the one-thread XLA flags before jax loads)

from nas.space import Space  # noqa: E402

#: Candidate blocks in the order they are added (FBNet's k/e grid plus k7 and skip).
CANDIDATES = {
    "k3_e3": {"op": "mbconv", "kernel": 3, "expand": 3},
    "k5_e3": {"op": "mbconv", "kernel": 5, "expand": 3},
    "k3_e6": {"op": "mbconv", "kernel": 3, "expand": 6},
    "k5_e6": {"op": "mbconv", "kernel": 5, "expand": 6},
    "k3_e1": {"op": "mbconv", "kernel": 3, "expand": 1},
    "k5_e1": {"op": "mbconv", "kernel": 5, "expand": 1},
    "k7_e3": {"op": "mbconv", "kernel": 7, "expand": 3},
    "k7_e6": {"op": "mbconv", "kernel": 7, "expand": 6},
    "skip": {"op": "skip"},
}


def variant(base: Space, n: int) -> Space:
    """Returns `base` with every stage choosing among the first `n` :data:`CANDIDATES`.

    Args:
        base: the space whose stem, head, stages (channels, stride, repeats) are kept.
        n: candidates per layer (1..len(CANDIDATES)).
    """
    d = copy.deepcopy(base.to_dict())
    names = list(CANDIDATES)[:n]
    d["name"] = f"{base.name}_c{n}"
    for stage in d["stages"]:
        stage.pop("knobs", None)
        stage["candidates"] = {k: dict(CANDIDATES[k]) for k in names}
    return Space.from_dict(d, f"{base.name} with {n} candidates per layer")


def main() -> None:
    """Measures every N and prints the table of ratios to the base child."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--candidates", default="1,2,4,6,9", help="comma-separated N values")
    a = ap.parse_args()
    base = Space.by_name(a.space)
    counts = [int(c) for c in a.candidates.split(",")]
    child = sc.measure(*sc.ROWS["child"](variant(base, 1), a.batch), a.repeats)
    print(f"space {base.name} variants, batch {a.batch}, base child (N=1, k3_e3 everywhere): "
          f"{child['step_s'] * 1e3:.2f} ms/step, {child['peak_bytes'] / 2 ** 20:.2f} MiB")
    print("time x / mem x: ratios to the base child; temp x: XLA temporaries (activations) only; "
          "/largest: step time over the same N's largest child")
    print(f"{'N':>2s} {'row':17s} {'compile s':>9s} {'step ms':>8s} {'peak MiB':>8s} "
          f"{'temp MiB':>8s} {'time x':>7s} {'mem x':>6s} {'temp x':>6s} {'/largest':>8s}")
    for n in counts:
        space = variant(base, n)
        largest = None
        for row in ("child", "fbnet_weight", "proxyless_weight"):
            r = sc.measure(*sc.ROWS[row](space, a.batch), a.repeats)
            largest = largest or r
            label = "largest_child" if row == "child" else row
            print(f"{n:2d} {label:17s} {r['compile_s']:9.1f} {r['step_s'] * 1e3:8.2f} "
                  f"{r['peak_bytes'] / 2 ** 20:8.2f} {r['temp_bytes'] / 2 ** 20:8.2f} "
                  f"{r['step_s'] / child['step_s']:7.2f} "
                  f"{r['peak_bytes'] / child['peak_bytes']:6.2f} "
                  f"{r['temp_bytes'] / max(child['temp_bytes'], 1):6.2f} "
                  f"{r['step_s'] / largest['step_s']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
