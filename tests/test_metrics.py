"""Closed-form R^2 against a naive loop, permutation Z calibration, specialization."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tnb.metrics import (
    adjusted_r2,
    adjusted_rand,
    block_r2,
    block_sums,
    grid_r2_parts,
    mean_block_mean,
    permutation_test,
    r2_parts_from_sums,
    total_sum_of_squares,
)
from tnb.specialization import (
    _association_and_cluster,
    _kl_from_sizes,
    association_specialization,
    bicluster_specialization,
    cluster_specialization,
    neuron_specialization,
    specialization_summary,
)


def naive_block_r2(A, row_labels, col_labels) -> float:
    """The study's definition, element by element: block means, reconstruction, 1 - RSS/TSS."""
    n_rows, n_cols = A.shape
    sums, counts = {}, {}
    for i in range(n_rows):
        for j in range(n_cols):
            key = (row_labels[i], col_labels[j])
            sums[key] = sums.get(key, 0.0) + float(A[i, j])
            counts[key] = counts.get(key, 0) + 1
    mean = sum(float(A[i, j]) for i in range(n_rows) for j in range(n_cols)) / (n_rows * n_cols)
    rss = tss = 0.0
    for i in range(n_rows):
        for j in range(n_cols):
            key = (row_labels[i], col_labels[j])
            rss += (float(A[i, j]) - sums[key] / counts[key]) ** 2
            tss += (float(A[i, j]) - mean) ** 2
    return 1.0 - rss / tss


def naive_mean_block_mean(A, row_labels, col_labels) -> float:
    means = [
        A[np.ix_(row_labels == r, col_labels == c)].astype(np.float64).mean()
        for r in np.unique(row_labels)
        for c in np.unique(col_labels)
    ]
    return float(np.mean(means))


