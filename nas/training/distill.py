"""Knowledge distillation: Hinton's soft-target loss, FitNets hints, teacher ensembles.

The student trains with ``(1 - w) * CE(labels) + w * T^2 * KL(p_teacher^T || p_student^T)``
(Hinton et al. 2015: the T^2 factor keeps the soft-target gradients on the scale of the hard
ones), plus optionally ``h * ||adapter(f_student) - f_teacher||^2`` (FitNets, Romero et al.
2015) where ``adapter`` is a trained 1x1 conv from the student's hint layer to the teacher's
channels. Teachers run in inference mode only (BatchNorm running statistics, no dropout, no
gradient); an ensemble's soft targets are the mean of its members' tempered softmaxes.

Example:
    >>> teacher = load_trained("runs/teacher")              # (archfile, model, variables, meta)
    >>> result = distill_arch(space, arch, data, TrainConfig(epochs=20), DistillConfig(),
    ...                       [(teacher[1], teacher[2])], workdir="runs/student")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nas.archfile import ArchFile
from nas.data import eval_batches
from nas.errors import NasInputError
from nas.model import build_model, init_variables
from nas.training.trainer import TrainConfig, batch_metrics, cross_entropy, init_quantizers
from nas.training.loop import run_training


@dataclasses.dataclass
class DistillConfig:
    """Distillation settings.

    Attributes:
        temperature: softmax temperature T of the soft targets (> 0).
        kd_weight: weight w of the soft-target loss, in [0, 1]; the hard loss gets 1 - w.
        hint_weight: weight of the FitNets hint loss (0 = no hint, no adapter).
        student_layer: student block whose output is the hint source (default: last slot).
        teacher_layer: teacher block whose output is the hint target (default: last slot).
    """

    temperature: float = 4.0
    kd_weight: float = 0.7
    hint_weight: float = 0.0
    student_layer: str | None = None
    teacher_layer: str | None = None

    def validate(self) -> "DistillConfig":
        """Checks the values; returns self. Raises NasInputError naming the bad field."""
        if not self.temperature > 0:
            raise NasInputError(f"{self.temperature!r} is not allowed; expected a number > 0",
                                field="temperature")
        if not 0 <= self.kd_weight <= 1:
            raise NasInputError(f"{self.kd_weight!r} is not allowed; expected a number in [0, 1]",
                                field="kd_weight")
        if self.hint_weight < 0:
            raise NasInputError(f"{self.hint_weight!r} is not allowed; expected a number >= 0",
                                field="hint_weight")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as a JSON-able dict."""
        return dataclasses.asdict(self)


def soft_targets(teacher_logits: Sequence[jax.Array], temperature: float) -> jax.Array:
    """Returns the ensemble's soft targets: the mean of softmax(logits / T) over teachers."""
    probs = [jax.nn.softmax(t / temperature, axis=-1) for t in teacher_logits]
    return sum(probs) / len(probs)


