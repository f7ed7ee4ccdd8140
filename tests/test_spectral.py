"""The engine's kernels against scikit-learn: exact 1-D k-means, projection k-means, normalization, the timed grid."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.cluster
from sklearn.cluster import KMeans
from sklearn.datasets import make_checkerboard
from sklearn.metrics import consensus_score
from threadpoolctl import threadpool_limits

from tnb import spectral
from tnb.kmeans import kmeans, kmeans_1d, wcss_1d


@pytest.fixture(autouse=True)
def _single_threaded_openmp():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _vectors():
    rng = np.random.default_rng(0)
    yield "gaussian", rng.standard_normal(2000)
    yield "heavy-tailed", rng.standard_t(2, 1500)
    yield "mixture", np.concatenate([rng.normal(m, 0.3, 300) for m in (-3, 0, 1, 5)])
    yield "singular-vector-like", rng.standard_normal(3000) / np.sqrt(3000)
    yield "ties", np.round(rng.exponential(size=800), 1)


@pytest.mark.parametrize(("name", "vector"), list(_vectors()), ids=[name for name, _ in _vectors()])
def test_1d_wcss_is_at_most_sklearn_kmeans(name, vector) -> None:
    fits = kmeans_1d(vector, [2, 6, 9, 12])
    for k, labels in fits.items():
        model = KMeans(k, n_init=10, random_state=0).fit(vector.reshape(-1, 1))
        ours = wcss_1d(vector, labels)
        theirs = wcss_1d(vector, model.labels_)
        assert ours <= theirs * (1 + 1e-12), (name, k, ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_1d_wcss_equals_the_ckmeans_optimum(seed) -> None:
    ckmeans = pytest.importorskip("ckmeans")
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(int(rng.integers(50, 4000))) * rng.uniform(0.1, 3)
    for k, labels in kmeans_1d(vector, [1, 2, 3, 6, 9, 12]).items():
        optimum = sum(float(((c - c.mean()) ** 2).sum()) for c in ckmeans.ckmeans(vector, k))
        assert wcss_1d(vector, labels) == pytest.approx(optimum, rel=1e-10, abs=1e-12)
        assert len(np.unique(labels)) == k


def test_1d_labels_are_contiguous_in_value_order() -> None:
    vector = np.random.default_rng(3).standard_normal(500)
    labels = kmeans_1d(vector, [5])[5]
    sorted_labels = labels[np.argsort(vector)]
    assert np.all(np.diff(sorted_labels) >= 0) and sorted_labels[0] == 0 and sorted_labels[-1] == 4


@pytest.mark.parametrize("ks", [[0], [3, 11]])
def test_1d_rejects_bad_k(ks) -> None:
    with pytest.raises(ValueError, match=r"every k should be in \[1, n=10\]"):
        kmeans_1d(np.arange(10.0), ks)


def _projection_like(seed, n=3000):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (6, 3))
    return centers[rng.integers(0, 6, n)] + rng.normal(0, 0.8, (n, 3))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [2, 6, 12])
def test_projection_kmeans_inertia_matches_sklearn(seed, k) -> None:
    """Same algorithm as scikit-learn's KMeans (n_init=10), different random draws: same inertia to 1e-3."""
    for data in (_projection_like(seed), np.random.default_rng(seed).standard_normal((2000, 3))):
        _, labels, inertia = kmeans(data, k, n_init=10, random_state=seed)
        model = KMeans(k, n_init=10, random_state=seed).fit(data)
        assert inertia <= model.inertia_ * (1 + 1e-3)
        assert len(np.unique(labels)) == k


