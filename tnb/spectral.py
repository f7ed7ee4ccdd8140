"""Spectral biclustering of a tokens x neurons matrix, in float32: normalizations, SVD, estimators, grid fits.

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

:func:`fit_grid_timed` (and the grid search of :mod:`tnb.bicluster`) fits
every ``(row_k, col_k)`` of a grid from **one** normalization and **one** SVD:
for Kluger's method the SVD does not depend on k at all (it needs
``n_components + 1`` vectors) and the piecewise fits are shared by every grid
point with the same ``row_k`` (or ``col_k``); for Dhillon's, the SVD is
computed for the largest k and truncated for the others. Given the same SVD,
every step after it is scikit-learn's algorithm, run by compiled kernels: the
one-dimensional piecewise fits are solved exactly
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

# The normalizations, the SVD step, the estimators' parameters and their order
# of steps follow scikit-learn's sklearn/cluster/_bicluster.py, whose licence
# is reproduced here as it asks:
#
# BSD 3-Clause License
#
# Copyright (c) 2007-2026 The scikit-learn developers.
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions are met:
#
# * Redistributions of source code must retain the above copyright notice, this
#   list of conditions and the following disclaimer.
#
# * Redistributions in binary form must reproduce the above copyright notice,
#   this list of conditions and the following disclaimer in the documentation
#   and/or other materials provided with the distribution.
#
# * Neither the name of the copyright holder nor the names of its
#   contributors may be used to endorse or promote products derived from
#   this software without specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
# AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
# IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
# DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
# FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
# SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
# CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
# OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
# OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral
from typing import cast

import numpy as np
from scipy import linalg
from scipy.sparse.linalg import eigsh, svds
from sklearn.base import BaseEstimator, BiclusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils import check_random_state
from sklearn.utils.extmath import svd_flip
from threadpoolctl import ThreadpoolController

from tnb.kmeans import kmeans, kmeans_1d
from tnb.prepare import check_matrix
from tnb.scaling import scaled, scaling_pass

__all__ = [
    "DEFAULT_KS",
    "GRID_N_INIT",
    "METHODS",
    "NORMALIZATIONS",
    "SpectralBiclustering",
    "SpectralCoclustering",
    "fit_grid_timed",
]

#: The study's grid: every (row_k, col_k) in {6, 9, 12}^2.
DEFAULT_KS = (6, 9, 12)
#: "biclustering" is Kluger's checkerboard method (the study's), "coclustering" Dhillon's.
METHODS = ("biclustering", "coclustering")
#: Normalizations of Kluger's method, as in scikit-learn.
NORMALIZATIONS = ("bistochastic", "scale", "log")
#: k-means restarts of the grid's fits (the estimators keep scikit-learn's 10). Every null draw
#: refits the grid, and on structureless draws Lloyd's iterations dominate: on a 20,000 x 384
#: noise matrix 3 restarts cut the projections from 5.2 s to 1.6 s (one thread, loaded machine).
#: The observed fit and every null draw use the same setting, so the test stays calibrated.
GRID_N_INIT = 3


_CONTROLLER: list[ThreadpoolController] = []


def _single_openmp_thread():
    """``threadpool_limits(1, "openmp")`` from one controller per process.

    A ``threadpool_limits`` call scans every loaded library first (~15 ms here),
    and a null runs one grid fit per draw: the scan is done once. What the limit
    is for, scikit-learn's OpenMP k-means (``mini_batch`` or another ``init``),
    is loaded with this module's ``sklearn.cluster`` import, so before the scan.
    """
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="openmp")


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
    """scikit-learn's repeated scale normalization: ``diag(a) X diag(b)`` of :func:`_bistochastic_scalings`."""
    return scaled(*_bistochastic_scalings(X, max_iter, tol))


