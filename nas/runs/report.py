"""Reports of a pipeline workdir: terminal table, Pareto plots, TensorBoard logs, report.md.

Everything is read back from the workdir's files (search/history.jsonl's candidates, the stage markers,
export/export.json), so a report can be rebuilt at any time, also of a partial run.

Example:
    >>> info = write_report("runs/smoke")
    >>> print(info["table"])
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from nas.history import History, record_value
from nas.limits import rejection_counts, violations_text
from nas.pareto import plot_front
from nas.safe_write import write_atomic
from nas.runs.stages import read_marker
from nas.strategies.outputs import HISTORY_FILE, PARETO_FILE, candidate_records, rejected_records

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
TB_DIR = "tb"


def stage_result(workdir: Path, stage: str) -> dict | None:
    """Returns a finished stage's result (its marker), or None when it has not completed."""
    return read_marker(workdir, stage)


def load_history(workdir: Path) -> list[dict]:
    """Returns the search's candidate records (empty if there is none; the epoch records of a
    one-shot search and the rejected records of ``objective.limits`` are not candidates, see
    :mod:`nas.strategies.outputs`)."""
    path = workdir / "search" / HISTORY_FILE
    return candidate_records(History(path).load()) if path.exists() else []


def load_rejected(workdir: Path) -> list[dict]:
    """Returns the search's records of candidates rejected for breaking ``objective.limits``."""
    path = workdir / "search" / HISTORY_FILE
    return rejected_records(History(path).load()) if path.exists() else []


def load_pareto(workdir: Path) -> dict | None:
    """Returns the search's pareto.json (None when there is none or it is unreadable)."""
    try:
        return json.loads((workdir / "search" / PARETO_FILE).read_text())
    except (OSError, ValueError):
        return None


