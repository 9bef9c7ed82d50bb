"""The one-shot supernet of a Space (FBNet's Gumbel-softmax and ProxylessNAS's binary paths).

- :mod:`.plan`: per slot, decisions, weight-sharing paths and distinct shapes (from the Space).
- :mod:`.mixing`: how a decision enters the forward pass (Fixed, Mix = masks, Pick = switch).
- :mod:`.paths`: a path's shared weights and its forward pass (reusing the blocks' primitives).
- :mod:`.network`: :class:`SuperNet` (modes soft / pick / pair) and child weight slicing.
- :mod:`.gates`: architecture logits, Gumbel-softmax, binary gates, temperature, derive().
- :mod:`.synthetic`: a MACs-based latency table and a kernel-size sanity task for tests.

The search loops are in :mod:`nas.strategies.fbnet`, :mod:`nas.strategies.proxyless` and
:mod:`nas.strategies.oneshot_loop`.
"""
