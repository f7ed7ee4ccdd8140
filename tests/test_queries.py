"""Golden tests for every query in sql/, on the planted fixture lake (tests/fixtures/analysis_lake.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.fixtures.analysis_lake import GOLDEN_DIR, GOLDEN_QUERIES, INEXACT_GOLDENS, N_SEQUENCES, build_fixture_lake
from tnb.query import QueryError, list_queries, resolve_sql, run_query, sql_dir, tables


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    return build_fixture_lake(tmp_path_factory.mktemp("analysis") / "lake")


@pytest.mark.parametrize("golden", sorted(GOLDEN_QUERIES))
def test_query_matches_golden(lake, golden: str) -> None:
    query, params = GOLDEN_QUERIES[golden]
    expected = pl.read_parquet(GOLDEN_DIR / f"{golden}.parquet")
    exact = golden not in INEXACT_GOLDENS
    assert_frame_equal(run_query(lake, query, params), expected, check_exact=exact, rel_tol=0, abs_tol=1e-12)


def test_every_sql_file_has_a_golden() -> None:
    covered = {query for query, _ in GOLDEN_QUERIES.values()}
    assert set(list_queries()) <= covered, f"queries without a golden: {set(list_queries()) - covered}"
    assert {"emergence_curves", "top_tokens", "grid_surface", "cluster_spread", "block_means", "top_neurons",
            "verdicts", "topicality"} <= covered


def test_top_tokens_rank_by_lift_not_count(lake) -> None:
    top = run_query(lake, "top_tokens", {"model": "small", "layer": 1, "top_n": 50, "min_count": 1})
    politics = top.filter(pl.col("token_cluster") == 0)  # planted: cluster 0 = politics at small/1
    assert set(politics["token"].head(4)) == {" senate", " vote", " party", " bill"}
    by_count = politics.sort("count", descending=True)
    assert by_count["token"][0] == " the"  # counting alone would head the cluster with " the"
    assert politics.filter(pl.col("token") == " the")["lift"][0] < 1.5
    # every clustered position is counted once, through models.stream (not stream fx2)
    sizes = top.group_by("token_cluster").agg(pl.col("count").sum(), pl.col("cluster_size").first())
    assert (sizes["count"] == sizes["cluster_size"]).all()
    assert sizes["cluster_size"].sum() == 192


def test_top_tokens_tie_breaks_are_deterministic(lake) -> None:
    top = run_query(lake, "top_tokens", {"model": "small", "layer": 1, "top_n": 4, "min_count": 3})
    starters = top.filter(pl.col("token_cluster") == 3)  # P: four starters, 3 each, equal lift
    assert starters["token_id"].to_list() == sorted(starters["token_id"].to_list())
    assert starters["rank"].to_list() == [1, 2, 3, 4]


def test_rare_tokens_need_min_count_and_their_lift_is_shrunk(lake) -> None:
    params = {"model": "small", "layer": 1, "top_n": 50}
    starters = run_query(lake, "top_tokens", {**params, "min_count": 1}).filter(pl.col("token_cluster") == 3)
    assert (starters["count"] == 3).all() and (starters["lift"] == 16.0).all()  # seen 3 times, all in P
    assert run_query(lake, "top_tokens", params).filter(pl.col("token_cluster") == 3).is_empty()  # min_count 5
    politics = run_query(lake, "top_tokens", {**params, "min_count": 1}).filter(pl.col("token_cluster") == 0)
    # words only ever seen in politics tie on raw lift (192 / 60); the shrunk lift ranks the more frequent first
    exclusive = politics.filter(pl.col("lift") == politics["lift"].max())
    assert exclusive.height >= 2 and exclusive["count"].n_unique() > 1
    assert exclusive["count"].to_list() == sorted(exclusive["count"].to_list(), reverse=True)
    assert (politics["lift_shrunk"] < politics["lift"]).filter(politics["lift"] > 1).all()
    expected = politics["cluster_size"] * politics["stream_count"] / 192
    assert politics["lift_shrunk"].to_list() == pytest.approx(((politics["count"] + 5) / (expected + 5)).to_list())
    unshrunk = run_query(lake, "top_tokens", {**params, "min_count": 1, "shrink": 0.0}).filter(pl.col("token_cluster") == 0)
    assert unshrunk["lift_shrunk"].to_list() == pytest.approx(unshrunk["lift"].to_list())


def test_verdicts_name_significance_stability_and_the_twin(lake) -> None:
    verdicts = run_query(lake, "verdicts")
    assert "large-untrained" not in set(verdicts["model"])  # the twin is a control, not a subject
    small = verdicts.filter(pl.col("model") == "small").sort("layer")
    assert small["significant"].to_list() == [False, True, True]  # layer 0: observed inside its null
    assert small["stable"].to_list() == [True, True, False]
    assert small["finding"].to_list() == [False, True, False]
    assert small["beyond_twin"].is_null().all()  # small has no twin in the lake
    large = verdicts.filter(pl.col("model") == "large")
    assert (large["twin"] == "large-untrained").all() and large["beyond_twin"].all()
    assert (large["twin_excess"] < large["excess"]).all()


def test_drop_first_labels_cover_only_kept_positions(lake) -> None:
    kept = run_query(lake, "top_tokens", {"model": "small", "layer": 1, "drop_first": 1, "top_n": 50, "min_count": 1})
    assert not set(kept["token"]) & {" In", " The", " A", " It"}
    assert kept.group_by("token_cluster").agg(pl.col("count").sum())["count"].sum() == 192 - N_SEQUENCES
    both = run_query(lake, "emergence_curves", {"model": "small", "drop_first": None})
    assert sorted(set(both["drop_first"])) == [0, 1]
    default = run_query(lake, "emergence_curves", {"model": "small"})
    assert set(default["drop_first"]) == {0}


def test_position_artifacts_are_flagged(lake) -> None:
    spread = run_query(lake, "cluster_spread", {"drop_first": None})
    flagged = spread.filter(pl.col("position_artifact"))
    # exactly one planted artifact (P = seq_pos 0) in every drop_first=0 layer of both models
    assert flagged.height == 3 + 5
    assert (flagged["drop_first"] == 0).all()
    assert (flagged["top_seq_pos"] == 0).all() and (flagged["n_tokens"] == N_SEQUENCES).all()
    assert spread.filter(~pl.col("position_artifact"))["top_seq_pos_share"].max() < 0.5


def test_emergence_depth_shares_an_axis(lake) -> None:
    curves = run_query(lake, "emergence_curves")
    last = curves.group_by("model").agg(pl.col("depth").max(), pl.col("layer").max()).sort("model")
    assert last["depth"].to_list() == [1.0, 1.0, 1.0] and last["layer"].to_list() == [4, 4, 2]
    # the twin comes with its trained model, marked, and the trained model names it
    large = run_query(lake, "emergence_curves", {"model": "large"})
    assert set(large["model"]) == {"large", "large-untrained"}
    assert large.filter(pl.col("is_twin"))["model"].unique().to_list() == ["large-untrained"]
    assert large.filter(~pl.col("is_twin"))["twin"].unique().to_list() == ["large-untrained"]


def test_block_means_recover_planted_blocks(lake) -> None:
    blocks = run_query(lake, "block_means", {"model": "small", "site": "resid", "layer": 1})
    means = {(row["token_cluster"], row["neuron_cluster"]): row["mean"] for row in blocks.iter_rows(named=True)}
    assert means[(0, 0)] == 2.0 and means[(0, 1)] == 0.0  # politics -> neurons 0-3
    assert means[(1, 1)] == 2.0 and means[(1, 0)] == 0.0  # climate -> neurons 4-7
    assert min(means[(3, 0)], means[(3, 1)]) > 7.9  # first positions: outliers


def test_topicality_is_a_table_queries_can_read(lake) -> None:
    twin = run_query(lake, "topicality", {"model": "large"})
    assert set(twin["model"]) == {"large", "large-untrained"} and twin.height == 10
    inline = run_query(lake, "SELECT model, layer, ami_doc FROM topicality WHERE is_twin ORDER BY layer")
    assert inline["model"].unique().to_list() == ["large-untrained"] and inline["ami_doc"].abs().max() < 0.05


def test_parameters_are_bound_as_data(lake) -> None:
    hostile = "small' OR '1'='1"
    assert run_query(lake, "grid_surface", {"model": hostile}).height == 0
    assert run_query(lake, "grid_surface", {"model": "small"}).height > 0


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"modle": "small"}, r"unknown query parameter\(s\) \['modle'\]"),
        ({"layer": "three"}, "parameter layer should be int. Got 'three' instead"),
    ],
)
def test_bad_parameters_are_named(lake, params, match) -> None:
    with pytest.raises(QueryError, match=match):
        run_query(lake, "grid_surface", params)


def test_activation_queries_need_a_layer(lake) -> None:
    with pytest.raises(QueryError, match="give --param for site, layer"):
        run_query(lake, "block_means", {"model": "small"})


def test_resolve_names_paths_and_inline(tmp_path: Path) -> None:
    assert resolve_sql("top_tokens")[0] == resolve_sql("top_tokens.sql")[0] == "top_tokens"
    assert resolve_sql(str(sql_dir() / "grid_surface.sql"))[0] == "grid_surface"
    assert resolve_sql("SELECT 1 AS one") == ("inline", "SELECT 1 AS one")
    with pytest.raises(QueryError, match="no query 'nonesuch'"):
        resolve_sql("nonesuch")


def test_tables_are_lazy_frames(lake) -> None:
    frames = tables(lake)
    assert set(frames) >= {"tokens", "models", "labels", "metrics"}
    assert all(isinstance(frame, pl.LazyFrame) for frame in frames.values())
    assert frames["tokens"].filter(pl.col("stream") == "fx").select(pl.len()).collect().item() == 192


def test_cli_query_table_csv_parquet(lake, tmp_path: Path, capsys) -> None:
    from tnb.cli import main

    assert main(["query", "--lake", str(lake.root), "top_tokens", "-p", "model=small", "-p", "layer=1", "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith("model,site,layer,method,drop_first")
    out = tmp_path / "q.parquet"
    assert main(["query", "--lake", str(lake.root), "SELECT model, n_layers FROM models ORDER BY model",
                 "--format", "parquet", "--out", str(out)]) == 0
    assert pl.read_parquet(out)["model"].to_list() == ["large", "large-untrained", "other", "small"]
    assert main(["query", "--lake", str(lake.root), "emergence_curves"]) == 0
    assert "small" in capsys.readouterr().out
    assert main(["query", "--lake", str(lake.root), "SELECT * FROM nowhere"]) == 2
    assert "query inline failed" in capsys.readouterr().err
