"""The bicluster stage: one lake partition of activations in, its labels and metrics out.

This is the pure-library half of ``flows/bicluster.py``: no Prefect here. One call
handles one (model, site, layer) partition:

1. read the layer's content rows and their ``pos`` (:meth:`tnb.lake.Lake.read_layer_rows`;
   rows of special tokens such as ``[CLS]`` are left out);
2. leave out the first ``drop_first`` positions of every sequence (their ``seq_pos``
   comes from the ``tokens`` table of the stream the ``models`` table links the model to);
3. prepare it (|z| per neuron, :func:`tnb.prepare.prepare`);
4. run the grid search (:func:`tnb.bicluster.grid_search`);
5. write ``labels`` then ``metrics`` through the lake's atomic writer.

The partition's config (every parameter below plus the code version) is stored in each
partition's manifest, and so is the identity (sha256) of what it was computed from: the
activations partition, plus the ``models`` and ``tokens`` partitions when ``drop_first``
reads them (:func:`input_identity`). A partition whose ``metrics`` and ``labels`` are
both complete with the same config and the same inputs is skipped; one whose inputs
changed since (a re-extraction) is *stale* and redone; one made with another config is
an error (the lake refuses to mix them) unless ``overwrite``. ``metrics`` is written
last, so a crash after ``labels`` leaves ``metrics`` missing and the partition is redone
on the next run. Everything is seeded, so a redo gives the same numbers (``seconds`` aside).

Both outputs' locks are held from the check to the publish, so a second run on the same
layer waits for the first, then skips it (same config) or fails naming the config it
finds (another config), and never reports "written" for data it did not write.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tnb import __version__
from tnb.errors import LakeError
from tnb.lake import Lake, PartitionKey, PartitionValue, partition_key
from tnb.params import INPUTS, METHODS, NULLS, SELECTION_RULES, STATISTICS, BiclusterParams, StageError
from tnb.schemas import LABELS, METRICS, act_layout

__all__ = [
    "INPUTS",
    "METHODS",
    "NULLS",
    "SELECTION_RULES",
    "STATISTICS",
    "StageError",
    "BiclusterParams",
    "PartitionOutcome",
    "bicluster_partition",
    "drop_first_mask",
    "input_identity",
    "is_done",
    "layer_partitions",
    "output_keys",
    "partition_state",
]

@dataclass(frozen=True)
class PartitionOutcome:
    """What :func:`bicluster_partition` did for one layer."""

    model: str
    site: str
    layer: int
    status: str  # "written" or "skipped"
    seconds: float  # wall time of the call
    n_tokens: int = 0
    n_neurons: int = 0
    selected: tuple[int, int] | None = None  # (row_k, col_k) of the selected point, when written
    reason: str = ""  # why it was written: "missing", "stale" (its inputs changed) or "overwrite"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_keys(model: str, site: str, layer: int, method: str, drop_first: int) -> tuple[PartitionKey, PartitionKey]:
    """The ``labels`` and ``metrics`` partitions one layer's biclustering writes."""
    values: dict[str, PartitionValue] = {
        "model": model, "site": site, "layer": layer, "method": method, "drop_first": drop_first
    }
    return partition_key("labels", **values), partition_key("metrics", **values)


