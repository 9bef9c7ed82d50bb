"""The ``nas`` command line.

Each command group lives in its own module under :mod:`nas.commands` and registers its
subcommands here. Any :class:`~nas.errors.NasInputError` raised by a command becomes one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from nas.errors import ExportCheckError, NasInputError

COMMAND_MODULES = ("nas.commands.space_cmd", "nas.commands.arch_cmd", "nas.commands.train_cmd",
                   "nas.commands.latency_cmd", "nas.commands.search_cmd", "nas.commands.export_cmd",
                   "nas.commands.run_cmd", "nas.commands.specialize_cmd")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        sys.stderr.write(f"nas: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser with every command group registered."""
    import importlib

    parser = _Parser(
        prog="nas",
        description="Hardware-aware neural architecture search for low-power computer vision.",
        epilog="Start with 'nas space show tiny' and 'nas space sample tiny --seed 0'. The whole "
               "pipeline (search, retrain, distill, export, report) in one command: 'nas run "
               "experiments/digits_random_smoke.yaml --workdir runs/smoke' (configs for every "
               "strategy: experiments/digits_*_smoke.yaml). 'nas COMMAND --help' for details.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``nas`` command.

    Args:
        argv: the arguments (defaults to sys.argv[1:]).

    Returns:
        The exit code: 0 on success, 2 on bad input (one line on stderr), 1 on an internal error
        (one line on stderr naming a file with the traceback; NAS_DEBUG=1 raises instead).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NasInputError as e:
        sys.stderr.write(f"nas: error: {e.one_line()}\n")
        return 2
    except ExportCheckError as e:
        sys.stderr.write(f"nas: export check failed: {e.message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("nas: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `nas ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full / permissions anywhere: one line (after BrokenPipeError)
        from nas.runs.workdir import disk_error

        err = disk_error(e.filename or "a file", e, "cannot access")
        if err is None:
            raise
        sys.stderr.write(f"nas: error: {err.one_line()}\n")
        return 2
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line, traceback to a file
        if os.environ.get("NAS_DEBUG"):
            raise
        sys.stderr.write(f"nas: internal error: {_internal_error_line(e)}\n")
        return 1


def _internal_error_line(error: Exception) -> str:
    """Saves the traceback of an unexpected error to a file; returns the line to print."""
    import tempfile
    import traceback

    from nas.errors import printable_line

    text = "".join(traceback.format_exception(error))
    where = "not saved"
    try:
        fd, where = tempfile.mkstemp(prefix="nas-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        pass
    message = printable_line(f"{type(error).__name__}: {error}")
    return (f"{message} (a bug in nas, not in your input; please report it with the traceback "
            f"in {where}; NAS_DEBUG=1 prints it)")


if __name__ == "__main__":
    sys.exit(main())
