"""Weight-sharing fast path: score sample-based candidates on a trained one-shot supernet.

Instead of training every candidate from scratch, a random / evolution / RL search can score an
Arch with the weights of a supernet trained by ``nas search`` with a one-shot strategy; ``spos``
trains one made for this (uniform sampling, sandwich rule, in-place distillation over the
single-path superkernel, :mod:`nas.strategies.spos`), fbnet / proxyless / single_path
workdirs work too::

    evaluation: {mode: supernet, supernet: runs/digits_spos}   # that search's workdir

The score of an Arch is the validation accuracy of its sub-network of the supernet after its
BatchNorm statistics (and activation quantizer ranges) are recalibrated for it on training
images, as Once-for-All does: the statistics of the shared network are wrong for every single
sub-network, so they are recomputed, exactly, from one large batch of training images (the
supernet's own training split, the same images for every Arch; the validation split stays held
out as in its search). Nothing is trained. The sub-network of an Arch is

* in an fbnet / proxyless supernet ('paths'): the child network (:func:`nas.model.build_model`)
  with the supernet's weights sliced to it (:func:`nas.supernet.network.child_params`; one
  compiled program per Arch);
* in a spos / single_path superkernel: the superkernel run with the Arch's hard gates
  (:mod:`nas.single_path.subnets`, :mod:`nas.single_path.scoring`; one compiled program for
  every Arch, the same outputs as the Arch's exported child).

With ``prior: macs`` a candidate's accuracy is the mean of its supernet accuracy's and its
MACs' percentiles in a fixed sample of ``prior_archs`` uniform Archs of the space, scored once
per process (:mod:`nas.specialize.prior`: weight sharing ranks large sub-networks too low); its
supernet accuracy stays in ``val_accuracy``.

Example:
    >>> scorer = SupernetScorer(str(Path("runs/digits_fbnet").resolve()))
    >>> scorer(arch)["accuracy"]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from nas.blocks.layers import BN_MOMENTUM
from nas.single_path.network import SinglePathNetwork, init_single_path
from nas.single_path.plan import space_plan
from nas.single_path.scoring import SubnetEvaluator
from nas.single_path.subnets import arch_levels, network_gates
from nas.training.checkpoint import Checkpointer
from nas.data import load_data
from nas.errors import NasInputError
from nas.training.evaluate import CandidateEvaluator
from nas.model import add_missing_quant_steps, build_model, init_variables, leaf_shapes
from nas.metrics import arch_metrics
from nas.space import Space, resolve_space
from nas.specialize.prior import MacsPrior
from nas.strategies import registry
from nas.strategies.single_path import merge_thresholds, split_thresholds
from nas.supernet.network import SuperNet, child_params, merge_trainable, trainable
from nas.training.recalibrate import calibration_batch, recalibrated_stats, stacked_batches

SCORED_BY = "supernet"
SEARCH_RECORD = "search.json"


@dataclasses.dataclass(frozen=True)
class Supernet:
    """A trained supernet read back from a one-shot search's workdir.

    Attributes:
        workdir: the search's workdir.
        space: its Space.
        data: its data spec.
        seed: its seed (data splits).
        strategy: a one-shot registry name (its entry's ``supernet`` says which network).
        net: the :class:`nas.supernet.network.SuperNet` ('paths') or
            :class:`nas.single_path.network.SinglePathNetwork` ('superkernel').
        weights: 'paths': the full weight tree (``net.init`` structure) with the trained
            leaves; 'superkernel': the network's {"params", "batch_stats"}.
        epochs: epochs the supernet was trained (from the checkpoint's meta).
        evaluator: 'superkernel': the :class:`~nas.single_path.scoring.SubnetEvaluator` that
            scores its sub-networks (compiled once); None for 'paths'.
    """

    workdir: str
    space: Space
    data: str
    seed: int
    strategy: str
    net: Any
    weights: Any
    epochs: int
    evaluator: Any = None

    @property
    def kind(self) -> str:
        """'paths' (fbnet, proxyless) or 'superkernel' (spos, single_path)."""
        return registry.entry(self.strategy).supernet


def load_supernet(workdir: str | Path) -> Supernet:
    """Reads the supernet of a finished (or checkpointed) one-shot search.

    Args:
        workdir: the one-shot search's workdir (holds search.json and checkpoints/).

    Returns:
        The :class:`Supernet`.

    Raises:
        NasInputError: not a one-shot search workdir, another strategy, or no checkpoint.
    """
    wd = Path(workdir).expanduser().resolve()
    record = wd / SEARCH_RECORD
    field = "evaluation.supernet"
    try:
        config = json.loads(record.read_text())["config"]
        strategy = config["strategy"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise NasInputError(f"{record} is not a search record; give the --workdir of a finished "
                            "'nas search' with a one-shot strategy (spos trains one for this)",
                            None, field) from None
    trainable_with = registry.names("one_shot")
    if strategy not in trainable_with:
        raise NasInputError(f"{wd} holds a {strategy!r} search; the fast path needs a supernet "
                            f"trained with strategy {', '.join(trainable_with)} (spos trains one "
                            "for this)", None, field)
    space = resolve_space(config["space"], str(record))
    if registry.entry(strategy).supernet == "superkernel":
        return _load_superkernel(wd, config, space, strategy)
    net = SuperNet(space)
    full = net.init(jax.random.PRNGKey(0))
    manager = ocp.CheckpointManager(wd / "checkpoints")
    steps = sorted(manager.all_steps())
    if not steps:
        raise NasInputError(f"{wd} has no supernet checkpoint yet; run its 'nas search' first",
                            None, field)
    meta = manager.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    ckpt = Checkpointer(wd, meta["arch_id"])
    stats = {"stem": full["stem"]["batch_stats"], "head": full["head"]["batch_stats"]}
    got = ckpt.restore({"params": trainable(full), "batch_stats": stats})  # run_training's layout
    ckpt.close()
    model, _, meta = got
    whole = merge_trainable({"stem": {"batch_stats": model["batch_stats"]["stem"]},
                             "head": {"batch_stats": model["batch_stats"]["head"]}}, model["params"])
    return Supernet(str(wd), space, config.get("data", "digits"), int(config.get("seed", 0)),
                    strategy, net, whole, int(meta.get("epoch", 0)))


def _load_superkernel(wd: Path, config: Mapping[str, Any], space: Space, strategy: str
                      ) -> Supernet:
    """Reads the superkernel network of a spos / single_path workdir (the one-shot loop's
    checkpoint: params without thresholds, batch_stats; the thresholds, which scoring never
    reads, come from a fresh initialization)."""
    net = SinglePathNetwork(space)
    init = init_single_path(net, jax.random.PRNGKey(0))
    weights, thresholds = split_thresholds(space, init["params"])
    manager = ocp.CheckpointManager(wd / "checkpoints")
    steps = sorted(manager.all_steps())
    if not steps:
        raise NasInputError(f"{wd} has no supernet checkpoint yet; run its 'nas search' first",
                            None, "evaluation.supernet")
    meta = manager.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    ckpt = Checkpointer(wd, meta["arch_id"])
    try:
        model, _, meta = ckpt.restore({"params": weights, "batch_stats": init["batch_stats"]})
    finally:
        ckpt.close()
    variables = {"params": merge_thresholds(model["params"], thresholds),
                 "batch_stats": model["batch_stats"]}
    return Supernet(str(wd), space, config.get("data", "digits"), int(config.get("seed", 0)),
                    strategy, net, variables, int(meta.get("epoch", 0)), SubnetEvaluator(net))


@functools.lru_cache(maxsize=2)
def _supernet(workdir: str) -> Supernet:
    return load_supernet(workdir)


@functools.lru_cache(maxsize=2)
def _data(spec: str, definition_json: str, seed: int):
    return load_data(spec, Space.from_dict(json.loads(definition_json)), seed=seed)


@dataclasses.dataclass(frozen=True)
class SupernetScorer:
    """Scores an Arch on a trained supernet (a drop-in for :class:`nas.training.evaluate.CandidateEvaluator`).

    Small and picklable (paths and numbers), so Ray can ship it; each process loads the supernet
    and the data once.

    Attributes:
        supernet: absolute path of the one-shot search's workdir.
        calibration_images: training images of the one BatchNorm recalibration batch.
        eval_batch_size: batch size of the validation / test passes.
        latency_table: absolute path of a latency table for latency_ms, or None.
        on_score: optional callback ``f(arch)`` per scored Arch (tests count calls).
        prior: 'none' (accuracy = supernet accuracy) or 'macs' (combined with MACs, above).
        prior_archs: uniform Archs in the MACs prior's reference sample.
    """

    supernet: str
    calibration_images: int = 512
    eval_batch_size: int = 512
    latency_table: str | None = None
    on_score: Callable[[Mapping[str, Any]], None] | None = None
    prior: str = "none"
    prior_archs: int = 64

    def load(self) -> Supernet:
        """Returns the (cached) supernet."""
        return _supernet(str(Path(self.supernet).expanduser().resolve()))

    def __call__(self, arch: Mapping[str, Any], report: Callable[[dict], None] | None = None) -> dict:
        """Scores one Arch.

        Args:
            arch: a candidate of the supernet's space.
            report: unused (no epochs); accepted for the executor's interface.

        Returns:
            {'accuracy' (= val_accuracy, or with the prior the combined score),
            'val_accuracy', 'test_accuracy', 'train_seconds': 0, 'score_seconds', 'scored_by':
            'supernet' or 'supernet + MACs prior', cost metrics, 'latency_ms' if known}.
        """
        start = time.perf_counter()
        sn = self.load()
        arch = sn.space.validate(arch)
        if self.on_score is not None:
            self.on_score(arch)
        data = _data(sn.data, json.dumps(sn.space.to_dict(), sort_keys=True), sn.seed)
        accuracy = path_accuracy(sn, arch, data, self.calibration_images, self.eval_batch_size)
        costs = CandidateEvaluator.for_space(sn.space, latency_table=self.latency_table).costs(arch)
        score, scored_by = accuracy["val"], SCORED_BY
        if self.prior == "macs":
            prior = _macs_prior(str(Path(self.supernet).expanduser().resolve()),
                                self.calibration_images, self.eval_batch_size, self.prior_archs)
            score = float(prior.combine([accuracy["val"]], [costs["macs"]])[0])
            scored_by = f"{SCORED_BY} + MACs prior"
        return {**costs, "accuracy": score, "val_accuracy": accuracy["val"],
                "test_accuracy": accuracy["test"], "train_seconds": 0.0,
                "score_seconds": time.perf_counter() - start, "scored_by": scored_by}


def prior_reference(space: Space, count: int) -> list[dict]:
    """Returns up to `count` distinct uniform Archs of a space (``space.sample(0)``,
    ``sample(1)``, ...; fewer where the space has fewer): the MACs prior's reference sample."""
    archs: dict[str, dict] = {}
    for seed in range(20 * count):
        arch = space.sample(seed)
        archs.setdefault(space.arch_id(arch), arch)
        if len(archs) == count:
            break
    return list(archs.values())


@functools.lru_cache(maxsize=4)
def _macs_prior(supernet: str, calibration_images: int, eval_batch_size: int,
                count: int) -> MacsPrior:
    """The MACs prior of a supernet: its reference sample scored on the validation split."""
    sn = _supernet(supernet)
    data = _data(sn.data, json.dumps(sn.space.to_dict(), sort_keys=True), sn.seed)
    val_only = dataclasses.replace(data, x_test=None, y_test=None)
    reference = prior_reference(sn.space, count)
    scores = [path_accuracy(sn, a, val_only, calibration_images, eval_batch_size)["val"]
              for a in reference]
    return MacsPrior(scores, [arch_metrics(sn.space, a)["macs"] for a in reference])


def path_accuracy(sn: Supernet, arch: Mapping[str, Any], data: Any, calibration_images: int = 512,
                  eval_batch_size: int = 512) -> dict[str, float | None]:
    """Returns the validation and test accuracy of an Arch's sub-network of the supernet.

    Args:
        sn: the supernet.
        arch: a valid Arch of its space.
        data: the Dataset the supernet was trained on (same spec and seed: its validation split
            was never trained on).
        calibration_images: training images used to recompute the path's BatchNorm statistics.
        eval_batch_size: batch size of the evaluation passes.

    Returns:
        {"val": accuracy, "test": accuracy or None when the data has no test split}.
    """
    x_cal = calibration_batch(data.x_train, calibration_images, sn.seed)
    splits = [(x, y) for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test))
              if x is not None and len(x)]
    x_eval = np.concatenate([x for x, _ in splits])
    if sn.kind == "superkernel":
        plans = space_plan(sn.space)
        gates = network_gates(plans, arch_levels(sn.space, plans, arch))
        preds = sn.evaluator.predict(sn.weights, gates, x_cal, x_eval, eval_batch_size)
    else:
        preds = _paths_predictions(sn, arch, x_cal, x_eval, eval_batch_size)
    out, start = [], 0
    for x, y in splits:
        out.append(float(np.mean(preds[start:start + len(x)] == y)))
        start += len(x)
    has_test = data.x_test is not None and len(data.x_test) > 0
    return {"val": out[0], "test": out[1] if has_test and len(out) > 1 else None}


