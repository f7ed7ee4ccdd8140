"""The study's figures, each from one function a test calls (matplotlib, Agg; PNG and SVG).

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure`
writes it as ``<base>.png`` and ``<base>.svg`` and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from tnb.families import Families  # noqa: E402

FORMATS = ("png", "svg")


def save_figure(fig: Figure, base: str | os.PathLike[str], dpi: int = 120) -> list[Path]:
    """Write ``fig`` as ``base.png`` and ``base.svg`` (directories created) and close it."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = base.with_name(f"{base.name}.{fmt}")
        fig.savefig(path, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths


TWIN_SUFFIX = "-untrained"
PARTS = (("r2_rows", ":", "rows"), ("r2_cols", "-.", "cols"), ("r2_interaction", "-", "interaction"))


def _series_name(row: dict, varying: Sequence[str]) -> str:
    parts = [str(row["model"])]
    parts += [f"{name}={row[name]}" for name in varying]
    return " ".join(parts)


def _series(curves: pl.DataFrame) -> list[tuple[str, bool, str, pl.DataFrame]]:
    """(name, is_twin, colour, rows by depth) per line; a twin takes its trained model's colour."""
    varying = [name for name in ("site", "method", "drop_first") if name in curves.columns and curves[name].n_unique() > 1]
    keys = ["model", *varying]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(curves.sort([*keys, "depth"]).group_by(keys, maintain_order=True))

    def base(row: dict) -> str:  # the series' name with the twin's model name mapped to its model's
        return _series_name({**row, "model": str(row["model"]).removesuffix(TWIN_SUFFIX)}, varying)

    bases = sorted({base(part.row(0, named=True)) for _, part in groups})
    found = []
    for _, part in groups:
        row = part.row(0, named=True)
        twin = str(row["model"]).endswith(TWIN_SUFFIX)
        color = colors[bases.index(base(row)) % len(colors)]
        found.append((_series_name(row, varying), twin, color, part.sort("depth")))
    return found


def _legend_beside(axis, fontsize: float) -> None:
    """The panel's legend to its right, outside the plot, so that it hides no curve."""
    axis.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def emergence_figure(curves: pl.DataFrame) -> Figure:
    """Four panels per depth, each with what it is compared against; an untrained twin dashed beside its model.

    (a) the interaction R^2 of each layer's selected point with its null band (null mean to
    95th percentile of the refits); (b) the R^2 parts (token-cluster rows, neuron-cluster
    columns, interaction); (c) the study's mean specialization with its Gaussian-noise
    baseline; (d) spec_mi, whose shuffle expectation is 0. R^2 and specialization axes
    start at 0, so that a small difference is not magnified.

    Parameters
    ----------
    curves : DataFrame
        Rows of ``sql/emergence_curves.sql``.
    """
    if curves.is_empty():
        raise ValueError("curves is empty: no selected grid points in the metrics table")
    fig, axes = plt.subplots(2, 2, figsize=(15, 8), constrained_layout=True)
    ax_obs, ax_parts, ax_spec, ax_mi = axes.ravel()
    for name, twin, color, part in _series(curves):
        style = {"color": color, "ls": "--" if twin else "-", "marker": "x" if twin else "o", "ms": 4}
        depth = part["depth"].to_numpy()
        ax_obs.plot(depth, part["observed"], label=f"{name} observed", **style)
        ax_obs.fill_between(
            depth, part["null_mean"].to_numpy(), part["null_q95"].to_numpy(), color=color, alpha=0.15 if twin else 0.3,
            label=f"{name} null mean..q95",
        )
        for column, line, label in PARTS:
            ax_parts.plot(depth, part[column], color=color, ls=line, marker="x" if twin else "o", ms=3,
                          alpha=0.55 if twin else 1.0, label=f"{name} {label}")
        ax_spec.plot(depth, part["spec_mean"], label=f"{name} spec_mean", **style)
        ax_spec.plot(depth, part["spec_mean_noise"], color=color, ls=":", lw=1, label=f"{name} Gaussian noise")
        ax_mi.plot(depth, part["spec_mi"], label=name, **style)
    first = curves.row(0, named=True)
    null_text = f"null: {first['null']}, {first['n_null']} refits" if "null" in curves.columns else "null"
    statistic = first.get("statistic") or "statistic"
    ax_obs.set(ylabel=f"{statistic} (selected point)", title=f"Observed {statistic} vs its null band ({null_text})")
    ax_parts.set(ylabel="share of variance (R² part)", title="Block-mean R² = rows + cols + interaction")
    ax_spec.set(ylabel="mean specialization 1 - H/log T",
                title="Specialization vs the same measure on Gaussian noise (dotted)")
    ax_mi.set(ylabel="spec_mi (MI minus shuffle expectation)", title="Neuron-cluster information (0 = shuffled labels)")
    ax_mi.axhline(0.0, color="black", lw=0.8)
    for axis in (ax_obs, ax_parts, ax_spec, ax_mi):
        axis.set_xlim(-0.02, 1.02)
        axis.set_xlabel("depth (layer / n_layers); dashed: untrained twin")
        axis.grid(alpha=0.3)
        _legend_beside(axis, fontsize=6)
    for axis in (ax_obs, ax_parts, ax_spec):
        axis.set_ylim(bottom=0.0)  # start from the baseline: no autoscaled magnification of noise
    return fig


def topicality_figure(topicality: pl.DataFrame) -> Figure:
    """AMI of each layer's token clusters with the document, beside what token identity alone predicts.

    Parameters
    ----------
    topicality : DataFrame
        Rows of :func:`tnb.topicality.lake_topicality`, with ``depth`` added.
    """
    if topicality.is_empty():
        raise ValueError("topicality is empty: no selected grid points")
    fig, (ax_doc, ax_beyond) = plt.subplots(1, 2, figsize=(15, 4.2), constrained_layout=True)
    for name, twin, color, part in _series(topicality):
        style = {"color": color, "ls": "--" if twin else "-", "marker": "x" if twin else "o", "ms": 4}
        ax_doc.plot(part["depth"], part["ami_doc"], label=f"{name} clusters", **style)
        ax_doc.plot(part["depth"], part["ami_doc_from_token"], color=color, ls=":", lw=1.2,
                    label=f"{name} predicted from token id")
        ax_beyond.plot(part["depth"], part["ami_doc_beyond_token"], label=name, **style)
    ax_doc.set(ylabel="AMI with the document", title="Document information: clusters vs token identity alone (dotted)")
    ax_beyond.set(ylabel="AMI(clusters, doc) - AMI(from token id, doc)",
                  title="Document information beyond token identity (0 = none)")
    ax_beyond.axhline(0.0, color="black", lw=0.8)
    for axis in (ax_doc, ax_beyond):
        axis.set_xlim(-0.02, 1.02)
        axis.set_xlabel("depth (layer / n_layers); dashed: untrained twin")
        axis.grid(alpha=0.3)
        _legend_beside(axis, fontsize=7)
    ax_doc.set_ylim(bottom=min(0.0, float(cast(float, topicality["ami_doc"].min()))))  # a float column's min
    return fig


@dataclass(frozen=True)
class MapImage:
    """What a bicluster map draws: the block-averaged image and where cluster boundaries are.

    Attributes
    ----------
    image : ndarray of shape (n_row_bins, n_col_bins)
        Mean of the (standardized) activations in each bin of sorted rows and columns.
    row_boundaries, col_boundaries : ndarray of int
        Bin index where each cluster after the first starts.
    row_clusters, col_clusters : ndarray of int
        Cluster label of each bin.
    """

    image: np.ndarray
    row_boundaries: np.ndarray
    col_boundaries: np.ndarray
    row_clusters: np.ndarray
    col_clusters: np.ndarray


def _bins(labels: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort items by cluster and cut each cluster into bins of consecutive items.

    Each cluster gets bins in proportion to its size, so no bin straddles a boundary; a small
    cluster gets at least ``max_bins / (4 k)`` bins (or one per item) so it stays visible.
    Returns the sort order, each bin's start offset into it, and each bin's cluster.
    """
    order = np.argsort(labels, kind="stable")
    clusters, sizes = np.unique(labels, return_counts=True)
    scale = min(1.0, max_bins / labels.size)
    least = np.minimum(sizes, max(1, max_bins // (4 * clusters.size)))
    n_bins = np.maximum(least, np.floor(sizes * scale)).astype(int)
    starts, bin_cluster = [], []
    offset = 0
    for cluster, size, count in zip(clusters, sizes, n_bins, strict=True):
        edges = offset + np.linspace(0, size, count + 1).astype(int)[:-1]
        starts.append(edges)
        bin_cluster.append(np.full(count, cluster))
        offset += size
    return order, np.concatenate(starts), np.concatenate(bin_cluster)


def block_average_map(
    matrix: np.ndarray,
    row_labels: np.ndarray,
    col_labels: np.ndarray,
    max_rows: int = 600,
    max_cols: int = 400,
    standardize: bool = True,
) -> MapImage:
    """Sort rows and columns by cluster and average them in bins that respect cluster boundaries.

    Parameters
    ----------
    matrix : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,)
    col_labels : ndarray of shape (n_neurons,)
    max_rows, max_cols : int
        At most about this many bins per axis (every cluster keeps at least one).
    standardize : bool
        z-score each neuron first, so neurons with large offsets do not wash out the rest.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    row_labels, col_labels = np.asarray(row_labels), np.asarray(col_labels)
    if matrix.shape != (row_labels.size, col_labels.size):
        raise ValueError(
            f"matrix of shape {matrix.shape} does not match {row_labels.size} row labels and {col_labels.size} column labels"
        )
    if standardize:
        sd = matrix.std(axis=0)
        matrix = (matrix - matrix.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    row_order, row_starts, row_clusters = _bins(row_labels, max_rows)
    col_order, col_starts, col_clusters = _bins(col_labels, max_cols)
    row_counts = np.diff(np.append(row_starts, row_labels.size))
    col_counts = np.diff(np.append(col_starts, col_labels.size))
    summed = np.add.reduceat(matrix[row_order], row_starts, axis=0)
    summed = np.add.reduceat(summed[:, col_order], col_starts, axis=1)
    image = summed / np.outer(row_counts, col_counts)
    return MapImage(
        image=image,
        row_boundaries=np.flatnonzero(np.diff(row_clusters)) + 1,
        col_boundaries=np.flatnonzero(np.diff(col_clusters)) + 1,
        row_clusters=row_clusters,
        col_clusters=col_clusters,
    )


def bicluster_map_figure(
    matrix: np.ndarray,
    row_labels: np.ndarray,
    col_labels: np.ndarray,
    title: str = "",
    max_rows: int = 600,
    max_cols: int = 400,
    flagged_rows: frozenset[int] = frozenset(),
) -> tuple[Figure, MapImage]:
    """Activations with rows (tokens) and columns (neurons) sorted by cluster, boundaries drawn.

    Readable at 20,000 rows: rows are block-averaged within clusters (:func:`block_average_map`)
    rather than drawn one pixel each; the colour scale is clipped at the 99th percentile of
    |z| so that outlier clusters (first positions) do not flatten the rest.
    ``flagged_rows`` names token clusters to mark (position artifacts) in the margin.
    """
    drawn = block_average_map(matrix, row_labels, col_labels, max_rows, max_cols)
    limit = float(np.percentile(np.abs(drawn.image), 99)) or 1.0
    fig, ax = plt.subplots(figsize=(8, 7), constrained_layout=True)
    shown = ax.imshow(drawn.image, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=-limit, vmax=limit)
    for boundary in drawn.row_boundaries:
        ax.axhline(boundary - 0.5, color="black", lw=0.8)
    for boundary in drawn.col_boundaries:
        ax.axvline(boundary - 0.5, color="black", lw=0.8)
    row_ticks = _cluster_centres(drawn.row_clusters)
    col_ticks = _cluster_centres(drawn.col_clusters)
    ax.set_yticks([centre for centre, _ in row_ticks])
    ax.set_yticklabels(
        [f"{cluster}{' (position)' if cluster in flagged_rows else ''}" for _, cluster in row_ticks], fontsize=7
    )
    ax.set_xticks([centre for centre, _ in col_ticks])
    ax.set_xticklabels([str(cluster) for _, cluster in col_ticks], fontsize=7)
    ax.set(
        xlabel=f"neuron cluster ({len(col_labels)} neurons)",
        ylabel=f"token cluster ({len(row_labels)} tokens)",
        title=title or "Bicluster map",
    )
    fig.colorbar(shown, ax=ax, label="activation (z-scored per neuron, bin mean)")
    return fig, drawn


def _cluster_centres(bin_clusters: np.ndarray) -> list[tuple[float, int]]:
    clusters, first = np.unique(bin_clusters, return_index=True)
    counts = np.unique(bin_clusters, return_counts=True)[1]
    return [(start + count / 2 - 0.5, int(cluster)) for cluster, start, count in zip(clusters, first, counts, strict=True)]


def grid_figure(grid: pl.DataFrame, title: str = "") -> Figure:
    """Heatmaps over the (row_k, col_k) grid of one layer: excess over the null, and Z; the selected point boxed.

    A ``*`` marks points significant after the grid correction (``p_layer <= 0.05``).

    Parameters
    ----------
    grid : DataFrame
        Rows of ``sql/grid_surface.sql`` for one model/site/layer/method/drop_first.
    """
    if grid.is_empty():
        raise ValueError("grid is empty: no metrics for this layer")
    row_ks = sorted(grid["row_k"].unique().to_list())
    col_ks = sorted(grid["col_k"].unique().to_list())
    first = grid.row(0, named=True)
    null_text = f"{first['null']} null, {first['n_null']} refits"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    panels = (("excess", f"{first['statistic']} - null mean"), ("z", f"Z vs {null_text}"))
    for ax, (column, label) in zip(axes, panels, strict=True):
        values = np.full((len(row_ks), len(col_ks)), np.nan)
        stars = np.zeros(values.shape, dtype=bool)
        for row in grid.iter_rows(named=True):
            at = row_ks.index(row["row_k"]), col_ks.index(row["col_k"])
            values[at], stars[at] = row[column], bool(row["significant"])
        shown = ax.imshow(values, origin="lower", cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.3g}{'*' if stars[i, j] else ''}", ha="center", va="center", fontsize=8, color="white")
        for row in grid.filter(pl.col("selected")).iter_rows(named=True):
            i, j = row_ks.index(row["row_k"]), col_ks.index(row["col_k"])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(col_ks)), [str(k) for k in col_ks])
        ax.set_yticks(range(len(row_ks)), [str(k) for k in row_ks])
        ax.set(xlabel="col_k (neuron clusters)", ylabel="row_k (token clusters)", title=label)
        fig.colorbar(shown, ax=ax, label=label)
    note = ("* p_layer <= 0.05 (corrected for the grid); red box: selected point; colours autoscaled to this layer's "
            "range, so read the numbers")
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=9)
    return fig


