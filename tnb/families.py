"""Circuit families: token clusters matched across layers and model sizes by Jaccard overlap.

A token cluster is a set of stream positions. Two clusters of consecutive layers of one
model are a *candidate link* when the Jaccard index of their position sets reaches
``min_jaccard``. A link *counts* only when it beats two nulls:

- independent labellings: its intersection is at least ``min_overlap_z`` standard deviations
  above what two unrelated clusters of the same sizes share (hypergeometric), and
- the untrained twin: where the lake holds ``<model>-untrained``, its Jaccard exceeds the
  largest Jaccard between any two clusters of the twin's same two layers. A random-weight
  network already carries token identity and position from layer to layer; a link no
  stronger than the twin's strongest is not evidence of what training built.

The connected components of the counted links are *families*. A family whose every layer
has one cluster *persists*; a cluster linked to two or more clusters of the next layer
*splits*; two or more clusters linked to one of the next layer *merge*. Each family carries
the seed-to-seed ``stability`` of its layers' clusterings (the least, from the metrics table).
Models that read the same token stream (all GPT-2 sizes) are matched too: each layer of the
shallower model against the layer of the deeper one at the nearest relative depth, and
families joined by such a match share a ``lineage``. Each family is labelled by its top
tokens by shrunk lift.

Chance overlap of two random clusters among ``k`` is about ``1 / (2k - 1)`` (0.04 for k=12,
0.33 for k=2), so ``min_jaccard=0.3`` alone does not rule out chance at small k: the
hypergeometric z does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import polars as pl

from tnb.lake import Lake
from tnb.query import tables

GROUP = ("site", "method", "drop_first")


@dataclass(frozen=True)
class Families:
    """The result of :func:`find_families`.

    Attributes
    ----------
    clusters : DataFrame
        One row per (model, layer, token_cluster): ``size``, ``depth`` and its ``family``.
    edges : DataFrame
        Links ``(model, layer, token_cluster) -> (to_model, to_layer, to_token_cluster)``
        with their ``jaccard``; ``kind`` is ``"layer"`` (same model) or ``"model"``.
    families : DataFrame
        One row per family: ``kind`` (persistent, split, merge, split+merge, transient),
        first/last layer, ``n_splits``, ``n_merges``, ``label``, ``position_artifact``,
        ``lineage`` and the families of other models it matches.
    """

    clusters: pl.DataFrame
    edges: pl.DataFrame
    families: pl.DataFrame


def load_token_clusters(
    lake: Lake | str | os.PathLike[str],
    site: str | None = None,
    method: str | None = None,
    drop_first: int | None = 0,
) -> pl.DataFrame:
    """Token labels of every layer's selected grid point, with each model's stream and depth.

    Returns
    -------
    DataFrame
        Columns ``model, site, method, drop_first, layer, row_k, col_k, token_cluster, pos,
        stream, n_layers, stability, stable``.
    """
    frames = tables(lake)
    selected = frames["metrics"].filter(pl.col("selected"))
    for name, value in (("site", site), ("method", method), ("drop_first", drop_first)):
        if value is not None:
            selected = selected.filter(pl.col(name) == value)
    keys = ["model", "site", "layer", "method", "drop_first", "row_k", "col_k"]
    labels = frames["labels"].filter(pl.col("axis") == "token").join(selected.select(*keys, "stability", "stable"), on=keys)
    models = frames["models"].select("model", "stream", "n_layers")
    return (
        labels.join(models, on="model")
        .select(
            *keys, pl.col("label").alias("token_cluster"), pl.col("index").alias("pos"), "stream", "n_layers",
            "stability", "stable",
        )
        .sort("model", "site", "method", "drop_first", "layer", "pos")
        .collect()
    )


def _overlaps(left: pl.DataFrame, right: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """Jaccard of every pair of clusters of ``left`` and ``right`` that share a position."""
    sizes_l = left.group_by(*on, "token_cluster").agg(pl.len().alias("size"))
    sizes_r = right.group_by(*on, "token_cluster").agg(pl.len().alias("to_size"))
    inter = (
        left.join(right.rename({"token_cluster": "to_token_cluster"}), on=[*on, "pos"])
        .group_by(*on, "token_cluster", "to_token_cluster")
        .agg(pl.len().alias("intersection"))
    )
    return (
        inter.join(sizes_l, on=[*on, "token_cluster"])
        .join(sizes_r.rename({"token_cluster": "to_token_cluster"}), on=[*on, "to_token_cluster"])
        .with_columns(
            jaccard=pl.col("intersection") / (pl.col("size") + pl.col("to_size") - pl.col("intersection"))
        )
    )


TWIN_SUFFIX = "-untrained"


def _layer_edges(members: pl.DataFrame, min_jaccard: float, min_overlap_z: float) -> pl.DataFrame:
    """Candidate links between consecutive layers (Jaccard >= min_jaccard), each tested against the nulls.

    ``overlap_z``: the intersection against independent labellings (hypergeometric mean and sd);
    ``twin_jaccard``: the largest Jaccard between clusters of the twin's same two layers (null
    without a twin); ``counted``: the link beats both.
    """
    left = members.select("model", "layer", "token_cluster", "pos")
    layers = left.select("model", "layer").unique().sort("model", "layer")
    following = layers.with_columns(to_layer=pl.col("layer").shift(-1).over("model")).drop_nulls()
    right = left.rename({"layer": "to_layer"}).join(following, on=["model", "to_layer"])
    edges = _overlaps(left.join(following, on=["model", "layer"]), right, ["model", "layer", "to_layer"])
    n_positions = left.group_by("model", "layer").agg(pl.len().cast(pl.Float64).alias("n"))
    twin_best = (
        edges.filter(pl.col("model").str.ends_with(TWIN_SUFFIX))
        .group_by("model", "layer", "to_layer")
        .agg(pl.col("jaccard").max().alias("twin_jaccard"))
        .with_columns(pl.col("model").str.strip_suffix(TWIN_SUFFIX))
    )
    mean = pl.col("size") * pl.col("to_size") / pl.col("n")
    var = mean * (1 - pl.col("size") / pl.col("n")) * (pl.col("n") - pl.col("to_size")) / (pl.col("n") - 1)
    z = pl.when(var > 0).then((pl.col("intersection") - mean) / var.sqrt()).otherwise(0.0)
    return (
        edges.filter(pl.col("jaccard") >= min_jaccard)
        .join(n_positions, on=["model", "layer"])
        .join(twin_best, on=["model", "layer", "to_layer"], how="left")
        .with_columns(overlap_z=z)
        .with_columns(
            counted=(pl.col("overlap_z") >= min_overlap_z)
            & (pl.col("twin_jaccard").is_null() | (pl.col("jaccard") > pl.col("twin_jaccard"))),
            to_model=pl.col("model"),
            kind=pl.lit("layer"),
        )
        .drop("n")
    )


def _model_edges(members: pl.DataFrame, min_jaccard: float) -> pl.DataFrame:
    """Each layer of the shallower model against the deeper model's layer at the nearest depth."""
    info = members.select("model", "stream", "n_layers").unique().sort("n_layers", "model")
    found = []
    rows = info.rows(named=True)
    for i, shallow in enumerate(rows):
        for deep in rows[i + 1 :]:
            if shallow["stream"] != deep["stream"] or TWIN_SUFFIX in shallow["model"] + deep["model"]:
                continue  # lineage joins trained models; a twin is a control, not a relative
            left = members.filter(pl.col("model") == shallow["model"]).select("model", "layer", "token_cluster", "pos")
            layer_map = (
                left.select("layer")
                .unique()
                .with_columns(
                    to_layer=(pl.col("layer") * deep["n_layers"] / shallow["n_layers"]).round().cast(pl.Int64)
                )
            )
            right = (
                members.filter(pl.col("model") == deep["model"])
                .select(pl.col("layer").alias("to_layer"), "token_cluster", "pos")
                .join(layer_map, on="to_layer")
            )
            pairs = _overlaps(left.join(layer_map, on="layer"), right, ["layer", "to_layer"])
            found.append(pairs.with_columns(model=pl.lit(shallow["model"]), to_model=pl.lit(deep["model"])))
    columns = ["model", "layer", "to_layer", "token_cluster", "to_token_cluster", "intersection", "size", "to_size", "jaccard"]
    if not found:
        return pl.DataFrame(schema={**_EDGE_SCHEMA})
    edges = pl.concat([frame.select(*columns, "to_model") for frame in found])
    return edges.filter(pl.col("jaccard") >= min_jaccard).with_columns(
        kind=pl.lit("model"), overlap_z=pl.lit(None, pl.Float64), twin_jaccard=pl.lit(None, pl.Float64),
        counted=pl.lit(True),
    )


