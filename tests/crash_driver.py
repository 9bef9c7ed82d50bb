"""Runs the real ``nas`` CLI in a subprocess that a crash test can SIGKILL at any moment.

Usage: ``python tests/crash_driver.py [--synthetic SECONDS] nas-arguments...``

With ``--synthetic`` the sample-based search scores candidates with :class:`SyntheticEvaluator`
(accuracy and MACs as fixed functions of the Arch, SECONDS of sleep each) instead of training
them, so a kill test of the search machinery (history, replay, lock) costs seconds. Without it
the CLI runs unchanged. The persistent compile cache of tests/conftest.py is used either way,
for every program however fast it compiled (the crash tests store theirs too).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class SyntheticEvaluator:
    """A deterministic stand-in for training: (arch) -> accuracy, MACs; sleeps `seconds`."""

    def __init__(self, seconds: float = 0.0, real=None):
        self.seconds = seconds
        self.real = real  # the real evaluator, for costs() (the pipeline's retrain stage)

    def costs(self, arch):
        """The real evaluator's cost metrics of `arch`."""
        return self.real.costs(arch)

    def __call__(self, arch, report=None):
        time.sleep(self.seconds)
        values = [str(v) for _, v in sorted(arch.items())]
        score = sum((i + 1) * (len(v) + sum(map(ord, v))) for i, v in enumerate(values)) % 997 / 997
        return {"accuracy": 0.5 + 0.5 * score, "val_accuracy": 0.5 + 0.5 * score,
                "test_accuracy": 0.5, "macs": 1e6 * (1 + (len(values) * score) % 1)}


def main(argv: list[str]) -> int:
    """Runs ``nas.cli.main(argv)``, with the synthetic evaluator when asked."""
    import jax

    cache = os.environ.get("NAS_JAX_CACHE", str(Path(__file__).resolve().parents[1] / ".jax_cache"))
    jax.config.update("jax_compilation_cache_dir", cache)
    # every program goes to the cache and comes back from it: a restarted run then compiles
    # nothing the killed one (or the test's uninterrupted reference run) compiled already
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if argv[:1] == ["--synthetic"]:
        import nas.training.evaluate

        seconds = float(argv[1])
        argv = argv[2:]
        real = nas.training.evaluate.CandidateEvaluator.for_space
        nas.training.evaluate.CandidateEvaluator.for_space = classmethod(
            lambda cls, space, **kw: SyntheticEvaluator(seconds, real(space, **kw)))
    from nas.cli import main as nas_main

    return nas_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