def pareto_table(pareto: Mapping[str, Any]) -> list[str]:
    """Returns the markdown table of a pareto.json front (arch id, accuracy, each cost)."""
    names = [o["name"] for o in pareto["objectives"]]
    lines = ["| arch_id | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in pareto["front"]:
        lines.append(f"| `{m['arch_id']}` | " + " | ".join(
            _fmt(record_value(m, k), ".4f" if k == "accuracy" else ".4g") for k in names) + " |")
    return lines


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def candidates_table(history: Sequence[Mapping], retrain: Mapping | None, limit: int = 10) -> str:
    """Returns a plain-text table of the best candidates (search and retrain results)."""
    retrained = {r["arch_id"]: r for r in (retrain or {}).get("candidates", [])}
    winner = (retrain or {}).get("winner")
    ok = sorted((r for r in history if r.get("reward") is not None),
                key=lambda r: r["reward"], reverse=True)[:limit]
    if not history:  # one-shot search: the retrained candidates are all there is
        ok = sorted((r for r in retrained.values() if r.get("reward") is not None),
                    key=lambda r: r["reward"], reverse=True)[:limit]
    header = (f"{'':1} {'arch_id':<14} {'reward':>7} {'search acc':>10} {'latency ms':>10} "
              f"{'params':>8} {'size B':>8} {'retrain val':>11} {'retrain test':>12}")
    lines = [header, "-" * len(header)]
    for r in ok:
        rt = retrained.get(r["arch_id"], {})
        cost = r.get("cost") or {}
        mark = "*" if r["arch_id"] == winner else ""
        lines.append(f"{mark:1} {r['arch_id'][:14]:<14} {_fmt(r['reward']):>7} "
                     f"{_fmt(r.get('accuracy')):>10} {_fmt(r.get('latency_ms'), '.3f'):>10} "
                     f"{_fmt(cost.get('params'), 'd'):>8} {_fmt(cost.get('size_bytes'), 'd'):>8} "
                     f"{_fmt(rt.get('val_accuracy')):>11} {_fmt(rt.get('test_accuracy')):>12}")
    failed = sum(1 for r in history if r.get("status") != "ok")
    if history or not retrained:
        lines.append(f"{len(history)} candidates evaluated ({failed} not ok); * = winner")
    else:
        lines.append(f"{len(retrained)} retrained candidates of a one-shot search; * = winner")
    return "\n".join(lines)


def _points(history: Sequence[Mapping], cost_key: str) -> list[tuple[float, float]]:
    pts = []
    for r in history:
        cost = record_value(r, cost_key)
        if r.get("status", "ok") == "ok" and cost is not None and r.get("accuracy") is not None:
            pts.append((cost, float(r["accuracy"])))
    return pts


AXIS_LABELS = {"latency_ms": "predicted latency (ms)", "macs": "MACs", "size_bytes":
               "model size (bytes)", "params": "parameters", "bops": "BOPs",
               "energy_mj": "energy estimate (mJ)",
               "peak_activation_bytes": "peak activations (bytes)"}


def write_plots(workdir: Path, history: Sequence[Mapping], retrain: Mapping | None,
                pareto: Mapping | None = None) -> list[str]:
    """Writes the Pareto PNGs: accuracy vs latency (or MACs without a table), vs size, and vs
    every other cost of the search's pareto.json; its front's members are ringed on each."""
    plots = []
    cands = [c for c in (retrain or {}).get("candidates", []) if c.get("status") == "ok"]
    has_latency = any(r.get("latency_ms") is not None for r in list(history) + cands)
    axes = [("latency_ms", "predicted latency (ms)", "accuracy_vs_latency.png")] if has_latency \
        else [("macs", "MACs", "accuracy_vs_macs.png")]
    axes.append(("size_bytes", "model size (bytes)", "accuracy_vs_size.png"))
    front = list((pareto or {}).get("front") or [])
    for o in (pareto or {}).get("objectives", [])[1:]:
        if o["name"] not in [a[0] for a in axes]:
            axes.append((o["name"], AXIS_LABELS.get(o["name"], o["name"]),
                         f"accuracy_vs_{o['name']}.png"))
    front_names = "/".join(o["name"] for o in (pareto or {}).get("objectives", []))
    winner = next((c for c in cands if c["arch_id"] == (retrain or {}).get("winner")), None)
    for key, label, name in axes:
        series = {"searched (validation accuracy)": _points(history, key)}
        rpts = []
        for c in cands:
            cost = c.get("latency_ms") if key == "latency_ms" else (c.get("cost") or {}).get(key)
            if cost is not None:
                rpts.append((float(cost), float(c["val_accuracy"])))
        if series["searched (validation accuracy)"]:
            series["retrained (validation accuracy)"] = rpts
        else:  # a one-shot search evaluates no candidate on its own: plot the retrained ones
            series = {"retrained (validation accuracy)": rpts}
        star = None
        if winner is not None:
            cost = winner.get("latency_ms") if key == "latency_ms" else (winner.get("cost") or {}).get(key)
            star = None if cost is None else (float(cost), float(winner["val_accuracy"]))
        if next(iter(series.values())):
            plots.append(str(plot_front(series, label, workdir / PLOTS_DIR / name,
                                        title=f"accuracy vs {label}", highlight=star,
                                        marked=_points(front, key),
                                        marked_label=f"Pareto front ({front_names})")))
    return plots


def write_tensorboard(workdir: Path, history: Sequence[Mapping], retrain: Mapping | None,
                      markdown: str) -> str:
    """Writes the run's TensorBoard logs to W/tb (rewritten whole each time)."""
    from tensorboardX import SummaryWriter

    tb = workdir / TB_DIR
    shutil.rmtree(tb, ignore_errors=True)
    writer = SummaryWriter(logdir=str(tb))
    try:
        best = float("-inf")
        for r in sorted(history, key=lambda r: r.get("n", 0)):
            if r.get("reward") is None:
                continue
            n = int(r.get("n", 0))
            best = max(best, r["reward"])
            writer.add_scalar("search/reward", r["reward"], n)
            writer.add_scalar("search/best_reward", best, n)
            writer.add_scalar("search/accuracy", r["accuracy"], n)
            if r.get("latency_ms") is not None:
                writer.add_scalar("search/latency_ms", r["latency_ms"], n)
        ok = [c for c in (retrain or {}).get("candidates", []) if c.get("status") == "ok"]
        for i, c in enumerate(ok):
            writer.add_scalar("retrain/val_accuracy", c["val_accuracy"], i)
            writer.add_scalar("retrain/test_accuracy", c["test_accuracy"], i)
        writer.add_text("report", markdown, 0)
    finally:
        writer.close()
    return str(tb)


def _export_section(export: Mapping | None) -> list[str]:
    if not export:
        return ["Export: not done yet."]
    lines = ["| format | file | bytes | check | max abs diff | top-1 agreement | test accuracy |",
             "|---|---|---:|---|---:|---:|---:|"]
    for fmt, f in export["files"].items():
        c = export["checks"].get(fmt, {})
        ok = "-" if not c else ("ok" if c["ok"] else "**FAIL**")
        lines.append(f"| {fmt} | `{Path(f['path']).name}` | {f['bytes']} | {ok} | "
                     f"{_fmt(c.get('max_abs_diff'), '.3g')} | {_fmt(c.get('agreement'), '.3f')} | "
                     f"{_fmt(c.get('accuracy'))} |")
    s = export["sizes"]
    lines += ["", f"Packed model: {s['packed_bytes']} bytes, {s['ratio']:.3f} x its uncompressed "
                  f"fp32 counterpart ({s['fp32_counterpart_bytes']} bytes)."]
    return lines


TEACHER_LABELS = {"largest": "the space's largest Arch", "best": "best other retrained candidate",
                  "top": "ensemble of the top retrained candidates", "arch": "a given Arch",
                  "ckpt": "a given checkpoint"}


def kd_table(distill: Mapping[str, Any], winner: Mapping[str, Any]) -> list[str]:
    """Returns the report's KD table: the teacher, the winner distilled from it, the winner
    trained from scratch for the same epochs (and the retrained winner when its schedule
    differs), which one is exported and why.

    Args:
        distill: the distill stage's marker (with ``teacher_summary`` and ``scratch``).
        winner: the retrain stage's winner row.
    """
    t, st, sc = distill["teacher_summary"], distill["student"], distill["scratch"]
    final = distill["final"]
    cost = winner.get("cost") or {}
    arch = f"`{winner['arch_id']}` | {_fmt(cost.get('macs'), 'd')} | {_fmt(cost.get('params'), 'd')}"

    def row(name: str, arch_cells: str, epochs: Any, res: Mapping[str, Any], mark: str) -> str:
        return (f"| {name} | {arch_cells} | {epochs} | {_fmt(res.get('val_accuracy'))} | "
                f"{_fmt(res.get('test_accuracy'))} | {mark} |")

    ids = ", ".join(f"`{i}`" for i in t["arch_ids"])
    t_epochs = "/".join(_fmt(e, "d") for e in t["epochs"])
    lines = ["| model | Arch | MACs | params | epochs | val accuracy | test accuracy | exported |",
             "|---|---|---:|---:|---:|---:|---:|---|",
             row(f"teacher: {TEACHER_LABELS.get(t['kind'], t['kind'])}",
                 f"{ids} | {_fmt(t.get('macs'), 'd')} | {_fmt(t.get('params'), 'd')}", t_epochs, t, ""),
             row("student with KD", arch, _fmt(st.get("epochs"), "d"), st,
                 "yes" if final == "distilled" else ""),
             row("student from scratch, same epochs" + (" (= the retrained winner)"
                                                         if sc["reused_retrain"] else ""),
                 arch, _fmt(sc.get("epochs"), "d"), sc,
                 "yes" if final == "retrained" and sc["reused_retrain"] else "")]
    if not sc["reused_retrain"]:
        lines.append(row("retrained winner (retrain stage)", arch,
                         _fmt(distill["retrained"].get("epochs"), "d"), distill["retrained"],
                         "yes" if final == "retrained" else ""))
    gain = None
    if st.get("test_accuracy") is not None and sc.get("test_accuracy") is not None:
        gain = 100 * (st["test_accuracy"] - sc["test_accuracy"])
    exported = "the student with KD" if final == "distilled" else "the retrained winner"
    lines += ["", f"KD vs scratch (same student, epochs and seed): test accuracy "
                  f"{_fmt(gain, '+.2f')} points. Exported: {exported} - the stage keeps the better "
                  "validation accuracy of the student with KD and the retrained winner (a tie "
                  "goes to KD).",
              "", f"Teacher: {t['description']}; its accuracy is that of the soft targets the "
                  "student learns from (an ensemble's: the mean of its members' tempered softmaxes)."]
    return lines


def _latency_line(export: Mapping | None, winner: Mapping | None) -> str:
    lat = (export or {}).get("latency") or {}
    measured = lat.get("measured_ms")
    predicted = lat.get("predicted_ms", (winner or {}).get("latency_ms"))
    parts = [f"predicted (table) {_fmt(predicted, '.3f')} ms",
             f"measured (onnxruntime, batch 1, 1 thread) {_fmt(measured, '.3f')} ms"]
    if lat.get("error_pct") is not None:
        parts.append(f"prediction error {lat['error_pct']:+.1f}%")
    if lat.get("table_backend"):
        parts.append(f"table backend {lat['table_backend']}")
    return "Latency: " + ", ".join(parts) + "."


def _rejected_line(rejected: Sequence[Mapping]) -> str:
    """One line on the candidates rejected for breaking objective.limits (empty: none)."""
    if not rejected:
        return ""
    counts = ", ".join(f"{m} {n}" for m, n in rejection_counts(rejected).items())
    return (f"Rejected before training: {len(rejected)} candidates over objective.limits "
            f"({counts}); never trained, not counted in the budget.")


def _search_line(workdir: Path, search: Mapping | None, history: Sequence[Mapping]) -> str:
    """One line naming the strategy and what the search produced (empty before the search)."""
    if not search:
        return ""
    strategy = (search.get("summary") or {}).get("strategy")
    try:
        strategy = json.loads((workdir / "pipeline.json").read_text())["config"]["strategy"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if search.get("one_shot"):
        summary = search.get("summary") or {}
        lat = summary.get("predicted_latency_ms")
        lat_text = "" if lat is None else f", predicted latency {lat:.4f} ms"
        limits_text = ""
        derivation = summary.get("derivation") or {}
        if derivation.get("changed"):
            limits_text = (f" The most probable Arch `{derivation['argmax_arch_id']}` was over "
                           f"the target/limits: {len(derivation['changed'])} decision(s) "
                           "changed to the most probable choices within them"
                           + ("" if derivation.get("feasible") else " (none found; the closest)")
                           + ".")
        if summary.get("meets_limits") is False:
            limits_text += (" It breaks objective.limits ("
                           + violations_text(summary.get("limit_violations") or []) + ").")
        return (f"Search: {strategy} (one-shot), derived Arch `{summary.get('arch_id')}`{lat_text}; "
                f"{len(search.get('candidates') or [])} Archs retrained (the derived one and its "
                f"runner-ups within the limits), search "
                f"{_fmt(summary.get('search_seconds'), '.1f')} s.{limits_text}")
    ok = sum(1 for r in history if r.get("status") == "ok")
    return f"Search: {strategy}, {len(history)} candidates evaluated ({ok} ok)."


def write_report(workdir: str | os.PathLike, objective: Any = None) -> dict[str, Any]:
    """Writes report.md, the Pareto plots and TensorBoard logs of a pipeline workdir.

    Args:
        workdir: the pipeline's workdir.
        objective: the MnasObjective (only named in the report).

    Returns:
        {"report_md", "plots", "tensorboard", "table", "winner"}.
    """
    workdir = Path(workdir).resolve()
    history = load_history(workdir)
    pareto = load_pareto(workdir)
    search, retrain = stage_result(workdir, "search"), stage_result(workdir, "retrain")
    distill, export = stage_result(workdir, "distill"), stage_result(workdir, "export")
    plots = write_plots(workdir, history, retrain, pareto)
    table = candidates_table(history, retrain)
    winner = None
    if retrain:
        winner = next(c for c in retrain["candidates"] if c["arch_id"] == retrain["winner"])
    md = ["# NAS run report", "", f"Workdir: `{workdir}`"]
    if objective is not None:
        md.append(f"Objective: MnasNet reward on {objective.metric} (target {objective.target}, "
                  f"alpha {objective.alpha}, beta {objective.beta}).")
    search_line = _search_line(workdir, search, history)
    if search_line:
        md += ["", search_line]
    rejected_line = _rejected_line(load_rejected(workdir))
    if rejected_line:
        md += ["", rejected_line]
    md += ["", "## Winner", ""]
    if winner is None:
        md.append("Not chosen yet (retrain stage not done).")
    else:
        md += [f"Arch `{winner['arch_id']}`: retrained validation accuracy "
               f"{winner['val_accuracy']:.4f}, test accuracy {winner['test_accuracy']:.4f}, "
               f"{winner.get('params')} params.",
               "", "```json", json.dumps(winner["arch"], indent=1, sort_keys=True), "```", ""]
        cost = winner.get("cost") or {}
        md.append("Metrics: " + ", ".join(f"{k} {_fmt(v, '.4g')}" for k, v in sorted(cost.items())) + ".")
    if distill:
        if distill.get("enabled") and distill.get("scratch") and winner is not None:
            md += ["", "## Distillation", ""] + kd_table(distill, winner)
        elif distill.get("enabled"):  # a marker written before the KD table existed
            st, rt = distill["student"], distill["retrained"]
            md += ["", f"Distillation from {distill['teacher']}: student test accuracy "
                       f"{st['test_accuracy']:.4f} (validation {st['val_accuracy']:.4f}) vs retrained "
                       f"{rt['test_accuracy']:.4f} ({rt['val_accuracy']:.4f}); exported: the "
                       f"{distill['final']} model."]
        else:
            md += ["", "Distillation: disabled; the retrained winner is exported."]
    md += ["", _latency_line(export, winner), "", "## Export", ""] + _export_section(export)
    md += ["", "## Candidates", "", "```", table, "```", ""]
    if pareto is not None:
        names = ", ".join(o["name"] for o in pareto["objectives"])
        md += ["## Pareto front", "", f"{len(pareto['front'])} of the {pareto['compared']} "
               f"trained candidates are non-dominated over ({names}); `search/{PARETO_FILE}` "
               "holds their Archs.", ""] + pareto_table(pareto) + [""]
    md += ["## Plots", ""]
    md += [f"![{Path(p).stem}]({PLOTS_DIR}/{Path(p).name})" for p in plots]
    stages = {s: (m or {}).get("seconds") for s, m in
              (("search", search), ("retrain", retrain), ("distill", distill), ("export", export))}
    md += ["", "## Stages", "", "| stage | seconds |", "|---|---:|"]
    md += [f"| {s} | {_fmt(v, '.1f')} |" for s, v in stages.items()]
    md += ["", f"TensorBoard: `tensorboard --logdir {workdir}` (pipeline in tb/, each training "
               "run in its own tb/)."]
    text = "\n".join(md) + "\n"
    tb = write_tensorboard(workdir, history, retrain, text)
    write_atomic(workdir / REPORT_FILE, text)
    win = None if winner is None else {k: winner.get(k) for k in (
        "arch_id", "val_accuracy", "test_accuracy", "latency_ms", "params")}
    return {"report_md": str(workdir / REPORT_FILE), "plots": plots, "tensorboard": tb,
            "table": table, "winner": win}
