"""Fake quantization for quantization-aware training, on the integer grids a deployed model uses.

Every quantizer is ``s * round(clip(x / s, qn, qp))`` with a straight-through estimator (STE)
for the rounding: an integer grid ``[qn, qp]`` and a step ``s``, which is exactly what an int8
runtime stores (QuantizeLinear / DequantizeLinear with scale ``s`` and zero point 0), so a
trained network exports without moving any value off its grid (:mod:`nas.export.to_onnx`).

- **Weights**: symmetric, per output channel (last axis): ``[-(2^(b-1)-1), 2^(b-1)-1]``
  (8 bits: +-127, 4 bits: +-7, 2 bits: ternary).
- **Activations**: per tensor. Outputs of ReLU-like activations are *unsigned*, ``[0, 2^b-1]``
  (uint8 at 8 bits); other tensors *signed*, ``[-2^(b-1), 2^(b-1)-1]`` (int8 at 8 bits).

Two ways to choose the step (``TrainConfig.quantizer``), one set of variables:

- ``lsq`` (default): **learned step sizes** (LSQ, Esser et al., ICLR 2020). The step is a
  trainable parameter (``<kernel>_step`` [cout] next to each quantized kernel, ``step`` of each
  :class:`ActQuant`), initialized on the first training batch by :func:`init_quant_steps` to
  LSQ's ``2 * mean|x| / sqrt(qp)``; its gradient is LSQ's (``round(v) - v`` inside the grid,
  ``qn``/``qp`` outside), the inputs' the clipped STE. Optax's Adam normalizes gradient scales,
  so LSQ's extra gradient scale ``1/sqrt(N qp)`` is left out.
- ``minmax``: the step follows the data: a weight channel's max |w| / qp (nothing is clipped),
  an activation's running max |x| (an EMA kept in ``batch_stats/amax``, like BatchNorm's
  statistics) / qp. A step parameter left at 0 means "minmax", so variables made without
  learned steps (supernet children, older checkpoints) run as before.

``bits >= 32`` means no quantization anywhere.

Example:
    >>> wq = fake_quant_weight(kernel, bits=4, step=kernel_step)   # kernel [..., cout]
    >>> xq = ActQuant(bits=8, signed=False)(x, train)              # in a Linen module
    >>> variables = init_quant_steps(model, variables, x_batch)    # before training (lsq)
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FLOAT_BITS = 32
QUANTIZERS = ("lsq", "minmax")


def weight_grid(bits: int) -> tuple[int, int]:
    """Returns the integer grid (qn, qp) of b-bit weights: symmetric, +-(2^(b-1) - 1)."""
    qp = 2 ** (bits - 1) - 1
    return -qp, qp


def act_grid(bits: int, signed: bool) -> tuple[int, int]:
    """Returns the integer grid (qn, qp) of b-bit activations (int8 / uint8 ranges at 8 bits)."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _ste_round(x: jax.Array) -> jax.Array:
    """Rounds (half to even, as QuantizeLinear) in the forward pass, identity backward."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(x: jax.Array, step: jax.Array, qn: int, qp: int) -> jax.Array:
    """``step * round(clip(x / step, qn, qp))`` with the STE; gradients as LSQ.

    Args:
        x: values.
        step: step size (> 0), broadcastable to `x`.
        qn, qp: the integer grid.

    Returns:
        Values on the grid; d/dx is 1 inside the grid's range and 0 outside; d/dstep is
        ``round(v) - v`` inside and ``qn`` / ``qp`` outside (v = x / step).
    """
    return _ste_round(jnp.clip(x / step, qn, qp)) * step


def lsq_init_step(x: jax.Array, qp: int, axis: Any = None) -> jax.Array:
    """LSQ's initial step ``2 * mean|x| / sqrt(qp)`` (over `axis`; None: the whole tensor)."""
    m = jnp.mean(jnp.abs(x), axis=axis)
    return jnp.maximum(2.0 * m / jnp.sqrt(float(qp)), 1e-8).astype(jnp.float32)


def minmax_weight_step(w: jax.Array, bits: int) -> jax.Array:
    """Per output channel max |w| / qp (1 for an all-zero channel), without gradient."""
    amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
    _, qp = weight_grid(bits)
    return jax.lax.stop_gradient(jnp.where(amax > 0, amax / qp, 1.0))


