"""Running tests/crash_driver.py (the real CLI) in a subprocess and SIGKILLing it at a chosen
moment: shared by the crash-and-resume tests (tests/test_crash_resume.py, tests/test_ray_join.py).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "crash_driver.py")


def start_driver(args):
    """Starts ``python tests/crash_driver.py ARGS`` in the repository root (pipes for output)."""
    return subprocess.Popen([sys.executable, DRIVER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def count_lines(path: Path) -> int:
    """Returns the lines written to `path` so far (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(proc, ready, timeout=300.0, sig=signal.SIGKILL):
    """Sends `sig` (default SIGKILL) to `proc` once ready() is true (or it exits first) and
    waits for it to end; returns True if the signal was sent."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return True
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the run never reached the kill point")


def after(condition, delay):
    """Returns ready(): true `delay` seconds after `condition` first held (a random moment
    inside the next evaluation or append)."""
    seen = []

    def ready():
        if not seen and condition():
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= delay

    return ready


def finish(args, timeout=600):
    """Runs the driver to its end; returns (its last stdout line as JSON, its stderr)."""
    proc = start_driver(args)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1]), err
