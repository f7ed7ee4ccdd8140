"""The orchestrated pipeline end to end: Prefect flows, Dask (local and a real cluster), crash-resume.

One Prefect test server for the session (``prefect_test_harness``); its URL is also put in
the environment so Dask workers and subprocesses report to it instead of each starting a
temporary server of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from tests.conftest import lake_snapshot
from tnb.bicluster_stage import BiclusterParams, bicluster_partition, drop_first_mask, output_keys
from tnb.errors import LakeError
from tnb.lake import Lake, partition_key
from tnb.params import ComputeParams, CorpusParams, ExtractParams, Study

GRID = (2, 3)
BICLUSTER = {"row_ks": GRID, "col_ks": GRID, "n_null": 4, "n_seeds": 2, "n_shuffles": 20, "seed": 0}
PARAMS = {"bicluster": BICLUSTER, "null_chunk_size": 3}  # bicluster_flow's keyword arguments
N_TOKENS, SEQ_LEN = 512, 64
METRIC_KEYS = ["model", "site", "layer", "method", "drop_first", "row_k", "col_k"]
LABEL_KEYS = [*METRIC_KEYS, "axis", "index"]
INPUT_TABLES = ("tokens", "models", "activations")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect test server for every test here; its URL in the env for child processes."""
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    previous = os.environ.get("PREFECT_API_URL")
    with prefect_test_harness(server_startup_timeout=180):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        yield os.environ["PREFECT_API_URL"]
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(scope="module")
def pipeline_run(prefect_server: str, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole pipeline, serial, on a tiny random GPT-2 and the real GPT-2 tokenizer."""
    from flows.pipeline import pipeline_flow

    base = tmp_path_factory.mktemp("pipeline")
    study = Study(
        lake=str(base / "lake"), corpus=CorpusParams(max_tokens=N_TOKENS, seq_len=SEQ_LEN),
        extract=ExtractParams(models=(str(tiny_gpt2_dir),), control=False), bicluster=BiclusterParams(**BICLUSTER),
        compute=ComputeParams(serial=True, null_chunk_size=3), report_dir=str(base / "report"), progress=False,
    )
    outcome = pipeline_flow(study=study)
    return {"lake": Lake(base / "lake"), "report": base / "report", "outcome": outcome}


def _copy_inputs(source: Lake, target: Path) -> Lake:
    """A new lake holding only the source's extracted inputs (no labels or metrics)."""
    for table in INPUT_TABLES:
        shutil.copytree(source.root / table, target / table)
    return Lake(target)


def _metrics(lake: Lake) -> pl.DataFrame:
    return lake.scan("metrics").drop("seconds").collect().sort(METRIC_KEYS)


def _labels(lake: Lake) -> pl.DataFrame:
    return lake.scan("labels").collect().sort(LABEL_KEYS)


def _bicluster(lake: Lake, **kwargs) -> list[dict]:
    from flows.bicluster import bicluster_flow

    return bicluster_flow(lake=str(lake.root), **PARAMS, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- end to end
def test_pipeline_end_to_end(pipeline_run: dict, tiny_gpt2_dir: Path) -> None:
    lake, outcome = pipeline_run["lake"], pipeline_run["outcome"]
    assert set(outcome["seconds"]) == {"extract", "bicluster", "analyze"}
    metrics = lake.scan("metrics").collect()
    required = {"model", "site", "layer", "method", "row_k", "col_k", "r2", "adjusted_r2", "z", "p", "spec_mean"}
    assert required <= set(metrics.columns)
    # 3 resid layers (embeddings + 2 blocks) x 4 grid points, one selected per layer
    assert metrics.height == 3 * len(GRID) ** 2
    assert sorted(metrics["layer"].unique()) == [0, 1, 2]
    assert metrics.group_by("layer").agg(pl.col("selected").sum())["selected"].to_list() == [1, 1, 1]
    assert metrics["r2"].is_between(0, 1).all() and metrics["n_null"].unique().to_list() == [4]
    assert (metrics["null_draws"].list.len() == 4).all() and set(metrics["null"]) == {"interaction_refit"}
    parts = metrics["r2_rows"] + metrics["r2_cols"] + metrics["r2_interaction"]
    assert ((parts - metrics["r2"]).abs() < 1e-9).all()
    assert metrics["n_tokens"].unique().to_list() == [N_TOKENS]
    assert set(metrics["selection_rule"]) == {"excess"} and set(metrics["code_version"]) == {__import__("tnb").__version__}
    labels = lake.scan("labels").collect()
    tokens = labels.filter(pl.col("axis") == "token")
    neurons = labels.filter(pl.col("axis") == "neuron")
    assert tokens.height == 3 * 4 * N_TOKENS and neurons.height == 3 * 4 * 32
    assert sorted(tokens.filter((pl.col("layer") == 1) & (pl.col("row_k") == 3) & (pl.col("col_k") == 2))["index"]) == list(range(N_TOKENS))
    assert (tokens["label"] < tokens["row_k"]).all() and (neurons["label"] < neurons["col_k"]).all()
    # the selected point's labels reproduce its R^2 from the raw activations
    from tnb.metrics import block_r2
    from tnb.prepare import prepare

    row = metrics.filter((pl.col("layer") == 2) & pl.col("selected")).row(0, named=True)
    point = labels.filter((pl.col("layer") == 2) & (pl.col("row_k") == row["row_k"]) & (pl.col("col_k") == row["col_k"]))
    row_labels = point.filter(pl.col("axis") == "token").sort("index")["label"].to_numpy()
    col_labels = point.filter(pl.col("axis") == "neuron").sort("index")["label"].to_numpy()
    matrix = prepare(lake.read_layer(row["model"], "resid", 2)).matrix
    assert block_r2(matrix, row_labels, col_labels) == pytest.approx(row["r2"], abs=1e-6)
    # analyze stage: the report and the artifacts
    assert (pipeline_run["report"] / "index.html").exists()
    assert (pipeline_run["report"] / "figures" / "emergence.png").exists()
    from flows.pipeline import artifact_prefix

    prefix = artifact_prefix(str(pipeline_run["lake"].root))
    assert prefix.startswith("tnb-") and prefix != artifact_prefix(str(pipeline_run["lake"].root / "other"))
    assert set(outcome["analyze"]["artifacts"]) == {f"{prefix}-{part}" for part in ("metrics", "emergence", "report", "top-tokens")}


def test_control_twin_runs_by_default(prefect_server: str, tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """Without control=False every model gets its untrained twin, extracted and biclustered beside it.

    seed=1: the tiny fixture itself was initialised under torch.manual_seed(0).
    """
    from flows.pipeline import pipeline_flow

    outcome = pipeline_flow(study={  # a nested mapping, as a deployment passes it; Prefect makes it a Study
        "lake": str(tmp_path / "lake"), "corpus": {"max_tokens": 128, "seq_len": 64},
        "extract": {"models": [str(tiny_gpt2_dir)], "layers": [2]},
        "bicluster": {**BICLUSTER, "n_null": 2, "n_seeds": 1, "seed": 1},
        "compute": {"serial": True, "null_chunk_size": 3}, "stages": ["extract", "bicluster"], "progress": False,
    })
    assert [result["model"] for result in outcome["extract"]] == ["tiny-gpt2", "tiny-gpt2-untrained"]
    lake = Lake(tmp_path / "lake")
    models = lake.scan("models").collect().sort("model")
    assert models.select("model", "trained", "twin_of", "init_seed").rows() == [
        ("tiny-gpt2", True, None, None), ("tiny-gpt2-untrained", False, "tiny-gpt2", 1),
    ]
    assert models["stream"].n_unique() == 1  # one token stream: the twin has its model's tokenizer
    assert sorted(lake.scan("metrics").collect()["model"].unique()) == ["tiny-gpt2", "tiny-gpt2-untrained"]
    trained, twin = (lake.read_layer(name, "resid", 2) for name in ("tiny-gpt2", "tiny-gpt2-untrained"))
    assert trained.shape == twin.shape and not np.allclose(trained, twin)


def test_artifacts_are_on_the_server(pipeline_run: dict) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import artifact_prefix

    metrics, top = (f"{artifact_prefix(str(pipeline_run['lake'].root))}-{part}" for part in ("metrics", "top-tokens"))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[metrics, top])))
    by_key = {artifact.key: artifact for artifact in found}
    assert {metrics, top} <= set(by_key)
    assert "| model |" in by_key[metrics].data and "r2" in by_key[metrics].data


