"""Grid search of spectral biclusterings, its results and the choice of one grid point per layer.

:func:`grid_search` fits every ``(row_k, col_k)`` of a grid from **one**
normalization and **one** SVD (the fitting is :mod:`tnb.spectral`'s, which
says how the shared SVD serves every k and where labels can differ from a
stand-alone scikit-learn fit), splits each point's block-mean R^2 into
token-cluster, neuron-cluster and interaction parts (:mod:`tnb.metrics`),
tests it against a null of whole grid refits on matrices without token x
neuron association (:mod:`tnb.nulls`), refits with other seeds for stability,
and records the layer's neuron specialization (:mod:`tnb.specialization`).
:func:`mark_selected` picks one point per layer. The results are
:class:`BiclusterResult` rows, the METRICS table's columns.

Valid k: ``2 <= row_k < n_tokens`` and ``2 <= col_k < n_neurons``; why, see :mod:`tnb.spectral`.

The estimators (:class:`SpectralBiclustering`, :class:`SpectralCoclustering`),
the nulls (:func:`null_matrix`, :func:`null_statistics`, :func:`refit_null`)
and the grid's constants were defined here before the split; they are still
importable from this module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from tnb.metrics import adjusted_r2, adjusted_rand, grid_r2_parts, permutation_tests, total_sum_of_squares
from tnb.nulls import (  # null_matrix, null_statistics, refit_null are re-exported
    NULLS,
    STATISTICS,
    _draw_settings,
    _max_t_p,
    _null_statistics,
    null_matrix,
    null_statistics,
    refit_null,
)
from tnb.prepare import check_matrix
from tnb.specialization import (
    _association_and_cluster,
    noise_specialization,
    specialization_summary,
)
from tnb.spectral import (  # the estimators and fit_grid_timed are re-exported
    DEFAULT_KS,
    GRID_N_INIT,
    METHODS,
    NORMALIZATIONS,
    SpectralBiclustering,
    SpectralCoclustering,
    _check_choice,
    _check_kluger,
    _check_n_sv,
    _check_settings,
    _fit_grid,
    _grid_pairs,
    _is_int,
    _n_sv_dhillon,
    _resolve_seed,
    _Settings,
    fit_grid_timed,
)

__all__ = [
    "DEFAULT_KS",
    "GRID_N_INIT",
    "METHODS",
    "NORMALIZATIONS",
    "NULLS",
    "SELECTION_RULES",
    "BiclusterResult",
    "SpectralBiclustering",
    "SpectralCoclustering",
    "STATISTICS",
    "fit_grid_timed",
    "grid_search",
    "mark_selected",
    "null_matrix",
    "null_statistics",
    "refit_null",
]

#: Selection rules (see :func:`mark_selected`).
SELECTION_RULES = ("excess", "z", "adjusted_r2", "r2")


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BiclusterResult:
    """One grid point of :func:`grid_search`: labels, every score, its null and its stability.

    Attributes (the METRICS table's columns, :data:`tnb.schemas.METRICS`)
    ----------------------------------------------------------------------
    method : str
    row_k, col_k : int
    n_tokens, n_neurons : int
    row_labels : ndarray of shape (n_tokens,), int32
    col_labels : ndarray of shape (n_neurons,), int32
    input : str
        What the matrix is (``"abs"``: |z|, ``"signed"``: z); recorded, not used.
    r2, r2_rows, r2_cols, r2_interaction : float
        Block-mean R^2 (the study's) and its exact split
        (:func:`tnb.metrics.r2_parts_from_sums`).
    adjusted_r2 : float
    statistic : str
        What ``z``/``p`` test: ``"r2_interaction"`` (default) or ``"r2"``.
    observed : float
        That statistic on the fitted labels.
    z, p : float
        Against the refit null: ``(observed - null_mean) / null_sd`` and
        ``(1 + #{null >= observed}) / (1 + n_null)``. NaN without a null.
    p_layer : float
        ``p`` corrected for picking among the grid's points (max-T: each null
        draw's largest standardized statistic over the grid).
    null : str or None
        ``"interaction_refit"`` (default), ``"column_refit"``, or None.
    n_null : int
    null_mean, null_sd, null_q95 : float
    null_draws : ndarray of shape (n_null,)
    excess : float
        ``observed - null_mean``.
    z_shuffle : float
        Fitted vs shuffled labels (size-preserving label shuffles of the same
        matrix): large for any fit, noise included. Not a significance test.
    n_shuffles : int
    stability, stability_neurons : float
        Mean pairwise adjusted Rand index of token (neuron) labels over
        ``n_seeds`` fits with different seeds (1.0 when ``n_seeds == 1``).
    n_seeds : int
    significant : bool
        ``p_layer <= alpha`` (a permutation p of n draws is never below ``1 / (n + 1)``).
    stable : bool
        ``stability >= min_stability``.
    spec_mean, spec_median : float
        The study's neuron specialization ``1 - H/log T`` (layer-level).
    spec_mean_noise : float
        The same for Gaussian noise of this shape: its baseline.
    spec_mi : float
        Mean over neurons of :func:`tnb.specialization.association_specialization`.
    cluster_spec_mean : float
    seconds : float
    seed : int
    selected : bool
    finding : bool
        ``selected and significant and stable``.
    selection_rule : str or None
    """

    method: str
    row_k: int
    col_k: int
    n_tokens: int
    n_neurons: int
    row_labels: np.ndarray
    col_labels: np.ndarray
    input: str
    r2: float
    r2_rows: float
    r2_cols: float
    r2_interaction: float
    adjusted_r2: float
    statistic: str
    observed: float
    z: float
    p: float
    p_layer: float
    null: str | None
    n_null: int
    null_mean: float
    null_sd: float
    null_q95: float
    null_draws: np.ndarray
    excess: float
    z_shuffle: float
    n_shuffles: int
    stability: float
    stability_neurons: float
    n_seeds: int
    significant: bool
    stable: bool
    spec_mean: float
    spec_median: float
    spec_mean_noise: float
    spec_mi: float
    cluster_spec_mean: float
    seconds: float
    seed: int
    selected: bool = False
    finding: bool = False
    selection_rule: str | None = None

    def metrics_row(self) -> dict:
        """This point as a row of the METRICS table (all columns but ``code_version``)."""
        names = [
            "row_k", "col_k", "n_tokens", "n_neurons", "input", "r2", "r2_rows", "r2_cols", "r2_interaction",
            "adjusted_r2", "statistic", "observed", "z", "p", "p_layer", "null", "n_null", "null_mean", "null_sd",
            "null_q95", "excess", "z_shuffle", "n_shuffles", "stability", "stability_neurons", "n_seeds",
            "significant", "stable", "selected", "finding", "selection_rule", "spec_mean", "spec_median",
            "spec_mean_noise", "spec_mi", "seconds", "seed",
        ]
        row = {name: getattr(self, name) for name in names}
        row["null_draws"] = [float(v) for v in self.null_draws]
        return row

    def labels_columns(self, token_index=None) -> dict[str, np.ndarray]:
        """This point's labels as the columns of the LABELS table.

        Parameters
        ----------
        token_index : ndarray of shape (n_tokens,), optional
            The ``pos`` of each row; default ``0..n_tokens-1``.

        Returns
        -------
        dict of str to ndarray
            ``row_k, col_k, axis, index, label``, token rows first.
        """
        if token_index is None:
            token_index = np.arange(self.n_tokens)
        token_index = np.asarray(token_index)
        if token_index.shape != (self.n_tokens,):
            raise ValueError(f"token_index should have shape ({self.n_tokens},). Got {token_index.shape} instead.")
        n_total = self.n_tokens + self.n_neurons
        return {
            "row_k": np.full(n_total, self.row_k, dtype=np.int32),
            "col_k": np.full(n_total, self.col_k, dtype=np.int32),
            "axis": np.array(["token"] * self.n_tokens + ["neuron"] * self.n_neurons, dtype=object),
            "index": np.concatenate([token_index, np.arange(self.n_neurons)]).astype(np.int32),
            "label": np.concatenate([self.row_labels, self.col_labels]).astype(np.int32),
        }


# --------------------------------------------------------------------------
# Grid search and selection
# --------------------------------------------------------------------------


def _stability(label_sets: list[np.ndarray]) -> float:
    """Mean pairwise adjusted Rand index of a list of labelings (1.0 for one)."""
    if len(label_sets) < 2:
        return 1.0
    scores = [
        adjusted_rand(label_sets[i], label_sets[j])
        for i in range(len(label_sets))
        for j in range(i + 1, len(label_sets))
    ]
    return float(np.mean(scores))


@functools.lru_cache(maxsize=8)
def _noise_baseline(shape: tuple[int, int], signed: bool, seed: int) -> float:
    """:func:`tnb.specialization.noise_specialization` for a grid's seed, once per shape in a process.

    It depends on the shape, the sign and the seed only (0.7 s at 20,000 x 768), and
    every layer of a model has the same shape: a worker computes it once, not per layer.
    """
    return noise_specialization(shape, signed=signed, random_state=np.random.SeedSequence(seed, spawn_key=(3,)))


def grid_search(
    A,
    row_ks=DEFAULT_KS,
    col_ks=DEFAULT_KS,
    *,
    method: str = "biclustering",
    null: str | None = "interaction_refit",
    n_null: int = 99,
    statistic: str = "r2_interaction",
    n_seeds: int = 5,
    n_shuffles: int = 100,
    alpha: float = 0.05,
    min_stability: float = 0.8,
    selection: str = "excess",
    random_state: int | None = None,
    input: str = "abs",
    null_values: np.ndarray | None = None,
    n_column_shuffles: int = 25,
    normalization: str = "bistochastic",
    n_components: int = 6,
    n_best: int = 3,
    svd_method: str = "randomized",
    n_svd_vecs: int | None = None,
    n_init: int = GRID_N_INIT,
) -> list[BiclusterResult]:
    """Bicluster one matrix at every grid point, and score each against a calibrated null.

    Every grid point is fitted from one normalization and one SVD. Its
    block-mean R^2 is split into token-cluster, neuron-cluster and
    interaction parts; the interaction (token x neuron structure) is tested
    against ``n_null`` matrices that keep every token's and neuron's scale
    but lose their association (:func:`null_matrix`), each biclustered
    whole, because the fitting is part of the statistic. The grid is refitted
    with ``n_seeds`` seeds to measure the stability of its labels.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons) or PreparedMatrix
        The prepared matrix (:func:`tnb.prepare.prepare`); float32 is used as is.
    row_ks, col_ks : sequence of int, default=(6, 9, 12)
        ``2 <= row_k < n_tokens``, ``2 <= col_k < n_neurons``. Co-clustering runs the ks in both.
    method : {"biclustering", "coclustering"}, default="biclustering"
    null : {"interaction_refit", "column_refit"} or None, default="interaction_refit"
        None fits and scores the grid without any null (z, p NaN).
    n_null : int, default=99
        Null draws (grid refits); p cannot fall below ``1 / (n_null + 1)``.
    statistic : {"r2_interaction", "r2"}, default="r2_interaction"
        What ``z`` and ``p`` test.
    n_seeds : int, default=5
        Fits with different seeds behind ``stability`` (1: no extra fit).
    n_shuffles : int, default=100
        Label shuffles behind ``z_shuffle`` (0: skip).
    alpha : float, default=0.05
        ``significant`` is ``p_layer <= alpha`` (an exact level-alpha test).
    min_stability : float, default=0.8
        ``stable`` is ``stability >= min_stability``.
    selection : {"excess", "z", "adjusted_r2", "r2"}, default="excess"
        See :func:`mark_selected`.
    random_state : int or None
        None draws a seed (recorded in ``.seed``); the same seed gives bit-identical results.
    input : {"abs", "signed"}, default="abs"
        What ``A`` is, recorded in the results.
    null_values : ndarray of shape (n_null, n_points), optional
        Precomputed :func:`null_statistics` (e.g. from Dask tasks) instead of computing them here.
    n_column_shuffles : int, default=25
        Column-shuffle pool of the label-shuffle score (:func:`tnb.metrics.permutation_tests`).
    normalization, n_components, n_best, svd_method, n_svd_vecs
        Kluger's method's settings, as in :class:`SpectralBiclustering`.
    n_init : int, default=3
        k-means restarts of every fit (:data:`GRID_N_INIT`; scikit-learn's estimators use 10).

    Returns
    -------
    list of BiclusterResult
        One per grid point, row_k-major, exactly one ``selected``.

    Examples
    --------
    >>> from sklearn.datasets import make_checkerboard
    >>> from tnb.prepare import prepare
    >>> X, _, _ = make_checkerboard((120, 60), (3, 3), noise=1, random_state=0)
    >>> results = grid_search(prepare(X), (2, 3), (3,), n_components=4, n_null=19, n_seeds=2, random_state=0)
    >>> [(r.row_k, r.col_k) for r in results]
    [(2, 3), (3, 3)]
    """
    X = check_matrix(A, min_rows=3, min_cols=3)
    seed = _resolve_seed(random_state)
    _check_choice(method, "method", METHODS)
    _check_choice(statistic, "statistic", STATISTICS)
    _check_choice(selection, "selection", SELECTION_RULES)
    if null is not None:
        _check_choice(null, "null", NULLS)
    _check_choice(input, "input", ("abs", "signed"))
    for name, value, low in (("n_null", n_null, 2), ("n_seeds", n_seeds, 1), ("n_shuffles", n_shuffles, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} should be an int >= {low}. Got {value!r} instead.")
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ValueError(f"alpha should be a number in (0, 1). Got {alpha!r} instead.")
    if not (isinstance(min_stability, float | int) and -1 <= min_stability <= 1):
        raise ValueError(f"min_stability should be a number in [-1, 1]. Got {min_stability!r} instead.")
    pairs = _grid_pairs(row_ks, col_ks, method, X.shape)
    settings = _Settings(svd_method=svd_method, n_svd_vecs=n_svd_vecs, n_init=n_init, random_state=seed)
    _check_settings(settings)
    if method == "biclustering":
        _check_kluger(normalization, n_components, n_best, X.shape, svd_method)
    else:
        _check_n_sv(_n_sv_dhillon(max(k for k, _ in pairs)), X.shape, svd_method, f"k={max(k for k, _ in pairs)}")
    if null is not None and null_values is not None:
        null_values = np.asarray(null_values, dtype=np.float64)
        if null_values.shape != (n_null, len(pairs)):
            raise ValueError(
                f"null_values should have shape (n_null, n_points) = ({n_null}, {len(pairs)}). "
                f"Got {null_values.shape} instead."
            )
    fit_kwargs = {"normalization": normalization, "n_components": n_components, "n_best": n_best}

    start = time.perf_counter()
    fits, _ = _fit_grid(X, pairs, method, settings=settings, **fit_kwargs)
    scores = dict(zip(pairs, grid_r2_parts(X, [fits[pair][:2] for pair in pairs])))
    observed = np.array([scores[pair][statistic] for pair in pairs])

    # Stability: the same grid with other seeds (spawn key (2, s): disjoint from the null's streams).
    seed_fits = [fits]
    for index in range(1, n_seeds):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, index)))
        seed_fits.append(_fit_grid(X, pairs, method, settings=_draw_settings(settings, rng), **fit_kwargs)[0])

    if null is None:
        null_values = np.full((0, len(pairs)), np.nan)
    elif null_values is None:
        null_values = _null_statistics(X, pairs, range(n_null), seed, null, statistic, method, normalization,
                                       n_components, n_best, settings)
    n_draws = null_values.shape[0]
    if n_draws:
        null_mean = null_values.mean(axis=0)
        null_sd = null_values.std(axis=0, ddof=1) if n_draws > 1 else np.zeros(len(pairs))
        null_q95 = np.quantile(null_values, 0.95, axis=0)
        tolerance = 1e-12 * np.maximum(1.0, np.abs(observed))
        p_values = (1 + (null_values >= observed - tolerance).sum(axis=0)) / (1 + n_draws)
        p_layer = _max_t_p(observed, null_values)
        with np.errstate(divide="ignore", invalid="ignore"):
            z_values = np.where(null_sd > 0, (observed - null_mean) / np.where(null_sd > 0, null_sd, 1), np.nan)
    else:
        null_mean = null_sd = null_q95 = p_values = p_layer = z_values = np.full(len(pairs), np.nan)

    shuffle_z = np.full(len(pairs), np.nan)
    if n_shuffles >= 2:
        tests = permutation_tests(
            X, [fits[pair][:2] for pair in pairs], statistic="r2", n_permutations=n_shuffles,
            n_column_shuffles=min(n_column_shuffles, n_shuffles),
            random_state=np.random.SeedSequence(seed, spawn_key=(0,)), moments=total_sum_of_squares(X),
        )
        shuffle_z = np.array([t.z for t in tests])

    nonnegative = bool(X.min() >= 0)
    spec_mean, spec_median = specialization_summary(X if nonnegative else np.abs(X))
    spec_noise = _noise_baseline(X.shape, not nonnegative, seed)
    shared_seconds = time.perf_counter() - start

    results = []
    for index, pair in enumerate(pairs):
        point_start = time.perf_counter()
        row_labels, col_labels, _ = fits[pair]
        mass = X if nonnegative else np.abs(X)
        association, cluster_spec = _association_and_cluster(
            mass, row_labels, n_shuffles=5, random_state=np.random.SeedSequence(seed, spawn_key=(4, index)))
        spec_mi = float(np.nanmean(association))
        parts = scores[pair]
        stability = _stability([f[pair][0] for f in seed_fits])
        stability_neurons = _stability([f[pair][1] for f in seed_fits])
        results.append(
            BiclusterResult(
                method=method,
                row_k=pair[0],
                col_k=pair[1],
                n_tokens=X.shape[0],
                n_neurons=X.shape[1],
                row_labels=np.asarray(row_labels, dtype=np.int32),
                col_labels=np.asarray(col_labels, dtype=np.int32),
                input=input,
                r2=parts["r2"],
                r2_rows=parts["r2_rows"],
                r2_cols=parts["r2_cols"],
                r2_interaction=parts["r2_interaction"],
                adjusted_r2=adjusted_r2(parts["r2"], X.size, int(parts["n_blocks"])),
                statistic=statistic,
                observed=float(observed[index]),
                z=float(z_values[index]),
                p=float(p_values[index]),
                p_layer=float(p_layer[index]),
                null=null,
                n_null=int(n_draws),
                null_mean=float(null_mean[index]),
                null_sd=float(null_sd[index]),
                null_q95=float(null_q95[index]),
                null_draws=null_values[:, index].copy(),
                excess=float(observed[index] - null_mean[index]),
                z_shuffle=float(shuffle_z[index]),
                n_shuffles=int(n_shuffles if n_shuffles >= 2 else 0),
                stability=stability,
                stability_neurons=stability_neurons,
                n_seeds=int(n_seeds),
                significant=bool(n_draws and p_layer[index] <= alpha),
                stable=bool(stability >= min_stability),
                spec_mean=spec_mean,
                spec_median=spec_median,
                spec_mean_noise=spec_noise,
                spec_mi=spec_mi,
                cluster_spec_mean=float(np.nanmean(cluster_spec)) if not np.all(np.isnan(cluster_spec)) else float("nan"),
                seconds=time.perf_counter() - point_start + shared_seconds / len(pairs),
                seed=seed,
            )
        )
    return mark_selected(results, selection)


def mark_selected(results, rule: str = "excess") -> list[BiclusterResult]:
    """Mark the grid point a selection rule picks, and whether it is a finding.

    Parameters
    ----------
    results : sequence of BiclusterResult
        One layer's grid.
    rule : {"excess", "z", "adjusted_r2", "r2"}, default="excess"
        ``"excess"`` (default): the largest excess of the statistic over its
        null mean, charged for k: among the points whose excess is within two
        null standard deviations of the best, the one with the fewest blocks.
        The null mean already grows with k (more blocks fit noise better), so
        a finer grid wins only by beating its own, larger null. ``"z"`` picks
        the largest Z (it follows whichever point has the smallest null
        spread: not recommended). ``"r2"`` is the study's rule: it always
        picks the largest grid. NaN scores rank last; ties go to fewer
        blocks, then fewer token clusters.

    Returns
    -------
    list of BiclusterResult
        Copies with ``selected``, ``finding`` and ``selection_rule`` set; exactly one selected.
    """
    _check_choice(rule, "rule", SELECTION_RULES)
    results = list(results)
    if not results:
        raise ValueError("results should hold at least one grid point. Got an empty sequence.")

    def score(result) -> float:
        value = getattr(result, rule)
        return -math.inf if value is None or math.isnan(value) else float(value)

    def simpler(i: int) -> tuple[int, int]:
        return (results[i].row_k * results[i].col_k, results[i].row_k)

    order = range(len(results))
    best = max(order, key=lambda i: (score(results[i]), tuple(-v for v in simpler(i))))
    if rule == "excess" and math.isfinite(score(results[best])):
        def margin(i: int) -> float:
            sds = [results[i].null_sd, results[best].null_sd]
            return 2.0 * math.sqrt(sum(sd * sd for sd in sds if math.isfinite(sd)))

        close = [i for i in order if score(results[i]) >= score(results[best]) - margin(i)]
        best = min(close, key=simpler)
    return [
        dataclasses.replace(
            result, selected=(i == best), finding=bool(i == best and result.significant and result.stable),
            selection_rule=rule,
        )
        for i, result in enumerate(results)
    ]
