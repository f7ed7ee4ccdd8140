"""The lake: hive-partitioned Parquet tables, and the one module that writes them.

Layout (``lake/README.md`` documents every table)::

    <root>/<table>/<key1>=<v1>/<key2>=<v2>/part-0.parquet
    <root>/<table>/<key1>=<v1>/<key2>=<v2>/_manifest.json
    <root>/_staging/   files being written (same filesystem, so publishing is a rename)
    <root>/_locks/     one lock file per partition being written

A write stages the whole partition beside the lake, validates its schema, then
renames it into place: a ``part-0.parquet`` is either complete or absent. The
manifest (rows, schema, size, sha256, the config that made it, code version) is
written after the data; a partition is *complete* when both exist and agree.
A crash between the two leaves a partition that re-runs treat as missing.

Two writers on one partition cannot both publish: each holds an exclusive
``fcntl.flock`` on the partition's lock file for the whole write, released by the
kernel even on ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tnb import __version__
from tnb.errors import LakeError, SchemaError
from tnb.schemas import INT_KEYS, PARTITION_KEYS, expected_schema

if TYPE_CHECKING:
    import pyarrow.dataset as pads

DATA_FILE = "part-0.parquet"
MANIFEST_FILE = "_manifest.json"
_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

PartitionValue = str | int


def sanitize_value(text: str) -> str:
    """Turn free text (a model directory's base name, say) into a valid partition value."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_.-") or "unnamed"
    return cleaned if _VALUE_RE.match(cleaned) else f"x{cleaned}"


@dataclass(frozen=True)
class PartitionKey:
    """Identity of one partition: a table and one value per partition key."""

    table: str
    values: tuple[tuple[str, PartitionValue], ...]

    @property
    def relpath(self) -> Path:
        return Path(self.table, *(f"{name}={value}" for name, value in self.values))

    def as_dict(self) -> dict[str, PartitionValue]:
        return dict(self.values)

    def __str__(self) -> str:
        return self.relpath.as_posix()


def partition_key(table: str, **values: PartitionValue) -> PartitionKey:
    """Build and check the key of one partition of ``table``.

    >>> str(partition_key("activations", model="gpt2", site="resid", layer=3))
    'activations/model=gpt2/site=resid/layer=3'
    """
    if table not in PARTITION_KEYS:
        raise LakeError(f"unknown lake table {table!r}; tables are {sorted(PARTITION_KEYS)}")
    names = PARTITION_KEYS[table]
    if set(values) != set(names):
        raise LakeError(f"table {table!r} is partitioned by {list(names)}. Got {sorted(values)} instead.")
    ordered = []
    for name in names:
        value = values[name]
        if name in INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise LakeError(f"partition key {name} should be an integer >= 0. Got {value!r} instead.")
            value = int(value)
        elif not isinstance(value, str) or not _VALUE_RE.match(value):
            raise LakeError(
                f"partition key {name}={value!r} is not a valid value "
                "(letters, digits, '.', '_', '+', '-'; not starting with a symbol)"
            )
        ordered.append((name, value))
    return PartitionKey(table, tuple(ordered))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, payload: Mapping[str, Any], staging: Path) -> None:
    tmp = staging / f"{os.getpid()}-{uuid.uuid4().hex}.json"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _float_columns(schema: pa.Schema) -> list[str]:
    def is_float(dtype: pa.DataType) -> bool:
        if pa.types.is_floating(dtype):
            return True
        if pa.types.is_list(dtype) or pa.types.is_fixed_size_list(dtype) or pa.types.is_large_list(dtype):
            return is_float(dtype.value_type)
        return False

    return [field.name for field in schema if is_float(field.type)]


