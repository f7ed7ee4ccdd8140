"""Figures render what they should: planted blocks, lines per model, the selected grid point, the observed statistic."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.fixtures.analysis_lake import build_fixture_lake
from tnb.families import lake_families
from tnb.figures import (
    bicluster_map_figure,
    block_average_map,
    emergence_figure,
    family_flow_figure,
    grid_figure,
    null_figure,
    save_figure,
    topicality_figure,
)
from tnb.query import run_query
from tnb.topicality import lake_topicality


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    return build_fixture_lake(tmp_path_factory.mktemp("figures") / "lake")


def _planted(n_rows: int = 20_000, n_cols: int = 64, k_rows: int = 12, k_cols: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, k_rows, n_rows)
    cols = rng.integers(0, k_cols, n_cols)
    values = rng.integers(-4, 5, (k_rows, k_cols)).astype(float)
    return values[rows][:, cols], rows, cols, values


def test_map_block_averages_20000_rows_within_clusters() -> None:
    matrix, rows, cols, values = _planted()
    drawn = block_average_map(matrix, rows, cols, max_rows=600, max_cols=400, standardize=False)
    assert 12 <= drawn.image.shape[0] <= 600 and drawn.image.shape[1] == 64
    # no bin straddles a boundary, so every bin holds exactly its block's planted value
    np.testing.assert_array_equal(drawn.image, values[drawn.row_clusters][:, drawn.col_clusters])
    assert drawn.row_boundaries.size == 11 and drawn.col_boundaries.size == 3
    assert np.all(np.diff(drawn.row_clusters) >= 0)
    # bins are shared out by cluster size
    sizes = np.bincount(rows)
    bins = np.bincount(drawn.row_clusters)
    assert np.all(np.abs(bins - sizes * 600 / rows.size) <= 1)


def test_map_figure_draws_the_image_and_boundaries(tmp_path) -> None:
    matrix, rows, cols, _ = _planted(seed=1)
    fig, drawn = bicluster_map_figure(matrix, rows, cols, "planted", flagged_rows=frozenset({3}))
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), drawn.image)
    assert len(ax.lines) == drawn.row_boundaries.size + drawn.col_boundaries.size == 11 + 3
    assert "3 (position)" in [label.get_text() for label in ax.get_yticklabels()]
    png, svg = save_figure(fig, tmp_path / "map")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert b"<svg" in svg.read_bytes()[:500]


def test_map_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match=r"matrix of shape \(4, 3\) does not match 5 row labels and 3 column labels"):
        block_average_map(np.zeros((4, 3)), np.zeros(5), np.zeros(3))


def test_emergence_figure_draws_each_curve_with_its_baseline(lake) -> None:
    curves = run_query(lake, "emergence_curves", {"drop_first": None})
    fig = emergence_figure(curves)
    ax_obs, ax_parts, ax_spec, ax_mi = fig.axes[:4]
    labels = sorted(line.get_label() for line in ax_obs.lines)
    assert labels == [f"{name} observed" for name in
                      ("large drop_first=0", "large-untrained drop_first=0", "small drop_first=0", "small drop_first=1")]
    large = next(line for line in ax_obs.lines if line.get_label() == "large drop_first=0 observed")
    twin = next(line for line in ax_obs.lines if line.get_label().startswith("large-untrained"))
    assert list(large.get_xdata()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    rows = curves.filter(pl.col("model") == "large").sort("layer")
    assert list(large.get_ydata()) == rows["observed"].to_list()
    assert twin.get_color() == large.get_color() and twin.get_linestyle() == "--" and large.get_linestyle() == "-"
    # the null band: one filled band per series, between null_mean and null_q95
    band = next(c for c in ax_obs.collections if c.get_label() == "large drop_first=0 null mean..q95")
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(rows["null_mean"].min()) and ys.max() == pytest.approx(rows["null_q95"].max())
    assert len(ax_parts.lines) == 3 * 4  # rows, cols, interaction per series
    noise = [line for line in ax_spec.lines if line.get_label().endswith("Gaussian noise")]
    assert len(noise) == 4 and list(noise[0].get_ydata()) == [0.03125] * len(noise[0].get_ydata())
    assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax_mi.lines)  # the zero baseline drawn
    for axis in (ax_obs, ax_parts, ax_spec):
        assert axis.get_ylim()[0] == 0.0  # starts from the baseline
    assert "interaction_refit, 39 refits" in ax_obs.get_title()


def test_topicality_figure_draws_the_token_identity_baseline(lake) -> None:
    table = lake_topicality(lake).join(
        run_query(lake, "emergence_curves").select("model", "layer", "depth"), on=["model", "layer"]
    )
    fig = topicality_figure(table)
    ax_doc, ax_beyond = fig.axes[:2]
    baselines = [line for line in ax_doc.lines if line.get_label().endswith("predicted from token id")]
    assert len(baselines) == 3 and len(ax_beyond.lines) == 3 + 1  # 3 series + the zero line
    small = next(line for line in ax_beyond.lines if line.get_label() == "small")
    expected = table.filter(pl.col("model") == "small").sort("depth")["ami_doc_beyond_token"].to_list()
    assert list(small.get_ydata()) == pytest.approx(expected)


def test_grid_figure_marks_the_selected_point(lake) -> None:
    grid = run_query(lake, "grid_surface", {"model": "small", "layer": 1})
    fig = grid_figure(grid, "small 1")
    for ax, column in zip(fig.axes[:2], ("excess", "z"), strict=True):
        texts = sorted(text.get_text() for text in ax.texts)
        assert texts == sorted(f"{value:.3g}*" for value in grid[column])  # every point significant here
        (box,) = ax.patches
        # selected (4, 2): row_k index 1 of [2, 4], col_k index 0 of [2, 3]
        assert box.get_xy() == (-0.5, 0.5)
    assert "interaction_refit null, 39 refits" in fig.axes[1].get_title()
    unstarred = grid_figure(run_query(lake, "grid_surface", {"model": "small", "layer": 0}))
    assert not any(text.get_text().endswith("*") for text in unstarred.axes[0].texts)


def test_null_figure_marks_the_observed_value() -> None:
    null = np.random.default_rng(0).normal(0.1, 0.01, 500)
    z = (0.2 - null.mean()) / null.std(ddof=1)
    # the figure shows the metrics table's Z and p (planted here), and computes none of its own
    fig = null_figure(null, 0.2, null_name="interaction_refit", p_layer=0.002, z=z, p=0.0123)
    ax = fig.axes[0]
    assert ax.lines[1].get_xdata()[0] == 0.2
    assert ax.lines[0].get_xdata()[0] == pytest.approx(np.quantile(null, 0.95))
    assert sum(patch.get_height() for patch in ax.patches) == 500
    texts = [text.get_text() for text in ax.get_legend().get_texts()]
    assert texts[0] == "interaction_refit (500 draws)"
    assert f"Z = {z:.1f}, p = 0.0123, p_layer = 0.002" in texts[2]


def test_family_flow_one_panel_per_model(lake) -> None:
    found = lake_families(lake)[("resid", "biclustering", 0)]
    fig = family_flow_figure(found)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["large", "large-untrained", "small"]
    texts = " ".join(text.get_text() for ax in fig.axes for text in ax.texts)
    assert "small/F1 split" in texts and "large/F2 merge" in texts and "[position]" in texts
    twin = fig.axes[1]  # no link of the random twin beats the nulls: grey clusters, no family labels
    assert len(twin.texts) == 0 and {patch.get_facecolor()[:3] for patch in twin.patches} == {(0.85, 0.85, 0.85)}


def test_map_keeps_small_clusters_visible() -> None:
    rows = np.r_[np.zeros(19_968, dtype=int), np.ones(32, dtype=int)]  # 32 first positions among 20,000
    drawn = block_average_map(np.zeros((rows.size, 4)), rows, np.arange(4), max_rows=600)
    assert np.bincount(drawn.row_clusters)[1] == 32  # not the 1 bin its share of 600 rows would get


def _labels_overlapping(fig) -> list[tuple[str, str]]:
    """Pairs of labels (titles, axis labels, legends, texts outside the plots) whose boxes intersect,
    and legends or texts that sit over a plot."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [(f"suptitle {fig._suptitle.get_text()!r}", fig._suptitle.get_window_extent(renderer))] if fig._suptitle else []
    plots = [(f"plot {ax.get_title()!r}", ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_title()]
    for ax in fig.axes:
        for artist in (ax.title, ax.xaxis.label, ax.yaxis.label):
            if artist.get_text():
                labels.append((f"{artist.get_text()!r}", artist.get_window_extent(renderer)))
        if ax.get_legend() is not None:
            labels.append((f"legend of {ax.get_title()!r}", ax.get_legend().get_window_extent(renderer)))
        outside = [text for text in ax.texts if not ax.bbox.contains(*text.get_window_extent(renderer).p0)]
        labels += [(f"{text.get_text()!r}", text.get_window_extent(renderer)) for text in outside]
    found = [(a, b) for i, (a, box_a) in enumerate(labels) for b, box_b in labels[i + 1:] if box_a.overlaps(box_b)]
    over_plots = [(a, b) for a, box in labels if a.startswith(("legend", "'small/", "'large/")) for b, plot in plots
                  if box.overlaps(plot)]
    return found + over_plots


def test_no_figure_label_overlaps_another(lake, tmp_path) -> None:
    curves = run_query(lake, "emergence_curves", {"drop_first": None})
    topicality = lake_topicality(lake).join(curves.select("model", "layer", "depth").unique(), on=["model", "layer"])
    grid = run_query(lake, "grid_surface", {"model": "large", "layer": 4})
    null = np.random.default_rng(0).normal(0.1, 0.01, 39)
    figures = {
        "emergence": emergence_figure(curves),
        "topicality": topicality_figure(topicality),
        "grid": grid_figure(grid, "large-untrained-model resid layer 12 (16x8)"),
        "null": null_figure(null, 0.2, title="large resid layer 4 (3x2): r2_interaction against its null",
                            null_name="interaction_refit", p_layer=0.025, z=9.9, p=0.025),
        "families": family_flow_figure(lake_families(lake)[("resid", "biclustering", 0)]),
    }
    for name, fig in figures.items():
        assert _labels_overlapping(fig) == [], name
    # control: the checker sees a legend drawn over the curves
    fig = emergence_figure(curves)
    fig.axes[0].legend(loc="center")
    assert _labels_overlapping(fig)


def test_family_flow_axis_spans_the_layers_present(lake) -> None:
    found = lake_families(lake)[("resid", "biclustering", 0)]
    fig = family_flow_figure(found)
    for ax in fig.axes:
        model = ax.get_title().split(":")[0]
        layers = sorted(found.clusters.filter(pl.col("model") == model)["layer"].unique().to_list())
        assert [int(tick) for tick in ax.get_xticks()] == layers
        assert ax.get_xlim() == (layers[0] - 0.5, layers[-1] + 0.5)  # no empty stretch past the last layer
