"""tnb.shuffle.permute_columns: every column a uniform random permutation of itself, independently."""

from __future__ import annotations

import numpy as np
import pytest

from tnb.shuffle import permute_columns, shuffled_columns, transpose_scaled


def test_every_column_keeps_its_values_and_the_input_is_untouched() -> None:
    X = np.random.default_rng(0).standard_normal((500, 40)).astype(np.float32)
    before = X.copy()
    Y = permute_columns(X, np.random.default_rng(1))
    np.testing.assert_array_equal(X, before)
    assert Y.flags.c_contiguous and Y.dtype == X.dtype
    np.testing.assert_array_equal(np.sort(Y, axis=0), np.sort(X, axis=0))
    assert (Y != X).mean() > 0.9  # actually shuffled


def test_a_draw_depends_only_on_its_seed() -> None:
    X = np.arange(3000, dtype=np.float64).reshape(300, 10)
    a = permute_columns(X, np.random.default_rng(7))
    np.testing.assert_array_equal(a, permute_columns(X, np.random.default_rng(7)))
    assert not np.array_equal(a, permute_columns(X, np.random.default_rng(8)))


def test_positions_are_uniform_and_columns_independent() -> None:
    # 4 values per column, 30,000 columns: where value 0 lands is uniform over 4 positions,
    # and two neighbouring columns' permutations are independent (24 x 24 table uniform).
    n = 30_000
    X = np.tile(np.arange(4, dtype=np.float32)[:, None], (1, n))
    Y = permute_columns(X, np.random.default_rng(0))
    landing = np.argmin(Y, axis=0)
    np.testing.assert_allclose(np.bincount(landing, minlength=4) / n, 0.25, atol=0.015)
    code = (Y * np.array([1, 4, 16, 64])[:, None]).sum(axis=0).astype(int)  # one of 24 permutations
    _, index = np.unique(code, return_inverse=True)
    assert index.max() == 23
    pairs = np.bincount(index[0::2] * 24 + index[1::2], minlength=576)
    expected = (n // 2) / 576
    chi2 = float(((pairs - expected) ** 2 / expected).sum())
    assert chi2 < 700  # 575 degrees of freedom: P(chi2 > 700) < 0.001


def test_it_names_a_bad_shape() -> None:
    with pytest.raises(ValueError, match="2-D"):
        permute_columns(np.zeros(5), np.random.default_rng(0))


def test_shuffled_columns_of_the_transpose_is_permute_columns() -> None:
    X = np.random.default_rng(3).standard_normal((300, 7)).astype(np.float32)
    expected = permute_columns(X, np.random.default_rng(11))
    got = shuffled_columns(np.ascontiguousarray(X.T), np.random.default_rng(11)).T
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(1, 1), (63, 65), (130, 200)])
def test_transpose_scaled_equals_numpy(shape) -> None:
    rng = np.random.default_rng(4)
    columns = rng.standard_normal(shape).astype(np.float32)
    scale = rng.gamma(2, 1, shape[1]).astype(np.float32)
    got = transpose_scaled(columns, scale)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, columns.T * scale[:, np.newaxis])


def test_transpose_scaled_names_bad_input() -> None:
    with pytest.raises(ValueError, match="float32 columns"):
        transpose_scaled(np.zeros((2, 3)), np.zeros(3, dtype=np.float32))


def test_shuffles_and_transposes_fill_a_given_buffer() -> None:
    rng = np.random.default_rng(0)
    columns = rng.standard_normal((7, 300)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, 300).astype(np.float32)
    buffer = np.full_like(columns, np.nan)
    into = shuffled_columns(columns, np.random.default_rng(5), out=buffer)
    assert into is buffer
    np.testing.assert_array_equal(into, shuffled_columns(columns, np.random.default_rng(5)))
    target = np.full((300, 7), np.nan, dtype=np.float32)
    assert transpose_scaled(columns, scale, out=target) is target
    np.testing.assert_array_equal(target, transpose_scaled(columns, scale))
    with pytest.raises(ValueError, match=r"out should be a C-ordered float32 array of shape \(300, 7\)"):
        transpose_scaled(columns, scale, out=np.empty((7, 300), dtype=np.float32))
