"""The one-shot search loop: alternate weight and architecture training of a supernet, derive.

Per epoch: a weight pass over 80% of the training split (the supernet's weights, AdamW with a
cosine schedule), then, after ``warmup_epochs``, an arch pass over the held-out 20% (the
architecture logits, Adam). The Gumbel temperature follows ``tau0 * tau_decay ** epoch``.

A run with a work directory writes ``checkpoints/`` (orbax: weights, both optimizer states and
the logits; resumed from the newest), ``metrics.jsonl`` (one record per epoch: losses, expected
latency, per-label entropy), TensorBoard files under ``tb/``, and at the end ``best_arch.json``
(the derived Arch with its predicted latency, metrics and final per-label distribution) and
``result.json``. Restarted on the same directory with the same settings it resumes.

Example:
    >>> result = run_oneshot(space, data, "fbnet", OneShotParams(epochs=8), table, "runs/fb")
    >>> result["arch"], result["predicted_latency_ms"]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas.archfile import ArchFile
from nas.data import Dataset, epoch_rng, stratified_split, train_batches
from nas.errors import NasInputError
from nas.space import Space, resolve_space
from nas.strategies.fbnet import fbnet_strategy
from nas.strategies.oneshot_base import OneShotParams, OneShotStrategy, make_objective
from nas.strategies.proxyless import proxyless_strategy
from nas.supernet.gates import (derive, distribution, entropy, init_arch_params, probabilities,
                                temperature)
from nas.supernet.network import SuperNet, merge_trainable, trainable
from nas.train import TrainConfig, make_optimizer, make_schedule

ONE_SHOT = {"fbnet": (fbnet_strategy, "fbnet"), "proxyless": (proxyless_strategy, "proxyless")}
BEST_ARCH_FILE = "best_arch.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=float)
        f.write("\n")
    os.replace(tmp, path)


def make_strategy(name: str, net: SuperNet, params: OneShotParams, table: Any) -> OneShotStrategy:
    """Builds a one-shot strategy ('fbnet' | 'proxyless') over a supernet and a latency table.

    Args:
        name: strategy name.
        net: the supernet.
        params: search parameters (objective settings).
        table: a LatencyTable (anything with ``expected(probs)``), or None for no latency term.
    """
    if name not in ONE_SHOT:
        raise NasInputError(f"unknown one-shot strategy {name!r}; choose one of {sorted(ONE_SHOT)}",
                            field="strategy.name")
    factory, default_objective = ONE_SHOT[name]
    kind = params.objective or default_objective
    uses_latency = kind in ("fbnet", "hinge") or (kind == "proxyless" and (params.lam > 0 or params.target))
    if table is None:
        if uses_latency:
            raise NasInputError(f"strategy {name!r} with objective {kind!r} needs a latency table; "
                                "set latency_table or strategy.params.objective: none",
                                field="latency_table")
        cost = lambda probs: jnp.ones((), jnp.float32)  # noqa: E731
    else:
        cost = table.expected
    return factory(net, make_objective(params, default_objective), cost)


def _run_id(space: Space, name: str, params: OneShotParams, seed: int) -> str:
    body = json.dumps({"space": space.to_dict(), "strategy": name, "seed": seed,
                       "params": params.model_dump(exclude={"progress", "checkpoint_every", "epochs"})},
                      sort_keys=True, default=str)
    return "oneshot-" + hashlib.sha256(body.encode()).hexdigest()[:12]


def _make_steps(strategy: OneShotStrategy, tx, arch_tx):
    def weight_step(trained, opt_state, full, alpha, batch, key, lr, tau):
        grad_fn = jax.value_and_grad(strategy.weight_loss, has_aux=True)
        (ce, acc), grads = grad_fn(trained, full, alpha, batch, key, tau)
        updates, opt_state = tx.update(grads, opt_state, trained)
        trained = jax.tree_util.tree_map(lambda p, u: p - lr * u, trained, updates)
        return trained, opt_state, {"weight_ce": ce, "weight_acc": acc}

    def arch_step(alpha, arch_state, full, batch, key, tau):
        grads, metrics, aux = strategy.arch_grads(alpha, full, batch, key, tau)
        updates, arch_state = arch_tx.update(grads, arch_state, alpha)
        new = optax.apply_updates(alpha, updates)
        return strategy.post_update(new, alpha, aux), arch_state, metrics

    return jax.jit(weight_step), jax.jit(arch_step)


def _mean(records: list[dict]) -> dict[str, float]:
    if not records:
        return {}
    return {k: float(np.mean([float(r[k]) for r in records])) for k in records[0]}


def run_oneshot(space: Space, data: Dataset, name: str, params: OneShotParams, table: Any = None,
                workdir: str | os.PathLike | None = None, seed: int = 0,
                net: SuperNet | None = None) -> dict[str, Any]:
    """Runs a one-shot search and derives its Arch.

    Args:
        space: the Space.
        data: the Dataset (its training split is divided 80/20 for weights/arch).
        name: 'fbnet' or 'proxyless'.
        params: search parameters.
        table: LatencyTable of the space (None: no latency term; objective must allow it).
        workdir: output and resume directory (None: nothing written).
        seed: seed of initialization, splits, batches and sampling.
        net: a prebuilt supernet (default: ``SuperNet(space)``).

    Returns:
        {"arch", "arch_id", "predicted_latency_ms", "distribution", "entropy", "history",
        "search_seconds", "alpha"}.
    """
    expected = (*space.resolution, space.in_channels)
    if tuple(data.image_shape) != expected:
        raise NasInputError(f"data images are {data.image_shape}, the space {space.name!r} "
                            f"expects {expected}", data.name)
    net = net or SuperNet(space, params.depthwise_impl)
    strategy = make_strategy(name, net, params, table)
    w_idx, a_idx = stratified_split(data.y_train, (params.arch_fraction,), seed)
    xw, yw, xa, ya = data.x_train[w_idx], data.y_train[w_idx], data.x_train[a_idx], data.y_train[a_idx]
    batch = min(params.batch_size, len(yw), len(ya))
    steps_per_epoch = len(yw) // batch
    tconf = TrainConfig(epochs=params.epochs, batch_size=batch, learning_rate=params.weight_lr,
                        weight_decay=params.weight_decay, seed=seed)
    tx, arch_tx = make_optimizer(tconf), optax.adam(params.arch_lr)
    lrs = np.asarray(make_schedule(tconf, steps_per_epoch)(
        jnp.arange(params.epochs * steps_per_epoch + 1)), np.float32)

    full = net.init(jax.random.PRNGKey(seed))
    trained = trainable(full)
    opt_state = tx.init(trained)
    alpha = init_arch_params(space)
    arch_state = arch_tx.init(alpha)
    step = 0
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0

    wd = Path(workdir).absolute() if workdir is not None else None
    ckpt = None
    if wd is not None:
        from nas.checkpoint import Checkpointer, read_json_lines

        wd.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(wd, _run_id(space, name, params, seed))
        got = ckpt.restore(trained, {"step": jnp.zeros((), jnp.int32), "opt_state": opt_state,
                                     "aux": {"alpha": alpha, "arch_state": arch_state}},
                           quarantine=True)
        if got is not None:
            trained, train_item, meta = got
            opt_state, step = train_item["opt_state"], int(train_item["step"])
            alpha, arch_state = train_item["aux"]["alpha"], train_item["aux"]["arch_state"]
            start_epoch, elapsed = int(meta["epoch"]) + 1, float(meta.get("search_seconds", 0.0))
            history = [r for r in read_json_lines(wd / METRICS_FILE) if r["epoch"] < start_epoch] \
                if (wd / METRICS_FILE).exists() else []

    weight_step, arch_step = _make_steps(strategy, tx, arch_tx)
    base = jax.random.PRNGKey(seed + 1)
    writer = _tensorboard(wd)
    bar = _progress(params, start_epoch)
    try:
        for epoch in range(start_epoch, params.epochs):
            t0 = time.time()
            tau = jnp.float32(temperature(epoch, params.tau0, params.tau_decay))
            w_metrics, a_metrics = [], []
            for b in train_batches(xw, yw, batch, epoch_rng(seed, epoch, 0)):
                key = jax.random.fold_in(base, 2 * step)
                trained, opt_state, m = weight_step(trained, opt_state, full, alpha, b, key,
                                                    jnp.float32(lrs[step]), tau)
                w_metrics.append(m)
                step += 1
            full = merge_trainable(full, trained)
            if epoch >= params.warmup_epochs:
                for i, b in enumerate(train_batches(xa, ya, batch, epoch_rng(seed, epoch, 1))):
                    key = jax.random.fold_in(base, 2 * (step + i) + 1)
                    alpha, arch_state, m = arch_step(alpha, arch_state, full, b, key, tau)
                    a_metrics.append(m)
            elapsed += time.time() - t0
            record = _epoch_record(space, epoch, float(tau), alpha, table, w_metrics, a_metrics, elapsed)
            history.append(record)
            _log(writer, record)
            if wd is not None:
                from nas.checkpoint import write_json_lines

                write_json_lines(wd / METRICS_FILE, history)
                if (epoch + 1) % params.checkpoint_every == 0 or epoch + 1 == params.epochs:
                    ckpt.save(step, trained, {"step": jnp.asarray(step, jnp.int32),
                                              "opt_state": opt_state,
                                              "aux": {"alpha": alpha, "arch_state": arch_state}},
                              {"epoch": epoch, "search_seconds": elapsed, "strategy": name})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=round(record.get("arch_loss", record["weight_ce"]), 3),
                                lat=record.get("expected_latency_ms"))
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    return _finish(space, name, params, table, alpha, history, elapsed, wd, seed)


def _epoch_record(space, epoch, tau, alpha, table, w_metrics, a_metrics, elapsed) -> dict:
    record = {"epoch": epoch, "temperature": tau, **_mean(w_metrics), **_mean(a_metrics),
              "search_seconds": elapsed}
    ent = entropy(alpha)
    record["mean_entropy"] = float(np.mean(list(ent.values()))) if ent else 0.0
    record["entropy"] = ent
    if table is not None:
        record["expected_latency_ms"] = float(table.expected(probabilities(alpha)))
        record["derived_latency_ms"] = float(table.predict(derive(space, alpha)))
    return record


def _finish(space, name, params, table, alpha, history, elapsed, wd, seed) -> dict[str, Any]:
    from nas.metrics import arch_metrics

    arch = derive(space, alpha)
    result = {"strategy": name, "arch": arch, "arch_id": space.arch_id(arch),
              "distribution": distribution(space, alpha), "entropy": entropy(alpha),
              "history": history, "search_seconds": elapsed, "seed": seed,
              "params": params.model_dump(),
              "predicted_latency_ms": float(table.predict(arch)) if table is not None else None,
              "alpha": {k: np.asarray(v).tolist() for k, v in alpha.items()}}
    if wd is not None:
        meta = {"source": f"nas search ({name})", "strategy": name,
                "predicted_latency_ms": result["predicted_latency_ms"],
                "metrics": arch_metrics(space, arch), "distribution": result["distribution"],
                "search_seconds": elapsed, "latency_table": getattr(table, "source", None)}
        ArchFile(space, arch, meta).save(wd / BEST_ARCH_FILE)
        _write_json(wd / RESULT_FILE, {k: v for k, v in result.items() if k != "history"})
    return result


def _tensorboard(wd: Path | None):
    if wd is None:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=str(wd / "tb"), flush_secs=30)


def _log(writer, record: Mapping[str, Any]) -> None:
    if writer is None:
        return
    epoch = record["epoch"]
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "epoch":
            writer.add_scalar(f"search/{key}", value, epoch)
    for label, value in record["entropy"].items():
        writer.add_scalar(f"entropy/{label}", value, epoch)


def _progress(params: OneShotParams, start_epoch: int):
    if not params.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=params.epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True)


def run_oneshot_search(loaded: Any, workdir: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the one-shot search a config describes (``nas search`` entry point).

    Args:
        loaded: a :class:`nas.config.LoadedConfig` whose strategy is 'fbnet' or 'proxyless'.
        workdir: output folder (resumed when it holds this search's checkpoints).
        progress: show a progress bar.

    Returns:
        The JSON-able summary: workdir, strategy, arch, arch_id, predicted latency, target and
        whether it is met, search seconds, final per-label distribution.
    """
    from nas.data import load_data
    from nas.latency.table import LatencyTable
    from nas.workdir import claim_workdir
    from nas.strategies import parse_params

    config = loaded.config
    space = resolve_space(config.space, loaded.source)
    params = parse_params(config.strategy.name, config.strategy.params, loaded.source)
    if progress:
        params = params.model_copy(update={"progress": True})
    table = LatencyTable.load(loaded.latency_table, space) if loaded.latency_table else None
    data = load_data(config.data, space, seed=config.seed)
    wd = Path(workdir).resolve()
    with claim_workdir(wd, config):
        result = run_oneshot(space, data, config.strategy.name, params, table, wd, config.seed)
    target = config.objective.target if config.objective.metric == "latency_ms" else None
    lat = result["predicted_latency_ms"]
    return {"workdir": str(wd), "strategy": result["strategy"], "arch": result["arch"],
            "arch_id": result["arch_id"], "predicted_latency_ms": lat, "target_ms": target,
            "meets_target": None if target is None or lat is None else lat <= target,
            "search_seconds": round(result["search_seconds"], 2),
            "distribution": result["distribution"], "best_arch": str(wd / BEST_ARCH_FILE)}


def print_oneshot_summary(summary: Mapping[str, Any]) -> None:
    """Prints a one-shot search summary for people."""
    lat = summary["predicted_latency_ms"]
    lat_text = "" if lat is None else f", predicted latency {lat:.4f} ms"
    if summary["target_ms"] is not None:
        lat_text += f" (target {summary['target_ms']} ms: {'met' if summary['meets_target'] else 'NOT met'})"
    print(f"{summary['strategy']}: derived Arch {summary['arch_id']}{lat_text}; search "
          f"{summary['search_seconds']:.1f} s; workdir {summary['workdir']}")
    print(f"  best Arch: {summary['best_arch']}")
