"""The distill stage's teacher (issue 18, section 5): the default is the space's largest Arch,
trained once per setting and cached; 'top:K' ensembles average probabilities; the report's KD
table sets the KD student beside the same student from scratch for the same epochs."""

from __future__ import annotations

import itertools
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas.errors import NasInputError
from nas.metrics import arch_metrics, largest_arch
from nas.runs.pipeline import Pipeline, stage_marker
from nas.runs.report import write_report
from nas.runs.teacher import TeacherBuilder
from nas.space import Space
from nas.training.distill import ensemble_predictions, soft_targets
from test_pipeline import MICRO_SPACE, micro_config


def _all_archs(space):
    labels = [label for label, _ in space.decisions()]
    for values in itertools.product(*(vals for _, vals in space.decisions())):
        yield space.validate(dict(zip(labels, values)))


@pytest.mark.parametrize("name", ["micro", "tiny"])
def test_largest_arch_has_every_knob_at_its_most_expressive_value(name):
    space = Space.from_dict(MICRO_SPACE) if name == "micro" else Space.by_name(name)
    big = largest_arch(space)
    top = arch_metrics(space, big)
    archs = list(_all_archs(space)) if name == "micro" else \
        [space.sample(s) for s in range(200)]
    for arch in archs:
        m = arch_metrics(space, arch)
        assert m["macs"] <= top["macs"] and m["params"] <= top["params"], arch
    for label, value in big.items():
        knob = label.split("_", 2)[2]
        vals = space.choices(label)
        if knob in ("kernel", "expand", "width"):
            assert value == max(vals), label
        else:
            expected = {"bits_w": 32, "bits_a": 32, "se": True, "op": "mbconv", "rank": None}
            assert value == expected.get(knob, value), label


@pytest.mark.parametrize("spec, needle", [
    ("somebody", "expected 'largest', 'best', 'top:k'"),
    ("top:1", "expected 'largest'"),
    ("top:x", "expected 'largest'"),
    ("arch:", "expected 'largest'"),
    ("top:3", "'top:3' averages 3 retrained candidates but retrain.top_k is 2"),
])
def test_a_bad_teacher_is_one_line_naming_distill_teacher(spec, needle):
    with pytest.raises(NasInputError) as e:
        micro_config(distill={"teacher": spec})
    text = str(e.value)
    assert e.value.field == "distill.teacher" and needle in text and "\n" not in text


class FixedLogits(nn.Module):
    """A 'network' whose logits are a parameter: its prediction for every image."""

    @nn.compact
    def __call__(self, x, train=False):
        logits = self.param("logits", nn.initializers.zeros, (3,))
        return jnp.broadcast_to(logits, (x.shape[0], 3))


def test_ensemble_averages_probabilities_not_logits():
    # A is sure of class 0; B slightly prefers class 1 and is sure it is not class 0. The mean of
    # their tempered softmaxes picks class 0; the mean of their logits would pick class 1.
    T = 4.0
    a = {"params": {"logits": jnp.array([40.0, 0.0, 0.0])}}
    b = {"params": {"logits": jnp.array([-40.0, 4.0, 0.0])}}
    assert int(jnp.argmax((a["params"]["logits"] + b["params"]["logits"]) / 2)) == 1
    x = np.zeros((5, 2, 2, 1), np.float32)
    members = [(FixedLogits(), a), (FixedLogits(), b)]
    assert ensemble_predictions(members, x, T, batch_size=4).tolist() == [0] * 5
    assert ensemble_predictions(members[1:], x, T, batch_size=4).tolist() == [1] * 5
    mean = soft_targets([a["params"]["logits"][None], b["params"]["logits"][None]], T)
    assert int(jnp.argmax(mean)) == 0


# ------------------------------------------------------------------------------ the pipeline
STUDENT = {"epochs": 1, "learning_rate": 0.004}  # another schedule than the retrain's
#: the micro space (4 Archs): seed 1's two random candidates are not its largest Arch
SEED = 1


