"""Spectral biclustering of a tokens x neurons matrix, in float32, with a shared-SVD grid search.

Two estimators mirror scikit-learn's (same parameters, same attributes, same
steps in the same order, see ``sklearn/cluster/_bicluster.py``):

- :class:`SpectralCoclustering` (Dhillon 2001): ``B = D_r^-1/2 A D_c^-1/2``,
  SVD, k-means on the stacked scaled singular vectors;
- :class:`SpectralBiclustering` (Kluger 2003): bistochastic / scale / log
  normalization, the singular vectors best fit by piecewise-constant vectors,
  k-means on each side's projection (the study's default).

They differ from scikit-learn in three deliberate ways: the data stay float32
(scikit-learn upcasts to float64, doubling memory); an all-zero row or column
gets a zero scaling instead of ``1/sqrt(0) = inf``, which makes scikit-learn
fail with "Input contains NaN"; and k-means runs single-threaded, so that the
same seed gives bit-identical labels (scikit-learn's multi-threaded Lloyd step
adds per-thread partial sums in whatever order the threads finish).

:func:`grid_search` fits every ``(row_k, col_k)`` of a grid from **one**
normalization and **one** SVD: for Kluger's method the SVD does not depend on
k at all (it needs ``n_components + 1`` vectors) and the piecewise fits are
shared by every grid point with the same ``row_k`` (or ``col_k``); for
Dhillon's, the SVD is computed for the largest k and truncated for the others.
Given the same SVD, every step after it is scikit-learn's algorithm, run by
compiled kernels: the one-dimensional piecewise fits are solved exactly
(:func:`tnb.kmeans.kmeans_1d`, never a larger error than scikit-learn's
k-means++ fits) and the projections are clustered by scikit-learn's k-means
algorithm with NumPy's random draws (:func:`tnb.kmeans.kmeans`); on structured
data the labels are scikit-learn's (tests check adjusted Rand index 1).
Where labels *can* differ from a stand-alone scikit-learn fit:

- where scikit-learn's k-means stops in a worse local optimum of a piecewise
  fit or a projection (tnb's fit is then the better one);

- the randomized SVD is run in float32 here and in float64 there, so singular
  vectors agree to ~1e-6, not bit for bit; on data with clear structure this
  never changes a label, on structureless data k-means may break near-ties
  differently;
- for co-clustering, a randomized SVD asked for more components draws a
  different random sketch, so the leading vectors of the shared SVD are not
  those of a per-k SVD (they are slightly *more* accurate); with
  ``svd_method="arpack"`` both converge to the same vectors.

Valid k: every ``row_k`` satisfies ``2 <= row_k < n_tokens`` and every
``col_k`` satisfies ``2 <= col_k < n_neurons`` (co-clustering has one k for
both, so both bounds apply). k = 1 has no structure to score (R^2 = 0 by
construction, and Dhillon's method has no singular vector to use); k equal to
the number of rows makes every row its own cluster, so the fit is trivial and
the permutation null is degenerate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from numbers import Integral

import numpy as np
from scipy.sparse.linalg import eigsh, svds
from sklearn.base import BaseEstimator, BiclusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.utils import check_random_state
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from tnb.kmeans import kmeans, kmeans_1d
from tnb.metrics import (
    adjusted_r2,
    association_specialization,
    cluster_specialization,
    noise_specialization,
    permutation_tests,
    r2_parts_from_sums,
    specialization_summary,
    total_sum_of_squares,
)
from tnb.prepare import check_matrix
from tnb.scaling import scaled, scaling_pass
from tnb.shuffle import shuffled_columns, transpose_scaled

__all__ = [
    "DEFAULT_KS",
    "METHODS",
    "NULLS",
    "SELECTION_RULES",
    "BiclusterResult",
    "SpectralBiclustering",
    "SpectralCoclustering",
    "STATISTICS",
    "grid_search",
    "mark_selected",
    "null_matrix",
    "null_statistics",
    "refit_null",
]

#: The study's grid: every (row_k, col_k) in {6, 9, 12}^2.
DEFAULT_KS = (6, 9, 12)
#: "biclustering" is Kluger's checkerboard method (the study's), "coclustering" Dhillon's.
METHODS = ("biclustering", "coclustering")
#: Normalizations of Kluger's method, as in scikit-learn.
NORMALIZATIONS = ("bistochastic", "scale", "log")
#: Nulls the statistic is tested against (each draw is a whole grid refit); see :func:`null_matrix`.
NULLS = ("interaction_refit", "column_refit")
#: What z and p test: token x neuron structure (default), or the study's whole block-mean R^2.
STATISTICS = ("r2_interaction", "r2")
#: k-means restarts of the grid's fits (the estimators keep scikit-learn's 10). Every null draw
#: refits the grid, and on structureless draws Lloyd's iterations dominate: on a 20,000 x 384
#: noise matrix 3 restarts cut the projections from 5.2 s to 1.6 s (one thread, loaded machine).
#: The observed fit and every null draw use the same setting, so the test stays calibrated.
GRID_N_INIT = 3
#: Selection rules (see :func:`mark_selected`).
SELECTION_RULES = ("excess", "z", "adjusted_r2", "r2")


# --------------------------------------------------------------------------
# Normalizations (float32 versions of scikit-learn's, zero rows/cols safe)
# --------------------------------------------------------------------------


def _make_nonnegative(X: np.ndarray, min_value: float = 0) -> np.ndarray:
    min_ = X.min()
    if min_ < min_value:
        X = X + np.float32(min_value - min_)
    return X


def _inverse_sqrt(sums: np.ndarray) -> np.ndarray:
    # 0 for an empty row/column, where scikit-learn gets inf and then NaN.
    positive = sums > 0
    return np.where(positive, 1.0 / np.sqrt(np.where(positive, sums, 1.0)), 0.0)


def _scale_normalize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``D_r^-1/2 X D_c^-1/2`` and the two scalings (float32)."""
    X = _make_nonnegative(X)
    row_diag = _inverse_sqrt(X.sum(axis=1, dtype=np.float64)).astype(np.float32)
    col_diag = _inverse_sqrt(X.sum(axis=0, dtype=np.float64)).astype(np.float32)
    normalized = X * row_diag[:, np.newaxis]
    normalized *= col_diag
    return normalized, row_diag, col_diag


def _bistochastic_normalize(X: np.ndarray, max_iter: int = 1000, tol: float = 1e-5) -> np.ndarray:
    """scikit-learn's repeated scale normalization, as two scaling vectors.

    Iterate ``X_{t+1} = D_r^-1/2 X_t D_c^-1/2`` until ``||X_t - X_{t+1}||_F <
    tol`` (at most ``max_iter`` scalings), exactly scikit-learn's rule, but
    keep ``X_t = diag(a) X diag(b)`` implicit: one compiled pass over ``X``
    per iteration gives the next sums and the change of the last scaling
    (:mod:`tnb.scaling`), and the scaled matrix is formed once at the end.
    """
    X = np.ascontiguousarray(_make_nonnegative(X), dtype=np.float32)
    a = np.ones(X.shape[0])
    b = np.ones(X.shape[1])
    row_sums = np.empty(X.shape[0])
    col_sums = np.empty(X.shape[1])
    scaling_pass(X, a, b, a, b, row_sums, col_sums)
    for n_scalings in range(1, max_iter + 1):
        a_prev, b_prev = a, b
        a = a * _inverse_sqrt(row_sums)
        b = b * _inverse_sqrt(col_sums)
        if n_scalings == max_iter:
            break
        if scaling_pass(X, a, b, a_prev, b_prev, row_sums, col_sums) < tol:
            break
    return scaled(X, a, b)


