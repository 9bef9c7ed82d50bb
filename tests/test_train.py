"""Trainer: losses, schedule, one compile per step, training, kill-and-resume equality."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.data import load_data
from nas.errors import NasInputError
from nas.space import Space
from nas.training.trainer import (TrainConfig, cross_entropy, make_schedule, make_train_step,
                       classification_loss, TrainState, make_optimizer, train_arch)

#: The cheapest network of the tiny space (small kernels, skips): keeps compiles short.
SMALL = {"s1_b1_op": "dwsep", "s1_b1_kernel": 3, "s2_b1_kernel": 3, "s2_b1_expand": 3,
         "s2_b1_bits_w": 32, "s2_b1_width": 0.5, "s2_b2_op": "skip", "s3_b1_kernel": 3,
         "s3_b1_expand": 3, "s3_b1_se": False, "s3_b1_bits_w": 32, "s3_b1_width": 0.5,
         "s3_b2_op": "skip", "s4_b1_kernel": 3, "s4_b1_expand": 3, "s4_b1_bits_w": 32,
         "s4_b1_rank": None}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def space():
    return Space.by_name("tiny")


@pytest.fixture(scope="module")
def small_arch(space):
    return space.canonical(dict(space.sample(0), **SMALL))


@pytest.fixture(scope="module")
def data(space):
    d = load_data("digits", space)
    return dataclasses.replace(d, x_train=d.x_train[:320], y_train=d.y_train[:320])


def test_label_smoothing_value():
    logits = jnp.array([[2.0, 0.5, -1.0, 0.0]])
    s, k = 0.2, 4
    logp = jax.nn.log_softmax(logits)[0]
    expected = -((1 - s) * logp[1] + s / k * logp.sum())
    assert float(cross_entropy(logits, jnp.array([1]), label_smoothing=s)) == pytest.approx(float(expected), rel=1e-6)
    # padded examples (mask 0) do not count
    two = jnp.concatenate([logits, jnp.array([[9.0, -9, 0, 0]])])
    masked = cross_entropy(two, jnp.array([1, 3]), jnp.array([1.0, 0.0]), s)
    assert float(masked) == pytest.approx(float(expected), rel=1e-6)


def test_cosine_schedule_with_warmup_shape():
    cfg = TrainConfig(epochs=10, learning_rate=0.1, warmup_epochs=2, final_lr_fraction=0.0)
    sched = make_schedule(cfg, steps_per_epoch=10)
    lrs = np.array([float(sched(i)) for i in range(101)])
    assert lrs[0] == 0.0
    np.testing.assert_allclose(lrs[:21], np.linspace(0, 0.1, 21), rtol=1e-5, atol=1e-7)
    assert lrs[20] == pytest.approx(0.1)
    assert np.all(np.diff(lrs[20:]) <= 1e-9)  # decays monotonically after warm-up
    assert lrs[60] == pytest.approx(0.05, rel=1e-4)  # cosine midpoint is half the peak
    assert lrs[100] == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_spares_biases_and_bn():
    params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
    tx = make_optimizer(TrainConfig(epochs=1, optimizer="sgd", weight_decay=0.1, warmup_epochs=0))
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["kernel"]).max()) > 0.0


def test_config_validation():
    with pytest.raises(NasInputError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.5).validate()
    with pytest.raises(NasInputError, match="optimizer"):
        TrainConfig(optimizer="lamb").validate()


def test_train_step_compiles_once_and_learns(space, small_arch, data):
    from nas.data import train_batches, epoch_rng
    from nas.model import build_model, init_variables

    model = build_model(space, small_arch)
    v = init_variables(model, jax.random.PRNGKey(0), (1, 16, 16, 1))
    cfg = TrainConfig(epochs=3, batch_size=64)
    tx = make_optimizer(cfg)
    sched = make_schedule(cfg, 5)
    params = {"model": v["params"]}
    state = TrainState(jnp.zeros((), jnp.int32), params, v["batch_stats"], tx.init(params))
    bs0 = np.asarray(jax.tree_util.tree_leaves(v["batch_stats"])[0]).copy()  # donated below
    step = make_train_step(classification_loss(model, 0.1), tx)
    losses = []
    for epoch in range(3):
        for batch in train_batches(data.x_train, data.y_train, 64, epoch_rng(0, epoch)):
            state, m = step(state, batch, jax.random.PRNGKey(0), sched(int(state.step)))
            losses.append(float(m["loss_sum"] / m["count"]))
    assert step._cache_size() == 1  # the learning rate changes every step: no recompilation
    assert int(state.step) == 15
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    # batch statistics were updated in training
    assert not np.allclose(jax.tree_util.tree_leaves(state.batch_stats)[0], bs0)


def test_kill_and_resume_gives_the_same_params(tmp_path, space, small_arch, data):
    cfg = TrainConfig(epochs=3, batch_size=64, seed=5)  # 5 steps per epoch
    full = train_arch(space, small_arch, data, cfg, workdir=str(tmp_path / "full"))

    def kill_after_1(epoch, record):
        if epoch == 1:
            raise Interrupt()

    with pytest.raises(Interrupt):
        train_arch(space, small_arch, data, cfg, workdir=str(tmp_path / "cut"), on_epoch_end=kill_after_1)
    assert [json.loads(l)["epoch"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()] == [1]
    resumed = train_arch(space, small_arch, data, cfg, workdir=str(tmp_path / "cut"))
    for a, b in zip(jax.tree_util.tree_leaves(full["state"].params),
                    jax.tree_util.tree_leaves(resumed["state"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["steps"] == full["steps"]
    assert list((tmp_path / "cut" / "tb").glob("events.out.tfevents*"))

    # Corrupt the newest checkpoint (epoch 3) and re-run with more epochs? No: same config.
    # Fall back to epoch 2, retrain epoch 3, and land on the same parameters again.
    import glob
    newest = max(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.isdigit())
    for f in glob.glob(str(tmp_path / "cut" / "checkpoints" / str(newest) / "**" / "d" / "*"), recursive=True):
        with open(f, "wb") as fh:
            fh.write(b"corrupt!" * 4)
    from nas.training.checkpoint import CheckpointCorruptWarning
    with pytest.warns(CheckpointCorruptWarning, match="falling back"):
        again = train_arch(space, small_arch, data, cfg, workdir=str(tmp_path / "cut"))
    for a, b in zip(jax.tree_util.tree_leaves(full["state"].params),
                    jax.tree_util.tree_leaves(again["state"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_workdir_of_another_arch_or_config_is_refused(tmp_path, space, small_arch, data):
    cfg = TrainConfig(epochs=3, batch_size=64)  # same settings as above: compiles are cached
    train_arch(space, small_arch, data, cfg, workdir=str(tmp_path))
    before = (tmp_path / "arch.json").read_text()
    other = space.mutate(small_arch, 1)
    with pytest.raises(NasInputError, match="work directory holds a run of Arch"):
        train_arch(space, other, data, cfg, workdir=str(tmp_path))
    assert (tmp_path / "arch.json").read_text() == before
    with pytest.raises(NasInputError, match="learning_rate"):
        train_arch(space, small_arch, data, dataclasses.replace(cfg, learning_rate=0.5),
                   workdir=str(tmp_path))


def test_quantized_arch_trains_with_the_same_step(space, small_arch, data):
    from nas.model import Network

    specs = tuple(dataclasses.replace(s, bits_w=4, bits_a=4) if s.op not in ("stem", "head") else s
                  for s in space.block_specs(small_arch))
    names = ("stem",) + tuple(sl.prefix for sl in space.slots) + ("head",)
    model = Network(specs=specs, names=names)
    r = train_arch(space, small_arch, data, TrainConfig(epochs=8, batch_size=64), model=model)
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"] - 0.3
    assert r["history"][-1]["train_accuracy"] > 0.4


def test_cli_train_json_last_line(tmp_path, capsys, space, small_arch):
    # full digits (20 steps per epoch): a new schedule, so this compiles once more
    from nas.cli import main

    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({"space": "tiny", "arch": small_arch}))
    rc = main(["train", "--arch", str(arch), "--epochs", "3", "--seed", "0", "--workdir", str(tmp_path / "w"),
               "--no-progress", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    res = json.loads(out[-1])
    for key in ("test_accuracy", "val_accuracy", "train_seconds", "params"):
        assert key in res
    assert res["params"] > 1000 and 0 <= res["test_accuracy"] <= 1
    assert (tmp_path / "w" / "arch.json").exists()