_EDGE_SCHEMA = {
    "model": pl.String,
    "layer": pl.Int64,
    "token_cluster": pl.Int32,
    "to_model": pl.String,
    "to_layer": pl.Int64,
    "to_token_cluster": pl.Int32,
    "size": pl.UInt32,
    "to_size": pl.UInt32,
    "intersection": pl.UInt32,
    "jaccard": pl.Float64,
    "overlap_z": pl.Float64,  # intersection vs independent labellings of the same sizes (layer links)
    "twin_jaccard": pl.Float64,  # the twin's strongest link between the same two layers (null: no twin)
    "counted": pl.Boolean,  # the link beats both nulls and joins a family
    "kind": pl.String,
}


def _components(n_nodes: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component id of each node: the smallest node index in its component (scipy)."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    graph = coo_array((np.ones(len(src)), (np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64))),
                      shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if n_nodes else 0, n_nodes, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n_nodes))
    return smallest[labels]


def _display(token: pl.Expr) -> pl.Expr:
    """Tokens as shown in labels: without surrounding spaces, unless that leaves nothing."""
    stripped = token.str.strip_chars()
    return pl.when(stripped == "").then(token).otherwise(stripped)


def _family_labels(
    clusters: pl.DataFrame, members: pl.DataFrame, tokens: pl.DataFrame, n_label: int, min_count: int, shrink: float
) -> pl.DataFrame:
    """Top tokens by shrunk lift over each family's positions (a position counts once per member layer)."""
    tagged = members.join(clusters.select("model", "layer", "token_cluster", "family"), on=["model", "layer", "token_cluster"])
    tagged = tagged.join(tokens, on=["stream", "pos"])
    counts = tagged.group_by("family", "token_id").agg(pl.len().alias("count"), pl.col("token").first())
    family_size = tagged.group_by("family").agg(pl.len().alias("family_size"))
    stream = (
        members.select("model", "stream", "pos").unique().join(tokens, on=["stream", "pos"])
        .group_by("model", "token_id").agg(pl.len().alias("stream_count"))
    )
    stream_total = members.select("model", "pos").unique().group_by("model").agg(pl.len().alias("n_positions"))
    family_model = clusters.select("family", "model").unique()
    scored = (
        counts.join(family_size, on="family")
        .join(family_model, on="family")
        .join(stream, on=["model", "token_id"])
        .join(stream_total, on="model")
        .with_columns(
            expected=(pl.col("family_size") * pl.col("stream_count")).cast(pl.Float64) / pl.col("n_positions")
        )
        .with_columns(
            lift=pl.col("count") / pl.col("expected"),
            lift_shrunk=(pl.col("count") + shrink) / (pl.col("expected") + shrink),
        )
        .filter(pl.col("count") >= min_count)
        .sort(["family", "lift_shrunk", "count", "token_id"], descending=[False, True, True, False])
    )
    top = scored.group_by("family", maintain_order=True).head(n_label)
    labels = top.group_by("family", maintain_order=True).agg(
        _display(pl.col("token")).str.join(" · ").alias("label"),
        pl.col("token").alias("top_tokens"),
        pl.col("lift").alias("top_lifts"),
    )
    positions = tagged.group_by("family", "seq_pos").agg(pl.len().alias("n"))
    artifact = positions.group_by("family").agg((pl.col("n").max() / pl.col("n").sum()).alias("top_seq_pos_share"))
    return labels.join(artifact, on="family", how="full", coalesce=True)


