"""The fault-injection suite: every bad input and every fault of ``bench/robustness.py``, as tests.

A reference lake is made once without interruption (tiny random GPT-2, small grid, no
Prefect); each fault then kills a writer at a publish step, fills a small disk, corrupts
a file in place or runs two writers at once, and the lake is checked against the
reference. The whole fault list is slow-marked; two representative faults always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import robustness

FAULTS = dict(robustness.faults())
ALWAYS = ("kill -9 bicluster at 'replaced' of metrics", "corrupt activations: flip")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return robustness.build_reference(tmp_path_factory.mktemp("robustness"))


def test_every_bad_input_is_one_line_exit_2_and_leaves_the_lake_unchanged(reference: dict[str, Path]) -> None:
    outcomes = robustness.check_bad_inputs(reference)
    assert len(outcomes) >= 60
    failed = [f"{o.name}: {o.detail}" for o in outcomes if not o.ok]
    assert not failed, "\n".join(failed)
    print("\n" + robustness.tally(outcomes))


@pytest.mark.parametrize("name", ALWAYS)
def test_representative_fault_is_survived(reference: dict[str, Path], name: str) -> None:
    survived, detail = FAULTS[name](reference)
    assert survived, detail


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in FAULTS if name not in ALWAYS])
def test_fault_is_survived(reference: dict[str, Path], name: str) -> None:
    survived, detail = FAULTS[name](reference)
    assert survived, detail


# ----------------------------------------------------------------------------- the real command, in its own process
# check_bad_inputs calls tnb.cli.main in this process, where Prefect's and datasets' log
# handlers keep the stderr they started with; only a child process shows all a user sees.
ONE_LINE_CASES = {
    "run --stages bicluster, no activations": ["--stages", "bicluster"],
    "run --stages analyze, no metrics": ["--stages", "analyze"],
    "run --grid 2 40 (k >= neurons)": ["--grid", "2", "40"],
    "run --corpus invalid JSON lines": ["--corpus", "broken.jsonl"],
}


@pytest.mark.parametrize("name", ONE_LINE_CASES)
def test_bad_run_input_prints_one_error_line_and_no_prefect_log(name: str, tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    root = str(Path(__file__).resolve().parents[1])  # this checkout's code, from any directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "TNB_RUNTIME_DIR": str(tmp_path / ".tnb"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)  # as a user's shell: a bad input must not start a temporary server
    argv = ["run", "--lake", "lake", "--model", str(tiny_gpt2_dir), "--max-tokens", "256", "--seq-len", "64",
            "--serial", "--n-null", "3", "--n-seeds", "1", "--n-shuffles", "0", *ONE_LINE_CASES[name]]
    done = subprocess.run([sys.executable, "-m", "tnb.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("tnb: error: "), done.stderr
    assert done.stdout == "", done.stdout  # nor "starting a temporary Prefect server"
