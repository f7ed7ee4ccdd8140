"""Scores for a biclustering: block-mean R^2 (and its two-way split) and the label-shuffle permutation Z.

Everything here works on block sums, never on a reconstructed matrix. With
``S[r, c]`` the sum of the entries in token cluster ``r`` and neuron cluster
``c`` and ``n[r, c]`` the block's size, the block-mean model's residual sum of
squares is

    RSS = ||A||^2 - sum_b S_b^2 / n_b,

so R^2 = 1 - RSS / TSS with TSS = ||A||^2 - (sum A)^2 / N (about the overall
mean). ``S`` costs one GEMM ``A @ onehot(col_labels)`` (tokens x col_k) and a
row-cluster reduction of that small matrix.

The label-shuffle null keeps every cluster's size: row labels and column labels
are permuted. Row shuffles are applied to the precomputed column-cluster sums
(O(tokens x col_k) per permutation, as one sparse selector product per batch);
column shuffles need a pass over the whole matrix, so a pool of
``n_column_shuffles`` of them is computed in one GEMM and permutation ``i``
pairs a fresh row shuffle with one column shuffle (permutations are split
into ``n_column_shuffles`` contiguous blocks, one per column shuffle).
``n_column_shuffles = n_permutations`` gives fully independent shuffles at
O(tokens x neurons) each. The pool holds *centred* sums (minus what the
overall mean gives), so float32 loses nothing that the statistics use.

Neuron specialization lives in :mod:`tnb.specialization`; its functions are
also importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from tnb._shared import _CHUNK_ROWS, _as_float32, _compact, _is_count, _onehot, _seed_sequence
from tnb.specialization import (  # re-exported: they were defined here before tnb.specialization
    association_specialization,
    bicluster_specialization,
    cluster_specialization,
    neuron_specialization,
    noise_specialization,
    specialization_summary,
)

__all__ = [
    "STATISTICS",
    "PermutationResult",
    "R2_PARTS",
    "adjusted_r2",
    "association_specialization",
    "bicluster_specialization",
    "block_r2",
    "block_sums",
    "grid_r2_parts",
    "cluster_specialization",
    "mean_block_mean",
    "neuron_specialization",
    "noise_specialization",
    "permutation_test",
    "permutation_tests",
    "r2_parts_from_sums",
    "r2_parts_stack",
    "specialization_summary",
    "statistic_from_sums",
    "total_sum_of_squares",
]

#: Statistics a permutation test can score: the study's R^2 and its original
#: mean of the block means (kept for comparison).
STATISTICS = ("r2", "mean_block_mean")

# Soft cap on the bytes of the (batch, n_tokens) index arrays a permutation
# batch holds at once.
_BATCH_BYTES = 32 * 2**20
# Cap on the column-shuffle pools held at once (grid points beyond it are
# processed in further groups, with the same row permutations regenerated).
_POOL_BYTES = 256 * 2**20


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of a permutation test.

    Attributes
    ----------
    statistic : str
        ``"r2"`` or ``"mean_block_mean"``.
    observed : float
        The statistic on the labels given.
    z : float
        ``(observed - null_mean) / null_sd``; NaN when ``null_sd`` is 0.
    p : float
        ``(1 + #{null >= observed}) / (1 + n_permutations)``.
    null_mean, null_sd : float
        Mean and standard deviation (ddof=1) of the null statistics.
    n_permutations : int
        Number of null draws.
    null : str
        Which null: ``"label_shuffle"`` here; ``"refit"`` for
        :func:`tnb.nulls.refit_null`.
    null_values : ndarray of shape (n_permutations,)
        The null statistics themselves.
    """

    statistic: str
    observed: float
    z: float
    p: float
    null_mean: float
    null_sd: float
    n_permutations: int
    null: str
    null_values: np.ndarray


def _row_cluster_sums(column_sums: np.ndarray, row_labels: np.ndarray, row_k: int) -> np.ndarray:
    """Sum rows of ``column_sums`` (n_tokens, col_k) by row label -> (row_k, col_k) float64."""
    return _onehot(row_labels, row_k, np.float64).T @ column_sums


