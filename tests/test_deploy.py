"""prefect.yaml: `prefect deploy --all` against a local server, and a run a local worker completes.

Everything runs as subprocesses against a server this test starts on 127.0.0.1 (free port,
temporary PREFECT_HOME), so it is independent of any harness or profile.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

import flows  # noqa: F401
from tnb.lake import Lake
from tnb.params import Study

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prefect_yaml_declares_the_deployments() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"quickstart", "gpt2-family"}
    studies = {name: Study.from_mapping(d["parameters"]["study"]) for name, d in deployments.items()}
    assert studies["quickstart"].extract.models == ("minilm",)
    assert studies["gpt2-family"].extract.models == ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
    for name, deployment in deployments.items():
        # shared through anchors: the study's parameters, the entrypoint and a process work pool
        assert deployment["entrypoint"] == "flows.pipeline:pipeline_flow"
        assert set(deployment["parameters"]) == {"study"}  # the flow's one parameter
        bicluster = studies[name].bicluster
        assert bicluster.row_ks == (6, 9, 12) and bicluster.n_null == 99 and bicluster.n_seeds == 5
        assert deployment["work_pool"]["name"] == "tnb-local"
        assert deployment["work_pool"]["job_variables"]["env"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert not any(s.get("active", True) for d in deployments.values() for s in d.get("schedules", []))  # ship inactive
    from flows.pipeline import pipeline_flow

    assert set(pipeline_flow.parameters.properties) == {"study"}


def test_prefect_validates_a_study_mapping_with_the_studys_own_rules() -> None:
    """What a deployment passes (a nested mapping) becomes a Study, checked as the CLI's options are."""
    from prefect.utilities.callables import parameters_to_args_kwargs  # noqa: F401  (prefect is importable)

    from flows.pipeline import pipeline_flow
    from tnb.params import StageError

    validated = pipeline_flow.validate_parameters({"study": {"corpus": {"max_tokens": 300, "seq_len": 64}}})
    assert validated["study"] == Study.from_mapping({"corpus": {"max_tokens": 300, "seq_len": 64}})
    with pytest.raises(StageError, match="n_null should be an int >= 2. Got 1 instead."):
        pipeline_flow.validate_parameters({"study": {"bicluster": {"n_null": 1}}})
    with pytest.raises(Exception, match="n_permutations"):
        pipeline_flow.validate_parameters({"study": {"bicluster": {"n_permutations": 1000}}})


@pytest.mark.slow
def test_deploy_all_and_a_worker_completes_a_run(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ, PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    (tmp_path / "prefect-home").mkdir()

    def prefect(*args: str, timeout: float = 120) -> str:
        done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off", "--no-ui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.5)

        prefect("work-pool", "create", "tnb-local", "--type", "process")
        prefect("deploy", "--all")
        names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
        assert names == {"quickstart", "gpt2-family"}

        lake = tmp_path / "lake"
        params = {"study": {
            "lake": str(lake), "corpus": {"max_tokens": 256, "seq_len": 64},
            "extract": {"models": [str(tiny_gpt2_dir)], "control": False},  # no untrained twin
            "bicluster": {"row_ks": [2, 3], "col_ks": [2], "n_null": 3, "n_seeds": 1, "n_shuffles": 0},
            "compute": {"serial": True}, "stages": ["extract", "bicluster"], "progress": False,
        }}
        prefect("deployment", "run", "tnb-pipeline/quickstart", "--params", json.dumps(params))
        worker = subprocess.run(
            [PREFECT, "worker", "start", "--pool", "tnb-local", "--run-once", "--limit", "1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
        )
        deadline = time.monotonic() + 60
        while True:
            runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"name": {"any_": ["quickstart"]}}}).json()
            states = [run["state_type"] for run in runs]
            if states and all(state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for state in states):
                break
            assert time.monotonic() < deadline, f"run not finished: {states}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
            time.sleep(1)
        assert states == ["COMPLETED"], f"{states}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
        metrics = Lake(lake).scan("metrics").collect()
        assert metrics.height == 3 * 2 and metrics["selected"].sum() == 3
        assert metrics["model"].unique().to_list() == ["tiny-gpt2"]  # control=False went through
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_tnb_server_serves_the_ui_and_stops_with_its_server(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, TNB_RUNTIME_DIR=str(tmp_path / "runtime"))
    env.pop("PREFECT_HOME", None)
    env.pop("PREFECT_API_URL", None)
    tnb = subprocess.Popen([str(Path(sys.executable).parent / "tnb"), "server", "--port", str(port)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert tnb.poll() is None and time.monotonic() < deadline, "tnb server did not start"
            time.sleep(0.5)
        analytics = httpx.get(f"http://127.0.0.1:{port}/api/admin/settings", timeout=5).json()
        assert analytics["server"]["analytics_enabled"] is False
    finally:
        tnb.terminate()
        output, _ = tnb.communicate(timeout=30)
    assert "--analytics-off" in output and (tmp_path / "runtime" / "prefect").is_dir()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
