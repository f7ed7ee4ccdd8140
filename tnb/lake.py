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

A derived partition also records the identity (sha256) of every partition it was
computed from (``inputs`` in its manifest); when one of them has changed since, the
partition is *stale* and the stage that writes it redoes it.

Reads check what is cheap every time: the file's size and its Parquet footer (row
count, :mod:`tnb.parquet_footer`) against the manifest, and the sha256 of every file read whole
(:meth:`Lake.read`). :meth:`Lake.check` hashes everything (``tnb verify``). A
partition that is present but broken is an error for readers, never silently left out.

Reading needs only Polars: numpy and pyarrow (~0.25 s to import) are imported by the
functions that write, validate or read Parquet through Arrow, so ``tnb query`` starts
without them.

Two writers on one partition cannot both publish: each holds an exclusive
``fcntl.flock`` on the partition's lock file for the whole write, released by the
kernel even on ``kill -9``. A second writer waits for the first (up to
``TNB_LOCK_TIMEOUT_S``, default 3600 s) and then re-checks what is left to do, so
work the first has finished with the same config is skipped, not redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import numbers
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from tnb import __version__
from tnb.errors import LakeError, SchemaError
from tnb.keys import INT_KEYS, PARTITION_KEYS
from tnb.parquet_footer import FooterError, footer_rows

if TYPE_CHECKING:  # imported where used: reading the lake (tnb query) needs neither
    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as pads

DATA_FILE = "part-0.parquet"
LOCK_TIMEOUT_ENV = "TNB_LOCK_TIMEOUT_S"
FAULT_ENV = "TNB_FAULT_AT"  # fault injection (tests, bench/robustness.py): see _fault_point
_LOG = logging.getLogger("tnb.lake")
_HOST = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"
MANIFEST_FILE = "_manifest.json"
# At most this many values of one column in a row group. The Parquet writer keeps buffers
# of ~12 bytes per value of its largest row group (levels, encoders) for as long as it is
# open, so a row group of one 16 x 128 batch of a 768-wide vector column (1.6 M values)
# would hold ~20 MB per open partition; bounded here, ~3 MB, whatever the batch.
ROW_GROUP_VALUES = 1 << 18
_READ_CHUNK_ROWS = 4096  # rows reordered at a time when a layer is read out of stored order
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
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:  # numpy's too
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


def _staged_name(suffix: str) -> str:
    """``<pid>@<host>@<uuid><suffix>``: a lake shared by several hosts knows whose file it is."""
    return f"{os.getpid()}@{_HOST}@{uuid.uuid4().hex}{suffix}"


def _staged_owner(name: str) -> tuple[int, str] | None:
    """(pid, host) of a staged file, or None for a name tnb did not make."""
    parts = name.split("@")
    if len(parts) == 3 and parts[0].isdigit():
        return int(parts[0]), parts[1]
    legacy = name.split("-", 1)[0]  # <pid>-<uuid> of older versions: this host's
    return (int(legacy), _HOST) if legacy.isdigit() else None


def _fault_point(step: str, table: str) -> None:
    """Kill this process (SIGKILL, as ``kill -9``) at a publish step named by ``TNB_FAULT_AT=<step>:<table>``.

    Used only by the fault-injection suite, to stop a writer between any two steps of a publish.
    """
    if os.environ.get(FAULT_ENV) == f"{step}:{table}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _float_columns(schema: pa.Schema) -> list[str]:
    """Columns of floats: float scalars, lists of floats and ``act`` (floats stored as bytes)."""
    import pyarrow as pa

    from tnb.schemas import act_layout

    def is_float(dtype: pa.DataType) -> bool:
        if pa.types.is_floating(dtype):
            return True
        if pa.types.is_list(dtype) or pa.types.is_fixed_size_list(dtype) or pa.types.is_large_list(dtype):
            return is_float(dtype.value_type)
        return False

    return [field.name for field in schema if is_float(field.type) or act_layout(field) is not None]


