"""Neuron specialization: how concentrated a neuron's activation mass is, over tokens or token clusters.

The study's measure is ``1 - H(p) / log(n_tokens)`` of each neuron's |z| mass
over tokens (:func:`neuron_specialization`, summarized per layer by
:func:`specialization_summary`); its baseline is the same measure on Gaussian
noise of the layer's shape (:func:`noise_specialization`), which it must be
read against. Over a biclustering's token clusters: :func:`cluster_specialization`
(entropy over clusters, corrected for their sizes), :func:`bicluster_specialization`
(each block's share of its neurons' mass) and :func:`association_specialization`
(each neuron's term of the mutual information between neuron and token
cluster, less its value under shuffled labels). Everything is vectorized:
one GEMM per labeling, float64 accumulation over row chunks.
"""

from __future__ import annotations

import numpy as np

from tnb._shared import _CHUNK_ROWS, _as_float32, _compact, _is_count, _seed_sequence

__all__ = [
    "association_specialization",
    "bicluster_specialization",
    "cluster_specialization",
    "neuron_specialization",
    "noise_specialization",
    "specialization_summary",
]


def _entropy_specialization(mass: np.ndarray, n_outcomes: int) -> np.ndarray:
    """1 - H(p)/log(n_outcomes) for each column of a nonnegative mass matrix (outcomes x items)."""
    totals = mass.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = mass / totals
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(axis=0)
    spec = 1.0 - entropy / np.log(n_outcomes)
    return np.where(totals > 0, spec, np.nan)


def _token_cluster_mass(array: np.ndarray, rows: np.ndarray, row_k: int) -> np.ndarray:
    """|z| mass of every neuron on every token cluster -> (row_k, n_neurons) float64 (one GEMM)."""
    return _token_cluster_masses(array, [rows], row_k)[0]


def _token_cluster_masses(array: np.ndarray, labelings: list[np.ndarray], row_k: int) -> list[np.ndarray]:
    """:func:`_token_cluster_mass` of several labelings with ``row_k`` clusters, from ONE GEMM.

    The labelings' indicator matrices are stacked side by side (n_tokens x
    len(labelings) * row_k), so the matrix is read once for all of them: one
    wide product instead of several narrow ones, which BLAS runs 3-4x faster.
    """
    n_tokens = array.shape[0]
    stacked = np.zeros((n_tokens, len(labelings) * row_k), dtype=np.float32)
    for index, labels in enumerate(labelings):
        stacked[np.arange(n_tokens), index * row_k + labels] = 1
    masses = (array.T @ stacked).T.astype(np.float64)
    return [masses[index * row_k : (index + 1) * row_k] for index in range(len(labelings))]


def neuron_specialization(A) -> np.ndarray:
    """Per-neuron specialization ``1 - H(p) / log(n_tokens)``.

    ``p`` is the neuron's |z| mass over tokens (its column of the prepared
    matrix, normalised to sum 1). 0 means the neuron responds equally to every
    token, 1 that all its mass is on one token.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
        Prepared, nonnegative matrix (|z|).

    Returns
    -------
    ndarray of shape (n_neurons,), float64
        NaN for all-zero (constant) columns, which have no mass to spread.
    """
    array = _as_float32(A)
    if array.shape[0] < 2:
        raise ValueError(f"A should have at least 2 rows (tokens). Got {array.shape[0]} instead.")
    if (array < 0).any():
        raise ValueError("A should be nonnegative (prepare it with tnb.prepare.abs_zscore first).")
    # H = log(s) - (sum a log a) / s with s the column total, accumulated in
    # float64 over row chunks (no float64 copy of the matrix).
    totals = np.zeros(array.shape[1])
    alog = np.zeros(array.shape[1])
    for start in range(0, array.shape[0], _CHUNK_ROWS):
        chunk = array[start : start + _CHUNK_ROWS].astype(np.float64)
        totals += chunk.sum(axis=0)
        positive = chunk > 0
        alog += np.where(positive, chunk * np.log(np.where(positive, chunk, 1.0)), 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.log(totals) - alog / totals
        spec = 1.0 - entropy / np.log(array.shape[0])
    return np.where(totals > 0, spec, np.nan)


def specialization_summary(A) -> tuple[float, float]:
    """Mean and median neuron specialization of a layer (NaN columns ignored).

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)

    Returns
    -------
    mean, median : float
        NaN if every column is constant.
    """
    spec = neuron_specialization(A)
    if np.all(np.isnan(spec)):
        return float("nan"), float("nan")
    return float(np.nanmean(spec)), float(np.nanmedian(spec))


def cluster_specialization(A, row_labels) -> np.ndarray:
    """Per-neuron specialization over token clusters: ``1 - H(q) / log(row_k)``.

    ``q[r]`` is the share of the neuron's |z| mass that falls on token cluster
    ``r``, divided by the cluster's share of tokens and renormalised, so that a
    neuron indifferent to the clusters scores 0 whatever the cluster sizes.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,), int

    Returns
    -------
    ndarray of shape (n_neurons,), float64
        NaN for all-zero columns.
    """
    array = _as_float32(A)
    rows, row_k = _compact(row_labels, array.shape[0], "row_labels")
    if row_k < 2:
        raise ValueError(f"row_labels should name at least 2 clusters. Got {row_k} instead.")
    return _cluster_specialization_from_mass(_token_cluster_mass(array, rows, row_k), rows, row_k)


def bicluster_specialization(A, row_labels, col_labels) -> np.ndarray:
    """Per-bicluster specialization: how much of its neurons' mass a block holds.

    For block ``(r, c)``: the mean, over the neurons of cluster ``c``, of the
    share of each neuron's |z| mass that falls on token cluster ``r``, divided
    by token cluster ``r``'s share of tokens. 1 means the block gets exactly its
    fair share; above 1, the neurons of ``c`` concentrate on the tokens of ``r``.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,), int
    col_labels : ndarray of shape (n_neurons,), int

    Returns
    -------
    ndarray of shape (row_k, col_k), float64
    """
    array = _as_float32(A)
    rows, row_k = _compact(row_labels, array.shape[0], "row_labels")
    cols, col_k = _compact(col_labels, array.shape[1], "col_labels")
    mass = _token_cluster_mass(array, rows, row_k)
    totals = mass.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(totals > 0, mass / totals, np.nan)
    lift = share / (np.bincount(rows, minlength=row_k) / rows.size)[:, None]
    out = np.full((row_k, col_k), np.nan)
    valid = ~np.isnan(lift[0])
    sums = np.zeros((row_k, col_k))
    np.add.at(sums.T, cols[valid], lift[:, valid].T)
    n_valid = np.bincount(cols[valid], minlength=col_k)
    np.divide(sums, n_valid, out=out, where=n_valid > 0)
    return out


def _kl_from_sizes(mass: np.ndarray, share: np.ndarray) -> np.ndarray:
    """KL(p_j || share) for every column j of a (k, n_neurons) mass matrix, p_j = mass_j / sum."""
    totals = mass.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = mass / totals
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / share[:, np.newaxis]), 0.0)
    return np.where(totals > 0, terms.sum(axis=0), np.nan)


