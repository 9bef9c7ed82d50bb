"""Train once, specialize for many devices (Once-for-All, Cai et al. 2020).

A supernet trained once with ``strategy: spos`` (:mod:`nas.strategies.spos`) holds every
sub-network of its space; ``nas specialize`` searches it per device, with no training:

* :mod:`nas.specialize.genome`: sub-networks as one level per ladder per slot (only what the
  superkernel contains), sampled, mutated and crossed over; the fastest one under a table;
* :mod:`nas.specialize.evolution`: evolution under a hard latency target, scored by the
  supernet accuracy of each sub-network (or an accuracy predictor);
* :mod:`nas.specialize.predictor`: the optional accuracy predictor (a small MLP on the
  sub-network encoding, fitted on supernet scores, with its held-out rank correlation);
* :mod:`nas.specialize.prior`: the optional MACs prior (accuracy and MACs as percentiles of a
  fixed reference sample, averaged: weight sharing ranks large sub-networks too low);
* :mod:`nas.specialize.devices`: the ``--table`` / ``--target`` pairs, checked;
* :mod:`nas.specialize.run`: the whole command (load once, search per device, export each
  device's Arch with its child weights sliced from the supernet).
"""
