"""Test settings shared by every test: CPU JAX, the persistent compile cache, quiet Ray."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The tests check what programs compute, not how fast: XLA's CPU backend compiles them with
# LLVM's optimizations off (-O0), which takes about a fifth less time (tests/test_single_path.py
# from a cold cache: 44 -> 37 s; the whole suite in a clean-clone CI run: pytest 796 -> 628 s)
# and computes the same up to float rounding. Runs outside the
# tests (and the Ray / pinned workers the tests start, which set their own XLA_FLAGS) keep
# XLA's default.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{_FAST_COMPILE} {os.environ.get('XLA_FLAGS', '')}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Every program goes to the persistent cache, the small ones too: most of the suite's time is
# compiling, much of it eager ops (one program per op and shape) and programs that both xdist
# workers and the CLI subprocesses compile again; loading one is several times faster than
# compiling it (tests/test_supernet_program.py: 55 s cold, 17 s from the cache; writing them
# costs nothing measurable). The subprocesses the tests start (CLI runs) read the same cache
# through JAX's environment variables.
_CACHE = Path(os.environ.get("NAS_JAX_CACHE", Path(__file__).resolve().parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# A one-stage space small enough for real latency measurements in tests.
MICRO_YAML = """
name: micro
input: {resolution: 8, channels: 1}
num_classes: 4
stem: {channels: 8, kernel: 3, stride: 1}
head: {channels: 0}
stages:
  - {channels: 8, stride: 1, repeats: 1,
     knobs: {op: [mbconv, skip], kernel: [3, 5], expand: 2, bits_w: [8, 32], bits_a: [8, 32]}}
"""


@pytest.fixture(scope="module")
def micro_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "micro.yaml"
    path.write_text(MICRO_YAML)
    return path


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    """A CIFAR-10 binary folder of random images, 20 per file (tests/cifar_helpers.py): 100
    training and 20 test images; use it as ``data: cifar10:<cifar_folder>``."""
    from cifar_helpers import write_cifar_folder

    return write_cifar_folder(tmp_path_factory.mktemp("cifar-10-batches-bin"))


@pytest.fixture(scope="module")
def small_tiny():
    """(space, arch, data): tiny's cheapest network (tests/test_train.py's SMALL) and the first
    320 digits training images, for tests that train it briefly."""
    import dataclasses

    from nas.data import load_data
    from nas.space import Space
    from test_train import SMALL

    space = Space.by_name("tiny")
    arch = space.canonical(dict(space.sample(0), **SMALL))
    data = load_data("digits", space)
    return space, arch, dataclasses.replace(data, x_train=data.x_train[:320],
                                            y_train=data.y_train[:320])