def association_specialization(A, row_labels, *, n_shuffles: int = 10, random_state=None) -> np.ndarray:
    """Per-neuron specialization that depends on *which* tokens a neuron prefers.

    ``p_j[r]`` is the share of neuron ``j``'s activation mass (its column of
    the prepared, nonnegative matrix) on token cluster ``r``; ``pi[r]`` the
    same share for all neurons together. ``KL(p_j || pi)`` is neuron ``j``'s
    term of the mutual information between neuron and token cluster (one unit
    of mass drawn at random): 0 when the neuron spreads over the clusters as
    the layer as a whole does, so loud tokens that every neuron responds to
    do not count. Shuffled labels give a positive value too (finite samples),
    so its mean over ``n_shuffles`` label shuffles is subtracted. Unlike the
    study's ``1 - H/log T``, it changes when a neuron's values are permuted
    across tokens (it falls to ~0).

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons), nonnegative
    row_labels : ndarray of shape (n_tokens,), int
    n_shuffles : int, default=10
    random_state : int, SeedSequence or None

    Returns
    -------
    ndarray of shape (n_neurons,), float64 (nats; NaN for all-zero columns)
    """
    array = _as_float32(A)
    if not _is_count(n_shuffles) or n_shuffles < 1:
        raise ValueError(f"n_shuffles should be an int >= 1. Got {n_shuffles!r} instead.")
    rows, row_k = _compact(row_labels, array.shape[0], "row_labels")
    return _association_and_mass(array, rows, row_k, n_shuffles, random_state)[0]


def _association_and_mass(
    array: np.ndarray, rows: np.ndarray, row_k: int, n_shuffles: int, random_state
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`association_specialization` of compacted labels, and the observed (row_k, n_neurons) mass.

    The observed labels and their ``n_shuffles`` shuffles are one GEMM
    (:func:`_token_cluster_masses`); the mass is returned so that
    :func:`cluster_specialization` of the same labels needs no other pass.
    """

    def kl(mass: np.ndarray) -> np.ndarray:
        overall = mass.sum(axis=1)
        share = overall / overall.sum() if overall.sum() > 0 else np.full(row_k, 1.0 / row_k)
        return _kl_from_sizes(mass, share)

    rng = np.random.default_rng(_seed_sequence(random_state))
    labelings = [rows] + [rng.permutation(rows) for _ in range(n_shuffles)]
    masses = _token_cluster_masses(array, labelings, row_k)
    expected = np.zeros(array.shape[1])
    for mass in masses[1:]:  # n_shuffles small (k, n_neurons) arrays
        expected += kl(mass)
    return kl(masses[0]) - expected / n_shuffles, masses[0]


def _cluster_specialization_from_mass(mass: np.ndarray, rows: np.ndarray, row_k: int) -> np.ndarray:
    cluster_share = np.bincount(rows, minlength=row_k) / rows.size
    return _entropy_specialization(mass / cluster_share[:, None], row_k)


def _association_and_cluster(A, row_labels, *, n_shuffles: int, random_state) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`association_specialization`, :func:`cluster_specialization`) of one labeling, from one GEMM."""
    array = _as_float32(A)
    rows, row_k = _compact(row_labels, array.shape[0], "row_labels")
    association, mass = _association_and_mass(array, rows, row_k, n_shuffles, random_state)
    if row_k < 2:
        raise ValueError(f"row_labels should name at least 2 clusters. Got {row_k} instead.")
    return association, _cluster_specialization_from_mass(mass, rows, row_k)


def noise_specialization(shape: tuple[int, int], *, signed: bool = False, random_state=None) -> float:
    """The study's mean specialization ``1 - H/log T`` of Gaussian noise of ``shape``, prepared like data.

    The baseline ``spec_mean`` must be read against: it falls with the number
    of tokens, and noise already reaches the range real layers show.
    """
    from tnb.prepare import prepare

    rng = np.random.default_rng(_seed_sequence(random_state))
    noise = rng.standard_normal(shape, dtype=np.float32)
    prepared = prepare(noise, input="signed" if signed else "abs").matrix
    if signed:
        prepared = np.abs(prepared)
    return specialization_summary(prepared)[0]
