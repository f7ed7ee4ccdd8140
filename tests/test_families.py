"""Families on the planted fixture lake come out as planted: split, merge, persistent, artifact."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.fixtures.analysis_lake import TWIN, build_fixture_lake
from tnb.families import family_counts, find_families, lake_families


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
    table = families.families.filter(pl.col("model") != TWIN)
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
    others = families.families.filter(~pl.col("position_artifact") & (pl.col("model") != TWIN))
    assert small["lineage"] not in set(others["lineage"])


def test_edges_carry_jaccard(families) -> None:
    edges = families.edges
    layer_edges = edges.filter((pl.col("kind") == "layer") & (pl.col("model") == "small") & (pl.col("layer") == 0))
    assert sorted(layer_edges["jaccard"].to_list()) == [0.5, 0.5, 1.0, 1.0]  # the split halves, C, P
    assert (edges["jaccard"] >= 0.3).all()
    # large's planted links beat its twin's strongest link at every layer; small has no twin to beat
    large = edges.filter((pl.col("kind") == "layer") & (pl.col("model") == "large"))
    assert large["counted"].all() and (large["jaccard"] > large["twin_jaccard"]).all()
    assert edges.filter(pl.col("model") == "small")["twin_jaccard"].is_null().all()


def test_the_random_twin_forms_no_families_and_families_carry_stability(families) -> None:
    counts = family_counts(families).filter(pl.col("model").is_in(["large", TWIN])).sort("model")
    assert counts["n_families"].to_list() == [3, 0] and counts["n_links"].to_list() == [16, 0]
    stability = dict(families.families.filter(pl.col("n_clusters") > 1).select("model", "stability").unique().iter_rows())
    assert stability == {"large": 0.95, "small": 0.5}  # small's layer 2 is unstable: its families are too


def _random_members(
    seed: int, n_layers: int = 3, n_pos: int = 600, k: int = 6, model: str = "m", labels: np.ndarray | None = None
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n_layers * n_pos) if labels is None else labels
    return pl.DataFrame(
        {
            "model": [model] * (n_layers * n_pos),
            "layer": np.repeat(np.arange(n_layers), n_pos),
            "token_cluster": labels.astype(np.int32),
            "pos": np.tile(np.arange(n_pos), n_layers),
            "stream": ["s"] * (n_layers * n_pos),
            "n_layers": [n_layers] * (n_layers * n_pos),
        }
    )


def test_random_clusters_form_no_families() -> None:
    found = find_families(_random_members(0))
    assert (found.families["kind"] == "transient").all()
    assert found.edges.is_empty()


@pytest.mark.parametrize("seed", range(3))
def test_links_between_independent_random_labellings_do_not_count(seed: int) -> None:
    # k = 2: two random halves overlap with Jaccard ~1/3, above min_jaccard, so only the null stops them
    found = find_families(_random_members(seed, n_layers=4, k=2))
    assert not found.edges.is_empty()
    assert not found.edges["counted"].any() and found.edges["overlap_z"].abs().max() < 4
    assert (found.families["kind"] == "transient").all()
    assert family_counts(found)["n_families"].to_list() == [0]


@pytest.mark.parametrize("seed", range(3))
def test_planted_persistent_clusters_count_against_a_random_twin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    planted = rng.integers(0, 4, 600)
    noisy = [np.where(rng.random(600) < 0.1, rng.integers(0, 4, 600), planted) for _ in range(3)]  # 10% relabelled
    trained = _random_members(seed, model="m", labels=np.concatenate(noisy))
    twin = _random_members(seed + 100, model="m-untrained", k=4)
    found = find_families(pl.concat([trained, twin]))
    links = found.edges.filter(pl.col("kind") == "layer")
    assert links.filter(pl.col("model") == "m")["counted"].all()
    assert links.filter(pl.col("model") == "m")["twin_jaccard"].max() < 0.3
    counts = family_counts(found).sort("model")
    assert counts["n_persistent"].to_list() == [4, 0] and counts["n_all_layers"].to_list() == [4, 0]


def test_links_no_stronger_than_the_twins_do_not_count() -> None:
    # what a random network gives too (here: the very same clusters, e.g. token identity carried along)
    labels = np.tile(np.random.default_rng(5).integers(0, 4, 600), 3)
    found = find_families(pl.concat([_random_members(0, model="m", labels=labels), _random_members(0, model="m-untrained", labels=labels)]))
    assert (found.edges["kind"] == "layer").all()  # no lineage between a model and its twin
    trained = found.edges.filter(pl.col("model") == "m")
    assert trained.height == 8 and (trained["jaccard"] == 1.0).all() and (trained["twin_jaccard"] == 1.0).all()
    assert not trained["counted"].any()
    counts = family_counts(found).sort("model")
    assert counts["n_families"].to_list() == [0, 4]  # the twin's own chains count against independence only
    assert counts["n_links_within_twin"].to_list() == [8, 0]


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
