"""The lake writer: atomic publish, manifests, skip/overwrite, locks, foreign and corrupt files."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.conftest import lake_snapshot
from tnb import lake as lake_module
from tnb.errors import LakeError, SchemaError
from tnb.lake import Lake, act_values, partition_key, sanitize_value
from tnb.schemas import ACT_DTYPE_KEY, ACT_WIDTH_KEY, act_array, activations_schema


def _acts(n_rows: int, width: int, seed: int = 0, start: int = 0) -> pa.Table:
    values = np.random.default_rng(seed).standard_normal((n_rows, width)).astype(np.float16)
    act = act_array(values)
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
    expected = act_values(table).astype(np.float32)
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
    with pytest.raises(LakeError, match="has no manifest"):  # never silently left out of a read
        lake.partitions("activations")
    assert lake.write_table(_key(), _acts(10, 4), {}) is True
    assert lake.is_complete(_key())


def _hold_lock(root: str, ready, release) -> None:
    lake = Lake(root)
    with lake.writer(_key(), activations_schema(4), {}) as out:
        out.write(_acts(5, 4))
        ready.set()
        release.wait(30)


def _run_holder(tmp_path: Path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    other = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    other.start()
    assert ready.wait(60)
    return other, release


def test_second_writer_fails_clearly_after_the_lock_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNB_LOCK_TIMEOUT_S", "0.5")
    other, release = _run_holder(tmp_path)
    try:
        with pytest.raises(LakeError, match="being written by another process"):
            Lake(tmp_path).write_table(_key(), _acts(5, 4, seed=9), {})
    finally:
        release.set()
        other.join(30)
    assert other.exitcode == 0
    assert Lake(tmp_path).is_complete(_key())


def test_second_writer_waits_then_skips_what_the_first_published(tmp_path: Path) -> None:
    other, release = _run_holder(tmp_path)
    import threading

    threading.Timer(1.0, release.set).start()
    try:
        # same config: waits for the holder, then finds the partition done and does not rewrite it
        assert Lake(tmp_path).write_table(_key(), _acts(5, 4, seed=9), {}) is False
    finally:
        release.set()
        other.join(30)
    np.testing.assert_array_equal(Lake(tmp_path).read_layer("m", "resid", 0), act_values(_acts(5, 4)).astype(np.float32))


def test_second_writer_with_another_config_fails_after_waiting(tmp_path: Path) -> None:
    other, release = _run_holder(tmp_path)
    import threading

    threading.Timer(1.0, release.set).start()
    try:
        with pytest.raises(LakeError, match="another config"):
            Lake(tmp_path).write_table(_key(), _acts(5, 4, seed=9), {"seed": 1})
    finally:
        release.set()
        other.join(30)


def _corrupt(path: Path, how: str) -> None:
    content = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(content[: len(content) // 2]))
    elif how == "same-size":
        middle = len(content) // 2
        content[middle : middle + 8] = b"\xff" * 8
        path.write_bytes(bytes(content))
    elif how == "insert":
        middle = len(content) // 2
        path.write_bytes(bytes(content[:middle]) + b"garbage" * 100 + bytes(content[middle:]))


@pytest.mark.parametrize("how", ["truncate", "same-size", "insert", "rows", "sha256", "manifest-gone", "data-gone"])
def test_corruption_is_never_silent(tmp_path: Path, how: str) -> None:
    lake = Lake(tmp_path)
    lake.write_table(_key(), _acts(200, 16), {})
    lake.write_table(_key(1), _acts(200, 16, seed=1), {})
    data = lake.partition_dir(_key()) / "part-0.parquet"
    manifest_path = data.parent / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how in ("truncate", "same-size", "insert"):
        _corrupt(data, how)
    elif how in ("rows", "sha256"):
        manifest[how] = 7 if how == "rows" else "0" * 64
        manifest_path.write_text(json.dumps(manifest))
    elif how == "manifest-gone":
        manifest_path.unlink()
    else:
        data.unlink()
    with pytest.raises(LakeError, match="corrupt file in lake"):
        lake.read_layer("m", "resid", 0)
    if how != "same-size" and how != "sha256":  # size and footer are checked on every listing
        with pytest.raises(LakeError, match="corrupt file in lake"):
            lake.scan("activations")
    problems = dict(lake.check())
    assert list(problems) == [str(_key())], problems
    assert lake.read_layer("m", "resid", 1).shape == (200, 16)
    # a writer redoes it (what only a full hash finds needs --overwrite, or `tnb verify --repair`)
    assert lake.write_table(_key(), _acts(200, 16), {}, overwrite=how in ("same-size", "sha256")) is True
    assert lake.check() == []


def _footer_tables() -> dict[str, tuple[pa.Table, int]]:
    """Tables of every kind of column a lake holds (and some it does not), with a row-group size."""
    mixed = pa.table(
        {
            "i": pa.array(range(1000), pa.int64()),
            "s": pa.array([f"t{i}" if i % 7 else None for i in range(1000)]),
            "b": pa.array([i % 3 == 0 for i in range(1000)]),
            "l": pa.array([[float(i)] * (i % 4) for i in range(1000)], pa.list_(pa.float64())),
            "nested": pa.array([{"x": i, "y": [True, False]} for i in range(1000)]),
        }
    ).replace_schema_metadata({"key": "value", "empty": ""})
    return {
        "empty": (_acts(0, 4), 100),
        "one-group": (_acts(10, 4), 100),
        "many-groups": (_acts(5000, 16), 64),
        "mixed": (mixed, 37),
    }


@pytest.mark.parametrize("name", ["empty", "one-group", "many-groups", "mixed", "lake"])
def test_footer_rows_match_pyarrow(tmp_path: Path, name: str) -> None:
    from tnb.parquet_footer import footer_rows

    if name == "lake":  # as the lake writes it: zstd, dictionaries, statistics, bounded row groups
        lake = Lake(tmp_path)
        lake.write_table(_key(), _acts(3000, 384), {})
        path = lake.path(_key())
    else:
        table, row_group_size = _footer_tables()[name]
        path = tmp_path / "t.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
    assert footer_rows(path) == pq.read_metadata(path).num_rows


@pytest.mark.parametrize("how", ["empty", "short", "truncated", "magic", "length", "metadata-cut", "metadata-garbage"])
def test_footer_rows_refuse_what_is_not_parquet(tmp_path: Path, how: str) -> None:
    from tnb.parquet_footer import FooterError, footer_rows

    path = tmp_path / "t.parquet"
    pq.write_table(_acts(100, 4), path)
    content = path.read_bytes()
    length = int.from_bytes(content[-8:-4], "little")
    metadata = content[-8 - length : -8]
    broken = {
        "empty": b"",
        "short": b"PAR1PAR1",
        "truncated": content[: len(content) // 2],
        "magic": content[:-4] + b"PARX",
        "length": content[:-8] + (len(content)).to_bytes(4, "little") + b"PAR1",
        "metadata-cut": metadata[:6] + (6).to_bytes(4, "little") + b"PAR1",  # ends inside the schema
        "metadata-garbage": b"PAR1" + b"\xff" * 64 + (64).to_bytes(4, "little") + b"PAR1",
    }[how]
    path.write_bytes(broken)
    with pytest.raises(FooterError):
        footer_rows(path)
    with pytest.raises(Exception):  # noqa: B017  (pyarrow refuses it too)
        pq.read_metadata(path)


def test_derived_partition_records_its_inputs_and_goes_stale(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write_table(_key(), _acts(20, 4), {})
    inputs = lake.identity(_key())
    tokens = partition_key("models", model="m")
    from tnb.schemas import MODELS

    row = pa.Table.from_pylist([{"source": "s", "architecture": "a", "stream": "x", "n_layers": 1, "d_resid": 4,
                                 "d_mlp": 16}], schema=MODELS)  # the other columns null
    assert lake.write_table(tokens, row, {"c": 1}, inputs=inputs) is True
    assert lake.manifest(tokens)["inputs"] == inputs
    assert lake.state(tokens, {"c": 1}, inputs) == "complete"
    assert lake.write_table(tokens, row, {"c": 1}, inputs=inputs) is False
    lake.write_table(_key(), _acts(20, 4, seed=5), {}, overwrite=True)
    assert lake.state(tokens, {"c": 1}, lake.identity(_key())) == "stale"
    assert [problem for _, problem in lake.check()] == [f"stale: computed from {_key()}, which changed or is gone"]
    assert lake.write_table(tokens, row, {"c": 1}, inputs=lake.identity(_key())) is True
    assert lake.check() == []


def test_staged_files_of_other_hosts_are_kept(tmp_path: Path) -> None:
    Lake(tmp_path)
    other_host = tmp_path / "_staging" / "1@some-other-host@abc.parquet"
    dead_here = tmp_path / "_staging" / f"999999999@{lake_module._HOST}@abc.parquet"
    other_host.write_bytes(b"partial")
    dead_here.write_bytes(b"partial")
    Lake(tmp_path)
    assert other_host.exists() and not dead_here.exists()


def test_read_only_lake_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="no lake at"):
        Lake(tmp_path / "typo", read_only=True)
    assert not (tmp_path / "typo").exists()
    Lake(tmp_path / "lake").write_table(_key(), _acts(5, 4), {})
    shutil.rmtree(tmp_path / "lake" / "_locks")
    shutil.rmtree(tmp_path / "lake" / "_staging")
    reader = Lake(tmp_path / "lake", read_only=True)
    assert reader.read_layer("m", "resid", 0).shape == (5, 4)
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["activations"]


def test_stale_staging_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    Lake(tmp_path)
    dead = tmp_path / "_staging" / "999999999-abc.parquet"
    dead.write_bytes(b"partial")
    Lake(tmp_path)
    assert not dead.exists()


def test_writer_holds_a_bounded_row_group_whatever_the_batch(tmp_path: Path) -> None:
    """One call of 2,048 rows x 768 (1.6 M values) is cut into row groups of ROW_GROUP_VALUES values
    at most, so the open writer keeps buffers for one small row group (~12 bytes a value), not for
    the whole call (~20 MB): with a partition per layer open, that is what bounds extraction's memory."""
    width, rows = 768, 2_048
    limit = lake_module.row_group_rows(activations_schema(width))
    assert limit == lake_module.ROW_GROUP_VALUES // width
    lake = Lake(tmp_path)
    with lake.writer(_key(), activations_schema(width), {}) as out:
        table = _acts(rows, width)
        baseline = pa.total_allocated_bytes() - table.nbytes
        out.write(table)
        del table
        held = pa.total_allocated_bytes() - baseline
        assert held < 32 * lake_module.ROW_GROUP_VALUES, f"the open writer holds {held} bytes"
        out.write(_acts(10, width, start=rows))
    written = pq.read_metadata(lake.path(_key()))
    sizes = [written.row_group(i).num_rows for i in range(written.num_row_groups)]
    assert sum(sizes) == rows + 10 and max(sizes) == limit
    # min/max of a vector column say nothing: none is written; the scalar column keeps its statistics
    assert written.row_group(0).column(0).is_stats_set and not written.row_group(0).column(1).is_stats_set
    np.testing.assert_array_equal(lake.read(_key())["pos"].to_numpy(), np.arange(rows + 10))


