"""Sub-networks of a single-path superkernel as genomes: one level per ladder per slot.

A genome is a tuple of ints, one per gene ``(slot prefix, ladder)`` of the space's single-path
plans (:func:`nas.single_path.plan.space_plan`), in plan order. Every genome decodes to an Arch
the superkernel contains (:func:`~nas.single_path.plan.levels_to_arch`), so a search over
genomes never proposes an Arch the supernet cannot score. The *canonical* genome of an Arch is
its levels (:func:`~nas.single_path.subnets.arch_levels`): two genomes that decode to the same
Arch (a skipped layer's other ladders are moot) have the same canonical genome, which is what
the search keys its records by.

Mutation resamples genes in level space rather than mutating Arch decisions
(:meth:`nas.space.Space.mutate`, used by the ``evolution`` strategy): a decision-level mutation
can name an Arch that is not the canonical form of any sub-network (e.g. expand 6 at width 0.5
in a slot whose superkernel level is expand 3 at width 1.0).

Example:
    >>> gs = SubnetGenome(space)
    >>> g = gs.sample(np.random.default_rng(0))
    >>> arch = gs.arch(g)                      # an Arch of the space the supernet contains
    >>> gs.mutate(g, rng, 0.1) != g
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nas.single_path.plan import levels_to_arch, space_plan
from nas.single_path.subnets import Levels, arch_levels
from nas.space import Arch, Space

Genome = tuple[int, ...]


class SubnetGenome:
    """Encodes, samples and varies the sub-networks of a space's single-path superkernel.

    Args:
        space: the Space (every slot nestable).

    Attributes:
        space: the Space.
        plans: its single-path plans.
        genes: ``[(slot prefix, ladder name, number of levels)]`` in genome order.
    """

    def __init__(self, space: Space):
        self.space = space
        self.plans = space_plan(space)
        self.genes = [(plan.prefix, name, ladder.n) for plan in self.plans
                      for name, ladder in plan.ladders.items()]
        self._arch: dict[Genome, Arch] = {}
        self._canonical: dict[Genome, Genome] = {}

    # ---------------------------------------------------------------------------- encoding
    def levels(self, genome: Genome) -> Levels:
        """Returns the level dict ``{slot prefix: {ladder: level}}`` of a genome."""
        out: Levels = {plan.prefix: {} for plan in self.plans}
        for (prefix, name, _), level in zip(self.genes, genome):
            out[prefix][name] = int(level)
        return out

    def arch(self, genome: Genome) -> Arch:
        """Returns the canonical Arch of a genome (cached)."""
        genome = tuple(int(g) for g in genome)
        if genome not in self._arch:
            self._arch[genome] = levels_to_arch(self.space, self.plans, self.levels(genome))
        return self._arch[genome]

    def of_arch(self, arch: Mapping[str, Any]) -> Genome:
        """Returns the canonical genome of an Arch of the space.

        Raises:
            NasInputError: the Arch is not valid for the space.
            ValueError: it is not a sub-network of the superkernel.
        """
        levels = arch_levels(self.space, self.plans, arch)
        return tuple(int(levels[prefix][name]) for prefix, name, _ in self.genes)

    def of_levels(self, levels: Levels) -> Genome:
        """Returns the canonical genome of a level dict (missing ladders: top level)."""
        return self.canonical(tuple(int(levels.get(prefix, {}).get(name, n - 1))
                                    for prefix, name, n in self.genes))

    def canonical(self, genome: Genome) -> Genome:
        """Returns the canonical genome of the Arch a genome decodes to (cached)."""
        genome = tuple(int(g) for g in genome)
        if genome not in self._canonical:
            self._canonical[genome] = self.of_arch(self.arch(genome))
        return self._canonical[genome]

    def features(self, genomes: Sequence[Genome]) -> np.ndarray:
        """Returns the one-hot encoding [len(genomes), sum of levels] of canonical genomes (the
        accuracy predictor's input)."""
        offsets = np.cumsum([0] + [n for _, _, n in self.genes])
        out = np.zeros((len(genomes), int(offsets[-1])), np.float32)
        for i, genome in enumerate(genomes):
            out[i, offsets[:-1] + np.asarray(self.canonical(genome))] = 1.0
        return out

    # ---------------------------------------------------------------------------- variation
    def sample(self, rng: np.random.Generator) -> Genome:
        """Returns a canonical genome with every level drawn uniformly and independently (the
        distribution the supernet was trained on)."""
        return self.canonical(tuple(int(rng.integers(n)) for _, _, n in self.genes))

    def mutate(self, genome: Genome, rng: np.random.Generator, prob: float) -> Genome:
        """Returns a canonical genome that differs from `genome`: each gene moves to another
        level with probability `prob`, at least one gene moves, and a change the Arch does not
        see (a skipped layer's moot ladders) is redrawn.

        Args:
            genome: a canonical genome.
            rng: the generator.
            prob: per-gene mutation probability.

        Returns:
            The child (equal to `genome` only when the space has a single sub-network).
        """
        movable = [i for i, (_, _, n) in enumerate(self.genes) if n > 1]
        if not movable:
            return genome
        for _ in range(20):
            child = list(genome)
            picked = [i for i in movable if rng.random() < prob] or \
                [movable[int(rng.integers(len(movable)))]]
            for i in picked:
                n = self.genes[i][2]
                child[i] = (child[i] + 1 + int(rng.integers(n - 1))) % n   # another level
            child = self.canonical(tuple(child))
            if child != genome:
                return child
        return genome

    def crossover(self, a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
        """Returns the canonical genome taking each gene from `a` or `b` with equal odds."""
        take = rng.random(len(self.genes)) < 0.5
        return self.canonical(tuple(x if t else y for x, y, t in zip(a, b, take)))

    # ----------------------------------------------------------------------------- latency
    def fastest(self, latency_ms: Callable[[Arch], float]) -> Genome:
        """Returns the genome of the fastest sub-network under an additive latency model.

        A latency table's prediction is a sum of one contribution per layer (plus a constant,
        :meth:`nas.latency.table.LatencyTable.predict_many`), so the fastest network is each
        slot's fastest combination of levels, found slot by slot with the others fixed.

        Args:
            latency_ms: predicted latency of an Arch (e.g. ``table.predict``).

        Returns:
            The canonical genome.
        """
        current = self.canonical(tuple(n - 1 for _, _, n in self.genes))
        start = 0
        for plan in self.plans:
            width = len(plan.ladders)
            best, best_ms = current, latency_ms(self.arch(current))
            for combo in plan.grid():
                trial = list(current)
                for j, name in enumerate(plan.ladders):
                    trial[start + j] = combo.get(name, plan.ladders[name].n - 1)
                trial = self.canonical(tuple(trial))
                ms = latency_ms(self.arch(trial))
                if ms < best_ms:
                    best, best_ms = trial, ms
            current, start = best, start + width
        return current