def null_figure(
    null_draws: np.ndarray,
    observed: float,
    statistic: str = "r2_interaction",
    title: str = "",
    null_name: str = "null",
    p_layer: float | None = None,
    *,
    z: float | None,
    p: float | None,
) -> Figure:
    """Histogram of the pipeline's null draws with the observed statistic, the null's 95th percentile, Z and p.

    ``z``, ``p`` and ``p_layer`` are the metrics table's, computed by the pipeline from these
    same draws (:mod:`tnb.metrics`); the figure shows them and recomputes nothing.
    """
    null_draws = np.asarray(null_draws, dtype=np.float64)
    if null_draws.size < 2:
        raise ValueError(f"null_draws should hold at least 2 values. Got {null_draws.size} instead.")
    z = float("nan") if z is None else z
    p = float("nan") if p is None else p
    fig, ax = plt.subplots(figsize=(9.5, 4), constrained_layout=True)
    ax.hist(null_draws, bins=min(50, max(10, null_draws.size // 4)), color="0.6",
            label=f"{null_name} ({null_draws.size} draws)")
    ax.axvline(float(np.quantile(null_draws, 0.95)), color="0.3", ls="--", lw=1, label="null 95th percentile")
    corrected = f", p_layer = {p_layer:.3g}" if p_layer is not None else ""
    ax.axvline(observed, color="red", lw=2, label=f"observed {observed:.4g} (Z = {z:.1f}, p = {p:.3g}{corrected})")
    ax.set(xlabel=statistic, ylabel="null draws", title=title or f"{statistic} against the {null_name} null")
    _legend_beside(ax, fontsize=8)
    return fig


def _spread(positions: np.ndarray, gap: float) -> np.ndarray:
    """``positions`` moved as little as this simple pass can so that sorted neighbours are ``gap`` apart."""
    order = np.argsort(positions, kind="stable")
    placed = positions[order].astype(float)
    for index in range(1, placed.size):
        placed[index] = max(placed[index], placed[index - 1] + gap)
    if placed.size:  # centre the moved block on the original positions' mean, so it drifts neither way
        placed += min(0.0, float(positions.mean() - placed.mean()))
    spread = np.empty_like(placed)
    spread[order] = placed
    return spread


def family_flow_figure(families: Families, max_label: int = 40) -> Figure:
    """A flow of token clusters across layers: one panel per model, one colour per family.

    Each layer is a column of boxes (clusters, height by size, grouped by family); links to the
    next layer that count (beat independent labellings and the untrained twin) are drawn with
    width by Jaccard, candidate links that do not count dotted. Labels on the right name each
    family of two or more clusters; clusters in no family are grey.
    """
    clusters = families.clusters
    if clusters.is_empty():
        raise ValueError("no clusters to draw")
    models = sorted(clusters["model"].unique().to_list())
    order = {name: index for index, name in enumerate(families.families["family"].to_list())}
    cmap = plt.get_cmap("tab20")
    # clusters in no counted link (families of one cluster) are drawn grey, not as families of their own
    linked = set(families.families.filter(pl.col("n_clusters") > 1)["family"].to_list())
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 3.2 * len(models)), constrained_layout=True, squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        part = clusters.filter(pl.col("model") == model)
        boxes: dict[tuple[int, int], tuple[float, float]] = {}
        for layer in sorted(part["layer"].unique().to_list()):
            column = part.filter(pl.col("layer") == layer).with_columns(
                rank=pl.col("family").replace_strict(order, return_dtype=pl.Int64)
            ).sort("rank", "token_cluster")
            total = column["size"].sum()
            bottom = 0.0
            for row in column.iter_rows(named=True):
                height = row["size"] / total * 0.95
                ax.add_patch(
                    Rectangle((layer - 0.15, bottom), 0.3, height, ec="white", lw=0.5,
                              color=cmap(order[row["family"]] % 20) if row["family"] in linked else "0.85")
                )
                boxes[(layer, row["token_cluster"])] = (bottom + height / 2, height)
                bottom += height + 0.05 / max(1, column.height)
        links = families.edges.filter((pl.col("kind") == "layer") & (pl.col("model") == model))
        for row in links.iter_rows(named=True):
            start, end = boxes[(row["layer"], row["token_cluster"])], boxes[(row["to_layer"], row["to_token_cluster"])]
            counted = row.get("counted", True)
            ax.plot(
                [row["layer"] + 0.15, row["to_layer"] - 0.15], [start[0], end[0]], color="0.4" if counted else "0.7",
                ls="-" if counted else ":", alpha=0.6, lw=0.5 + 4 * row["jaccard"] if counted else 0.8,
            )
        first, last = cast(int, part["layer"].min()), cast(int, part["layer"].max())  # an integer column's
        named = families.families.filter((pl.col("model") == model) & (pl.col("n_clusters") > 1))
        labels = []
        for row in named.iter_rows(named=True):
            ends = part.filter((pl.col("family") == row["family"]) & (pl.col("layer") == row["last_layer"]))
            y = float(np.mean([boxes[(row["last_layer"], c)][0] for c in ends["token_cluster"]]))
            label = str(row.get("label") or "")[:max_label]
            flag = " [position]" if row.get("position_artifact") else ""
            labels.append((y, f"{row['family']} {row['kind']}: {label}{flag}", cmap(order[row["family"]] % 20)))
        # family names beside the panel, spaced so that none overlaps the next, each joined to its clusters
        for (y, text, color), label_y in zip(labels, _spread(np.array([y for y, _, _ in labels]), 0.09), strict=True):
            ax.annotate(
                text, xy=(last + 0.15, y), xytext=(1.01, label_y), textcoords=("axes fraction", "data"),
                fontsize=7, va="center", arrowprops={"arrowstyle": "-", "color": color, "lw": 2},
            )
        ax.set_xlim(first - 0.5, last + 0.5)  # the axis spans the layers present, no more
        ax.set_xticks(sorted(part["layer"].unique().to_list()))
        ax.set_ylim(-0.02, 1.1)
        ax.set_yticks([])
        ax.set(xlabel="layer", title=f"{model}: token-cluster families across layers (dotted: links that do not beat the null)")
    return fig
