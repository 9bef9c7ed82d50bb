"""Safety (issue #9): no user file is ever unpickled, evaluated or read with an unsafe YAML loader.

The source of ``nas/`` is scanned with ``ast`` so that a test fails as soon as someone adds a
pickle/marshal/shelve import, an eval/exec call, an unsafe ``yaml`` loader, ``np.load`` with
``allow_pickle=True`` or ``torch.load``. The scanner itself is checked on planted snippets, and the
CLI is shown to refuse ``!!python/...`` YAML tags without running them.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from nas.cli import main

NAS_DIR = Path(__file__).resolve().parents[1] / "nas"

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                     "jsonpickle", "joblib", "torch"}
FORBIDDEN_BUILTINS = {"eval", "exec", "__import__"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all",
               "Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
PICKLE_READERS = {"read_pickle", "load_pickle"}  # pandas & co.


def unsafe_uses(source: str, filename: str = "<string>") -> list[str]:
    """Returns 'file:line: what' for every unsafe deserialization or evaluation in `source`.

    Args:
        source: Python source text.
        filename: named in the findings.

    Returns:
        The findings (empty when the source is clean).
    """
    tree = ast.parse(source, filename)
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    report(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in FORBIDDEN_MODULES:
                report(node, f"from {node.module} import ...")
            if module == "yaml":
                for alias in node.names:
                    if alias.name in UNSAFE_YAML:
                        report(node, f"from yaml import {alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                report(node, f"{func.id}()")
            if isinstance(func, ast.Attribute):
                if func.attr in PICKLE_READERS:
                    report(node, f".{func.attr}()")
                if func.attr == "load" and _dotted(func.value) in ("np", "numpy", "jnp", "onp"):
                    for kw in node.keywords:
                        if kw.arg == "allow_pickle" and not (
                                isinstance(kw.value, ast.Constant) and kw.value.value is False):
                            report(node, "np.load(allow_pickle=...) other than False")
        elif isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and \
                node.attr in UNSAFE_YAML:
            report(node, f"yaml.{node.attr}")
    return found


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_package_source_has_no_unsafe_loading():
    files = sorted(NAS_DIR.rglob("*.py"))
    assert len(files) > 40  # the whole package is scanned
    found = [f for p in files for f in unsafe_uses(p.read_text(), str(p.relative_to(NAS_DIR.parent)))]
    assert found == [], "unsafe deserialization/evaluation of possibly user data:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.loads(b'')",
    "import cPickle",
    "from marshal import loads",
    "import shelve",
    "import dill as d",
    "from torch import load",
    "import torch\ntorch.load('m.pt')",
    "eval('1+1')",
    "exec('x = 1')",
    "__import__('os')",
    "import yaml\nyaml.load(open('c.yaml'))",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.unsafe_load(text)",
    "import yaml\nyaml.full_load(text)",
    "from yaml import Loader",
    "import numpy as np\nnp.load('a.npz', allow_pickle=True)",
    "import numpy\nnumpy.load('a.npy', allow_pickle=flag)",
    "import pandas as pd\npd.read_pickle('x')",
])
def test_scanner_catches_unsafe_snippets(snippet):
    assert unsafe_uses(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "import yaml\nyaml.safe_load(text)\nyaml.safe_dump(d)",
    "import numpy as np\nnp.load('a.npz', allow_pickle=False)\nnp.load('b.npy')",
    "import json\njson.loads('{}')",
    "model.eval_step(x)\nevaluate(x)",
])
def test_scanner_accepts_safe_snippets(snippet):
    assert unsafe_uses(snippet) == []


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.check_output [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/object:nas.space.Space {{}}",
])
def test_python_yaml_tags_are_refused_not_run(tmp_path, tag):
    marker = tmp_path / "pwned"
    config = tmp_path / "config.yaml"
    config.write_text(f"space: {tag.format(marker=marker)}\nstrategy: {{name: random}}\n")
    space = tmp_path / "space.yaml"
    space.write_text(f"name: {tag.format(marker=marker)}\n")
    for argv, path in ((["search", str(config), "--check"], config),
                       (["space", "show", str(space)], space)):
        rc, err = _run(argv)
        assert rc == 2
        assert len(err.splitlines()) == 1 and path.name in err and "python/" in err, err
    assert not marker.exists()


def test_pickled_npz_is_refused_not_loaded(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.array([object()] * 12, dtype=object), y=np.arange(12) % 10)
    config = tmp_path / "config.yaml"
    config.write_text(f"space: tiny\ndata: npz:{path}\nstrategy: {{name: random}}\n")
    rc, err = _run(["search", str(config), "--check"])
    assert rc == 2 and "data.npz" in err and "pickle" in err.lower(), err