def _shuffled_with_special_rows(n_rows: int, width: int) -> tuple[pa.Table, np.ndarray]:
    """Content rows 0..n_rows-1 stored out of order, each sequence of 4 framed by two special rows."""
    n_sequences = n_rows // 4
    wrapped = np.arange(n_sequences * 6, dtype=np.int32).reshape(n_sequences, 6)  # [CLS] c c c c [SEP]
    special = np.zeros_like(wrapped, dtype=bool)
    special[:, [0, 5]] = True
    pos = np.full(wrapped.shape, -1, dtype=np.int32)
    pos[:, 1:5] = np.arange(n_rows, dtype=np.int32).reshape(n_sequences, 4)
    values = np.random.default_rng(0).standard_normal((wrapped.size, width)).astype(np.float16)
    order = np.random.default_rng(1).permutation(wrapped.size)  # stored in any order
    columns = {
        "pos": pa.array(pos.ravel()[order], mask=special.ravel()[order]),
        "act": act_array(values[order]),
        "special": pa.array(special.ravel()[order]),
        "seq_id": pa.array(np.repeat(np.arange(n_sequences, dtype=np.int32), 6)[order]),
        "wrapped_pos": pa.array(np.tile(np.arange(6, dtype=np.int32), n_sequences)[order]),
        "token_id": pa.array(np.where(special, 101, 0).astype(np.int32).ravel()[order], mask=~special.ravel()[order]),
        "token": pa.array([("[CLS]" if s else None) for s in special.ravel()[order]], pa.string()),
    }
    return pa.table(columns, schema=activations_schema(width, special=True)), values


