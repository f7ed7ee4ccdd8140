"""tnb installed from its wheel, not from the checkout: the SQL and data it needs come with it.

The wheel is built from a copy of the sources (a ``build/`` left in the checkout would leak
into it), installed with ``pip --target`` into a temporary directory, and run from another
directory with that directory first on ``PYTHONPATH``, so the wheel's code shadows the
editable install of the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tnb.allocator import find_jemalloc, process_allocator

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "tnb", "flows", "sql")


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline (``pip wheel --no-build-isolation``) from a clean copy."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(source)], cwd=source, env=dict(os.environ))
    (built,) = out.glob("tnb-*.whl")
    return built


def test_wheel_installs_one_top_level_package_with_its_sql(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"tnb"}, f"generic top-level names in site-packages: {sorted(top_level - {'tnb'})}"
    assert not any(name.startswith("flows/") for name in names)
    assert {f"tnb/sql/{path.name}" for path in (ROOT / "sql").glob("*.sql")} <= set(names)
    assert {"tnb/flows/__init__.py", "tnb/flows/cli.py", "tnb/flows/pipeline.py"} <= set(names)
    assert "tnb/data/enwiki_sample.parquet" in names and "tnb/data/gpt2-tokenizer/vocab.json" in names
    assert {f"tnb/templates/{path.name}" for path in (ROOT / "tnb" / "templates").glob("*.j2")} <= set(names)
    assert {"tnb/templates/report.html.j2", "tnb/templates/report.md.j2"} <= set(names)
    assert "tnb/py.typed" in names  # PEP 561: type checkers read tnb's annotations


@pytest.mark.slow
def test_run_query_and_report_from_the_installed_wheel(wheel: Path, tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
         cwd=tmp_path, env=dict(os.environ))
    work = tmp_path / "work"  # not the checkout: nothing here to fall back on
    work.mkdir()
    env = {
        **os.environ, "PYTHONPATH": str(site), "TNB_RUNTIME_DIR": str(work / ".tnb"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
    }
    env.pop("PREFECT_API_URL", None)  # its own temporary server, as a user's first run gets
    where = _run([sys.executable, "-c", "import tnb, tnb.cli; print(tnb.__file__); print(tnb.cli.flows_package())"],
                 cwd=work, env=env).split()
    assert Path(where[0]).is_relative_to(site) and where[1] == "tnb.flows", where
    tnb = [str(site / "bin" / "tnb")]

    lake, report = work / "lake", work / "report"
    out = _run([*tnb, "run", "--lake", str(lake), "--model", str(tiny_gpt2_dir), "--max-tokens", "256",
                "--seq-len", "64", "--no-control", "--serial", "--grid", "2", "3", "--n-null", "3",
                "--n-seeds", "1", "--n-shuffles", "0", "--report-dir", str(report)], cwd=work, env=env)
    assert "tnb run: done" in out and (report / "index.html").is_file(), out
    # started over under jemalloc where one is installed (tnb.allocator), from the installed entry point too
    assert out.count(f"malloc: {'jemalloc' if find_jemalloc() else process_allocator()}") == 1, out
    assert out.count(f"report: {report / 'index.html'}") == 1, out  # the analyze flow's line, not repeated

    top = _run([*tnb, "query", "--lake", str(lake), "top_tokens", "--format", "csv"], cwd=work, env=env)
    assert top.splitlines()[0].startswith("model,") and len(top.splitlines()) > 1, top
    _run([*tnb, "report", "--lake", str(lake), "--out", str(work / "report-again")], cwd=work, env=env)
    assert (work / "report-again" / "index.html").is_file() and (work / "report-again" / "report.md").is_file()