def total_sum_of_squares(A) -> tuple[float, float, int]:
    """``(sum A^2, sum A, N)`` accumulated in float64 over row chunks.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)

    Returns
    -------
    sum_squares : float
    total : float
    n_elements : int
    """
    return _moments(_as_float32(A))


def _moments(array: np.ndarray) -> tuple[float, float, int]:
    """:func:`total_sum_of_squares` of a checked float32 matrix."""
    if array.flags.c_contiguous and array.ndim == 2 and array.size:
        from tnb.scaling import sum_and_squares  # numba: imported when a matrix is scored, not with this module

        total, sum_squares = sum_and_squares(array)  # one pass, no float64 chunk copies
        return float(sum_squares), float(total), array.size
    sum_squares = 0.0
    total = 0.0
    for start in range(0, array.shape[0], _CHUNK_ROWS):
        chunk = array[start : start + _CHUNK_ROWS].astype(np.float64)
        sum_squares += float(np.einsum("ij,ij->", chunk, chunk))
        total += float(chunk.sum())
    return sum_squares, total, array.size


def block_sums(A, row_labels, col_labels) -> tuple[np.ndarray, np.ndarray]:
    """Sum and size of every block of a checkerboard partition.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,), int
    col_labels : ndarray of shape (n_neurons,), int
        Any integer labels; they are relabelled to ``0..k-1`` in sorted order.

    Returns
    -------
    sums : ndarray of shape (row_k, col_k), float64
    sizes : ndarray of shape (row_k, col_k), float64
        ``sizes[r, c] = |rows r| * |cols c|``.
    """
    array = _as_float32(A)
    rows, row_k = _compact(row_labels, array.shape[0], "row_labels")
    cols, col_k = _compact(col_labels, array.shape[1], "col_labels")
    column_sums = (array @ _onehot(cols, col_k)).astype(np.float64)
    sums = _row_cluster_sums(column_sums, rows, row_k)
    sizes = np.outer(np.bincount(rows, minlength=row_k), np.bincount(cols, minlength=col_k)).astype(np.float64)
    return sums, sizes