def test_rerun_skips_everything_and_changes_nothing(pipeline_run: dict, tiny_gpt2_dir: Path) -> None:
    lake = pipeline_run["lake"]
    before = lake_snapshot(lake.root)
    outcomes = _bicluster(lake, serial=True)
    assert [o["status"] for o in outcomes] == ["skipped"] * 3
    assert lake_snapshot(lake.root) == before


def test_other_config_is_refused_not_mixed(pipeline_run: dict) -> None:
    from flows.bicluster import bicluster_flow

    lake = pipeline_run["lake"]
    before = lake_snapshot(lake.root)
    with pytest.raises(LakeError, match=r"another config \(seed: 0 in lake vs 1 now\)"):
        bicluster_flow(lake=str(lake.root), bicluster={**BICLUSTER, "seed": 1}, serial=True)
    assert lake_snapshot(lake.root) == before


# ----------------------------------------------------------------------------- Dask
@pytest.mark.slow
def test_local_dask_cluster_matches_serial(pipeline_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.bicluster as stage

    entered = []
    quiet = stage.local_cluster_config
    monkeypatch.setattr(stage, "local_cluster_config", lambda: entered.append(True) or quiet())
    lake = _copy_inputs(pipeline_run["lake"], tmp_path / "lake")
    outcomes = _bicluster(lake, n_workers=2)
    assert [o["status"] for o in outcomes] == ["written"] * 3
    assert entered == [True]  # the local cluster ran with tnb's quieter housekeeping
    assert_frame_equal(_metrics(lake), _metrics(pipeline_run["lake"]))
    assert_frame_equal(_labels(lake), _labels(pipeline_run["lake"]))


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.slow
def test_real_dask_scheduler_and_two_workers(pipeline_run: dict, tmp_path: Path, prefect_server: str) -> None:
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    # The workers need the client's environment: this test imports the checkout's `flows`
    # (an installed tnb has it as `tnb.flows`), so they get the checkout on their path too.
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               OMP_NUM_THREADS="1", PYTHONPATH=path)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [_start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"], env)]
    try:
        for _ in range(2):
            processes.append(_start([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                                     "--dashboard-address", ":0", "--no-nanny"], env))
        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=90)
                    pids = set(client.run(os.getpid).values())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert len(pids) == 2 and os.getpid() not in pids
        lake = _copy_inputs(pipeline_run["lake"], tmp_path / "lake")
        outcomes = _bicluster(lake, dask_address=address)
        assert [o["status"] for o in outcomes] == ["written"] * 3
        assert_frame_equal(_metrics(lake), _metrics(pipeline_run["lake"]))
        assert_frame_equal(_labels(lake), _labels(pipeline_run["lake"]))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ----------------------------------------------------------------------------- crash and resume
