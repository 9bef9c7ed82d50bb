"""Real-scale cost of every search strategy, side by side: compile, step time, memory, images/s.

For each space and row, in a fresh process of its own (no compile cache, one XLA thread, pinned
to one core; a row killed for memory is reported as such), it builds the rows of
:mod:`supernet_cost` (the largest child network of the space, the
FBNet and ProxylessNAS weight and architecture steps, the Single-Path superkernel step and the
largest child it contains), compiles each (seconds: trace + XLA compile of the first step), reads
XLA's memory analysis (arguments + outputs + temporaries: the step's peak working set), then
times the step (median over ``--repeats`` runs). Every figure is printed with its ratio to the
largest child network of the same space, measured in the same run:

* compile s and first step s (the bar: <= 60 s on this CPU for the CIFAR-size spaces);
* step ms, images/s (batch / step), peak MiB;
* bars: Single-Path step <= 1.3x the child, ProxylessNAS weight step <= 2.5x; FBNet reported.

Sample-based strategies (random, evolution, RL) train child networks: their cost is the
``child`` row (the largest; smaller children cost less).

``--flops`` adds how close to the machine the child training step gets: the achieved FLOP/s of
MobileNetV2's training step at 32x32x3 (batch 128) against this CPU's dense matmul FLOP/s,
measured in the same process, and the same for its depthwise and 1x1 layers alone, with the
step's time split into what its 1x1 convs, depthwise convs and the rest cost.

    python experiments/bench/scale.py                       # CIFAR-size + 224-size spaces
    python experiments/bench/scale.py --spaces mixed --batch 128 --repeats 10 --flops
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CIFAR_SPACES = {"mixed": 128, "fbnet_cifar": 128}
IMAGENET_SPACES = {"fbnet": 16, "proxyless": 16}
#: {row: the strategy it stands for}; the child row is the sample-based strategies' cost.
STRATEGY_ROWS = {"child": "random / evolution / rl (largest child)", "fbnet_weight": "fbnet weights",
                 "fbnet_arch": "fbnet arch", "proxyless_weight": "proxyless weights",
                 "proxyless_arch": "proxyless arch", "single_path_child": "single_path's largest child",
                 "single_path": "single_path superkernel"}
#: {row: (the largest step time it may take as a multiple of the child's, that child's row)}.
#: The superkernel is held to the largest child it contains (the child network it computes).
STEP_BARS = {"single_path": (1.3, "single_path_child"), "proxyless_weight": (2.5, "child")}
COMPILE_BAR_S = 60.0
#: rows of the 224-size spaces by default (their architecture steps and Single-Path's candidate
#: blocks add minutes of compile on a CPU; ``--rows`` asks for them).
IMAGENET_ROWS = "child,fbnet_weight,proxyless_weight"


def measure_space(space_name: str, batch: int, repeats: int, rows: list[str]) -> list[dict]:
    """Builds, compiles and times the rows of one space (in this process).

    Args:
        space_name: a shipped space.
        batch: batch size of every step.
        repeats: interleaved timing rounds.
        rows: row names of :data:`supernet_cost.ROWS`.

    Returns:
        One dict per row: name, compile_s, first_step_s, step_s, cpu_s, peak_bytes, or
        name + skipped (why the row cannot be built for this space).
    """
    import time

    import supernet_cost as sc
    from nas.errors import NasInputError
    from nas.space import Space

    space = Space.by_name(space_name)
    built, out = {}, []
    for name in rows:
        try:
            fn, args = sc.ROWS[name](space, batch)
        except NasInputError as e:  # e.g. single_path on a space of candidate blocks
            out.append({"name": name, "skipped": str(e).splitlines()[0]})
            continue
        t = time.perf_counter()
        row = sc.compile_row(fn, args, warmup=0)
        row["run"]()
        row["first_step_s"] = time.perf_counter() - t
        for _ in range(2):
            row["run"]()
        built[name] = row
        print(f"  {space_name} {name}: compiled in {row['compile_s']:.1f} s", file=sys.stderr,
              flush=True)
    timed = sc.time_interleaved(built, repeats)
    for name, row in built.items():
        out.append({"name": name, "compile_s": row["compile_s"], "first_step_s": row["first_step_s"],
                    "peak_bytes": row["peak_bytes"], **timed[name]})
    return out


def run_child(args: list[str]) -> list[dict] | dict:
    """Runs this script in a fresh process (no compile cache) and returns what it printed.

    Returns:
        The child's JSON output, or ``{"failed": reason}`` when it died (e.g. killed for
        memory: a row that does not fit this machine is reported, not the end of the run).
    """
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                          env=env)
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit {done.returncode}"
        return {"failed": why}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_rows(space_name: str, batch: int, repeats: int, names: list[str], core: int
                 ) -> list[dict]:
    """Measures each row of one space in a process of its own (a row that runs out of memory
    costs only its own figures); returns the rows in order."""
    rows = []
    for name in names:
        out = run_child(["--one", space_name, "--batch", str(batch), "--repeats", str(repeats),
                         "--rows", name, "--core", str(core)])
        rows += [{"name": name, "skipped": out["failed"]}] if isinstance(out, dict) else out
    return rows


def print_space(space_name: str, batch: int, rows: list[dict]) -> list[str]:
    """Prints one space's table (ratios to its largest child); returns the bars it missed."""
    by = {r["name"]: r for r in rows}
    base = by.get("child")
    missed = []
    print(f"\n{space_name} (batch {batch})")
    print(f"{'row':18s} {'compile s':>9s} {'1st step s':>10s} {'step ms':>9s} {'img/s':>8s} "
          f"{'peak MiB':>9s} {'time x':>7s} {'mem x':>6s} {'img/s x':>7s}  strategy")
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:18s} skipped: {r['skipped']}")
            continue
        ips = batch / r["step_s"]
        tx = r["step_s"] / base["step_s"] if base else float("nan")
        mx = r["peak_bytes"] / base["peak_bytes"] if base else float("nan")
        print(f"{r['name']:18s} {r['compile_s']:9.1f} {r['first_step_s']:10.1f} "
              f"{r['step_s'] * 1e3:9.1f} {ips:8.1f} {r['peak_bytes'] / 2 ** 20:9.1f} {tx:7.2f} "
              f"{mx:6.2f} {1 / tx:7.2f}  {STRATEGY_ROWS.get(r['name'], '')}")
        bar, bar_base = STEP_BARS.get(r["name"], (None, None))
        ref = by.get(bar_base)
        if bar is not None and ref and "skipped" not in ref and r["step_s"] / ref["step_s"] > bar:
            missed.append(f"{space_name} {r['name']}: step {r['step_s'] / ref['step_s']:.2f}x "
                          f"{bar_base} > {bar}x")
        if space_name in CIFAR_SPACES and r["first_step_s"] > COMPILE_BAR_S:
            missed.append(f"{space_name} {r['name']}: first step {r['first_step_s']:.0f} s > "
                          f"{COMPILE_BAR_S:.0f} s")
    sp = by.get("single_path")
    spc = by.get("single_path_child")
    if sp and spc and "skipped" not in sp and "skipped" not in spc:
        print(f"{'':18s} single_path vs its own largest child: time "
              f"{sp['step_s'] / spc['step_s']:.2f}x, memory {sp['peak_bytes'] / spc['peak_bytes']:.2f}x")
    return missed


