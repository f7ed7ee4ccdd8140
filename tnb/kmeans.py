"""k-means kernels of the spectral step: exact one-dimensional k-means, and small-d k-means.

Two kernels, compiled with numba (single-threaded, so results do not depend on
the number of threads):

- :func:`kmeans_1d` solves one-dimensional k-means *exactly* by dynamic
  programming over the sorted values (Wang & Song 2011, "Ckmeans.1d.dp"),
  for every k up to ``max(ks)`` in one pass: row ``q`` of the table is the
  optimum with ``q + 1`` clusters, so each smaller k of a grid is a
  backtrack, not another fit. The ``ckmeans`` package implements the same
  algorithm but returns one k per call (three calls for a {6, 9, 12} grid
  cost ~3x this), so it is written here; the tests check the
  within-cluster sum of squares against ``ckmeans`` and scikit-learn.
- :func:`kmeans` is scikit-learn's ``KMeans`` (greedy k-means++ seeding with
  ``2 + log(k)`` local trials, Lloyd iterations with the same stopping rule,
  empty clusters moved to the farthest points, best of ``n_init`` by
  inertia), for the few-dimensional projections of Kluger's method. It is
  hand-written because scikit-learn spends most of its time in per-centre
  Python overhead of the seeding on such small problems; the random draws
  come from NumPy, not from scikit-learn's stream, so labels can differ from
  scikit-learn's in near-ties while the inertia is as good (tests compare it).
"""

# kmeans() follows scikit-learn's KMeans (sklearn/cluster/_kmeans.py: greedy k-means++
# seeding, the Lloyd loop, its stopping rule and empty-cluster relocation), whose licence
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

import math
from typing import Any

import numba
import numpy as np

__all__ = ["kmeans", "kmeans_1d", "wcss_1d"]

_JIT: dict[str, Any] = {"nogil": True, "cache": True}


# --------------------------------------------------------------------------
# Exact one-dimensional k-means
# --------------------------------------------------------------------------


@numba.njit(**_JIT)
def _segment_ssq(sum1, sum2, start, stop):
    """Sum of squares about the mean of sorted values ``start..stop`` (inclusive)."""
    size = stop - start + 1
    total = sum1[stop + 1] - sum1[start]
    value = sum2[stop + 1] - sum2[start] - total * total / size
    return value if value > 0.0 else 0.0


@numba.njit(**_JIT)
def _dp_table(values, k_max):
    """Cost and last-cluster start of the optimal q+1 clusters of ``values[:i+1]``, for every q < k_max.

    ``values`` are sorted and centred (float64). The optimal start of the
    last cluster is nondecreasing in i, so each row is filled by divide and
    conquer (O(n log n)); a scan stops as soon as the last cluster alone
    costs more than the best so far, as in Ckmeans.1d.dp.
    """
    n = values.shape[0]
    sum1 = np.zeros(n + 1)
    sum2 = np.zeros(n + 1)
    for i in range(n):
        sum1[i + 1] = sum1[i] + values[i]
        sum2[i + 1] = sum2[i] + values[i] * values[i]
    cost = np.full((k_max, n), np.inf)
    start = np.zeros((k_max, n), dtype=np.int64)
    for i in range(n):
        cost[0, i] = _segment_ssq(sum1, sum2, 0, i)
    stack = np.empty((2 * n + 2, 4), dtype=np.int64)
    for q in range(1, k_max):
        top = 0
        stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = q, n - 1, q, n - 1
        top = 1
        while top > 0:
            top -= 1
            i_min, i_max, j_min, j_max = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
            if i_min > i_max:
                continue
            i = (i_min + i_max) // 2
            j_low = max(j_min, q)
            j_high = min(j_max, i)
            best = np.inf
            best_j = j_high
            for j in range(j_high, j_low - 1, -1):
                last = _segment_ssq(sum1, sum2, j, i)
                if last >= best:
                    break  # the last cluster only grows as it starts earlier
                candidate = cost[q - 1, j - 1] + last
                if candidate < best:
                    best = candidate
                    best_j = j
            cost[q, i] = best
            start[q, i] = best_j
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = i_min, i - 1, j_min, best_j
            stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = i + 1, i_max, best_j, j_max
            top += 2
    return cost, start


@numba.njit(**_JIT)
def _backtrack(start, k, n):
    """Labels (in sorted order, 0 = lowest values) of the optimal k clusters."""
    labels = np.empty(n, dtype=np.int64)
    stop = n - 1
    for q in range(k - 1, -1, -1):
        first = start[q, stop] if q > 0 else 0
        labels[first : stop + 1] = q
        stop = first - 1
    return labels


