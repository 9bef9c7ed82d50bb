"""Measurement backends: each turns a BlockSpec (or a whole network) into a prepared call to time.

A backend module exposes ``NAME``, ``RULE`` (its precision rule, see :mod:`nas.latency.precision`),
``info() -> dict`` (runtime versions and device) and ``block_runner(spec, batch)`` /
``network_runner(specs, batch)`` (onnxruntime also ``model_runner(path, shape)``, a model file
as is) returning ``(call, prepare_seconds)``: ``call()`` runs once and
blocks until the result is ready; preparation (compilation, session creation) is excluded.
Backends are imported only inside the measurement worker (:mod:`nas.latency.worker`), whose
environment pins runtimes to one thread before they initialize.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nas.errors import NasInputError
from nas.latency.precision import RULES

#: backend name -> module implementing it.
BACKENDS = {"jax": "nas.latency.backends.jax_backend",
            "onnxruntime": "nas.latency.backends.ort_backend",
            "tflite": "nas.latency.backends.tflite_backend"}


def check_backend(name: str) -> str:
    """Returns `name` if it is a known backend.

    Raises:
        NasInputError: unknown backend (the message lists the known ones).
    """
    if name not in BACKENDS:
        raise NasInputError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}",
                            field="backend")
    return name


def precision_rule(name: str) -> str:
    """Returns the precision rule of a backend (see :mod:`nas.latency.precision`)."""
    return RULES[check_backend(name)]


def load_backend(name: str) -> ModuleType:
    """Imports and returns a backend module (only in a measurement process)."""
    return importlib.import_module(BACKENDS[check_backend(name)])
