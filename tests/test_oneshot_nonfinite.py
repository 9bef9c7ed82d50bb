"""A one-shot supernet whose weights turn NaN while its loss stays finite stops with one error
line, before the broken epoch is scored or checkpointed (the finite checkpoints stay)."""

import jax.numpy as jnp
import numpy as np
import pytest

from nas.archfile import ArchFile
from nas.data import load_data
from nas.space import Space
from nas.strategies.oneshot_train import OneShotSchedule, train_oneshot
from nas.strategies.protocol import OneShot, OneShotState
from nas.training.step import NonFiniteWeightsError
from nas.training.trainer import TrainConfig


def _strategy(bad_from_epoch: int) -> OneShot:
    """A toy strategy: the loss is always finite; from `bad_from_epoch` (0-based) the weight
    step writes NaN into one weight, as an overflowing sub-network's update would."""

    def init(rng):
        del rng
        return OneShotState({"w": jnp.ones(3)}, {"t": jnp.zeros(1)}, (), (), {"ms": jnp.ones(2)})

    def weight_step(state, batch, rng, lr, epoch):
        del rng, lr
        w = jnp.where(epoch >= bad_from_epoch, state.weights["w"].at[1].set(jnp.nan),
                      state.weights["w"] + 0.01)
        n = jnp.sum(batch["mask"])
        return state._replace(weights={"w": w}), {"loss_sum": n * 0.5, "correct": n * 0.0,
                                                  "count": n}

    def arch_step(state, batch, rng, lr, epoch):
        del batch, rng, lr, epoch
        return state, {}

    return OneShot("toy", init, weight_step, arch_step, lambda s: {}, lambda s: {})


def test_nan_weights_with_a_finite_loss_stop_the_run_before_scoring_or_saving(tmp_path):
    space = Space.by_name("tiny")
    data = load_data("synthetic", space, synthetic_size=80)
    scored = []
    schedule = OneShotSchedule(TrainConfig(epochs=3, batch_size=16, checkpoint_every=1,
                                           progress=False))
    with pytest.raises(NonFiniteWeightsError, match=r"weights became NaN or infinite in epoch 2 "
                       r"\(\['weights'\]\['w'\]\); lower the learning rate") as e:
        train_oneshot(_strategy(bad_from_epoch=1), data, schedule, model=None,
                      container=ArchFile(space, space.sample(np.random.default_rng(0)), {}),
                      workdir=tmp_path, seed=0,
                      describe=lambda state, epoch: scored.append(epoch) or {})
    assert "\n" not in str(e.value)
    assert scored == [0]  # epoch 1 was scored; the broken epoch 2 never was
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) == len(data.y_train) // 16  # only epoch 1's checkpoint