def kmeans_1d(vector: np.ndarray, ks) -> dict[int, np.ndarray]:
    """Exact one-dimensional k-means for every k in ``ks``, from one dynamic programme.

    Parameters
    ----------
    vector : ndarray of shape (n,)
        Finite values.
    ks : iterable of int
        Cluster counts, each ``1 <= k <= n``.

    Returns
    -------
    dict of int to ndarray of shape (n,), int64
        Labels per k, numbered in increasing order of the cluster means. Each
        labelling has the least within-cluster sum of squares of any k-partition.
    """
    vector = np.asarray(vector)
    ks = sorted(set(int(k) for k in ks))
    n = vector.shape[0]
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"every k should be in [1, n={n}]. Got {ks} instead.")
    order = np.argsort(vector, kind="stable")
    values = vector[order].astype(np.float64)
    values -= values[n // 2]  # centred at the median: smaller prefix sums, less cancellation
    _, start = _dp_table(values, ks[-1])
    out = {}
    for k in ks:
        labels = np.empty(n, dtype=np.int64)
        labels[order] = _backtrack(start, k, n)
        out[k] = labels
    return out


def wcss_1d(vector: np.ndarray, labels: np.ndarray) -> float:
    """Within-cluster sum of squares of a one-dimensional labelling (float64)."""
    vector = np.asarray(vector, dtype=np.float64)
    counts = np.bincount(labels)
    means = np.bincount(labels, weights=vector) / np.maximum(counts, 1)
    return float(np.sum((vector - means[labels]) ** 2))


# --------------------------------------------------------------------------
# k-means on a few dimensions (scikit-learn's algorithm)
# --------------------------------------------------------------------------


@numba.njit(**_JIT)
def _sum(values):
    """Sum with eight running partial sums: vector speed without reassociating (same result on every CPU)."""
    partial = np.zeros(8)
    n8 = values.shape[0] - values.shape[0] % 8
    for i in range(0, n8, 8):
        for lane in range(8):
            partial[lane] += values[i + lane]
    total = 0.0
    for i in range(n8, values.shape[0]):
        total += values[i]
    for lane in range(8):
        total += partial[lane]
    return total


_BLOCK = 256  # samples per block: the block's scratch stays in L1 cache


@numba.njit(**_JIT)
def _block_sq_dists(features, start, stop, point, out):
    """``out[i - start] = ||x_i - point||^2`` for ``start <= i < stop``; features of shape (n_features, n)."""
    size = stop - start
    for i in range(size):
        out[i] = 0.0
    for f in range(features.shape[0]):
        row = features[f, start:stop]
        value = point[f]
        for i in range(size):
            diff = row[i] - value
            out[i] += diff * diff


@numba.njit(**_JIT)
def _seed(features, k, n_trials, draws):
    """Greedy k-means++ (scikit-learn's ``_kmeans_plusplus``); ``draws`` are uniforms in [0, 1)."""
    n_features, n = features.shape
    dtype = features.dtype
    centers = np.empty((k, n_features))
    first = min(int(draws[0] * n), n - 1)
    point = features[:, first].copy()
    centers[0] = point
    closest = np.empty(n, dtype=dtype)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        _block_sq_dists(features, start, stop, point, closest[start:stop])
    cumulative = np.empty(n)
    candidate = np.empty(n, dtype=dtype)
    best_closest = np.empty(n, dtype=dtype)
    for c in range(1, k):
        total = 0.0
        for i in range(n):
            total += closest[i]
            cumulative[i] = total
        best_pot = np.inf
        best_index = 0
        for t in range(n_trials):
            index = min(np.searchsorted(cumulative, draws[1 + (c - 1) * n_trials + t] * total), n - 1)
            point[:] = features[:, index]
            for start in range(0, n, _BLOCK):
                stop = min(start + _BLOCK, n)
                block = candidate[start:stop]
                _block_sq_dists(features, start, stop, point, block)
                nearest = closest[start:stop]
                for i in range(stop - start):
                    block[i] = np.minimum(block[i], nearest[i])  # np.minimum vectorizes; min() branches
            pot = _sum(candidate)
            if pot < best_pot:
                best_pot = pot
                best_index = index
                best_closest[:] = candidate
        centers[c] = features[:, best_index]
        closest[:] = best_closest
    return centers


@numba.njit(**_JIT)
def _assign(features, centers, labels, distances, scratch, sums, counts):
    """Nearest centre of every point (ties to the lower index); returns how many labels changed.

    The running nearest label of a block is kept as a float of the data's type
    (exact: ``kmeans`` checks ``k < 2**24``) and updated by ``np.minimum`` and a
    multiply-add, not by a conditional: LLVM vectorizes that select across 8
    points, where a ``d if closer else b`` stays a branch (2x faster, same labels
    and distances to the bit).

    ``sums`` and ``counts`` (each cluster's float64 feature sums and size) follow
    the labels: a point that changes cluster is moved from its old cluster's sums
    to its new one's (label -1: in none yet), so the update step costs the points
    that moved, not all of them.
    """
    n = features.shape[1]
    n_features = features.shape[0]
    centers = centers.astype(features.dtype)  # distances in the data's precision, as scikit-learn
    changed = 0
    best_label = np.empty(_BLOCK, dtype=scratch.dtype)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        size = stop - start
        best = distances[start:stop]
        best[:] = np.inf
        best_label[:] = 0
        for c in range(centers.shape[0]):
            _block_sq_dists(features, start, stop, centers[c], scratch)
            label = scratch.dtype.type(c)
            for i in range(size):
                distance = scratch[i]
                closer = scratch.dtype.type(distance < best[i])  # 1 or 0: strictly closer keeps the lower index
                best[i] = np.minimum(distance, best[i])
                best_label[i] += closer * (label - best_label[i])
        for i in range(size):
            new = np.int32(best_label[i])
            old = labels[start + i]
            if new != old:
                changed += 1
                labels[start + i] = new
                counts[new] += 1
                if old >= 0:
                    counts[old] -= 1
                for f in range(n_features):
                    value = np.float64(features[f, start + i])
                    sums[new, f] += value
                    if old >= 0:
                        sums[old, f] -= value
    return changed


@numba.njit(**_JIT)
def _update(features, labels, distances, centers, sums, counts):
    """Centre means from the running sums; an empty cluster takes the point farthest from its centre (as scikit-learn)."""
    k, n_features = centers.shape
    n_empty = 0
    for c in range(k):
        if counts[c] == 0:
            n_empty += 1
    if n_empty > 0:
        far = np.argsort(-distances, kind="mergesort")[:n_empty]
        e = 0
        for c in range(k):
            if counts[c] == 0:
                i = far[e]
                e += 1
                old = labels[i]
                counts[old] -= 1
                for f in range(n_features):
                    sums[old, f] -= features[f, i]
                    sums[c, f] = features[f, i]
                counts[c] = 1
                labels[i] = c
    new = np.empty((k, n_features))
    for c in range(k):
        for f in range(n_features):
            new[c, f] = sums[c, f] / counts[c] if counts[c] > 0 else centers[c, f]
    return new


@numba.njit(**_JIT)
def _lloyd(features, centers, max_iter, tol):
    """scikit-learn's Lloyd loop: stop on unchanged labels or a total squared centre shift <= tol."""
    n = features.shape[1]
    k, n_features = centers.shape
    labels = np.full(n, -1, dtype=np.int32)
    distances = np.empty(n, dtype=features.dtype)
    scratch = np.empty(_BLOCK, dtype=features.dtype)
    sums = np.zeros((k, n_features))
    counts = np.zeros(k, dtype=np.int64)
    strict = False
    for _ in range(max_iter):
        if _assign(features, centers, labels, distances, scratch, sums, counts) == 0:
            strict = True
            break
        new = _update(features, labels, distances, centers, sums, counts)
        shift = 0.0
        for c in range(centers.shape[0]):
            for f in range(centers.shape[1]):
                diff = new[c, f] - centers[c, f]
                shift += diff * diff
        centers = new
        if shift <= tol:
            break
    if not strict:
        _assign(features, centers, labels, distances, scratch, sums, counts)
    return centers, labels, _sum(distances)


def kmeans(
    data: np.ndarray, n_clusters: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, random_state=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means (greedy k-means++, Lloyd), best of ``n_init`` runs by inertia, single-threaded.

    Parameters
    ----------
    data : ndarray of shape (n_samples, n_features)
    n_clusters : int
        ``1 <= n_clusters <= n_samples``.
    n_init, max_iter, tol : int, int, float
        As in :class:`sklearn.cluster.KMeans` (``tol`` is relative to the mean feature variance).
    random_state : int, RandomState instance or None

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features), float64
    labels : ndarray of shape (n_samples,), int32
    inertia : float
    """
    from sklearn.utils import check_random_state

    data = np.asarray(data)
    dtype = np.float32 if data.dtype == np.float32 else np.float64  # float32 data: float32 distances, as scikit-learn
    features: np.ndarray = np.ascontiguousarray(data.T, dtype=dtype)  # SIMD runs along samples
    n_samples = features.shape[1]
    if not 1 <= n_clusters <= n_samples:
        raise ValueError(f"n_clusters should be in [1, n_samples={n_samples}]. Got {n_clusters} instead.")
    if n_clusters >= 2**24:  # labels are carried as floats in the assignment kernel
        raise ValueError(f"n_clusters should be < 2**24. Got {n_clusters} instead.")
    if n_init < 1:
        raise ValueError(f"n_init should be >= 1. Got {n_init} instead.")
    rng = check_random_state(random_state)
    n_trials = 2 + int(math.log(n_clusters))
    tol = float(np.mean(np.var(features, axis=1))) * tol
    best = None
    for _ in range(n_init):
        draws = rng.uniform(size=1 + (n_clusters - 1) * n_trials)
        centers, labels, inertia = _lloyd(features, _seed(features, n_clusters, n_trials, draws), max_iter, tol)
        if best is None or inertia < best[2]:
            best = (centers, labels, inertia)
    assert best is not None  # n_init >= 1 fits were run
    return best
