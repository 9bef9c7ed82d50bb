"""Pareto fronts of evaluated candidates and their plots (matplotlib, Agg backend, PNG).

A candidate is on the front when no other candidate is at least as accurate *and* at most as
costly, and strictly better in one of the two.

Example:
    >>> front = pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.94)])   # -> [0, 1]
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


def plot_front(series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str,
               path: str | os.PathLike, title: str = "", highlight: tuple[float, float] | None = None,
               ylabel: str = "accuracy") -> Path:
    """Plots candidates and the Pareto front of the first series to a PNG (written atomically).

    Args:
        series: {label: [(cost, accuracy), ...]}; the first series' front is drawn as a line.
        xlabel: cost axis label.
        path: the PNG file.
        title: plot title.
        highlight: (cost, accuracy) of the winner, drawn as a star.
        ylabel: accuracy axis label.

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
