"""Crash-safe, disk-full-safe file writes: atomic replace and whole-line appends.

:func:`write_atomic` writes a temporary file in the same folder, fsyncs it, ``os.replace``s it
over the target and fsyncs the folder: a crash leaves the old or the new content, never a mix.
:func:`append_line` appends one whole line and fsyncs it; a failed append is truncated away.
A full disk, a quota or a permission error becomes one :class:`~nas.errors.NasInputError` line
naming the file and the fix (:func:`disk_error`), and the previous content is intact.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from nas.errors import NasInputError

#: errno values of write failures that are the user's to fix (disk full, quota, permissions).
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system"}


def disk_error(path: str | os.PathLike, exc: OSError,
               verb: str = "cannot write") -> NasInputError | None:
    """Returns the one-line error for a full disk / permission failure, None for other errors.

    Args:
        path: the file (or folder) being written.
        exc: the OSError raised.
        verb: what failed ('cannot write'; the CLI's catch-all says 'cannot access').
    """
    what = DISK_ERRNOS.get(exc.errno)
    if what is None:
        return None
    fix = ("free some space or use another --workdir" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "fix the permissions or use another path")
    intact = " (the previous content is intact)" if verb == "cannot write" else ""
    return NasInputError(f"{verb}: {what}; {fix}{intact}", str(path))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replaces a file's content atomically: temporary file, fsync, os.replace, fsync the folder.

    A crash leaves either the old or the new content, never a mix; a failed write leaves the old.

    Args:
        path: the target file (its folder must exist).
        data: the new content.

    Raises:
        NasInputError: the disk is full or the folder is not writable.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600; keep what a plain open() gives
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        err = disk_error(path, e)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps: Any) -> None:
    """Writes JSON atomically (see :func:`write_atomic`).

    Args:
        path: the target file.
        obj: a JSON-able object.
        **dumps: json.dumps options (default: indent=2, sort_keys=True, default=str).
    """
    options = {"indent": 2, "sort_keys": True, "default": str, **dumps}
    write_atomic(path, json.dumps(obj, **options) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends one line and fsyncs it; a failed append leaves the file as it was.

    A torn last line left by an earlier crash (file not ending in a newline) is ended first, so
    the new line never merges with it (readers drop the torn line).

    Args:
        path: the file (created if missing).
        line: the text, without newline.

    Raises:
        NasInputError: the disk is full or the file is not writable.
    """
    if "\n" in line:
        raise ValueError("a line cannot contain a newline")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        err = disk_error(path, e)
        if err is None:
            raise
        raise err from None
    try:
        size = os.fstat(fd).st_size
        prefix = b""
        if size and os.pread(fd, 1, size - 1) != b"\n":
            prefix = b"\n"
        try:
            write_all(fd, prefix + line.encode("utf-8") + b"\n")
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)  # no partial line left behind
            except OSError:
                pass
            err = disk_error(path, e)
            if err is None:
                raise
            raise err from None
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Writes all of `data` to a file descriptor (os.write may write less)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_figure(fig: Any, path: str | os.PathLike) -> None:
    """Saves a matplotlib figure atomically (see :func:`write_atomic`), format from the suffix.

    Args:
        fig: the matplotlib Figure.
        path: the target file, e.g. ``plot.png``.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png")
    write_atomic(path, buf.getvalue())
