"""Device latency lookup tables: build (measure), predict, expected, validate.

- :class:`LatencyTable` (``table.py``): load a checked table, ``predict(arch)``,
  ``expected(arch_probs)`` (differentiable), ``energy_mj(arch)``.
- :func:`build_table` (``build.py``): measure every distinct layer of a Space on a backend, in a
  pinned single-thread worker (``worker.py``, ``measure.py``, ``backends/``), then calibrate.
- :func:`validate_table` (``validate.py``): predicted vs measured end-to-end latency of the
  table's fastest and slowest Archs and Archs stratified over its predicted range
  (``sampling.py``); the result is stored in the table.
- :func:`check_table` (``check.py``): re-measure a fixed sample and report the drift ratio
  measured / table with a verdict (also the quick check before ``nas search`` / ``nas run``).
- ``onnx_blocks.network_to_onnx`` / ``block_to_onnx``: ONNX graphs of BlockSpecs (float or int8
  QDQ), also used to export networks; ``flax_weights.onnx_weights`` maps Flax variables onto them.

See ``latency_tables/README.md`` for the file format and how to build a table.
"""

from nas.latency.build import build_table
from nas.latency.check import check_table
from nas.latency.table import LatencyTable
from nas.latency.validate import validate_table

__all__ = ["LatencyTable", "build_table", "check_table", "validate_table"]