def _bistochastic_scalings(
    X: np.ndarray, max_iter: int = 1000, tol: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's repeated scale normalization, as the (nonnegative) matrix and two scaling vectors.

    Iterate ``X_{t+1} = D_r^-1/2 X_t D_c^-1/2`` until ``||X_t - X_{t+1}||_F <
    tol`` (at most ``max_iter`` scalings), exactly scikit-learn's rule, but
    keep ``X_t = diag(a) X diag(b)`` implicit: one compiled pass over ``X``
    per iteration gives the next sums and the change of the last scaling
    (:mod:`tnb.scaling`). Returns ``(X, a, b)``: X float32 C-contiguous (shifted
    to be nonnegative where it was not), ``a`` and ``b`` float64.
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
    return X, a, b


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


#: Rows of the matrix per block of the fused power iteration: a float32 block of 768 columns
#: (~0.8 MB at 256 rows) stays in cache between its two products.
_POWER_BLOCK = 256


def _gram_product(A: np.ndarray, Q: np.ndarray, left=None, right=None) -> np.ndarray:
    """``B.T @ (B @ Q)`` for ``B = diag(left) A diag(right)`` (each None: 1) in one pass over ``A``.

    Each block of rows is read once for both products; the scalings act on the
    thin (rows x n_random) products, so ``B`` is never formed.
    """
    dtype = np.result_type(A.dtype, Q.dtype)
    if right is not None:
        Q = Q * right[:, np.newaxis]
    weights = None if left is None else np.square(left)
    out = np.zeros((A.shape[1], Q.shape[1]), dtype=dtype)
    for start in range(0, A.shape[0], _POWER_BLOCK):  # blocks of rows, each a BLAS product
        block = A[start : start + _POWER_BLOCK]
        product = block @ Q
        if weights is not None:
            product *= weights[start : start + _POWER_BLOCK, np.newaxis]
        out += block.T @ product
    if right is not None:
        out *= right[:, np.newaxis]
    return out


def randomized_svd(M: np.ndarray, n_components: int, *, n_oversamples: int = 10, random_state=None,
                   row_scale=None, col_scale=None):
    """scikit-learn's ``randomized_svd`` (Halko et al. 2011) with each power iteration in one pass.

    The same steps, defaults and random draws as
    ``sklearn.utils.extmath.randomized_svd(M, n_components, n_oversamples=...,
    random_state=...)`` (``n_iter="auto"``, LU normalization, ``svd_flip``),
    except that scikit-learn normalizes after *both* half-steps of a power
    iteration, ``Q <- lu(A @ Q); Q <- lu(A.T @ Q)``, and this runs
    ``Q <- lu(A.T @ (A @ Q))``. The dropped normalization multiplies ``A @ Q``
    on the right by an invertible matrix, so every iterate spans the same
    column space in exact arithmetic and the result is the same up to
    rounding; the gain is that ``A`` is read once per iteration instead of
    twice (9 passes over the matrix instead of 16 for 7 iterations), each
    block of rows staying in cache for its second product. Hand-written
    because scikit-learn has no fused variant; tests compare the singular
    values and vectors with scikit-learn's.

    ``row_scale`` and ``col_scale`` (optional) make it the SVD of
    ``diag(row_scale) M diag(col_scale)`` without forming that matrix: the
    scalings act on the thin products (for a bistochastic normalization, one
    matrix-sized allocation and pass fewer per fit).
    """
    rng = check_random_state(random_state)
    n_random = n_components + n_oversamples
    n_iter = 7 if n_components < 0.1 * min(M.shape) else 4
    transpose = M.shape[0] < M.shape[1]
    A = M.T if transpose else M
    left, right = (col_scale, row_scale) if transpose else (row_scale, col_scale)  # SVD of diag(left) A diag(right)
    Q = rng.normal(size=(A.shape[1], n_random))
    if A.dtype == np.float32:
        Q = Q.astype(np.float32, copy=False)
    dtype = np.result_type(A.dtype, Q.dtype)
    left = None if left is None else np.asarray(left).astype(dtype)
    right = None if right is None else np.asarray(right).astype(dtype)
    for _ in range(n_iter):
        Q, _ = linalg.lu(_gram_product(A, Q, left, right), permute_l=True, check_finite=False)
    sketch = A @ (Q if right is None else Q * right[:, np.newaxis])
    if left is not None:
        sketch *= left[:, np.newaxis]
    Q, _ = linalg.qr(sketch, mode="economic", check_finite=False)
    projected = (Q if left is None else Q * left[:, np.newaxis]).T @ A
    if right is not None:
        projected *= right[np.newaxis, :]
    u_hat, s, vt = linalg.svd(projected, full_matrices=False, lapack_driver="gesdd")
    u = Q @ u_hat
    if transpose:
        u, vt = svd_flip(u, vt, u_based_decision=False)
        return vt[:n_components].T, s[:n_components], u[:, :n_components].T
    u, vt = svd_flip(u, vt)
    return u[:, :n_components], s[:n_components], vt[:n_components]


def _svd(array: np.ndarray, n_components: int, n_discard: int, settings: _Settings, scales=None):
    """First ``n_components`` singular vectors ``u, v``, less the first ``n_discard`` (scikit-learn's ``_svd``).

    ``scales=(a, b)``: of ``diag(a) array diag(b)`` (formed only for ARPACK).
    """
    if settings.svd_method == "randomized":
        kwargs: dict = {} if settings.n_svd_vecs is None else {"n_oversamples": settings.n_svd_vecs}
        if scales is not None:
            kwargs.update(row_scale=scales[0], col_scale=scales[1])
        u, _, vt = randomized_svd(array, n_components, random_state=settings.random_state, **kwargs)
    else:
        if scales is not None:
            array = scaled(array, *scales)
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


def _best_piecewise_by_k(vectors: np.ndarray, n_best: int, ks) -> dict[int, np.ndarray]:
    """For every k in ks, the ``n_best`` vectors best approximated by piecewise-constant ones with k pieces.

    scikit-learn fits each vector with k-means (k-means++, ``n_init`` restarts); here
    the fit is the exact optimum (:func:`tnb.kmeans.kmeans_1d`), whose error is never
    larger, from one dynamic programme per vector for all ks.
    """
    distances = _piecewise_distances(vectors, sorted(set(ks)))
    return {k: vectors[np.argsort(dists, kind="stable")[:n_best]] for k, dists in distances.items()}


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


def _normalized(X: np.ndarray, normalization: str):
    """The normalized matrix for the SVD, and its scalings: ``(X, (a, b))`` for bistochastic, else ``(N, None)``.

    The bistochastic normalization's scalings go to the SVD as they are
    (:func:`randomized_svd`'s ``row_scale``/``col_scale``), so the scaled matrix
    is not formed.
    """
    if normalization == "bistochastic":
        nonnegative, a, b = _bistochastic_scalings(X)
        return nonnegative, (a, b)
    return _normalize(X, normalization), None


def _kluger_svd(X, normalization, n_components, settings):
    n_sv = n_components if normalization == "log" else n_components + 1
    n_discard = 0 if normalization == "log" else 1
    normalized, scales = _normalized(X, normalization)
    u, v = _svd(normalized, n_sv, n_discard, settings, scales=scales)
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
    normalized, scales = _normalized(X, normalization)
    timings["normalization"] = time.perf_counter() - start
    start = time.perf_counter()
    n_sv = n_components if normalization == "log" else n_components + 1
    u, v = _svd(normalized, n_sv, 0 if normalization == "log" else 1, settings, scales=scales)
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
    # Where two k choose the same best vectors their projections are one array, and k-means
    # with the same data, k and integer seed gives the same labels: each such problem runs once.
    done: dict[tuple[int, int], np.ndarray] = {}
    seeded = isinstance(settings.random_state, Integral)

    def cluster(data: np.ndarray, k: int) -> np.ndarray:
        key = (id(data), k)
        if key in done:
            return done[key].copy()
        labels = _k_means(data, k, settings)[1]
        if seeded:
            done[key] = labels
        return labels

    fits = {}
    for row_k, col_k in pairs:
        start = time.perf_counter()
        row_labels = cluster(row_projections[col_k], row_k)
        col_labels = cluster(col_projections[row_k], col_k)
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


def _fit_grid(X, pairs, method, *, normalization, n_components, n_best, settings):
    """Labels of every grid point from one normalization and one SVD, and the seconds of the shared steps."""
    with _single_openmp_thread():
        if method == "coclustering":
            return _fit_dhillon_grid(X, [rk for rk, _ in pairs], settings=settings)
        return _fit_kluger_grid(
            X, pairs, normalization=normalization, n_components=n_components, n_best=n_best, settings=settings
        )


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
    with _single_openmp_thread():
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


def _resolve_seed(random_state) -> int:
    if random_state is None:
        return cast(int, np.random.SeedSequence().entropy) % 2**32  # entropy drawn afresh: an int
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
        with _single_openmp_thread():
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
