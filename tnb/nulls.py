"""Nulls of the grid search: matrices without token x neuron association, refitted whole, and max-T p.

A statistic of a fitted grid point (its block-mean R^2, or the interaction
part of it) is large on any matrix, noise included, because the labels were
fitted to it. So it is tested against the same statistic on null matrices
(:func:`null_matrix`) that keep every token's and neuron's scale but lose
their association, each biclustered whole with the grid's settings
(:func:`null_statistics`). Draw ``d`` depends only on the grid's seed and
``d``, so a null can be computed in chunks (Dask tasks) and gives the same
values as one call. :func:`_max_t_p` corrects a grid point's p for picking
among the grid's points.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tnb.metrics import _grid_r2_parts
from tnb.prepare import check_matrix
from tnb.shuffle import shuffled_columns, transpose_scaled
from tnb.spectral import (
    DEFAULT_KS,
    GRID_N_INIT,
    METHODS,
    _check_choice,
    _check_settings,
    _fit_grid,
    _grid_pairs,
    _is_int,
    _resolve_seed,
    _Settings,
)

__all__ = ["NULLS", "STATISTICS", "null_matrix", "null_statistics", "refit_null"]

#: Nulls the statistic is tested against (each draw is a whole grid refit); see :func:`null_matrix`.
NULLS = ("interaction_refit", "column_refit")
#: What z and p test: token x neuron structure (default), or the study's whole block-mean R^2.
STATISTICS = ("r2_interaction", "r2")


def null_matrix(X: np.ndarray, rng: np.random.Generator, null: str = "interaction_refit") -> np.ndarray:
    """One matrix that keeps X's token and neuron scales and loses their association.

    ``"interaction_refit"`` (the default null). For a nonnegative matrix (|z|)
    it is the independence model: ``E_ij = r_i c_j / g`` (row mean x column
    mean / grand mean, the structure bistochastic normalization removes),
    the ratios ``X_ij / E_ij`` shuffled within each column, and multiplied
    back: ``X0_ij = E_ij Q_{pi_j(i), j}``. A loud token stays loud (its row
    scale is kept, so are its heavier tails), every neuron keeps its scale,
    and which tokens a neuron prefers is redrawn at random. For a signed
    matrix the same is done additively, with per-row and per-column scales
    of the residuals: ``X0 = mu_i + nu_j - g + s_i t_j E_{pi_j(i), j}``, the
    shuffled residuals re-centred per row.

    ``"column_refit"``: every column shuffled on its own (the earlier refit
    null). It also destroys each token's loudness, so loud-token structure
    looks significant against it.

    Parameters
    ----------
    X : ndarray of shape (n_tokens, n_neurons), float32
    rng : numpy Generator
    null : {"interaction_refit", "column_refit"}

    Returns
    -------
    ndarray of shape (n_tokens, n_neurons), float32
    """
    return _draw_null(_null_base(X, null), rng)


@dataclass(frozen=True)
class _NullBase:
    """What every draw of one matrix's null shares, computed once (a null of 99 draws reuses it 99 times).

    ``columns`` is the matrix whose columns are shuffled, transposed (every column
    contiguous); the rest undoes the scaling after the shuffle.
    """

    null: str
    columns: np.ndarray  # (n_neurons, n_tokens) float32
    row_scale: np.ndarray | None = None  # (n_tokens,) float32
    col_scale: np.ndarray | None = None  # (n_neurons,) float32, signed only
    effects: np.ndarray | None = None  # (n_tokens, n_neurons) float32, signed only


def _null_base(X: np.ndarray, null: str) -> _NullBase:
    if null == "column_refit":
        return _NullBase(null, np.ascontiguousarray(X.T))
    if null != "interaction_refit":
        raise ValueError(f"null should be one of {NULLS}. Got {null!r} instead.")
    row_mean = X.mean(axis=1, dtype=np.float64)
    col_mean = X.mean(axis=0, dtype=np.float64)
    grand = float(row_mean.mean())
    if X.min() >= 0:
        if grand <= 0:
            return _NullBase("constant", X)
        # X0_ij = E_ij Q_{pi_j(i), j} with Q = X / E and E_ij = r_i c_j / g: the column's
        # c_j / g cancels, so X0_ij = r_i * (X / r)_{pi_j(i), j} (rows with r_i = 0 stay 0).
        scale = row_mean.astype(np.float32)
        inverse = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
        return _NullBase(null, np.ascontiguousarray((X * inverse[:, np.newaxis]).T), row_scale=scale)
    effects = (row_mean[:, np.newaxis] + (col_mean - grand)[np.newaxis, :]).astype(np.float32)
    residual = X - effects
    row_scale = np.sqrt(np.mean(np.square(residual, dtype=np.float64), axis=1))
    row_scale = np.where(row_scale > 0, row_scale, 1.0).astype(np.float32)
    residual /= row_scale[:, np.newaxis]
    col_scale = np.sqrt(np.mean(np.square(residual, dtype=np.float64), axis=0))
    col_scale = np.where(col_scale > 0, col_scale, 1.0).astype(np.float32)
    residual /= col_scale
    return _NullBase("signed", np.ascontiguousarray(residual.T), row_scale, col_scale, effects)


class _Workspace:
    """Two matrix-sized buffers that successive draws of one null reuse (no fresh pages per draw)."""

    def __init__(self) -> None:
        self.shuffled: np.ndarray | None = None
        self.matrix: np.ndarray | None = None

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buffer = getattr(self, name)
        if buffer is None or buffer.shape != shape:
            buffer = np.empty(shape, dtype=np.float32)
            setattr(self, name, buffer)
        return buffer


def _draw_null(base: _NullBase, rng: np.random.Generator, workspace: _Workspace | None = None) -> np.ndarray:
    """One draw of the null from its shared part (the numbers of :func:`null_matrix`).

    With a ``workspace`` the draw is written into its buffers: it stays valid
    until the next draw with the same workspace.
    """
    if base.null == "constant":
        return base.columns.copy()
    reuse = workspace is not None and base.columns.dtype == np.float32
    out = workspace.take("shuffled", base.columns.shape) if reuse and workspace is not None else None
    shuffled = shuffled_columns(base.columns, rng, out=out)
    if base.null == "column_refit":
        return np.ascontiguousarray(shuffled.T)
    assert base.row_scale is not None, "interaction nulls keep the row scale"
    if base.null == "interaction_refit":
        matrix = workspace.take("matrix", shuffled.shape[::-1]) if reuse and workspace is not None else None
        return transpose_scaled(shuffled, base.row_scale, out=matrix)
    assert base.col_scale is not None and base.effects is not None, "the signed null keeps its scales and effects"
    residual = np.ascontiguousarray(shuffled.T)
    # Re-centre every row: X's residuals sum to 0 along each row, and shuffled ones must too,
    # or the null draws get extra row variance (measured: 4 of 12 pure-noise matrices
    # "significant" without this, 1 of 12 with it).
    residual -= residual.mean(axis=1, keepdims=True)
    residual *= base.col_scale
    residual *= base.row_scale[:, np.newaxis]
    residual += base.effects
    return residual


def _draw_rng(seed: int, draw: int) -> np.random.Generator:
    # Spawn key (1, draw): each draw's stream depends on the seed and its index only,
    # so any split of the draws into tasks gives the same numbers.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, draw)))


def _draw_settings(settings: _Settings, rng: np.random.Generator) -> _Settings:
    return dataclasses.replace(settings, random_state=int(rng.integers(2**31 - 1)))


def null_statistics(
    A,
    row_ks=DEFAULT_KS,
    col_ks=DEFAULT_KS,
    *,
    draws,
    random_state: int = 0,
    null: str = "interaction_refit",
    statistic: str = "r2_interaction",
    method: str = "biclustering",
    normalization: str = "bistochastic",
    n_components: int = 6,
    n_best: int = 3,
    svd_method: str = "randomized",
    n_svd_vecs: int | None = None,
    n_init: int = GRID_N_INIT,
) -> np.ndarray:
    """The statistic of every grid point on null draws ``draws`` (each a whole grid refit).

    Draw ``d`` depends only on ``random_state`` and ``d``, so a null of
    ``n_null`` draws can be computed in any number of chunks (Dask tasks) and
    gives the same values as one call with ``draws=range(n_null)``.

    Parameters
    ----------
    A : ndarray of shape (n_tokens, n_neurons) or PreparedMatrix
    row_ks, col_ks : sequence of int
    draws : sequence of int
        Indices of the draws (>= 0).
    random_state : int
        The grid's seed (as in :func:`tnb.bicluster.grid_search`).
    null, statistic, method, normalization, n_components, n_best, svd_method, n_svd_vecs, n_init
        As in :func:`tnb.bicluster.grid_search`.

    Returns
    -------
    ndarray of shape (len(draws), n_points)
        Grid points in :func:`tnb.bicluster.grid_search`'s order.
    """
    X = check_matrix(A, min_rows=3, min_cols=3)
    seed = _resolve_seed(random_state)
    _check_choice(null, "null", NULLS)
    _check_choice(statistic, "statistic", STATISTICS)
    _check_choice(method, "method", METHODS)
    pairs = _grid_pairs(row_ks, col_ks, method, X.shape)
    draws = [int(d) for d in draws]
    if any(d < 0 for d in draws):
        raise ValueError(f"draws should be ints >= 0. Got {draws!r} instead.")
    settings = _Settings(svd_method=svd_method, n_svd_vecs=n_svd_vecs, n_init=n_init, random_state=seed)
    _check_settings(settings)
    return _null_statistics(X, pairs, draws, seed, null, statistic, method, normalization, n_components, n_best,
                            settings)


def _null_statistics(X, pairs, draws, seed, null, statistic, method, normalization, n_components, n_best, settings):
    values = np.empty((len(draws), len(pairs)))
    base = _null_base(X, null)  # what every draw shares, once per call (a Dask task's chunk of draws)
    workspace = _Workspace()
    for row, draw in enumerate(draws):  # one whole grid refit per draw
        rng = _draw_rng(seed, draw)
        shuffled = _draw_null(base, rng, workspace)
        fits, _ = _fit_grid(
            shuffled, pairs, method, normalization=normalization, n_components=n_components, n_best=n_best,
            settings=_draw_settings(settings, rng),
        )
        scores = _grid_r2_parts(shuffled, [fits[pair][:2] for pair in pairs])  # finite float32 by construction
        values[row] = [score[statistic] for score in scores]
    return values


def _max_t_p(observed: np.ndarray, null_values: np.ndarray) -> np.ndarray:
    """Single-step max-T adjusted p of every grid point (Westfall & Young).

    Every grid point's values are standardized by the mean and sd of the
    observed value *and* the null draws together, so the observed matrix and
    the draws are treated alike and the test stays exact under
    exchangeability. Standardizing by the draws alone (their own in-sample
    mean and sd) shrinks the draws' extremes but not the observed one's: on
    simulated exchangeable statistics that rejected 10% at alpha 0.05 with 19
    draws, 8% with 39 and 6% with 99 (pooled: 5%, 5%, 5%).
    """
    pooled = np.vstack([observed[np.newaxis, :], null_values])
    mean = pooled.mean(axis=0)
    sd = pooled.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        standard = np.where(sd > 0, (pooled - mean) / np.where(sd > 0, sd, 1), 0.0)
    z_obs, max_null = standard[0], standard[1:].max(axis=1)
    tolerance = 1e-9
    exceed = (max_null[np.newaxis, :] >= z_obs[:, np.newaxis] - tolerance).sum(axis=1)
    return (1 + exceed) / (1 + null_values.shape[0])


def refit_null(A, row_ks=DEFAULT_KS, col_ks=DEFAULT_KS, *, n_refits: int = 99, random_state: int = 0,
               null: str = "interaction_refit", **kwargs) -> dict[tuple[int, int], np.ndarray]:
    """The null statistic of every grid point as a dict (a thin form of :func:`null_statistics`).

    Returns
    -------
    dict of (row_k, col_k) to ndarray of shape (n_refits,)
    """
    if not _is_int(n_refits) or n_refits < 2:
        raise ValueError(f"n_refits should be an int >= 2. Got {n_refits!r} instead.")
    X = check_matrix(A, min_rows=3, min_cols=3)
    pairs = _grid_pairs(row_ks, col_ks, kwargs.get("method", "biclustering"), X.shape)
    values = null_statistics(X, row_ks, col_ks, draws=range(n_refits), random_state=random_state, null=null, **kwargs)
    return {pair: values[:, index] for index, pair in enumerate(pairs)}
