"""Robustness of the lake and its stages: stale inputs, overwrite, concurrent writers, faults.

Built on a small synthetic lake (no model), so every test here is fast; the end-to-end
fault suite over the real CLI is in ``tests/test_faults.py``.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import lake_snapshot
from tests.test_pipeline import prefect_server  # noqa: F401  (the session's Prefect test server, item 10)
from tnb.bicluster_stage import (
    BiclusterParams,
    bicluster_partition,
    output_keys,
    partition_state,
)
from tnb.errors import LakeError
from tnb.lake import Lake, partition_key
from tnb.schemas import MODELS, TOKENS, act_array, activations_schema

SMALL = {"row_ks": (2, 3), "col_ks": (2, 3), "n_null": 3, "n_seeds": 1, "n_shuffles": 0}
N_TOKENS, WIDTH, SEQ_LEN = 96, 12, 32


def _activations(n_tokens: int, seed: int, dtype: str = "float16") -> pa.Table:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n_tokens, WIDTH)) + np.repeat(np.eye(3), [4, 4, 4], axis=1)[rng.integers(0, 3, n_tokens)]
    act = act_array(values.astype(dtype))
    return pa.Table.from_arrays([pa.array(np.arange(n_tokens, dtype=np.int32)), act], schema=activations_schema(WIDTH, dtype))


def make_lake(root: Path, n_tokens: int = N_TOKENS, seed: int = 0, dtype: str = "float16", layers=(0, 1)) -> Lake:
    """A lake holding what ``tnb extract`` writes, for model ``m`` on stream ``s<n_tokens>``."""
    lake = Lake(root)
    stream = f"s{n_tokens}"
    pos = np.arange(n_tokens, dtype=np.int32)
    tokens = pa.table({"pos": pos, "doc_id": pos // 50, "seq_id": pos // SEQ_LEN, "seq_pos": pos % SEQ_LEN,
                       "token_id": pos % 7, "token": [f"t{p % 7}" for p in pos]}, schema=TOKENS)
    lake.write_table(partition_key("tokens", stream=stream), tokens, {"max_tokens": n_tokens}, overwrite=True)
    row = pa.Table.from_pylist([{"source": "m", "architecture": "gpt2", "stream": stream, "n_layers": 1,
                                 "d_resid": WIDTH, "d_mlp": 4 * WIDTH}], schema=MODELS)  # the other columns null
    lake.write_table(partition_key("models", model="m"), row, {"stream": stream}, overwrite=True)
    for layer in layers:
        key = partition_key("activations", model="m", site="resid", layer=layer)
        lake.write_table(key, _activations(n_tokens, seed + layer, dtype), {"stream": stream, "dtype": dtype},
                         overwrite=True)
    return lake


def _metrics(lake: Lake, layer: int = 0, method: str = "biclustering", drop_first: int = 0) -> pa.Table:
    return lake.read(output_keys("m", "resid", layer, method, drop_first)[1])


# ----------------------------------------------------------------------------- item 2: stale derived tables
@pytest.mark.parametrize("change", ["max_tokens", "dtype", "same-config-new-data"])
def test_reextracted_activations_make_labels_and_metrics_stale(tmp_path: Path, change: str) -> None:
    lake = make_lake(tmp_path)
    params = BiclusterParams(**SMALL)
    assert bicluster_partition(lake, "m", "resid", 0, params).status == "written"
    assert bicluster_partition(lake, "m", "resid", 0, params).status == "skipped"
    manifest = lake.manifest(output_keys("m", "resid", 0, "biclustering", 0)[1])
    act_key = partition_key("activations", model="m", site="resid", layer=0)
    assert manifest["inputs"] == {str(act_key): lake.manifest(act_key)["sha256"]}
    if change == "max_tokens":
        make_lake(tmp_path, n_tokens=64)
    elif change == "dtype":
        make_lake(tmp_path, dtype="float32")
    else:
        make_lake(tmp_path, seed=5)
    assert partition_state(lake, "m", "resid", 0, params) == "stale"
    outcome = bicluster_partition(lake, "m", "resid", 0, params)
    assert (outcome.status, outcome.reason) == ("written", "stale")
    n_tokens = 64 if change == "max_tokens" else N_TOKENS
    assert set(_metrics(lake).column("n_tokens").to_pylist()) == {n_tokens}
    assert bicluster_partition(lake, "m", "resid", 0, params).status == "skipped"
    assert lake.check() == []


def test_grid_check_of_activations_that_went_away_is_one_lake_error(tmp_path: Path) -> None:
    """A layer listed, then its manifest removed (another run's overwrite): a LakeError naming it, not a TypeError."""
    from tnb.bicluster_stage import check_grid_fits
    from tnb.lake import MANIFEST_FILE

    lake = make_lake(tmp_path / "lake")
    params = BiclusterParams(**SMALL)
    check_grid_fits(lake, "m", "resid", 0, params)  # complete: fits
    key = partition_key("activations", model="m", site="resid", layer=0)
    (lake.partition_dir(key) / MANIFEST_FILE).unlink()
    with pytest.raises(LakeError, match="activations/model=m/site=resid/layer=0 is missing or incomplete"):
        check_grid_fits(lake, "m", "resid", 0, params)


def test_drop_first_records_tokens_and_models_too(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    params = BiclusterParams(**SMALL, drop_first=1)
    bicluster_partition(lake, "m", "resid", 0, params)
    inputs = lake.manifest(output_keys("m", "resid", 0, "biclustering", 1)[1])["inputs"]
    assert sorted(inputs) == ["activations/model=m/site=resid/layer=0", "models/model=m", "tokens/stream=s96"]


# ----------------------------------------------------------------------------- item 1: overwrite another config
def test_overwrite_redoes_a_partition_made_with_another_config(tmp_path: Path) -> None:
    from flows.bicluster import list_partitions_task

    lake = make_lake(tmp_path)
    bicluster_partition(lake, "m", "resid", 0, BiclusterParams(**SMALL))
    other = BiclusterParams(**{**SMALL, "row_ks": (2, 4), "col_ks": (2, 4)})
    with pytest.raises(LakeError, match=r"another config .*pass --overwrite"):
        list_partitions_task.fn(str(tmp_path), ["m"], None, [0], other.config(), overwrite=False)
    partitions, todo = list_partitions_task.fn(str(tmp_path), ["m"], None, [0], other.config(), overwrite=True)
    assert todo == partitions == [("m", "resid", 0)]
    outcome = bicluster_partition(lake, "m", "resid", 0, other, overwrite=True)
    assert (outcome.status, outcome.reason) == ("written", "overwrite")
    assert sorted(set(_metrics(lake).column("row_k").to_pylist())) == [2, 4]


# ----------------------------------------------------------------------------- item 4: concurrent writers
def _bicluster_in_child(root: str, seed: int, go, results) -> None:
    from tnb.bicluster_stage import BiclusterParams, bicluster_partition

    go.wait(60)
    try:
        outcome = bicluster_partition(Lake(root), "m", "resid", 0, BiclusterParams(**SMALL, seed=seed))
        results.put((seed, outcome.status))
    except LakeError as error:
        results.put((seed, f"error: {error}"))


def test_two_concurrent_runs_never_both_say_written(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    children = [context.Process(target=_bicluster_in_child, args=(str(tmp_path), seed, go, results)) for seed in (0, 1)]
    labels_key, metrics_key = output_keys("m", "resid", 0, "biclustering", 0)
    with lake.locks([labels_key, metrics_key]):  # both start while the layer is locked, then race for it
        for child in children:
            child.start()
        go.set()
        import time

        time.sleep(3)
    for child in children:
        child.join(120)
    outcome = dict(results.get(timeout=10) for _ in children)
    winners = [seed for seed, status in outcome.items() if status == "written"]
    assert len(winners) == 1, outcome
    loser = 1 - winners[0]
    assert outcome[loser].startswith("error: ") and "another config" in outcome[loser], outcome
    assert set(_metrics(lake).column("seed").to_pylist()) == {winners[0]}


def test_a_waiting_run_with_the_same_config_skips(tmp_path: Path) -> None:
    lake = make_lake(tmp_path)
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    children = [context.Process(target=_bicluster_in_child, args=(str(tmp_path), 0, go, results)) for _ in range(2)]
    for child in children:
        child.start()
    go.set()
    for child in children:
        child.join(120)
    statuses = sorted(results.get(timeout=10)[1] for _ in children)
    assert statuses == ["skipped", "written"]
    before = lake_snapshot(tmp_path)
    assert bicluster_partition(lake, "m", "resid", 0, BiclusterParams(**SMALL)).status == "skipped"
    assert lake_snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- item 5: failed extractions
def _extract(lake: Lake, model: str, max_tokens: int = 300, seq_len: int = 64, **kwargs):
    from tnb.extract import ensure_token_stream, extract_activations
    from tnb.models import load_tokenizer, resolve_model

    spec = resolve_model(model)
    tokenizer_name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(lake, None, tokenizer_name, tokenizer, max_tokens, seq_len)
    return extract_activations(lake, spec, stream, ("resid",), [0, 1], progress=False, **kwargs)


def test_seq_len_beyond_the_positions_is_one_error_and_blocks_nothing(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    from tnb.errors import ModelError
    from tnb.extract import check_seq_len
    from tnb.models import resolve_model

    with pytest.raises(ModelError, match=r"--seq-len should be <= 256, the positions of tiny-gpt2. Got 300 instead."):
        check_seq_len(resolve_model(str(tiny_gpt2_dir)), 300)
    lake = Lake(tmp_path)
    with pytest.raises(ModelError, match="--seq-len should be <= 256"):
        _extract(lake, str(tiny_gpt2_dir), max_tokens=600, seq_len=300)
    assert lake.partitions("models") == [] and lake.partitions("activations") == []
    result = _extract(lake, str(tiny_gpt2_dir), seq_len=64)  # the corrected run is not blocked
    assert len(result.written) == 2


def test_truncated_weights_leave_no_models_row(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    import shutil

    from tnb.errors import ModelError

    broken = tmp_path / "models" / "tiny-gpt2"
    shutil.copytree(tiny_gpt2_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    lake = Lake(tmp_path / "lake")
    with pytest.raises(ModelError, match="cannot load the weights of tiny-gpt2"):
        _extract(lake, str(broken))
    assert lake.partitions("models") == [] and lake.partitions("activations") == []
    weights.write_bytes(b"")
    with pytest.raises(ModelError, match="cannot load the weights of tiny-gpt2"):
        _extract(lake, str(broken))
    assert len(_extract(lake, str(tiny_gpt2_dir)).written) == 2


def test_models_row_of_a_failed_run_does_not_pin_the_stream(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    row = pa.Table.from_pylist([{"source": str(tiny_gpt2_dir), "architecture": "gpt2", "stream": "other",
                                 "n_layers": 2, "d_resid": 32, "d_mlp": 128}], schema=MODELS)
    lake.write_table(partition_key("models", model="tiny-gpt2"), row, {"source": str(tiny_gpt2_dir), "stream": "other"})
    result = _extract(lake, str(tiny_gpt2_dir))
    assert lake.read(partition_key("models", model="tiny-gpt2")).column("stream").to_pylist() == [result.stream]
    # but once activations exist for a stream, another stream is refused without --overwrite
    with pytest.raises(LakeError, match="another config"):
        _extract(lake, str(tiny_gpt2_dir), max_tokens=200)


def test_reextract_after_the_token_stream_changed_redoes_the_activations(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    from tnb.extract import ensure_token_stream
    from tnb.models import load_tokenizer, resolve_model

    lake = Lake(tmp_path)
    first = _extract(lake, str(tiny_gpt2_dir))
    act_key = partition_key("activations", model="tiny-gpt2", site="resid", layer=1)
    assert lake.manifest(act_key)["inputs"] == lake.identity(partition_key("tokens", stream=first.stream))
    assert _extract(lake, str(tiny_gpt2_dir)).written == ()
    tokens_key = partition_key("tokens", stream=first.stream)
    table = lake.read(tokens_key)
    manifest = lake.manifest(tokens_key)
    lake.write_table(tokens_key, table.slice(0, 299), manifest["config"], overwrite=True)  # the stream changed
    assert len(_extract(lake, str(tiny_gpt2_dir)).written) == 2
    del ensure_token_stream, load_tokenizer, resolve_model


# ----------------------------------------------------------------------------- item 3: tnb verify
def _flip_middle(path: Path) -> None:
    content = bytearray(path.read_bytes())
    middle = min(len(content) // 2, 64)  # inside the data pages, not the footer
    content[middle : middle + 16] = bytes(255 - b for b in content[middle : middle + 16])
    path.write_bytes(bytes(content))


def test_verify_reports_and_repairs_by_recomputing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tnb.cli import main

    lake = make_lake(tmp_path)
    params = BiclusterParams(**SMALL)
    for layer in (0, 1):
        bicluster_partition(lake, "m", "resid", layer, params)
    assert main(["verify", "--lake", str(tmp_path)]) == 0
    metrics_key = output_keys("m", "resid", 0, "biclustering", 0)[1]
    before = lake.read(metrics_key).drop(["seconds"])
    _flip_middle(lake.partition_dir(metrics_key) / "part-0.parquet")  # same size: only the hash sees it
    (lake.partition_dir(output_keys("m", "resid", 1, "biclustering", 0)[0]) / "_manifest.json").unlink()
    capsys.readouterr()
    snapshot = lake_snapshot(tmp_path)
    assert main(["verify", "--lake", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"{metrics_key}: corrupt" in captured.out
    assert "labels/model=m/site=resid/layer=1/method=biclustering/drop_first=0: incomplete or corrupt" in captured.out
    assert captured.err.strip().startswith("tnb: error: 2 partitions are corrupt") and lake_snapshot(tmp_path) == snapshot
    assert main(["verify", "--lake", str(tmp_path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"{metrics_key}: recomputed" in out
    assert "labels/model=m/site=resid/layer=1/method=biclustering/drop_first=0: recomputed" in out  # sibling's config
    from polars.testing import assert_frame_equal

    assert_frame_equal(pl.from_arrow(lake.read(metrics_key).drop(["seconds"])), pl.from_arrow(before))
    assert lake.check() == []
    assert bicluster_partition(lake, "m", "resid", 1, params).status == "skipped"
    # what cannot be recomputed is removed, naming the command that makes it again
    (lake.partition_dir(partition_key("tokens", stream="s96")) / "_manifest.json").unlink()
    assert main(["verify", "--lake", str(tmp_path), "--repair"]) == 0
    assert "tokens/stream=s96: removed (its manifest is gone); run `tnb extract`" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "add_bos"),
    [({}, False), ({"special_tokens": "<|endoftext|> {content}"}, True), ({"special_tokens": "{content} </s>"}, False),
     ({"special_tokens": "[CLS] {content} [SEP]"}, True)],  # (BERT: the flag changes nothing there)
)
def test_recorded_add_bos_reads_the_wrapping_back(config: dict, add_bos: bool) -> None:
    from tnb.extract import recorded_add_bos

    assert recorded_add_bos(config) is add_bos


@pytest.mark.parametrize("add_bos", [False, True])
def test_verify_recomputes_activations_byte_for_byte(tiny_gpt2_dir: Path, tmp_path: Path, add_bos: bool) -> None:
    from tnb.cli import main

    lake = Lake(tmp_path)
    _extract(lake, str(tiny_gpt2_dir), add_bos=add_bos)
    snapshot = lake_snapshot(tmp_path)
    key = partition_key("activations", model="tiny-gpt2", site="resid", layer=1)
    config = lake.manifest(key)["config"]
    n_special = pc.sum(lake.read(key).column("special")).as_py() if add_bos else 0
    assert ("special_tokens" in config) is add_bos and n_special == (5 if add_bos else 0)  # one BOS per sequence
    _flip_middle(lake.partition_dir(key) / "part-0.parquet")
    with pytest.raises(LakeError, match="corrupt file in lake.*checksum"):
        lake.read_layer("tiny-gpt2", "resid", 1)
    assert main(["verify", "--lake", str(tmp_path), "--repair"]) == 0
    # redone as it was made: with the BOS rows when it had them (the models row unchanged too)
    assert lake.manifest(key)["config"] == config
    assert lake_snapshot(tmp_path) == snapshot


def test_verify_recomputes_an_untrained_twins_activations_as_the_twin(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """A twin's partition is redone from the same seeded initialisation, not from the trained weights."""
    from tnb.cli import main
    from tnb.extract import ensure_token_stream, extract_activations
    from tnb.models import load_tokenizer, resolve_model, untrained_twin

    lake = Lake(tmp_path)
    spec = resolve_model(str(tiny_gpt2_dir))
    tokenizer_name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(lake, None, tokenizer_name, tokenizer, 300, 64)
    for model in (spec, untrained_twin(spec, seed=7)):
        extract_activations(lake, model, stream, ("resid",), [0, 1], progress=False)
    snapshot = lake_snapshot(tmp_path)
    key = partition_key("activations", model="tiny-gpt2-untrained", site="resid", layer=1)
    _flip_middle(lake.partition_dir(key) / "part-0.parquet")
    assert main(["verify", "--lake", str(tmp_path), "--repair"]) == 0
    assert lake_snapshot(tmp_path) == snapshot  # the twin's bytes again; the trained model's untouched


# ----------------------------------------------------------------------------- items 9-12: query and report
@pytest.fixture(scope="module")
def analysis_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    from tests.fixtures.analysis_lake import build_fixture_lake

    return build_fixture_lake(tmp_path_factory.mktemp("analysis") / "lake")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM READ_CSV ( '/etc/passwd' )",
        'SELECT * FROM "read_csv"(\'/etc/passwd\')',
        "SELECT * FROM read_csv /* hidden */ ('http://127.0.0.1:9/x.csv')",
        "SELECT * FROM read_parquet('https://example.org/x.parquet')",
        "SELECT m.model FROM metrics m JOIN read_ndjson('/etc/hosts') x ON true",
    ],
)
def test_lake_only_refuses_sql_that_reads_files_or_urls(analysis_lake: Lake, sql: str) -> None:
    from tnb.query import QueryError, run_query

    with pytest.raises(QueryError, match=r"(?i)--lake-only: the statement calls read_\w+\(\)"):
        run_query(analysis_lake.root, sql, lake_only=True)


def test_lake_only_still_runs_lake_queries(analysis_lake: Lake) -> None:
    from tnb.query import run_query

    frame = run_query(analysis_lake.root, "SELECT model, 'read_csv(x)' AS s FROM metrics -- read_csv(", lake_only=True)
    assert frame.height > 0
    assert run_query(analysis_lake.root, "top_tokens", lake_only=True).height > 0


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from tnb.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_query_and_report_errors_are_one_line(analysis_lake: Lake, tmp_path: Path, capsys) -> None:
    root = str(analysis_lake.root)
    not_ipc = tmp_path / "x.arrow"
    not_ipc.write_text("not ipc")
    cases = {
        "read_ipc on a non-IPC file": ["query", "--lake", root, f"SELECT * FROM read_ipc('{not_ipc}')"],
        "query --out DIR": ["query", "--lake", root, "metrics_x", "--out", str(tmp_path)],
        "query --out DIR (csv)": ["query", "--lake", root, "SELECT model FROM metrics", "--format", "csv",
                                  "--out", str(tmp_path)],
        "misspelled lake": ["query", "--lake", str(tmp_path / "lkae"), "SELECT * FROM metrics"],
        "report --out FILE": ["report", "--lake", root, "--out", str(not_ipc)],
        "report --out inside the lake": ["report", "--lake", root, "--out", str(analysis_lake.root / "metrics")],
        "report --out the lake": ["report", "--lake", root, "--out", root],
        "verify misspelled lake": ["verify", "--lake", str(tmp_path / "lkae")],
    }
    before = lake_snapshot(analysis_lake.root)
    for what, argv in cases.items():
        code, _, err = _cli(argv, capsys)
        assert code == 2 and err.startswith("tnb: error: ") and err.count("\n") == 1, (what, code, err)
    assert not (tmp_path / "lkae").exists()
    assert lake_snapshot(analysis_lake.root) == before
    assert sorted(p.name for p in (analysis_lake.root / "metrics").iterdir() if not p.name.startswith("model="))  == []


def test_query_and_report_read_a_read_only_lake(analysis_lake: Lake, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "lake"
    shutil.copytree(analysis_lake.root, copy, ignore=shutil.ignore_patterns("_locks", "_staging"))
    for path in sorted(copy.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    copy.chmod(0o555)
    try:
        code, out, err = _cli(["query", "--lake", str(copy), "SELECT count(*) AS n FROM metrics"], capsys)
        assert code == 0, err
        code, out, err = _cli(["report", "--lake", str(copy), "--out", str(tmp_path / "report")], capsys)
        assert code == 0, err
        code, out, err = _cli(["report", "--lake", str(copy), "--out", str(tmp_path / "report")], capsys)
        assert code == 0 and "replaced the earlier report" in out
        assert not (copy / "_locks").exists() and not (copy / "_staging").exists()
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_report_markdown_carries_token_text_as_text() -> None:
    from tnb.report import _md_text, markdown_table

    frame = pl.DataFrame({"token": ["<script>alert(1)</script>", "a|b", "&amp;"]})
    table = markdown_table(frame)
    assert "<script>" not in table and "&lt;script&gt;" in table and "a\\|b" in table and "&amp;amp;" in table
    assert _md_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"


# ----------------------------------------------------------------------------- item 7: no outbound connection
_NO_NETWORK = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[:1])
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
from tnb.corpus import load_corpus
docs = list(load_corpus(sys.argv[1]))
print(json.dumps({"documents": len(docs), "attempts": [str(a) for a in attempts]}))
"""


def test_a_local_corpus_is_read_without_any_network_attempt(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"document {i} about lakes"}) for i in range(4)))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", _NO_NETWORK, str(corpus)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"documents": 4, "attempts": []}


# ----------------------------------------------------------------------------- item 8: services die with the command
_PARENT = """
import subprocess, sys, time
from flows.cli import die_with_us
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
die_with_us(child.pid)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_started_service_dies_with_a_killed_command(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), TNB_RUNTIME_DIR=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], env=env, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
            if Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z":
                break  # a zombie: dead, waiting to be reaped by init
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.2)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the service outlived the killed command by 20 s")


_DASK_PARENT = """
import os, time
if __name__ == "__main__":
    from distributed import Client, LocalCluster
    from flows.bicluster import make_task_runner
    runner, _ = make_task_runner(4, n_workers=2)
    cluster = LocalCluster(**runner.cluster_kwargs)  # the local cluster tnb's runs start
    print(*Client(cluster).run(os.getpid).values(), flush=True)
    time.sleep(600)
"""


def test_dask_workers_die_with_a_killed_command(tmp_path: Path) -> None:
    """tnb's local Dask workers are gone soon after ``kill -9`` of the command that started them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(_DASK_PARENT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    worker_pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(worker_pids) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 30
    alive = worker_pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"Dask workers {alive} outlived the killed command by 30 s"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# ----------------------------------------------------------------------------- item 10: one-line errors, through the flows


def test_dask_address_nobody_answers_is_one_error_at_once() -> None:
    import time

    from tnb.cli import check_dask_address
    from tnb.errors import TnbError

    start = time.monotonic()
    with pytest.raises(TnbError, match=r"no Dask scheduler answers at tcp://127.0.0.1:1 "):
        check_dask_address("tcp://127.0.0.1:1")
    assert time.monotonic() - start < 10
    with pytest.raises(TnbError, match="should look like tcp://HOST:PORT"):
        check_dask_address("http://x")


@pytest.mark.usefixtures("prefect_server")
def test_flow_errors_surface_as_the_users_error(tmp_path: Path) -> None:
    from flows.bicluster import bicluster_flow

    lake = make_lake(tmp_path)
    _flip_middle(lake.partition_dir(partition_key("activations", model="m", site="resid", layer=1)) / "part-0.parquet")
    with pytest.raises(LakeError, match="corrupt file in lake"):  # was: prefect's UnfinishedRun traceback
        bicluster_flow(lake=str(tmp_path), bicluster=SMALL, serial=True)


@pytest.mark.usefixtures("prefect_server")
def test_overwrite_through_the_flow_redoes_another_config(tmp_path: Path) -> None:
    from flows.bicluster import bicluster_flow

    make_lake(tmp_path, layers=(0,))
    bicluster_flow(lake=str(tmp_path), bicluster=SMALL, serial=True)
    other = {**SMALL, "row_ks": (2, 4), "col_ks": (2, 4)}
    with pytest.raises(LakeError, match="another config"):
        bicluster_flow(lake=str(tmp_path), bicluster=other, serial=True)
    outcomes = bicluster_flow(lake=str(tmp_path), bicluster=other, serial=True, overwrite=True)
    assert [(o["status"], o["reason"]) for o in outcomes] == [("written", "overwrite")]


# ----------------------------------------------------------------------------- item 13: memory bounded by max_tokens
def test_a_huge_document_is_tokenized_only_as_far_as_needed() -> None:
    import time

    from tnb.corpus import Document
    from tnb.models import load_tokenizer, resolve_model
    from tnb.tokens import build_token_stream

    _, tokenizer = load_tokenizer(resolve_model("gpt2"))
    words = " ".join(f"lake{i % 97} river{i % 13}, and" for i in range(4000))  # ~100 kB
    whole = build_token_stream([Document(0, "t", words)], tokenizer, max_tokens=512, seq_len=64)
    expected = tokenizer.encode(words, add_special_tokens=False)[:512]
    assert whole.column("token_id").to_pylist() == expected
    huge = words * 300  # ~30 MB: whole, it took ~30 s and ~4 GB
    start = time.perf_counter()
    table = build_token_stream([Document(0, "t", huge)], tokenizer, max_tokens=512, seq_len=64)
    assert time.perf_counter() - start < 5
    assert table.column("token_id").to_pylist() == expected


def test_tokenize_retries_only_transient_io() -> None:
    import errno

    from flows.bicluster import retry_transient_io
    from flows.extract import tokenize_task
    from tnb.errors import CorpusError

    class _Failed:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        def result(self, raise_on_failure: bool = True) -> BaseException:
            return self.error

    assert tokenize_task.retry_condition_fn is retry_transient_io
    assert retry_transient_io(None, None, _Failed(OSError(errno.EIO, "flaky mount"))) is True
    assert retry_transient_io(None, None, _Failed(TimeoutError("read timed out"))) is True
    # deterministic: bad input, a missing file, a full or read-only disk; a retry cannot fix them
    for error in (CorpusError("empty corpus"), FileNotFoundError(errno.ENOENT, "no such file"),
                  OSError(errno.ENOSPC, "no space left"), PermissionError(errno.EACCES, "denied"), ValueError("x")):
        assert retry_transient_io(None, None, _Failed(error)) is False, error
