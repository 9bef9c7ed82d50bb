"""Fine-tuning (``nas train --init DIR``): training starts from a trained folder's weights, not
a fresh init; the Arch must match; bad folders are one error line."""

import json

import jax
import numpy as np
import pytest

from nas.archfile import ArchFile
from nas.cli import main
from nas.errors import NasInputError
from nas.training.trainer import TrainConfig, train_arch


@pytest.fixture(scope="module")
def setup(small_tiny):
    return small_tiny


def _variables(result):
    state = result["state"]
    return {"params": state.params["model"], "batch_stats": state.batch_stats}


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_training_starts_from_the_initial_weights(setup):
    space, arch, data = setup
    trained = train_arch(space, arch, data, TrainConfig(epochs=8, batch_size=64, seed=1))
    start = _variables(trained)
    still = TrainConfig(epochs=1, batch_size=64, seed=2, learning_rate=1e-9, weight_decay=0.0)
    tuned = train_arch(space, arch, data, still, initial=start)
    fresh = train_arch(space, arch, data, still)
    # a near-zero learning rate keeps the weights where they started: the trained ones, not a
    # fresh init's (seed 2), so the trained accuracy is kept
    assert _max_diff(_variables(tuned)["params"], start["params"]) < 1e-4
    assert _max_diff(_variables(fresh)["params"], start["params"]) > 1e-2
    assert tuned["history"][0]["train_loss"] < 0.8 * fresh["history"][0]["train_loss"]
    assert tuned["val_accuracy"] > fresh["val_accuracy"] + 0.2
    assert tuned["val_accuracy"] >= trained["val_accuracy"] - 0.03


def test_weights_of_another_arch_are_refused_naming_a_weight(setup):
    space, arch, data = setup
    other = space.canonical(dict(arch, s1_b1_kernel=5))
    trained = train_arch(space, other, data, TrainConfig(epochs=1, batch_size=64))
    with pytest.raises(NasInputError, match=r"not this network's: .* is \(5, 5, "):
        train_arch(space, arch, data, TrainConfig(epochs=1), initial=_variables(trained))


def test_cli_fine_tunes_a_trained_folder_and_refuses_another_arch(setup, tmp_path, capsys):
    space, arch, _ = setup
    ArchFile(space, arch).save(tmp_path / "a.json")
    ArchFile(space, space.canonical(dict(arch, s1_b1_kernel=5))).save(tmp_path / "b.json")
    common = ["--data", "digits", "--epochs", "1", "--no-progress", "--json"]
    assert main(["train", "--arch", str(tmp_path / "a.json"), "--workdir", str(tmp_path / "w1"),
                 *common]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", "--init", str(tmp_path / "w1"), "--workdir", str(tmp_path / "w2"),
                 *common]) == 0  # the folder's own Arch
    tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuned["init"] == str(tmp_path / "w1") and tuned["arch_id"] == first["arch_id"]
    assert (tmp_path / "w2" / "arch.json").is_file()
    for bad, field in (([str(tmp_path / "b.json")], "--init"), ([], "checkpoint")):
        init = tmp_path / ("w1" if bad else "empty")
        if not bad:
            init.mkdir()
            ArchFile(space, arch).save(init / "arch.json")
        args = ["train", "--init", str(init), *(["--arch", *bad] if bad else []), *common]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0], err
