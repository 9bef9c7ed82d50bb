"""Weight-sharing fast path: sample-based candidates scored on a trained one-shot supernet.

One fbnet supernet is trained (through the library entry point ``run_search``) on the synthetic
pair task of nas.supernet.synthetic, where only the 7x7 kernel can see both pixels of a pair.
"""

import json

import numpy as np
import pytest

from nas.runs.config import parse_config
from nas.errors import NasInputError
from nas.search import run_search
from nas.space import Space
from nas.supernet.synthetic import KERNEL_TASK_SPACE, pair_distance_task
from nas.weight_sharing import SupernetScorer, load_supernet, recalibrated_stats


SPACE = Space.from_dict(KERNEL_TASK_SPACE)


def _task_file(folder):
    x, y = pair_distance_task(1400, 0)
    path = folder / "pairs.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ws")
    data = _task_file(folder)
    config = {"space": KERNEL_TASK_SPACE, "data": data, "seed": 0,
              "strategy": {"name": "fbnet", "params": {
                  "epochs": 8, "warmup_epochs": 8, "objective": "none", "weight_lr": 0.01,
                  "batch_size": 50}}}
    summary = run_search(parse_config(config, "fbnet.yaml"), folder / "supernet").summary()
    assert summary["strategy"] == "fbnet" and (folder / "supernet" / "best_arch.json").exists()
    return folder, data


def test_recalibrated_stats_recover_the_batch_statistics():
    old = {"bn": {"mean": np.zeros(3), "var": np.ones(3)}, "q": {"amax": np.zeros(())}}
    batch_mean, batch_var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 9.0])
    new = {"bn": {"mean": 0.9 * old["bn"]["mean"] + 0.1 * batch_mean,
                  "var": 0.9 * old["bn"]["var"] + 0.1 * batch_var}, "q": {"amax": np.float32(3.0)}}
    got = recalibrated_stats(old, new, 0.9)
    assert np.allclose(got["bn"]["mean"], batch_mean) and np.allclose(got["bn"]["var"], batch_var)
    assert got["q"]["amax"] == 3.0


def test_supernet_scores_rank_the_needed_kernel_first(supernet_dir):
    folder, _ = supernet_dir
    scorer = SupernetScorer(str(folder / "supernet"), calibration_images=400)
    scores = {k: scorer({"s1_b1_kernel": k})["accuracy"] for k in (3, 5, 7)}
    # only the 7x7 path can tell the classes apart; 3 and 5 are at chance
    assert scores[7] > 0.85, scores
    assert scores[7] > max(scores[3], scores[5]) + 0.2, scores
    assert load_supernet(folder / "supernet").epochs == 8


def test_search_in_supernet_mode_trains_nothing(supernet_dir, tmp_path, monkeypatch):
    import nas.training.trainer
    import nas.weight_sharing

    folder, data = supernet_dir
    trained, scored = [], []
    monkeypatch.setattr(nas.training.trainer, "train_arch", lambda *a, **k: trained.append(a))
    real = nas.weight_sharing.path_accuracy
    monkeypatch.setattr(nas.weight_sharing, "path_accuracy",
                        lambda sn, arch, *a: scored.append(dict(arch)) or real(sn, arch, *a))
    config = {"space": KERNEL_TASK_SPACE, "data": data, "seed": 0, "budget": 3,
              "strategy": {"name": "random"}, "objective": {"metric": "params"},
              "evaluation": {"mode": "supernet", "supernet": str(folder / "supernet"),
                             "calibration_images": 400}}
    result = run_search(parse_config(config, "random.yaml"), tmp_path / "random")
    assert trained == [] and len(scored) == 3
    records = [json.loads(line) for line in (tmp_path / "random" / "history.jsonl").open()]
    assert len(records) == 3 and {r["scored_by"] for r in records} == {"supernet"}
    assert all(r["status"] == "ok" and r["cost"]["params"] > 0 for r in records)
    assert result.best["arch"] == {"s1_b1_kernel": 7}


def test_bad_evaluation_settings_are_one_line(supernet_dir, tmp_path):
    folder, data = supernet_dir
    base = {"space": "tiny", "data": "digits", "strategy": {"name": "random"}}
    with pytest.raises(NasInputError) as e:
        parse_config({**base, "evaluation": {"mode": "supernet"}}, "c.yaml")
    assert e.value.field == "evaluation.supernet"
    with pytest.raises(NasInputError) as e:   # the prior needs supernet scores
        parse_config({**base, "evaluation": {"prior": "macs"}}, "c.yaml")
    assert e.value.field == "evaluation.prior" and "mode: supernet" in e.value.message
    with pytest.raises(NasInputError) as e:
        parse_config({**base, "strategy": {"name": "fbnet"},
                      "evaluation": {"mode": "supernet", "supernet": str(folder)}}, "c.yaml")
    assert e.value.field == "evaluation.mode"
    # a supernet of another space is refused before anything is scored
    loaded = parse_config({**base, "evaluation": {"mode": "supernet",
                                                  "supernet": str(folder / "supernet")}}, "c.yaml")
    with pytest.raises(NasInputError) as e:
        run_search(loaded, tmp_path / "other")
    assert e.value.field == "evaluation.supernet" and "space" in e.value.message
    # a folder that holds no one-shot search
    loaded = parse_config({**base, "evaluation": {"mode": "supernet", "supernet": str(tmp_path)}},
                          "c.yaml")
    with pytest.raises(NasInputError) as e:
        run_search(loaded, tmp_path / "none")
    assert e.value.field == "evaluation.supernet"
