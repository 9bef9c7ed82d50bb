"""Pareto fronts of evaluated candidates and their plots (matplotlib, Agg backend, PNG).

A candidate is on the front when no other candidate is at least as accurate *and* at most as
costly, and strictly better in one of the two. :func:`pareto_front` is the two-objective case
(cost, accuracy); :func:`non_dominated_sort` and :func:`crowding_distance` are NSGA-II's
(Deb et al. 2002, "A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE TEVC) for
any number of objectives, all minimized (pass -accuracy).

Example:
    >>> front = pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.94)])   # -> [0, 1]
    >>> non_dominated_sort([(1, 2), (2, 1), (2, 2), (3, 3)])           # -> [[0, 1], [2], [3]]
    >>> plot_front(points, "latency (ms)", "plots/accuracy_vs_latency.png")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from nas.safe_write import write_figure


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Returns the indices of the non-dominated points, ordered by cost.

    Args:
        points: (cost, accuracy) pairs; lower cost and higher accuracy are better.

    Returns:
        Indices into `points` of the Pareto front, cheapest first (ties in cost: the most
        accurate one only; exact duplicates: the first one only).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Returns whether `a` Pareto-dominates `b` (every objective minimized).

    Args:
        a, b: objective vectors of the same length.

    Returns:
        True when `a` is no worse than `b` in every objective and better in at least one.
    """
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_sort(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Sorts points into non-dominated fronts (NSGA-II's fast non-dominated sort).

    Args:
        points: objective vectors, every objective minimized.

    Returns:
        Fronts of indices, best first: front 0 is the Pareto front (points no other point
        dominates), front k the Pareto front of what remains without fronts 0..k-1. Indices
        within a front are ascending; equal points share a front.
    """
    n = len(points)
    dominated_by = [[] for _ in range(n)]  # i -> points i dominates
    counts = [0] * n  # how many points dominate i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominated_by[i].append(j)
                counts[j] += 1
            elif dominates(points[j], points[i]):
                dominated_by[j].append(i)
                counts[i] += 1
    fronts, current = [], [i for i in range(n) if counts[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominated_by[i]:
                counts[j] -= 1
                if counts[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def crowding_distance(points: Sequence[Sequence[float]], front: Sequence[int]) -> list[float]:
    """Returns NSGA-II's crowding distance of each member of one front.

    For every objective the front is sorted by it; its two extreme members get infinity, each
    other member adds the gap between its two neighbours divided by the objective's range in
    the front (an objective with zero range adds nothing). Bigger = a less crowded region.

    Args:
        points: objective vectors (all of them; `front` indexes into them).
        front: indices of one front.

    Returns:
        Distances aligned with `front`.
    """
    distance = [0.0] * len(front)
    if len(front) <= 2:
        return [float("inf")] * len(front)
    for m in range(len(points[front[0]])):
        order = sorted(range(len(front)), key=lambda k: (points[front[k]][m], front[k]))
        low, high = points[front[order[0]]][m], points[front[order[-1]]][m]
        distance[order[0]] = distance[order[-1]] = float("inf")
        if high == low:
            continue
        for pos in range(1, len(order) - 1):
            gap = points[front[order[pos + 1]]][m] - points[front[order[pos - 1]]][m]
            distance[order[pos]] += gap / (high - low)
    return distance


def plot_front(series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str,
               path: str | os.PathLike, title: str = "", highlight: tuple[float, float] | None = None,
               ylabel: str = "accuracy", marked: Sequence[tuple[float, float]] = (),
               marked_label: str = "Pareto front (all objectives)") -> Path:
    """Plots candidates and the Pareto front of the first series to a PNG (written atomically).

    Args:
        series: {label: [(cost, accuracy), ...]}; the first series' front is drawn as a line.
        xlabel: cost axis label.
        path: the PNG file.
        title: plot title.
        highlight: (cost, accuracy) of the winner, drawn as a star.
        ylabel: accuracy axis label.
        marked: (cost, accuracy) of the members of a front over more objectives than this
            plot's two (pareto.json), ringed: not all of them are on this plot's 2-D front.
        marked_label: their legend entry.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    markers = ["o", "s", "^", "D"]
    first = None
    for n, (label, pts) in enumerate(series.items()):
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, s=22, marker=markers[n % len(markers)], label=label,
                   alpha=0.55 if n == 0 else 0.9, zorder=2 + n)
        first = pts if first is None else first
    if first:
        idx = pareto_front(first)
        ax.step([first[i][0] for i in idx], [first[i][1] for i in idx], where="post", color="C3",
                lw=1.5, label="Pareto front", zorder=1)
    if marked:
        ax.scatter([p[0] for p in marked], [p[1] for p in marked], s=70, facecolors="none",
                   edgecolors="C3", linewidths=1.3, label=marked_label, zorder=9)
    if highlight is not None:
        ax.scatter([highlight[0]], [highlight[1]], s=160, marker="*", color="gold",
                   edgecolor="black", label="winner", zorder=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)
    return path