def _spy_trainings(monkeypatch):
    import nas.training.trainer

    calls = []
    real = nas.training.trainer.train_arch

    def spy(space, arch, data, config, workdir=None, **kw):
        calls.append({"arch_id": space.arch_id(arch), "workdir": str(workdir),
                      "config": config.to_dict()})
        return real(space, arch, data, config, workdir=workdir, **kw)

    monkeypatch.setattr(nas.training.trainer, "train_arch", spy)
    return calls


def _distill(loaded, workdir):
    pipe = Pipeline(loaded, workdir, progress=False, log=lambda m: None)
    logs = []
    pipe.log = logs.append
    search = pipe.run_stage("search", pipe.search)
    retrain = pipe.run_stage("retrain", pipe.retrain)
    distill = pipe.run_stage("distill", lambda: pipe.distill(retrain))
    return pipe, search, retrain, distill, logs


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    calls = _spy_trainings(mp)
    workdir = tmp_path_factory.mktemp("kd")
    loaded = micro_config(seed=SEED, distill={"train": STUDENT, "teacher_train": {"epochs": 1}})
    assert loaded.config.distill.teacher == "largest"  # the default
    try:
        out = _distill(loaded, workdir)
    finally:
        mp.undo()
    big = out[0].space.arch_id(largest_arch(out[0].space))
    assert big not in [c["arch_id"] for c in out[2]["candidates"]], "pick a seed without it"
    return workdir, loaded, calls, out


def test_default_teacher_is_the_largest_arch_bigger_than_every_candidate(default_run):
    workdir, _, calls, (pipe, _, retrain, distill, _) = default_run
    space = pipe.space
    big = largest_arch(space)
    teacher = distill["teacher_summary"]
    assert teacher["kind"] == "largest" and teacher["arch_ids"] == [space.arch_id(big)]
    top = arch_metrics(space, big)
    assert teacher["macs"] == top["macs"] and teacher["params"] == top["params"]
    for c in retrain["candidates"]:
        assert c["arch_id"] != teacher["arch_ids"][0]
        sizes = [(top[k], c["cost"][k]) for k in ("macs", "params", "bops")]
        assert all(t >= s for t, s in sizes) and any(t > s for t, s in sizes), sizes
    trained = [c for c in calls if "/distill/teacher/" in c["workdir"]]
    assert len(trained) == 1 and trained[0]["arch_id"] == space.arch_id(big)
    saved = json.loads((workdir / "distill" / "teacher" / teacher["workdirs"][0].split("/")[-1]
                        / "arch.json").read_text())
    assert saved["arch"] == big
    assert 0 <= teacher["test_accuracy"] <= 1 and teacher["epochs"] == [1]


def test_teacher_is_trained_once_and_reused_on_resume(default_run, tmp_path, monkeypatch):
    src, loaded, _, (_, _, _, first, _) = default_run
    workdir = tmp_path / "w"
    shutil.copytree(src, workdir)
    stage_marker(workdir, "distill").unlink()  # killed after the teacher, during the student
    shutil.rmtree(workdir / "distill" / "student")
    calls = _spy_trainings(monkeypatch)
    _, _, _, again, logs = _distill(loaded, workdir)
    assert [c for c in calls if "/distill/teacher/" in c["workdir"]] == []
    assert any("teacher" in m and "reusing the finished training" in m for m in logs)
    assert again["teacher_summary"]["workdirs"] == [
        str(workdir / "distill" / "teacher" / first["teacher_summary"]["workdirs"][0].split("/")[-1])]
    assert again["teacher_summary"]["test_accuracy"] == first["teacher_summary"]["test_accuracy"]
    assert [c for c in calls if "/distill/scratch/" in c["workdir"]] == []  # cached too

    # another teacher setting trains another teacher: the cached one is not reused
    stage_marker(workdir, "distill").unlink()

    class Stop(Exception):
        pass

    def stop(space, arch, data, config, workdir=None, **kw):
        calls.append({"workdir": str(workdir), "config": config.to_dict()})
        raise Stop

    import nas.training.trainer

    monkeypatch.setattr(nas.training.trainer, "train_arch", stop)
    other = micro_config(seed=SEED, distill={"train": STUDENT, "teacher_train": {"epochs": 2}})
    with pytest.raises(Stop):
        _distill(other, workdir)
    assert calls[-1]["config"]["epochs"] == 2 and "/distill/teacher/" in calls[-1]["workdir"]
    assert calls[-1]["workdir"] != first["teacher_summary"]["workdirs"][0].replace(
        str(src), str(workdir))


