"""BlockSpec: the complete, shape-resolved description of one layer of a network.

A Space turns an Arch into a list of BlockSpecs (stem, searchable blocks, head). Everything that
needs to know what a layer is - the Flax model builder, the cost metrics, the latency tables -
reads BlockSpecs, so the search space is described once.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _fmt(value: float) -> str:
    """Formats a ratio compactly for keys: 1.0 -> '1', 0.75 -> '0.75'."""
    return f"{value:g}"


@dataclasses.dataclass(frozen=True)
class OpTraits:
    """What the package knows about a block operator besides its op program
    (:func:`nas.blocks.program.program` holds the layers themselves).

    Attributes:
        searchable: a value of the ``op`` knob (else chosen by the space: stem, head, skip_proj).
        knobs: the knobs that change a block of this operator; the others are canonicalized away.
        expands: the block's mid channels are ``round(cin * expand * width)`` (else ``cin`` for a
            bottleneck, 0 otherwise).
        bottleneck: an inverted-bottleneck-like block: squeeze-excite, residual (when the shapes
            match) and 1x1 groups apply.
    """

    searchable: bool
    knobs: frozenset[str]
    expands: bool = False
    bottleneck: bool = False


_BOTTLENECK_KNOBS = frozenset({"op", "kernel", "se", "bits_w", "bits_a", "rank", "groups", "act"})

#: Every block operator. A new block type is an entry here and a branch of
#: :func:`nas.blocks.program.program`; everything else reads these two.
BLOCK_OPS: dict[str, OpTraits] = {
    "mbconv": OpTraits(True, _BOTTLENECK_KNOBS | {"expand", "width"}, expands=True,
                       bottleneck=True),
    "fused_mbconv": OpTraits(True, _BOTTLENECK_KNOBS | {"expand", "width"}, expands=True,
                             bottleneck=True),
    "dwsep": OpTraits(True, _BOTTLENECK_KNOBS, bottleneck=True),
    "skip": OpTraits(True, frozenset({"op"})),
    # a skip where the shape changes: kxk conv -> BN -> act at kernel 1 (FBNet's CIFAR setting)
    "skip_proj": OpTraits(False, frozenset({"op", "bits_w", "bits_a", "act"})),
    "stem": OpTraits(False, frozenset()),
    "head": OpTraits(False, frozenset()),
}


def op_traits(op: str) -> OpTraits:
    """Returns the traits of block operator `op`.

    Raises:
        ValueError: unknown operator.
    """
    if op not in BLOCK_OPS:
        raise ValueError(f"unknown block op {op!r}; known: {sorted(BLOCK_OPS)}")
    return BLOCK_OPS[op]


def conv_out(size: int, stride: int) -> int:
    """Returns the output size of a 'SAME'-padded conv along one axis."""
    return -(-size // stride)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One layer of a network, with its input shape and every knob resolved.

    Attributes:
        op: a key of :data:`BLOCK_OPS`: 'stem' (kxk conv), 'mbconv' (inverted bottleneck),
            'fused_mbconv' (Fused-MBConv: a kxk conv replaces expand + depthwise), 'dwsep'
            (depthwise separable), 'skip' (identity), 'skip_proj' (a skip that changes shape:
            1x1 conv, kernel 1) or 'head' (optional 1x1 conv, global pool, classifier).
        cin: input channels.
        cout: output channels (the number of classes for 'head').
        stride: spatial stride.
        in_hw: input height and width.
        kernel: depthwise (or stem / skip_proj) kernel size.
        expand: expansion ratio of 'mbconv' (the expand 1x1 conv is always present in 'mbconv').
        se_ratio: squeeze-excite ratio relative to the block's input channels; 0 means no SE.
        act: activation function name.
        bits_w: weight bit-width (32 = float).
        bits_a: activation bit-width (32 = float).
        width: kept fraction of the expanded channels (structured pruning).
        rank: rank of the 1x1 convs as a fraction of min(cin, cout); None = not factorized.
        groups: groups of the 1x1 convs.
        residual: whether a residual connection is allowed when shapes match.
        hidden: 'head' only: channels of the 1x1 conv before pooling (0 = no such conv).
        dropout: 'head' only: dropout rate before the classifier.
    """

    op: str
    cin: int
    cout: int
    stride: int
    in_hw: tuple[int, int]
    kernel: int = 3
    expand: float = 1
    se_ratio: float = 0.0
    act: str = "relu"
    bits_w: int = 32
    bits_a: int = 32
    width: float = 1.0
    rank: float | None = None
    groups: int = 1
    residual: bool = True
    hidden: int = 0
    dropout: float = 0.0

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width (1x1 for 'head')."""
        if self.op == "head":
            return (1, 1)
        return (conv_out(self.in_hw[0], self.stride), conv_out(self.in_hw[1], self.stride))

    @property
    def mid_channels(self) -> int:
        """Channels inside the block after expansion and pruning (the expanded, depthwise or
        fused kxk conv's channels)."""
        traits = op_traits(self.op)
        if traits.expands:
            full = int(round(self.cin * self.expand))
            return max(1, int(round(full * self.width)))
        return self.cin if traits.bottleneck else 0

    @property
    def se_channels(self) -> int:
        """Squeeze channels of the SE module (0 without SE)."""
        if self.se_ratio <= 0 or not op_traits(self.op).bottleneck:
            return 0
        return max(1, int(round(self.cin * self.se_ratio)))

    @property
    def has_residual(self) -> bool:
        """Whether the block adds its input to its output."""
        return (op_traits(self.op).bottleneck and self.residual and self.stride == 1
                and self.cin == self.cout)

    def rank_channels(self, cin: int, cout: int) -> int | None:
        """Inner channels of a factorized cin->cout 1x1 conv, or None if not factorized.

        Args:
            cin: input channels of the 1x1 conv.
            cout: output channels of the 1x1 conv.

        Returns:
            r = max(1, round(rank * min(cin, cout))), or None when rank is None.
        """
        if self.rank is None:
            return None
        return max(1, int(round(self.rank * min(cin, cout))))

    def key(self) -> str:
        """Returns the latency-table key of this layer.

        Example: ``mbconv-in:16x16x24-out:8x8x40-k:5-e:6-s:2-bw:8-ba:8``; knobs at their
        neutral value (width 1, no rank, no SE, groups 1, relu) are left out of the key.
        """
        h, w = self.in_hw
        oh, ow = self.out_hw
        parts = [self.op, f"in:{h}x{w}x{self.cin}", f"out:{oh}x{ow}x{self.cout}"]
        if self.op == "skip":
            return "-".join(parts)
        if self.op == "head":
            parts.append(f"hid:{self.hidden}")
        else:
            parts.append(f"k:{self.kernel}")
        traits = op_traits(self.op)
        if traits.expands:
            parts.append(f"e:{_fmt(self.expand)}")
        parts += [f"s:{self.stride}", f"bw:{self.bits_w}", f"ba:{self.bits_a}"]
        if traits.expands and self.width != 1.0:
            parts.append(f"w:{_fmt(self.width)}")
        if self.rank is not None:
            parts.append(f"r:{_fmt(self.rank)}")
        if self.se_ratio > 0:
            parts.append(f"se:{_fmt(self.se_ratio)}")
        if self.groups != 1:
            parts.append(f"g:{self.groups}")
        if self.act != "relu":
            parts.append(f"a:{self.act}")
        if traits.bottleneck and not self.residual:
            parts.append("nores")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Returns the spec as a JSON-serializable dict."""
        d = dataclasses.asdict(self)
        d["in_hw"] = list(self.in_hw)
        return d
