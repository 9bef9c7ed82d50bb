"""The onnxruntime backend: each layer exported to ONNX (:mod:`nas.latency.onnx_blocks`) and run
on the CPU execution provider with one intra-op and one inter-op thread. Layers whose weights and
activations are both <= 8 bits are exported in QDQ format, so onnxruntime runs int8 kernels.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from nas.latency.onnx_blocks import block_to_onnx, network_to_onnx
from nas.latency.precision import RULES, runs_int8
from nas.spec import BlockSpec

NAME = "onnxruntime"
RULE = RULES[NAME]
PROVIDER = "CPUExecutionProvider"


def info() -> dict:
    """Returns the runtime's versions and device."""
    import onnx
    import onnxruntime as ort

    return {"versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
            "device": f"cpu ({PROVIDER})"}


#: graph optimization levels by name (the tables use "all").
OPT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}


def session(model_bytes: bytes, threads: int = 1, optimized_path: str | None = None,
            level: str = "all"):
    """Returns an InferenceSession with all graph optimizations and `threads` threads.

    Args:
        model_bytes: the serialized ONNX model.
        threads: intra-op threads (0 = onnxruntime's default).
        optimized_path: where to write the optimized graph (to inspect which kernels run).
        level: graph optimization level, a key of :data:`OPT_LEVELS` (tables: "all").
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1 if threads else 0
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, so, providers=[PROVIDER])


def bound_call(sess, in_shape: Sequence[int]) -> Callable[[], None]:
    """Returns a call running `sess` once on a fixed random input, input and output bound once
    (io binding, so Python's per-call overhead is not timed); it has run once already."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_output(sess.get_outputs()[0].name, "cpu")

    def call() -> None:
        sess.run_with_iobinding(binding)

    call()
    return call


def _runner(model_bytes: bytes, in_shape: Sequence[int], threads: int) -> tuple[Callable, float]:
    t0 = time.perf_counter()
    call = bound_call(session(model_bytes, threads), in_shape)
    return call, time.perf_counter() - t0


def block_runner(spec: BlockSpec, batch: int, threads: int = 1) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running one layer at its effective precision."""
    model = block_to_onnx(spec, runs_int8(spec), batch)
    return _runner(model.SerializeToString(), [batch, spec.cin, *spec.in_hw], threads)


def network_runner(specs: Sequence[BlockSpec], batch: int, threads: int = 1) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running a whole network (NCHW input, like its layers)."""
    model = network_to_onnx(list(specs), batch=batch)
    first = specs[0]
    return _runner(model.SerializeToString(), [batch, first.cin, *first.in_hw], threads)


def model_runner(path: str, in_shape: Sequence[int], threads: int = 1) -> tuple[Callable, float]:
    """Returns (call, prepare_seconds) running an ONNX model file as is (e.g. an exported
    network, input named 'input'), with the session options and threads of the tables."""
    with open(path, "rb") as f:
        return _runner(f.read(), list(in_shape), threads)