class PartitionWriter:
    """Stage one partition in row groups, then publish it whole (see :meth:`Lake.writer`)."""

    def __init__(self, lake: Lake, key: PartitionKey, schema: pa.Schema, config: Mapping[str, Any]):
        expected = expected_schema(key.table, schema)
        if not schema.equals(expected):
            raise SchemaError(f"schema for {key} does not match the {key.table} table: got {schema}, expected {expected}")
        self.lake, self.key, self.schema, self.config = lake, key, schema, dict(config)
        self.staged = lake.staging / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
        dictionary = [name for name in schema.names if name not in _float_columns(schema)]
        self._writer = pq.ParquetWriter(
            self.staged, schema, compression="zstd", use_dictionary=dictionary or False, write_statistics=True
        )
        self.rows = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows (one row group per call)."""
        if not data.schema.equals(self.schema):
            raise SchemaError(f"rows for {self.key} have schema {data.schema}, expected {self.schema}")
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _publish(self) -> Path:
        self._writer.close()
        written = pq.read_metadata(self.staged)
        if not written.schema.to_arrow_schema().equals(self.schema) or written.num_rows != self.rows:
            raise SchemaError(f"staged file for {self.key} does not read back as written")
        target_dir = self.lake.root / self.key.relpath
        target_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = target_dir / MANIFEST_FILE
        manifest_path.unlink(missing_ok=True)  # the partition is incomplete from here until the end
        manifest = {
            "partition": str(self.key),
            "keys": self.key.as_dict(),
            "rows": self.rows,
            "bytes": self.staged.stat().st_size,
            "sha256": _sha256(self.staged),
            "schema": self.schema.to_string(show_field_metadata=False),
            "config": self.config,
            "code_version": __version__,
            "host": socket.gethostname(),
        }
        os.replace(self.staged, target_dir / DATA_FILE)
        _write_json_atomic(manifest_path, manifest, self.lake.staging)
        return target_dir / DATA_FILE

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self.staged.unlink(missing_ok=True)


class Lake:
    """A lake rooted at a directory. Creating one checks that the root is writable.

    Parameters
    ----------
    root : path
        The lake's root directory; created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.staging.mkdir(exist_ok=True)
            (self.root / "_locks").mkdir(exist_ok=True)
            probe = self.staging / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise LakeError(f"lake path {self.root} is not writable: {error.strerror or error}") from None
        self._clean_stale_staging()

    @property
    def staging(self) -> Path:
        return self.root / "_staging"

    def _clean_stale_staging(self) -> None:
        """Remove files staged by processes that died (a kill -9 mid-write)."""
        for path in self.staging.iterdir():
            pid_text = path.name.split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- state
    def partition_dir(self, key: PartitionKey) -> Path:
        return self.root / key.relpath

    def _check_partition_files(self, key: PartitionKey) -> None:
        directory = self.partition_dir(key)
        if not directory.exists():
            return
        for path in directory.iterdir():
            if path.name not in (DATA_FILE, MANIFEST_FILE):
                raise LakeError(f"foreign file in lake partition {key}: {path}; move it out of the lake")

    def manifest(self, key: PartitionKey) -> dict[str, Any] | None:
        """The manifest of a complete partition, or ``None`` when it is absent or incomplete."""
        self._check_partition_files(key)
        directory = self.partition_dir(key)
        data, manifest_path = directory / DATA_FILE, directory / MANIFEST_FILE
        if not (data.exists() and manifest_path.exists()):
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise LakeError(f"corrupt manifest in lake: {manifest_path}; remove the partition or pass --overwrite") from None
        if manifest.get("bytes") != data.stat().st_size:
            return None  # data replaced after the manifest: a crash mid-publish
        return manifest

    def is_complete(self, key: PartitionKey, config: Mapping[str, Any] | None = None) -> bool:
        """Whether ``key`` is published whole; with ``config``, also that it was made with it.

        Raises
        ------
        LakeError
            When the partition is complete but was made with another config: silently
            skipping it would mix two configurations in one lake.
        """
        manifest = self.manifest(key)
        if manifest is None:
            return False
        if config is not None:
            made_with = json.loads(json.dumps(manifest.get("config", {}), default=str))
            wanted = json.loads(json.dumps(dict(config), default=str))
            if made_with != wanted:
                changed = sorted(k for k in set(made_with) | set(wanted) if made_with.get(k) != wanted.get(k))
                detail = ", ".join(f"{k}: {made_with.get(k)!r} in lake vs {wanted.get(k)!r} now" for k in changed)
                raise LakeError(f"partition {key} was made with another config ({detail}); pass --overwrite to redo it")
        return True

    def verify(self, key: PartitionKey) -> dict[str, Any]:
        """Check a partition's checksum, row count and schema against its manifest."""
        manifest = self.manifest(key)
        if manifest is None:
            raise LakeError(f"partition {key} is missing or incomplete")
        data = self.partition_dir(key) / DATA_FILE
        if _sha256(data) != manifest["sha256"]:
            raise LakeError(f"corrupt file in lake: {data} (checksum differs from its manifest)")
        try:
            metadata = pq.read_metadata(data)
        except (pa.ArrowInvalid, OSError) as error:
            raise LakeError(f"corrupt file in lake: {data} ({error})") from None
        if metadata.num_rows != manifest["rows"]:
            raise LakeError(f"corrupt file in lake: {data} (rows differ from its manifest)")
        return manifest

    def partitions(self, table: str) -> list[PartitionKey]:
        """Every complete partition of ``table``, in sorted order."""
        names = PARTITION_KEYS.get(table)
        if names is None:
            raise LakeError(f"unknown lake table {table!r}; tables are {sorted(PARTITION_KEYS)}")
        base = self.root / table
        if not base.exists():
            return []
        found = []
        for manifest_path in sorted(base.glob("/".join(["*"] * len(names)) + "/" + MANIFEST_FILE)):
            parts = manifest_path.parent.relative_to(base).parts
            values = {}
            for name, part in zip(names, parts, strict=True):
                key_name, _, raw = part.partition("=")
                if key_name != name:
                    raise LakeError(f"foreign directory in lake table {table}: {manifest_path.parent}")
                values[name] = int(raw) if name in INT_KEYS and raw.isdigit() else raw
            key = partition_key(table, **values)
            if self.manifest(key) is not None:
                found.append(key)
        return found

    def check_table(self, table: str) -> None:
        """Raise on any file under ``table`` that is not a partition's data or manifest."""
        depth = len(PARTITION_KEYS[table])
        base = self.root / table
        if not base.exists():
            return
        for path in base.rglob("*"):
            rel = path.relative_to(base).parts
            if path.is_dir():
                if len(rel) > depth or "=" not in rel[-1] or rel[-1].split("=", 1)[0] != PARTITION_KEYS[table][len(rel) - 1]:
                    raise LakeError(f"foreign directory in lake table {table}: {path}; move it out of the lake")
            elif len(rel) != depth + 1 or path.name not in (DATA_FILE, MANIFEST_FILE):
                raise LakeError(f"foreign file in lake table {table}: {path}; move it out of the lake")

    # ---------------------------------------------------------------- writes
    @contextlib.contextmanager
    def lock(self, key: PartitionKey) -> Iterator[None]:
        """Hold the partition's write lock; fail at once if another process holds it."""
        lock_path = self.root / "_locks" / (str(key).replace("/", "__") + ".lock")
        handle = lock_path.open("a+")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LakeError(f"partition {key} is being written by another process; wait for it or stop it") from None
            yield
        finally:
            handle.close()

    @contextlib.contextmanager
    def writer(
        self, key: PartitionKey, schema: pa.Schema, config: Mapping[str, Any]
    ) -> Iterator[PartitionWriter]:
        """Write one partition in pieces; it is published only if the block exits cleanly.

        >>> with lake.writer(key, schema, config) as out:   # doctest: +SKIP
        ...     for batch in batches:
        ...         out.write(batch)
        """
        self._check_partition_files(key)
        with self.lock(key):
            out = PartitionWriter(self, key, schema, config)
            try:
                yield out
            except BaseException:
                out._abort()
                raise
            try:
                out._publish()
            except BaseException:
                out._abort()
                raise

    def write_table(
        self,
        key: PartitionKey,
        table: pa.Table,
        config: Mapping[str, Any],
        overwrite: bool = False,
    ) -> bool:
        """Publish ``table`` as partition ``key``. Returns False when it was complete and skipped."""
        if not overwrite and self.is_complete(key, config):
            return False
        with self.writer(key, table.schema, config) as out:
            out.write(table)
        return True

    def remove(self, key: PartitionKey) -> None:
        """Delete one partition (manifest first, so it is never seen as complete half-deleted)."""
        self._check_partition_files(key)
        directory = self.partition_dir(key)
        with self.lock(key):
            (directory / MANIFEST_FILE).unlink(missing_ok=True)
            (directory / DATA_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()

    # ---------------------------------------------------------------- reads
    def path(self, key: PartitionKey) -> Path:
        """The data file of a complete partition."""
        if self.manifest(key) is None:
            raise LakeError(f"partition {key} is not in the lake at {self.root}; run the stage that writes it first")
        return self.partition_dir(key) / DATA_FILE

    def read(self, key: PartitionKey, columns: list[str] | None = None) -> pa.Table:
        """One complete partition as an Arrow table (without its partition columns)."""
        path = self.path(key)
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowInvalid, OSError) as error:
            raise LakeError(f"corrupt file in lake: {path} ({error})") from None

    def scan(self, table: str) -> pl.LazyFrame:
        """A lazy Polars scan of a whole table, partition keys as columns."""
        self.check_table(table)
        files = [self.partition_dir(key) / DATA_FILE for key in self.partitions(table)]
        if not files:
            raise LakeError(f"lake table {table!r} at {self.root} is empty; run the stage that writes it first")
        return pl.scan_parquet([str(f) for f in files], hive_partitioning=True)

    def dataset(self, table: str) -> pads.Dataset:
        """The table as a ``pyarrow.dataset`` with hive partitioning."""
        self.check_table(table)
        import pyarrow.dataset as pads  # lazy: it imports pandas (~0.3 s), which reading a table does not need

        return pads.dataset(self.root / table, format="parquet", partitioning="hive")

    def read_layer(self, model: str, site: str, layer: int) -> np.ndarray:
        """One layer's activations as a float32 matrix of shape (n_tokens, n_neurons), rows in ``pos`` order."""
        key = partition_key("activations", model=model, site=site, layer=layer)
        table = self.read(key)
        acts = table.column("act").combine_chunks()
        width = acts.type.list_size
        matrix = acts.values.to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)
        pos = table.column("pos").to_numpy()
        if pos.size > 1 and not np.all(pos[1:] > pos[:-1]):
            matrix = matrix[np.argsort(pos, kind="stable")]
        return matrix


def tables(root: str | os.PathLike[str]) -> dict[str, pl.LazyFrame]:
    """Every lake table as a Polars LazyFrame, by name, for notebooks (see :func:`tnb.query.tables`)."""
    from tnb.query import tables as query_tables  # tnb.query builds on this module

    return query_tables(root)