@settings(max_examples=50, deadline=None)
@given(
    n_rows=st.integers(2, 25),
    n_cols=st.integers(2, 15),
    row_k=st.integers(1, 6),
    col_k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_closed_form_r2_equals_naive_loop(n_rows, n_cols, row_k, col_k, seed) -> None:
    rng = np.random.default_rng(seed)
    A = np.abs(rng.standard_normal((n_rows, n_cols))).astype(np.float32)
    row_labels = rng.integers(0, row_k, n_rows) * 7 - 3  # arbitrary, non-contiguous labels
    col_labels = rng.integers(0, col_k, n_cols)
    r2 = block_r2(A, row_labels, col_labels)
    assert 0.0 <= r2 <= 1.0
    assert r2 == pytest.approx(naive_block_r2(A, row_labels, col_labels), abs=1e-6)
    assert mean_block_mean(A, row_labels, col_labels) == pytest.approx(
        naive_mean_block_mean(A, row_labels, col_labels), rel=1e-6
    )


def test_r2_is_one_on_exact_blocks_and_zero_on_constant() -> None:
    rows = np.repeat([0, 1, 2], 10)
    cols = np.repeat([0, 1], 8)
    A = np.array([[1.0, 4.0], [2.0, 0.5], [3.0, 3.0]])[rows][:, cols]
    assert block_r2(A, rows, cols) == pytest.approx(1.0, abs=1e-9)
    assert block_r2(np.full((6, 4), 2.0), [0, 0, 1, 1, 2, 2], [0, 1, 0, 1]) == 0.0


def test_block_sums_sizes() -> None:
    A = np.arange(12, dtype=np.float32).reshape(4, 3)
    sums, sizes = block_sums(A, [0, 1, 1, 0], [1, 0, 1])
    assert sizes.tolist() == [[2, 4], [2, 4]]
    assert sums.tolist() == [[1 + 10, 0 + 2 + 9 + 11], [4 + 7, 3 + 5 + 6 + 8]]


@pytest.mark.parametrize(
    ("row_labels", "col_labels", "match"),
    [
        ([0, 1, 0], [0, 1, 0], r"row_labels should have shape \(4,\). Got \(3,\)"),
        ([0, 1, 0, 1], [0, 1], r"col_labels should have shape \(3,\). Got \(2,\)"),
        ([0.0, 1.0, 0.0, 1.0], [0, 1, 0], r"row_labels should hold integers. Got dtype float64"),
    ],
)
def test_label_validation(row_labels, col_labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        block_r2(np.ones((4, 3)), np.asarray(row_labels), np.asarray(col_labels))


def test_grid_r2_parts_equals_each_labeling_scored_alone() -> None:
    """One GEMM for every labeling of a grid gives each labeling's own R^2 split and block count."""
    rng = np.random.default_rng(3)
    A = np.abs(rng.standard_normal((90, 40))).astype(np.float32)
    A[:30, :10] += 2.0  # some structure, so the parts are not all ~0
    labelings = [
        (rng.integers(0, 3, 90), rng.integers(0, 4, 40)),
        (np.repeat([7, 2, 5], 30), np.repeat([1, 9], 20)),  # any integer labels, relabelled in sorted order
        (rng.integers(0, 5, 90), rng.integers(0, 2, 40)),
    ]
    # grid points that share their token labels (one set of columns in the product)
    labelings += [(labelings[0][0], rng.integers(0, 6, 40)), (np.repeat([70, 20, 50], 30), labelings[2][1])]
    sum_squares, total, n_elements = total_sum_of_squares(A)
    scores = grid_r2_parts(A, labelings)
    assert len(scores) == len(labelings)
    for score, (rows, cols) in zip(scores, labelings):
        sums, sizes = block_sums(A, rows, cols)
        alone = r2_parts_from_sums(sums, sizes, total=total, sum_squares=sum_squares, n_elements=n_elements)
        for name, value in alone.items():
            assert score[name] == pytest.approx(value, rel=1e-4, abs=1e-8), name  # float32 GEMMs, summed in another order
        assert score["n_blocks"] == np.count_nonzero(sizes)
    assert scores[1]["r2"] > 0.1 > scores[0]["r2"]  # the planted block is found by the labeling that has it
    with pytest.raises(ValueError, match="row_labels should have shape"):
        grid_r2_parts(A, [(np.zeros(89, dtype=int), np.zeros(40, dtype=int))])


def test_specialization_still_imports_from_metrics() -> None:
    """The specialization functions moved to tnb.specialization; tnb.metrics re-exports the same objects."""
    import tnb.metrics
    import tnb.specialization

    assert tnb.specialization.__all__ and set(tnb.specialization.__all__) <= set(tnb.metrics.__all__)
    for name in tnb.specialization.__all__:
        assert getattr(tnb.metrics, name) is getattr(tnb.specialization, name), name


def test_adjusted_r2_charges_for_blocks() -> None:
    assert adjusted_r2(0.5, 100, 1) == pytest.approx(0.5)
    assert adjusted_r2(0.5, 100, 10) == pytest.approx(1 - 0.5 * 99 / 90)
    assert adjusted_r2(0.5, 100, 10) < adjusted_r2(0.5, 100, 4)
    assert math.isnan(adjusted_r2(0.5, 10, 10))


def test_permutation_z_is_calibrated_on_noise_with_random_labels() -> None:
    """Random labels on structureless data are a draw from the null: Z ~ N(0, 1)."""
    rng = np.random.default_rng(42)
    zs, ps = [], []
    for trial in range(300):
        A = np.abs(rng.standard_normal((40, 24))).astype(np.float32)
        rows = rng.permutation(np.arange(40) % 4)
        cols = rng.permutation(np.arange(24) % 3)
        result = permutation_test(A, rows, cols, n_permutations=200, random_state=trial)
        zs.append(result.z)
        ps.append(result.p)
    zs = np.array(zs)
    assert abs(zs.mean()) < 0.2, zs.mean()
    assert 0.8 < zs.std() < 1.2, zs.std()
    assert 0.4 < np.mean(ps) < 0.6  # p is about uniform under the null


def test_permutation_test_detects_planted_blocks_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(4), 30)
    cols = np.repeat(np.arange(3), 10)
    A = (rng.uniform(0, 3, (4, 3))[rows][:, cols] + 0.3 * rng.standard_normal((120, 30))).astype(np.float32)
    first = permutation_test(A, rows, cols, n_permutations=300, random_state=7)
    second = permutation_test(A, rows, cols, n_permutations=300, random_state=7)
    assert first.z > 20 and first.p == pytest.approx(1 / 301)
    assert first.observed == pytest.approx(block_r2(A, rows, cols), abs=1e-12)
    assert first.null == "label_shuffle" and first.n_permutations == 300
    np.testing.assert_array_equal(first.null_values, second.null_values)
    assert (first.z, first.p, first.null_mean, first.null_sd) == (second.z, second.p, second.null_mean, second.null_sd)
    other = permutation_test(A, rows, cols, n_permutations=300, random_state=8)
    assert not np.array_equal(first.null_values, other.null_values)


@pytest.mark.parametrize("statistic", ["r2", "mean_block_mean"])
def test_fully_independent_shuffles_agree_with_the_pool(statistic) -> None:
    rng = np.random.default_rng(3)
    A = np.abs(rng.standard_normal((60, 20))).astype(np.float32)
    rows = rng.integers(0, 3, 60)
    cols = rng.integers(0, 4, 20)
    pooled = permutation_test(A, rows, cols, statistic=statistic, n_permutations=400, random_state=0)
    exact = permutation_test(
        A, rows, cols, statistic=statistic, n_permutations=400, n_column_shuffles=400, random_state=0
    )
    assert pooled.statistic == exact.statistic == statistic
    assert pooled.null_mean == pytest.approx(exact.null_mean, rel=0.1, abs=1e-3)
    assert pooled.null_sd == pytest.approx(exact.null_sd, rel=0.35)


@pytest.mark.parametrize("statistic", ["r2", "mean_block_mean"])
def test_null_distribution_matches_brute_force_relabelling(statistic) -> None:
    """The reduceat/gather null equals recomputing the statistic on shuffled labels, in distribution."""
    rng = np.random.default_rng(5)
    A = np.abs(rng.standard_normal((30, 12))).astype(np.float32)
    A[:10] *= 3  # some row structure, so that the null is not trivial
    rows = rng.integers(0, 3, 30)
    cols = rng.integers(0, 2, 12)
    score = block_r2 if statistic == "r2" else mean_block_mean
    brute = np.array([score(A, rng.permutation(rows), rng.permutation(cols)) for _ in range(3000)])
    result = permutation_test(
        A, rows, cols, statistic=statistic, n_permutations=3000, n_column_shuffles=3000, random_state=1
    )
    assert result.null_mean == pytest.approx(brute.mean(), rel=0.05)
    assert result.null_sd == pytest.approx(brute.std(ddof=1), rel=0.08)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"statistic": "max"}, r"statistic should be one of \('r2', 'mean_block_mean'\). Got 'max'"),
        ({"n_permutations": 1}, r"n_permutations should be an int >= 2. Got 1"),
        ({"n_column_shuffles": 0}, r"n_column_shuffles should be an int >= 1. Got 0"),
    ],
)
def test_permutation_test_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        permutation_test(np.ones((4, 3)), [0, 1, 0, 1], [0, 1, 1], **kwargs)


