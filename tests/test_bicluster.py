"""Spectral estimators and the shared-SVD grid: scikit-learn parity, planted structure, validation."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import sklearn.cluster
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import _bicluster as sk_bicluster
from sklearn.datasets import make_biclusters, make_checkerboard
from sklearn.metrics import adjusted_rand_score, consensus_score

from tnb import bicluster as tb
from tnb.bicluster import (
    BiclusterResult,
    SpectralBiclustering,
    SpectralCoclustering,
    grid_search,
    mark_selected,
    refit_null,
)
from tnb.metrics import block_r2
from tnb.prepare import prepare
from tnb.schemas import LABELS, METRICS


@pytest.fixture(autouse=True)
def _single_threaded_openmp():
    """scikit-learn's k-means, too, single-threaded: stable timings on a shared 2-core box."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _planted(shape, k, noise, seed=0):
    """A nonnegative |z|-like matrix with a planted k x k checkerboard and its labels."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, k, shape[0])
    cols = rng.integers(0, k, shape[1])
    means = rng.uniform(0.5, 2.5, (k, k))
    noisy = means[rows][:, cols] + noise * rng.standard_normal(shape, dtype=np.float32)
    return np.abs(noisy).astype(np.float32), rows, cols


def _checkerboard(shape, n_clusters, noise, seed=0):
    X, rows, cols = make_checkerboard(shape, n_clusters, noise=noise, random_state=seed)
    return X, rows, cols


def _biclusters(shape, k, noise, seed=0):
    X, rows, cols = make_biclusters(shape, k, noise=noise, random_state=seed)
    return np.abs(X), rows, cols  # co-clustering needs a nonnegative matrix


# ---------------------------------------------------------------- normalizations


@pytest.mark.parametrize("seed", [0, 1])
def test_normalizations_match_sklearn_in_float32(seed) -> None:
    rng = np.random.default_rng(seed)
    X = np.abs(rng.standard_normal((120, 40))) * rng.uniform(0.5, 2, 40)
    X32 = X.astype(np.float32)
    bisto = tb._bistochastic_normalize(X32)
    assert bisto.dtype == np.float32
    np.testing.assert_allclose(bisto, sk_bicluster._bistochastic_normalize(X), rtol=1e-4, atol=1e-8)
    scaled, row_diag, col_diag = tb._scale_normalize(X32)
    sk_scaled, sk_row, sk_col = sk_bicluster._scale_normalize(X)
    assert scaled.dtype == row_diag.dtype == np.float32
    np.testing.assert_allclose(scaled, sk_scaled, rtol=1e-5)
    np.testing.assert_allclose(row_diag, sk_row, rtol=1e-5)
    logged = tb._log_normalize(X32 - 0.5)
    assert logged.dtype == np.float32
    np.testing.assert_allclose(logged, sk_bicluster._log_normalize(X - 0.5), atol=1e-5)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_zero_rows_and_columns_do_not_break_the_spectral_step() -> None:
    X, rows, cols = _checkerboard((90, 40), (3, 2), noise=1, seed=3)
    X = np.abs(X)
    X[5] = 0.0
    X[:, 7] = 0.0
    with pytest.raises(ValueError):  # scikit-learn: 1/sqrt(0) = inf, then NaN in the SVD input
        sklearn.cluster.SpectralBiclustering((3, 2), random_state=0).fit(X)
    for model in (SpectralBiclustering((3, 2), random_state=0), SpectralCoclustering(3, random_state=0)):
        model.fit(X)
        assert model.row_labels_.shape == (90,) and model.column_labels_.shape == (40,)
    scaled, row_diag, col_diag = tb._scale_normalize(X.astype(np.float32))
    assert np.isfinite(scaled).all() and row_diag[5] == 0 and col_diag[7] == 0
    assert np.isfinite(tb._bistochastic_normalize(X.astype(np.float32))).all()


# ---------------------------------------------------------------- scikit-learn parity on the same SVD


@pytest.mark.parametrize("normalization", ["bistochastic", "scale", "log"])
@pytest.mark.parametrize(("shape", "n_clusters", "noise"), [((300, 120), (4, 3), 5.0), ((150, 90), (3, 5), 10.0)])
def test_biclustering_labels_equal_sklearn_on_the_same_svd(monkeypatch, normalization, shape, n_clusters, noise) -> None:
    X, _, _ = _checkerboard(shape, n_clusters, noise)
    settings_ = tb._Settings(random_state=0)
    ut, vt = tb._kluger_svd(X.astype(np.float32), normalization, 6, settings_)
    monkeypatch.setattr(
        sklearn.cluster.SpectralBiclustering,
        "_svd",
        lambda self, array, n_components, n_discard: (ut.T.astype(np.float64), vt.T.astype(np.float64)),
    )
    theirs = sklearn.cluster.SpectralBiclustering(n_clusters, method=normalization, random_state=0).fit(X)
    ours = SpectralBiclustering(n_clusters, method=normalization, random_state=0).fit(X)
    assert adjusted_rand_score(theirs.row_labels_, ours.row_labels_) == 1.0
    assert adjusted_rand_score(theirs.column_labels_, ours.column_labels_) == 1.0


@pytest.mark.parametrize(("shape", "k", "noise"), [((300, 120), 4, 3.0), ((200, 150), 6, 5.0)])
def test_coclustering_labels_equal_sklearn_on_the_same_svd(monkeypatch, shape, k, noise) -> None:
    X, _, _ = _biclusters(shape, k, noise)
    normalized, _, _ = tb._scale_normalize(X.astype(np.float32))
    u, v = tb._svd(normalized, tb._n_sv_dhillon(k), 1, tb._Settings(random_state=0))
    monkeypatch.setattr(
        sklearn.cluster.SpectralCoclustering,
        "_svd",
        lambda self, array, n_components, n_discard: (u.astype(np.float64), v.astype(np.float64)),
    )
    theirs = sklearn.cluster.SpectralCoclustering(k, random_state=0).fit(X)
    ours = SpectralCoclustering(k, random_state=0).fit(X)
    assert adjusted_rand_score(theirs.row_labels_, ours.row_labels_) == 1.0
    assert adjusted_rand_score(theirs.column_labels_, ours.column_labels_) == 1.0


# ---------------------------------------------------------------- planted structure


@pytest.mark.parametrize(
    ("shape", "n_clusters", "noise"),
    [((200, 100), (3, 3), 1.0), ((400, 60), (5, 4), 10.0), ((600, 200), (6, 6), 20.0), ((300, 200), (4, 2), 60.0)],
)
def test_biclustering_consensus_at_least_sklearn(shape, n_clusters, noise) -> None:
    X, rows, cols = _checkerboard(shape, n_clusters, noise)
    theirs = sklearn.cluster.SpectralBiclustering(n_clusters, random_state=0).fit(X)
    ours = SpectralBiclustering(n_clusters, random_state=0).fit(X)
    sk_score = consensus_score(theirs.biclusters_, (rows, cols))
    our_score = consensus_score(ours.biclusters_, (rows, cols))
    assert our_score >= sk_score - 1e-9
    if sk_score == 1.0:
        assert our_score == 1.0


@pytest.mark.parametrize(("shape", "k", "noise"), [((200, 100), 3, 1.0), ((500, 300), 5, 5.0), ((300, 200), 4, 20.0)])
def test_coclustering_consensus_at_least_sklearn(shape, k, noise) -> None:
    X, rows, cols = _biclusters(shape, k, noise)
    theirs = sklearn.cluster.SpectralCoclustering(k, random_state=0).fit(X)
    ours = SpectralCoclustering(k, random_state=0).fit(X)
    sk_score = consensus_score(theirs.biclusters_, (rows, cols))
    our_score = consensus_score(ours.biclusters_, (rows, cols))
    assert our_score >= sk_score - 1e-9
    if sk_score == 1.0:
        assert our_score == 1.0


@pytest.mark.slow
def test_full_size_planted_layer_is_recovered_by_the_grid() -> None:
    """20,000 x 768 with a planted 6 x 6 checkerboard: the grid finds it exactly, the refit Z picks 6 token clusters.

    The study's r2 rule picks the largest grid; so does the label-shuffle Z on this matrix (its null
    sd shrinks as blocks are added), which is why the refit null exists.
    """
    from tnb.metrics import permutation_test

    A, rows, cols = _planted((20_000, 768), 6, noise=0.5)
    results = grid_search(A, (6, 9), (6, 9), null="refit", n_refits=3, random_state=0)
    planted = next(r for r in results if (r.row_k, r.col_k) == (6, 6))
    assert adjusted_rand_score(rows, planted.row_labels) == 1.0
    assert adjusted_rand_score(cols, planted.col_labels) == 1.0
    assert planted.null == "refit" and planted.z > 100
    # The refit Z selects the planted 6 token clusters. 6 and 9 neuron clusters differ by 1e-5 in R^2 here,
    # so which of them wins is decided by the spread of 3 refits on noise: with scikit-learn's k-means++
    # piecewise fits one outlying refit widened the 9-column null and 6 x 6 won; with the exact fits
    # (tnb.kmeans.kmeans_1d) 6 x 9 wins, at 3 and at 10 refits. Not a property to pin on 3 refits.
    assert next(r for r in results if r.selected).row_k == 6
    assert next(r for r in mark_selected(results, "r2") if r.selected).row_k == 9
    shuffled = permutation_test(A, planted.row_labels, planted.col_labels, n_permutations=100, random_state=0)
    assert shuffled.z > 100 and shuffled.p == pytest.approx(1 / 101)


# ---------------------------------------------------------------- the grid


def test_grid_labels_equal_one_estimator_per_point() -> None:
    X, _, _ = _checkerboard((240, 90), (4, 3), noise=8, seed=2)
    A = prepare(X).matrix
    results = grid_search(A, (3, 4), (2, 3), n_permutations=20, random_state=5)
    assert [(r.row_k, r.col_k) for r in results] == [(3, 2), (3, 3), (4, 2), (4, 3)]
    for result in results:
        model = SpectralBiclustering((result.row_k, result.col_k), random_state=5).fit(A)
        np.testing.assert_array_equal(model.row_labels_, result.row_labels)
        np.testing.assert_array_equal(model.column_labels_, result.col_labels)
        assert result.r2 == pytest.approx(block_r2(A, result.row_labels, result.col_labels), abs=1e-12)


def test_coclustering_grid_runs_the_shared_ks_and_matches_the_estimator_at_the_largest() -> None:
    X, _, _ = _biclusters((240, 120), 4, noise=2, seed=1)
    results = grid_search(X, (3, 4, 5), (4, 3), method="coclustering", n_permutations=20, random_state=0)
    assert [(r.row_k, r.col_k) for r in results] == [(3, 3), (4, 4)]
    model = SpectralCoclustering(4, random_state=0).fit(X)  # same number of singular vectors as the grid's SVD
    np.testing.assert_array_equal(model.row_labels_, results[1].row_labels)
    assert all(r.method == "coclustering" for r in results)


def test_grid_search_svd_is_computed_once(monkeypatch) -> None:
    calls = []
    original = tb._svd
    monkeypatch.setattr(tb, "_svd", lambda *args, **kwargs: calls.append(args[1]) or original(*args, **kwargs))
    X, _, _ = _checkerboard((150, 60), (3, 3), noise=5)
    grid_search(X, (2, 3, 4), (2, 3, 4), n_permutations=10, random_state=0)
    assert calls == [7]  # n_components + 1, once for nine grid points
    calls.clear()
    grid_search(np.abs(X), (2, 3, 5), (2, 3, 5), method="coclustering", n_permutations=10, random_state=0)
    assert calls == [4]  # 1 + ceil(log2(5)), for the largest k only


def test_same_seed_gives_bit_identical_results() -> None:
    X, _, _ = _checkerboard((200, 80), (3, 4), noise=10, seed=4)
    first = grid_search(X, (3, 4), (3, 4), n_permutations=50, random_state=11)
    second = grid_search(X, (3, 4), (3, 4), n_permutations=50, random_state=11)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.row_labels, b.row_labels)
        np.testing.assert_array_equal(a.col_labels, b.col_labels)
        for field in ("r2", "adjusted_r2", "observed", "z", "p", "null_mean", "null_sd", "spec_mean", "cluster_spec_mean"):
            assert getattr(a, field) == getattr(b, field) or (
                math.isnan(getattr(a, field)) and math.isnan(getattr(b, field))
            ), field
    assert all(r.seed == 11 for r in first)
    drawn = grid_search(X, (3,), (3,), n_permutations=10)
    assert isinstance(drawn[0].seed, int)


def test_results_carry_everything_the_metrics_table_needs() -> None:
    X, _, _ = _checkerboard((200, 60), (3, 3), noise=5)
    results = grid_search(prepare(X), (2, 3), (3,), n_permutations=30, random_state=0, statistic="mean_block_mean")
    rows = [r.metrics_row() for r in results]
    assert set(rows[0]) == set(METRICS.names) - {"code_version"}
    table = pa.Table.from_pylist([{**row, "code_version": "test"} for row in rows], schema=METRICS)
    assert table.column("selected").to_pylist().count(True) == 1
    assert set(table.column("statistic").to_pylist()) == {"mean_block_mean"}
    assert set(table.column("null").to_pylist()) == {"label_shuffle"}
    labels = pa.table(results[0].labels_columns(np.arange(1000, 1200)), schema=LABELS)
    assert labels.num_rows == 260
    assert labels.filter(pa.compute.equal(labels["axis"], "token"))["index"][0].as_py() == 1000


def test_refit_null_is_stricter_than_label_shuffles_on_noise() -> None:
    """On structureless data, fitted labels beat shuffled labels; they do not beat refits on shuffled data."""
    rng = np.random.default_rng(0)
    noise = prepare(rng.standard_normal((300, 60))).matrix
    shuffled = grid_search(noise, (4,), (4,), n_components=4, n_permutations=200, random_state=1)[0]
    refit = grid_search(noise, (4,), (4,), n_components=4, null="refit", n_refits=12, random_state=1)[0]
    assert shuffled.null == "label_shuffle" and refit.null == "refit" and refit.n_permutations == 12
    assert shuffled.z > 10
    assert abs(refit.z) < 4
    assert shuffled.r2 == refit.r2  # same fit, different null

    X, _, _ = _checkerboard((300, 60), (4, 4), noise=20)
    planted = grid_search(prepare(X), (4,), (4,), n_components=4, null="refit", n_refits=5, random_state=1)[0]
    assert planted.z > 10


def test_refit_null_function_shape() -> None:
    X, _, _ = _checkerboard((100, 40), (3, 3), noise=5)
    values = refit_null(X, (2, 3), (3,), n_refits=3, n_components=3, random_state=0)
    assert set(values) == {(2, 3), (3, 3)} and all(v.shape == (3,) for v in values.values())


# ---------------------------------------------------------------- selection


def _result(row_k, col_k, r2, z, adjusted=None):
    return BiclusterResult(
        "biclustering", row_k, col_k, 10, 10, np.zeros(10, np.int32), np.zeros(10, np.int32), r2,
        r2 if adjusted is None else adjusted, "r2", r2, z, 0.01, 0.0, 1.0, "label_shuffle", 100,
        0.1, 0.1, 0.1, 1.0, 0,
    )  # fmt: skip


def test_selection_rules() -> None:
    grid = [_result(2, 2, 0.50, 40.0), _result(3, 3, 0.55, 55.0), _result(4, 4, 0.56, 30.0)]
    assert [r.selected for r in mark_selected(grid, "r2")] == [False, False, True]
    assert [r.selected for r in mark_selected(grid)] == [False, True, False]
    assert all(r.selection_rule == "z" for r in mark_selected(grid))
    nan_grid = [_result(2, 2, 0.5, float("nan")), _result(3, 3, 0.5, 1.0)]
    assert [r.selected for r in mark_selected(nan_grid)] == [False, True]
    tie = [_result(4, 4, 0.5, 3.0), _result(2, 3, 0.5, 3.0), _result(3, 2, 0.5, 3.0)]
    assert [r.selected for r in mark_selected(tie)] == [False, True, False]  # fewer blocks, then fewer row clusters
    with pytest.raises(ValueError, match=r"rule should be one of \('z', 'adjusted_r2', 'r2'\). Got 'max_r2'"):
        mark_selected(grid, "max_r2")
    with pytest.raises(ValueError, match="at least one grid point"):
        mark_selected([])


@pytest.mark.parametrize("seed", [0, 1])
def test_default_selection_does_not_pick_the_largest_grid_on_planted_data(seed) -> None:
    A, _, _ = _planted((600, 120), 3, noise=0.5, seed=seed)
    results = grid_search(A, (3, 6), (3, 6), n_components=4, n_permutations=200, random_state=0)
    by_r2 = next(r for r in mark_selected(results, "r2") if r.selected)
    assert (by_r2.row_k, by_r2.col_k) == (6, 6)  # the study's rule: more blocks always fit better
    chosen = next(r for r in results if r.selected)
    assert (chosen.row_k, chosen.col_k) == (3, 3)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"row_ks": (1, 3)}, ValueError, r"every row_k in row_ks should be >= 2 .* Got 1 instead"),
        ({"row_ks": (30,)}, ValueError, r"every row_k in row_ks should be < n_tokens=30. Got 30 instead"),
        ({"row_ks": (31,)}, ValueError, r"< n_tokens=30. Got 31 instead"),
        ({"col_ks": (12,)}, ValueError, r"every col_k in col_ks should be < n_neurons=12. Got 12 instead"),
        ({"col_ks": (0,)}, ValueError, r"every col_k in col_ks should be >= 2"),
        ({"row_ks": (2.5,)}, TypeError, r"every row_k in row_ks should be an int. Got 2.5 of type float"),
        ({"row_ks": (True,)}, TypeError, r"should be an int. Got True of type bool"),
        ({"row_ks": ()}, ValueError, r"should not be empty"),
        ({"method": "kluger"}, ValueError, r"method should be one of \('biclustering', 'coclustering'\). Got 'kluger'"),
        ({"statistic": "z"}, ValueError, r"statistic should be one of .* Got 'z'"),
        ({"selection": "max"}, ValueError, r"selection should be one of \('z', 'adjusted_r2', 'r2'\). Got 'max'"),
        ({"null": "refits"}, ValueError, r"null should be one of \('label_shuffle', 'refit'\). Got 'refits'"),
        ({"null": "refit", "n_refits": 1}, ValueError, r"n_refits should be an int >= 2. Got 1"),
        ({"normalization": "zscore"}, ValueError, r"normalization should be one of .* Got 'zscore'"),
        ({"n_best": 5, "n_components": 4}, ValueError, r"n_best=5 must be <= n_components=4"),
        ({"n_components": 12}, ValueError, r"n_components=12 .* needs 13 singular vectors, which should be <= 12"),
        ({"svd_method": "lobpcg"}, ValueError, r"svd_method should be 'randomized' or 'arpack'. Got 'lobpcg'"),
        ({"random_state": np.random.RandomState(0)}, ValueError, r"random_state should be None or an int >= 0"),
        ({"n_permutations": 0}, ValueError, r"n_permutations should be an int >= 2. Got 0"),
        ({"method": "coclustering", "row_ks": (3,), "col_ks": (4,)}, ValueError, r"share none"),
    ],
)
def test_grid_search_validation(kwargs, error, match) -> None:
    arguments = {"row_ks": (2, 3), "col_ks": (2, 3), "n_components": 4, "n_permutations": 10, "random_state": 0}
    with pytest.raises(error, match=match):
        grid_search(np.abs(np.random.default_rng(0).standard_normal((30, 12))), **{**arguments, **kwargs})


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (SpectralBiclustering(1), r"n_clusters should be >= 2"),
        (SpectralBiclustering(20), r"n_clusters should be < n_rows=20. Got 20 instead"),
        (SpectralBiclustering((3, 10)), r"n_column_clusters should be < n_columns=10. Got 10 instead"),
        (SpectralBiclustering((3, 4, 5)), r"n_clusters should be an int or a tuple"),
        (SpectralBiclustering(3, method="none"), r"method should be one of \('bistochastic', 'scale', 'log'\)"),
        (SpectralBiclustering(3, n_components=3, n_best=4), r"n_best=4 must be <= n_components=3"),
        (SpectralBiclustering(3, n_init=0), r"n_init should be an int >= 1. Got 0"),
        (SpectralBiclustering(3, init="kmeans"), r"init should be 'k-means\+\+', 'random' or an ndarray"),
        (SpectralCoclustering(10), r"n_clusters should be < min\(n_rows, n_columns\)=10. Got 10 instead"),
        (SpectralCoclustering(1), r"n_clusters should be >= 2"),
        (SpectralCoclustering(3, svd_method="arpack", n_svd_vecs=-1), r"n_svd_vecs should be None or an int >= 0"),
    ],
)
def test_estimator_validation(model, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        model.fit(np.abs(np.random.default_rng(0).standard_normal((20, 10))))


def test_estimator_rejects_non_finite_input() -> None:
    X = np.ones((20, 10))
    X[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"X holds 1 NaN and 0 inf values .* \(2, 3\)"):
        SpectralBiclustering(3).fit(X)


def test_estimators_follow_the_sklearn_api() -> None:
    model = SpectralBiclustering((3, 2), n_components=4, random_state=0)
    assert model.get_params()["n_clusters"] == (3, 2)
    assert "row_labels_" not in vars(model)
    X, _, _ = _checkerboard((60, 30), (3, 2), noise=1)
    model.fit(X)
    assert model.rows_.shape == (6, 60) and model.columns_.shape == (6, 30) and model.n_features_in_ == 30
    assert model.get_indices(0)[0].size == np.count_nonzero(model.rows_[0])
    assert SpectralBiclustering(**model.get_params()).get_params() == model.get_params()


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(3, 30),
    n_cols=st.integers(3, 14),
    row_k=st.integers(-1, 33),
    col_k=st.integers(-1, 16),
    seed=st.integers(0, 1000),
)
def test_any_shape_and_k_fits_or_fails_clearly(n_rows, n_cols, row_k, col_k, seed) -> None:
    A = np.abs(np.random.default_rng(seed).standard_normal((n_rows, n_cols))).astype(np.float32)
    n_components, n_best = 2, 2
    valid = 2 <= row_k < n_rows and 2 <= col_k < n_cols
    if not valid:
        with pytest.raises(ValueError, match=r"(row_k|col_k) in (row_ks|col_ks) should be"):
            grid_search(
                A, (row_k,), (col_k,), n_components=n_components, n_best=n_best, n_permutations=5, random_state=seed
            )
        return
    (result,) = grid_search(
        A, (row_k,), (col_k,), n_components=n_components, n_best=n_best, n_permutations=5, random_state=seed
    )
    assert result.row_labels.shape == (n_rows,) and result.col_labels.shape == (n_cols,)
    assert result.row_labels.max() < row_k and result.col_labels.max() < col_k
    assert 0.0 <= result.r2 <= 1.0 and 0.0 < result.p <= 1.0
    assert result.selected
