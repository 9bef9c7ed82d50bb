"""Checkpointer: save/restore, fallback from a corrupted newest checkpoint, Arch checks."""

import glob
import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nas.training.checkpoint import CheckpointCorruptWarning, Checkpointer, resolve_workdir
from nas.errors import NasInputError


def _items(scale):
    params = {"w": jnp.full((3, 4), float(scale)), "b": jnp.arange(4.0) * scale}
    opt = optax.adam(1e-3).init(params)
    return ({"params": params, "batch_stats": {"mean": jnp.ones(4) * scale}},
            {"step": jnp.int32(scale), "opt_state": opt, "aux": {}})


def _save_three(workdir):
    c = Checkpointer(workdir, "arch-a", max_to_keep=3)
    for s in (1, 2, 3):
        model, train = _items(s)
        c.save(s, model, train, {"epoch": s})
    c.close()


def _corrupt(workdir, step):
    files = glob.glob(str(workdir / "checkpoints" / str(step) / "model" / "**" / "d" / "*"),
                      recursive=True)
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"\x00garbage" * 8)


def test_restore_newest(tmp_path):
    _save_three(tmp_path)
    model_t, train_t = _items(0)
    c = Checkpointer(tmp_path, "arch-a", max_to_keep=3)
    model, train, meta = c.restore(model_t, train_t)
    c.close()
    assert meta["epoch"] == 3 and int(train["step"]) == 3
    np.testing.assert_array_equal(model["params"]["w"], np.full((3, 4), 3.0))
    assert isinstance(train["opt_state"], type(train_t["opt_state"]))


def test_corrupted_newest_falls_back_with_warning_and_quarantines(tmp_path):
    _save_three(tmp_path)
    _corrupt(tmp_path, 3)
    model_t, train_t = _items(0)
    c = Checkpointer(tmp_path, "arch-a", max_to_keep=3)
    with pytest.warns(CheckpointCorruptWarning, match="step 3 .* falling back to step 2"):
        model, train, meta = c.restore(model_t, train_t, quarantine=True)
    assert meta["epoch"] == 2 and float(model["params"]["w"][0, 0]) == 2.0
    assert c.steps() == [1, 2] and (tmp_path / "checkpoints-corrupt" / "3").is_dir()
    m3, t3 = _items(3)
    c.save(3, m3, t3, {"epoch": 3})  # the step can be written again
    c.close()


def test_all_unreadable_is_one_error_line(tmp_path):
    _save_three(tmp_path)
    for s in (1, 2, 3):
        _corrupt(tmp_path, s)
    c = Checkpointer(tmp_path, "arch-a", max_to_keep=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NasInputError, match="no readable checkpoint"):
            c.restore(*_items(0))
    c.close()


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    _save_three(tmp_path)
    c = Checkpointer(tmp_path, "arch-b")
    with pytest.raises(NasInputError, match="checkpoint is of Arch arch-a, not arch-b"):
        c.restore(*_items(0))
    c.close()


def test_resolve_workdir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "arch.json").write_text("{}")
    assert resolve_workdir(tmp_path / "checkpoints") == tmp_path
    with pytest.raises(NasInputError, match="no arch.json"):
        resolve_workdir(tmp_path / "checkpoints" / "nothing")


def test_a_save_killed_midway_is_ignored_and_cleaned_up(tmp_path):
    """A SIGKILL during an orbax save leaves only its temporary folder: restore uses the last
    finished step, the leftover is removed, and that step can be saved again."""
    _save_three(tmp_path)
    leftover = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1764400000"
    (leftover / "model").mkdir(parents=True)
    (leftover / "model" / "partial").write_bytes(b"\x00" * 100)
    model_t, train_t = _items(0)
    c = Checkpointer(tmp_path, "arch-a", max_to_keep=3)
    model, train, meta = c.restore(model_t, train_t)
    assert meta["epoch"] == 3 and c.steps() == [1, 2, 3]
    assert not leftover.exists()
    m4, t4 = _items(4)
    c.save(4, m4, t4, {"epoch": 4})
    c.close()
    assert Checkpointer(tmp_path, "arch-a", max_to_keep=3).steps() == [2, 3, 4]