def test_neuron_specialization_extremes() -> None:
    A = np.zeros((50, 3), dtype=np.float32)
    A[:, 0] = 1.0  # equal mass on every token
    A[7, 1] = 2.0  # all mass on one token
    spec = neuron_specialization(A)
    assert spec[0] == pytest.approx(0.0, abs=1e-12)
    assert spec[1] == pytest.approx(1.0)
    assert math.isnan(spec[2])  # constant column: no mass
    mean, median = specialization_summary(A)
    assert mean == pytest.approx(0.5) and median == pytest.approx(0.5)


def test_neuron_specialization_matches_entropy_definition() -> None:
    rng = np.random.default_rng(0)
    A = np.abs(rng.standard_normal((200, 5))).astype(np.float32)
    p = A.astype(np.float64) / A.astype(np.float64).sum(0)
    reference = 1 - (-(p * np.log(p)).sum(0)) / np.log(200)
    np.testing.assert_allclose(neuron_specialization(A), reference, rtol=1e-6)


def test_neuron_specialization_rejects_negative_input() -> None:
    with pytest.raises(ValueError, match="nonnegative"):
        neuron_specialization(-np.ones((3, 2)))


def test_cluster_and_bicluster_specialization() -> None:
    rows = np.repeat([0, 1, 2], [10, 20, 30])
    A = np.zeros((60, 3), dtype=np.float32)
    A[:, 0] = 1.0  # indifferent to token clusters
    A[rows == 1, 1] = 1.0  # fires only on token cluster 1
    A[rows == 2, 2] = 5.0
    spec = cluster_specialization(A, rows)
    assert spec[0] == pytest.approx(0.0, abs=1e-12)
    assert spec[1] == pytest.approx(1.0) and spec[2] == pytest.approx(1.0)
    lift = bicluster_specialization(A, rows, np.array([0, 1, 1]))
    assert lift.shape == (3, 2)
    np.testing.assert_allclose(lift[:, 0], 1.0)  # neuron cluster 0 gets each token cluster's fair share
    # Neuron cluster 1 = neurons 1 and 2: lift 60/20 = 3 on cluster 1 (neuron 1), 60/30 = 2 on cluster 2 (neuron 2).
    np.testing.assert_allclose(lift[:, 1], [0.0, 1.5, 1.0])


