"""Topicality: planted document clusters carry information beyond token identity, word clusters do not."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.fixtures.analysis_lake import TWIN, build_fixture_lake
from tnb.topicality import lake_topicality, predict_from_token, topicality

N_DOCS, DOC_LEN, VOCAB = 20, 200, 300


def _stream(seed: int, topical_words: bool) -> tuple[np.ndarray, np.ndarray]:
    """doc_id and token_id of 4,000 positions; with topical_words each document draws from its own words."""
    rng = np.random.default_rng(seed)
    doc_ids = np.repeat(np.arange(N_DOCS), DOC_LEN)
    if topical_words:  # 4 topics of 5 documents, each topic with its own 75 words
        token_ids = (doc_ids // 5) * (VOCAB // 4) + rng.integers(0, VOCAB // 4, doc_ids.size)
    else:
        token_ids = rng.integers(0, VOCAB, doc_ids.size)
    return doc_ids, token_ids


def test_planted_document_clusters_carry_information_beyond_token_identity() -> None:
    doc_ids, token_ids = _stream(0, topical_words=False)  # words say nothing about the document
    labels = doc_ids // 5  # clusters = topics of documents, whatever the word
    scores = topicality(labels, doc_ids, token_ids)
    assert scores["ami_doc"] > 0.4
    assert abs(scores["ami_doc_from_token"]) < 0.05
    assert scores["ami_doc_beyond_token"] > 0.35


def test_clusters_that_are_a_function_of_the_token_add_nothing() -> None:
    doc_ids, token_ids = _stream(1, topical_words=True)  # topical words: word clusters look topical
    labels = (token_ids // (VOCAB // 4)) * 2 + token_ids % 2  # 8 clusters, each a set of words
    scores = topicality(labels, doc_ids, token_ids)
    assert scores["ami_doc"] > 0.3  # they look like topics ...
    assert scores["ami_doc_from_token"] == scores["ami_doc"]  # ... but token identity predicts them exactly
    assert scores["ami_doc_beyond_token"] == 0.0
    assert scores["ami_token"] > 0.3


@pytest.mark.parametrize("seed", range(3))
def test_nothing_planted_gives_nothing(seed: int) -> None:
    doc_ids, token_ids = _stream(10 + seed, topical_words=True)
    labels = np.random.default_rng(seed).integers(0, 8, doc_ids.size)
    scores = topicality(labels, doc_ids, token_ids)
    assert abs(scores["ami_doc"]) < 0.01 and abs(scores["ami_token"]) < 0.02
    assert abs(scores["ami_doc_beyond_token"]) < 0.03


def test_prediction_is_each_tokens_most_common_cluster() -> None:
    rng = np.random.default_rng(3)
    token_ids, labels = rng.integers(0, 30, 500), rng.integers(5, 9, 500)
    predicted = predict_from_token(labels, token_ids)
    for token in np.unique(token_ids):
        counts = np.bincount(labels[token_ids == token], minlength=9)
        assert (predicted[token_ids == token] == counts.argmax()).all()  # argmax: lowest label on ties
    assert predict_from_token(np.array([1, 0, 0, 1]), np.array([7, 7, 8, 8])).tolist() == [0, 0, 0, 0]


def test_mismatched_lengths_are_named() -> None:
    with pytest.raises(ValueError, match=r"Got shapes \(3,\), \(2,\) and \(3,\) instead"):
        topicality(np.zeros(3), np.zeros(2), np.zeros(3))


def test_lake_topicality_one_row_per_layer_twin_included(tmp_path) -> None:
    lake = build_fixture_lake(tmp_path / "lake")
    table = lake_topicality(lake)
    assert table.height == 3 + 5 + 5  # small, large, its twin; drop_first = 0
    twin = table.filter(pl.col("model") == TWIN)
    assert twin["is_twin"].all() and not table.filter(pl.col("model") != TWIN)["is_twin"].any()
    # the twin's clusters are random: no document information; large's planted clusters follow the topics
    assert twin["ami_doc"].abs().max() < 0.05
    large = table.filter(pl.col("model") == "large")
    assert (large["ami_doc"] > 0.3).all() and (large["n_positions"] == 192).all() and (large["n_docs"] == 6).all()
    assert lake_topicality(lake, drop_first=1).height == 2