def _log_normalize(X: np.ndarray) -> np.ndarray:
    """Kluger's log-interactions normalization (float32)."""
    X = _make_nonnegative(X, min_value=1)
    L = np.log(X)
    row_avg = L.mean(axis=1, dtype=np.float64)
    col_avg = L.mean(axis=0, dtype=np.float64)
    avg = float(row_avg.mean())
    L -= row_avg.astype(np.float32)[:, np.newaxis]
    L -= (col_avg - avg).astype(np.float32)
    return L


# --------------------------------------------------------------------------
# The steps after normalization, shared by the estimators and the grid
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """Estimator settings the fitting steps need (scikit-learn's names)."""

    svd_method: str = "randomized"
    n_svd_vecs: int | None = None
    mini_batch: bool = False
    init: object = "k-means++"
    n_init: int = 10
    random_state: object = None


def _svd(array: np.ndarray, n_components: int, n_discard: int, settings: _Settings):
    """First ``n_components`` singular vectors ``u, v``, less the first ``n_discard`` (scikit-learn's ``_svd``)."""
    if settings.svd_method == "randomized":
        kwargs = {} if settings.n_svd_vecs is None else {"n_oversamples": settings.n_svd_vecs}
        u, _, vt = randomized_svd(array, n_components, random_state=settings.random_state, **kwargs)
    else:
        u, _, vt = svds(array, k=n_components, ncv=settings.n_svd_vecs)
        if np.any(np.isnan(vt)):
            gram = array.T @ array
            v0 = check_random_state(settings.random_state).uniform(-1, 1, gram.shape[0])
            _, v = eigsh(gram, ncv=settings.n_svd_vecs, v0=v0)
            vt = v.T
        if np.any(np.isnan(u)):
            gram = array @ array.T
            v0 = check_random_state(settings.random_state).uniform(-1, 1, gram.shape[0])
            _, u = eigsh(gram, ncv=settings.n_svd_vecs, v0=v0)
    if not (np.isfinite(u).all() and np.isfinite(vt).all()):
        raise ValueError(
            "The SVD of the normalized matrix is not finite. Check the input for huge values "
            "(prepare it with tnb.prepare.abs_zscore)."
        )
    return u[:, n_discard:], vt[n_discard:].T


def _k_means(data: np.ndarray, n_clusters: int, settings: _Settings) -> tuple[np.ndarray, np.ndarray]:
    if settings.mini_batch or not isinstance(settings.init, str) or settings.init != "k-means++":
        model_class = MiniBatchKMeans if settings.mini_batch else KMeans
        model = model_class(n_clusters, init=settings.init, n_init=settings.n_init, random_state=settings.random_state)
        model.fit(data)
        return model.cluster_centers_, model.labels_
    # scikit-learn's algorithm without its per-call overhead (tnb.kmeans); same settings.
    centers, labels, _ = kmeans(data, n_clusters, n_init=settings.n_init, random_state=settings.random_state)
    return centers, labels


def _piecewise_distances(vectors: np.ndarray, ks) -> dict[int, np.ndarray]:
    """``||v - best piecewise-constant v with k pieces||`` of every vector, for every k in ks (exact 1-D k-means)."""
    distances = {k: np.empty(len(vectors)) for k in ks}
    for index, vector in enumerate(vectors):  # a handful of singular vectors, not elements
        vector = vector.astype(np.float64)
        for k, labels in kmeans_1d(vector, ks).items():
            means = np.bincount(labels, weights=vector, minlength=k) / np.maximum(np.bincount(labels, minlength=k), 1)
            distances[k][index] = np.linalg.norm(vector - means[labels])
    return distances


def _fit_best_piecewise(
    vectors: np.ndarray, n_best: int, n_clusters: int, settings: _Settings | None = None
) -> np.ndarray:
    """The ``n_best`` vectors best approximated by piecewise-constant ones.

    scikit-learn fits each vector with k-means (k-means++, ``n_init``
    restarts); here the fit is the exact optimum (:func:`tnb.kmeans.kmeans_1d`),
    whose error is never larger, so ``settings`` is not needed.
    """
    return _best_piecewise_by_k(vectors, n_best, [n_clusters])[n_clusters]


def _best_piecewise_by_k(vectors: np.ndarray, n_best: int, ks) -> dict[int, np.ndarray]:
    """:func:`_fit_best_piecewise` for every k in ks from one dynamic programme per vector."""
    distances = _piecewise_distances(vectors, sorted(set(ks)))
    return {k: vectors[np.argsort(dists, kind="stable")[:n_best]] for k, dists in distances.items()}


def _project_and_cluster(data: np.ndarray, vectors: np.ndarray, n_clusters: int, settings: _Settings) -> np.ndarray:
    _, labels = _k_means(data @ vectors, n_clusters, settings)
    return labels


