"""Topicality beyond token identity: what token clusters say about the document.

A token cluster can look topical ("senate, vote, party") only because it gathers the
occurrences of a few words, and words are topical. To tell the two apart, each layer's
token labels are scored three ways (adjusted mutual information, AMI, which is 0 in
expectation for labels independent of the reference):

``ami_doc``
    AMI(cluster, document): how much the clusters say about which document a position is in.
``ami_token``
    AMI(cluster, token id): how much they are a function of the token itself.
``ami_doc_from_token``
    AMI(predicted cluster, document), where each position's cluster is predicted from its
    token id alone (the most common cluster of that token id). This is the document
    information that token identity carries through the clustering.
``ami_doc_beyond_token``
    ``ami_doc - ami_doc_from_token``: the document information the clusters carry beyond
    what token identity predicts. Near 0 means the "topics" are the words' own; below 0,
    the clusters say less about the document than their token-id prediction does (clusters
    noisier than the words: random labels over topical words do this). The prediction is
    in-sample, as the study's check was: a word seen once predicts its own cluster exactly.

``lake_topicality`` computes them for every layer's selected grid point, the untrained twins
(``<model>-untrained``) included, one row per (model, site, method, drop_first, layer).
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl
from sklearn.metrics import adjusted_mutual_info_score

from tnb.lake import Lake
from tnb.query import tables

KEYS = ["model", "site", "method", "drop_first", "layer"]


def predict_from_token(labels: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Each position's cluster predicted from its token id: the token id's most common cluster.

    Ties go to the lower cluster label. Vectorized: one sort of (token, cluster) codes.

    Parameters
    ----------
    labels : ndarray of shape (n_positions,)
    token_ids : ndarray of shape (n_positions,)

    Returns
    -------
    ndarray of shape (n_positions,)
    """
    labels, token_ids = np.asarray(labels), np.asarray(token_ids)
    if labels.shape != token_ids.shape:
        raise ValueError(f"labels of shape {labels.shape} and token_ids of shape {token_ids.shape} should match")
    if labels.size == 0:
        return labels.copy()
    tokens, token_index = np.unique(token_ids, return_inverse=True)
    clusters, cluster_index = np.unique(labels, return_inverse=True)
    pairs, counts = np.unique(token_index.astype(np.int64) * clusters.size + cluster_index, return_counts=True)
    pair_token, pair_cluster = pairs // clusters.size, pairs % clusters.size
    # sort by token, then count descending, then cluster ascending: the first row per token wins
    order = np.lexsort((pair_cluster, -counts, pair_token))
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_token[order][1:] != pair_token[order][:-1]
    best = np.empty(tokens.size, dtype=np.int64)
    best[pair_token[order][first]] = pair_cluster[order][first]
    return clusters[best[token_index]]


def topicality(labels: np.ndarray, doc_ids: np.ndarray, token_ids: np.ndarray) -> dict[str, float]:
    """AMI of token clusters with the document and the token id, and with the document beyond the token id.

    Parameters
    ----------
    labels : ndarray of shape (n_positions,)
        Token cluster of each position.
    doc_ids, token_ids : ndarray of shape (n_positions,)
        Document and token id of each position.

    Returns
    -------
    dict
        ``ami_doc``, ``ami_token``, ``ami_doc_from_token``, ``ami_doc_beyond_token``, ``n_positions``.
    """
    labels, doc_ids, token_ids = (np.asarray(a) for a in (labels, doc_ids, token_ids))
    if not labels.shape == doc_ids.shape == token_ids.shape:
        raise ValueError(
            f"labels, doc_ids and token_ids should have one value per position. "
            f"Got shapes {labels.shape}, {doc_ids.shape} and {token_ids.shape} instead."
        )
    predicted = predict_from_token(labels, token_ids)
    ami_doc = float(adjusted_mutual_info_score(doc_ids, labels))
    ami_doc_from_token = float(adjusted_mutual_info_score(doc_ids, predicted))
    return {
        "ami_doc": ami_doc,
        "ami_token": float(adjusted_mutual_info_score(token_ids, labels)),
        "ami_doc_from_token": ami_doc_from_token,
        "ami_doc_beyond_token": ami_doc - ami_doc_from_token,
        "n_positions": int(labels.size),
    }


_SCHEMA = {
    **{name: (pl.Int64 if name in ("layer", "drop_first") else pl.String) for name in KEYS},
    "row_k": pl.Int32,
    "col_k": pl.Int32,
    "is_twin": pl.Boolean,
    "n_positions": pl.Int64,
    "n_docs": pl.Int64,
    "ami_doc": pl.Float64,
    "ami_token": pl.Float64,
    "ami_doc_from_token": pl.Float64,
    "ami_doc_beyond_token": pl.Float64,
}


def lake_topicality(
    lake: Lake | str | os.PathLike[str],
    site: str | None = None,
    method: str | None = None,
    drop_first: int | None = 0,
    model: str | None = None,
) -> pl.DataFrame:
    """Topicality of every layer's selected token clusters, one row per (model, site, method, drop_first, layer).

    Labels join the tokens through ``models.stream``. ``is_twin`` marks untrained twins.
    """
    frames = tables(lake)
    selected = frames["metrics"].filter(pl.col("selected"))
    for name, value in (("site", site), ("method", method), ("drop_first", drop_first), ("model", model)):
        if value is not None:
            selected = selected.filter(pl.col(name) == value)
    keys = [*KEYS, "row_k", "col_k"]
    members = (
        frames["labels"]
        .filter(pl.col("axis") == "token")
        .join(selected.select(keys), on=keys)
        .join(frames["models"].select("model", "stream"), on="model")
        .join(
            frames["tokens"].select("stream", "pos", "doc_id", "token_id"),
            left_on=["stream", "index"],
            right_on=["stream", "pos"],
        )
        .select(*keys, "label", "doc_id", "token_id")
        .sort(*keys)
        .collect()
    )
    rows = []
    for group, part in members.group_by(keys, maintain_order=True):
        scores = topicality(part["label"].to_numpy(), part["doc_id"].to_numpy(), part["token_id"].to_numpy())
        row = dict(zip(keys, group, strict=True))
        rows.append(
            {**row, "is_twin": str(row["model"]).endswith("-untrained"), "n_docs": part["doc_id"].n_unique(), **scores}
        )
    return pl.DataFrame(rows, schema=_SCHEMA).select(list(_SCHEMA)).sort(KEYS)