def _planted_association(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|noise| with loud tokens, and neurons 0-5 twice as active on one token cluster each."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 4, 2000)
    loudness = rng.gamma(2.0, 1.0, (2000, 1))  # every neuron responds to a loud token
    A = np.abs(rng.standard_normal((2000, 30))) * loudness
    for neuron in range(6):
        A[rows == neuron % 4, neuron] *= 2.0
    return A.astype(np.float32), rows, rng.permuted(A, axis=0).astype(np.float32)


def test_association_specialization_finds_planted_preferences_and_not_loudness() -> None:
    A, rows, shuffled = _planted_association(0)
    spec = association_specialization(A, rows, n_shuffles=10, random_state=0)
    # The planted neurons carry information about the token cluster; the others (only
    # loudness, shared by all neurons) and every column-shuffled neuron carry ~none.
    assert spec[:6].min() > 0.03
    assert np.abs(spec[6:]).max() < 0.005
    assert np.abs(association_specialization(shuffled, rows, n_shuffles=10, random_state=0)).max() < 0.005


def test_association_and_cluster_from_one_product_equal_the_per_labeling_definition() -> None:
    A, rows, _ = _planted_association(1)
    mi, cluster = _association_and_cluster(A, rows, n_shuffles=4, random_state=3)
    np.testing.assert_allclose(mi, association_specialization(A, rows, n_shuffles=4, random_state=3), rtol=1e-9)
    # float32 products of different widths: equal to float32 rounding
    np.testing.assert_allclose(cluster, cluster_specialization(A, rows), rtol=1e-4, atol=1e-7)

    # The definition, one labeling at a time in float64: KL(p_j || pi) of the observed labels
    # minus its mean over the same label shuffles (drawn from the same seed).
    def kl(labels: np.ndarray) -> np.ndarray:
        mass = np.stack([A[labels == r].astype(np.float64).sum(axis=0) for r in range(4)])
        overall = mass.sum(axis=1)
        return _kl_from_sizes(mass, overall / overall.sum())

    rng = np.random.default_rng(np.random.SeedSequence(3))
    shuffles = [rng.permutation(rows) for _ in range(4)]
    expected = kl(rows) - np.mean([kl(labels) for labels in shuffles], axis=0)
    np.testing.assert_allclose(mi, expected, rtol=1e-4, atol=1e-7)


def test_association_specialization_checks_its_input() -> None:
    with pytest.raises(ValueError, match="n_shuffles should be an int >= 1. Got 0 instead"):
        association_specialization(np.ones((4, 2)), [0, 1, 0, 1], n_shuffles=0)
    with pytest.raises(ValueError, match="at least 2 clusters. Got 1 instead"):
        _association_and_cluster(np.ones((4, 2)), [0, 0, 0, 0], n_shuffles=1, random_state=0)


@pytest.mark.parametrize("n, k_a, k_b", [(20000, 12, 9), (768, 6, 12), (50, 1, 3), (7, 7, 7), (1, 1, 1)])
def test_adjusted_rand_equals_scikit_learn(n: int, k_a: int, k_b: int) -> None:
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(n + k_a)
    a = rng.integers(0, k_a, n)
    related = np.where(rng.random(n) < 0.7, a % k_b, rng.integers(0, k_b, n))  # planted agreement
    for b in (related, rng.integers(0, k_b, n), a, (a * 7 - 3).astype(np.int32)):  # relabelled a: ARI 1
        assert adjusted_rand(a, b) == adjusted_rand_score(a, b)
    assert adjusted_rand(a, (a * 7 - 3).astype(np.int32)) == 1.0
    if n > 100:
        assert adjusted_rand(a, related) > 0.3 > abs(adjusted_rand(a, rng.integers(0, k_b, n)))


def test_adjusted_rand_checks_its_input() -> None:
    with pytest.raises(ValueError, match=r"labels_b should have shape \(3,\). Got \(2,\) instead"):
        adjusted_rand([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="labels_a should hold integers. Got dtype float64"):
        adjusted_rand([0.5, 1.0], [0, 1])


@pytest.mark.parametrize("labels, expected, k", [
    ([0, 2, 2, 1], [0, 2, 2, 1], 3),  # already 0..k-1: kept
    ([0, 3, 3, 5], [0, 1, 1, 2], 3),  # gaps closed, in sorted order
    ([-4, 7, -4, 0], [0, 2, 0, 1], 3),  # negative labels
    ([2, 2, 2], [0, 0, 0], 1),
])
def test_compact_relabels_to_0_k_minus_1_in_sorted_order(labels, expected, k) -> None:
    from tnb._shared import _compact

    for dtype in (np.int32, np.int64):
        compact, n = _compact(np.array(labels, dtype=dtype), len(labels), "labels")
        assert compact.tolist() == expected and n == k and compact.dtype == np.intp


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (257, 768), (40, 1603)])
def test_total_sum_of_squares_in_one_pass_equals_float64_numpy(shape) -> None:
    rng = np.random.default_rng(shape[1])
    A = (np.abs(rng.standard_normal(shape)) * rng.gamma(2.0, 1.0, (shape[0], 1))).astype(np.float32)
    sum_squares, total, n = total_sum_of_squares(A)
    exact = A.astype(np.float64)
    assert n == A.size
    assert total == pytest.approx(exact.sum(), rel=1e-12)
    assert sum_squares == pytest.approx(np.square(exact).sum(), rel=1e-12)
    # a strided view takes the chunked path: the same sums
    view = np.asfortranarray(A)
    assert total_sum_of_squares(view) == pytest.approx((sum_squares, total, n), rel=1e-12)
    small = np.arange(30, dtype=np.float32).reshape(3, 10)  # exact in float64 whatever the order
    assert total_sum_of_squares(small) == (float(np.square(np.arange(30)).sum()), 435.0, 30)
