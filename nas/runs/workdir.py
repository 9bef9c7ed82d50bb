"""Work directories: one run at a time, checked before work starts, written atomically.

A run (``nas search``, ``nas run``, ``nas train --workdir``) *claims* its work directory:

1. The folder is created, a probe file is created, fsync'd and removed (an unwritable folder is
   reported now, not hours later), and the free space of its file system is checked against
   :data:`MIN_FREE_BYTES` (``NAS_MIN_FREE_MB`` overrides it).
2. ``W/.nas.lock`` is locked with ``fcntl.flock`` for the run's lifetime. The kernel drops the
   lock when the process ends, however it ends (SIGKILL included), so a lock that is held always
   means a live run. ``W/.nas.holder.json`` says who holds it (pid, host, command, start time).

Rules:

* A workdir whose lock is held by another live process is **always refused** (one line: holder,
  pid, command, and how to resume once it has stopped), with or without ``--resume``.
* A workdir whose last holder died without releasing it (crash, SIGKILL, power loss) is taken
  over: the same command resumes the run. Without ``--resume`` a warning names the dead holder;
  with ``--resume`` it is expected and silent.
* A finished or stopped run's workdir is resumed by rerunning the same command (a finished search
  evaluates nothing new; training continues from its newest checkpoint).
* ``--resume`` on a workdir that holds no earlier run is refused (a mistyped path must not start a
  fresh search silently).
* Within one process claims are re-entrant: ``nas run`` holds ``W`` and its search stage claims
  ``W/search`` the same way; a claim inside a folder this process holds inherits its ``resume``.

Writes into a workdir go through :mod:`nas.safe_write` (atomic replace, whole-line appends; a
full disk or a permission error is one error line and the previous content is intact).

Example:
    >>> with lock_workdir("runs/rl", resume=False, command="nas search"):
    ...     run_search(loaded, "runs/rl")
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from nas.errors import NasInputError
from nas.safe_write import DISK_ERRNOS, disk_error, write_all, write_json_atomic

LOCK_FILE = ".nas.lock"
HOLDER_FILE = ".nas.holder.json"
CONFIG_FILE = "search.json"
#: Free space a workdir's file system must have when a run starts (NAS_MIN_FREE_MB overrides).
MIN_FREE_BYTES = 256 * 2**20


class WorkdirBusyError(NasInputError):
    """The workdir is locked by another live process."""


# ------------------------------------------------------------------------- checks before work
def min_free_bytes() -> int:
    """Returns the free space a workdir needs (NAS_MIN_FREE_MB, else :data:`MIN_FREE_BYTES`)."""
    text = os.environ.get("NAS_MIN_FREE_MB")
    if text is None:
        return MIN_FREE_BYTES
    try:
        return max(0, int(float(text) * 2**20))
    except ValueError:
        raise NasInputError(f"{text!r} is not a number of MiB", "environment",
                            "NAS_MIN_FREE_MB") from None


def check_workdir_usable(workdir: str | os.PathLike, need_bytes: int | None = None) -> Path:
    """Creates the workdir and checks it is writable and has room, before any work starts.

    Args:
        workdir: the folder.
        need_bytes: minimum free bytes (default :func:`min_free_bytes`).

    Returns:
        The absolute path.

    Raises:
        NasInputError: the folder cannot be created or written, or its disk is too full.
    """
    wd = Path(workdir).resolve()
    if wd.exists() and not wd.is_dir():
        raise NasInputError("the workdir is a file, not a folder; use another --workdir", str(wd))
    try:
        wd.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = DISK_ERRNOS.get(e.errno, e.strerror or type(e).__name__)
        raise NasInputError(f"cannot create the workdir ({what}); choose a writable --workdir",
                            str(wd)) from None
    probe = wd / f".nas-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        what = DISK_ERRNOS.get(e.errno, e.strerror or type(e).__name__)
        raise NasInputError(f"the workdir is not writable ({what}); fix its permissions, free "
                            "space or choose another --workdir", str(wd)) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    need = min_free_bytes() if need_bytes is None else need_bytes
    import shutil

    free = shutil.disk_usage(wd).free
    if free < need:
        raise NasInputError(f"only {free / 2**20:.0f} MiB free on the workdir's file system, a run "
                            f"needs at least {need / 2**20:.0f} MiB; free space or use another "
                            "--workdir (NAS_MIN_FREE_MB sets the minimum)", str(wd))
    return wd


# ------------------------------------------------------------------------------------ locking
class _Hold:
    """One flock held by this process on a workdir (shared by re-entrant claims)."""

    def __init__(self, fd: int, resume: bool):
        self.fd = fd
        self.count = 0
        self.resume = resume


_HELD: dict[Path, _Hold] = {}


class WorkdirLock:
    """A claim on a workdir; release it with :meth:`release` or a ``with`` statement.

    It is also released when garbage-collected, and the OS releases the lock when the process
    ends however it ends.

    Attributes:
        path: the workdir (absolute).
        previous: the holder record of an earlier run that died holding the lock, else None.
    """

    def __init__(self, path: Path, previous: dict | None = None):
        self.path = path
        self.previous = previous
        self._released = False
        _HELD[path].count += 1

    def release(self) -> None:
        """Releases this claim (the lock goes when the last claim of this process goes)."""
        if self._released:
            return
        self._released = True
        hold = _HELD.get(self.path)
        if hold is None:
            return
        hold.count -= 1
        if hold.count > 0:
            return
        del _HELD[self.path]
        try:
            holder = _read_holder(self.path) or {}
            if holder.get("pid") == os.getpid():
                holder.update(state="released", ended=_now())
                write_json_atomic(self.path / HOLDER_FILE, holder)
        except (OSError, NasInputError):
            pass  # the lock still goes; the next run just sees no clean release
        finally:
            fcntl.flock(hold.fd, fcntl.LOCK_UN)
            os.close(hold.fd)

    def __enter__(self) -> "WorkdirLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a claim dropped without release() must not keep the workdir
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_holder(wd: Path) -> dict | None:
    try:
        data = json.loads((wd / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _held_ancestor(wd: Path) -> _Hold | None:
    for parent in wd.parents:
        if parent in _HELD:
            return _HELD[parent]
    return None


def _holds_a_run(wd: Path) -> bool:
    try:
        return any(p.name != LOCK_FILE for p in wd.iterdir())  # a holder file counts
    except OSError:
        return False


def lock_workdir(workdir: str | os.PathLike, *, resume: bool | None = None,
                 command: str | None = None, need_bytes: int | None = None) -> WorkdirLock:
    """Claims a workdir for this process: checks, then an exclusive flock (see module docstring).

    Args:
        workdir: the folder (created if missing).
        resume: True = the user asked to resume (refused when there is nothing to resume; a dead
            holder is taken over silently); False = warn when taking over from a dead holder;
            None = inherit from a workdir above it that this process holds (else False).
        command: what is running, recorded for whoever is refused (default: this process's argv).
        need_bytes: minimum free bytes (default :func:`min_free_bytes`).

    Returns:
        The claim (a context manager).

    Raises:
        WorkdirBusyError: another live process holds the workdir.
        NasInputError: --resume with nothing to resume, or the folder is unusable.
    """
    wd = Path(workdir).resolve()
    if wd in _HELD:  # re-entrant: this process already holds it
        return WorkdirLock(wd)
    ancestor = _held_ancestor(wd)
    if resume is None:
        inherited = ancestor is not None and ancestor.resume
    else:
        inherited = False
        if resume and not _holds_a_run(wd):
            raise NasInputError("--resume given but this workdir holds no earlier run; drop "
                                "--resume to start one, or check the path", str(wd))
    wd = check_workdir_usable(wd, need_bytes)
    try:
        fd = os.open(wd / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise disk_error(wd / LOCK_FILE, e) or e from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(wd) from None
    except OSError as e:
        os.close(fd)
        raise NasInputError(f"cannot lock the workdir ({e.strerror}); use a local file system "
                            "for --workdir", str(wd / LOCK_FILE)) from None
    previous = _read_holder(wd)
    if previous is not None and previous.get("state") == "running":
        if not (resume or inherited):
            sys.stderr.write(
                f"nas: warning: {wd}: the previous run (pid {previous.get('pid')} on "
                f"{previous.get('host')}, {previous.get('command')}, started "
                f"{previous.get('started')}) ended without releasing the workdir (killed or "
                "crashed); resuming from what it wrote\n")
    else:
        previous = None
    _HELD[wd] = _Hold(fd, bool(resume or inherited))
    claim = WorkdirLock(wd, previous)
    try:
        write_json_atomic(wd / HOLDER_FILE, {
            "pid": os.getpid(), "host": socket.gethostname(), "state": "running",
            "command": command or " ".join(["nas", *sys.argv[1:]])[:300], "started": _now()})
    except BaseException:
        claim.release()
        raise
    return claim


def _busy(wd: Path) -> WorkdirBusyError:
    holder = _read_holder(wd) or {}
    who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
           f"({holder.get('command', 'unknown command')}, started {holder.get('started', '?')})")
    return WorkdirBusyError(f"the workdir is in use by {who}; wait for it to finish or stop it, "
                            "then rerun the same command with --resume to continue its run, or "
                            "use another --workdir", str(wd))


def claim_workdir(workdir: str | os.PathLike, config: Any, *, resume: bool | None = None,
                  command: str | None = None) -> WorkdirLock:
    """Claims a search's workdir: locks it, then writes search.json or checks it matches.

    ``search.json`` holds the config and its fingerprint; a workdir holding a search of another
    config is refused (its history would mix two searches).

    Args:
        workdir: the search's folder.
        config: the :class:`nas.runs.config.SearchConfig` (its ``fingerprint()``,
            ``space_fingerprint()``, ``path_fingerprint()`` and ``model_dump()`` are used).
        resume, command: see :func:`lock_workdir`.

    Returns:
        The claim (a context manager; release it when the search ends).

    Raises:
        WorkdirBusyError: another live process holds the workdir.
        NasInputError: the workdir holds a search of another config, or is unusable.
    """
    claim = lock_workdir(workdir, resume=resume, command=command)
    try:
        path = claim.path / CONFIG_FILE
        fingerprint, space_fp = config.fingerprint(), config.space_fingerprint()
        if path.exists():
            _check_same_search(path, config, fingerprint, space_fp)
        write_json_atomic(path, {"fingerprint": fingerprint, "space_fingerprint": space_fp,
                                 "config": config.model_dump()})
    except BaseException:
        claim.release()
        raise
    return claim


def _check_same_search(path: Path, config: Any, fingerprint: str, space_fp: str) -> None:
    """Raises unless the search recorded in `path` (search.json) is the one `config` describes.

    Records from earlier versions hold a fingerprint of the space *as written* and no
    ``space_fingerprint``; they match when that older fingerprint does.
    """
    try:
        record = json.loads(path.read_text())
        old, old_space = record.get("fingerprint"), record.get("space_fingerprint")
    except (ValueError, AttributeError):
        raise NasInputError("not a search record; delete it or use a new --workdir",
                            str(path)) from None
    if old == fingerprint or (old_space is None and old == config.path_fingerprint()):
        return
    if old_space is not None and old_space != space_fp:
        raise NasInputError(f"the space's definition changed since this search started "
                            f"({str(old_space)[:19]} -> {space_fp[:19]}); restore the space file "
                            "or use a new --workdir", str(path), "space_fingerprint")
    raise NasInputError("the workdir holds a search with another config (space, data, "
                        "strategy, objective, seed or train differ); use a new "
                        "--workdir or the same config", str(path), "fingerprint")


# ---------------------------------------------------------------------------------------- CLI
def add_resume_flag(parser: Any) -> None:
    """Adds the standard ``--resume`` option to a command's argparse parser."""
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in --workdir (refused while another live process holds it, or "
             "when it holds no run). Rerunning the same command without --resume also continues "
             "it; a run that died holding the workdir is then taken over with a warning")


def _remove_if_only_lock_files(wd: Path) -> None:
    """Removes a workdir this command created if it holds nothing but the lock's own files."""
    try:
        if {p.name for p in wd.iterdir()} <= {LOCK_FILE, HOLDER_FILE}:
            for name in (LOCK_FILE, HOLDER_FILE):
                (wd / name).unlink(missing_ok=True)
            wd.rmdir()
    except OSError:
        pass


def locked_command(name: str, fn: Callable[[Any], int]) -> Callable[[Any], int]:
    """Wraps a command so that it holds ``args.workdir`` (if set) for its whole run.

    Args:
        name: the command's name, recorded in the lock's holder file ('nas search').
        fn: the command function ``fn(args) -> exit code``.

    Returns:
        The wrapped function.
    """

    def run(args: Any) -> int:
        workdir = getattr(args, "workdir", None)
        if not workdir:
            return fn(args)
        command = f"{name} {getattr(args, 'config', None) or getattr(args, 'arch', None) or ''}"
        command = f"{command.strip()} --workdir {workdir}"
        created = not Path(workdir).exists()
        try:
            with lock_workdir(workdir, resume=bool(getattr(args, "resume", False)),
                              command=command):
                return fn(args)
        except NasInputError:
            if created:  # bad input found before any work: leave no empty workdir behind
                _remove_if_only_lock_files(Path(workdir))
            raise

    run.__name__ = getattr(fn, "__name__", "command")
    run.__doc__ = fn.__doc__
    return run
