"""ruff over the library, the flows, the tests and the benchmarks, with the rules pinned in ``pyproject.toml``.

CI fails on a lint error.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str | None:
    beside = Path(sys.executable).parent / "ruff"  # the venv's, installed with the test extras
    return str(beside) if beside.is_file() else shutil.which("ruff")


def test_ruff_finds_nothing_in_tnb_flows_tests_and_bench() -> None:
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([ruff, "check", "--no-cache", "tnb", "flows", "tests", "bench"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