def find_families(
    members: pl.DataFrame,
    tokens: pl.DataFrame | None = None,
    min_jaccard: float = 0.3,
    n_label: int = 3,
    min_count: int = 2,
    artifact_share: float = 0.9,
    min_overlap_z: float = 4.0,
    shrink: float = 5.0,
) -> Families:
    """Chain token clusters into families within one (site, method, drop_first).

    Parameters
    ----------
    members : DataFrame
        One row per clustered position: ``model, layer, token_cluster, pos, stream,
        n_layers`` and optionally ``stability`` (as :func:`load_token_clusters` returns, for
        one site/method/drop_first). A model named ``<model>-untrained`` is ``<model>``'s twin.
    tokens : DataFrame, optional
        The token streams (``stream, pos, token_id, token, seq_pos``), for labels.
    min_jaccard : float
        Least Jaccard index of two clusters' positions for them to be a candidate link.
    min_overlap_z : float
        Least hypergeometric z of a link's intersection (against independent labellings) for it to count.
    shrink : float
        Pseudo-occurrences at lift 1 added to each token's count when ranking label tokens.
    """
    if not 0.0 < min_jaccard <= 1.0:
        raise ValueError(f"min_jaccard should be in (0, 1]. Got {min_jaccard} instead.")
    for name in GROUP:
        if name in members.columns and members[name].n_unique() > 1:
            raise ValueError(f"members should hold one {name}; got {sorted(members[name].unique().to_list())}")
    members = members.with_columns(pl.col("layer").cast(pl.Int64), pl.col("token_cluster").cast(pl.Int32))
    clusters = (
        members.group_by("model", "layer", "token_cluster")
        .agg(pl.len().alias("size"), pl.col("n_layers").first())
        .with_columns(depth=pl.col("layer") / pl.col("n_layers"))
        .sort("model", "layer", pl.col("size"), "token_cluster", descending=[False, False, True, False])
        .with_row_index("node")
    )
    layer_edges = _layer_edges(members, min_jaccard, min_overlap_z)
    node_keys = clusters.select("node", "model", "layer", "token_cluster")
    linked = layer_edges.filter(pl.col("counted")).join(node_keys, on=["model", "layer", "token_cluster"]).join(
        node_keys.rename({"node": "to_node", "layer": "to_layer", "token_cluster": "to_token_cluster"}),
        on=["model", "to_layer", "to_token_cluster"],
    )
    component = _components(clusters.height, linked["node"].to_numpy(), linked["to_node"].to_numpy())
    clusters = clusters.with_columns(component=pl.Series(component))
    # number families per model in order of first appearance (nodes are sorted by layer, size)
    order = clusters.group_by("model", "component").agg(pl.col("node").min().alias("first")).sort("model", "first")
    order = order.with_columns(family=pl.col("model") + "/F" + (pl.int_range(pl.len()).over("model") + 1).cast(pl.String))
    clusters = clusters.join(order.select("component", "family"), on="component").drop("component")

    out_degree = linked.group_by("node").agg(pl.len().alias("out"))
    in_degree = linked.group_by("to_node").agg(pl.len().alias("in")).rename({"to_node": "node"})
    degrees = (
        clusters.select("node", "family")
        .join(out_degree, on="node", how="left")
        .join(in_degree, on="node", how="left")
        .fill_null(0)
    )
    events = degrees.group_by("family").agg(
        (pl.col("out") >= 2).sum().alias("n_splits"), (pl.col("in") >= 2).sum().alias("n_merges")
    )
    summary = (
        clusters.group_by("family")
        .agg(
            pl.col("model").first(),
            pl.col("layer").min().alias("first_layer"),
            pl.col("layer").max().alias("last_layer"),
            pl.col("layer").n_unique().alias("n_layers"),
            pl.len().alias("n_clusters"),
            pl.col("size").max().alias("max_size"),
            pl.col("node").min().alias("_first"),
        )
        .join(events, on="family")
        .join(_family_stability(clusters, members, linked), on="family")
        .with_columns(
            kind=pl.when(pl.col("n_clusters") == 1)
            .then(pl.lit("transient"))
            .when((pl.col("n_splits") > 0) & (pl.col("n_merges") > 0))
            .then(pl.lit("split+merge"))
            .when(pl.col("n_splits") > 0)
            .then(pl.lit("split"))
            .when(pl.col("n_merges") > 0)
            .then(pl.lit("merge"))
            .otherwise(pl.lit("persistent"))
        )
        .sort("_first")
        .drop("_first")
    )

    model_edges = _model_edges(members, min_jaccard)
    family_of = clusters.select("model", "layer", "token_cluster", "family")
    cross = model_edges.join(family_of, on=["model", "layer", "token_cluster"]).join(
        family_of.rename({"model": "to_model", "layer": "to_layer", "token_cluster": "to_token_cluster", "family": "to_family"}),
        on=["to_model", "to_layer", "to_token_cluster"],
    )
    summary = _add_lineage(summary, cross)

    if tokens is not None:
        labels = _family_labels(clusters, members, tokens, n_label, min_count, shrink)
        summary = summary.join(labels, on="family", how="left").with_columns(
            position_artifact=pl.col("top_seq_pos_share") > artifact_share
        )
    edges = pl.concat(
        [
            frame.select(*(pl.col(name).cast(dtype) for name, dtype in _EDGE_SCHEMA.items()))
            for frame in (layer_edges, model_edges)
        ]
    ).sort("kind", "model", "layer", "token_cluster", "to_model", "to_layer", "to_token_cluster")
    return Families(clusters=clusters.drop("node"), edges=edges, families=summary)


