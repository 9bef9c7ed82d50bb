"""Split options of a data spec (``SPEC?val=F&test=F``): the split sizes they give, the
errors for bad ones, and that they travel with the spec (absolute paths for Ray trials,
configs checked by ``nas search --check``)."""

import json

import numpy as np
import pytest

from nas.cli import main
from nas.data import load_data, parse_spec
from nas.data.split_options import join_spec, split_spec
from nas.errors import NasInputError
from nas.ray_data import absolute_spec
from nas.space import Space


@pytest.fixture(scope="module")
def tiny():
    return Space.by_name("tiny")


def test_val_and_test_options_set_the_split_sizes(tiny):
    plain, wide = load_data("digits", tiny), load_data("digits?val=0.3", tiny)
    rest = len(plain.y_train) + len(plain.y_val)
    assert len(wide.y_test) == len(plain.y_test)  # the test split does not move
    assert len(wide.y_train) + len(wide.y_val) == rest
    assert abs(len(wide.y_val) / rest - 0.3) < 0.01 and abs(len(plain.y_val) / rest - 0.1) < 0.01
    both = load_data("digits?val=0.3&test=0.1", tiny)
    total = rest + len(plain.y_test)
    assert abs(len(both.y_test) / total - 0.1) < 0.01
    assert abs(len(both.y_val) / (total - len(both.y_test)) - 0.3) < 0.01
    # the same spec and seed: the same split; the test images are the default's (standardized
    # with the other train split's statistics)
    again = load_data("digits?val=0.3", tiny)
    assert np.array_equal(wide.x_val, again.x_val) and np.array_equal(wide.y_test, plain.y_test)
    assert np.allclose(wide.x_test * wide.std + wide.mean, plain.x_test * plain.std + plain.mean,
                       atol=1e-5)


def test_the_spec_without_options_is_what_the_sources_read():
    assert parse_spec("npz:/a/b.npz?val=0.25") == ("npz", "/a/b.npz")
    assert parse_spec("digits?val=0.3") == ("digits", None)
    assert split_spec("cifar10:/d?val=0.2&test=0.1") == ("cifar10:/d", {"val": 0.2, "test": 0.1})
    assert split_spec("npz:/what?.npz") == ("npz:/what?.npz", {})  # a '?' in a path stays
    assert join_spec(*split_spec("npz:/a.npz?val=0.25")) == "npz:/a.npz?val=0.25"


def test_ray_trials_get_the_absolute_path_with_the_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("npz:d/x.npz?val=0.3") == f"npz:{tmp_path}/d/x.npz?val=0.3"


@pytest.mark.parametrize("spec, match", [
    ("digits?vali=0.3", "unknown split option 'vali'"),
    ("digits?val=0", r"val='0' is not allowed .* fraction in \(0, 0.9\]"),
    ("digits?val=abc", "val='abc' is not allowed"),
    ("digits?val=0.95", "is not allowed"),
])
def test_bad_options_name_the_option_and_the_fix(tiny, spec, match):
    with pytest.raises(NasInputError, match=match) as e:
        load_data(spec, tiny)
    assert e.value.field == "data"


def test_test_option_on_a_source_with_its_own_test_split_is_refused(tmp_path, tiny):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8),
             y_train=np.arange(40) % 10, x_test=rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8),
             y_test=np.arange(20) % 10)
    assert len(load_data(f"npz:{tmp_path / 'd.npz'}?val=0.5", tiny).y_val) == 20
    with pytest.raises(NasInputError, match="has a test split of its own; leave the option out"):
        load_data(f"npz:{tmp_path / 'd.npz'}?test=0.3", tiny)


def test_a_config_with_split_options_checks_and_a_bad_one_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("space: tiny\ndata: digits?val=0.3\nstrategy: {name: random}\n")
    assert main(["search", str(cfg), "--check", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["data"]
    assert data["name"] == "digits?val=0.3" and data["val"] > 2.5 * 143
    cfg.write_text("space: tiny\ndata: digits?val=2\nstrategy: {name: random}\n")
    assert main(["search", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data: val='2' is not allowed" in err[0]
