"""Benchmark: the study's biclustering + scoring vs scikit-learn per grid point vs tnb's engine.

One run, side by side, on a planted float32 |z| matrix per shape:

(a) the study's approach: a scikit-learn SpectralBiclustering fit per grid
    point, R^2 by a pure-Python double loop over every element (block means,
    then the reconstruction), and a Z-score from 10 shuffles that reruns the
    loop per shuffle. One grid point is fitted and multiplied by 9; the loop
    is timed on a subset of rows and extrapolated by element count when the
    full loops would take more than --loop-budget seconds (the output says so).
(b) a scikit-learn fit per grid point (all of them) + tnb's vectorized metrics
    (closed-form R^2, adjusted R^2, Z with --n-permutations label shuffles).
(c) tnb.bicluster.grid_search: the full grid from one SVD, same metrics.

The headline (printed first): one full grid fit without a null -- labels and
R^2 / adjusted R^2 of every point -- by tnb (``fit_grid_timed``, with its time
split: normalization, SVD, piecewise fits, projections, scoring) against
scikit-learn's SpectralBiclustering fitted once per grid point and scored the
same way; both single-threaded (OpenMP and BLAS), repeats interleaved,
min/median/max and the load average before and after. scikit-learn is timed
on fewer repeats (--sklearn-repeats) because one round takes tens of seconds.

Run:  python bench/bicluster.py                 (20,000 x 768 and 20,000 x 1,600)
      python bench/bicluster.py --headline-only --repeats 5 --sklearn-repeats 2
      python bench/bicluster.py --shapes 2000x300 --quick
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import numpy as np
import sklearn.cluster
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from tnb.bicluster import grid_search
from tnb.metrics import (
    adjusted_r2,
    block_r2,
    grid_r2_parts,
    permutation_test,
)
from tnb.prepare import prepare
from tnb.spectral import _Settings, fit_grid_timed


def planted_matrix(n_tokens: int, n_neurons: int, k: int = 6, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """|z| of a planted k x k checkerboard with Gaussian noise, float32."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, k, n_tokens)
    cols = rng.integers(0, k, n_neurons)
    means = rng.uniform(0.5, 2.5, (k, k))
    raw = means[rows][:, cols] + noise * rng.standard_normal((n_tokens, n_neurons), dtype=np.float32)
    return prepare(raw).matrix


def loop_r2(values: list[list[float]], row_labels: list[int], col_labels: list[int]) -> float:
    """The study's R^2: pure-Python double loops (block sums, then reconstruction residuals)."""
    sums: dict[tuple[int, int], float] = {}
    counts: dict[tuple[int, int], int] = {}
    total = 0.0
    n_elements = 0
    for i, row in enumerate(values):
        row_label = row_labels[i]
        for j, value in enumerate(row):
            key = (row_label, col_labels[j])
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
            total += value
            n_elements += 1
    mean = total / n_elements
    rss = tss = 0.0
    for i, row in enumerate(values):
        row_label = row_labels[i]
        for j, value in enumerate(row):
            key = (row_label, col_labels[j])
            reconstructed = sums[key] / counts[key]
            rss += (value - reconstructed) ** 2
            tss += (value - mean) ** 2
    return 1.0 - rss / tss


def loop_z(values, row_labels, col_labels, n_shuffles: int = 10, seed: int = 0) -> float:
    """The study's Z: rerun the loop on shuffled labels."""
    rng = random.Random(seed)
    observed = loop_r2(values, row_labels, col_labels)
    null = []
    for _ in range(n_shuffles):
        rows, cols = list(row_labels), list(col_labels)
        rng.shuffle(rows)
        rng.shuffle(cols)
        null.append(loop_r2(values, rows, cols))
    null_mean = sum(null) / n_shuffles
    null_sd = (sum((x - null_mean) ** 2 for x in null) / (n_shuffles - 1)) ** 0.5
    return (observed - null_mean) / null_sd


