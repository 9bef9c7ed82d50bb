"""Shared fixture of the quantization tests: the tiny space with searched bit-widths."""

from __future__ import annotations

from typing import Sequence

from nas.space import Space


def quant_space(bits_w: Sequence[int] = (4, 8, 32), bits_a: Sequence[int] = (8, 32),
                name: str = "tiny_q", extra_ops: Sequence[str] = ()) -> Space:
    """tiny with the given weight / activation bit-widths in every stage, stem and head at 8 bits.

    Args:
        bits_w: weight bit-width choices of every stage.
        bits_a: activation bit-width choices of every stage.
        name: the space's name.
        extra_ops: operators added to the op choices of the stages that may skip.
    """
    d = Space.by_name("tiny").to_dict()
    d["name"] = name
    d["stem"].update(bits_w=8, bits_a=8)
    d["head"].update(bits_w=8, bits_a=8)
    for stage in d["stages"]:
        stage["knobs"]["bits_w"] = list(bits_w)
        stage["knobs"]["bits_a"] = list(bits_a)
        if "skip" in stage["knobs"]["op"]:
            stage["knobs"]["op"] = list(stage["knobs"]["op"]) + list(extra_ops)
    return Space.from_dict(d)