_CHILD = """
import sys
import flows
from flows.bicluster import bicluster_flow
bicluster_flow(lake=sys.argv[1], bicluster={"row_ks": (2, 3), "col_ks": (2, 3), "n_null": 4, "n_seeds": 2,
               "n_shuffles": 20, "seed": 0}, null_chunk_size=3, serial=True)
"""


def test_kill_9_mid_bicluster_then_rerun(pipeline_run: dict, tmp_path: Path, prefect_server: str) -> None:
    lake = _copy_inputs(pipeline_run["lake"], tmp_path / "lake")
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), str(lake.root)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        # kill it as soon as the first layer is published, i.e. in the middle of the second
        while not lake.partitions("metrics") and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, "the child finished or failed before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    done = lake.partitions("metrics")
    assert 1 <= len(done) < 3, f"expected a partial lake after kill -9, got {len(done)} metrics partitions"
    outcomes = _bicluster(lake, serial=True)
    assert sorted(o["status"] for o in outcomes).count("skipped") == len(done)
    metrics, labels = _metrics(lake), _labels(lake)
    assert metrics.select(METRIC_KEYS).is_duplicated().sum() == 0
    assert labels.select(LABEL_KEYS).is_duplicated().sum() == 0
    assert_frame_equal(metrics, _metrics(pipeline_run["lake"]))
    assert_frame_equal(labels, _labels(pipeline_run["lake"]))
    assert not [p for p in (lake.root / "_staging").iterdir()], "staged files of the killed run were not cleaned"