def fake_quant_weight(w: jax.Array, bits: int, step: jax.Array | None = None) -> jax.Array:
    """Quantizes weights symmetrically per output channel (last axis).

    Args:
        w: weights whose last axis is the output channel (conv HWIO, dense [in, out]).
        bits: bit-width (2, 4, 8); 32 or more returns `w` unchanged.
        step: learned steps [cout] (LSQ); None, or 0 in a channel, uses max |w| / qp there.

    Returns:
        Weights of the same shape on ``step * [-qp, qp]`` per output channel. Without a learned
        step nothing is clipped and d(out)/d(w) is the identity (plain STE).
    """
    if bits >= FLOAT_BITS:
        return w
    qn, qp = weight_grid(bits)
    s0 = minmax_weight_step(w, bits)
    if step is None:
        return _ste_round(w / s0) * s0
    learned = step > 0
    s = jnp.where(learned, step, s0).astype(w.dtype)
    v = w / s
    # minmax channels clip nothing (max |w| is on the grid): plain STE there, no clip gradient
    return _ste_round(jnp.where(learned, jnp.clip(v, qn, qp), v)) * s


def fake_quant_act(x: jax.Array, amax: jax.Array, bits: int, signed: bool) -> jax.Array:
    """Quantizes activations per tensor with the step ``amax / qp`` (minmax), clipped STE.

    Args:
        x: activations.
        amax: scalar range (> 0): the step is amax / qp.
        bits: bit-width; 32 or more returns `x` unchanged.
        signed: signed grid [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1].

    Returns:
        Quantized activations; the gradient is 1 inside the grid's range, else 0.
    """
    if bits >= FLOAT_BITS:
        return x
    qn, qp = act_grid(bits, signed)
    step = jax.lax.stop_gradient(jnp.maximum(amax, 1e-8)) / qp
    return quantize(x, step, qn, qp)


def act_step(step: jax.Array | None, amax: jax.Array, bits: int, signed: bool) -> jax.Array:
    """The step an activation quantizer uses: the learned one if set (> 0), else amax / qp."""
    _, qp = act_grid(bits, signed)
    s0 = jnp.maximum(amax, 1e-8) / qp
    return s0 if step is None else jnp.where(step > 0, step, s0)


def update_running(old: jax.Array, batch: jax.Array, momentum: float) -> jax.Array:
    """Returns the EMA of a running statistic after one batch (the batch's value where the
    statistic is still 0, i.e. unmeasured).

    Args:
        old: the running value (0 = not measured yet), any shape.
        batch: this batch's value, same shape.
        momentum: EMA momentum (weight of the old value).

    Returns:
        ``momentum * old + (1 - momentum) * batch`` where ``old > 0``, else ``batch``.
    """
    return jnp.where(old > 0, momentum * old + (1 - momentum) * batch, batch)


def _step_variable(module: nn.Module, name: str, shape: tuple[int, ...]):
    """The step variable `name` of `module`, or None where the variables have none."""
    if module.is_initializing() or module.has_variable("params", name):
        return module.variable("params", name, lambda: jnp.zeros(shape, jnp.float32))
    return None


def _initializing_steps(module: nn.Module) -> bool:
    return not module.is_initializing() and module.is_mutable_collection("params")


def weight_step(module: nn.Module, name: str, kernel: jax.Array, bits: int) -> jax.Array | None:
    """Returns the learned step of a quantized kernel (declared in `module` as ``<name>_step``).

    In :func:`init_quant_steps`'s pass (params mutable) a zero step is set to LSQ's initial
    value from `kernel`.

    Args:
        module: the conv module owning the kernel.
        name: the kernel's param name ('kernel', 'kernel_u', 'kernel_v').
        kernel: the kernel (last axis = output channels).
        bits: its bit-width.

    Returns:
        The step [cout], or None (float kernel, or variables without steps: minmax).
    """
    if bits >= FLOAT_BITS:
        return None
    var = _step_variable(module, f"{name}_step", (kernel.shape[-1],))
    if var is None:
        return None
    if _initializing_steps(module):
        _, qp = weight_grid(bits)
        init = lsq_init_step(kernel, qp, axis=tuple(range(kernel.ndim - 1)))
        var.value = jnp.where(var.value > 0, var.value, init)
    return var.value