def ensemble_predictions(teachers: Sequence[tuple[Any, Mapping[str, Any]]], x: Any,
                         temperature: float, batch_size: int = 256) -> Any:
    """Returns the classes the soft targets a student learns from pick: the argmax of
    :func:`soft_targets` (the mean of the teachers' tempered softmaxes, not of their logits).

    Args:
        teachers: [(network, {"params", "batch_stats"})], run in inference mode.
        x: [N, H, W, C] images.
        temperature: T of the soft targets (a single teacher's predictions do not depend on it).
        batch_size: images per forward pass (the last batch is padded: one compile per teacher).

    Returns:
        [N] int numpy array.
    """
    applies = [jax.jit(lambda v, xb, m=model: m.apply(v, xb, train=False)) for model, _ in teachers]
    tvars = [{"params": v["params"], "batch_stats": v.get("batch_stats", {})} for _, v in teachers]
    out = []
    for batch in eval_batches(x, np.zeros(len(x), np.int32), batch_size):
        logits = [f(v, batch["x"]) for f, v in zip(applies, tvars)]
        pred = np.asarray(jnp.argmax(soft_targets(logits, temperature), axis=-1))
        out.append(pred[batch["mask"] > 0])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def kd_loss(student_logits: jax.Array, teacher_probs: jax.Array, temperature: float,
            mask: jax.Array | None = None) -> jax.Array:
    """Hinton's soft-target loss: T^2 * KL(teacher_probs || softmax(student_logits / T)).

    Args:
        student_logits: [B, K].
        teacher_probs: [B, K] soft targets at temperature T (see :func:`soft_targets`).
        temperature: T.
        mask: [B] example weights (None = all).

    Returns:
        Scalar mean over the unmasked examples; 0 with zero gradient when the student's
        tempered softmax equals the targets.
    """
    log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_teacher = jnp.log(jnp.clip(teacher_probs, 1e-12, 1.0))
    kl = jnp.sum(teacher_probs * (log_teacher - log_student), axis=-1) * temperature ** 2
    if mask is None:
        return kl.mean()
    return (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class HintAdapter(nn.Module):
    """FitNets regressor: a 1x1 conv (with bias) from student to teacher hint channels."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x [N, H, W, C_student]. Returns: [N, H, W, channels]."""
        return nn.Conv(self.channels, (1, 1), name="conv")(x)


def hint_loss(adapted: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error between adapted student features and teacher features.

    The teacher map is shrunk to the student's spatial size when they differ: area average for
    integer factors, antialiased bilinear otherwise.
    """
    (h, w), (th, tw) = adapted.shape[1:3], target.shape[1:3]
    if (h, w) != (th, tw):
        if th % h == 0 and tw % w == 0:
            n, c = target.shape[0], target.shape[-1]
            target = target.reshape(n, h, th // h, w, tw // w, c).mean(axis=(2, 4))
        else:
            target = jax.image.resize(target, (target.shape[0], h, w, target.shape[-1]),
                                      method="linear", antialias=True)
    per_example = jnp.mean((adapted - target) ** 2, axis=(1, 2, 3))
    if mask is None:
        return per_example.mean()
    return (per_example * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _features(updates: Mapping[str, Any], layer: str) -> jax.Array:
    return updates["intermediates"][layer]["features"][0]


def default_hint_layer(model: Any) -> str:
    """Returns the name of a network's last block before the head."""
    names = [n for n in model.names if n not in ("stem", "head")] if model.names else []
    if not names:
        raise NasInputError("the network has no block to take a hint from", field="hint_layer")
    return names[-1]


def distillation_loss(student: Any, teachers: Sequence[Any], config: DistillConfig,
                      label_smoothing: float = 0.0, adapter: HintAdapter | None = None) -> Callable:
    """Returns the loss function of distillation training (see :mod:`nas.training.trainer`).

    ``consts`` of the step is the list of teacher variables; ``params`` is
    {"model": student params, "adapter": adapter params (only with hints)}.

    Args:
        student: the student network.
        teachers: teacher networks (inference mode), aligned with the ``consts`` list.
        config: distillation settings.
        label_smoothing: smoothing of the hard-label cross-entropy.
        adapter: the hint adapter module, required when ``config.hint_weight > 0``.
    """
    use_hint = config.hint_weight > 0
    s_layer = config.student_layer or default_hint_layer(student)
    t_layer = config.teacher_layer or default_hint_layer(teachers[0])
    t = config.temperature

    def loss_fn(params, batch_stats, batch, rng, consts):
        x, y, mask = batch["x"], batch["y"], batch["mask"]
        t_logits, t_feat = [], None
        for i, (teacher, tvars) in enumerate(zip(teachers, consts)):
            if use_hint and i == 0:
                logits, upd = teacher.apply(tvars, x, train=False, mutable=["intermediates"])
                t_feat = jax.lax.stop_gradient(_features(upd, t_layer))
            else:
                logits = teacher.apply(tvars, x, train=False)
            t_logits.append(jax.lax.stop_gradient(logits))
        mutable = ["batch_stats", "intermediates"] if use_hint else ["batch_stats"]
        logits, upd = student.apply({"params": params["model"], "batch_stats": batch_stats}, x,
                                    train=True, mutable=mutable, rngs={"dropout": rng})
        hard = cross_entropy(logits, y, mask, label_smoothing)
        soft = kd_loss(logits, soft_targets(t_logits, t), t, mask)
        loss = (1 - config.kd_weight) * hard + config.kd_weight * soft
        if use_hint:
            adapted = adapter.apply({"params": params["adapter"]}, _features(upd, s_layer))
            loss = loss + config.hint_weight * hint_loss(adapted, t_feat, mask)
        return loss, (upd.get("batch_stats", batch_stats), batch_metrics(logits, y, mask, loss))

    return loss_fn


def distill_arch(space: Any, arch: Mapping[str, Any], data: Any, config: TrainConfig,
                 dconfig: DistillConfig, teachers: Sequence[tuple[Any, Mapping[str, Any]]],
                 workdir: str | None = None, teacher_ids: Sequence[str] = (),
                 on_epoch_end: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Trains a student Arch with knowledge distillation from one or more teachers.

    Args:
        space: the student's Space.
        arch: the student Arch.
        data: the Dataset (shared with the teachers: same input shape and classes).
        config: training hyper-parameters.
        dconfig: distillation settings.
        teachers: [(teacher network, {"params", "batch_stats"})], one or more.
        workdir: output/resume directory (see :func:`nas.training.trainer.train_arch`).
        teacher_ids: ids of the teachers, recorded in the result and checkpoints.
        on_epoch_end: per-epoch callback.

    Returns:
        The result dict of :func:`nas.training.trainer.train_arch`, plus "distill" (the settings).
    """
    config.validate()
    dconfig.validate()
    if not teachers:
        raise NasInputError("give at least one teacher", field="teacher")
    arch = space.validate(arch)
    student = build_model(space, arch, depthwise_impl=config.depthwise_impl)
    key = jax.random.PRNGKey(config.seed)
    shape = (1, *data.image_shape)
    variables = init_quantizers(student, init_variables(student, key, shape), data, config)
    params = {"model": variables["params"]}
    adapter = None
    if dconfig.hint_weight > 0:
        s_layer = dconfig.student_layer or default_hint_layer(student)
        t_layer = dconfig.teacher_layer or default_hint_layer(teachers[0][0])
        s_feat = _probe_features(student, variables, shape, s_layer, "student_layer")
        t_feat = _probe_features(teachers[0][0], teachers[0][1], shape, t_layer, "teacher_layer")
        adapter = HintAdapter(t_feat.shape[-1])
        params["adapter"] = adapter.init(jax.random.fold_in(key, 1), s_feat)["params"]
    loss_fn = distillation_loss(student, [t for t, _ in teachers], dconfig, config.label_smoothing,
                                adapter)
    consts = [{"params": v["params"], "batch_stats": v.get("batch_stats", {})} for _, v in teachers]
    meta = {"distill": dconfig.to_dict(), "teachers": list(teacher_ids)}
    return run_training(model=student, params=params, batch_stats=variables["batch_stats"],
                        loss_fn=loss_fn, data=data, config=config, workdir=workdir,
                        archfile=ArchFile(space, arch), consts=consts, on_epoch_end=on_epoch_end,
                        meta=meta)


def _probe_features(model: Any, variables: Mapping[str, Any], shape: tuple, layer: str,
                    field: str) -> jax.Array:
    """Returns zeros shaped like `layer`'s output (shapes only: nothing is run or compiled)."""
    _, upd = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape, jnp.float32), train=False,
                                                  mutable=["intermediates"]), dict(variables))
    if layer not in upd.get("intermediates", {}):
        known = [k for k in model.names if k in upd.get("intermediates", {})]
        raise NasInputError(f"no block {layer!r}; blocks: {known}", field=field)
    feat = _features(upd, layer)
    return jnp.zeros(feat.shape, feat.dtype)