def _vector_width(field: pa.Field) -> int:
    """Values per row of a column: ``act``'s width, a fixed-size list's size (nested ones multiplied), else 1."""
    import pyarrow as pa

    from tnb.schemas import act_layout

    layout = act_layout(field)
    if layout is not None:
        return layout[0]
    dtype = field.type
    if pa.types.is_fixed_size_list(dtype):
        return dtype.list_size * _vector_width(pa.field("item", dtype.value_type))
    return 1


def row_group_rows(schema: pa.Schema) -> int:
    """Rows per row group: :data:`ROW_GROUP_VALUES` values of the widest column (at least one row)."""
    return max(1, ROW_GROUP_VALUES // max(_vector_width(field) for field in schema))


def act_values(table: pa.Table) -> np.ndarray:
    """A table's ``act`` column as an array of shape (rows, width) in its stored dtype.

    Reads both layouts (:func:`tnb.schemas.act_layout`): bytes of little-endian floats (a
    view of the column's buffer where it is one chunk) and the older fixed-size lists.
    """
    import numpy as np
    import pyarrow as pa

    from tnb.schemas import act_layout

    field = table.schema.field("act")
    layout = act_layout(field)
    if layout is None:
        raise SchemaError(f"column act of type {field.type} holds no activations (no tnb.dtype/tnb.width metadata)")
    width, dtype = layout
    acts = table.column("act").combine_chunks()
    if acts.null_count:
        raise SchemaError(f"column act has {acts.null_count} null rows; every row needs its activations")
    if len(acts) == 0:
        return np.empty((0, width), dtype=dtype)
    if isinstance(acts, pa.FixedSizeListArray):
        return acts.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    item = np.dtype(dtype).newbyteorder("<")
    data = np.frombuffer(acts.buffers()[1], dtype=item, count=len(acts) * width, offset=acts.offset * width * item.itemsize)
    return data.reshape(-1, width)


class PartitionWriter:
    """Stage one partition in row groups, then publish it whole (see :meth:`Lake.writer`)."""

    def __init__(
        self,
        lake: Lake,
        key: PartitionKey,
        schema: pa.Schema,
        config: Mapping[str, Any],
        inputs: Mapping[str, str] | None = None,
    ):
        import pyarrow.parquet as pq

        from tnb.schemas import expected_schema

        expected = expected_schema(key.table, schema)
        if not schema.equals(expected):
            raise SchemaError(f"schema for {key} does not match the {key.table} table: got {schema}, expected {expected}")
        self.lake, self.key, self.schema, self.config = lake, key, schema, dict(config)
        self.inputs = dict(sorted((inputs or {}).items()))
        self.staged = lake.staging / _staged_name(".parquet")
        floats = _float_columns(schema)
        dictionary = [name for name in schema.names if name not in floats]
        # no min/max of a vector column: it says nothing, and costs ~1/3 of writing float16 vectors
        statistics = [field.name for field in schema if not (field.name in floats and _vector_width(field) > 1)]
        self._row_group_rows = row_group_rows(schema)
        try:
            self._writer = pq.ParquetWriter(
                self.staged, schema, compression="zstd", use_dictionary=dictionary or False,
                write_statistics=statistics or False,
                write_batch_size=1 << 16,  # values encoded at a time (default 1,024): ~15% less CPU for vectors
            )
        except OSError as error:
            self.staged.unlink(missing_ok=True)
            raise LakeError(f"cannot write to the lake at {lake.root}: {_os_reason(error)}") from None
        self.rows = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows: row groups of at most :func:`row_group_rows` rows, written now (nothing is held back)."""
        import pyarrow as pa

        if not data.schema.equals(self.schema):
            raise SchemaError(f"rows for {self.key} have schema {data.schema}, expected {self.schema}")
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        try:
            self._writer.write_table(table, row_group_size=self._row_group_rows)
        except OSError as error:
            raise LakeError(f"cannot write {self.key} to the lake at {self.lake.root}: {_os_reason(error)}") from None
        self.rows += table.num_rows

    def _publish(self) -> Path:
        try:
            return self._publish_staged()
        except OSError as error:
            raise LakeError(f"cannot publish {self.key} in the lake at {self.lake.root}: {_os_reason(error)}") from None

    def _publish_staged(self) -> Path:
        import pyarrow.parquet as pq

        self._writer.close()
        written = pq.read_metadata(self.staged)
        if not written.schema.to_arrow_schema().equals(self.schema) or written.num_rows != self.rows:
            raise SchemaError(f"staged file for {self.key} does not read back as written")
        target_dir = self.lake.root / self.key.relpath
        target_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = target_dir / MANIFEST_FILE
        manifest = {
            "partition": str(self.key),
            "keys": self.key.as_dict(),
            "rows": self.rows,
            "bytes": self.staged.stat().st_size,
            "sha256": _sha256(self.staged),
            "schema": self.schema.to_string(show_field_metadata=False),
            "config": self.config,
            "inputs": self.inputs,
            "code_version": __version__,
            "host": socket.gethostname(),
        }
        staged_manifest = self.lake.staging / _staged_name(".json")
        table = self.key.table
        try:
            staged_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            _fault_point("staged", table)
            manifest_path.unlink(missing_ok=True)  # the partition is incomplete from here until the end
            _fault_point("unlinked", table)
            os.replace(self.staged, target_dir / DATA_FILE)
            _fault_point("replaced", table)
            os.replace(staged_manifest, manifest_path)
            _fault_point("published", table)
        finally:
            staged_manifest.unlink(missing_ok=True)
        return target_dir / DATA_FILE

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self.staged.unlink(missing_ok=True)


def _os_reason(error: OSError) -> str:
    import errno

    if error.errno == errno.ENOSPC:
        return "no space left on the device; free some space and re-run (complete partitions are kept)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({error.filename or 'lake'}); the lake or part of it is read-only"
    return error.strerror or str(error)


def _canonical(config: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(dict(config), default=str))


class Lake:
    """A lake rooted at a directory.

    Parameters
    ----------
    root : path
        The lake's root directory; created if missing (unless ``read_only``).
    read_only : bool
        Only read: the root must exist, nothing is created or cleaned there, and it may
        be on a read-only filesystem (``tnb query``, ``tnb report``).
    """

    def __init__(self, root: str | os.PathLike[str], read_only: bool = False):
        self.root = Path(root).expanduser().absolute()
        self.read_only = read_only
        self._held: dict[PartitionKey, Any] = {}
        if read_only:
            if not self.root.is_dir():
                raise LakeError(f"no lake at {self.root}; check --lake (a lake is made by `tnb extract` or `tnb run`)")
            return
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
        """Remove files staged on this host by processes that died (a kill -9 mid-write).

        Files staged on another host (a lake on a shared mount) are left alone: whether
        their process lives cannot be told from here.
        """
        for path in self.staging.iterdir():
            owner = _staged_owner(path.name)
            if owner is not None and owner[1] == _HOST and not pid_alive(owner[0]):
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

    def _load_manifest(self, key: PartitionKey) -> tuple[dict[str, Any] | None, str | None]:
        """(manifest, None) for a complete partition; (None, why) for a present but broken one; (None, None) if absent."""
        self._check_partition_files(key)
        directory = self.partition_dir(key)
        data, manifest_path = directory / DATA_FILE, directory / MANIFEST_FILE
        if not data.exists() and not manifest_path.exists():
            return None, None
        if not manifest_path.exists():
            return None, "its data file has no manifest"
        if not data.exists():
            return None, "its manifest has no data file"
        try:
            manifest = json.loads(manifest_path.read_text())
            rows, size = int(manifest["rows"]), int(manifest["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, "its manifest is unreadable"
        if size != data.stat().st_size:
            return None, f"its data file has {data.stat().st_size} bytes, its manifest says {size}"
        try:
            footer = footer_rows(data)
        except (FooterError, OSError) as error:
            return None, f"its data file is not readable Parquet ({str(error).splitlines()[0]})"
        if footer != rows:
            return None, f"its data file has {footer} rows, its manifest says {rows}"
        return manifest, None

    def manifest(self, key: PartitionKey) -> dict[str, Any] | None:
        """The manifest of a complete partition, or ``None`` when it is absent, incomplete or broken.

        Checked every time: the data file's size and its Parquet footer's row count.
        """
        return self._load_manifest(key)[0]

    def problem(self, key: PartitionKey) -> str | None:
        """Why a partition that is present is not complete (None when complete or absent)."""
        return self._load_manifest(key)[1]

    def _being_written(self, key: PartitionKey) -> bool:
        if key in self._held:
            return True
        lock_path = self._lock_path(key)
        if self.read_only or not lock_path.exists():
            return False
        with lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:
                return False
            return False

    def _complete_for_reading(self, key: PartitionKey) -> dict[str, Any] | None:
        manifest, why = self._load_manifest(key)
        if why is not None and not self._being_written(key):
            raise LakeError(
                f"corrupt file in lake: partition {key} ({why}); run `tnb verify --lake {self.root} --repair` "
                "or re-run the stage that writes it"
            )
        return manifest

    def state(
        self, key: PartitionKey, config: Mapping[str, Any] | None = None, inputs: Mapping[str, str] | None = None
    ) -> str:
        """``"missing"``, ``"complete"`` or ``"stale"`` (complete, but computed from other ``inputs``).

        Raises
        ------
        LakeError
            When the partition is complete but was made with another config: silently
            skipping it would mix two configurations in one lake.
        """
        manifest = self.manifest(key)
        if manifest is None:
            return "missing"
        if config is not None:
            made_with, wanted = _canonical(manifest.get("config", {})), _canonical(config)
            if made_with != wanted:
                changed = sorted(k for k in set(made_with) | set(wanted) if made_with.get(k) != wanted.get(k))
                detail = ", ".join(f"{k}: {made_with.get(k)!r} in lake vs {wanted.get(k)!r} now" for k in changed)
                raise LakeError(f"partition {key} was made with another config ({detail}); pass --overwrite to redo it")
        if inputs is not None and manifest.get("inputs", {}) != dict(inputs):
            return "stale"
        return "complete"

    def is_complete(
        self, key: PartitionKey, config: Mapping[str, Any] | None = None, inputs: Mapping[str, str] | None = None
    ) -> bool:
        """Whether ``key`` is published whole; with ``config`` (and ``inputs``), also made with them.

        Raises
        ------
        LakeError
            When the partition is complete but was made with another config.
        """
        return self.state(key, config, inputs) == "complete"

    def identity(self, key: PartitionKey) -> dict[str, str]:
        """``{partition: sha256}`` of a complete partition: what a derived partition records as its input."""
        manifest = self._complete_for_reading(key)
        if manifest is None:
            raise LakeError(f"partition {key} is not in the lake at {self.root}; run the stage that writes it first")
        return {str(key): manifest["sha256"]}

    def verify(self, key: PartitionKey) -> dict[str, Any]:
        """Check a partition's checksum, row count and schema against its manifest."""
        manifest, why = self._load_manifest(key)
        data = self.partition_dir(key) / DATA_FILE
        if manifest is None:
            raise LakeError(f"corrupt file in lake: {data} ({why})" if why else f"partition {key} is missing")
        if _sha256(data) != manifest["sha256"]:
            raise LakeError(f"corrupt file in lake: {data} (checksum differs from its manifest)")
        return manifest

    def check(self) -> list[tuple[str, str]]:
        """Hash every partition and compare it with its manifest and with the inputs it records.

        Returns
        -------
        list of (partition, problem)
            ``problem`` starts with ``corrupt``, ``incomplete`` or ``stale``; empty when all is well.
        """
        found: list[tuple[str, str]] = []
        identities: dict[str, str] = {}
        derived: list[tuple[PartitionKey, dict[str, str]]] = []
        for table in PARTITION_KEYS:
            for key in self._partition_dirs(table):
                if self._being_written(key):
                    continue
                manifest, why = self._load_manifest(key)
                if manifest is None:
                    if why is not None:
                        found.append((str(key), f"incomplete or corrupt: {why}"))
                    continue
                if _sha256(self.partition_dir(key) / DATA_FILE) != manifest.get("sha256"):
                    found.append((str(key), "corrupt: checksum differs from its manifest"))
                    continue
                identities[str(key)] = manifest["sha256"]
                if manifest.get("inputs"):
                    derived.append((key, manifest["inputs"]))
        for key, inputs in derived:
            changed = sorted(name for name, sha in inputs.items() if identities.get(name) != sha)
            if changed:
                found.append((str(key), f"stale: computed from {', '.join(changed)}, which changed or is gone"))
        return found

    def _partition_dirs(self, table: str) -> list[PartitionKey]:
        """Every partition directory of ``table`` that holds a data file or a manifest."""
        names = PARTITION_KEYS.get(table)
        if names is None:
            raise LakeError(f"unknown lake table {table!r}; tables are {sorted(PARTITION_KEYS)}")
        base = self.root / table
        if not base.exists():
            return []
        pattern = "/".join(["*"] * len(names))
        directories = sorted({path.parent for name in (DATA_FILE, MANIFEST_FILE) for path in base.glob(f"{pattern}/{name}")})
        keys = []
        for directory in directories:
            values = {}
            for name, part in zip(names, directory.relative_to(base).parts, strict=True):
                key_name, _, raw = part.partition("=")
                if key_name != name:
                    raise LakeError(f"foreign directory in lake table {table}: {directory}; move it out of the lake")
                values[name] = int(raw) if name in INT_KEYS and raw.isdigit() else raw
            try:
                keys.append(partition_key(table, **values))
            except LakeError:
                raise LakeError(f"foreign directory in lake table {table}: {directory}; move it out of the lake") from None
        return keys

    def partitions(self, table: str) -> list[PartitionKey]:
        """Every complete partition of ``table``, in sorted order.

        Raises
        ------
        LakeError
            When a partition is present but broken (truncated, no manifest, rows that
            disagree): leaving it out would silently drop it from every result. One
            being written by another process is left out.
        """
        return [key for key in self._partition_dirs(table) if self._complete_for_reading(key) is not None]

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
    def _lock_path(self, key: PartitionKey) -> Path:
        return self.root / "_locks" / (str(key).replace("/", "__") + ".lock")

    @contextlib.contextmanager
    def lock(self, key: PartitionKey, timeout: float | None = None) -> Iterator[None]:
        """Hold the partition's write lock, waiting for another process that holds it.

        Re-entrant within one :class:`Lake` object. ``timeout`` (seconds, default
        ``TNB_LOCK_TIMEOUT_S`` or 3600; 0 fails at once) bounds the wait.
        """
        if self.read_only:
            raise LakeError(f"the lake at {self.root} was opened read-only")
        if key in self._held:
            yield
            return
        if timeout is None:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "3600"))
        try:
            handle = self._lock_path(key).open("a+")
        except OSError as error:
            raise LakeError(f"cannot lock {key} in the lake at {self.root}: {_os_reason(error)}") from None
        try:
            deadline, told = time.monotonic() + timeout, False
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LakeError(
                            f"partition {key} is being written by another process; wait for it or stop it"
                        ) from None
                    if not told:
                        _LOG.warning("partition %s is being written by another process; waiting for it", key)
                        told = True
                    time.sleep(0.2)
            self._held[key] = handle
            try:
                yield
            finally:
                del self._held[key]
        finally:
            handle.close()

    @contextlib.contextmanager
    def locks(self, keys: Sequence[PartitionKey], timeout: float | None = None) -> Iterator[None]:
        """Hold several partitions' locks (taken in sorted order, so two processes never deadlock)."""
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys), key=str):
                stack.enter_context(self.lock(key, timeout))
            yield

    @contextlib.contextmanager
    def writer(
        self,
        key: PartitionKey,
        schema: pa.Schema,
        config: Mapping[str, Any],
        inputs: Mapping[str, str] | None = None,
    ) -> Iterator[PartitionWriter]:
        """Write one partition in pieces; it is published only if the block exits cleanly.

        ``inputs`` (``{partition: sha256}``, see :meth:`identity`) records what it was computed from.

        >>> with lake.writer(key, schema, config) as out:   # doctest: +SKIP
        ...     for batch in batches:
        ...         out.write(batch)
        """
        self._check_partition_files(key)
        with self.lock(key):
            out = PartitionWriter(self, key, schema, config, inputs)
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
        inputs: Mapping[str, str] | None = None,
    ) -> bool:
        """Publish ``table`` as partition ``key``. Returns False when it was complete and skipped.

        Without ``overwrite``, the check is repeated once the lock is held, so a writer
        that waited for another one skips what that one has just published.
        """
        with self.lock(key):
            if not overwrite and self.is_complete(key, config, inputs):
                return False
            with self.writer(key, table.schema, config, inputs) as out:
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
        """The data file of a complete partition (size and footer checked)."""
        if self._complete_for_reading(key) is None:
            raise LakeError(f"partition {key} is not in the lake at {self.root}; run the stage that writes it first")
        return self.partition_dir(key) / DATA_FILE

    def read(self, key: PartitionKey, columns: list[str] | None = None) -> pa.Table:
        """One complete partition as an Arrow table (without its partition columns), its sha256 checked."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        manifest = self._complete_for_reading(key)
        path = self.partition_dir(key) / DATA_FILE
        if manifest is None:
            raise LakeError(f"partition {key} is not in the lake at {self.root}; run the stage that writes it first")
        try:
            content = path.read_bytes()
        except OSError as error:
            raise LakeError(f"cannot read {path}: {_os_reason(error)}") from None
        if hashlib.sha256(content).hexdigest() != manifest["sha256"]:
            raise LakeError(
                f"corrupt file in lake: {path} (checksum differs from its manifest); "
                f"run `tnb verify --lake {self.root} --repair`"
            )
        try:
            return pq.read_table(pa.BufferReader(content), columns=columns)
        except (pa.ArrowInvalid, OSError) as error:
            raise LakeError(f"corrupt file in lake: {path} ({error})") from None

    def scan(self, table: str) -> pl.LazyFrame:
        """A lazy Polars scan of a whole table, partition keys as columns (sizes and footers checked)."""
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

    def read_layer(self, model: str, site: str, layer: int, include_special: bool = False) -> np.ndarray:
        """One layer's activations as a float32 matrix of shape (n_tokens, n_neurons), rows in ``pos`` order.

        Rows of special tokens (``special``: a model's ``[CLS]``, ``[SEP]`` or BOS) are left
        out unless ``include_special`` (see :meth:`read_layer_rows`).
        """
        return self.read_layer_rows(model, site, layer, include_special)[0]

    def read_layer_rows(
        self, model: str, site: str, layer: int, include_special: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer's activations and the stream position of each row.

        Returns
        -------
        matrix : ndarray of shape (n_rows, n_neurons), float32
            The content positions in ``pos`` order: the matrix every stage clusters. With
            ``include_special``, every row the model was fed, in the order it saw them
            (by ``seq_id``, then ``wrapped_pos``), special tokens included.
        pos : ndarray of shape (n_rows,), int32
            ``pos`` of each row; -1 on a special row.

        A partition written before special rows were stored (no ``special`` column) has
        content rows only, and reads the same.
        """
        import numpy as np

        key = partition_key("activations", model=model, site=site, layer=layer)
        table = self.read(key)
        values = act_values(table)
        width = values.shape[1]
        pos = table.column("pos").fill_null(-1).to_numpy().astype(np.int32, copy=False)
        if "special" in table.schema.names and include_special:
            seq_id, wrapped_pos = (table.column(name).to_numpy() for name in ("seq_id", "wrapped_pos"))
            order = np.lexsort((wrapped_pos, seq_id))
        else:
            if "special" in table.schema.names:
                content = np.flatnonzero(~table.column("special").to_numpy(zero_copy_only=False))
                order = content[np.argsort(pos[content], kind="stable")]
            else:
                order = np.argsort(pos, kind="stable")
        if order.size == pos.size and np.array_equal(order, np.arange(pos.size)):
            return values.astype(np.float32, copy=False), pos
        matrix = np.empty((order.size, width), dtype=np.float32)
        for start in range(0, order.size, _READ_CHUNK_ROWS):  # no stored-dtype copy of the whole layer
            matrix[start : start + _READ_CHUNK_ROWS] = values[order[start : start + _READ_CHUNK_ROWS]]
        return matrix, pos[order]


def tables(root: str | os.PathLike[str]) -> dict[str, pl.LazyFrame]:
    """Every lake table as a Polars LazyFrame, by name, for notebooks (see :func:`tnb.query.tables`)."""
    from tnb.query import tables as query_tables  # tnb.query builds on this module

    return query_tables(root)