def layer_partitions(
    lake: Lake,
    models: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> list[tuple[str, str, int]]:
    """Every complete activations partition, as (model, site, layer), filtered and sorted.

    Raises
    ------
    LakeError
        When nothing matches (naming what the lake has), or a named model has no activations.
    """
    found = [
        (str(v["model"]), str(v["site"]), int(v["layer"]))
        for v in (key.as_dict() for key in lake.partitions("activations"))
    ]
    if models:
        missing = sorted(set(models) - {m for m, _, _ in found})
        if missing:
            have = sorted({m for m, _, _ in found}) or "none"
            raise LakeError(f"no activations for model(s) {missing} in {lake.root} (it has {have}); run extract first")
        found = [p for p in found if p[0] in set(models)]
    if sites:
        found = [p for p in found if p[1] in set(sites)]
    if layers is not None:
        found = [p for p in found if p[2] in set(layers)]
    if not found:
        raise LakeError(
            f"no activations partitions in {lake.root} match models={list(models or [])} sites={list(sites or [])} "
            f"layers={None if layers is None else list(layers)}; run extract first"
        )
    return sorted(found)


def _seq_pos_of(lake: Lake, model: str, pos: np.ndarray) -> np.ndarray:
    """``seq_pos`` of each activation row, from the token stream the model is aligned to."""
    models_table = lake.read(partition_key("models", model=model), columns=["stream"])
    stream = models_table.column("stream")[0].as_py()
    tokens = lake.read(partition_key("tokens", stream=stream), columns=["pos", "seq_pos"])
    token_pos = tokens.column("pos").to_numpy()
    seq_pos = tokens.column("seq_pos").to_numpy()
    order = np.argsort(token_pos, kind="stable")
    token_pos, seq_pos = token_pos[order], seq_pos[order]
    where = np.searchsorted(token_pos, pos)
    if np.any(where >= token_pos.size) or np.any(token_pos[np.minimum(where, token_pos.size - 1)] != pos):
        raise LakeError(f"activations of {model} have positions missing from token stream {stream}; re-run extract")
    return seq_pos[where]


def drop_first_mask(seq_pos: np.ndarray, drop_first: int) -> np.ndarray:
    """Rows to keep: those at position ``drop_first`` or later in their sequence.

    >>> drop_first_mask(np.array([0, 1, 2, 0, 1]), 1).tolist()
    [False, True, True, False, True]
    """
    return np.asarray(seq_pos) >= drop_first


def _read_matrix(lake: Lake, model: str, site: str, layer: int, drop_first: int) -> tuple[np.ndarray, np.ndarray]:
    """The layer as (matrix of shape (n_kept, n_neurons), pos of each kept row)."""
    matrix, pos = lake.read_layer_rows(model, site, layer)
    if drop_first:
        keep = drop_first_mask(_seq_pos_of(lake, model, pos), drop_first)
        matrix, pos = matrix[keep], pos[keep]
    return matrix, pos.astype(np.int32)


def _metrics_table(results: Sequence[Any]) -> pa.Table:
    rows = [{**result.metrics_row(), "code_version": __version__} for result in results]
    return pa.Table.from_pylist(rows, schema=METRICS)


def _labels_table(results: Sequence[Any], pos: np.ndarray) -> pa.Table:
    pieces = [pa.table(result.labels_columns(pos), schema=LABELS) for result in results]
    return pa.concat_tables(pieces).combine_chunks()


def input_identity(lake: Lake, model: str, site: str, layer: int, drop_first: int) -> dict[str, str]:
    """``{partition: sha256}`` of every lake partition a layer's biclustering reads."""
    identity = lake.identity(partition_key("activations", model=model, site=site, layer=layer))
    if drop_first:
        models_key = partition_key("models", model=model)
        identity.update(lake.identity(models_key))
        stream = lake.read(models_key, columns=["stream"]).column("stream")[0].as_py()
        identity.update(lake.identity(partition_key("tokens", stream=stream)))
    return identity


def partition_state(lake: Lake, model: str, site: str, layer: int, params: BiclusterParams) -> str:
    """``"complete"``, ``"stale"`` (its inputs changed since) or ``"missing"``: a layer's labels and metrics.

    Raises
    ------
    LakeError
        When either was made with another config.
    """
    config = params.config()
    inputs = input_identity(lake, model, site, layer, params.drop_first)
    labels_key, metrics_key = output_keys(model, site, layer, params.method, params.drop_first)
    # both checked, so an output made with another config is always reported
    states = {lake.state(labels_key, config, inputs), lake.state(metrics_key, config, inputs)}
    if states == {"complete"}:
        return "complete"
    return "stale" if "stale" in states else "missing"


def is_done(lake: Lake, model: str, site: str, layer: int, params: BiclusterParams) -> bool:
    """Whether a layer's ``labels`` and ``metrics`` are both complete with ``params`` and current inputs.

    Raises
    ------
    LakeError
        When either was made with another config.
    """
    return partition_state(lake, model, site, layer, params) == "complete"


def bicluster_partition(
    lake: Lake,
    model: str,
    site: str,
    layer: int,
    params: BiclusterParams | None = None,
    *,
    overwrite: bool = False,
    null_values: np.ndarray | None = None,
) -> PartitionOutcome:
    """Bicluster one layer over the whole grid and publish its ``labels`` and ``metrics``.

    Parameters
    ----------
    lake : Lake
    model, site, layer
        The activations partition to read.
    params : BiclusterParams, optional
        Grid, method, permutations, statistic, selection rule, seed, drop_first (defaults:
        the study's grid {6, 9, 12}^2, 1,000 permutations, selection by Z, seed 0, drop_first 0).
    overwrite : bool
        Redo the partition even when it is complete.
    null_values : ndarray of shape (n_null, n_points), optional
        The null's draws computed elsewhere (:func:`null_chunk` tasks); default: computed here.

    Returns
    -------
    PartitionOutcome
        ``status="skipped"`` when both output partitions were complete with this config and
        these inputs; else ``"written"``, with ``reason`` "missing", "stale" or "overwrite".

    Raises
    ------
    LakeError
        The activations partition is missing, or the outputs were made with another config.
    StageError
        The layer has too few rows or neurons for the grid (after ``drop_first``).
    """
    params = params or BiclusterParams()
    start = time.perf_counter()
    labels_key, metrics_key = output_keys(model, site, layer, params.method, params.drop_first)
    # held from the check to the publish: a concurrent run on this layer waits, then skips or fails
    with lake.locks([labels_key, metrics_key]):
        state = "overwrite" if overwrite else partition_state(lake, model, site, layer, params)
        if state == "complete":
            return PartitionOutcome(model, site, layer, "skipped", time.perf_counter() - start)
        outcome = _bicluster_and_publish(lake, model, site, layer, params, null_values)
    return PartitionOutcome(
        model, site, layer, "written", time.perf_counter() - start, reason=state, **outcome
    )


def _bicluster_and_publish(
    lake: Lake, model: str, site: str, layer: int, params: BiclusterParams, null_values: np.ndarray | None
) -> dict[str, Any]:
    from tnb.bicluster import grid_search
    from tnb.prepare import prepare

    config = params.config()
    labels_key, metrics_key = output_keys(model, site, layer, params.method, params.drop_first)
    inputs = input_identity(lake, model, site, layer, params.drop_first)
    matrix, pos = _checked_matrix(lake, model, site, layer, params)
    try:
        results = grid_search(
            prepare(matrix, params.input), params.row_ks, params.col_ks, null_values=null_values,
            **params.grid_kwargs(),
        )
    except ValueError as error:
        raise StageError(f"{model} {site} layer {layer}: {error}") from None
    if input_identity(lake, model, site, layer, params.drop_first) != inputs:
        raise LakeError(f"the activations of {model} {site} layer {layer} changed while it was biclustered; re-run")
    # labels first: metrics is the partition's completion marker for the pipeline
    lake.write_table(labels_key, _labels_table(results, pos), config, overwrite=True, inputs=inputs)
    lake.write_table(metrics_key, _metrics_table(results), config, overwrite=True, inputs=inputs)
    chosen = next(r for r in results if r.selected)
    return {"n_tokens": int(matrix.shape[0]), "n_neurons": int(matrix.shape[1]),
            "selected": (chosen.row_k, chosen.col_k)}


def check_grid_fits(lake: Lake, model: str, site: str, layer: int, params: BiclusterParams) -> None:
    """Fail before any work when a layer is too small for the grid (from its manifest and footer only)."""
    import pyarrow.parquet as pq

    key = partition_key("activations", model=model, site=site, layer=layer)
    manifest = lake.manifest(key)
    if manifest is None:  # layer_partitions lists complete partitions: this one went away since
        raise LakeError(f"{key} is missing or incomplete in {lake.root}; re-run extract")
    rows = int(manifest["rows"])
    schema = pq.read_schema(lake.path(key))
    layout = act_layout(schema.field("act"))
    if layout is None:
        raise LakeError(f"{key} in {lake.root} has no activations column act (type {schema.field('act').type}); re-run extract")
    width = layout[0]
    if "special" in schema.names:  # rows of special tokens are not clustered
        special = pq.read_table(lake.path(key), columns=["special"]).column("special")
        rows -= int(np.count_nonzero(special.to_numpy(zero_copy_only=False)))
    if rows <= max(params.row_ks) or width <= max(params.col_ks):
        raise StageError(
            f"{model} {site} layer {layer} has {rows} tokens x {width} neurons; the grid needs more than "
            f"{max(params.row_ks)} tokens and {max(params.col_ks)} neurons"
        )


def _checked_matrix(lake: Lake, model: str, site: str, layer: int, params: BiclusterParams):
    matrix, pos = _read_matrix(lake, model, site, layer, params.drop_first)
    if matrix.shape[0] <= max(params.row_ks) or matrix.shape[1] <= max(params.col_ks):
        raise StageError(
            f"{model} {site} layer {layer} has {matrix.shape[0]} tokens x {matrix.shape[1]} neurons after "
            f"drop_first={params.drop_first}; the grid needs more than {max(params.row_ks)} tokens and "
            f"{max(params.col_ks)} neurons"
        )
    return matrix, pos


def null_chunk(
    lake: Lake, model: str, site: str, layer: int, params: BiclusterParams, draws: Sequence[int]
) -> np.ndarray:
    """The null statistics of draws ``draws`` of one layer (one Dask task of the null).

    Draw ``d`` depends on the seed and ``d`` only, so any split of the draws
    gives what :func:`bicluster_partition` would compute by itself.

    Returns
    -------
    ndarray of shape (len(draws), n_points)
    """
    from tnb.nulls import null_statistics
    from tnb.prepare import prepare

    matrix, _ = _checked_matrix(lake, model, site, layer, params)
    kwargs = {key: value for key, value in params.extra.items() if key in _NULL_KWARGS}
    try:
        return null_statistics(
            prepare(matrix, params.input), params.row_ks, params.col_ks, draws=draws, random_state=params.seed,
            null=params.null, statistic=params.statistic, method=params.method, **kwargs,
        )
    except ValueError as error:
        raise StageError(f"{model} {site} layer {layer}: {error}") from None


_NULL_KWARGS = frozenset({"normalization", "n_components", "n_best", "svd_method", "n_svd_vecs", "n_init"})
