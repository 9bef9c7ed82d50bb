"""``nas space show|sample|list``: inspect search spaces.

``nas space sample my_space.yaml`` records the space file and its fingerprint in the Arch it
prints (see :mod:`nas.space_files`), so every command reading the arch file finds the space again.
"""

from __future__ import annotations

import argparse
import json

from nas.archfile import ArchFile
from nas.space import Space, shipped_space_names


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``space`` command group.

    Args:
        sub: the top-level subparsers object.
    """
    p = sub.add_parser("space", help="inspect search spaces",
                       description="Inspect search spaces (shipped names or YAML paths).")
    ssub = p.add_subparsers(dest="space_command", metavar="SUBCOMMAND", parser_class=type(p))
    show = ssub.add_parser("show", help="print a space's shapes, decisions and size")
    show.add_argument("name", help="shipped space name or path to a YAML file")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=_show)
    sample = ssub.add_parser("sample", help="print a random Arch of a space as JSON")
    sample.add_argument("name", help="shipped space name or path to a YAML file")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--out", default=None, metavar="FILE",
                        help="write the arch file here (a user's space file is then recorded "
                             "relative to it; default: print it, recording the absolute path)")
    sample.set_defaults(func=_sample)
    lst = ssub.add_parser("list", help="list the shipped spaces")
    lst.set_defaults(func=_list)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _show(args: argparse.Namespace) -> int:
    space = Space.by_name(args.name)
    summary = space.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    h, w = space.resolution
    print(f"space {space.name}: input {h}x{w}x{space.in_channels}, {space.num_classes} classes")
    if space.description:
        print(f"  {space.description.strip()}")
    print(f"  {summary['slots']} layer slots, {summary['decisions']} decisions, "
          f"size 10^{summary['log10_size']:.1f}, {summary['unique_block_specs']} unique block specs")
    stem = space.stem_spec
    print(f"  stem  {stem.kernel}x{stem.kernel} conv s{stem.stride} -> {stem.cout} ch  "
          f"out {stem.out_hw[0]}x{stem.out_hw[1]}")
    for slot in space.slots:
        knobs = ", ".join(f"{label[len(slot.prefix) + 1:]}={list(v)}"
                          for label, v in space.decisions() if label.startswith(slot.prefix + "_"))
        print(f"  {slot.prefix:<7} {slot.cin:>4}->{slot.cout:<4} s{slot.stride} "
              f"in {slot.in_hw[0]}x{slot.in_hw[1]}  {knobs or '(fixed)'}")
    head = space.head_spec
    print(f"  head  {'1x1 conv -> ' + str(head.hidden) + ' ch, ' if head.hidden else ''}"
          f"pool, dense -> {head.cout}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    space = Space.by_name(args.name)
    arch = space.sample(args.seed)
    af = ArchFile(space, arch, {"id": space.arch_id(arch), "seed": args.seed})
    if args.out:
        af.save(args.out)
    else:
        print(json.dumps(af.to_dict(), indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in shipped_space_names():
        print(name)
    return 0