# ----------------------------------------------------------------------------- the stage alone
def test_drop_first_leaves_out_leading_positions(pipeline_run: dict, tmp_path: Path) -> None:
    lake = _copy_inputs(pipeline_run["lake"], tmp_path / "lake")
    model = pipeline_run["outcome"]["extract"][0]["model"]
    params = BiclusterParams(row_ks=GRID, col_ks=GRID, n_null=3, n_seeds=1, n_shuffles=0, drop_first=1)
    outcome = bicluster_partition(lake, model, "resid", 1, params)
    n_sequences = -(-N_TOKENS // SEQ_LEN)
    assert outcome.status == "written" and outcome.n_tokens == N_TOKENS - n_sequences
    labels_key, metrics_key = output_keys(model, "resid", 1, "biclustering", 1)
    tokens = lake.read(labels_key).to_pandas().query("axis == 'token'")
    stream = lake.read(partition_key("models", model=model)).column("stream")[0].as_py()
    seq_pos = dict(zip(*lake.read(partition_key("tokens", stream=stream), columns=["pos", "seq_pos"]).to_pydict().values()))
    assert {seq_pos[p] for p in tokens["index"]} == set(range(1, SEQ_LEN))
    assert lake.read(metrics_key).column("n_tokens").to_pylist() == [N_TOKENS - n_sequences] * 4
    assert drop_first_mask(np.array([0, 1, 2, 0]), 2).tolist() == [False, False, True, False]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "kmeans"}, "method should be one of biclustering, coclustering. Got 'kmeans'"),
        ({"row_ks": (1, 3)}, "every k should be >= 2"),
        ({"selection": "max"}, "selection should be one of excess, z, adjusted_r2, r2. Got 'max'"),
        ({"drop_first": -1}, "drop_first should be an int >= 0. Got -1"),
        ({"n_null": 1}, "n_null should be an int >= 2. Got 1"),
        ({"n_seeds": 0}, "n_seeds should be an int >= 1. Got 0"),
        ({"null": "shuffle"}, "null should be one of interaction_refit, column_refit. Got 'shuffle'"),
        ({"input": "raw"}, "input should be one of abs, signed. Got 'raw'"),
        ({"alpha": 0}, r"alpha should be in \(0, 1\). Got 0"),
    ],
)
def test_bad_parameters_name_the_value(kwargs: dict, match: str) -> None:
    from tnb.bicluster_stage import StageError

    with pytest.raises(StageError, match=match):
        BiclusterParams(**kwargs)
    with pytest.raises(StageError, match=r"unknown bicluster parameter\(s\) \['n_permutations'\]"):
        BiclusterParams.from_mapping({"n_permutations": 1000})


def test_missing_activations_is_one_clear_error(tmp_path: Path) -> None:
    from tnb.bicluster_stage import layer_partitions

    with pytest.raises(LakeError, match="run extract first"):
        layer_partitions(Lake(tmp_path / "empty"), ["gpt2"])


