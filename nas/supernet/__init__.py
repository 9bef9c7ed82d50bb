"""The one-shot supernet of a Space (FBNet's Gumbel-softmax and ProxylessNAS's binary paths).

- :mod:`.plan`: per slot, decisions, weight-sharing paths and distinct shapes (from the Space).
- :mod:`.mixing`: how a decision enters the forward pass (Fixed, Mix = masks, Pick = switch).
- :mod:`.path_program`: the roles a path gives the ops of a block's op program
  (:mod:`nas.blocks.program`): kxk convs, mid-channel convs, rank stages, the optional SE run.
- :mod:`.paths`: a path's shared weights, its forward pass (an interpreter of the op program
  with slices, masks and picks) and the slicing of a child's weights.
- :mod:`.network`: :class:`SuperNet` (modes soft / pick / pair) and :func:`child_params`.
- :mod:`.gates`: architecture logits, Gumbel-softmax, binary gates, temperature, derive().
- :mod:`.synthetic`: a MACs-based latency table and a kernel-size sanity task for tests.

The search loops are in :mod:`nas.strategies.fbnet`, :mod:`nas.strategies.proxyless` and
:mod:`nas.strategies.oneshot_loop`.
"""
