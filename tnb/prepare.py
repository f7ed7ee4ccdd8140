"""Input preparation: the study's |z-score| normalization, in float32.

The study scores each neuron (column) by how far every token pushes it from
its mean, in units of its spread: ``|A - mean| / std`` per column. This module
does that without ever leaving float32 for the matrix itself (the per-column
moments are accumulated in float64, which costs two vectors, not a copy), and
it refuses inputs that would silently turn into NaN later on.

Constant columns (every token gives the neuron the same value, so std = 0)
carry no information: their |z| is set to 0 and they are counted, not dropped,
so neuron indices stay aligned with the lake. A column of zeros is harmless
downstream: ``tnb.bicluster`` gives zero rows and columns a zero scaling
instead of the ``1/sqrt(0)`` that makes scikit-learn fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["INPUTS", "PreparedMatrix", "abs_zscore", "check_matrix", "prepare", "zscore"]

#: What the biclustering sees: the study's |z| per neuron, or the signed z.
INPUTS = ("abs", "signed")

# Column moments are summed over this many rows at a time, so the float64
# accumulation never needs a float64 copy of the whole matrix.
_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class PreparedMatrix:
    """A layer's tokens x neurons matrix, ready for biclustering.

    Attributes
    ----------
    matrix : ndarray of shape (n_tokens, n_neurons), float32, C-contiguous
        ``|A - mean| / std`` per column; constant columns are all zero.
    constant_columns : ndarray of shape (n_constant_columns,), int64
        Indices of the columns whose values were all equal.
    """

    matrix: np.ndarray
    constant_columns: np.ndarray

    @property
    def n_constant_columns(self) -> int:
        """How many columns were constant (and are now all zero)."""
        return int(self.constant_columns.size)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_tokens, n_neurons)``."""
        return self.matrix.shape