def _between_ss(sums: np.ndarray, sizes: np.ndarray, mean: float) -> np.ndarray:
    """sum_b n_b (S_b/n_b - mean)^2 over the last two axes (the explained SS)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = np.where(sizes > 0, sums / np.where(sizes > 0, sizes, 1) - mean, 0.0)
    return np.einsum("...ij,...ij->...", sizes * deviation, deviation)


def statistic_from_sums(
    sums: np.ndarray, sizes: np.ndarray, statistic: str, *, total: float, sum_squares: float, n_elements: int
) -> np.ndarray:
    """Evaluate a statistic from block sums; works on stacks ``(..., row_k, col_k)``.

    Parameters
    ----------
    sums : ndarray of shape (..., row_k, col_k)
    sizes : ndarray of shape (row_k, col_k)
    statistic : {"r2", "mean_block_mean"}
    total, sum_squares : float
        ``sum A`` and ``sum A^2`` (from :func:`total_sum_of_squares`).
    n_elements : int

    Returns
    -------
    ndarray of shape (...)
    """
    if statistic == "r2":
        mean = total / n_elements
        tss = sum_squares - total * mean
        if tss <= 0:
            return np.zeros(sums.shape[:-2])
        return _between_ss(sums, sizes, mean) / tss
    if statistic == "mean_block_mean":
        occupied = sizes > 0
        block_means = np.where(occupied, sums / np.where(occupied, sizes, 1), 0.0)
        return block_means.sum(axis=(-2, -1)) / occupied.sum()
    raise ValueError(f"statistic should be one of {STATISTICS}. Got {statistic!r} instead.")


def block_r2(A, row_labels, col_labels) -> float:
    """Block-mean R^2 of a checkerboard partition, in closed form.

    ``1 - RSS / TSS`` where the reconstruction replaces every entry with the
    mean of its block and TSS is about the overall mean. Computed as
    ``sum_b n_b (mean_b - mean)^2 / TSS`` from block sums: no reconstructed
    matrix, no loop over elements.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,), int
    col_labels : ndarray of shape (n_neurons,), int

    Returns
    -------
    float
        In [0, 1]; 0 when the matrix is constant.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[1.0, 1.0, 5.0], [1.0, 1.0, 5.0], [3.0, 3.0, 3.0]])
    >>> round(block_r2(A, [0, 0, 1], [0, 0, 1]), 6)
    1.0
    """
    sums, sizes = block_sums(A, row_labels, col_labels)
    sum_squares, total, n_elements = total_sum_of_squares(A)
    value = statistic_from_sums(sums, sizes, "r2", total=total, sum_squares=sum_squares, n_elements=n_elements)
    return float(np.clip(value, 0.0, 1.0))


def mean_block_mean(A, row_labels, col_labels) -> float:
    """The study's original statistic: the unweighted mean of the block means.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,), int
    col_labels : ndarray of shape (n_neurons,), int

    Returns
    -------
    float
    """
    sums, sizes = block_sums(A, row_labels, col_labels)
    return float(statistic_from_sums(sums, sizes, "mean_block_mean", total=0.0, sum_squares=0.0, n_elements=1))


def adjusted_r2(r2: float, n_elements: int, n_blocks: int) -> float:
    """R^2 adjusted for the number of blocks: ``1 - (1 - r2) (N - 1) / (N - n_blocks)``.

    The block-mean model has one free mean per block, so ``n_blocks`` plays
    the role of ``p + 1`` in the usual formula. The charge is about
    ``n_blocks / N``: on a full layer (N ~ 10^7 entries) it is ~1e-5 and the
    ranking follows R^2; it matters on small matrices. It does not charge for
    the labels having been fitted to the data; the refit null does.

    Parameters
    ----------
    r2 : float
    n_elements : int
        ``n_tokens * n_neurons``.
    n_blocks : int
        ``row_k * col_k`` (non-empty blocks).

    Returns
    -------
    float
        NaN when ``n_elements <= n_blocks``.
    """
    if n_elements <= n_blocks:
        return float("nan")
    return float(1.0 - (1.0 - r2) * (n_elements - 1) / (n_elements - n_blocks))


def _small_labels(labels, n_expected: int, name: str) -> tuple[np.ndarray, int]:
    """Labels as indices 0..k-1 (empty ones allowed): as given when they already are, else compacted."""
    array = np.asarray(labels)
    if array.ndim == 1 and array.dtype.kind in "iu" and array.size and 0 <= array.min() and array.max() < 4096:
        if array.shape[0] != n_expected:
            raise ValueError(f"{name} should have shape ({n_expected},). Got {array.shape} instead.")
        return array.astype(np.intp, copy=False), int(array.max()) + 1
    return _compact(array, n_expected, name)


def adjusted_rand(labels_a, labels_b) -> float:
    """Adjusted Rand index of two labelings: scikit-learn's ``adjusted_rand_score``, same value.

    The same pair counts and formula as scikit-learn (``pair_confusion_matrix``, exact
    integers, one float division), from a dense contingency table made with one
    ``bincount``; scikit-learn builds a sparse one, ~8 ms per call on 20,000 labels
    against ~0.3 ms here, and the stability of a layer takes 180 calls. Hand-written for
    that; tests compare the values with scikit-learn's.
    """
    a, k_a = _small_labels(labels_a, np.size(labels_a), "labels_a")
    b, k_b = _small_labels(labels_b, a.shape[0], "labels_b")
    n = a.shape[0]
    contingency = np.bincount(a * k_b + b, minlength=k_a * k_b).reshape(k_a, k_b).astype(np.int64)
    rows, cols = contingency.sum(axis=1), contingency.sum(axis=0)
    sum_squares = int(np.sum(contingency * contingency))
    tp = sum_squares - n
    fp = int(np.sum(contingency @ cols)) - sum_squares
    fn = int(np.sum(contingency.T @ rows)) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _z_and_p(observed: float, null_values: np.ndarray) -> tuple[float, float, float, float]:
    null_mean = float(null_values.mean())
    null_sd = float(null_values.std(ddof=1)) if null_values.size > 1 else 0.0
    z = (observed - null_mean) / null_sd if null_sd > 0 else float("nan")
    # Tolerance so that float noise does not count an identical value as below.
    at_least = int(np.count_nonzero(null_values >= observed - 1e-12 * max(1.0, abs(observed))))
    p = (1 + at_least) / (1 + null_values.size)
    return float(z), float(p), null_mean, null_sd


def permutation_test(
    A,
    row_labels,
    col_labels,
    *,
    statistic: str = "r2",
    n_permutations: int = 1000,
    n_column_shuffles: int = 25,
    random_state: int | np.random.Generator | np.random.SeedSequence | None = None,
    moments: tuple[float, float, int] | None = None,
) -> PermutationResult:
    """Permutation Z-score and p-value of a statistic under size-preserving label shuffles.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,), int
    col_labels : ndarray of shape (n_neurons,), int
    statistic : {"r2", "mean_block_mean"}, default="r2"
    n_permutations : int, default=1000
        Number of null draws (>= 2).
    n_column_shuffles : int, default=25
        Size of the pool of column shuffles (see the module docstring); capped
        at ``n_permutations``.
    random_state : int, Generator, SeedSequence or None, default=None
        Seed of the shuffles. The same seed gives bit-identical results.
    moments : tuple, optional
        ``total_sum_of_squares(A)``, when the caller already has it.

    Returns
    -------
    PermutationResult
        With ``null="label_shuffle"``.

    Notes
    -----
    Labels fitted to the data beat shuffled labels almost always, also on
    pure noise, so this Z measures "better than random labels", not "there is
    structure"; use :func:`tnb.nulls.refit_null` for the latter.
    """
    return permutation_tests(
        A,
        [(row_labels, col_labels)],
        statistic=statistic,
        n_permutations=n_permutations,
        n_column_shuffles=n_column_shuffles,
        random_state=random_state,
        moments=moments,
    )[0]


@dataclass
class _Labeling:
    """One labeling's observed block sums and its pool of column-shuffled, centred column-cluster sums."""

    row_k: int
    col_k: int
    row_sizes: np.ndarray
    sizes: np.ndarray
    observed: float
    pool: np.ndarray | None = None  # (n_column_shuffles * n_tokens, col_k) float32


