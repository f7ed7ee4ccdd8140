"""Commands that only read the lake start fast: what `tnb --help` and `tnb query` import, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "prefect", "pandas", "sklearn", "scipy", "numba", "dask")


def _imported_after(code: str) -> set[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_imports_no_heavy_library() -> None:
    modules = _imported_after("from tnb.cli import build_parser\nbuild_parser().format_help()")
    assert not modules & {*HEAVY, "numpy", "polars", "pyarrow"}, sorted(modules & {*HEAVY, "numpy", "polars", "pyarrow"})


def test_bicluster_choices_still_come_from_the_stage(capsys) -> None:
    from tnb.bicluster_stage import METHODS
    from tnb.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bicluster", "--method", "no-such-method"])
    expected = ", ".join(repr(method) for method in METHODS)
    assert f"invalid choice: 'no-such-method' (choose from {expected})" in capsys.readouterr().err


def test_query_imports_only_what_it_reads_with() -> None:
    modules = _imported_after("import tnb.cli, tnb.query")
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_query_reads_the_lake_without_numpy_or_pyarrow(tmp_path: Path) -> None:
    """`tnb query` lists, checks (sizes, footers, manifests) and reads the lake with Polars alone.

    numpy and pyarrow (with numpy, ~0.25 s of every query's start) are for writing the lake.
    """
    from tests.fixtures.analysis_lake import build_fixture_lake

    lake = build_fixture_lake(tmp_path / "lake").root
    out = tmp_path / "out.csv"
    code = (
        "from tnb.cli import main\n"
        f"assert main(['query', '--lake', {str(lake)!r}, 'emergence_curves', '--format', 'csv', '--out', {str(out)!r}]) == 0\n"
        "from tnb.query import run_query\n"
        f"assert run_query({str(lake)!r}, 'top_neurons', {{'model': 'small', 'site': 'resid', 'layer': 1}}).height > 0\n"
        f"run_query({str(lake)!r}, 'SELECT * FROM special_positions')"
    )
    modules = _imported_after(code)
    assert out.read_text().startswith("model,"), out.read_text()[:200]
    unwanted = {*HEAVY, "numpy", "pyarrow"}
    assert not modules & unwanted, sorted(modules & unwanted)


def test_python_dash_m_tnb_is_the_same_cli() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tnb", "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "usage: tnb" in done.stdout and "query" in done.stdout