def test_read_layer_leaves_special_rows_out_and_orders_by_pos(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    table, values = _shuffled_with_special_rows(40, 8)
    lake.write_table(_key(), table, {})
    is_content = np.tile([False, True, True, True, True, False], 10)
    matrix, pos = lake.read_layer_rows("m", "resid", 0)
    assert pos.tolist() == list(range(40))
    np.testing.assert_array_equal(matrix, values[is_content].astype(np.float32))
    np.testing.assert_array_equal(lake.read_layer("m", "resid", 0), matrix)
    everything, pos = lake.read_layer_rows("m", "resid", 0, include_special=True)
    np.testing.assert_array_equal(everything, values.astype(np.float32))  # the order the model saw them
    assert pos.tolist() == np.where(is_content, np.cumsum(is_content) - 1, -1).tolist()


def test_activations_schema_with_special_rows_is_checked(tmp_path: Path) -> None:
    table, _ = _shuffled_with_special_rows(8, 4)
    with pytest.raises(SchemaError, match="does not match the activations table"):
        Lake(tmp_path).write_table(_key(), table.drop_columns(["wrapped_pos"]), {})


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_act_bytes_and_legacy_lists_read_the_same(tmp_path: Path, dtype: str) -> None:
    """Lakes written before the bytes layout hold act as fixed-size lists: both read to the same matrix."""
    values = np.random.default_rng(3).standard_normal((50, 6)).astype(dtype)
    pos = pa.array(np.arange(50, dtype=np.int32))
    current = pa.Table.from_arrays([pos, act_array(values)], schema=activations_schema(6, dtype))
    legacy_act = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 6)
    legacy = pa.Table.from_arrays([pos, legacy_act], schema=activations_schema(6, dtype, legacy=True))
    lake = Lake(tmp_path)
    lake.write_table(_key(0), current, {})
    lake.write_table(_key(1), legacy, {})
    assert pq.read_schema(lake.path(_key(0))).field("act").type == pa.binary(6 * np.dtype(dtype).itemsize)
    file_metadata = pl.read_parquet_metadata(lake.path(_key(0)))  # what the Polars-only readers see
    assert (file_metadata[ACT_DTYPE_KEY], file_metadata[ACT_WIDTH_KEY]) == (dtype, "6")
    for layer in (0, 1):
        np.testing.assert_array_equal(lake.read_layer("m", "resid", layer), values.astype(np.float32))
    np.testing.assert_array_equal(act_values(current.slice(10, 5)), values[10:15])  # a slice reads its own rows
    from tnb.query import activation_cells

    for layer in (0, 1):
        cells = activation_cells(lake, "m", "resid", layer).collect().sort("pos", "neuron")
        np.testing.assert_array_equal(cells["value"].to_numpy().reshape(50, 6), values.astype(np.float64))


def test_act_columns_without_their_layout_are_refused(tmp_path: Path) -> None:
    bare = pa.table({"pos": pa.array([0, 1], pa.int32()), "act": pa.array([b"abcd", b"efgh"], pa.binary(4))})
    with pytest.raises(SchemaError, match="does not match the activations table"):
        Lake(tmp_path).write_table(_key(), bare, {})
    with pytest.raises(SchemaError, match="no tnb.dtype/tnb.width metadata"):
        act_values(bare)
    with pytest.raises(ValueError, match="2-D float16 or float32 array. Got float64"):
        act_array(np.zeros((2, 3)))
    assert not any(name.startswith("activations/") for name in lake_snapshot(tmp_path))  # nothing half-written
