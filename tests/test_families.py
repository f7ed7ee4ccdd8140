"""Families on the planted fixture lake come out as planted: split, merge, persistent, artifact."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.fixtures.analysis_lake import build_fixture_lake
from tnb.families import find_families, lake_families


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory):
    lake = build_fixture_lake(tmp_path_factory.mktemp("families") / "lake")
    found = lake_families(lake)
    assert list(found) == [("resid", "biclustering", 0)]
    return found[("resid", "biclustering", 0)]


def _family(families, model: str, token: str) -> dict:
    rows = families.families.filter((pl.col("model") == model) & pl.col("top_tokens").list.contains(token))
    assert rows.height == 1, f"{token!r} labels {rows.height} families of {model}"
    return rows.row(0, named=True)


def test_planted_split_merge_and_persistence(families) -> None:
    table = families.families
    assert table.height == 6
    # small: A+B at layer 0 splits into A and B at layer 1
    split = _family(families, "small", " party")
    assert split["kind"] == "split" and split["n_splits"] == 1 and split["n_clusters"] == 5
    assert set(split["top_tokens"]) <= {" party", " bill", " senate", " vote", " carbon", " ice", " warming", " sea"}
    glue = _family(families, "small", " to")
    assert glue["kind"] == "persistent" and set(glue["top_tokens"]) == {" to", " and", " is"}
    # large: A persists over all 5 layers; B and C merge at layer 4
    politics = _family(families, "large", " senate")
    assert politics["kind"] == "persistent" and (politics["first_layer"], politics["last_layer"]) == (0, 4)
    assert set(politics["top_tokens"]) == {" party", " bill", " senate"}
    merged = _family(families, "large", " to")
    assert merged["kind"] == "merge" and merged["n_merges"] == 1 and merged["max_size"] == 120


def test_position_artifact_family_and_cross_model_lineage(families) -> None:
    artifacts = families.families.filter(pl.col("position_artifact"))
    assert sorted(artifacts["model"]) == ["large", "small"]
    assert set(artifacts["top_tokens"].explode()) <= {" In", " The", " A", " It"}
    small, large = sorted(artifacts.iter_rows(named=True), key=lambda row: row["model"], reverse=True)
    assert small["lineage"] == large["lineage"] and small["matches"] == [large["family"]]
    others = families.families.filter(~pl.col("position_artifact"))
    assert small["lineage"] not in set(others["lineage"])


def test_edges_carry_jaccard(families) -> None:
    edges = families.edges
    layer_edges = edges.filter((pl.col("kind") == "layer") & (pl.col("model") == "small") & (pl.col("layer") == 0))
    assert sorted(layer_edges["jaccard"].to_list()) == [0.5, 0.5, 1.0, 1.0]  # the split halves, C, P
    assert (edges["jaccard"] >= 0.3).all()


def _random_members(seed: int, n_layers: int = 3, n_pos: int = 600, k: int = 6) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "model": ["m"] * (n_layers * n_pos),
            "layer": np.repeat(np.arange(n_layers), n_pos),
            "token_cluster": rng.integers(0, k, n_layers * n_pos).astype(np.int32),
            "pos": np.tile(np.arange(n_pos), n_layers),
            "stream": ["s"] * (n_layers * n_pos),
            "n_layers": [n_layers] * (n_layers * n_pos),
        }
    )


def test_random_clusters_form_no_families() -> None:
    found = find_families(_random_members(0))
    assert (found.families["kind"] == "transient").all()
    assert found.edges.is_empty()


def test_families_do_not_depend_on_label_numbers() -> None:
    # layer 1 = layer 0's clustering with its label numbers permuted: every cluster persists
    layer0 = _random_members(1, n_layers=2).filter(pl.col("layer") == 0)
    permuted = layer0.with_columns(layer=pl.lit(1, pl.Int64), token_cluster=(5 - pl.col("token_cluster")).cast(pl.Int32))
    found = find_families(pl.concat([layer0.with_columns(pl.col("layer").cast(pl.Int64)), permuted]))
    assert (found.families["kind"] == "persistent").all() and found.families.height == 6


@pytest.mark.parametrize("min_jaccard", [0.0, 1.5])
def test_min_jaccard_is_checked(min_jaccard: float) -> None:
    with pytest.raises(ValueError, match=f"min_jaccard should be in \\(0, 1\\]. Got {min_jaccard} instead"):
        find_families(_random_members(0), min_jaccard=min_jaccard)