def _project_all(data: np.ndarray, best: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """``{k: data @ best[k].T}`` from one matrix product over the distinct vector sets (one pass over data)."""
    distinct = list({vectors.tobytes(): vectors for vectors in best.values()}.values())
    products = np.split(data @ np.concatenate(distinct).T, np.cumsum([len(v) for v in distinct])[:-1], axis=1)
    by_vectors = {vectors.tobytes(): product for vectors, product in zip(distinct, products)}
    return {k: by_vectors[vectors.tobytes()] for k, vectors in best.items()}


def _normalize(X: np.ndarray, normalization: str) -> np.ndarray:
    if normalization == "bistochastic":
        return _bistochastic_normalize(X)
    if normalization == "scale":
        return _scale_normalize(X)[0]
    return _log_normalize(X)


def _kluger_svd(X, normalization, n_components, settings):
    n_sv = n_components if normalization == "log" else n_components + 1
    n_discard = 0 if normalization == "log" else 1
    u, v = _svd(_normalize(X, normalization), n_sv, n_discard, settings)
    return u.T, v.T


def _fit_kluger_grid(X, pairs, *, normalization, n_components, n_best, settings):
    """Labels for every (row_k, col_k) from one normalization and one SVD.

    Returns ``{(row_k, col_k): (row_labels, col_labels, seconds)}`` and the
    seconds of the shared steps (normalization, SVD, piecewise fits).
    """
    fits, timings = _fit_kluger_grid_timed(
        X, pairs, normalization=normalization, n_components=n_components, n_best=n_best, settings=settings
    )
    return fits, timings["normalization"] + timings["svd"] + timings["piecewise"]


def _fit_kluger_grid_timed(X, pairs, *, normalization, n_components, n_best, settings):
    timings = {}
    start = time.perf_counter()
    normalized = _normalize(X, normalization)
    timings["normalization"] = time.perf_counter() - start
    start = time.perf_counter()
    n_sv = n_components if normalization == "log" else n_components + 1
    u, v = _svd(normalized, n_sv, 0 if normalization == "log" else 1, settings)
    ut, vt = u.T, v.T
    del normalized
    timings["svd"] = time.perf_counter() - start
    start = time.perf_counter()
    # The piecewise fit of the left vectors depends only on row_k, of the right ones only on col_k.
    best_ut = _best_piecewise_by_k(ut, n_best, [rk for rk, _ in pairs])
    best_vt = _best_piecewise_by_k(vt, n_best, [ck for _, ck in pairs])
    timings["piecewise"] = time.perf_counter() - start
    projections_start = time.perf_counter()
    # A projection depends on one side's k only: X @ best_vt[col_k] is clustered into each row_k.
    row_projections = _project_all(X, best_vt)
    col_projections = _project_all(X.T, best_ut)
    fits = {}
    for row_k, col_k in pairs:
        start = time.perf_counter()
        _, row_labels = _k_means(row_projections[col_k], row_k, settings)
        _, col_labels = _k_means(col_projections[row_k], col_k, settings)
        fits[(row_k, col_k)] = (row_labels, col_labels, time.perf_counter() - start)
    timings["projections"] = time.perf_counter() - projections_start
    return fits, timings


def _n_sv_dhillon(k: int) -> int:
    return 1 + int(np.ceil(np.log2(k)))


def _fit_dhillon_grid(X, ks, *, settings):
    """Labels for every k of co-clustering from one SVD (for the largest k, truncated for the others)."""
    fits, timings = _fit_dhillon_grid_timed(X, ks, settings=settings)
    return fits, timings["normalization"] + timings["svd"]


def _fit_dhillon_grid_timed(X, ks, *, settings):
    start = time.perf_counter()
    normalized, row_diag, col_diag = _scale_normalize(X)
    timings = {"normalization": time.perf_counter() - start}
    start = time.perf_counter()
    u, v = _svd(normalized, max(_n_sv_dhillon(k) for k in ks), 1, settings)
    del normalized
    timings["svd"] = time.perf_counter() - start
    timings["piecewise"] = 0.0
    fits = {}
    n_rows = X.shape[0]
    projections_start = time.perf_counter()
    for k in ks:
        start = time.perf_counter()
        n_vectors = _n_sv_dhillon(k) - 1
        z = np.vstack((row_diag[:, np.newaxis] * u[:, :n_vectors], col_diag[:, np.newaxis] * v[:, :n_vectors]))
        _, labels = _k_means(z, k, settings)
        fits[(k, k)] = (labels[:n_rows], labels[n_rows:], time.perf_counter() - start)
    timings["projections"] = time.perf_counter() - projections_start
    return fits, timings


def fit_grid_timed(X, pairs, method, *, normalization, n_components, n_best, settings):
    """:func:`_fit_grid` with the time of each step.

    Parameters
    ----------
    X : ndarray of shape (n_tokens, n_neurons), float32
    pairs : list of (row_k, col_k)
        Validated grid points (:func:`_grid_pairs`).
    method, normalization, n_components, n_best, settings
        As in :func:`_fit_grid`.

    Returns
    -------
    fits : dict of (row_k, col_k) to (row_labels, col_labels, seconds)
    timings : dict of str to float
        Seconds of ``"normalization"``, ``"svd"``, ``"piecewise"`` (the
        one-dimensional fits; 0 for co-clustering) and ``"projections"``
        (the k-means of every grid point, projection products included).
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        if method == "coclustering":
            return _fit_dhillon_grid_timed(X, [rk for rk, _ in pairs], settings=settings)
        return _fit_kluger_grid_timed(
            X, pairs, normalization=normalization, n_components=n_components, n_best=n_best, settings=settings
        )


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_k(k, name: str, n: int, n_name: str) -> int:
    if not _is_int(k):
        raise TypeError(f"{name} should be an int. Got {k!r} of type {type(k).__name__} instead.")
    if k < 2:
        raise ValueError(f"{name} should be >= 2 (a single cluster has no structure to score). Got {k} instead.")
    if k >= n:
        raise ValueError(f"{name} should be < {n_name}={n}. Got {k} instead.")
    return int(k)


def _check_n_sv(n_sv: int, shape, svd_method: str, what: str) -> None:
    limit = min(shape)
    if n_sv > limit or (svd_method == "arpack" and n_sv >= limit):
        bound = f"<= {limit}" if svd_method == "randomized" else f"< {limit}"
        raise ValueError(
            f"{what} needs {n_sv} singular vectors, which should be {bound} = min(n_rows, n_columns) "
            f"for svd_method={svd_method!r}. Got a matrix of shape {tuple(shape)}."
        )


def _check_settings(settings: _Settings) -> None:
    if settings.svd_method not in ("randomized", "arpack"):
        raise ValueError(f"svd_method should be 'randomized' or 'arpack'. Got {settings.svd_method!r} instead.")
    if settings.n_svd_vecs is not None and (not _is_int(settings.n_svd_vecs) or settings.n_svd_vecs < 0):
        raise ValueError(f"n_svd_vecs should be None or an int >= 0. Got {settings.n_svd_vecs!r} instead.")
    if not isinstance(settings.mini_batch, (bool, np.bool_)):
        raise ValueError(f"mini_batch should be a bool. Got {settings.mini_batch!r} instead.")
    if not isinstance(settings.init, np.ndarray) and settings.init not in ("k-means++", "random"):
        raise ValueError(f"init should be 'k-means++', 'random' or an ndarray. Got {settings.init!r} instead.")
    if not _is_int(settings.n_init) or settings.n_init < 1:
        raise ValueError(f"n_init should be an int >= 1. Got {settings.n_init!r} instead.")


def _check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} should be one of {tuple(choices)}. Got {value!r} instead.")
    return value


def _check_kluger(normalization, n_components, n_best, shape, svd_method, name="normalization") -> None:
    _check_choice(normalization, name, NORMALIZATIONS)
    if not _is_int(n_components) or n_components < 1:
        raise ValueError(f"n_components should be an int >= 1. Got {n_components!r} instead.")
    if not _is_int(n_best) or n_best < 1:
        raise ValueError(f"n_best should be an int >= 1. Got {n_best!r} instead.")
    if n_best > n_components:
        raise ValueError(f"n_best={n_best} must be <= n_components={n_components}.")
    n_sv = n_components if normalization == "log" else n_components + 1
    _check_n_sv(n_sv, shape, svd_method, f"n_components={n_components} with method={normalization!r}")


# --------------------------------------------------------------------------
# Estimators (scikit-learn API)
# --------------------------------------------------------------------------


class _BaseSpectral(BiclusterMixin, BaseEstimator):
    """Shared fit/validation of the two estimators."""

    def _settings(self) -> _Settings:
        return _Settings(self.svd_method, self.n_svd_vecs, self.mini_batch, self.init, self.n_init, self.random_state)

    def fit(self, X, y=None):
        """Create a biclustering for X.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_columns)
            Training data; converted to float32 (no copy if it already is).
            NaN or inf raise a ValueError naming how many and where.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X = check_matrix(X, name="X", min_rows=3, min_cols=3)
        settings = self._settings()
        _check_settings(settings)
        self._check_parameters(X.shape)
        self.n_features_in_ = X.shape[1]
        with threadpool_limits(limits=1, user_api="openmp"):
            self._fit(X, settings)
        return self