def test_projection_kmeans_is_reproducible() -> None:
    data = _projection_like(5)
    first = kmeans(data, 7, random_state=3)
    second = kmeans(data, 7, random_state=3)
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_clusters": 0}, r"n_clusters should be in \[1, n_samples=50\]. Got 0"),
    ({"n_clusters": 3, "n_init": 0}, "n_init should be >= 1. Got 0"),
])
def test_projection_kmeans_names_the_bad_value(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        kmeans(_projection_like(0)[:50], **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_assignment_is_the_nearest_centre_ties_to_the_lower_index(dtype) -> None:
    from tnb.kmeans import _BLOCK, _assign

    rng = np.random.default_rng(0)
    features = rng.standard_normal((3, 3 * _BLOCK + 17)).astype(dtype)
    centers = rng.standard_normal((9, 3))
    centers[5] = centers[2]  # an exact tie everywhere: the lower index must win
    centers[7] = features[:, 11]  # a point sitting on a centre: distance 0
    labels = np.full(features.shape[1], -1, dtype=np.int32)
    distances = np.empty(features.shape[1], dtype=dtype)
    sums, counts = np.zeros((9, 3)), np.zeros(9, dtype=np.int64)
    changed = _assign(features, centers, labels, distances, np.empty(_BLOCK, dtype=dtype), sums, counts)
    # the reference: the same float operations in NumPy, then the first minimum
    reference = np.zeros((9, features.shape[1]), dtype=dtype)
    for f in range(3):
        reference += np.square(features[f][np.newaxis, :] - centers[:, f].astype(dtype)[:, np.newaxis])
    np.testing.assert_array_equal(labels, reference.argmin(axis=0))
    np.testing.assert_array_equal(distances, reference.min(axis=0))
    assert changed == features.shape[1] and 2 in labels and 5 not in labels and labels[11] == 7
    # the running sums and sizes follow the labels, also when points move between clusters
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=9))
    for f in range(3):
        np.testing.assert_allclose(sums[:, f], np.bincount(labels, weights=features[f].astype(np.float64), minlength=9))
    assert _assign(features, centers, labels, distances, np.empty(_BLOCK, dtype=dtype), sums, counts) == 0
    moved = _assign(features, centers[::-1].copy(), labels, distances, np.empty(_BLOCK, dtype=dtype), sums, counts)
    assert moved > 0
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=9))
    for f in range(3):
        np.testing.assert_allclose(sums[:, f], np.bincount(labels, weights=features[f].astype(np.float64), minlength=9),
                                   atol=1e-9)


def test_projection_kmeans_refuses_more_clusters_than_its_labels_hold() -> None:
    with pytest.raises(ValueError, match=r"n_clusters should be < 2\*\*24. Got 16777216 instead"):
        kmeans(np.zeros((2**24, 1), dtype=np.float32), 2**24)


@pytest.mark.parametrize("noise", [1.0, 10.0, 30.0, 60.0])
def test_planted_checkerboard_consensus_at_least_sklearn(noise) -> None:
    X, rows, cols = make_checkerboard((400, 150), (4, 3), noise=noise, random_state=0)
    theirs = sklearn.cluster.SpectralBiclustering((4, 3), random_state=0).fit(X)
    ours = spectral.SpectralBiclustering((4, 3), random_state=0).fit(X)
    sk_score = consensus_score(theirs.biclusters_, (rows, cols))
    our_score = consensus_score(ours.biclusters_, (rows, cols))
    assert our_score >= sk_score - 1e-9, (our_score, sk_score)


def test_fit_grid_timed_matches_fit_grid_and_splits_the_time() -> None:
    X, _, _ = make_checkerboard((300, 90), (3, 3), noise=5, random_state=1)
    X = X.astype(np.float32)
    pairs = [(2, 3), (3, 3), (3, 4)]
    kwargs = {"normalization": "bistochastic", "n_components": 5, "n_best": 3, "settings": spectral._Settings(random_state=7)}
    fits, timings = spectral.fit_grid_timed(X, pairs, "biclustering", **kwargs)
    again, shared = spectral._fit_grid(X, pairs, "biclustering", **kwargs)
    assert set(timings) == {"normalization", "svd", "piecewise", "projections"}
    assert all(t >= 0 for t in timings.values()) and shared > 0
    for pair in pairs:
        np.testing.assert_array_equal(fits[pair][0], again[pair][0])
        np.testing.assert_array_equal(fits[pair][1], again[pair][1])


def test_bistochastic_normalization_takes_sklearns_number_of_scalings() -> None:
    from sklearn.cluster import _bicluster as sk_bicluster

    X = np.abs(np.random.default_rng(2).standard_normal((200, 50))) + 0.1
    for max_iter in (1, 3):
        ours = spectral._bistochastic_normalize(X.astype(np.float32), max_iter=max_iter)
        theirs = sk_bicluster._bistochastic_normalize(X, max_iter=max_iter)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_same_seed_same_labels_whatever_the_thread_count() -> None:
    """k-means and the normalization are single-threaded; the labels do not depend on BLAS threads either."""
    X, _, _ = make_checkerboard((400, 120), (4, 3), noise=20, random_state=3)
    X = np.abs(X).astype(np.float32)
    pairs = [(3, 3), (4, 3), (5, 4)]
    kwargs = {"normalization": "bistochastic", "n_components": 6, "n_best": 3, "settings": spectral._Settings(random_state=2)}
    runs = []
    for threads in (1, 2, 1):
        with threadpool_limits(limits=threads):
            runs.append(spectral.fit_grid_timed(X, pairs, "biclustering", **kwargs)[0])
    for pair in pairs:
        for run in runs[1:]:
            np.testing.assert_array_equal(runs[0][pair][0], run[pair][0])
            np.testing.assert_array_equal(runs[0][pair][1], run[pair][1])


