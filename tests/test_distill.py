"""Distillation: Hinton's loss and its gradient, ensembles, hints, teachers frozen, CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.training.distill import (DistillConfig, HintAdapter, distillation_loss, hint_loss, kd_loss,
                         soft_targets)
from nas.errors import NasInputError


def test_kd_loss_is_tempered_kl_times_t_squared():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    T = 3.0
    p = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True)
    q = np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
    expected = (p * (np.log(p) - np.log(q))).sum(-1).mean() * T * T
    got = kd_loss(jnp.asarray(s), soft_targets([jnp.asarray(t)], T), T)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_gradient_is_zero_at_the_teacher_and_scales_with_t():
    rng = np.random.default_rng(1)
    t = jnp.asarray(rng.normal(size=(4, 10)), jnp.float32)
    s = jnp.asarray(rng.normal(size=(4, 10)), jnp.float32)
    for T in (1.0, 4.0):
        targets = soft_targets([t], T)
        g_at = jax.grad(lambda x: kd_loss(x, targets, T))(t)
        assert float(jnp.abs(g_at).max()) < 1e-6
        assert float(kd_loss(t, targets, T)) == pytest.approx(0.0, abs=1e-5)
        # d/ds [T^2 KL] = T * (softmax(s/T) - p) / B
        g = jax.grad(lambda x: kd_loss(x, targets, T))(s)
        expected = T * (jax.nn.softmax(s / T) - targets) / s.shape[0]
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)


def test_ensemble_targets_average_tempered_softmaxes():
    a, b = jnp.array([[4.0, 0.0]]), jnp.array([[0.0, 4.0]])
    np.testing.assert_allclose(soft_targets([a, b], 2.0), [[0.5, 0.5]], atol=1e-6)


def test_hint_loss_with_identity_adapter_is_zero_and_resizes():
    f = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)), jnp.float32)
    adapter = HintAdapter(3)
    params = {"conv": {"kernel": jnp.eye(3).reshape(1, 1, 3, 3), "bias": jnp.zeros(3)}}
    assert float(hint_loss(adapter.apply({"params": params}, f), f)) == pytest.approx(0.0, abs=1e-7)
    big = jnp.repeat(jnp.repeat(f, 2, axis=1), 2, axis=2)  # teacher map at 2x resolution
    assert float(hint_loss(f, big)) == pytest.approx(0.0, abs=1e-6)


def test_distill_config_validation():
    with pytest.raises(NasInputError, match="temperature"):
        DistillConfig(temperature=0).validate()
    with pytest.raises(NasInputError, match="kd_weight"):
        DistillConfig(kd_weight=1.5).validate()


@pytest.fixture(scope="module")
def setup(small_tiny):
    return small_tiny


def test_teacher_runs_in_inference_mode_without_gradient(setup):
    from nas.model import build_model, init_variables

    space, arch, data = setup
    student = build_model(space, arch)
    teacher = build_model(space, arch)
    sv = init_variables(student, jax.random.PRNGKey(0), (1, 16, 16, 1))
    tv = init_variables(teacher, jax.random.PRNGKey(1), (1, 16, 16, 1))
    cfg = DistillConfig(temperature=2.0, kd_weight=0.5, hint_weight=1.0)
    names = student.names
    adapter = HintAdapter(64)
    feat = jnp.zeros((2, 4, 4, 64))
    ap = adapter.init(jax.random.PRNGKey(2), feat)["params"]
    loss_fn = distillation_loss(student, [teacher, teacher], cfg, 0.0, adapter)
    batch = {"x": jnp.asarray(data.x_train[:8]), "y": jnp.asarray(data.y_train[:8]),
             "mask": jnp.ones(8)}
    params = {"model": sv["params"], "adapter": ap}

    @jax.jit
    def total_and_grads(p, consts):
        def total(p, consts):
            return loss_fn(p, sv["batch_stats"], batch, jax.random.PRNGKey(0), consts)
        return jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(p, consts)

    (loss, (new_bs, _)), (g_params, g_consts) = total_and_grads(params, [tv, tv])
    assert np.isfinite(float(loss))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(g_consts))
    assert float(jnp.abs(g_params["adapter"]["conv"]["kernel"]).max()) > 0
    # returned batch statistics are the student's (same structure), updated in training mode
    assert jax.tree_util.tree_structure(new_bs) == jax.tree_util.tree_structure(sv["batch_stats"])
    assert names[-2] == "s4_b1"


def test_cli_distill_from_teacher_workdirs(tmp_path, capsys, setup):
    from nas.cli import main

    space, arch, _ = setup
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"space": "tiny", "arch": arch}))
    base = ["--epochs", "2", "--no-progress", "--json", "--seed", "0"]
    assert main(["train", "--arch", str(a), "--workdir", str(tmp_path / "t"), *base]) == 0
    teacher = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rc = main(["distill", "--student", str(a), "--teacher", str(tmp_path / "t" / "checkpoints"),
               "--hint-weight", "0.5",
               "--workdir", str(tmp_path / "s"), *base])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    res = json.loads(out[-1])
    assert res["teachers"] == [teacher["arch_id"]] and res["distill"]["hint_weight"] == 0.5
    assert res["test_accuracy"] > 0.5 and (tmp_path / "s" / "arch.json").exists()
    # a teacher folder without a trained run is one error line, exit 2
    rc = main(["distill", "--student", str(a), "--teacher", str(tmp_path / "nothing"),
               "--workdir", str(tmp_path / "s2"), *base])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no arch.json" in err
    assert not (tmp_path / "s2").exists()
