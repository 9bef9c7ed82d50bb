"""Helpers of the input fuzz tests: malformed-input generators and the CLI runner that checks
the contract every bad input must meet (exit code 2, one stderr line naming the problem, no
traceback, the input file unchanged).

The generators mutate valid shipped files (configs, spaces, arch files, latency tables) and
also produce random structures, broken text and binary garbage. ``NAS_FUZZ_EXAMPLES`` sets the
examples per test (default small, for CI); every CLI call is counted per input kind.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import os
import signal
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("NAS_FUZZ_EXAMPLES", "50"))
#: A CLI call on a small input that runs longer than this is a hang (e.g. a huge repeat count).
CALL_TIMEOUT_S = float(os.environ.get("NAS_FUZZ_CALL_TIMEOUT", "30"))
#: Inputs tried per kind in this process (printed and saved at the end of the fuzz tests).
COUNTS: collections.Counter = collections.Counter()
#: Of those, how many the CLI accepted (exit 0).
ACCEPTED: collections.Counter = collections.Counter()

_PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + \
    ([] if os.environ.get("NAS_FUZZ_NO_SHRINK") else [Phase.shrink])
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck), print_blob=True,
                         phases=_PHASES, report_multiple_bugs=False)

# ------------------------------------------------------------------------------ junk values
SPECIAL_VALUES = [0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 63, 10 ** 30, -10 ** 30, 1e308, -1e308, 5e-324,
                  0.5, -0.5, 1.5, float("nan"), float("inf"), float("-inf"), "", " ", "none",
                  "null", "skip", "mbconv", "tiny", "nan", "inf", "-1", "0x10", "1e400", "\x00",
                  "\u202e", "a" * 300, True, False, None, [], {}, [None], {"": None}]

#: Mapping keys: mostly text, also what YAML allows besides (numbers, null, booleans, dates).
KEYS = (st.text(min_size=1, max_size=8) | st.integers(-5, 5) | st.none() | st.booleans()
        | st.floats(allow_nan=False) | st.dates())
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(SPECIAL_VALUES) | st.dates())
JUNK = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(KEYS | st.sampled_from(["name", "space", "arch"]), c,
                                      max_size=4), max_leaves=10)


def deep_nesting(depth: int, kind: str = "list") -> Any:
    """Returns `depth` nested lists or dicts (built iteratively)."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def paths(data: Any, prefix: tuple = (), max_depth: int = 12) -> list[tuple]:
    """Returns the paths (tuples of keys/indices) into a nested dict/list, the root included,
    down to `max_depth` levels."""
    out = [prefix]
    if len(prefix) >= max_depth:
        return out
    if isinstance(data, dict):
        for k, v in data.items():
            out += paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += paths(v, prefix + (i,))
    return out


def _get(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


def _tweak_number(value: Any, draw) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return draw(JUNK)
    op = draw(st.sampled_from(["neg", "zero", "big", "half", "nan", "inf", "str", "plus1"]))
    return {"neg": -value, "zero": 0, "big": value * 10 ** 9, "half": value + 0.5,
            "nan": float("nan"), "inf": float("inf"), "str": str(value), "plus1": value + 1}[op]


@st.composite
def mutated_tree(draw, base: Any, max_mutations: int = 3) -> Any:
    """Draws a copy of a JSON-like tree with 1..max_mutations structural mutations.

    Mutations: replace a value with junk, tweak a number (negate, huge, NaN, inf, string), delete
    a key or list item, add an unknown key, empty a container, nest a value deeply, change a
    container's type.
    """
    data = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, max_mutations))):
        all_paths = paths(data)
        path = draw(st.sampled_from(all_paths))
        op = draw(st.sampled_from(["junk", "number", "number", "delete", "delete", "extra",
                                   "empty", "deep", "retype"]))
        target = _get(data, path)
        if op == "junk":
            new = draw(JUNK)
        elif op == "number":
            new = _tweak_number(target, draw)
        elif op == "delete" and path:
            parent = _get(data, path[:-1])
            del parent[path[-1]]
            continue
        elif op == "extra" and isinstance(target, dict):
            target[draw(KEYS)] = draw(JUNK)
            continue
        elif op == "empty":
            new = type(target)() if isinstance(target, (dict, list, str)) else None
        elif op == "deep":
            new = deep_nesting(draw(st.sampled_from([30, 150])),
                               draw(st.sampled_from(["list", "dict"])))
        else:  # retype (or an op that did not apply)
            new = [target] if not isinstance(target, list) else {"0": target}
        if not path:
            data = new
        else:
            _get(data, path[:-1])[path[-1]] = new
    return data


# ------------------------------------------------------------------------------ broken text
UNSAFE_YAML = [
    "!!python/object/apply:os.system ['echo PWNED > /tmp/nas_fuzz_pwned']\n",
    "!!python/object:nas.space.Space {}\n",
    "!!python/name:os.system\n",
    "space: !!python/object/new:subprocess.Popen [['true']]\n",
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nspace: *g\n",
    "&x [*x]\n",
    "%YAML 9.9\n---\na: 1\n",
    "--- a\n--- b\n",
    "? [a, b]\n: 1\n",
    "{1: 2, [3]: 4}\n",
]


