"""Polars SQL over the lake: tables registered by name as lazy scans, parameters bound as data.

Every lake table is registered under its own name (``tokens``, ``models``, ``labels``,
``metrics``, ``activations``), plus two helper tables:

``params``
    One row holding the query's parameters (``model``, ``site``, ``layer``, ``method``,
    ``drop_first``, ``row_k``, ``col_k``, ``top_n``, ``min_count``, ``shrink``, ``artifact_share``).
    Queries read them with ``CROSS JOIN params AS p``; a NULL parameter means "all".
    Parameters are *values in a table*, never text pasted into SQL, so a model named
    ``x' OR '1'='1`` is just a string that matches no model.
``activation_cells``
    One layer's activations in long form (``pos, neuron, value``), for the partition named
    by ``params.model/site/layer``; content positions only (no special tokens); registered
    only when a statement mentions it.
``special_positions``
    Where each model was fed special tokens (``[CLS]``, ``[SEP]``, a BOS): ``model, stream,
    seq_id, wrapped_pos, token_id, token`` (:func:`special_positions`); registered only when
    a statement mentions it.
``topicality``
    Every layer's selected token clusters scored against the document and the token id
    (:func:`tnb.topicality.lake_topicality`, every drop_first); computed only when a
    statement mentions it.

Statements are Polars SQL, which can also *read files and URLs* through its table
functions (``read_csv('/etc/passwd')``, ``read_parquet('https://...')``) with the rights
of the user who runs it. For SQL from a source you do not trust, pass ``lake_only=True``
(``tnb query --lake-only``): a statement that calls a table function is refused, so it
can read only the tables registered here. The lake is opened read-only either way.

>>> run_query("lake", "top_tokens", params={"model": "minilm", "layer": 3})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import polars as pl

import tnb
from tnb.errors import LakeError, TnbError
from tnb.keys import ACT_DTYPE_KEY, ACT_WIDTH_KEY, PARTITION_KEYS
from tnb.lake import DATA_FILE, Lake, partition_key
from tnb.query_params import PARAMS


class QueryError(TnbError):
    """A query file is missing, a parameter is unknown, or the SQL does not run."""


_POLARS_TYPES = {str: pl.String, int: pl.Int64, float: pl.Float64}

#: Tables registered from the lake (activations only through ``activation_cells``).
LAKE_TABLES = ("tokens", "models", "labels", "metrics")

Format = Literal["table", "csv", "parquet"]


def sql_dir() -> Path:
    """The bundled queries: ``tnb/sql`` when installed from a wheel, else the checkout's ``sql/``.

    The repository keeps ``sql/`` beside ``tnb/``; a wheel ships it inside the package
    (``pyproject.toml``), so an installed tnb never reads a ``sql/`` it did not bring.
    """
    package = Path(tnb.__file__).resolve().parent
    candidates = [package / "sql", package.parent / "sql"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise QueryError(f"no sql/ directory found (looked in {', '.join(str(c) for c in candidates)})")


def list_queries() -> list[str]:
    """Names of the bundled queries (``sql/*.sql`` without the suffix)."""
    return sorted(path.stem for path in sql_dir().glob("*.sql"))


def resolve_sql(query: str) -> tuple[str, str]:
    """Turn a file path, a bundled query name or an inline statement into ``(name, sql text)``.

    A string containing whitespace is an inline statement. Otherwise it is a path to a
    ``.sql`` file, or the name of one in ``sql/`` (``top_tokens`` or ``top_tokens.sql``).
    """
    text = query.strip()
    if not text:
        raise QueryError("empty query; give a .sql file, a name in sql/ or a SELECT statement")
    if re.search(r"\s", text):
        return "inline", text
    path = Path(text).expanduser()
    if path.is_file():
        return path.stem, path.read_text()
    name = text[:-4] if text.endswith(".sql") else text
    bundled = sql_dir() / f"{name}.sql"
    if "/" not in name and bundled.is_file():
        return name, bundled.read_text()
    raise QueryError(f"no query {query!r}: not a file, and sql/ has {list_queries()}")


def params_frame(params: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The one-row ``params`` table: defaults overridden by ``params`` (``None`` = all)."""
    given = dict(params or {})
    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise QueryError(f"unknown query parameter(s) {unknown}; parameters are {sorted(PARAMS)}")
    row = {}
    for name, (kind, default) in PARAMS.items():
        value = given.get(name, default)
        if value is not None:
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise QueryError(f"parameter {name} should be {kind.__name__}. Got {value!r} instead.") from None
        row[name] = value
    return pl.DataFrame([row], schema={name: _POLARS_TYPES[kind] for name, (kind, _) in PARAMS.items()})


def parse_param(text: str) -> tuple[str, Any]:
    """Parse ``name=value`` from the command line; ``name=`` or ``name=all`` means NULL (all)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or name not in PARAMS:
        raise QueryError(f"--param should be NAME=VALUE with NAME in {sorted(PARAMS)}. Got {text!r} instead.")
    raw = raw.strip()
    if raw in ("", "all", "ALL", "null", "NULL"):
        return name, None
    kind = PARAMS[name][0]
    try:
        return name, kind(raw)
    except ValueError:
        raise QueryError(f"parameter {name} should be {kind.__name__}. Got {raw!r} instead.") from None


def _empty_scan(table: str) -> pl.LazyFrame:
    from tnb.schemas import FIXED_SCHEMAS

    frame = pl.from_arrow(FIXED_SCHEMAS[table].empty_table())
    assert isinstance(frame, pl.DataFrame)
    keys = {name: (pl.Int64 if name in ("layer", "drop_first") else pl.String) for name in PARTITION_KEYS[table]}
    return frame.with_columns(*(pl.lit(None, dtype).alias(name) for name, dtype in keys.items())).lazy()


def _scan(lake: Lake, table: str) -> pl.LazyFrame:
    """A table's lazy scan with integer partition keys as Int64 (stable across hive inference)."""
    try:
        frame = lake.scan(table)
    except LakeError as error:
        if "is empty" not in str(error):
            raise
        return _empty_scan(table)
    ints = [name for name in PARTITION_KEYS[table] if name in ("layer", "drop_first")]
    strings = [name for name in PARTITION_KEYS[table] if name not in ints]
    return frame.with_columns(
        *(pl.col(name).cast(pl.Int64) for name in ints), *(pl.col(name).cast(pl.String) for name in strings)
    )


def tables(lake: Lake | str | os.PathLike[str]) -> dict[str, pl.LazyFrame]:
    """The lake's tables as Polars LazyFrames, for notebooks.

    Returns
    -------
    dict of str to LazyFrame
        ``tokens``, ``models``, ``labels`` and ``metrics``; an empty table has the right
        columns and no rows.
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake, read_only=True)
    return {name: _scan(lake, name) for name in LAKE_TABLES}


def activation_cells(lake: Lake, model: str, site: str, layer: int) -> pl.LazyFrame:
    """One layer's activations as rows ``(pos, neuron, value)``, value as Float64."""
    key = partition_key("activations", model=model, site=site, layer=layer)
    if lake.manifest(key) is None:
        raise QueryError(f"partition {key} is not in the lake at {lake.root}; extract it first")
    path = lake.partition_dir(key) / DATA_FILE
    frame = pl.scan_parquet(path)
    schema = frame.collect_schema()
    if "special" in schema.names():  # rows of special tokens have no pos: not content
        frame = frame.filter(~pl.col("special"))
    if schema["act"] == pl.Binary:  # each row's floats as bytes (tnb.schemas.activations_schema)
        metadata = pl.read_parquet_metadata(path)
        dtype, width_text = metadata.get(ACT_DTYPE_KEY), metadata.get(ACT_WIDTH_KEY, "")
        if dtype not in ("float16", "float32") or not width_text.isdigit():
            raise QueryError(f"partition {key} in {path} does not say how its act bytes read ({ACT_DTYPE_KEY}, {ACT_WIDTH_KEY})")
        width = int(width_text)
        value_type = pl.Float16 if dtype == "float16" else pl.Float32
        frame = frame.with_columns(pl.col("act").bin.reinterpret(dtype=pl.Array(value_type, width), endianness="little"))
    return (
        frame.with_columns(
            neuron=pl.int_ranges(0, pl.col("act").arr.len(), dtype=pl.Int64),
            value=pl.col("act").arr.to_list(),
        )
        .explode(["neuron", "value"])
        .select(pl.col("pos").cast(pl.Int64), "neuron", pl.col("value").cast(pl.Float64))
    )


_SPECIAL_SCHEMA: dict[str, Any] = {
    "model": pl.String, "stream": pl.String, "seq_id": pl.Int32, "wrapped_pos": pl.Int32,
    "token_id": pl.Int32, "token": pl.String,
}


def special_positions(lake: Lake | str | os.PathLike[str]) -> pl.LazyFrame:
    """Where each model was fed special tokens, one row per special position of every sequence.

    Returns
    -------
    LazyFrame with columns ``model, stream, seq_id, wrapped_pos, token_id, token``
        Sorted by model, sequence and position. ``wrapped_pos`` is the position in the
        wrapped sequence the model saw (a content token of ``seq_pos`` p sits at ``p`` plus
        the number of leading special tokens).
        Read from the first activations partition of each model that stores special rows
        (a model's partitions share one wrapping); a model fed none (GPT-2 as the study
        ran it) or extracted before they were stored has no rows.
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake, read_only=True)
    frames, done = [], set()
    for key in lake.partitions("activations"):
        model = str(key.as_dict()["model"])
        if model in done:
            continue
        scan = pl.scan_parquet(lake.partition_dir(key) / DATA_FILE)
        if "special" not in scan.collect_schema().names():
            continue
        done.add(model)
        frames.append(
            scan.filter(pl.col("special")).select(pl.lit(model).alias("model"), "seq_id", "wrapped_pos", "token_id", "token")
        )
    if not frames:
        return pl.DataFrame(schema=_SPECIAL_SCHEMA).lazy()
    streams = _scan(lake, "models").select("model", "stream")
    # a join does not keep row order: sorted, so that the view reads the same every time
    joined = pl.concat(frames).join(streams, on="model", how="left").select(*_SPECIAL_SCHEMA)
    return joined.cast(pl.Schema(_SPECIAL_SCHEMA)).sort("model", "seq_id", "wrapped_pos")


def context(lake: Lake | str | os.PathLike[str], sql: str = "", params: Mapping[str, Any] | None = None) -> pl.SQLContext:
    """A SQLContext with the lake tables, ``params`` and (if ``sql`` needs it) ``activation_cells``."""
    lake = lake if isinstance(lake, Lake) else Lake(lake, read_only=True)
    bound = params_frame(params)
    frames: dict[str, pl.LazyFrame] = dict(tables(lake))
    frames["params"] = bound.lazy()
    if re.search(r"\bactivation_cells\b", sql, re.IGNORECASE):
        row = bound.row(0, named=True)
        missing = [name for name in ("model", "site", "layer") if row[name] is None]
        if missing:
            raise QueryError(f"this query reads activations; give --param for {', '.join(missing)}")
        frames["activation_cells"] = activation_cells(lake, row["model"], row["site"], row["layer"])
    if re.search(r"\bspecial_positions\b", sql, re.IGNORECASE):
        frames["special_positions"] = special_positions(lake)
    if re.search(r"\btopicality\b", sql, re.IGNORECASE):
        from tnb.topicality import lake_topicality  # it reads the lake through this module

        row = bound.row(0, named=True)
        frames["topicality"] = lake_topicality(
            lake, site=row["site"], method=row["method"], drop_first=row["drop_first"], model=None
        ).lazy()
    return pl.SQLContext(frames=frames)


_LITERAL = re.compile(r"'(?:[^']|'')*'")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_TABLE_FUNCTION = re.compile(r"\b(read_\w+)\s*\(", re.IGNORECASE)


def check_lake_only(sql: str) -> None:
    """Refuse a statement that calls a table function (``read_csv(...)`` and kin: files and URLs)."""
    bare = _COMMENT.sub(" ", _LITERAL.sub("''", sql))
    bare = re.sub(r'["`\[\]]', "", bare)  # "read_csv"(...) is the same call
    found = _TABLE_FUNCTION.search(bare)
    if found:
        raise QueryError(
            f"--lake-only: the statement calls {found.group(1)}(), which reads files or URLs outside the lake; "
            f"only the tables {', '.join((*LAKE_TABLES, 'params', 'activation_cells', 'special_positions', 'topicality'))} may be read"
        )


def run_query(
    lake: Lake | str | os.PathLike[str], query: str, params: Mapping[str, Any] | None = None, lake_only: bool = False
) -> pl.DataFrame:
    """Run a bundled query, a ``.sql`` file or an inline statement against a lake.

    Parameters
    ----------
    lake : Lake or path
    query : str
        ``"top_tokens"``, ``"sql/top_tokens.sql"``, a path, or ``"SELECT ..."``.
    params : mapping, optional
        Values for the ``params`` table (see :data:`PARAMS`); bound as data, never as SQL text.
    lake_only : bool
        Refuse statements that read anything but the registered tables (:func:`check_lake_only`).
    """
    name, sql = resolve_sql(query)
    if lake_only:
        check_lake_only(sql)
    ctx = context(lake, sql, params)
    try:
        return ctx.execute(sql, eager=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001  (Polars errors, OSError from a table function, a Rust panic)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QueryError(f"query {name} failed: {first}") from None


def write_result(frame: pl.DataFrame, fmt: Format = "table", out: str | os.PathLike[str] | None = None) -> str | None:
    """Print-ready text for ``table``/``csv`` without ``out``; otherwise write ``out`` and return None."""
    if fmt not in ("table", "csv", "parquet"):
        raise QueryError(f"format should be 'table', 'csv' or 'parquet'. Got {fmt!r} instead.")
    if fmt == "parquet" and out is None:
        raise QueryError("--format parquet needs --out PATH")
    if out is not None:
        path = Path(out).expanduser()
        if path.is_dir():
            raise QueryError(f"--out {path} is a directory; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "parquet":
                frame.write_parquet(path)
            elif fmt == "csv":
                frame.write_csv(path)
            else:
                path.write_text(_as_table(frame) + "\n")
        except OSError as error:
            raise QueryError(f"cannot write {path}: {error.strerror or error}") from None
        return None
    return frame.write_csv() if fmt == "csv" else _as_table(frame)


def _as_table(frame: pl.DataFrame) -> str:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=400, tbl_hide_dataframe_shape=True):
        return str(frame)
