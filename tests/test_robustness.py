"""Robustness of the lake and its stages: stale inputs, overwrite, concurrent writers, faults.

Built on a small synthetic lake (no model), so every test here is fast; the end-to-end
fault suite over the real CLI is in ``tests/test_faults.py``.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import lake_snapshot
from tnb.bicluster_stage import BiclusterParams, bicluster_partition, output_keys, partition_state
from tnb.errors import LakeError
from tnb.lake import Lake, partition_key
from tnb.schemas import MODELS, TOKENS, activations_schema

SMALL = {"row_ks": (2, 3), "col_ks": (2, 3), "n_null": 3, "n_seeds": 1, "n_shuffles": 0}
N_TOKENS, WIDTH, SEQ_LEN = 96, 12, 32


def _activations(n_tokens: int, seed: int, dtype: str = "float16") -> pa.Table:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n_tokens, WIDTH)) + np.repeat(np.eye(3), [4, 4, 4], axis=1)[rng.integers(0, 3, n_tokens)]
    act = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(dtype).ravel()), WIDTH)
    return pa.Table.from_arrays([pa.array(np.arange(n_tokens, dtype=np.int32)), act], schema=activations_schema(WIDTH, dtype))


def make_lake(root: Path, n_tokens: int = N_TOKENS, seed: int = 0, dtype: str = "float16", layers=(0, 1)) -> Lake:
    """A lake holding what ``tnb extract`` writes, for model ``m`` on stream ``s<n_tokens>``."""
    lake = Lake(root)
    stream = f"s{n_tokens}"
    pos = np.arange(n_tokens, dtype=np.int32)
    tokens = pa.table({"pos": pos, "doc_id": pos // 50, "seq_id": pos // SEQ_LEN, "seq_pos": pos % SEQ_LEN,
                       "token_id": pos % 7, "token": [f"t{p % 7}" for p in pos]}, schema=TOKENS)
    lake.write_table(partition_key("tokens", stream=stream), tokens, {"max_tokens": n_tokens}, overwrite=True)
    row = pa.table({"source": ["m"], "architecture": ["gpt2"], "stream": [stream], "n_layers": [1],
                    "d_resid": [WIDTH], "d_mlp": [4 * WIDTH]}, schema=MODELS)
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
