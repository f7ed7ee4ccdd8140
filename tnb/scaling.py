"""Compiled passes of the bistochastic normalization: one read of the matrix per iteration.

scikit-learn's bistochastic normalization rescales the whole matrix at every
iteration and measures the change with another pass. Keeping the iterate as
``diag(a) X diag(b)``, one pass over ``X`` gives both the next row and column
sums and the Frobenius change made by the previous scaling, in float64.
Single-threaded, so the result does not depend on the number of threads.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

__all__ = ["scaled", "scaling_pass", "sum_and_squares"]

# Reassociating the row sums lets them vectorize; the order is fixed by the compiled code, not by threads.
_JIT: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract"}}


@numba.njit(**_JIT)
def scaling_pass(X, a, b, a_prev, b_prev, row_sums, col_sums):
    """Row and column sums of ``diag(a) X diag(b)`` and ``||diag(a_prev) X diag(b_prev) - diag(a) X diag(b)||_F``.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_columns), float32, C-contiguous
    a, a_prev : ndarray of shape (n_rows,), float64
    b, b_prev : ndarray of shape (n_columns,), float64
    row_sums : ndarray of shape (n_rows,), float64
        Output.
    col_sums : ndarray of shape (n_columns,), float64
        Output.

    Returns
    -------
    float
        The Frobenius norm of the change.
    """
    n_rows, n_columns = X.shape
    col_sums[:] = 0.0
    squared = 0.0
    for i in range(n_rows):
        row = X[i]
        a_i = a[i]
        a_prev_i = a_prev[i]
        row_sum = 0.0
        row_squared = 0.0
        for j in range(n_columns):
            x = np.float64(row[j])
            row_sum += x * b[j]
            col_sums[j] += x * a_i
            change = x * (a_prev_i * b_prev[j] - a_i * b[j])
            row_squared += change * change
        row_sums[i] = a_i * row_sum
        squared += row_squared
    for j in range(n_columns):
        col_sums[j] *= b[j]
    return np.sqrt(squared)


@numba.njit(nogil=True, cache=True)
def scaled(X, a, b):
    """``diag(a) X diag(b)`` in float32 (products in float64)."""
    n_rows, n_columns = X.shape
    out = np.empty((n_rows, n_columns), dtype=np.float32)
    for i in range(n_rows):
        a_i = a[i]
        for j in range(n_columns):
            out[i, j] = np.float32(np.float64(X[i, j]) * a_i * b[j])
    return out


@numba.njit(nogil=True, cache=True)
def sum_and_squares(X):
    """``(sum X, sum X^2)`` of a C-contiguous float32 matrix in one pass, in float64, no temporaries.

    Each row is summed in eight running partial sums (vector speed without
    reassociating: the same result on every CPU), and the rows' sums are added
    in order.
    """
    n_rows, n_columns = X.shape
    n8 = n_columns - n_columns % 8
    total = 0.0
    squares = 0.0
    partial = np.zeros(8)
    partial_squares = np.zeros(8)
    for i in range(n_rows):
        row = X[i]
        partial[:] = 0.0
        partial_squares[:] = 0.0
        for j in range(0, n8, 8):
            for lane in range(8):
                value = np.float64(row[j + lane])
                partial[lane] += value
                partial_squares[lane] += value * value
        row_total = 0.0
        row_squares = 0.0
        for j in range(n8, n_columns):
            value = np.float64(row[j])
            row_total += value
            row_squares += value * value
        for lane in range(8):
            row_total += partial[lane]
            row_squares += partial_squares[lane]
        total += row_total
        squares += row_squares
    return total, squares
