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


# ----------------------------------------------------------------------------- errors known only inside a flow
def _run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "TNB_RUNTIME_DIR": str(cwd / ".tnb"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)  # as a user's shell: one temporary server for the command
    return subprocess.run([sys.executable, "-m", "tnb", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


PREFECT_LOG_LINE = r"^\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| "  # "07:17:55.249 | INFO    | Flow run '...' - ..."


def test_an_error_found_inside_the_flow_is_one_line_without_prefect_logs(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """A corpus shorter than one sequence is known only once it is tokenized, in the tokenize task."""
    import re

    (tmp_path / "short.jsonl").write_text(json.dumps({"text": "A short document of a few words."}) + "\n")
    done = _run_cli(["run", "--lake", "lake", "--model", str(tiny_gpt2_dir), "--corpus", "short.jsonl",
                     "--max-tokens", "256", "--seq-len", "64", "--serial", "--n-null", "3", "--n-seeds", "1",
                     "--n-shuffles", "0", "--grid", "2"], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert re.fullmatch(r"tnb: error: Corpus has \d+ tokens, fewer than one sequence of seq_len=64\.", lines[0])
    assert not re.search(PREFECT_LOG_LINE, done.stdout, re.M), done.stdout
    assert "starting a temporary Prefect server" in done.stdout  # the flow did start: the error came from inside


@pytest.mark.slow
def test_a_grid_too_big_for_the_tokenized_corpus_fails_in_one_line(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """--max-tokens allows the grid, the corpus does not: known in the bicluster stage, after extraction."""
    import re

    text = "The river flows past the old mill, and the lake lies still under the hills. " * 2
    (tmp_path / "small.jsonl").write_text("\n".join(json.dumps({"text": text}) for _ in range(2)) + "\n")
    done = _run_cli(["run", "--lake", "lake", "--model", str(tiny_gpt2_dir), "--corpus", "small.jsonl",
                     "--max-tokens", "256", "--seq-len", "64", "--serial", "--n-null", "3", "--n-seeds", "1",
                     "--n-shuffles", "0", "--row-ks", "150", "--col-ks", "2", "--no-control", "--no-progress"], tmp_path)
    # transformers' own "Loading weights" bar (it ends with a bare newline) is not tnb's to silence
    lines = [line for line in done.stderr.strip().splitlines() if line.strip() and "Loading weights" not in line]
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"tnb: warning: Corpus has only \d+ tokens, fewer than max_tokens=256; the stream is "
                        r"shorter\.", lines[0]), done.stderr  # a warning is one line too
    assert len(lines) == 2 and re.fullmatch(r"tnb: error: tiny-gpt2 resid layer \d has \d+ tokens x 32 neurons .*"
                                            r"the grid needs more than 150 tokens and 2 neurons", lines[1]), done.stderr
    assert not re.search(PREFECT_LOG_LINE, done.stdout, re.M), done.stdout
    assert "partitions written" in done.stdout  # the flows' own progress lines still reach the terminal