@st.composite
def broken_text(draw, valid: str) -> bytes:
    """Draws broken bytes derived from a valid file's text (or garbage)."""
    op = draw(st.sampled_from(["truncate", "truncate", "insert", "replace", "garbage", "empty",
                               "bom", "nul", "bad_utf8", "unsafe", "deep", "concat"]))
    data = valid.encode()
    if op == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if op == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if op == "replace":
        at = draw(st.integers(0, max(0, len(data) - 1)))
        chars = draw(st.text(alphabet=":-[]{}'\"&*!|>%@`#,?\n\t ", min_size=1, max_size=3))
        return data[:at] + chars.encode() + data[at + 1:]
    if op == "garbage":
        return draw(st.binary(max_size=300))
    if op == "empty":
        return draw(st.sampled_from([b"", b"\n", b"   ", b"null", b"[]", b"{}", b"0", b"~"]))
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    if op == "nul":
        return data.replace(b"\n", b"\x00\n", 1)
    if op == "bad_utf8":
        return b"\xff\xfe" + data[:50]
    if op == "unsafe":
        return draw(st.sampled_from(UNSAFE_YAML)).encode()
    if op == "deep":
        depth = draw(st.sampled_from([100, 2000, 50000]))
        return (b"[" * depth + b"1" + b"]" * depth) if draw(st.booleans()) else \
            (b'{"a":' * depth + b"1" + b"}" * depth)
    return data + data  # concat: two documents / duplicate keys


def dump_yaml(data: Any) -> str:
    """Returns YAML text for any tree the mutators produce (NaN/inf included)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def dump_json(data: Any) -> str:
    """Returns JSON text (NaN/Infinity written as JSON's literals; dates and keys as strings)."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k if isinstance(k, (str, int, float, bool, type(None))) else str(k): plain(x)
                    for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(data), indent=1, default=str)


# ------------------------------------------------------------------------------ the runner
class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"CLI call ran longer than {CALL_TIMEOUT_S} s (a hang on bad input?)")


def run_cli(kind: str, argv: list[str], inputs: Iterable[Path]) -> tuple[int, str, str]:
    """Runs ``nas ARGV`` in-process and checks the bad-input contract.

    Any exception escaping ``nas.cli.main`` fails the test (it would be a traceback).

    Args:
        kind: input kind counted (config, arch, space, latency_table, data).
        argv: the command's arguments.
        inputs: the files the command reads; they must be byte-identical afterwards.

    Returns:
        (exit code, stdout, stderr), exit code 0 or 2.
    """
    inputs = [Path(p) for p in inputs]
    before = {p: _snapshot(p) for p in inputs}
    out, err = io.StringIO(), io.StringIO()
    COUNTS[kind] += 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CALL_TIMEOUT_S)
    debug = os.environ.get("NAS_DEBUG")
    os.environ["NAS_DEBUG"] = "1"  # an internal error raises here, so hypothesis shows it
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # outside pytest a warning is a stderr line
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code
    finally:
        if debug is None:
            del os.environ["NAS_DEBUG"]
        else:
            os.environ["NAS_DEBUG"] = debug
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    stdout, stderr = out.getvalue(), err.getvalue()
    stderr += "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n"
                      for w in caught)
    if os.environ.get("NAS_FUZZ_COUNTS_FILE") and sum(COUNTS.values()) % 200 == 0:
        Path(os.environ["NAS_FUZZ_COUNTS_FILE"]).write_text(json.dumps(
            {"tried": dict(COUNTS), "accepted": dict(ACCEPTED), "total": sum(COUNTS.values())}))
    for p in inputs:
        assert _snapshot(p) == before[p], f"{p} was changed by 'nas {' '.join(argv)}'"
    assert "Traceback" not in stdout + stderr, stderr
    assert rc in (0, 2), (rc, stderr)
    if rc == 0:
        ACCEPTED[kind] += 1
        assert stderr == "", f"accepted input printed to stderr: {stderr!r}"
    else:
        lines = stderr.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {stderr[:2000]!r}"
        assert lines[0].startswith("nas: error: ") and len(lines[0]) > len("nas: error: ") + 10
        assert len(lines[0]) < 2000, f"error line too long ({len(lines[0])} chars)"
    return rc, stdout, stderr


def _snapshot(path: Path) -> Any:
    if path.is_dir():
        return sorted((str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*")
                      if p.is_file())
    return path.read_bytes() if path.exists() else None


def names_input(stderr: str, *files: Path) -> bool:
    """Whether the error line names one of the input files (by name or path)."""
    return any(f.name in stderr for f in files)


def is_finite_number(v: Any) -> bool:
    """Whether v is a real, finite number (bools excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
