"""The standalone packed model: a network's variables with quantized weights stored as integers.

``pack_variables`` turns the variables of a :class:`nas.model.Network` into flat arrays:

- conv and dense kernels of a layer with ``bits_w < 32`` become integers ``q`` in
  ``[-(2^(b-1)-1), 2^(b-1)-1]`` plus one float32 scale per output channel (the learned step),
  exactly the grid of :func:`nas.blocks.quant.fake_quant_weight` (so ``q * scale`` is the weight
  the trained model computes with); the integers are bit-packed at b bits each (4-bit weights
  take half a byte); unpacking sets each kernel's step to its scale, so the unpacked model
  re-quantizes ``q * scale`` onto the same levels;
- every BatchNorm becomes two float32 vectors (its folded multiplier and shift) instead of four;
- everything else (biases, activation-quantizer ranges, float layers) stays float32.

Only the chosen network's tensors exist: pruned channels are not stored (the network's tensors
already have ``mid_channels``), low-rank factors are kept as their two factors.

``save_packed`` writes them into one file (a JSON manifest, then the raw bytes; no pickle); ``load_packed`` + ``unpack_variables`` give back variables for
:func:`nas.model.build_model`'s network that compute what the trained network computes.

Example:
    >>> packed = pack_variables(space, arch, variables)
    >>> save_packed(packed, "export/model.npk")
    >>> variables2 = unpack_variables(load_packed("export/model.npk"))
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nas.blocks.layers import BN_EPSILON
from nas.errors import NasInputError
from nas.spec import BlockSpec
from nas.safe_write import write_atomic

FLOAT_BITS = 32
KERNEL_NAMES = ("kernel", "kernel_u", "kernel_v")
MAGIC = b"NASPACK1"
FORMAT = "nas-packed-v1"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Returns ``{"a/b/c": array}`` of a nested mapping of arrays."""
    out: dict[str, np.ndarray] = {}
    for name, value in tree.items():
        path = f"{prefix}/{name}" if prefix else str(name)
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def quantize_weight(w: np.ndarray, bits: int, step: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Quantizes weights symmetrically per output channel (last axis), as fake_quant_weight.

    Args:
        w: weights whose last axis is the output channel.
        bits: bit-width (2..8).
        step: the learned per-channel steps (LSQ; 0 or None: max |w| / qp, nothing clipped).

    Returns:
        (q int8 of w's shape, scale float32 [cout]) with ``q * scale`` = fake_quant_weight(w).
    """
    qmax = 2.0 ** (bits - 1) - 1
    w = np.asarray(w, np.float32)
    amax = np.max(np.abs(w.reshape(-1, w.shape[-1])), axis=0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    if step is not None:
        step = np.asarray(step, np.float32)
        scale = np.where(step > 0, step, scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Packs signed integers of `bits` bits (|q| < 2^(bits-1)) densely into bytes.

    Args:
        q: integer array.
        bits: bits per value, 2..8.

    Returns:
        uint8 array of ceil(q.size * bits / 8) bytes.
    """
    u = (q.astype(np.int16).ravel() + 2 ** (bits - 1)).astype(np.uint8)
    planes = np.unpackbits(u[:, None], axis=1)[:, 8 - bits:]
    return np.packbits(planes.ravel())


def unpack_bits(packed: np.ndarray, bits: int, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pack_bits`: returns int8 values of `shape`."""
    n = int(np.prod(shape))
    planes = np.unpackbits(np.asarray(packed, np.uint8))[:n * bits].reshape(n, bits)
    full = np.concatenate([np.zeros((n, 8 - bits), np.uint8), planes], axis=1)
    u = np.packbits(full, axis=1).ravel().astype(np.int16)
    return (u - 2 ** (bits - 1)).astype(np.int8).reshape(tuple(shape))


def layer_bits(specs: Sequence[BlockSpec], names: Sequence[str]) -> dict[str, int]:
    """Returns {layer name: bits_w} of a network's layers."""
    return {name: spec.bits_w for spec, name in zip(specs, names)}


def _bn_modules(params: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray]) -> list[str]:
    mods = []
    for path in params:
        if path.endswith("/scale"):
            mod = path[:-len("/scale")]
            if f"{mod}/bias" in params and f"{mod}/mean" in stats and f"{mod}/var" in stats:
                mods.append(mod)
    return mods


def pack_variables(specs: Sequence[BlockSpec], names: Sequence[str],
                   variables: Mapping[str, Any]) -> dict[str, Any]:
    """Packs a network's variables (see the module docstring).

    Args:
        specs: the network's layers (``space.block_specs(arch)``).
        names: the layer names of the variables ('stem', slot prefixes, 'head').
        variables: {"params", "batch_stats"} of the network.

    Returns:
        {"arrays": {key: np.ndarray}, "manifest": {...}}: what :func:`save_packed` writes.
    """
    params = flatten(variables.get("params", {}))
    stats = flatten(variables.get("batch_stats", {}) or {})
    bits_of = layer_bits(specs, names)
    arrays: dict[str, np.ndarray] = {}
    entries: dict[str, dict[str, Any]] = {}
    bn = set(_bn_modules(params, stats))
    for mod in sorted(bn):
        mult = params[f"{mod}/scale"] / np.sqrt(stats[f"{mod}/var"] + BN_EPSILON)
        shift = params[f"{mod}/bias"] - stats[f"{mod}/mean"] * mult
        arrays[f"bn:{mod}/mult"] = mult.astype(np.float32)
        arrays[f"bn:{mod}/shift"] = shift.astype(np.float32)
    for path, value in params.items():
        mod, name = path.rsplit("/", 1)
        if mod in bn:
            continue
        bits = bits_of.get(path.split("/", 1)[0], FLOAT_BITS)
        if name.endswith("_step") and name[:-len("_step")] in KERNEL_NAMES and bits < FLOAT_BITS:
            continue  # a quantized kernel's step is its stored scale
        if name in KERNEL_NAMES and bits < FLOAT_BITS:
            q, scale = quantize_weight(value, bits, params.get(f"{path}_step"))
            arrays[f"q:{path}"] = pack_bits(q, bits)
            arrays[f"scale:{path}"] = scale
            entries[f"q:{path}"] = {"kind": "int", "bits": bits, "shape": list(q.shape)}
        else:
            arrays[f"f:params/{path}"] = np.asarray(value, np.float32)
    for path, value in stats.items():
        if path.rsplit("/", 1)[0] in bn:
            continue
        arrays[f"f:batch_stats/{path}"] = np.asarray(value, np.float32)
    manifest = {"format": FORMAT, "entries": entries, "bn_epsilon": BN_EPSILON}
    return {"arrays": arrays, "manifest": manifest}


def unpack_arrays(packed: Mapping[str, Any], dequantize: bool = True) -> dict[str, Any]:
    """Returns the flat variables of a packed model.

    Args:
        packed: what :func:`pack_variables` or :func:`load_packed` returned.
        dequantize: True: kernels as float ``q * scale``; False: (q int8, scale) pairs.

    Returns:
        {"params/...": array or (q, scale), "batch_stats/...": array}.
    """
    arrays, entries = packed["arrays"], packed["manifest"]["entries"]
    eps = float(packed["manifest"].get("bn_epsilon", BN_EPSILON))
    flat: dict[str, Any] = {}
    for key, value in arrays.items():
        kind, _, path = key.partition(":")
        if kind == "f":
            flat[path] = np.asarray(value, np.float32)
        elif kind == "q":
            e = entries[key]
            q = unpack_bits(value, int(e["bits"]), e["shape"])
            scale = np.asarray(arrays[f"scale:{path}"], np.float32)
            flat[f"params/{path}"] = (q.astype(np.float32) * scale) if dequantize else (q, scale)
            flat[f"params/{path}_step"] = scale  # re-quantizing q * scale gives q back
        elif kind == "bn" and path.endswith("/mult"):
            mod = path[:-len("/mult")]
            flat[f"params/{mod}/scale"] = np.asarray(value, np.float32)
            flat[f"params/{mod}/bias"] = np.asarray(arrays[f"bn:{mod}/shift"], np.float32)
            flat[f"batch_stats/{mod}/mean"] = np.zeros_like(value, np.float32)
            flat[f"batch_stats/{mod}/var"] = np.full_like(value, 1.0 - eps, np.float32)
    return flat


def unpack_variables(packed: Mapping[str, Any]) -> dict[str, Any]:
    """Returns {"params", "batch_stats"} (numpy, float32) of a packed model."""
    tree = unflatten(unpack_arrays(packed))
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}


def save_packed(packed: Mapping[str, Any], path: str | os.PathLike, meta: Mapping | None = None) -> int:
    """Writes a packed model as one file, atomically.

    Layout: the magic ``NASPACK1``, the manifest's length (uint32, little endian), the manifest
    (zlib-compressed JSON: format, entries, and per array its dtype, shape, offset, bytes), then the arrays'
    raw little-endian bytes one after the other (each at a 4-byte aligned offset). No pickle.

    Args:
        packed: from :func:`pack_variables`.
        path: the file (``model.npk`` by convention).
        meta: extra JSON stored in the manifest (e.g. the Arch id).

    Returns:
        The file size in bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index, chunks, offset = {}, [], 0
    for key in sorted(packed["arrays"]):
        a = np.asarray(packed["arrays"][key])  # (np.ascontiguousarray would make scalars 1-d)
        a = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)
        pad = (-offset) % 4
        chunks.append(b"\0" * pad)
        offset += pad
        index[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                      "bytes": a.nbytes}
        chunks.append(a.tobytes())
        offset += a.nbytes
    manifest = dict(packed["manifest"], arrays=index, **({"meta": dict(meta)} if meta else {}))
    head = zlib.compress(json.dumps(manifest, separators=(",", ":")).encode(), 9)
    write_atomic(path, b"".join([MAGIC + len(head).to_bytes(4, "little") + head, *chunks]))
    return path.stat().st_size


def load_packed(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a packed model file written by :func:`save_packed`.

    Raises:
        NasInputError: not a readable packed model file.
    """
    def bad(why: str) -> NasInputError:
        return NasInputError(f"not a packed model file ({why}); export it with 'nas export'",
                             str(path))

    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise bad(e.strerror or "unreadable") from None
    if not blob.startswith(MAGIC):
        raise bad("no NASPACK1 header")
    n = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    try:
        manifest = json.loads(zlib.decompress(blob[start:start + n]))
        data = memoryview(blob)[start + n:]
        arrays = {}
        for key, e in manifest.pop("arrays").items():
            end = e["offset"] + e["bytes"]
            if end > len(data):
                raise ValueError(f"array {key} ends past the file")
            arrays[key] = np.frombuffer(data[e["offset"]:end], np.dtype(e["dtype"])).reshape(e["shape"])
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise bad(f"corrupt manifest: {e}") from None
    if manifest.get("format") != FORMAT:
        raise bad(f"format {manifest.get('format')!r} is not {FORMAT!r}")
    return {"arrays": arrays, "manifest": manifest}


def packed_nbytes(packed: Mapping[str, Any]) -> int:
    """Returns the bytes of the arrays of a packed model (the file adds a small header)."""
    return int(sum(np.asarray(a).nbytes for a in packed["arrays"].values()))