def check_matrix(A, *, name: str = "A", min_rows: int = 1, min_cols: int = 1) -> np.ndarray:
    """Validate a tokens x neurons matrix and return it as C-contiguous float32.

    Parameters
    ----------
    A : array-like of shape (n_tokens, n_neurons)
        Real-valued matrix. Integer and float16/float64 inputs are converted;
        a float32 C-contiguous input is returned without a copy.
    name : str, default="A"
        What to call the matrix in error messages.
    min_rows, min_cols : int, default=1
        Smallest accepted shape.

    Returns
    -------
    ndarray of shape (n_tokens, n_neurons), float32

    Raises
    ------
    ValueError
        If ``A`` is not 2-D, too small, not real, or holds NaN or inf. The
        message says how many non-finite values there are and where the first
        few are.
    """
    if isinstance(A, PreparedMatrix):
        A = A.matrix
    array = np.asarray(A)
    if array.ndim != 2:
        raise ValueError(f"{name} should be a 2-D (n_tokens, n_neurons) array. Got shape {array.shape} instead.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} should hold real numbers. Got dtype {array.dtype} instead.")
    n_rows, n_cols = array.shape
    if n_rows < min_rows or n_cols < min_cols:
        raise ValueError(
            f"{name} should have at least {min_rows} rows and {min_cols} columns. Got shape {array.shape} instead."
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    _check_finite(array, name)
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    # np.isfinite on the float32 matrix allocates a bool mask (1/4 of the
    # matrix); only the rare failing case looks at where the values are.
    if np.isfinite(array).all():
        return
    bad = ~np.isfinite(array)
    n_nan = int(np.isnan(array).sum())
    n_inf = int(bad.sum()) - n_nan
    rows, cols = np.nonzero(bad)
    where = ", ".join(f"({r}, {c})" for r, c in zip(rows[:5].tolist(), cols[:5].tolist()))
    more = f" and {rows.size - 5} more" if rows.size > 5 else ""
    bad_rows = np.unique(rows).size
    bad_cols = np.unique(cols).size
    raise ValueError(
        f"{name} holds {n_nan} NaN and {n_inf} inf values in {bad_rows} rows and {bad_cols} columns, "
        f"at (row, column) {where}{more}. Non-finite activations usually mean an overflow in float16; "
        "re-extract that layer or drop those tokens."
    )


def _column_moments(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, population std (float64) and a constant-column mask."""
    n_rows = array.shape[0]
    total = np.zeros(array.shape[1], dtype=np.float64)
    col_min = array.min(axis=0)
    col_max = array.max(axis=0)
    for start in range(0, n_rows, _CHUNK_ROWS):
        total += array[start : start + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n_rows
    # Second pass about the mean: the one-pass formula loses everything to
    # cancellation when a neuron's mean is large next to its spread.
    squares = np.zeros_like(total)
    for start in range(0, n_rows, _CHUNK_ROWS):
        deviation = array[start : start + _CHUNK_ROWS].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", deviation, deviation)
    std = np.sqrt(squares / n_rows)
    # A std below float32's smallest normal (~1e-38) is a constant column in float32:
    # its inverse would overflow to inf.
    constant = (col_max == col_min) | (std < np.finfo(np.float32).tiny)
    return mean, std, constant


def abs_zscore(A) -> PreparedMatrix:
    """The study's normalization: ``|A - mean| / std`` per neuron, in float32.

    Parameters
    ----------
    A : array-like of shape (n_tokens, n_neurons)
        Raw activations of one layer (float16 from the lake is fine).

    Returns
    -------
    PreparedMatrix
        ``.matrix`` is float32 of the same shape; constant columns (std = 0)
        are all zero and listed in ``.constant_columns``.

    Raises
    ------
    ValueError
        If ``A`` is not 2-D, has fewer than 2 tokens, or holds NaN or inf
        (the message counts them and names where they are).

    Examples
    --------
    >>> import numpy as np
    >>> prepared = abs_zscore(np.array([[1.0, 5.0], [3.0, 5.0]]))
    >>> prepared.matrix
    array([[1., 0.],
           [1., 0.]], dtype=float32)
    >>> prepared.n_constant_columns
    1
    """
    return _zscore(A, absolute=True)


def zscore(A) -> PreparedMatrix:
    """Signed z-scores ``(A - mean) / std`` per neuron, in float32 (constant columns 0).

    Parameters
    ----------
    A : array-like of shape (n_tokens, n_neurons)

    Returns
    -------
    PreparedMatrix
    """
    return _zscore(A, absolute=False)


def _zscore(A, *, absolute: bool) -> PreparedMatrix:
    array = check_matrix(A, min_rows=2)
    mean, std, constant = _column_moments(array)
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std)).astype(np.float32)
    out = np.empty_like(array)
    # Row chunks keep the float32 temporaries small; no element loop.
    mean32 = mean.astype(np.float32)
    for start in range(0, array.shape[0], _CHUNK_ROWS):
        block = out[start : start + _CHUNK_ROWS]
        np.subtract(array[start : start + _CHUNK_ROWS], mean32, out=block)
        if absolute:
            np.abs(block, out=block)
        np.multiply(block, scale, out=block)
    return PreparedMatrix(matrix=out, constant_columns=np.flatnonzero(constant).astype(np.int64))


def prepare(A, input: str = "abs") -> PreparedMatrix:
    """Prepare one layer's activations for :func:`tnb.bicluster.grid_search`.

    Parameters
    ----------
    A : array-like of shape (n_tokens, n_neurons)
    input : {"abs", "signed"}, default="abs"
        ``"abs"``: the study's ``|z|`` (:func:`abs_zscore`): a neuron's strong
        responses of either sign count alike. ``"signed"``: ``z``
        (:func:`zscore`): keeps the sign, so a block where neurons go up and
        one where they go down differ (it recovered planted blocks at weaker
        signal in our measurements; see the calibration table in bench/README.md).

    Returns
    -------
    PreparedMatrix
    """
    if input not in INPUTS:
        raise ValueError(f"input should be one of {INPUTS}. Got {input!r} instead.")
    return abs_zscore(A) if input == "abs" else zscore(A)
