"""The TFLite (LiteRT) backend: each layer written as a TFLite model (:mod:`nas.export.to_tflite`)
and run by the LiteRT interpreter with one thread (its default XNNPACK delegate). Every layer runs
float kernels (activation points as float arithmetic), so the precision rule is ``float``.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from nas.export.to_tflite import block_to_tflite, interpreter, network_to_tflite
from nas.latency.precision import RULES
from nas.spec import BlockSpec

NAME = "tflite"
RULE = RULES[NAME]


def info() -> dict:
    """Returns the runtime's version and device."""
    from importlib.metadata import version

    return {"versions": {"ai-edge-litert": version("ai-edge-litert")},
            "device": "cpu (LiteRT interpreter, XNNPACK)"}


def _runner(model: bytes, threads: int) -> tuple[Callable, float]:
    t0 = time.perf_counter()
    it = interpreter(model, max(1, threads))
    detail = it.get_input_details()[0]
    it.set_tensor(detail["index"], np.random.default_rng(0).standard_normal(
        detail["shape"]).astype(np.float32))
    it.invoke()
    return it.invoke, time.perf_counter() - t0


def block_runner(spec: BlockSpec, batch: int, threads: int = 1) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running one layer."""
    return _runner(block_to_tflite(spec, batch), threads)


def network_runner(specs: Sequence[BlockSpec], batch: int, threads: int = 1
                   ) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running a whole network."""
    return _runner(network_to_tflite(list(specs), batch=batch), threads)