def study_approach(A, grid, seed, loop_budget, loop_subset_elements):
    """(a): one grid point timed, times the grid size; the loop possibly extrapolated."""
    row_k, col_k = grid[len(grid) // 2]
    start = time.perf_counter()
    model = sklearn.cluster.SpectralBiclustering((row_k, col_k), random_state=seed).fit(A)
    fit_seconds = time.perf_counter() - start

    n_rows = max(1, min(A.shape[0], loop_subset_elements // A.shape[1]))
    subset = A[:n_rows]
    rows = model.row_labels_[:n_rows].tolist()
    cols = model.column_labels_.tolist()
    values = subset.astype(np.float64).tolist()
    start = time.perf_counter()
    subset_r2 = loop_r2(values, rows, cols)
    loop_seconds_subset = time.perf_counter() - start
    per_loop_full = loop_seconds_subset * A.size / subset.size
    loops_per_point = 11  # observed R^2 + 10 shuffles
    extrapolated = per_loop_full * loops_per_point > loop_budget
    if extrapolated:
        loop_seconds = per_loop_full * loops_per_point
        note = (
            f"loop timed on {n_rows} x {A.shape[1]} ({subset.size:,} elements, {loop_seconds_subset:.2f} s) and "
            f"extrapolated x{A.size / subset.size:.1f} to the full matrix, x{loops_per_point} loops (R^2 + 10 shuffles)"
        )
    else:
        values_full = A.astype(np.float64).tolist()
        start = time.perf_counter()
        loop_z(values_full, model.row_labels_.tolist(), cols, seed=seed)
        loop_seconds = time.perf_counter() - start
        note = "loop run in full"
    # The loop's R^2 on the subset, against the closed form on the same subset and labels.
    closed = block_r2(subset, np.asarray(rows), np.asarray(cols))
    per_point = fit_seconds + loop_seconds
    return {
        "seconds": per_point * len(grid),
        "note": f"one fit ({row_k}x{col_k}, {fit_seconds:.1f} s) x {len(grid)} grid points; {note}",
        "r2_diff": abs(subset_r2 - closed),
    }


def sklearn_per_point(A, grid, seed, n_permutations):
    """(b): a scikit-learn fit per grid point + tnb's vectorized metrics."""
    start = time.perf_counter()
    out = {}
    for row_k, col_k in grid:
        model = sklearn.cluster.SpectralBiclustering((row_k, col_k), random_state=seed).fit(A)
        r2 = block_r2(A, model.row_labels_, model.column_labels_)
        adjusted_r2(r2, A.size, row_k * col_k)
        test = permutation_test(A, model.row_labels_, model.column_labels_, n_permutations=n_permutations, random_state=seed)
        out[(row_k, col_k)] = (model.row_labels_, model.column_labels_, r2, test.z)
    return time.perf_counter() - start, out


def _score(A, fits):
    """R^2 and adjusted R^2 of every grid point (the score parts of a fit, no null), as grid_search scores them:
    one pass over the matrix for all points (``grid_r2_parts``). scikit-learn's fits are scored the same way."""
    pairs = list(fits)
    parts = grid_r2_parts(A, [fits[pair] for pair in pairs])
    return {pair: (p["r2"], adjusted_r2(p["r2"], A.size, p["n_blocks"])) for pair, p in zip(pairs, parts)}


def tnb_grid_fit(A, grid, seed):
    """One tnb grid fit + scoring; returns (seconds, time split, labels)."""
    start = time.perf_counter()
    fits, timings = fit_grid_timed(
        A, grid, "biclustering", normalization="bistochastic", n_components=6, n_best=3,
        settings=_Settings(random_state=seed),
    )
    labels = {pair: fit[:2] for pair, fit in fits.items()}
    scoring_start = time.perf_counter()
    _score(A, labels)
    timings["scoring"] = time.perf_counter() - scoring_start
    return time.perf_counter() - start, timings, labels


def sklearn_grid_fit(A, grid, seed):
    """scikit-learn's SpectralBiclustering once per grid point + the same scoring."""
    start = time.perf_counter()
    labels = {}
    for row_k, col_k in grid:
        model = sklearn.cluster.SpectralBiclustering((row_k, col_k), random_state=seed).fit(A)
        labels[(row_k, col_k)] = (model.row_labels_, model.column_labels_)
    _score(A, labels)
    return time.perf_counter() - start, labels


def _spread(values) -> str:
    return f"min {min(values):.2f} / median {statistics.median(values):.2f} / max {max(values):.2f} s (n={len(values)})"


def headline(A, grid, seed, repeats, sklearn_repeats) -> dict:
    """tnb's full grid fit vs scikit-learn's per-point fits, single-threaded, interleaved repeats."""
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        tnb_grid_fit(A[:300, :100], [(2, 2)], seed)  # compiles (or loads the cached) numba kernels
        warmup = time.perf_counter() - start
        load_before = os.getloadavg()
        tnb_times, sk_times, splits = [], [], []
        for repeat in range(repeats):
            seconds, timings, labels = tnb_grid_fit(A, grid, seed)
            tnb_times.append(seconds)
            splits.append(timings)
            if repeat < sklearn_repeats:
                seconds, sk_labels = sklearn_grid_fit(A, grid, seed)
                sk_times.append(seconds)
        load_after = os.getloadavg()
    same = sum(
        adjusted_rand_score(labels[pair][0], sk_labels[pair][0]) == 1
        and adjusted_rand_score(labels[pair][1], sk_labels[pair][1]) == 1
        for pair in grid
    )
    split = {name: statistics.median(t[name] for t in splits) for name in splits[0]}
    return {
        "tnb": tnb_times, "sklearn": sk_times, "split": split, "warmup": warmup, "same": same,
        "load": (load_before[0], load_after[0]),
    }


def print_headline(shape, result, n_points) -> None:
    tnb_times, sk_times = result["tnb"], result["sklearn"]
    print(f"tnb full grid fit (labels + R^2, adjusted R^2; no null): {_spread(tnb_times)}")
    print(f"scikit-learn SpectralBiclustering x {n_points} + same scoring: {_spread(sk_times)}")
    print(
        f"ratio of medians: {statistics.median(sk_times) / statistics.median(tnb_times):.1f}x "
        f"(of minima: {min(sk_times) / min(tnb_times):.1f}x); labels equal to scikit-learn's (ARI 1) at "
        f"{result['same']}/{n_points} points"
    )
    split = result["split"]
    parts = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in split.items())
    print(f"tnb time split (median of repeats): {parts}")
    print(f"numba kernels compiled/loaded once per process: {result['warmup']:.2f} s (not in the times above)")
    before, after = result["load"]
    print(f"1-min load average before / after: {before:.2f} / {after:.2f} (os.cpu_count()={os.cpu_count()})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="20000x768,20000x1600", help="comma-separated NxM shapes")
    parser.add_argument("--ks", default="6,9,12", help="the grid's row and column ks")
    parser.add_argument("--n-permutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop-budget", type=float, default=120.0, help="seconds the full Python loops may take")
    parser.add_argument("--loop-subset-elements", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of tnb's headline grid fit")
    parser.add_argument("--sklearn-repeats", type=int, default=2, help="repeats of scikit-learn's (interleaved)")
    parser.add_argument("--headline-only", action="store_true", help="skip (a)-(c)")
    args = parser.parse_args(argv)
    ks = tuple(int(k) for k in args.ks.split(","))
    grid = [(row_k, col_k) for row_k in ks for col_k in ks]

    # tnb runs k-means single-threaded (bit-identical results); scikit-learn gets the same OpenMP
    # setting, which is also faster for it on a shared 2-core machine. BLAS threads are left as they are.
    print("headline: one OpenMP and one BLAS thread for both; (a)-(c): OpenMP (k-means) 1 thread, BLAS default")
    rows = []
    for shape in args.shapes.split(","):
        n_tokens, n_neurons = (int(x) for x in shape.lower().split("x"))
        A = planted_matrix(n_tokens, n_neurons, seed=args.seed)
        print(f"\n== {n_tokens:,} x {n_neurons:,} float32, grid {ks} x {ks}: headline, one thread ==")
        result = headline(A, grid, args.seed, args.repeats, min(args.sklearn_repeats, args.repeats))
        print_headline(shape, result, len(grid))
        if args.headline_only:
            continue
        print(f"\n== {n_tokens:,} x {n_neurons:,} float32, grid {ks} x {ks}, {args.n_permutations} permutations ==")

        start = time.perf_counter()
        results = grid_search(A, ks, ks, n_permutations=args.n_permutations, random_state=args.seed)
        c_seconds = time.perf_counter() - start
        print(f"(c) tnb grid_search: {c_seconds:.1f} s")

        b_seconds, b_out = sklearn_per_point(A, grid, args.seed, args.n_permutations)
        print(f"(b) scikit-learn per point + vectorized metrics: {b_seconds:.1f} s")

        study = study_approach(A, grid, args.seed, args.loop_budget, args.loop_subset_elements)
        print(f"(a) study approach: {study['seconds']:.0f} s ({study['note']})")

        same_labels = []
        for result in results:
            b_rows, b_cols, b_r2, _ = b_out[(result.row_k, result.col_k)]
            if adjusted_rand_score(b_rows, result.row_labels) == 1 and adjusted_rand_score(b_cols, result.col_labels) == 1:
                same_labels.append(abs(b_r2 - result.r2))
        agreement = (
            f"{len(same_labels)}/{len(grid)} points same labels (ARI 1), max |dR2| {max(same_labels):.1e}"
            if same_labels
            else f"0/{len(grid)} points with the same labels"
        )
        rows.append((shape, "(a) study: sklearn + Python loops, 10-shuffle Z", study["seconds"], c_seconds,
                     f"loop vs closed form on subset |dR2| {study['r2_diff']:.1e}"))
        rows.append((shape, f"(b) sklearn per point + vectorized metrics, {args.n_permutations}-perm Z", b_seconds,
                     c_seconds, agreement))
        rows.append((shape, f"(c) tnb grid_search, {args.n_permutations}-perm Z", c_seconds, c_seconds, "-"))

    if not rows:
        return
    print("\n| shape | approach | seconds (whole grid) | x slower than (c) | R^2 agreement |")
    print("|---|---|---:|---:|---|")
    for shape, name, seconds, c_seconds, agreement in rows:
        print(f"| {shape} | {name} | {seconds:,.1f} | {seconds / c_seconds:,.1f} | {agreement} |")


if __name__ == "__main__":
    with threadpool_limits(limits=1, user_api="openmp"):
        main()
