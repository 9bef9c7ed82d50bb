"""Single-Path NAS (Stamoulis et al. 2019), extended to quantization, pruning and factorization.

One over-parameterized *superkernel* network holds every Arch of a Space as nested slices: the
7x7 depthwise kernel contains the 5x5 and 3x3, expansion 3 is the first half of the channels of
expansion 6, a layer can be dropped (skip), a pruned width keeps the first channels, a rank-r 1x1
conv keeps the leading directions of its factors, and a b-bit weight or activation is a coarser
quantization refined by gated residuals. A choice between two operators that do not nest
(MBConv vs Fused-MBConv) is an op switch: one superkernel per operator, a learned gate selects
one (both run during the search). Each nested choice is a threshold indicator of the norm
of its outer part (hard forward, sigmoid backward; for activations, the running norm of their
quantization residual); the thresholds are trained with the weights under
``CE + lam * log(LAT)``.

Modules:
    indicators     the STE indicator, the exact gated select, ladder probabilities
    nested_quant   the nested residual quantizer (bit-exact with the plain fake-quantizer)
    nested_act_quant  the nested activation quantizer of bits_a and its residual statistics
    plan           a Space's slots as nested ladders (keep, op, mid, kernel, se, rank, bits,
                   bits_a)
    candidates     FBNet-style candidate blocks as ladders, and each level combination's name
    groups         grouped 1x1 convs (with their channel shuffle) as the lowest mid level
    op_switch      two operators that do not nest: branches, the op gate's rule, gate keys
    gates          the gates and masks of a slot, from its variables alone
    superblock     the superkernel block (child param names, the project's convs and quantizer)
    network        SinglePathNetwork: stem, superblocks, head
    cost           the latency / cost term from a LatencyTable or a nas.metrics metric
    export         derive the Arch; cut its weights out in nas.model.build_model's layout
    threshold_opt  the search's optimizer: the thresholds' warm-up and shared-RMS rule

The search itself (``strategy: single_path``) is :mod:`nas.strategies.single_path`.
"""

from nas.single_path.cost import SlotCosts
from nas.single_path.export import derive_arch, derive_levels, export_child, force_levels
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.plan import space_plan

__all__ = ["SinglePathNetwork", "SlotCosts", "derive_arch", "derive_levels", "export_child",
           "force_levels", "init_single_path", "space_plan"]