class ActQuant(nn.Module):
    """Per-tensor activation fake-quantizer: learned step (LSQ) or running range (minmax).

    Variables: params ``step`` (0 until :func:`init_quant_steps` sets it; 0 = minmax) and
    batch_stats ``amax`` (EMA of the batch's max |x|, updated in training).

    Attributes:
        bits: bit-width (32 = no quantization, and no variables).
        signed: signed grid, or unsigned (after ReLU-like activations).
        momentum: EMA momentum of the running max |x| (like BatchNorm's).
    """

    bits: int = FLOAT_BITS
    signed: bool = True
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Quantizes `x`; in training first updates the running range with this batch.

        Args:
            x: activations.
            train: update the running range (needs "batch_stats" mutable).

        Returns:
            Fake-quantized `x`. Before any training step (no learned step, running range 0)
            the batch's own range is used.
        """
        if self.bits >= FLOAT_BITS:
            return x
        running = self.variable("batch_stats", "amax", lambda: jnp.zeros((), jnp.float32))
        step = _step_variable(self, "step", ())
        batch_amax = jax.lax.stop_gradient(jnp.max(jnp.abs(x))).astype(jnp.float32)
        if train and not self.is_initializing():
            running.value = update_running(running.value, batch_amax, self.momentum)
        qn, qp = act_grid(self.bits, self.signed)
        if step is not None and _initializing_steps(self):
            step.value = jnp.where(step.value > 0, step.value,
                                   lsq_init_step(jax.lax.stop_gradient(x), qp))
        amax = jnp.where(running.value > 0, running.value, batch_amax)
        s = act_step(None if step is None else step.value, amax, self.bits, self.signed)
        return quantize(x, s.astype(x.dtype), qn, qp)

    def eval_step(self) -> jax.Array:
        """The step this quantizer uses at inference (0 before any training statistics).

        Call on a bound quantizer after it ran (its variables exist).
        """
        _, qp = act_grid(self.bits, self.signed)
        amax = self.get_variable("batch_stats", "amax")
        learned = self.get_variable("params", "step") if self.has_variable("params", "step") else None
        s0 = jnp.where(amax > 0, amax / qp, 0.0)
        return s0 if learned is None else jnp.where(learned > 0, learned, s0)


def deployed_bias(bias: jax.Array, unit: jax.Array) -> jax.Array:
    """Rounds a bias to the int32 grid an int8 kernel adds it on (``unit`` = s_x * s_w).

    Args:
        bias: per-channel bias.
        unit: per-channel grid unit (<= 0: left unrounded).

    Returns:
        The bias as the integer kernel sees it.
    """
    return jnp.where(unit > 0, jnp.round(bias / jnp.where(unit > 0, unit, 1.0)) * unit, bias)


def is_quant_step(path: Any) -> bool:
    """Whether a pytree path (or a variable name) is a quantizer step (``step`` / ``*_step``):
    quantization metadata, not a weight (parameter counts leave it out)."""
    if not isinstance(path, str):
        path = str(getattr(path[-1], "key", path[-1])) if path else ""
    return path == "step" or path.endswith("_step")


def has_quant_steps(params: Mapping[str, Any]) -> bool:
    """Whether a params tree holds learned-step variables (``step`` / ``*_step``)."""
    leaves = jax.tree_util.tree_leaves_with_path(dict(params))
    return any(is_quant_step(path) for path, _ in leaves)


def weight_count(params: Mapping[str, Any]) -> int:
    """The number of scalars in a params tree, quantizer steps left out."""
    return int(sum(int(np.prod(np.shape(leaf))) for path, leaf in
                   jax.tree_util.tree_leaves_with_path(dict(params)) if not is_quant_step(path)))


def init_quant_steps(model: nn.Module, variables: Mapping[str, Any], x: jax.Array,
                     rng: jax.Array | None = None) -> dict[str, Any]:
    """Sets every zero step of a model's quantizers to LSQ's initial value on a batch.

    One forward pass in training mode (BatchNorm on batch statistics, as the first training
    step sees them) with params mutable; each quantizer initializes its step from its own
    input, after the quantizers before it were initialized. Steps already set are kept;
    BatchNorm statistics and running ranges are left as they were.

    Args:
        model: a network of :mod:`nas.blocks` taking ``(x, train)``.
        variables: {"params", "batch_stats"}.
        x: a batch of training inputs.
        rng: dropout rng (default: key 0).

    Returns:
        The variables with initialized steps (unchanged if the model has none).
    """
    if not has_quant_steps(variables.get("params", {})):
        return dict(variables)
    rng = jax.random.key(0) if rng is None else rng

    @jax.jit  # one compile; op-by-op it would compile every op of the network separately
    def initialized(variables, x, rng):
        _, upd = model.apply(variables, x, train=True, mutable=["params", "batch_stats"],
                             rngs={"dropout": rng})
        return upd["params"]

    return {**variables, "params": initialized(dict(variables), x, rng)}
