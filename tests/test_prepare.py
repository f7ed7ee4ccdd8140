"""|z-score| preparation: float32 output, constant columns, non-finite inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tnb.prepare import PreparedMatrix, abs_zscore, check_matrix, prepare


def test_abs_zscore_matches_float64_reference() -> None:
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((500, 40)) * rng.uniform(0.1, 10, 40) + rng.uniform(-50, 50, 40)).astype(np.float16)
    prepared = abs_zscore(A)
    reference = np.abs((A.astype(np.float64) - A.astype(np.float64).mean(0)) / A.astype(np.float64).std(0))
    assert prepared.matrix.dtype == np.float32 and prepared.matrix.flags.c_contiguous
    np.testing.assert_allclose(prepared.matrix, reference, rtol=2e-5, atol=2e-5)
    assert prepared.n_constant_columns == 0


def test_constant_columns_become_zero_and_are_counted() -> None:
    rng = np.random.default_rng(1)
    A = rng.standard_normal((50, 6)).astype(np.float32)
    A[:, 2] = 3.25
    A[:, 5] = 0.0
    prepared = prepare(A)
    assert isinstance(prepared, PreparedMatrix)
    assert prepared.n_constant_columns == 2
    assert prepared.constant_columns.tolist() == [2, 5]
    assert np.isfinite(prepared.matrix).all()
    assert (prepared.matrix[:, [2, 5]] == 0).all()
    assert (prepared.matrix[:, [0, 1, 3, 4]] > 0).any(axis=0).all()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.nan, r"1 NaN and 0 inf values in 1 rows and 1 columns, at \(row, column\) \(3, 1\)"),
        (np.inf, r"0 NaN and 1 inf values .* \(3, 1\)"),
        (-np.inf, r"0 NaN and 1 inf values .* \(3, 1\)"),
    ],
)
def test_non_finite_values_are_counted_and_located(value, match) -> None:
    A = np.ones((5, 4), dtype=np.float32)
    A[3, 1] = value
    with pytest.raises(ValueError, match=match):
        abs_zscore(A)


def test_many_non_finite_values_are_summarized() -> None:
    A = np.zeros((10, 10))
    A[:, 0] = np.nan
    with pytest.raises(ValueError, match=r"10 NaN .* and 5 more"):
        check_matrix(A)


@pytest.mark.parametrize(
    ("A", "match"),
    [
        (np.ones(5), r"2-D .* Got shape \(5,\)"),
        (np.ones((2, 2, 2)), r"2-D .* Got shape \(2, 2, 2\)"),
        (np.ones((1, 4)), r"at least 2 rows .* Got shape \(1, 4\)"),
        (np.array([["a", "b"], ["c", "d"]]), r"real numbers. Got dtype <U1"),
    ],
)
def test_bad_shapes_and_dtypes(A, match) -> None:
    with pytest.raises(ValueError, match=match):
        abs_zscore(A)


def test_check_matrix_does_not_copy_float32() -> None:
    A = np.ones((4, 3), dtype=np.float32)
    assert check_matrix(A) is A


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(2, 40), st.integers(1, 12)),
        elements=st.floats(-1e4, 1e4, width=32),
    )
)
def test_prepared_matrix_properties(A) -> None:
    prepared = abs_zscore(A)
    out = prepared.matrix
    assert out.dtype == np.float32 and out.shape == A.shape
    assert np.isfinite(out).all() and (out >= 0).all()
    # constant in float32: no spread, or a spread so small its std is below float32's smallest
    # normal number (e.g. [0, 1.2e-38]: 1/std overflows), as prepare documents
    std = A.astype(np.float64).std(axis=0)
    constant = (np.ptp(A, axis=0) == 0) | (std < np.finfo(np.float32).tiny)
    assert prepared.constant_columns.tolist() == np.flatnonzero(constant).tolist()
    assert (out[:, constant] == 0).all()
    # |z| of a non-constant column has mean square 1 (population std).
    varying = ~constant & (A.astype(np.float64).std(0) > 1e-3 * (np.abs(A).max(0) + 1))
    if varying.any():
        np.testing.assert_allclose((out[:, varying].astype(np.float64) ** 2).mean(0), 1.0, rtol=1e-3)
