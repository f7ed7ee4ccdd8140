"""The lake writer: atomic publish, manifests, skip/overwrite, locks, foreign and corrupt files."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from tests.conftest import lake_snapshot
from tnb.errors import LakeError, SchemaError
from tnb.lake import Lake, partition_key, sanitize_value
from tnb.schemas import activations_schema


def _acts(n_rows: int, width: int, seed: int = 0, start: int = 0) -> pa.Table:
    values = np.random.default_rng(seed).standard_normal((n_rows, width)).astype(np.float16)
    act = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)
    pos = pa.array(np.arange(start, start + n_rows, dtype=np.int32))
    return pa.Table.from_arrays([pos, act], schema=activations_schema(width))


def _key(layer: int = 0):
    return partition_key("activations", model="m", site="resid", layer=layer)


def test_write_read_roundtrip_and_manifest(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    table = _acts(300, 16)
    assert lake.write_table(_key(), table, {"stream": "s"}) is True
    manifest = lake.verify(_key())
    assert manifest["rows"] == 300 and manifest["config"] == {"stream": "s"}
    assert "sha256" in manifest and "code_version" in manifest
    matrix = lake.read_layer("m", "resid", 0)
    assert matrix.dtype == np.float32 and matrix.shape == (300, 16)
    expected = np.asarray(table.column("act").combine_chunks().values).reshape(300, 16).astype(np.float32)
    np.testing.assert_array_equal(matrix, expected)


def test_readers_see_hive_columns(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    for layer in range(2):
        lake.write_table(_key(layer), _acts(10, 4, seed=layer), {})
    frame = lake.scan("activations").select("pos", "model", "site", "layer").collect()
    assert frame.height == 20
    assert sorted(frame["layer"].unique().to_list()) == [0, 1]
    direct = pl.scan_parquet(str(tmp_path / "activations" / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert direct.height == 20 and {"model", "site", "layer"} <= set(direct.columns)
    assert pads.dataset(tmp_path / "activations", partitioning="hive").count_rows() == 20


def test_skip_complete_and_overwrite(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write_table(_key(), _acts(10, 4, seed=1), {"a": 1})
    before = lake_snapshot(tmp_path)
    assert lake.write_table(_key(), _acts(10, 4, seed=2), {"a": 1}) is False
    assert lake_snapshot(tmp_path) == before
    assert lake.write_table(_key(), _acts(10, 4, seed=2), {"a": 1}, overwrite=True) is True
    assert lake_snapshot(tmp_path) != before


def test_other_config_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write_table(_key(), _acts(10, 4), {"max_tokens": 20000})
    with pytest.raises(LakeError, match=r"another config \(max_tokens: 20000 in lake vs 100 now\)"):
        lake.write_table(_key(), _acts(10, 4), {"max_tokens": 100})


@pytest.mark.parametrize(
    ("table", "values", "match"),
    [
        ("nope", {}, "unknown lake table 'nope'"),
        ("activations", {"model": "m", "site": "resid"}, "partitioned by"),
        ("activations", {"model": "a/b", "site": "resid", "layer": 0}, "model='a/b' is not a valid value"),
        ("activations", {"model": "m", "site": "resid", "layer": -1}, "layer should be an integer >= 0. Got -1"),
    ],
)
def test_bad_partition_keys(table: str, values: dict, match: str) -> None:
    with pytest.raises(LakeError, match=match):
        partition_key(table, **values)


def test_sanitize_value() -> None:
    assert sanitize_value("my model (v2)") == "my_model_v2"
    partition_key("models", model=sanitize_value("../weird dir!"))


def test_schema_mismatch_publishes_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    wrong = pa.table({"pos": pa.array([0, 1], pa.int64()), "act": pa.array([[1.0], [2.0]])})
    with pytest.raises(SchemaError, match="does not match the activations table"):
        lake.write_table(_key(), wrong, {})
    tokens_wrong = pa.table({"pos": pa.array([0], pa.int32())})
    with pytest.raises(SchemaError, match="does not match the tokens table"):
        lake.write_table(partition_key("tokens", stream="s"), tokens_wrong, {})
    assert lake_snapshot(tmp_path) == {}


def test_error_inside_writer_publishes_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with lake.writer(_key(), activations_schema(4), {}) as out:
            out.write(_acts(5, 4))
            raise RuntimeError("boom")
    assert lake_snapshot(tmp_path) == {}
    assert list((tmp_path / "_staging").iterdir()) == []
    assert not lake.is_complete(_key())


def test_unwritable_lake(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/tnb-lake")  # root can write anywhere on disk, not under /proc
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(LakeError, match="is not writable"):
        Lake(target)


def test_foreign_and_corrupt_files(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write_table(_key(), _acts(10, 4), {})
    data = lake.path(_key())
    data.write_bytes(data.read_bytes()[:-20] + b"x" * 20)  # same size, corrupt footer
    with pytest.raises(LakeError, match="corrupt file in lake"):
        lake.verify(_key())
    with pytest.raises(LakeError, match="corrupt file in lake"):
        lake.read(_key())
    foreign = data.parent / "notes.txt"
    foreign.write_text("hello")
    with pytest.raises(LakeError, match="foreign file in lake partition .*notes.txt"):
        lake.is_complete(_key())
    with pytest.raises(LakeError, match="foreign file"):
        lake.scan("activations")


def test_crash_between_data_and_manifest_is_incomplete(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write_table(_key(), _acts(10, 4), {})
    (lake.partition_dir(_key()) / "_manifest.json").unlink()
    assert not lake.is_complete(_key())
    assert lake.partitions("activations") == []
    assert lake.write_table(_key(), _acts(10, 4), {}) is True
    assert lake.is_complete(_key())


def _hold_lock(root: str, ready, release) -> None:
    lake = Lake(root)
    with lake.writer(_key(), activations_schema(4), {}) as out:
        out.write(_acts(5, 4))
        ready.set()
        release.wait(30)


def test_two_writers_cannot_both_publish(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    other = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    other.start()
    try:
        assert ready.wait(60)
        with pytest.raises(LakeError, match="being written by another process"):
            Lake(tmp_path).write_table(_key(), _acts(5, 4, seed=9), {})
    finally:
        release.set()
        other.join(30)
    assert other.exitcode == 0
    assert Lake(tmp_path).is_complete(_key())


def test_stale_staging_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    Lake(tmp_path)
    dead = tmp_path / "_staging" / "999999999-abc.parquet"
    dead.write_bytes(b"partial")
    Lake(tmp_path)
    assert not dead.exists()
