"""``nas arch summary PATH [--json] [--layers]``: cost metrics of an Arch JSON file."""

from __future__ import annotations

import argparse
import json

from nas.archfile import load_arch
from nas.metrics import arch_metrics
from nas.space_files import add_space_option


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``arch`` command group.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser("arch", help="inspect an Arch JSON file",
                       description="Inspect Arch JSON files ({\"space\": ..., \"arch\": {...}}).")
    asub = p.add_subparsers(dest="arch_command", metavar="SUBCOMMAND", parser_class=type(p))
    summary = asub.add_parser(
        "summary", help="print params, MACs, BOPs, size, peak activation memory and energy",
        description="Cost metrics computed from the Arch alone (no tracing). Energy uses "
                    "Horowitz (ISSCC 2014) 45 nm per-operation energies; see nas.metrics.")
    summary.add_argument("path", help="arch JSON file, e.g. search_spaces/published/mobilenet_v2.json")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.add_argument("--layers", action="store_true", help="include per-layer costs")
    add_space_option(summary)
    summary.set_defaults(func=_summary)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _summary(args: argparse.Namespace) -> int:
    af = load_arch(args.path, args.space)
    metrics = arch_metrics(af.space, af.arch)
    layers = metrics.pop("layers")
    if args.json:
        out = dict(metrics)
        if af.meta.get("name"):
            out["name"] = af.meta["name"]
        if args.layers:
            out["layers"] = layers
        print(json.dumps(out))
        return 0
    title = af.meta.get("name") or args.path
    print(f"{title}  (space {metrics['space']}, arch id {metrics['arch_id']})")
    rows = [
        ("params", f"{metrics['params']:,}"),
        ("MACs", f"{metrics['macs']:,}  ({metrics['macs'] / 1e6:.1f} M)"),
        ("BOPs", f"{metrics['bops']:,}  ({metrics['bops'] / 1e9:.1f} G)"),
        ("size", f"{metrics['size_bytes']:,} B at the chosen bit-widths "
                 f"({metrics['size_bytes_fp32']:,} B at fp32)"),
        ("peak activations", f"{metrics['peak_activation_bytes']:,} B (batch 1)"),
        ("energy", f"{metrics['energy_mj']:.3f} mJ (Horowitz 45 nm estimate)"),
    ]
    for name, value in rows:
        print(f"  {name:<17} {value}")
    if args.layers:
        print(f"\n  {'#':>3} {'params':>10} {'MACs':>13} {'peak act B':>11}  layer")
        for i, layer in enumerate(layers):
            print(f"  {i:>3} {layer['params']:>10,} {layer['macs']:>13,} "
                  f"{layer['peak_activation_bits'] // 8:>11,}  {layer['key']}")
    return 0
