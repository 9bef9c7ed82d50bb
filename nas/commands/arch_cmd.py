"""``nas arch summary``: cost metrics of an Arch (filled in by nas.metrics)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``arch`` command group."""
    p = sub.add_parser("arch", help="inspect an Arch JSON file")
    p.set_defaults(func=lambda a: p.print_help() or 2)
