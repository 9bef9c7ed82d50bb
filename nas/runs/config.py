"""Experiment configs: one YAML file names the space, data, strategy, objective, budgets.

Example (``experiments/digits_rl.yaml``)::

    space: tiny                 # shipped name, YAML path, or an inline definition
    data: digits                # data spec (nas.data)
    seed: 0
    budget: 40                  # candidates trained and measured
    strategy: {name: rl, params: {lr: 0.02}}
    objective: {metric: latency_ms, target: 0.5, constraint: soft}
    latency_table: latency_tables/onnxruntime-cpu/tiny.json
    train: {epochs: 3, batch_size: 64, learning_rate: 0.003}
    executor: {kind: ray, workers: 2, cpus_per_trial: 1, retries: 2}

A bad field is reported as one :class:`~nas.errors.NasInputError` line naming the file, the dotted
field and what is allowed. Relative paths (latency_table) are resolved against the current
folder first, then the config file's folder, then the project root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import pydantic

from nas.runs.config_compose import compose_config
from nas.runs.sections import (PIPELINE_SECTIONS, DistillSection, ExportSection, RetrainConfig,
                               Section)
from nas.runs.teacher import check_teacher_setting
from nas.errors import NasInputError
from nas.limits import check_limits
from nas.objective import CONSTRAINTS, COST_METRICS, MnasObjective
from nas.space import resolve_space
from nas.space_files import space_fingerprint
from nas.strategies import registry

# TrainConfig fields a search config may set (the rest are managed by the search).
TRAIN_FIELDS = ("epochs", "batch_size", "eval_batch_size", "optimizer", "learning_rate",
                "momentum", "weight_decay", "warmup_epochs", "final_lr_fraction",
                "label_smoothing", "grad_clip", "depthwise_impl", "quantizer", "devices")


class StrategyConfig(Section):
    """Attributes: name (a name of :mod:`nas.strategies.registry`); params (strategy's own)."""

    name: str
    params: dict[str, Any] = {}


class ObjectiveConfig(Section):
    """The cost weighed against accuracy, for every strategy.

    Sample-based strategies use MnasNet's reward ``ACC * (COST / T) ** w``. fbnet and proxyless
    differentiate the expected ``metric``: latency_ms from the latency table, any other (params,
    macs, bops, size_bytes, energy_mj) from an exact cost table built on the fly
    (:mod:`nas.cost_table`; their ``lam`` / ``target`` parameters are then in that unit).
    single_path uses the matching per-layer metric as its ``cost`` unless it sets one.

    Attributes:
        metric: the cost (latency_ms needs latency_table).
        target: T in the metric's unit; None = maximize accuracy only.
        constraint: 'soft' (alpha = beta = -0.07) or 'hard' (alpha = 0, beta = -1).
        alpha, beta: explicit exponents (override the constraint's).
        limits: hard limits ``{metric: max}`` checked before training (:mod:`nas.limits`): a
            sample-based search never trains a candidate over one; a one-shot search reports a
            derived Arch over one.
    """

    kind: Literal["mnasnet"] = "mnasnet"
    metric: Literal[COST_METRICS] = "latency_ms"  # type: ignore[valid-type]
    target: pydantic.PositiveFloat | None = None
    constraint: Literal["soft", "hard"] = "soft"
    alpha: float | None = None
    beta: float | None = None
    limits: dict[str, float] = {}

    def build(self) -> MnasObjective:
        """Returns the objective these settings describe."""
        a, b = CONSTRAINTS[self.constraint]
        return MnasObjective(self.metric, self.target,
                             a if self.alpha is None else self.alpha,
                             b if self.beta is None else self.beta)


class EvaluationConfig(Section):
    """How a sample-based search scores a candidate.

    Attributes:
        mode: 'train' (train it from scratch with the ``train`` settings) or 'supernet' (the
            weight-sharing fast path: its sub-network of a trained one-shot supernet, BatchNorm
            recalibrated, see :mod:`nas.weight_sharing`; strategy spos trains one made for it).
        supernet: the workdir of that supernet's 'nas search' (mode supernet).
        calibration_images: training images of the BatchNorm recalibration batch.
        eval_batch_size: batch size of the scoring passes.
        prior: 'macs': score by supernet accuracy and MACs, as percentiles of a fixed sample
            (:mod:`nas.weight_sharing`); 'none': supernet accuracy alone.
        prior_archs: uniform Archs in that sample.
    """

    mode: Literal["train", "supernet"] = "train"
    supernet: str | None = None
    calibration_images: int = pydantic.Field(512, ge=2)
    eval_batch_size: int = pydantic.Field(512, ge=1)
    prior: Literal["none", "macs"] = "none"
    prior_archs: int = pydantic.Field(64, ge=2)


class ExecutorConfig(Section):
    """Where candidates are trained.

    Attributes:
        kind: 'local' (in-process, one at a time) or 'ray' (Ray Tune trials).
        address: Ray cluster to join ('auto' or HOST:PORT); None starts Ray locally.
        workers: candidates trained at the same time.
        cpus_per_trial: CPUs Ray reserves per trial (its runtimes use ceil(cpus) threads).
        gpus_per_trial: GPUs Ray reserves per trial (fractions share one); the trial's JAX then
            runs on its GPU.
        storage: Tune's storage, a folder every node reaches or a URI (multi-node clusters);
            None: a temporary folder of the driver.
        retries: restarts of a trial whose worker died (a candidate that raises is not retried).
        early_stopping: stop weak candidates early with ASHA (Ray only).
        grace_epochs: epochs every candidate trains before ASHA may stop it.
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int = pydantic.Field(1, ge=1)
    cpus_per_trial: float = pydantic.Field(1.0, gt=0)
    gpus_per_trial: float = pydantic.Field(0.0, ge=0)
    storage: str | None = None
    retries: int = pydantic.Field(2, ge=0)
    early_stopping: bool = False
    grace_epochs: int = pydantic.Field(1, ge=1)


class SearchConfig(Section):
    """A whole experiment config (see the module docstring).

    A pipeline config (``nas run``) is a search config plus the optional ``retrain``,
    ``distill`` and ``export`` sections; ``nas search`` ignores them.
    """

    space: str | dict[str, Any]
    data: str = "digits"
    seed: int = pydantic.Field(0, ge=0)
    budget: int = pydantic.Field(20, ge=1)
    batch: int | None = pydantic.Field(None, ge=1)
    strategy: StrategyConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    latency_table: str | None = None
    train: dict[str, Any] = {}
    executor: ExecutorConfig = ExecutorConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    retrain: RetrainConfig = RetrainConfig()
    distill: DistillSection = DistillSection()
    export: ExportSection = ExportSection()

    @property
    def proposals_per_round(self) -> int:
        """Candidates asked per ask/tell round (default: the executor's workers)."""
        return self.batch or self.executor.workers

    def fingerprint(self) -> str:
        """Returns a hash of the settings that decide which candidates a search evaluates.

        A workdir's history can only be resumed by a config with the same fingerprint (budget and
        executor may change). The space enters by its contents (:func:`space_fingerprint`), not
        as written: ``tiny``, ``search_spaces/tiny.yaml`` and its absolute path give the same
        fingerprint, and an edited space file gives another.

        Returns:
            16 hex digits.

        Raises:
            NasInputError: the space cannot be read.
        """
        return self._hash_body(self.space_fingerprint())

    def space_fingerprint(self) -> str:
        """Returns the fingerprint of the space's contents (``sha256:<hex>``).

        Raises:
            NasInputError: the space cannot be read.
        """
        return space_fingerprint(resolve_space(self.space))

    def path_fingerprint(self) -> str:
        """Returns the fingerprint earlier versions wrote: the space as written (name or path).

        Workdirs whose ``search.json`` has no ``space_fingerprint`` were claimed with it; they are
        still resumed (see :func:`nas.runs.workdir.claim_workdir`).

        Returns:
            16 hex digits.
        """
        return self._hash_body(self.space)

    def _hash_body(self, space: Any) -> str:
        body = self.model_dump(exclude={"budget", "executor", *PIPELINE_SECTIONS})
        body["space"] = space
        if self.evaluation == EvaluationConfig():  # fingerprints from before the section stay valid
            body.pop("evaluation")
        elif self.evaluation.prior == "none":      # likewise from before the prior
            for key in ("prior", "prior_archs"):
                body["evaluation"].pop(key)
        if not self.objective.limits:  # likewise for configs without limits
            body["objective"].pop("limits")
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LoadedConfig:
    """A validated config with its resolved paths.

    Attributes:
        config: the SearchConfig.
        source: the file it came from.
        latency_table: absolute path of the table, or None.
    """

    config: SearchConfig
    source: str | None
    latency_table: str | None


def _field_error(err: Mapping[str, Any], model: type[pydantic.BaseModel]) -> tuple[str, str]:
    loc = [str(x) for x in err["loc"]]
    field = ".".join(loc)
    if err["type"] == "extra_forbidden":
        owner: Any = model
        for part in loc[:-1]:
            info = owner.model_fields.get(part) if hasattr(owner, "model_fields") else None
            owner = info.annotation if info else None
        allowed = sorted(owner.model_fields) if hasattr(owner, "model_fields") else []
        return field, f"unknown field; allowed fields: {allowed}"
    got = err.get("input")
    got_text = f"{got!r} is not allowed; " if not isinstance(got, (dict, list)) else ""
    return field, f"{got_text}{err['msg'].lower()}"


def parse_config(data: Any, source: str | None = None, base_dir: str | os.PathLike | None = None) -> LoadedConfig:
    """Validates a config mapping.

    Args:
        data: the parsed YAML.
        source: the file it came from (named in errors).
        base_dir: folder of the config file (for relative paths).

    Returns:
        The LoadedConfig.

    Raises:
        NasInputError: a field is missing, unknown or out of range (one line naming it).
    """
    if not isinstance(data, Mapping):
        raise NasInputError("expected a mapping of config sections (space, strategy, ...)", source)
    try:
        config = SearchConfig.model_validate(dict(data))
    except pydantic.ValidationError as e:
        field, message = _field_error(e.errors()[0], SearchConfig)
        raise NasInputError(message, source, field) from None
    _check_strategy(config, source)
    _check_train(config.train, source)
    _check_train(config.retrain.train, source, "retrain.train")
    _check_train(config.distill.train, source, "distill.train")
    _check_train(config.distill.teacher_train, source, "distill.teacher_train")
    check_teacher_setting(config.distill.teacher, config.retrain.top_k, source)
    table = None
    if config.latency_table:
        table = str(_resolve(config.latency_table, base_dir, source, "latency_table"))
    if config.objective.target is not None and config.objective.metric == "latency_ms" and not table:
        raise NasInputError("metric latency_ms needs a latency table; set latency_table: PATH "
                            "(build one with 'nas latency build') or use another metric",
                            source, "objective.metric")
    check_limits(config.objective.limits, table is not None, source)
    _check_front_metrics(config, table is not None, source)
    _check_evaluation(config, base_dir, source)
    if config.executor.address and config.executor.kind != "ray":
        raise NasInputError("an address needs kind: ray", source, "executor.address")
    return LoadedConfig(config, source, table)


def load_config(path: str | os.PathLike, smoke: bool = False) -> LoadedConfig:
    """Reads and validates a YAML experiment config (safe loader), following ``extends:``.

    Args:
        path: the config file.
        smoke: apply its ``smoke:`` overrides (see :mod:`nas.runs.config_compose`).

    Returns:
        The LoadedConfig.

    Raises:
        NasInputError: unreadable file, invalid YAML, or a bad field.
    """
    path = Path(path)
    return parse_config(compose_config(path, smoke), str(path), path.parent)


def _check_evaluation(config: SearchConfig, base_dir: str | os.PathLike | None,
                      source: str | None) -> None:
    """Checks the evaluation section and makes its supernet path absolute."""
    ev = config.evaluation
    if ev.mode == "train":
        if ev.supernet is not None:
            raise NasInputError("a supernet is only used with mode: supernet", source,
                                "evaluation.supernet")
        if ev.prior != "none":
            raise NasInputError("the MACs prior combines supernet scores: use it with mode: "
                                "supernet", source, "evaluation.prior")
        return
    if registry.entry(config.strategy.name, source).family != "sample":
        raise NasInputError(f"mode supernet scores the candidates of a sample-based search "
                            f"({registry.names('sample')}), not {config.strategy.name!r}", source,
                            "evaluation.mode")
    if not ev.supernet:
        one_shot = ", ".join(registry.names("one_shot"))
        raise NasInputError(f"mode supernet needs supernet: WORKDIR (a finished 'nas search' with "
                            f"strategy {one_shot}; spos trains one for this)", source,
                            "evaluation.supernet")
    ev.supernet = str(_resolve(ev.supernet, base_dir, source, "evaluation.supernet"))


def _check_strategy(config: SearchConfig, source: str | None) -> None:
    registry.parse_params(config.strategy.name, config.strategy.params, source)


def _check_front_metrics(config: SearchConfig, has_table: bool, source: str | None) -> None:
    """A multi-objective strategy's latency_ms objective needs a latency table."""
    metrics = registry.front_metrics(config.strategy.name, config.strategy.params,
                                     config.objective.metric, has_table)
    if "latency_ms" in metrics and not has_table:
        raise NasInputError("objective latency_ms (the default: objective.metric) needs a latency "
                            "table; set latency_table: PATH or strategy.params.objectives: "
                            "[size_bytes, ...]", source, "strategy.params.objectives")


def _check_train(train: Mapping[str, Any], source: str | None, section: str = "train") -> None:
    from nas.training.trainer import TrainConfig

    for key in train:
        if key not in TRAIN_FIELDS:
            raise NasInputError(f"unknown field; allowed fields: {sorted(TRAIN_FIELDS)}", source,
                                f"{section}.{key}")
    try:
        TrainConfig(**dict(train)).validate()
    except NasInputError as e:
        raise NasInputError(e.message, source, f"{section}.{e.field}") from None
    except TypeError as e:  # pragma: no cover - keys are checked above
        raise NasInputError(str(e), source, "train") from None


def train_config(config: SearchConfig, seed: int | None = None):
    """Returns the trainer's TrainConfig for candidates (no progress bar, no checkpoints).

    Args:
        config: the search config.
        seed: the training seed (default: the search seed).
    """
    from nas.training.trainer import TrainConfig

    return TrainConfig(**dict(config.train), seed=config.seed if seed is None else seed,
                       progress=False)


def _resolve(path: str, base_dir: str | os.PathLike | None, source: str | None, field: str) -> Path:
    from nas.space import repo_root

    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p] + \
        ([Path(base_dir) / p] if base_dir else []) + [repo_root() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    raise NasInputError(f"file {path!r} not found (looked in the current folder, the config's "
                        "folder and the project root)", source, field)


def check_inputs(loaded: LoadedConfig, data: bool = True) -> dict[str, Any]:
    """Checks everything a config points at, before any work starts.

    Resolves the space, checks that the strategy can search it (Single-Path: every slot
    nestable), loads the latency table against it (schema, checksum, space hash) and, with
    ``data``, loads the data set as a search would (files, shapes, labels).

    Args:
        loaded: the validated config (:func:`load_config`).
        data: also load and check the data set (the slowest part: reads every file).

    Returns:
        A JSON-able summary: space, slots, log10 size, latency table and its entry count, data.

    Raises:
        NasInputError: the first problem found (one line naming the file and the field).
    """

    config = loaded.config
    space = resolve_space(config.space, loaded.source)
    strategy = registry.entry(config.strategy.name, loaded.source)
    if strategy.check_space is not None:  # what the strategy would refuse after loading the data
        strategy.check_space(space)
    if strategy.check_settings is not None:
        strategy.check_settings(strategy.parse_params(config.strategy.params, loaded.source),
                                config.objective, bool(loaded.latency_table),
                                train_config(config).epochs, loaded.source)
    summary: dict[str, Any] = {"config": loaded.source, "space": space.name,
                               "slots": len(space.slots), "log10_size": round(space.log10_size(), 2),
                               "strategy": config.strategy.name, "latency_table": None}
    if config.objective.limits:
        summary["limits"] = dict(config.objective.limits)
    if loaded.latency_table:
        from nas.latency.table import LatencyTable

        table = LatencyTable.load(loaded.latency_table, space)
        summary["latency_table"] = loaded.latency_table
        summary["table_entries"] = len(table.entries)
        summary["table_complete"] = bool(table.data.get("complete", False))
    if data:
        from nas.data import load_data

        try:
            summary["data"] = load_data(config.data, space, seed=config.seed).summary()
        except NasInputError as e:
            if e.source:  # a data file's own problem: it names the file
                raise
            raise NasInputError(e.message, loaded.source, "data") from None
    return summary


def apply_cli_overrides(config: SearchConfig, ray_address: str | None,
                        budget: int | None) -> None:
    """Applies the ``--ray-address`` and ``--budget`` flags of ``nas search`` / ``nas run``.

    Args:
        config: the loaded config, changed in place.
        ray_address: 'auto' or HOST:PORT of a Ray cluster (sets executor.kind: ray), or None.
        budget: a candidate budget replacing the config's, or None.

    Raises:
        NasInputError: a budget below 1.
    """
    if ray_address:
        config.executor.kind = "ray"
        config.executor.address = ray_address
    if budget is not None:
        if budget < 1:
            raise NasInputError(f"{budget} is not allowed; expected an integer >= 1",
                                field="--budget")
        config.budget = budget