def test_cli_parses_run_and_bicluster() -> None:
    from tnb.cli import build_parser, study_from_args

    parser = build_parser()
    args = parser.parse_args(["run", "--lake", "x", "--model", "gpt2", "--model", "gpt2-xl", "--grid", "6", "9",
                              "--n-null", "19", "--dask-address", "tcp://h:8786", "--drop-first", "1"])
    study = study_from_args(args)
    assert study.lake == "x" and study.extract.models == ("gpt2", "gpt2-xl")
    assert study.compute.dask_address == "tcp://h:8786"
    params = study.bicluster
    assert params.row_ks == (6, 9) and params.col_ks == (6, 9) and params.drop_first == 1 and params.n_null == 19
    study = study_from_args(parser.parse_args(["bicluster", "--serial", "--row-ks", "2", "3", "--col-ks", "4"]))
    assert study.bicluster.row_ks == (2, 3) and study.bicluster.col_ks == (4,) and study.compute.serial
    args = parser.parse_args(["bicluster", "--null", "column_refit", "--input", "signed", "--null-chunk", "5"])
    study = study_from_args(args)
    assert study.bicluster.null == "column_refit" and study.bicluster.input == "signed"
    assert study.compute.null_chunk_size == 5
    assert study.bicluster.n_null == 99  # the default
    # nothing given: the study's defaults, which live in tnb.params alone
    assert study_from_args(parser.parse_args(["run"])) == Study()


def test_cli_errors_are_one_line(prefect_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tnb.cli import main

    assert main(["run", "--lake", str(tmp_path / "lake"), "--grid", "1", "2"]) == 2
    assert capsys.readouterr().err.strip() == "tnb: error: every k should be >= 2. Got row_ks=(1, 2), col_ks=(1, 2) instead."
    assert not (tmp_path / "lake").exists()  # bad parameters are refused before anything is written
    Lake(tmp_path / "lake")  # an empty lake
    assert main(["bicluster", "--lake", str(tmp_path / "lake"), "--serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run extract first" in err[0]


def test_server_command_binds_localhost_with_analytics_off() -> None:
    from flows.cli import server_command

    command = server_command()
    assert command[1:] == ["server", "start", "--host", "127.0.0.1", "--port", "4200", "--analytics-off"]


def test_stages_publish_progress_that_reaches_100_and_the_figure_inline(pipeline_run: dict) -> None:
    """Every stage's progress artifact ends at 100%; the emergence figure is in the UI itself, no file:// link."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.artifacts import artifact_prefix

    prefix = artifact_prefix(str(pipeline_run["lake"].root))
    keys = [f"{prefix}-bicluster-progress", f"{prefix}-extract-tiny-gpt2-progress", f"{prefix}-emergence",
            f"{prefix}-report"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {artifact.key: artifact for artifact in found}
    assert set(keys) <= set(by_key)
    assert by_key[keys[0]].type == "progress" and float(by_key[keys[0]].data) == 100.0
    assert float(by_key[keys[1]].data) == 100.0
    assert "](data:image/png;base64," in by_key[f"{prefix}-emergence"].data
    assert "file://" not in by_key[f"{prefix}-report"].data and "index.html" in by_key[f"{prefix}-report"].data


def test_progress_moves_in_steps_and_is_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import prefect.artifacts

    from flows.artifacts import Progress

    published: list[float] = []
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", lambda progress, **_: uuid.uuid4())
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", lambda _id, value: published.append(value))
    every = Progress("k", "d", total=4, interval=0.0)
    for _ in range(4):
        every.advance()
    assert published == [25.0, 50.0, 75.0, 100.0] and every.values == [0.0, 25.0, 50.0, 75.0, 100.0]
    published.clear()
    throttled = Progress("k", "d", total=1000, interval=3600.0)
    for _ in range(1000):
        throttled.advance()
    assert published == [100.0]  # nothing in between within the interval, always the end


def test_a_progress_artifact_that_cannot_be_published_does_not_stop_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.artifacts

    from flows.artifacts import Progress

    def refuse(*_args, **_kwargs):
        raise RuntimeError("no API")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", refuse)
    progress = Progress("k", "d", total=2)
    progress.advance(2)
    assert progress.values == [] and progress.done == 2


def test_local_cluster_config_is_in_force_only_inside() -> None:
    import dask

    from flows.bicluster import LOCAL_CLUSTER_CONFIG, local_cluster_config

    before = {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG}
    with local_cluster_config():
        assert dask.config.get("distributed.worker.profile.enabled") is False
        assert {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG} == LOCAL_CLUSTER_CONFIG
    assert {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG} == before