def test_report_kd_table_has_teacher_kd_and_scratch_rows_with_the_same_epochs(default_run):
    workdir, _, calls, (_, _, retrain, distill, _) = default_run
    scratch = distill["scratch"]
    # the student's schedule differs from the retrain's: the scratch student is trained for it
    assert not scratch["reused_retrain"] and "/distill/scratch/" in scratch["workdir"]
    run = next(c for c in calls if c["workdir"] == scratch["workdir"])
    assert run["arch_id"] == retrain["winner"] and run["config"]["learning_rate"] == 0.004
    assert run["config"]["epochs"] == distill["student"]["epochs"] == 1
    write_report(workdir)
    md = (workdir / "report.md").read_text()
    table = md[md.index("## Distillation"):].split("\n\n")[1].splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table[2:]}
    teacher = next(v for k, v in rows.items() if k.startswith("teacher: the space's largest"))
    kd, sc = rows["student with KD"], rows["student from scratch, same epochs"]
    assert kd[4] == sc[4] == "1"  # epochs
    assert teacher[1] == f"`{distill['teacher_summary']['arch_ids'][0]}`"
    assert float(teacher[6]) == pytest.approx(distill["teacher_summary"]["test_accuracy"], abs=1e-4)
    assert float(kd[6]) == pytest.approx(distill["student"]["test_accuracy"], abs=1e-4)
    assert float(sc[6]) == pytest.approx(scratch["test_accuracy"], abs=1e-4)
    exported = [k for k, v in rows.items() if v[-1].strip(" |") == "yes"]
    want = "student with KD" if distill["final"] == "distilled" else \
        "retrained winner (retrain stage)"
    assert exported == [want]
    assert "keeps the better validation accuracy" in md


def test_top_k_teacher_is_an_ensemble_of_the_retrained(default_run, tmp_path):
    from nas.training.checkpoint import load_trained

    workdir, _, _, (pipe, _, retrain, _, _) = default_run
    builder = TeacherBuilder(pipe.space, pipe.data, "digits", SEED, tmp_path, None, {})
    teacher = builder.build("top:2", retrain)
    ok = sorted(retrain["candidates"], key=lambda r: r["val_accuracy"], reverse=True)
    assert teacher.arch_ids == [r["arch_id"] for r in ok] and len(teacher.members) == 2
    summary = teacher.summary(pipe.data, 4.0)
    members = [load_trained(r["workdir"])[1:3] for r in ok]
    logits = [jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))(v, pipe.data.x_test)
              for m, v in members]
    want = float(np.mean(np.argmax(soft_targets(logits, 4.0), -1) == pipe.data.y_test))
    assert summary["test_accuracy"] == pytest.approx(want)
    assert summary["macs"] == sum(c["cost"]["macs"] for c in ok)


def test_a_teacher_arch_retrained_with_the_same_settings_is_not_trained_again(default_run,
                                                                              tmp_path,
                                                                              monkeypatch):
    workdir, loaded, _, (pipe, _, retrain, distill, _) = default_run
    trained_wd = distill["teacher_summary"]["workdirs"][0]
    settings = {**loaded.config.train, **loaded.config.retrain.train}  # teacher_train adds nothing
    big = largest_arch(pipe.space)
    marker = {"winner": retrain["winner"], "train": settings, "candidates": retrain["candidates"] + [
        {"arch_id": pipe.space.arch_id(big), "arch": big, "status": "ok", "val_accuracy": 0.5,
         "epochs": 1, "workdir": trained_wd}]}
    calls = _spy_trainings(monkeypatch)
    logs = []
    teacher = TeacherBuilder(pipe.space, pipe.data, "digits", SEED, tmp_path, None, settings,
                             log=logs.append).build("largest", marker)
    assert calls == [] and teacher.workdirs == [trained_wd]
    assert any("is a retrained candidate with the same settings" in m for m in logs)
    assert not (tmp_path / "distill").exists()