def _paths_predictions(sn: Supernet, arch: Mapping[str, Any], x_cal: np.ndarray,
                       x_eval: np.ndarray, eval_batch_size: int) -> np.ndarray:
    """The predicted classes of `x_eval` by an Arch's path through a 'paths' supernet (its
    child network with the sliced weights, recalibrated on `x_cal`)."""
    model = build_model(sn.space, arch)
    shape = (1, *sn.space.resolution, sn.space.in_channels)
    init = init_variables(model, jax.random.PRNGKey(0), shape)
    params = {k: v for k, v in child_params(sn.net, sn.weights, arch).items() if v}  # skip: {}
    # the child's learned quantizer steps (LSQ) are absent from the supernet: 0 = minmax, what
    # the supernet's paths compute
    params = add_missing_quant_steps(model, {"params": params, "batch_stats": {}}, shape)["params"]

    if leaf_shapes(init["params"]) != leaf_shapes(params):  # a slicing bug would silently score garbage
        raise RuntimeError(f"supernet slice of {sn.space.arch_id(arch)} does not fit its child")
    batches = stacked_batches(x_eval, eval_batch_size)

    @jax.jit
    def predict(params, stats, x_cal, x_eval):
        # one compile per Arch: recalibrate on one training batch, then classify every batch
        if stats:
            _, upd = model.apply({"params": params, "batch_stats": stats}, x_cal, train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
            stats = recalibrated_stats(stats, upd["batch_stats"], BN_MOMENTUM)

        def classify(x):
            return jnp.argmax(model.apply({"params": params, "batch_stats": stats}, x, train=False), -1)

        return jax.lax.map(classify, x_eval)

    preds = predict(params, init["batch_stats"], jnp.asarray(x_cal), jnp.asarray(batches))
    return np.asarray(preds).reshape(-1)[:len(x_eval)]


def check_compatible(sn: Supernet, space: Space, data: str, source: str | None = None) -> None:
    """Refuses a supernet of another space or data set than the search's.

    Raises:
        NasInputError: the spaces or data specs differ (names the field and the fix).
    """
    if sn.space.to_dict() != space.to_dict():
        raise NasInputError(f"the supernet in {sn.workdir} was trained over space "
                            f"{sn.space.name!r}, not this config's {space.name!r}; train one over "
                            "the same space", source, "evaluation.supernet")
    if sn.data != data:
        raise NasInputError(f"the supernet in {sn.workdir} was trained on data {sn.data!r}, not "
                            f"{data!r}; its validation split must be the one scored", source,
                            "evaluation.supernet")
