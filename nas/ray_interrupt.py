"""Ctrl-C during a Ray Tune ``fit()``: a KeyboardInterrupt that Ray drops is raised anyway.

Example:
    >>> with interrupt_survives_ray():
    ...     results = tuner.fit()
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def interrupt_survives_ray() -> Iterator[None]:
    """Makes a Ctrl-C during the block end it with KeyboardInterrupt even where Ray swallows it.

    Ray's Cython waits run Python's signal handler themselves; in some of its paths the
    KeyboardInterrupt that raises is dropped and ``fit()`` returns as if nothing happened (seen
    once in CI under load: the search then recorded the batch and finished with exit 0). The
    handler here also notes the signal, and the block raises after ``fit()`` if it was noted.
    Only in the main thread (where Python runs signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []

    def on_sigint(signum: int, frame: Any) -> None:
        noted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if noted:
        raise KeyboardInterrupt