def _family_stability(clusters: pl.DataFrame, members: pl.DataFrame, linked: pl.DataFrame) -> pl.DataFrame:
    """Per family: counted links, and the least seed-to-seed stability of its layers (null if unknown)."""
    links = linked.join(clusters.select("node", "family"), on="node").group_by("family").agg(pl.len().alias("n_links"))
    if "stability" in members.columns:
        layer_stability = members.group_by("model", "layer").agg(pl.col("stability").first())
    else:
        layer_stability = members.select("model", "layer").unique().with_columns(stability=pl.lit(None, pl.Float64))
    return (
        clusters.join(layer_stability, on=["model", "layer"], how="left")
        .group_by("family")
        .agg(pl.col("stability").min())
        .join(links, on="family", how="left")
        .with_columns(pl.col("n_links").fill_null(0).cast(pl.Int64))
    )


def family_counts(found: Families) -> pl.DataFrame:
    """Per model: families of two or more clusters, persistent ones, and links counted or not.

    What a random-weight twin gives beside its trained model is the point: columns
    ``n_families`` (families of >= 2 clusters), ``n_persistent``, ``n_all_layers`` (families
    spanning every layer), ``n_candidate_links``, ``n_links`` (counted), and
    ``n_links_within_twin`` (candidates no stronger than the twin's strongest link).
    """
    families = found.families
    depth = found.clusters.group_by("model").agg(pl.col("layer").min().alias("lo"), pl.col("layer").max().alias("hi"))
    linked = families.filter(pl.col("n_clusters") >= 2).join(depth, on="model")
    per_model = linked.group_by("model").agg(
        pl.len().alias("n_families"),
        (pl.col("kind") == "persistent").sum().alias("n_persistent"),
        ((pl.col("first_layer") == pl.col("lo")) & (pl.col("last_layer") == pl.col("hi"))).sum().alias("n_all_layers"),
    )
    edges = found.edges.filter(pl.col("kind") == "layer").group_by("model").agg(
        pl.len().alias("n_candidate_links"),
        pl.col("counted").sum().alias("n_links"),
        (pl.col("jaccard") <= pl.col("twin_jaccard")).sum().alias("n_links_within_twin"),
    )
    models = found.clusters.select("model").unique()
    return (
        models.join(per_model, on="model", how="left")
        .join(edges, on="model", how="left")
        .with_columns(pl.exclude("model").fill_null(0).cast(pl.Int64))
        .with_columns(is_twin=pl.col("model").str.ends_with(TWIN_SUFFIX))
        .sort("model")
    )


