"""The pipeline: a real end-to-end run on a micro space, stage markers, resume, config sections."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
import yaml

from nas.runs.config import parse_config
from nas.errors import NasInputError
from nas.runs.pipeline import Pipeline, read_marker, run_pipeline, stage_marker


MICRO_SPACE = {
    "name": "micro",
    "input": {"resolution": 8, "channels": 1},
    "num_classes": 10,
    "stem": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 16, "act": "relu", "dropout": 0.0},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1, "knobs": {"op": "dwsep", "kernel": 3}},
        {"channels": 16, "stride": 2, "repeats": 1,
         "knobs": {"op": "mbconv", "kernel": [3, 5], "expand": 2, "bits_w": [8, 32]}},
    ],
}


def micro_config_dict(**sections):
    data = {"space": MICRO_SPACE, "data": "digits", "seed": 0, "budget": 2,
            "strategy": {"name": "random"}, "objective": {"metric": "macs", "target": 20000},
            "train": {"epochs": 1, "batch_size": 128},
            "retrain": {"top_k": 2, "train": {"epochs": 1}},
            "distill": {"teacher": "best", "train": {"epochs": 1}},
            "export": {"calibration": 64}}
    data.update(sections)
    return data


def micro_config(**sections):
    return parse_config(micro_config_dict(**sections), "micro.yaml")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    logs = []
    summary = run_pipeline(micro_config(), workdir, progress=False, log=logs.append)
    return workdir, summary, logs


def test_end_to_end_outputs(finished):
    workdir, summary, logs = finished
    for stage in ("search", "retrain", "distill", "export"):
        assert stage_marker(workdir, stage).exists()
        assert f"{stage}: started" in logs
    assert summary["export_ok"]
    for name in ("model.onnx", "model.stablehlo", "model.npk", "arch.json", "export.json"):
        assert (workdir / "export" / name).stat().st_size > 0
    assert (workdir / "export" / "orbax").is_dir()
    retrain = read_marker(workdir, "retrain")
    assert len(retrain["candidates"]) == 2 and all(c["status"] == "ok" for c in retrain["candidates"])
    for c in retrain["candidates"]:
        assert (workdir / "retrain" / c["arch_id"] / "checkpoints").is_dir()
    distill = read_marker(workdir, "distill")
    # the teacher of 'best' is the other retrained candidate
    assert distill["teacher"].startswith("retrained ") and retrain["winner"] not in distill["teacher"]
    report = (workdir / "report.md").read_text()
    assert summary["winner"]["arch_id"] == retrain["winner"] and retrain["winner"] in report
    assert "## Export" in report and "model.onnx" in report and "Latency:" in report
    assert len(summary["plots"]) == 2
    for p in summary["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert any((workdir / "tb").iterdir())
    exported = json.loads((workdir / "export" / "arch.json").read_text())
    assert exported["arch"] == next(c["arch"] for c in retrain["candidates"]
                                    if c["arch_id"] == retrain["winner"])


def test_rerun_skips_finished_stages(finished, monkeypatch):
    workdir, summary, _ = finished

    def boom(self, *a):
        raise AssertionError("a finished stage ran again")

    for stage in ("search", "retrain", "distill", "export"):
        monkeypatch.setattr(Pipeline, stage, boom)
    logs = []
    again = run_pipeline(micro_config(), workdir, progress=False, log=logs.append)
    assert all(f"{s}: already done, skipped" in logs for s in ("search", "retrain", "distill", "export"))
    assert again["winner"] == summary["winner"]


def test_rerun_with_changed_settings_is_refused(finished):
    workdir, _, _ = finished
    changed = micro_config(distill={"teacher": "best", "train": {"epochs": 2}})
    with pytest.raises(NasInputError, match="stage 'distill' finished with other settings"):
        run_pipeline(changed, workdir, progress=False, log=lambda m: None)
    # an export-only change is refused at the export stage: earlier stages still match
    with pytest.raises(NasInputError, match="stage 'export'"):
        run_pipeline(micro_config(export={"calibration": 32}), workdir, progress=False,
                     log=lambda m: None)


def test_interrupted_stage_resumes_and_later_stages_rerun(finished, tmp_path, monkeypatch):
    src, _, _ = finished
    workdir = tmp_path / "copy"
    shutil.copytree(src, workdir)
    for stage in ("distill", "export"):
        stage_marker(workdir, stage).unlink()
    real_distill = Pipeline.distill

    def crash(self, retrain):
        raise RuntimeError("killed")

    monkeypatch.setattr(Pipeline, "distill", crash)
    with pytest.raises(RuntimeError):
        run_pipeline(micro_config(), workdir, progress=False, log=lambda m: None)
    assert stage_marker(workdir, "retrain").exists() and not stage_marker(workdir, "distill").exists()
    monkeypatch.setattr(Pipeline, "distill", real_distill)
    for stage in ("search", "retrain"):
        monkeypatch.setattr(Pipeline, stage, lambda self, *a: (_ for _ in ()).throw(AssertionError))
    logs = []
    run_pipeline(micro_config(), workdir, progress=False, log=logs.append)
    assert "distill: started" in logs and "export: started" in logs
    assert "retrain: already done, skipped" in logs


def test_a_failed_export_check_stops_the_run(finished, tmp_path, monkeypatch):
    """An exported ONNX model that does not compute what was trained stops `nas run` (exit 1,
    one line naming the layer) instead of a warning; the finished stages stay done."""
    import nas.export.exporter
    import nas.export.to_onnx
    from onnx import numpy_helper

    from nas.cli import main

    src, _, _ = finished
    workdir = tmp_path / "copy"
    shutil.copytree(src, workdir)
    stage_marker(workdir, "export").unlink()
    (workdir / "report.md").unlink()
    real = nas.export.to_onnx.export_onnx

    def corrupted(*args, **kwargs):  # one conv of the stem gets a wrong weight scale
        model, info = real(*args, **kwargs)
        for t in model.graph.initializer:
            if t.name.startswith("conv_w"):
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 3, t.name))
                break
        return model, info

    monkeypatch.setattr(nas.export.exporter, "export_onnx", corrupted)  # the name nas.export calls
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(micro_config_dict()))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["run", str(config), "--workdir", str(workdir)]) == 1
    lines = err.getvalue().strip().splitlines()  # progress lines, then the one error line
    failed = [line for line in lines if "export check failed" in line]
    assert failed == lines[-1:] and "layer stem diverges most" in failed[0]
    assert "Traceback" not in err.getvalue()
    assert not stage_marker(workdir, "export").exists() and not (workdir / "report.md").exists()
    assert stage_marker(workdir, "retrain").exists() and stage_marker(workdir, "distill").exists()


def test_pipeline_sections_validate_and_do_not_change_the_search():
    base = micro_config()
    other = micro_config(retrain={"top_k": 5, "train": {"epochs": 9}},
                         distill={"enabled": False}, export={"formats": ["onnx"]})
    assert base.config.fingerprint() == other.config.fingerprint()
    with pytest.raises(NasInputError, match="retrain.train.epochz"):
        micro_config(retrain={"train": {"epochz": 3}})
    with pytest.raises(NasInputError, match="distill.teacher"):
        micro_config(distill={"teacher": "somebody"})
    with pytest.raises(NasInputError, match="retrain.top_k"):
        micro_config(retrain={"top_k": 0})


def test_missing_teacher_checkpoint_is_one_clear_error(finished, tmp_path):
    src, _, _ = finished
    workdir = tmp_path / "copy"
    shutil.copytree(src, workdir)
    for stage in ("distill", "export"):
        stage_marker(workdir, stage).unlink()
    loaded = micro_config(distill={"teacher": f"ckpt:{tmp_path / 'nothing'}"})
    with pytest.raises(NasInputError, match="arch.json"):
        run_pipeline(loaded, workdir, progress=False, log=lambda m: None)
    assert not stage_marker(workdir, "distill").exists()


def test_runner_ups_flip_the_least_certain_decisions():
    from nas.runs.pipeline import runner_ups
    from nas.space import Space

    space = Space.by_name("tiny")
    arch = space.validate({**space.sample(0), "s4_b1_kernel": 3, "s1_b1_kernel": 3})
    dist = {label: {str(v): (0.9 if v == arch.get(label) else 0.1 / (len(vs) - 1)) for v in vs}
            for label, vs in space.decisions()}
    dist["s4_b1_kernel"] = {"3": 0.51, "5": 0.49}   # least certain
    dist["s1_b1_kernel"] = {"3": 0.6, "5": 0.4}     # second least certain
    out = runner_ups(space, arch, dist, 3)
    assert out[0] == arch
    assert out[1] == space.validate({**arch, "s4_b1_kernel": 5})
    assert out[2] == space.validate({**arch, "s1_b1_kernel": 5})
    assert len({space.arch_id(a) for a in out}) == 3
    assert runner_ups(space, arch, dist, 1) == [arch]


def test_cli_run_json_and_bad_config(finished, tmp_path):
    import subprocess
    import sys

    import yaml

    workdir, summary, _ = finished
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump(micro_config_dict()))
    r = subprocess.run([sys.executable, "-m", "nas.cli", "run", str(cfg), "--workdir", str(workdir),
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["winner"]["arch_id"] == summary["winner"]["arch_id"] and out["export_ok"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(micro_config_dict(retrain={"top_k": "many"})))
    r = subprocess.run([sys.executable, "-m", "nas.cli", "run", str(bad), "--workdir",
                        str(tmp_path / "w")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "retrain.top_k" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()


def _copy_until(src, dst, last_stage):
    """Copies a finished workdir, keeping the stage markers up to `last_stage` only."""
    from nas.runs.pipeline import STAGES

    shutil.copytree(src, dst)
    for stage in STAGES[STAGES.index(last_stage) + 1:]:
        stage_marker(dst, stage).unlink()
        shutil.rmtree(dst / stage, ignore_errors=True)
    return dst


def _spy_distill(monkeypatch):
    import nas.training.distill

    calls = []
    real = nas.training.distill.distill_arch

    def spy(space, arch, data, config, dconfig, teachers, **kw):
        calls.append({"arch": dict(arch), "teachers": list(teachers), **kw})
        return real(space, arch, data, config, dconfig, teachers, **kw)

    monkeypatch.setattr(nas.training.distill, "distill_arch", spy)
    return calls


def _run_stages(loaded, workdir, *stages):
    pipe = Pipeline(loaded, workdir, progress=False, log=lambda m: None)
    out = {"search": pipe.run_stage("search", pipe.search)}
    out["retrain"] = pipe.run_stage("retrain", pipe.retrain)
    if "distill" in stages:
        out["distill"] = pipe.run_stage("distill", lambda: pipe.distill(out["retrain"]))
    return out


def _same_tree(a, b):
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(la, lb))


def test_interrupted_after_search_rerun_skips_the_search(tmp_path, monkeypatch):
    import nas.search

    workdir = tmp_path / "w"
    real_retrain = Pipeline.retrain

    def killed(self):
        raise KeyboardInterrupt  # what Ctrl-C during the retrain raises

    monkeypatch.setattr(Pipeline, "retrain", killed)
    quick = {"distill": {"enabled": False},
             "export": {"formats": ["json", "packed"], "measure_latency": False}}
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(micro_config(**quick), workdir, progress=False, log=lambda m: None)
    history = (workdir / "search" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2 and stage_marker(workdir, "search").exists()
    assert not stage_marker(workdir, "retrain").exists()

    searched = []
    monkeypatch.setattr(nas.search, "run_search", lambda *a, **k: searched.append(a))
    monkeypatch.setattr(Pipeline, "retrain", real_retrain)
    logs = []
    summary = run_pipeline(micro_config(**quick), workdir, progress=False, log=logs.append)
    assert searched == [] and "search: already done, skipped" in logs
    assert (workdir / "search" / "history.jsonl").read_text().splitlines() == history  # no re-evaluation
    assert summary["export_ok"] and all(stage_marker(workdir, s).exists()
                                        for s in ("retrain", "distill", "export"))
    top = sorted((json.loads(line) for line in history), key=lambda r: r["reward"], reverse=True)
    retrained = [c["arch_id"] for c in read_marker(workdir, "retrain")["candidates"]]
    assert retrained == list(dict.fromkeys(r["arch_id"] for r in top))  # best first, distinct


@pytest.mark.slow  # starts a local Ray (2 CPUs); its workers import JAX and compile
def test_retrain_runs_on_ray_when_configured(finished, tmp_path, monkeypatch):
    import os

    from nas.executor import LocalExecutor

    workdir = _copy_until(finished[0], tmp_path / "w", "search")
    monkeypatch.setattr(LocalExecutor, "map", lambda *a, **k: pytest.fail("retrain ran locally"))
    loaded = micro_config(executor={"kind": "ray", "workers": 2, "cpus_per_trial": 1})
    retrain = _run_stages(loaded, workdir)["retrain"]
    expected = [c["arch_id"] for c in read_marker(finished[0], "retrain")["candidates"]]
    assert [c["arch_id"] for c in retrain["candidates"]] == expected  # none lost, same order
    for c in retrain["candidates"]:
        assert c["status"] == "ok", c["error"]
        assert c["pid"] != os.getpid()  # trained in a Ray worker
        assert 0 <= c["val_accuracy"] <= 1 and c["reward"] is not None
        assert (workdir / "retrain" / c["arch_id"] / "checkpoints").is_dir()
    assert retrain["winner"] in expected


def test_teacher_from_a_given_checkpoint(finished, tmp_path, monkeypatch):
    from nas.training.checkpoint import load_trained

    src = finished[0]
    workdir = _copy_until(src, tmp_path / "w", "retrain")
    loser = next(c for c in read_marker(src, "retrain")["candidates"]
                 if c["arch_id"] != read_marker(src, "retrain")["winner"])
    ckpt = tmp_path / "teacher_run"
    shutil.copytree(loser["workdir"], ckpt)  # a finished 'nas train' workdir outside the run
    calls = _spy_distill(monkeypatch)
    loaded = micro_config(distill={"teacher": f"ckpt:{ckpt}", "train": {"epochs": 1}})
    distill = _run_stages(loaded, workdir, "distill")["distill"]
    assert distill["teacher"] == f"checkpoint {ckpt}"
    (_, want_model, want_vars, _), = [load_trained(ckpt)]
    (tmodel, tvars), = calls[0]["teachers"]
    assert tmodel.specs == want_model.specs and _same_tree(tvars, want_vars)


def test_teacher_from_a_bigger_arch_is_trained_first(finished, tmp_path, monkeypatch):
    from nas.archfile import ArchFile
    from nas.space import Space

    space = Space.from_dict(MICRO_SPACE)
    big = space.validate({"s2_b1_kernel": 5, "s2_b1_bits_w": 32})
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    ArchFile(space, big, {"note": "teacher"}).save(cfg_dir / "teacher.json")
    workdir = _copy_until(finished[0], tmp_path / "w", "retrain")
    calls = _spy_distill(monkeypatch)
    # a relative path is found next to the config, like latency_table; 2 epochs: not the
    # retrain settings (a retrained candidate of the same Arch and settings would be reused)
    loaded = parse_config(micro_config_dict(distill={"teacher": "arch:teacher.json",
                                                     "teacher_train": {"epochs": 2},
                                                     "train": {"epochs": 1}}),
                          str(cfg_dir / "run.yaml"), cfg_dir)
    distill = _run_stages(loaded, workdir, "distill")["distill"]
    assert distill["teacher"].startswith(f"arch {cfg_dir / 'teacher.json'}")
    (tmodel, _), = calls[0]["teachers"]
    assert tmodel.specs == tuple(space.block_specs(big))
    teacher_wd, = (workdir / "distill" / "teacher").iterdir()  # <arch_id>-<settings key>/
    assert teacher_wd.name.startswith(space.arch_id(big) + "-")
    assert json.loads((teacher_wd / "arch.json").read_text())["arch"] == big
    assert (teacher_wd / "checkpoints").is_dir()


def test_single_path_runner_ups_fall_back_to_neighbours():
    from nas.runs.pipeline import runner_ups
    from nas.space import Space

    space = Space.by_name("tiny")
    arch = space.sample(1)
    out = runner_ups(space, arch, {}, 3, seed=0)
    assert out[0] == space.validate(arch) and len({space.arch_id(a) for a in out}) == 3
    for other in out[1:]:  # neighbours: space.mutate changes one decision
        assert other == space.canonical(other) and other != out[0]
    assert runner_ups(space, arch, {}, 3, seed=0) == out


@pytest.mark.parametrize("argv, needles", [
    ([], ["nas run experiments/digits_random_smoke.yaml", "digits_*_smoke.yaml"]),
    (["run"], ["retrain.top_k", "distill.teacher", "report.md", "export/", "stages/",
               "Example", "nas run experiments/"]),
    (["export"], ["--format", "export.json", "Example: nas export"]),
])
def test_help_tells_a_newcomer_what_goes_in_and_where_outputs_go(argv, needles, capsys):
    from nas.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse re-wraps lines
    for needle in needles:
        assert needle in text, needle


def test_stage_markers_of_earlier_versions_still_count_as_done(tmp_path):
    """Markers hashed with the space as written (earlier versions) are not redone or refused."""
    pipe = Pipeline(micro_config(), tmp_path, progress=False, log=lambda m: None)

    def never():
        raise AssertionError("a finished stage ran again")

    marker = stage_marker(tmp_path, "search")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"settings": pipe.stage_settings("search", legacy=True)}))
    assert pipe.run_stage("search", never)["settings"] == pipe.stage_settings("search", legacy=True)
    marker.write_text(json.dumps({"settings": "0123456789abcdef"}))  # other settings: refused
    with pytest.raises(NasInputError, match="other settings"):
        pipe.run_stage("search", never)