@pytest.mark.parametrize(("shape", "dtype"), [((3000, 200), np.float32), ((200, 900), np.float32), ((1500, 120), np.float64)])
def test_fused_randomized_svd_matches_sklearn(shape, dtype) -> None:
    """One pass per power iteration spans the same space as scikit-learn's two: same values and vectors up to rounding."""
    from sklearn.utils.extmath import randomized_svd as sk_randomized_svd

    rng = np.random.default_rng(4)
    n, m = shape
    k = 7
    left, _ = np.linalg.qr(rng.standard_normal((n, k)))
    right, _ = np.linalg.qr(rng.standard_normal((m, k)))
    spectrum = np.geomspace(10, 1, k)  # a planted spectrum with gaps, plus noise well below it
    X = ((left * spectrum) @ right.T + 0.01 * rng.standard_normal((n, m)) / np.sqrt(max(n, m))).astype(dtype)
    u, s, vt = spectral.randomized_svd(X, 5, random_state=0)
    su, ss, svt = sk_randomized_svd(X, 5, random_state=0)
    assert u.dtype == su.dtype == dtype and u.shape == su.shape and vt.shape == svt.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(s, ss, rtol=tol)
    np.testing.assert_allclose(u, su, atol=tol * 10)  # same signs too (svd_flip)
    np.testing.assert_allclose(vt, svt, atol=tol * 10)
    # and the planted singular values are found
    np.testing.assert_allclose(s, spectrum[:5], rtol=1e-3)


@pytest.mark.parametrize("shape", [(900, 60), (60, 900)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_randomized_svd_of_a_scaled_matrix_without_forming_it(shape, dtype) -> None:
    """row_scale/col_scale: the SVD of diag(a) X diag(b), as if that matrix were formed (tall and wide)."""
    rng = np.random.default_rng(2)
    X = np.abs(rng.standard_normal(shape) + rng.standard_normal((shape[0], 1)) * rng.standard_normal((1, shape[1])))
    X = X.astype(dtype)
    a, b = rng.uniform(0.2, 3.0, shape[0]), rng.uniform(0.2, 3.0, shape[1])
    u, s, vt = spectral.randomized_svd(X, 5, random_state=0, row_scale=a, col_scale=b)
    ru, rs, rvt = spectral.randomized_svd((a[:, None] * X.astype(np.float64) * b).astype(dtype), 5, random_state=0)
    assert u.dtype == dtype and u.shape == ru.shape and vt.shape == rvt.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(s, rs, rtol=tol)
    np.testing.assert_allclose(u, ru, atol=tol * 10)
    np.testing.assert_allclose(vt, rvt, atol=tol * 10)
    exact = np.linalg.svd(a[:, None] * X.astype(np.float64) * b, compute_uv=False)[:5]
    np.testing.assert_allclose(s, exact, rtol=1e-3)


def test_grid_runs_each_distinct_projection_kmeans_once_with_the_same_labels(monkeypatch) -> None:
    """Grid points whose k choose the same best vectors share one k-means run, and get the labels of a separate run."""
    X, _, _ = make_checkerboard((600, 150), (4, 3), noise=2, random_state=5)
    X = np.abs(X).astype(np.float32)
    pairs = [(r, c) for r in (3, 4, 5) for c in (3, 4, 5)]
    kwargs = {"normalization": "bistochastic", "n_components": 6, "n_best": 3, "settings": spectral._Settings(random_state=3)}
    calls = []
    k_means = spectral._k_means
    monkeypatch.setattr(spectral, "_k_means", lambda data, k, settings: calls.append(k) or k_means(data, k, settings))
    shared, _ = spectral._fit_grid(X, pairs, "biclustering", **kwargs)
    n_shared = len(calls)
    project_all = spectral._project_all
    # Every grid point with its own copy of the projection: nothing can be shared.
    monkeypatch.setattr(spectral, "_project_all", lambda data, best: {k: p.copy() for k, p in project_all(data, best).items()})
    calls.clear()
    separate, _ = spectral._fit_grid(X, pairs, "biclustering", **kwargs)
    assert len(calls) == 2 * len(pairs) and n_shared < len(calls)
    for pair in pairs:
        np.testing.assert_array_equal(shared[pair][0], separate[pair][0])
        np.testing.assert_array_equal(shared[pair][1], separate[pair][1])