def _add_lineage(summary: pl.DataFrame, cross: pl.DataFrame) -> pl.DataFrame:
    """Join families of different models matched at equal depth into lineages L1, L2, ..."""
    names = summary["family"].to_list()
    index = {name: i for i, name in enumerate(names)}
    src = np.array([index[name] for name in cross["family"].to_list()], dtype=np.int64)
    dst = np.array([index[name] for name in cross["to_family"].to_list()], dtype=np.int64)
    component = _components(len(names), src, dst)
    first_seen: dict[int, str] = {}
    for root in component.tolist():
        first_seen.setdefault(root, f"L{len(first_seen) + 1}")
    matches = (
        pl.concat(
            [
                cross.select("family", pl.col("to_family").alias("other")),
                cross.select(pl.col("to_family").alias("family"), pl.col("family").alias("other")),
            ]
        )
        .unique()
        .sort("family", "other")
        .group_by("family", maintain_order=True)
        .agg(pl.col("other").alias("matches"))
    )
    return (
        summary.with_columns(lineage=pl.Series([first_seen[root] for root in component.tolist()]))
        .join(matches, on="family", how="left")
        .with_columns(pl.col("matches").fill_null(pl.lit([], dtype=pl.List(pl.String))))
    )


def lake_families(
    lake: Lake | str | os.PathLike[str],
    site: str | None = None,
    method: str | None = None,
    drop_first: int = 0,
    min_jaccard: float = 0.3,
) -> dict[tuple[str, str, int], Families]:
    """Families of every (site, method) in the lake at one ``drop_first``, labelled by top tokens."""
    members = load_token_clusters(lake, site=site, method=method, drop_first=drop_first)
    if members.is_empty():
        return {}
    tokens = tables(lake)["tokens"].select("stream", "pos", "token_id", "token", "seq_pos").collect()
    results = {}
    for (group_site, group_method), part in members.group_by("site", "method", maintain_order=True):
        results[(str(group_site), str(group_method), drop_first)] = find_families(part, tokens, min_jaccard)
    return dict(sorted(results.items()))
