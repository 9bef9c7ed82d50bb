"""Run by tests/test_data_parallel.py in a process with two host devices: trains a child network
on one device and on two (the same config), prints one JSON line comparing them."""

import json

import jax
import numpy as np

from nas.data import load_data
from nas.space import Space
from nas.training.trainer import TrainConfig, train_arch


def _rel_diff(a, b) -> float:
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def main() -> None:
    assert len(jax.devices()) == 2, jax.devices()
    space = Space.by_name("tiny")
    arch = space.validate({k: (32 if k.endswith("bits_w") else v)
                           for k, v in space.sample(3).items()})       # float: no rounding flips
    data = load_data("digits", space, seed=0)
    child = {n: train_arch(space, arch, data, TrainConfig(epochs=2, batch_size=32, devices=n))
             for n in (1, 2)}
    out = {"child": {"devices": [child[n]["devices"] for n in (1, 2)],
                     "loss": [[h["train_loss"] for h in child[n]["history"]] for n in (1, 2)],
                     "val_accuracy": [child[n]["val_accuracy"] for n in (1, 2)],
                     "param_rel_diff": _rel_diff(child[1]["state"].params,
                                                 child[2]["state"].params)}}
    print("@@dp " + json.dumps(out))


if __name__ == "__main__":
    main()
