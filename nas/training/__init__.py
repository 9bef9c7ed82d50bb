"""Training: one trainer for candidates, distillation students and supernets.

- :mod:`nas.training.step`: config, state, losses, optimizer, the jitted train and eval steps;
- :mod:`nas.training.loop`: the one epoch loop (batches, checkpoints, logs, resume);
- :mod:`nas.training.trainer`: ``train_arch``, the entry that trains one Arch;
- :mod:`nas.training.checkpoint`: orbax checkpoints with the Arch JSON beside them;
- :mod:`nas.training.distill`: knowledge distillation (soft targets, hints, ensembles);
- :mod:`nas.training.evaluate`: one search candidate trained and measured.
"""