class SpectralCoclustering(_BaseSpectral):
    """Spectral co-clustering (Dhillon, 2001), float32, scikit-learn's API.

    Parameters
    ----------
    n_clusters : int, default=3
        Number of biclusters; ``2 <= n_clusters < min(n_rows, n_columns)``.
    svd_method : {"randomized", "arpack"}, default="randomized"
    n_svd_vecs : int, default=None
        ``n_oversamples`` of the randomized SVD, or ``ncv`` of ARPACK.
    mini_batch : bool, default=False
        Use mini-batch k-means.
    init : {"k-means++", "random"} or ndarray, default="k-means++"
    n_init : int, default=10
        k-means initializations.
    random_state : int, RandomState instance or None, default=None
        Threads through the SVD and every k-means, as in scikit-learn.

    Attributes
    ----------
    row_labels_ : ndarray of shape (n_rows,)
    column_labels_ : ndarray of shape (n_columns,)
    rows_ : ndarray of shape (n_clusters, n_rows), bool
    columns_ : ndarray of shape (n_clusters, n_columns), bool
    biclusters_ : tuple of (rows_, columns_)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import make_biclusters
    >>> X, rows, cols = make_biclusters((60, 40), 3, noise=0.5, random_state=0)
    >>> model = SpectralCoclustering(n_clusters=3, random_state=0).fit(np.abs(X))
    >>> model.row_labels_.shape
    (60,)
    """

    def __init__(
        self,
        n_clusters=3,
        *,
        svd_method="randomized",
        n_svd_vecs=None,
        mini_batch=False,
        init="k-means++",
        n_init=10,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.svd_method = svd_method
        self.n_svd_vecs = n_svd_vecs
        self.mini_batch = mini_batch
        self.init = init
        self.n_init = n_init
        self.random_state = random_state

    def _check_parameters(self, shape) -> None:
        _check_k(self.n_clusters, "n_clusters", min(shape), "min(n_rows, n_columns)")
        _check_n_sv(_n_sv_dhillon(self.n_clusters), shape, self.svd_method, f"n_clusters={self.n_clusters}")

    def _fit(self, X, settings) -> None:
        fits, _ = _fit_dhillon_grid(X, [self.n_clusters], settings=settings)
        self.row_labels_, self.column_labels_, _ = fits[(self.n_clusters, self.n_clusters)]
        clusters = np.arange(self.n_clusters)[:, np.newaxis]
        self.rows_ = self.row_labels_[np.newaxis, :] == clusters
        self.columns_ = self.column_labels_[np.newaxis, :] == clusters


class SpectralBiclustering(_BaseSpectral):
    """Spectral biclustering (Kluger, 2003), float32, scikit-learn's API.

    Parameters
    ----------
    n_clusters : int or tuple (n_row_clusters, n_column_clusters), default=3
        ``2 <= n_row_clusters < n_rows`` and ``2 <= n_column_clusters < n_columns``.
    method : {"bistochastic", "scale", "log"}, default="bistochastic"
        Normalization.
    n_components : int, default=6
        Singular vectors to check.
    n_best : int, default=3
        Vectors to project the data on.
    svd_method : {"randomized", "arpack"}, default="randomized"
    n_svd_vecs : int, default=None
    mini_batch : bool, default=False
    init : {"k-means++", "random"} or ndarray, default="k-means++"
    n_init : int, default=10
    random_state : int, RandomState instance or None, default=None

    Attributes
    ----------
    row_labels_ : ndarray of shape (n_rows,)
    column_labels_ : ndarray of shape (n_columns,)
    rows_ : ndarray of shape (n_row_clusters * n_column_clusters, n_rows), bool
    columns_ : ndarray of shape (n_row_clusters * n_column_clusters, n_columns), bool
    biclusters_ : tuple of (rows_, columns_)
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.datasets import make_checkerboard
    >>> X, rows, cols = make_checkerboard((60, 40), (3, 2), noise=0.5, random_state=0)
    >>> model = SpectralBiclustering((3, 2), n_components=4, random_state=0).fit(X)
    >>> sorted(set(model.column_labels_.tolist()))
    [0, 1]
    """

    def __init__(
        self,
        n_clusters=3,
        *,
        method="bistochastic",
        n_components=6,
        n_best=3,
        svd_method="randomized",
        n_svd_vecs=None,
        mini_batch=False,
        init="k-means++",
        n_init=10,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.method = method
        self.n_components = n_components
        self.n_best = n_best
        self.svd_method = svd_method
        self.n_svd_vecs = n_svd_vecs
        self.mini_batch = mini_batch
        self.init = init
        self.n_init = n_init
        self.random_state = random_state

    def _ks(self) -> tuple[int, int]:
        if _is_int(self.n_clusters):
            return self.n_clusters, self.n_clusters
        try:
            n_row_clusters, n_column_clusters = self.n_clusters
        except (TypeError, ValueError):
            raise ValueError(
                "n_clusters should be an int or a tuple (n_row_clusters, n_column_clusters). "
                f"Got {self.n_clusters!r} instead."
            ) from None
        return n_row_clusters, n_column_clusters

    def _check_parameters(self, shape) -> None:
        n_row_clusters, n_column_clusters = self._ks()
        name = "n_clusters" if _is_int(self.n_clusters) else None
        _check_k(n_row_clusters, name or "n_row_clusters", shape[0], "n_rows")
        _check_k(n_column_clusters, name or "n_column_clusters", shape[1], "n_columns")
        _check_kluger(self.method, self.n_components, self.n_best, shape, self.svd_method, name="method")

    def _fit(self, X, settings) -> None:
        n_row_clusters, n_column_clusters = self._ks()
        fits, _ = _fit_kluger_grid(
            X,
            [(n_row_clusters, n_column_clusters)],
            normalization=self.method,
            n_components=self.n_components,
            n_best=self.n_best,
            settings=settings,
        )
        self.row_labels_, self.column_labels_, _ = fits[(n_row_clusters, n_column_clusters)]
        row_clusters = self.row_labels_[np.newaxis, :] == np.arange(n_row_clusters)[:, np.newaxis]
        column_clusters = self.column_labels_[np.newaxis, :] == np.arange(n_column_clusters)[:, np.newaxis]
        self.rows_ = np.repeat(row_clusters, n_column_clusters, axis=0)
        self.columns_ = np.tile(column_clusters, (n_row_clusters, 1))


# --------------------------------------------------------------------------
# Grid search and results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BiclusterResult:
    """One grid point of :func:`grid_search`: labels, every score, its null and its stability.

    Attributes (the METRICS table's columns, :data:`tnb.schemas.METRICS`)
    ----------------------------------------------------------------------
    method : str
    row_k, col_k : int
    n_tokens, n_neurons : int
    row_labels : ndarray of shape (n_tokens,), int32
    col_labels : ndarray of shape (n_neurons,), int32
    input : str
        What the matrix is (``"abs"``: |z|, ``"signed"``: z); recorded, not used.
    r2, r2_rows, r2_cols, r2_interaction : float
        Block-mean R^2 (the study's) and its exact split
        (:func:`tnb.metrics.r2_parts_from_sums`).
    adjusted_r2 : float
    statistic : str
        What ``z``/``p`` test: ``"r2_interaction"`` (default) or ``"r2"``.
    observed : float
        That statistic on the fitted labels.
    z, p : float
        Against the refit null: ``(observed - null_mean) / null_sd`` and
        ``(1 + #{null >= observed}) / (1 + n_null)``. NaN without a null.
    p_layer : float
        ``p`` corrected for picking among the grid's points (max-T: each null
        draw's largest standardized statistic over the grid).
    null : str or None
        ``"interaction_refit"`` (default), ``"column_refit"``, or None.
    n_null : int
    null_mean, null_sd, null_q95 : float
    null_draws : ndarray of shape (n_null,)
    excess : float
        ``observed - null_mean``.
    z_shuffle : float
        Fitted vs shuffled labels (size-preserving label shuffles of the same
        matrix): large for any fit, noise included. Not a significance test.
    n_shuffles : int
    stability, stability_neurons : float
        Mean pairwise adjusted Rand index of token (neuron) labels over
        ``n_seeds`` fits with different seeds (1.0 when ``n_seeds == 1``).
    n_seeds : int
    significant : bool
        ``p_layer <= alpha`` (a permutation p of n draws is never below ``1 / (n + 1)``).
    stable : bool
        ``stability >= min_stability``.
    spec_mean, spec_median : float
        The study's neuron specialization ``1 - H/log T`` (layer-level).
    spec_mean_noise : float
        The same for Gaussian noise of this shape: its baseline.
    spec_mi : float
        Mean over neurons of :func:`tnb.metrics.association_specialization`.
    cluster_spec_mean : float
    seconds : float
    seed : int
    selected : bool
    finding : bool
        ``selected and significant and stable``.
    selection_rule : str or None
    """

    method: str
    row_k: int
    col_k: int
    n_tokens: int
    n_neurons: int
    row_labels: np.ndarray
    col_labels: np.ndarray
    input: str
    r2: float
    r2_rows: float
    r2_cols: float
    r2_interaction: float
    adjusted_r2: float
    statistic: str
    observed: float
    z: float
    p: float
    p_layer: float
    null: str | None
    n_null: int
    null_mean: float
    null_sd: float
    null_q95: float
    null_draws: np.ndarray
    excess: float
    z_shuffle: float
    n_shuffles: int
    stability: float
    stability_neurons: float
    n_seeds: int
    significant: bool
    stable: bool
    spec_mean: float
    spec_median: float
    spec_mean_noise: float
    spec_mi: float
    cluster_spec_mean: float
    seconds: float
    seed: int
    selected: bool = False
    finding: bool = False
    selection_rule: str | None = None

    def metrics_row(self) -> dict:
        """This point as a row of the METRICS table (all columns but ``code_version``)."""
        names = [
            "row_k", "col_k", "n_tokens", "n_neurons", "input", "r2", "r2_rows", "r2_cols", "r2_interaction",
            "adjusted_r2", "statistic", "observed", "z", "p", "p_layer", "null", "n_null", "null_mean", "null_sd",
            "null_q95", "excess", "z_shuffle", "n_shuffles", "stability", "stability_neurons", "n_seeds",
            "significant", "stable", "selected", "finding", "selection_rule", "spec_mean", "spec_median",
            "spec_mean_noise", "spec_mi", "seconds", "seed",
        ]
        row = {name: getattr(self, name) for name in names}
        row["null_draws"] = [float(v) for v in self.null_draws]
        return row

    def labels_columns(self, token_index=None) -> dict[str, np.ndarray]:
        """This point's labels as the columns of the LABELS table.

        Parameters
        ----------
        token_index : ndarray of shape (n_tokens,), optional
            The ``pos`` of each row; default ``0..n_tokens-1``.

        Returns
        -------
        dict of str to ndarray
            ``row_k, col_k, axis, index, label``, token rows first.
        """
        if token_index is None:
            token_index = np.arange(self.n_tokens)
        token_index = np.asarray(token_index)
        if token_index.shape != (self.n_tokens,):
            raise ValueError(f"token_index should have shape ({self.n_tokens},). Got {token_index.shape} instead.")
        n_total = self.n_tokens + self.n_neurons
        return {
            "row_k": np.full(n_total, self.row_k, dtype=np.int32),
            "col_k": np.full(n_total, self.col_k, dtype=np.int32),
            "axis": np.array(["token"] * self.n_tokens + ["neuron"] * self.n_neurons, dtype=object),
            "index": np.concatenate([token_index, np.arange(self.n_neurons)]).astype(np.int32),
            "label": np.concatenate([self.row_labels, self.col_labels]).astype(np.int32),
        }


def _resolve_seed(random_state) -> int:
    if random_state is None:
        return int(np.random.SeedSequence().entropy % 2**32)
    if not _is_int(random_state) or random_state < 0:
        raise ValueError(
            "random_state should be None or an int >= 0 (the grid records its seed). "
            f"Got {random_state!r} instead."
        )
    return int(random_state)


def _grid_pairs(row_ks, col_ks, method: str, shape) -> list[tuple[int, int]]:
    row_ks = tuple(row_ks)
    col_ks = tuple(col_ks)
    if not row_ks or not col_ks:
        raise ValueError(f"row_ks and col_ks should not be empty. Got row_ks={row_ks}, col_ks={col_ks}.")
    for k in row_ks:
        _check_k(k, "every row_k in row_ks", shape[0], "n_tokens")
    for k in col_ks:
        _check_k(k, "every col_k in col_ks", shape[1], "n_neurons")
    if method == "coclustering":
        pairs = [(k, k) for k in dict.fromkeys(row_ks) if k in col_ks]
        if not pairs:
            raise ValueError(
                "coclustering has one k for tokens and neurons, so it runs the ks that are in both row_ks "
                f"and col_ks. Got row_ks={row_ks}, col_ks={col_ks}, which share none."
            )
        return pairs
    return [(rk, ck) for rk in dict.fromkeys(row_ks) for ck in dict.fromkeys(col_ks)]


def _fit_grid(X, pairs, method, *, normalization, n_components, n_best, settings):
    with threadpool_limits(limits=1, user_api="openmp"):
        if method == "coclustering":
            return _fit_dhillon_grid(X, [rk for rk, _ in pairs], settings=settings)
        return _fit_kluger_grid(
            X, pairs, normalization=normalization, n_components=n_components, n_best=n_best, settings=settings
        )


# --------------------------------------------------------------------------
# Scoring every grid point at once
# --------------------------------------------------------------------------


def _grid_block_sums(X: np.ndarray, labelings) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sums, sizes) of every labeling of the grid from ONE GEMM over the matrix.

    The token-cluster indicator matrices of all grid points are stacked
    (n_tokens x sum(row_k)), so ``X.T @ stacked`` reads the matrix once; each
    point's neuron clusters then reduce a (row_k x n_neurons) slice.
    """
    rows = []
    for row_labels, col_labels in labelings:
        rows.append((_compact_labels(row_labels), _compact_labels(col_labels)))
    widths = [k for (_, k), _ in rows]
    stacked = np.zeros((X.shape[0], sum(widths)), dtype=np.float32)
    offset = 0
    for (labels, k), _ in rows:
        stacked[np.arange(X.shape[0]), offset + labels] = 1
        offset += k
    cluster_rows = (X.T @ stacked).T.astype(np.float64)  # (sum row_k, n_neurons)
    out = []
    offset = 0
    for (row_labels, row_k), (col_labels, col_k) in rows:
        block = cluster_rows[offset : offset + row_k]
        offset += row_k
        sums = block @ _onehot_float64(col_labels, col_k)
        sizes = np.outer(np.bincount(row_labels, minlength=row_k), np.bincount(col_labels, minlength=col_k))
        out.append((sums, sizes.astype(np.float64)))
    return out


def _compact_labels(labels) -> tuple[np.ndarray, int]:
    uniques, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.astype(np.intp, copy=False), int(uniques.size)


def _onehot_float64(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((labels.shape[0], k))
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _score_fits(X: np.ndarray, fits: dict, pairs) -> dict[tuple[int, int], dict[str, float]]:
    """{pair: {r2, r2_rows, r2_cols, r2_interaction, n_blocks}} of a fitted grid on X."""
    sum_squares, total, n_elements = total_sum_of_squares(X)
    block = _grid_block_sums(X, [fits[pair][:2] for pair in pairs])
    out = {}
    for pair, (sums, sizes) in zip(pairs, block):
        parts = r2_parts_from_sums(sums, sizes, total=total, sum_squares=sum_squares, n_elements=n_elements)
        parts["n_blocks"] = int(np.count_nonzero(sizes))
        out[pair] = parts
    return out


# --------------------------------------------------------------------------
# Nulls: matrices without token x neuron association, refitted whole
# --------------------------------------------------------------------------


def null_matrix(X: np.ndarray, rng: np.random.Generator, null: str = "interaction_refit") -> np.ndarray:
    """One matrix that keeps X's token and neuron scales and loses their association.

    ``"interaction_refit"`` (the default null). For a nonnegative matrix (|z|)
    it is the independence model: ``E_ij = r_i c_j / g`` (row mean x column
    mean / grand mean, the structure bistochastic normalization removes),
    the ratios ``X_ij / E_ij`` shuffled within each column, and multiplied
    back: ``X0_ij = E_ij Q_{pi_j(i), j}``. A loud token stays loud (its row
    scale is kept, so are its heavier tails), every neuron keeps its scale,
    and which tokens a neuron prefers is redrawn at random. For a signed
    matrix the same is done additively, with per-row and per-column scales
    of the residuals: ``X0 = mu_i + nu_j - g + s_i t_j E_{pi_j(i), j}``, the
    shuffled residuals re-centred per row.

    ``"column_refit"``: every column shuffled on its own (the earlier refit
    null). It also destroys each token's loudness, so loud-token structure
    looks significant against it.

    Parameters
    ----------
    X : ndarray of shape (n_tokens, n_neurons), float32
    rng : numpy Generator
    null : {"interaction_refit", "column_refit"}

    Returns
    -------
    ndarray of shape (n_tokens, n_neurons), float32
    """
    return _draw_null(_null_base(X, null), rng)


@dataclass(frozen=True)
class _NullBase:
    """What every draw of one matrix's null shares, computed once (a null of 99 draws reuses it 99 times).

    ``columns`` is the matrix whose columns are shuffled, transposed (every column
    contiguous); the rest undoes the scaling after the shuffle.
    """

    null: str
    columns: np.ndarray  # (n_neurons, n_tokens) float32
    row_scale: np.ndarray | None = None  # (n_tokens,) float32
    col_scale: np.ndarray | None = None  # (n_neurons,) float32, signed only
    effects: np.ndarray | None = None  # (n_tokens, n_neurons) float32, signed only


def _null_base(X: np.ndarray, null: str) -> _NullBase:
    if null == "column_refit":
        return _NullBase(null, np.ascontiguousarray(X.T))
    if null != "interaction_refit":
        raise ValueError(f"null should be one of {NULLS}. Got {null!r} instead.")
    row_mean = X.mean(axis=1, dtype=np.float64)
    col_mean = X.mean(axis=0, dtype=np.float64)
    grand = float(row_mean.mean())
    if X.min() >= 0:
        if grand <= 0:
            return _NullBase("constant", X)
        # X0_ij = E_ij Q_{pi_j(i), j} with Q = X / E and E_ij = r_i c_j / g: the column's
        # c_j / g cancels, so X0_ij = r_i * (X / r)_{pi_j(i), j} (rows with r_i = 0 stay 0).
        scale = row_mean.astype(np.float32)
        inverse = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
        return _NullBase(null, np.ascontiguousarray((X * inverse[:, np.newaxis]).T), row_scale=scale)
    effects = (row_mean[:, np.newaxis] + (col_mean - grand)[np.newaxis, :]).astype(np.float32)
    residual = X - effects
    row_scale = np.sqrt(np.mean(np.square(residual, dtype=np.float64), axis=1))
    row_scale = np.where(row_scale > 0, row_scale, 1.0).astype(np.float32)
    residual /= row_scale[:, np.newaxis]
    col_scale = np.sqrt(np.mean(np.square(residual, dtype=np.float64), axis=0))
    col_scale = np.where(col_scale > 0, col_scale, 1.0).astype(np.float32)
    residual /= col_scale
    return _NullBase("signed", np.ascontiguousarray(residual.T), row_scale, col_scale, effects)


def _draw_null(base: _NullBase, rng: np.random.Generator) -> np.ndarray:
    """One draw of the null from its shared part (the numbers of :func:`null_matrix`)."""
    if base.null == "constant":
        return base.columns.copy()
    shuffled = shuffled_columns(base.columns, rng)
    if base.null == "column_refit":
        return np.ascontiguousarray(shuffled.T)
    if base.null == "interaction_refit":
        return transpose_scaled(shuffled, base.row_scale)
    residual = np.ascontiguousarray(shuffled.T)
    # Re-centre every row: X's residuals sum to 0 along each row, and shuffled ones must too,
    # or the null draws get extra row variance (measured: 4 of 12 pure-noise matrices
    # "significant" without this, 1 of 12 with it).
    residual -= residual.mean(axis=1, keepdims=True)
    residual *= base.col_scale
    residual *= base.row_scale[:, np.newaxis]
    residual += base.effects
    return residual


def _draw_rng(seed: int, draw: int) -> np.random.Generator:
    # Spawn key (1, draw): each draw's stream depends on the seed and its index only,
    # so any split of the draws into tasks gives the same numbers.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, draw)))


def _draw_settings(settings: _Settings, rng: np.random.Generator) -> _Settings:
    return dataclasses.replace(settings, random_state=int(rng.integers(2**31 - 1)))


def null_statistics(
    A,
    row_ks=DEFAULT_KS,
    col_ks=DEFAULT_KS,
    *,
    draws,
    random_state: int = 0,
    null: str = "interaction_refit",
    statistic: str = "r2_interaction",
    method: str = "biclustering",
    normalization: str = "bistochastic",
    n_components: int = 6,
    n_best: int = 3,
    svd_method: str = "randomized",
    n_svd_vecs: int | None = None,
    n_init: int = GRID_N_INIT,
) -> np.ndarray:
    """The statistic of every grid point on null draws ``draws`` (each a whole grid refit).

    Draw ``d`` depends only on ``random_state`` and ``d``, so a null of
    ``n_null`` draws can be computed in any number of chunks (Dask tasks) and
    gives the same values as one call with ``draws=range(n_null)``.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons) or PreparedMatrix
    row_ks, col_ks : sequence of int
    draws : sequence of int
        Indices of the draws (>= 0).
    random_state : int
        The grid's seed (as in :func:`grid_search`).
    null, statistic, method, normalization, n_components, n_best, svd_method, n_svd_vecs, n_init
        As in :func:`grid_search`.

    Returns
    -------
    ndarray of shape (len(draws), n_points)
        Grid points in :func:`grid_search`'s order.
    """
    X = check_matrix(A, min_rows=3, min_cols=3)
    seed = _resolve_seed(random_state)
    _check_choice(null, "null", NULLS)
    _check_choice(statistic, "statistic", STATISTICS)
    _check_choice(method, "method", METHODS)
    pairs = _grid_pairs(row_ks, col_ks, method, X.shape)
    draws = [int(d) for d in draws]
    if any(d < 0 for d in draws):
        raise ValueError(f"draws should be ints >= 0. Got {draws!r} instead.")
    settings = _Settings(svd_method=svd_method, n_svd_vecs=n_svd_vecs, n_init=n_init, random_state=seed)
    _check_settings(settings)
    return _null_statistics(X, pairs, draws, seed, null, statistic, method, normalization, n_components, n_best,
                            settings)


def _null_statistics(X, pairs, draws, seed, null, statistic, method, normalization, n_components, n_best, settings):
    values = np.empty((len(draws), len(pairs)))
    base = _null_base(X, null)
    for row, draw in enumerate(draws):  # one whole grid refit per draw
        rng = _draw_rng(seed, draw)
        shuffled = _draw_null(base, rng)
        fits, _ = _fit_grid(
            shuffled, pairs, method, normalization=normalization, n_components=n_components, n_best=n_best,
            settings=_draw_settings(settings, rng),
        )
        scores = _score_fits(shuffled, fits, pairs)
        values[row] = [scores[pair][statistic] for pair in pairs]
    return values


def _stability(label_sets: list[np.ndarray]) -> float:
    """Mean pairwise adjusted Rand index of a list of labelings (1.0 for one)."""
    if len(label_sets) < 2:
        return 1.0
    scores = [
        adjusted_rand_score(label_sets[i], label_sets[j])
        for i in range(len(label_sets))
        for j in range(i + 1, len(label_sets))
    ]
    return float(np.mean(scores))


def _max_t_p(observed: np.ndarray, null_values: np.ndarray) -> np.ndarray:
    """Single-step max-T adjusted p of every grid point (Westfall & Young).

    Every grid point's values are standardized by the mean and sd of the
    observed value *and* the null draws together, so the observed matrix and
    the draws are treated alike and the test stays exact under
    exchangeability. Standardizing by the draws alone (their own in-sample
    mean and sd) shrinks the draws' extremes but not the observed one's: on
    simulated exchangeable statistics that rejected 10% at alpha 0.05 with 19
    draws, 8% with 39 and 6% with 99 (pooled: 5%, 5%, 5%).
    """
    pooled = np.vstack([observed[np.newaxis, :], null_values])
    mean = pooled.mean(axis=0)
    sd = pooled.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        standard = np.where(sd > 0, (pooled - mean) / np.where(sd > 0, sd, 1), 0.0)
    z_obs, max_null = standard[0], standard[1:].max(axis=1)
    tolerance = 1e-9
    exceed = (max_null[np.newaxis, :] >= z_obs[:, np.newaxis] - tolerance).sum(axis=1)
    return (1 + exceed) / (1 + null_values.shape[0])


def grid_search(
    A,
    row_ks=DEFAULT_KS,
    col_ks=DEFAULT_KS,
    *,
    method: str = "biclustering",
    null: str | None = "interaction_refit",
    n_null: int = 99,
    statistic: str = "r2_interaction",
    n_seeds: int = 5,
    n_shuffles: int = 100,
    alpha: float = 0.05,
    min_stability: float = 0.8,
    selection: str = "excess",
    random_state: int | None = None,
    input: str = "abs",
    null_values: np.ndarray | None = None,
    n_column_shuffles: int = 25,
    normalization: str = "bistochastic",
    n_components: int = 6,
    n_best: int = 3,
    svd_method: str = "randomized",
    n_svd_vecs: int | None = None,
    n_init: int = GRID_N_INIT,
) -> list[BiclusterResult]:
    """Bicluster one matrix at every grid point, and score each against a calibrated null.

    Every grid point is fitted from one normalization and one SVD. Its
    block-mean R^2 is split into token-cluster, neuron-cluster and
    interaction parts; the interaction (token x neuron structure) is tested
    against ``n_null`` matrices that keep every token's and neuron's scale
    but lose their association (:func:`null_matrix`), each biclustered
    whole, because the fitting is part of the statistic. The grid is refitted
    with ``n_seeds`` seeds to measure the stability of its labels.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons) or PreparedMatrix
        The prepared matrix (:func:`tnb.prepare.prepare`); float32 is used as is.
    row_ks, col_ks : sequence of int, default=(6, 9, 12)
        ``2 <= row_k < n_tokens``, ``2 <= col_k < n_neurons``. Co-clustering runs the ks in both.
    method : {"biclustering", "coclustering"}, default="biclustering"
    null : {"interaction_refit", "column_refit"} or None, default="interaction_refit"
        None fits and scores the grid without any null (z, p NaN).
    n_null : int, default=99
        Null draws (grid refits); p cannot fall below ``1 / (n_null + 1)``.
    statistic : {"r2_interaction", "r2"}, default="r2_interaction"
        What ``z`` and ``p`` test.
    n_seeds : int, default=5
        Fits with different seeds behind ``stability`` (1: no extra fit).
    n_shuffles : int, default=100
        Label shuffles behind ``z_shuffle`` (0: skip).
    alpha : float, default=0.05
        ``significant`` is ``p_layer <= alpha`` (an exact level-alpha test).
    min_stability : float, default=0.8
        ``stable`` is ``stability >= min_stability``.
    selection : {"excess", "z", "adjusted_r2", "r2"}, default="excess"
        See :func:`mark_selected`.
    random_state : int or None
        None draws a seed (recorded in ``.seed``); the same seed gives bit-identical results.
    input : {"abs", "signed"}, default="abs"
        What ``A`` is, recorded in the results.
    null_values : ndarray of shape (n_null, n_points), optional
        Precomputed :func:`null_statistics` (e.g. from Dask tasks) instead of computing them here.
    n_column_shuffles : int, default=25
        Column-shuffle pool of the label-shuffle score (:func:`tnb.metrics.permutation_tests`).
    normalization, n_components, n_best, svd_method, n_svd_vecs
        Kluger's method's settings, as in :class:`SpectralBiclustering`.
    n_init : int, default=3
        k-means restarts of every fit (:data:`GRID_N_INIT`; scikit-learn's estimators use 10).

    Returns
    -------
    list of BiclusterResult
        One per grid point, row_k-major, exactly one ``selected``.

    Examples
    --------
    >>> from sklearn.datasets import make_checkerboard
    >>> from tnb.prepare import prepare
    >>> X, _, _ = make_checkerboard((120, 60), (3, 3), noise=1, random_state=0)
    >>> results = grid_search(prepare(X), (2, 3), (3,), n_components=4, n_null=19, n_seeds=2, random_state=0)
    >>> [(r.row_k, r.col_k) for r in results]
    [(2, 3), (3, 3)]
    """
    X = check_matrix(A, min_rows=3, min_cols=3)
    seed = _resolve_seed(random_state)
    _check_choice(method, "method", METHODS)
    _check_choice(statistic, "statistic", STATISTICS)
    _check_choice(selection, "selection", SELECTION_RULES)
    if null is not None:
        _check_choice(null, "null", NULLS)
    _check_choice(input, "input", ("abs", "signed"))
    for name, value, low in (("n_null", n_null, 2), ("n_seeds", n_seeds, 1), ("n_shuffles", n_shuffles, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} should be an int >= {low}. Got {value!r} instead.")
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ValueError(f"alpha should be a number in (0, 1). Got {alpha!r} instead.")
    if not (isinstance(min_stability, float | int) and -1 <= min_stability <= 1):
        raise ValueError(f"min_stability should be a number in [-1, 1]. Got {min_stability!r} instead.")
    pairs = _grid_pairs(row_ks, col_ks, method, X.shape)
    settings = _Settings(svd_method=svd_method, n_svd_vecs=n_svd_vecs, n_init=n_init, random_state=seed)
    _check_settings(settings)
    if method == "biclustering":
        _check_kluger(normalization, n_components, n_best, X.shape, svd_method)
    else:
        _check_n_sv(_n_sv_dhillon(max(k for k, _ in pairs)), X.shape, svd_method, f"k={max(k for k, _ in pairs)}")
    if null is not None and null_values is not None:
        null_values = np.asarray(null_values, dtype=np.float64)
        if null_values.shape != (n_null, len(pairs)):
            raise ValueError(
                f"null_values should have shape (n_null, n_points) = ({n_null}, {len(pairs)}). "
                f"Got {null_values.shape} instead."
            )
    fit_kwargs = {"normalization": normalization, "n_components": n_components, "n_best": n_best}

    start = time.perf_counter()
    fits, _ = _fit_grid(X, pairs, method, settings=settings, **fit_kwargs)
    scores = _score_fits(X, fits, pairs)
    observed = np.array([scores[pair][statistic] for pair in pairs])

    # Stability: the same grid with other seeds (spawn key (2, s): disjoint from the null's streams).
    seed_fits = [fits]
    for index in range(1, n_seeds):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, index)))
        seed_fits.append(_fit_grid(X, pairs, method, settings=_draw_settings(settings, rng), **fit_kwargs)[0])

    if null is None:
        null_values = np.full((0, len(pairs)), np.nan)
    elif null_values is None:
        null_values = _null_statistics(X, pairs, range(n_null), seed, null, statistic, method, normalization,
                                       n_components, n_best, settings)
    n_draws = null_values.shape[0]
    if n_draws:
        null_mean = null_values.mean(axis=0)
        null_sd = null_values.std(axis=0, ddof=1) if n_draws > 1 else np.zeros(len(pairs))
        null_q95 = np.quantile(null_values, 0.95, axis=0)
        tolerance = 1e-12 * np.maximum(1.0, np.abs(observed))
        p_values = (1 + (null_values >= observed - tolerance).sum(axis=0)) / (1 + n_draws)
        p_layer = _max_t_p(observed, null_values)
        with np.errstate(divide="ignore", invalid="ignore"):
            z_values = np.where(null_sd > 0, (observed - null_mean) / np.where(null_sd > 0, null_sd, 1), np.nan)
    else:
        null_mean = null_sd = null_q95 = p_values = p_layer = z_values = np.full(len(pairs), np.nan)

    shuffle_z = np.full(len(pairs), np.nan)
    if n_shuffles >= 2:
        tests = permutation_tests(
            X, [fits[pair][:2] for pair in pairs], statistic="r2", n_permutations=n_shuffles,
            n_column_shuffles=min(n_column_shuffles, n_shuffles),
            random_state=np.random.SeedSequence(seed, spawn_key=(0,)), moments=total_sum_of_squares(X),
        )
        shuffle_z = np.array([t.z for t in tests])

    nonnegative = bool(X.min() >= 0)
    spec_mean, spec_median = specialization_summary(X if nonnegative else np.abs(X))
    spec_noise = noise_specialization(X.shape, signed=not nonnegative, random_state=np.random.SeedSequence(seed, spawn_key=(3,)))
    shared_seconds = time.perf_counter() - start

    results = []
    for index, pair in enumerate(pairs):
        point_start = time.perf_counter()
        row_labels, col_labels, _ = fits[pair]
        mass = X if nonnegative else np.abs(X)
        spec_mi = float(np.nanmean(association_specialization(
            mass, row_labels, n_shuffles=5, random_state=np.random.SeedSequence(seed, spawn_key=(4, index)))))
        cluster_spec = cluster_specialization(mass, row_labels)
        parts = scores[pair]
        stability = _stability([f[pair][0] for f in seed_fits])
        stability_neurons = _stability([f[pair][1] for f in seed_fits])
        results.append(
            BiclusterResult(
                method=method,
                row_k=pair[0],
                col_k=pair[1],
                n_tokens=X.shape[0],
                n_neurons=X.shape[1],
                row_labels=np.asarray(row_labels, dtype=np.int32),
                col_labels=np.asarray(col_labels, dtype=np.int32),
                input=input,
                r2=parts["r2"],
                r2_rows=parts["r2_rows"],
                r2_cols=parts["r2_cols"],
                r2_interaction=parts["r2_interaction"],
                adjusted_r2=adjusted_r2(parts["r2"], X.size, parts["n_blocks"]),
                statistic=statistic,
                observed=float(observed[index]),
                z=float(z_values[index]),
                p=float(p_values[index]),
                p_layer=float(p_layer[index]),
                null=null,
                n_null=int(n_draws),
                null_mean=float(null_mean[index]),
                null_sd=float(null_sd[index]),
                null_q95=float(null_q95[index]),
                null_draws=null_values[:, index].copy(),
                excess=float(observed[index] - null_mean[index]),
                z_shuffle=float(shuffle_z[index]),
                n_shuffles=int(n_shuffles if n_shuffles >= 2 else 0),
                stability=stability,
                stability_neurons=stability_neurons,
                n_seeds=int(n_seeds),
                significant=bool(n_draws and p_layer[index] <= alpha),
                stable=bool(stability >= min_stability),
                spec_mean=spec_mean,
                spec_median=spec_median,
                spec_mean_noise=spec_noise,
                spec_mi=spec_mi,
                cluster_spec_mean=float(np.nanmean(cluster_spec)) if not np.all(np.isnan(cluster_spec)) else float("nan"),
                seconds=time.perf_counter() - point_start + shared_seconds / len(pairs),
                seed=seed,
            )
        )
    return mark_selected(results, selection)


def refit_null(A, row_ks=DEFAULT_KS, col_ks=DEFAULT_KS, *, n_refits: int = 99, random_state: int = 0,
               null: str = "interaction_refit", **kwargs) -> dict[tuple[int, int], np.ndarray]:
    """The null statistic of every grid point as a dict (a thin form of :func:`null_statistics`).

    Returns
    -------
    dict of (row_k, col_k) to ndarray of shape (n_refits,)
    """
    if not _is_int(n_refits) or n_refits < 2:
        raise ValueError(f"n_refits should be an int >= 2. Got {n_refits!r} instead.")
    X = check_matrix(A, min_rows=3, min_cols=3)
    pairs = _grid_pairs(row_ks, col_ks, kwargs.get("method", "biclustering"), X.shape)
    values = null_statistics(X, row_ks, col_ks, draws=range(n_refits), random_state=random_state, null=null, **kwargs)
    return {pair: values[:, index] for index, pair in enumerate(pairs)}


def mark_selected(results, rule: str = "excess") -> list[BiclusterResult]:
    """Mark the grid point a selection rule picks, and whether it is a finding.

    Parameters
    ----------
    results : sequence of BiclusterResult
        One layer's grid.
    rule : {"excess", "z", "adjusted_r2", "r2"}, default="excess"
        ``"excess"`` (default): the largest excess of the statistic over its
        null mean, charged for k: among the points whose excess is within two
        null standard deviations of the best, the one with the fewest blocks.
        The null mean already grows with k (more blocks fit noise better), so
        a finer grid wins only by beating its own, larger null. ``"z"`` picks
        the largest Z (it follows whichever point has the smallest null
        spread: not recommended). ``"r2"`` is the study's rule: it always
        picks the largest grid. NaN scores rank last; ties go to fewer
        blocks, then fewer token clusters.

    Returns
    -------
    list of BiclusterResult
        Copies with ``selected``, ``finding`` and ``selection_rule`` set; exactly one selected.
    """
    _check_choice(rule, "rule", SELECTION_RULES)
    results = list(results)
    if not results:
        raise ValueError("results should hold at least one grid point. Got an empty sequence.")

    def score(result) -> float:
        value = getattr(result, rule)
        return -math.inf if value is None or math.isnan(value) else float(value)

    def simpler(i: int) -> tuple[int, int]:
        return (results[i].row_k * results[i].col_k, results[i].row_k)

    order = range(len(results))
    best = max(order, key=lambda i: (score(results[i]), tuple(-v for v in simpler(i))))
    if rule == "excess" and math.isfinite(score(results[best])):
        def margin(i: int) -> float:
            sds = [results[i].null_sd, results[best].null_sd]
            return 2.0 * math.sqrt(sum(sd * sd for sd in sds if math.isfinite(sd)))

        close = [i for i in order if score(results[i]) >= score(results[best]) - margin(i)]
        best = min(close, key=simpler)
    return [
        dataclasses.replace(
            result, selected=(i == best), finding=bool(i == best and result.significant and result.stable),
            selection_rule=rule,
        )
        for i, result in enumerate(results)
    ]