def permutation_tests(
    A,
    labelings,
    *,
    statistic: str = "r2",
    n_permutations: int = 1000,
    n_column_shuffles: int = 25,
    random_state: int | np.random.Generator | np.random.SeedSequence | None = None,
    moments: tuple[float, float, int] | None = None,
) -> list[PermutationResult]:
    """:func:`permutation_test` for several labelings of one matrix, sharing the row shuffles.

    Every labeling sees the same row permutations (common random numbers: the
    permutations are generated once, not once per labeling) and its own column
    shuffles. Labeling ``g`` gets the same result whatever the other labelings.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    labelings : sequence of (row_labels, col_labels)
    statistic, n_permutations, n_column_shuffles, random_state, moments
        As in :func:`permutation_test`.

    Returns
    -------
    list of PermutationResult
        One per labeling, in order.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic should be one of {STATISTICS}. Got {statistic!r} instead.")
    if not _is_count(n_permutations) or n_permutations < 2:
        raise ValueError(f"n_permutations should be an int >= 2. Got {n_permutations!r} instead.")
    if not _is_count(n_column_shuffles) or n_column_shuffles < 1:
        raise ValueError(f"n_column_shuffles should be an int >= 1. Got {n_column_shuffles!r} instead.")
    array = _as_float32(A)
    if moments is None:
        moments = total_sum_of_squares(array)
    sum_squares, total, n_elements = moments
    mean = total / n_elements
    tss = sum_squares - total * mean
    n_permutations = int(n_permutations)
    n_column_shuffles = int(min(n_column_shuffles, n_permutations))
    seeds = _seed_sequence(random_state).spawn(len(labelings) + 1)

    compacted = []
    for row_labels, col_labels in labelings:
        rows, row_k = _compact(row_labels, array.shape[0], "row_labels")
        cols, col_k = _compact(col_labels, array.shape[1], "col_labels")
        compacted.append((rows, row_k, cols, col_k))

    def evaluate(centred_sums, sizes):
        # centred_sums[..., r, c] = S_rc - mean * n_rc; every cluster is non-empty after _compact.
        if statistic == "r2":
            if tss <= 0:
                return np.zeros(centred_sums.shape[:-2])
            return np.einsum("...ij,...ij->...", centred_sums / sizes, centred_sums) / tss
        return mean + (centred_sums / sizes).mean(axis=(-2, -1))

    null_values = [np.empty(n_permutations) for _ in labelings]
    states: list[_Labeling] = []
    for rows, row_k, cols, col_k in compacted:
        row_sizes = np.bincount(rows, minlength=row_k)
        col_sizes = np.bincount(cols, minlength=col_k)
        sizes = np.outer(row_sizes, col_sizes).astype(np.float64)
        sums = _row_cluster_sums((array @ _onehot(cols, col_k)).astype(np.float64), rows, row_k)
        states.append(_Labeling(row_k, col_k, row_sizes, sizes, float(evaluate(sums - mean * sizes, sizes))))

    # Pools are built a group of labelings at a time, to bound memory; the row
    # permutations are regenerated from the same seed for every group.
    pool_bytes = [n_column_shuffles * array.shape[0] * state.col_k * 4 for state in states]
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, nbytes in enumerate(pool_bytes):
        if current and used + nbytes > _POOL_BYTES:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += nbytes
    groups.append(current)

    for group in groups:
        for index in group:
            rows, row_k, cols, col_k = compacted[index]
            states[index].pool = _column_shuffle_pool(
                array, cols, col_k, n_column_shuffles, mean, np.random.default_rng(seeds[index + 1])
            )
        _row_shuffle_null(array.shape[0], [states[i] for i in group], [null_values[i] for i in group],
                          n_permutations, n_column_shuffles, np.random.default_rng(seeds[0]), evaluate)  # fmt: skip
        for index in group:
            states[index].pool = None

    results = []
    for state, values in zip(states, null_values):
        z, p, null_mean, null_sd = _z_and_p(state.observed, values)
        results.append(
            PermutationResult(
                statistic=statistic,
                observed=state.observed,
                z=z,
                p=p,
                null_mean=null_mean,
                null_sd=null_sd,
                n_permutations=n_permutations,
                null="label_shuffle",
                null_values=values,
            )
        )
    return results


def _column_shuffle_pool(array, cols, col_k, n_column_shuffles, mean, rng) -> np.ndarray:
    """Centred column-cluster sums of every column shuffle, stacked: (n_column_shuffles * n_tokens, col_k) float32.

    Centring (subtracting the sum the overall mean would give) keeps float32
    accurate: the block sums of random labels are small deviations from
    ``mean * n_b``, and only the deviations enter the statistics.
    """
    n_rows, n_cols = array.shape
    shuffled = np.stack([rng.permutation(cols) for _ in range(n_column_shuffles)])
    stacked = np.zeros((n_cols, n_column_shuffles * col_k), dtype=np.float32)
    stacked[np.arange(n_cols)[None, :], shuffled + col_k * np.arange(n_column_shuffles)[:, None]] = 1
    pool = array @ stacked  # one GEMM for every shuffle
    pool -= np.tile(mean * np.bincount(cols, minlength=col_k), n_column_shuffles).astype(np.float32)
    return np.ascontiguousarray(pool.reshape(n_rows, n_column_shuffles, col_k).transpose(1, 0, 2)).reshape(-1, col_k)


def _row_shuffle_null(n_rows, states, outputs, n_permutations, n_column_shuffles, rng, evaluate) -> None:
    """Fill ``outputs`` with the null statistic of each permutation, for every labeling in ``states``.

    Permutation ``i`` assigns token cluster ``r`` the rows ``P_i[segment r]``
    (a uniform random subset of its size) and uses the column shuffle of its
    block: the permutations are split into ``n_column_shuffles`` contiguous
    blocks, so that a batch reads one (n_tokens, col_k) slice of the pool,
    which stays in cache. The block sums of a batch are one sparse
    (batch * row_k, n_tokens) x (n_tokens, col_k) product: O(n_tokens x col_k)
    per permutation, no intermediate gathered copy.
    """
    index_dtype = np.int32 if n_rows < 2**31 else np.int64
    max_batch = int(np.clip(_BATCH_BYTES // (8 * n_rows), 1, n_permutations))
    ones = np.ones(max_batch * n_rows, dtype=np.float32)
    for shuffle, block in enumerate(np.array_split(np.arange(n_permutations), n_column_shuffles)):
        for batch in np.array_split(block, max(1, -(-block.size // max_batch))):
            size = batch.size
            permutations = np.stack([rng.permutation(n_rows).astype(index_dtype) for _ in range(size)]).ravel()
            for state, output in zip(states, outputs):
                pool = state.pool[shuffle * n_rows : (shuffle + 1) * n_rows]
                indptr = np.concatenate([[0], np.cumsum(np.tile(state.row_sizes, size))]).astype(index_dtype)
                selector = sparse.csr_array(
                    (ones[: size * n_rows], permutations, indptr), shape=(size * state.row_k, n_rows)
                )
                sums = (selector @ pool).astype(np.float64).reshape(size, state.row_k, state.col_k)
                output[batch] = evaluate(sums, state.sizes)


# --------------------------------------------------------------------------
# The two-way split of block-mean R^2
# --------------------------------------------------------------------------

#: Names of the parts of R^2 = r2_rows + r2_cols + r2_interaction.
R2_PARTS = ("r2_rows", "r2_cols", "r2_interaction")


def r2_parts_from_sums(sums: np.ndarray, sizes: np.ndarray, *, total: float, sum_squares: float,
                       n_elements: int) -> dict[str, float]:
    """Block-mean R^2 and its exact two-way split, from block sums.

    The blocks of a checkerboard have proportional sizes (``n_rc = a_r b_c``),
    so the between-block sum of squares splits exactly (orthogonally) into a
    token-cluster part, a neuron-cluster part and their interaction::

        sum n_rc (m_rc - g)^2 = sum_r a_r m (R_r - g)^2 + sum_c n b_c (C_c - g)^2
                               + sum n_rc (m_rc - R_r - C_c + g)^2

    with ``m_rc`` the block means, ``R_r``/``C_c`` the token-/neuron-cluster
    means and ``g`` the grand mean. ``r2_rows`` is how much of the matrix the
    token clusters' overall loudness explains; only ``r2_interaction`` is
    token x neuron structure.

    Parameters
    ----------
    sums, sizes : ndarray of shape (row_k, col_k)
        From :func:`block_sums`.
    total, sum_squares, n_elements
        From :func:`total_sum_of_squares`.

    Returns
    -------
    dict
        ``r2, r2_rows, r2_cols, r2_interaction`` (float; ``r2`` is the sum of the parts).
    """
    return {name: float(value) for name, value in zip(
        ("r2", *R2_PARTS), r2_parts_stack(sums[np.newaxis], sizes, total=total, sum_squares=sum_squares,
                                          n_elements=n_elements)[:, 0])}


def r2_parts_stack(sums: np.ndarray, sizes: np.ndarray, *, total: float, sum_squares: float,
                   n_elements: int) -> np.ndarray:
    """:func:`r2_parts_from_sums` on a stack ``(n, row_k, col_k)`` -> array of shape (4, n).

    Rows: r2, r2_rows, r2_cols, r2_interaction. Empty clusters are allowed.
    """
    sums = np.asarray(sums, dtype=np.float64)
    mean = total / n_elements
    tss = sum_squares - total * mean
    if tss <= 0:
        return np.zeros((4, sums.shape[0]))
    row_sizes = sizes.sum(axis=1)  # a_r * m
    col_sizes = sizes.sum(axis=0)  # n * b_c
    with np.errstate(divide="ignore", invalid="ignore"):
        block_means = np.where(sizes > 0, sums / np.where(sizes > 0, sizes, 1), mean)
        row_means = np.where(row_sizes > 0, sums.sum(axis=2) / np.where(row_sizes > 0, row_sizes, 1), mean)
        col_means = np.where(col_sizes > 0, sums.sum(axis=1) / np.where(col_sizes > 0, col_sizes, 1), mean)
    ss_rows = np.einsum("r,nr->n", row_sizes, (row_means - mean) ** 2)
    ss_cols = np.einsum("c,nc->n", col_sizes, (col_means - mean) ** 2)
    residual = block_means - row_means[:, :, np.newaxis] - col_means[:, np.newaxis, :] + mean
    ss_interaction = np.einsum("rc,nrc->n", sizes, residual**2)
    parts = np.stack([ss_rows, ss_cols, ss_interaction]) / tss
    return np.vstack([parts.sum(axis=0, keepdims=True), parts])


def grid_r2_parts(A, labelings) -> list[dict[str, float]]:
    """:func:`r2_parts_from_sums` of several labelings of one matrix, reading the matrix once.

    The token-cluster indicator matrices of all labelings are stacked
    (n_tokens x sum(row_k)), so ``A.T @ stacked`` is ONE GEMM over the
    matrix; each labeling's neuron clusters then reduce a (row_k x n_neurons)
    slice. A grid search scores all its points (and every null draw's) this way.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons)
    labelings : sequence of (row_labels, col_labels)

    Returns
    -------
    list of dict
        One per labeling, in order: ``r2, r2_rows, r2_cols, r2_interaction``
        (float) and ``n_blocks`` (int, the non-empty blocks).
    """
    return _grid_r2_parts(_as_float32(A), labelings)


def _grid_r2_parts(array: np.ndarray, labelings) -> list[dict[str, float]]:
    """:func:`grid_r2_parts` of a matrix already checked (finite float32), such as a null draw of one."""
    sum_squares, total, n_elements = _moments(array)
    out = []
    for sums, sizes in _grid_block_sums(array, labelings):
        parts: dict[str, float] = r2_parts_from_sums(
            sums, sizes, total=total, sum_squares=sum_squares, n_elements=n_elements
        )
        parts["n_blocks"] = int(np.count_nonzero(sizes))
        out.append(parts)
    return out


def _grid_block_sums(array: np.ndarray, labelings) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sums, sizes) of every labeling from one GEMM over the (checked, float32) matrix.

    Token labelings that occur more than once (grid points that share their
    row k-means) get one set of columns in the product.
    """
    rows = []
    for row_labels, col_labels in labelings:
        rows.append((_compact(row_labels, array.shape[0], "row_labels"), _compact(col_labels, array.shape[1], "col_labels")))
    offsets: dict[bytes, int] = {}
    width = 0
    for (labels, k), _ in rows:
        key = labels.tobytes()
        if key not in offsets:
            offsets[key] = width
            width += k
    stacked = np.zeros((array.shape[0], width), dtype=np.float32)
    for (labels, _), _ in rows:
        stacked[np.arange(array.shape[0]), offsets[labels.tobytes()] + labels] = 1
    cluster_rows = (array.T @ stacked).T.astype(np.float64)  # (distinct row_k columns, n_neurons)
    out = []
    for (row_labels, row_k), (col_labels, col_k) in rows:
        offset = offsets[row_labels.tobytes()]
        block = cluster_rows[offset : offset + row_k]
        sums = block @ _onehot(col_labels, col_k, np.float64)
        sizes = np.outer(np.bincount(row_labels, minlength=row_k), np.bincount(col_labels, minlength=col_k))
        out.append((sums, sizes.astype(np.float64)))
    return out
