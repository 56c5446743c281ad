"""The README stays true: its test command is the one CI runs, and every row of its equation
index names a function that exists and a test file that exists and mentions that function."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_test_command_is_what_ci_runs():
    m = re.search(r"```(?:sh|bash)?\n(.*?)```", README, flags=re.S)
    assert m, "README has no command block"
    block = [l.strip() for l in m.group(1).splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(block) == 2, "the README starts with exactly two commands"
    test_cmd = block[1]
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    inner = test_cmd.split("&&")[-1].strip()
    assert inner in ci, f"{inner!r} is not what .ci/run runs"


def test_equation_index_points_at_real_functions_and_tests():
    rows = re.findall(r"^\|([^|\n]+)\|\s*`(refmem\.[\w.]+)`\s*\|\s*`(tests/[\w/.]+)`", README, flags=re.M)
    assert len(rows) >= 15, "README equation index not found or too short"
    for eq, func, test in rows:
        mod, name = func.rsplit(".", 1)
        obj = getattr(importlib.import_module(mod), name, None)
        assert obj is not None, f"{func} (for {eq.strip()}) does not exist"
        tpath = ROOT / test
        assert tpath.exists(), f"{test} does not exist"
        assert name in tpath.read_text(), f"{test} does not exercise {name}"
