"""Small helpers shared by :mod:`tnb.metrics` and :mod:`tnb.specialization`: labels, one-hot, seeds, chunks."""

from __future__ import annotations

import numpy as np

# Rows per chunk when a float64 accumulation over the matrix is needed.
_CHUNK_ROWS = 4096


def _compact(labels, n_expected: int, name: str) -> tuple[np.ndarray, int]:
    """Relabel to 0..k-1 (k = distinct labels) and check the length."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n_expected:
        raise ValueError(f"{name} should have shape ({n_expected},). Got {labels.shape} instead.")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{name} should hold integers. Got dtype {labels.dtype} instead.")
    if labels.size and labels.min() >= 0:
        counts = np.bincount(labels)
        if counts.all():  # already 0..k-1 with every label used (k-means output): np.unique's answer, ~15x faster
            return labels.astype(np.intp, copy=False), int(counts.size)
    uniques, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.intp, copy=False), int(uniques.size)


def _as_float32(A) -> np.ndarray:
    # Local import keeps tnb.metrics importable on its own for the lake readers.
    from tnb.prepare import check_matrix

    return check_matrix(A)


def _onehot(labels: np.ndarray, k: int, dtype=np.float32) -> np.ndarray:
    out = np.zeros((labels.shape[0], k), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _seed_sequence(random_state) -> np.random.SeedSequence:
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    return np.random.SeedSequence(random_state)
