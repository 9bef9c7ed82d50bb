"""Evolution over a supernet's sub-networks under a hard latency target (Once-for-All's search).

Once-for-All (Cai et al. 2020, section 3.4) specializes a trained supernet to a device with an
evolutionary search in which every member of the population satisfies the device's latency
constraint: random sub-networks are drawn until they do, and mutants and crossovers that do not
are redrawn. The initial population also holds the fastest sub-network and the caller's seeds
(``nas specialize``: the smallest and the largest, which the sandwich rule trains on every
step) where they meet the target. Each generation keeps the best ``parent_ratio`` of the population as parents and
fills the rest with mutations (``mutation_ratio``; each gene moved with ``mutate_prob``) and
crossovers of random parents. The result is the most accurate feasible sub-network scored
during the whole search (ties: the faster, then the smaller arch id).

Scores come from a callable of genomes (the supernet accuracy of each sub-network, or an accuracy
predictor's estimate; the caller caches across devices); latencies from the device's table.
When even the fastest sub-network misses the target, no search runs and the result says so.

Example:
    >>> result = constrained_evolution(SubnetGenome(space), table.predict, 0.06, score_many,
    ...                                EvolutionSettings(population=32, generations=20))
    >>> result.best.arch, result.best.latency_ms
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from nas.space import Arch
from nas.specialize.genome import Genome, SubnetGenome


@dataclasses.dataclass(frozen=True)
class EvolutionSettings:
    """Settings of the constrained evolution.

    Attributes:
        population: members per generation.
        generations: generations after the initial population.
        parent_ratio: fraction of the population kept as parents.
        mutation_ratio: fraction of the population made by mutation (the rest of the children
            by crossover).
        mutate_prob: per-gene mutation probability.
        feasible_tries: redraws allowed per member before giving up on it.
        seed: seed of the search.
    """

    population: int = 32
    generations: int = 20
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    feasible_tries: int = 50
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A scored feasible sub-network.

    Attributes:
        genome: its canonical genome.
        arch: its canonical Arch.
        arch_id: the space's id of it.
        latency_ms: the device table's predicted latency.
        score: the score the search ranked it by.
    """

    genome: Genome
    arch: Arch
    arch_id: str
    latency_ms: float
    score: float


@dataclasses.dataclass
class EvolutionResult:
    """What one device's search found.

    Attributes:
        best: the most accurate feasible candidate (None when nothing meets the target).
        candidates: every feasible sub-network scored, by canonical genome.
        fastest_ms: the fastest sub-network's predicted latency.
        fastest: its genome.
        proposals: sub-networks proposed (duplicates included).
    """

    best: Candidate | None
    candidates: dict[Genome, Candidate]
    fastest_ms: float
    fastest: Genome
    proposals: int = 0

    def ranked(self) -> list[Candidate]:
        """Returns the candidates best first (score, then latency, then arch id)."""
        return sorted(self.candidates.values(), key=rank_key)


def rank_key(c: Candidate) -> tuple:
    """Sort key: higher score first, then lower latency, then arch id (deterministic ties)."""
    return (-c.score, c.latency_ms, c.arch_id)


def constrained_evolution(gs: SubnetGenome, latency_ms: Callable[[Arch], float], target_ms: float,
                          score_many: Callable[[Sequence[Genome]], Sequence[float]],
                          settings: EvolutionSettings = EvolutionSettings(),
                          seeds: Sequence[Genome] = ()) -> EvolutionResult:
    """Searches the sub-networks that meet `target_ms` for the best score.

    Args:
        gs: the space's genomes.
        latency_ms: predicted latency of an Arch on the device (e.g. ``table.predict``).
        target_ms: the hard latency target (a sub-network is feasible when its latency is <=).
        score_many: scores of a batch of canonical genomes (higher is better; ``gs.arch(g)``
            is the Arch of one).
        settings: population, generations, ratios, seed.
        seeds: canonical genomes that join the initial population where they meet the target
            (the fastest sub-network always does).

    Returns:
        The :class:`EvolutionResult` (``best`` None when even the fastest sub-network misses).
    """
    rng = np.random.default_rng(settings.seed)
    lat_cache: dict[Genome, float] = {}

    def latency(genome: Genome) -> float:
        if genome not in lat_cache:
            lat_cache[genome] = float(latency_ms(gs.arch(genome)))
        return lat_cache[genome]

    fastest = gs.fastest(lambda arch: float(latency_ms(arch)))
    result = EvolutionResult(None, {}, latency(fastest), fastest)
    if result.fastest_ms > target_ms:
        return result

    def feasible(genome: Genome) -> bool:
        return latency(genome) <= target_ms

    def evaluate(genomes: Sequence[Genome]) -> list[Candidate]:
        result.proposals += len(genomes)
        new = list(dict.fromkeys(g for g in genomes if g not in result.candidates))
        if new:
            for g, score in zip(new, score_many(new)):
                arch = gs.arch(g)
                result.candidates[g] = Candidate(g, arch, gs.space.arch_id(arch), latency(g),
                                                 float(score))
        return [result.candidates[g] for g in genomes]

    starts = [g for g in dict.fromkeys([fastest, *seeds]) if feasible(g)]
    population = evaluate(_initial_population(gs, feasible, starts, rng, settings))
    n_parents = max(1, int(round(settings.parent_ratio * settings.population)))
    n_mutants = int(round(settings.mutation_ratio * settings.population))
    for _ in range(settings.generations):
        parents = sorted(population, key=rank_key)[:n_parents]
        children: list[Genome] = []
        for i in range(settings.population - len(parents)):
            child = _feasible_child(gs, parents, feasible, rng, settings, crossover=i >= n_mutants)
            if child is not None:
                children.append(child)
        population = parents + evaluate(children)
    result.best = min(result.candidates.values(), key=rank_key)
    return result


def _initial_population(gs: SubnetGenome, feasible: Callable[[Genome], bool],
                        starts: Sequence[Genome], rng: np.random.Generator,
                        settings: EvolutionSettings) -> list[Genome]:
    """`starts` (feasible; the fastest first), then feasible sub-networks drawn uniformly
    (rejection); where the target is so tight that few draws meet it, the rest by a random walk
    of feasible mutations from the starts."""
    found: dict[Genome, None] = dict.fromkeys(starts[:settings.population])
    for _ in range(settings.feasible_tries * settings.population):
        if len(found) >= settings.population:
            return list(found)
        genome = gs.sample(rng)
        if feasible(genome):
            found[genome] = None
    walker = starts[0]
    for _ in range(settings.feasible_tries * settings.population):
        if len(found) >= settings.population:
            break
        child = gs.mutate(walker, rng, settings.mutate_prob)
        if feasible(child):
            found[child] = None
            walker = child
        else:
            walker = list(found)[int(rng.integers(len(found)))]
    return list(found)


def _feasible_child(gs: SubnetGenome, parents: Sequence[Candidate],
                    feasible: Callable[[Genome], bool], rng: np.random.Generator,
                    settings: EvolutionSettings, crossover: bool) -> Genome | None:
    """A mutant of a random parent (or a crossover of two) that meets the target, redrawn up to
    ``feasible_tries`` times; None when none did."""
    for _ in range(settings.feasible_tries):
        a = parents[int(rng.integers(len(parents)))].genome
        if crossover and len(parents) > 1:
            b = parents[int(rng.integers(len(parents)))].genome
            child = gs.crossover(a, b, rng)
        else:
            child = gs.mutate(a, rng, settings.mutate_prob)
        if feasible(child):
            return child
    return None