def main() -> None:
    """Measures the spaces one process each and prints the tables and the bars missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spaces", default=",".join([*CIFAR_SPACES, *IMAGENET_SPACES]))
    ap.add_argument("--batch", type=int, default=0,
                    help="batch of every space (default: 128 for CIFAR-size, 16 for 224 spaces)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per row (median)")
    ap.add_argument("--rows", default=None, help="comma-separated rows (default: all for the "
                    f"CIFAR-size spaces, {IMAGENET_ROWS} for the 224-size ones)")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    ap.add_argument("--flops", action="store_true", help="also measure FLOP/s utilization")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--flops-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one or a.flops_only:
        import supernet_cost as sc

        sc.pin_to_core(a.core)
        if a.flops_only:
            from flops_use import measure_utilization

            print(json.dumps(measure_utilization(max(a.repeats, 5))))
            return
        print(json.dumps(measure_space(a.one, a.batch, a.repeats, a.rows.split(","))))
        return
    print(f"scale: spaces {a.spaces}, {a.repeats} interleaved rounds, core {a.core}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    missed = []
    for space_name in a.spaces.split(","):
        batch = a.batch or CIFAR_SPACES.get(space_name) or IMAGENET_SPACES.get(space_name, 16)
        names = a.rows or (IMAGENET_ROWS if space_name in IMAGENET_SPACES else ",".join(STRATEGY_ROWS))
        rows = measure_rows(space_name, batch, a.repeats, names.split(","), a.core)
        missed += print_space(space_name, batch, rows)
    if a.flops:
        from flops_use import print_utilization

        figures = run_child(["--flops-only", "--repeats", str(a.repeats), "--core", str(a.core)])
        if "failed" in figures:
            print(f"\nFLOP/s utilization: {figures['failed']}")
        else:
            print_utilization(figures)
    print("\nbars missed: " + ("; ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()
