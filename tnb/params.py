"""The bicluster stage's parameters: one definition, its defaults and its validation.

Light on purpose (no numpy, no pyarrow): the command line reads its choices and defaults
from here, and ``tnb --help`` must start fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tnb import __version__
from tnb.errors import TnbError

__all__ = ["INPUTS", "METHODS", "NULLS", "SELECTION_RULES", "STATISTICS", "BiclusterParams", "StageError"]

METHODS = ("biclustering", "coclustering")
STATISTICS = ("r2_interaction", "r2")
SELECTION_RULES = ("excess", "z", "adjusted_r2", "r2")
NULLS = ("interaction_refit", "column_refit")
INPUTS = ("abs", "signed")


class StageError(TnbError):
    """Bad bicluster-stage parameters, or a layer too small for them."""


@dataclass(frozen=True)
class BiclusterParams:
    """Everything that decides a bicluster partition's contents (its config, with the code version)."""

    method: str = "biclustering"  # Kluger's spectral biclustering (the study's) or "coclustering"
    row_ks: tuple[int, ...] = (6, 9, 12)  # token-cluster counts of the grid
    col_ks: tuple[int, ...] = (6, 9, 12)  # neuron-cluster counts of the grid
    input: str = "abs"  # matrix clustered: the study's |z| per neuron, or "signed" z
    null: str = "interaction_refit"  # null draws keep token and neuron scales, lose their association
    n_null: int = 99  # null draws (each a whole grid refit); p >= 1 / (n_null + 1)
    statistic: str = "r2_interaction"  # what z and p test (or the study's whole "r2")
    n_seeds: int = 5  # grid fits with different seeds behind `stability`
    n_shuffles: int = 100  # label shuffles behind z_shuffle ("fitted vs shuffled labels"), 0 skips
    selection: str = "excess"  # rule marking each layer's selected grid point
    alpha: float = 0.05  # significant: p_layer < alpha
    min_stability: float = 0.8  # stable: stability (mean pairwise ARI of token labels) >= this
    seed: int = 0  # random_state of SVD, k-means, null draws and shuffles
    drop_first: int = 0  # leading positions of every sequence left out of the matrix
    extra: Mapping[str, Any] = field(default_factory=dict)  # more grid_search keyword arguments

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_ks", tuple(int(k) for k in self.row_ks))
        object.__setattr__(self, "col_ks", tuple(int(k) for k in self.col_ks))
        object.__setattr__(self, "extra", dict(self.extra))
        for name, value, choices in (
            ("method", self.method, METHODS),
            ("statistic", self.statistic, STATISTICS),
            ("selection", self.selection, SELECTION_RULES),
            ("null", self.null, NULLS),
            ("input", self.input, INPUTS),
        ):
            if value not in choices:
                raise StageError(f"{name} should be one of {', '.join(choices)}. Got {value!r} instead.")
        if not self.row_ks or not self.col_ks or min(self.row_ks + self.col_ks) < 2:
            raise StageError(f"every k should be >= 2. Got row_ks={self.row_ks}, col_ks={self.col_ks} instead.")
        for name, low in (("n_null", 2), ("n_seeds", 1), ("n_shuffles", 0), ("seed", 0), ("drop_first", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise StageError(f"{name} should be an int >= {low}. Got {value!r} instead.")
        if not 0 < self.alpha < 1:
            raise StageError(f"alpha should be in (0, 1). Got {self.alpha!r} instead.")
        if not -1 <= self.min_stability <= 1:
            raise StageError(f"min_stability should be in [-1, 1]. Got {self.min_stability!r} instead.")

    def grid_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`tnb.bicluster.grid_search` (besides the matrix and the grid)."""
        return {
            "method": self.method, "null": self.null, "n_null": self.n_null, "statistic": self.statistic,
            "n_seeds": self.n_seeds, "n_shuffles": self.n_shuffles, "alpha": self.alpha,
            "min_stability": self.min_stability, "selection": self.selection, "random_state": self.seed,
            "input": self.input, **self.extra,
        }

    def null_chunks(self, chunk_size: int) -> list[list[int]]:
        """The null's draws split into chunks of at most ``chunk_size`` (one Dask task each)."""
        if chunk_size < 1:
            raise StageError(f"chunk_size should be >= 1. Got {chunk_size} instead.")
        draws = list(range(self.n_null))
        return [draws[start : start + chunk_size] for start in range(0, len(draws), chunk_size)]

    def config(self) -> dict[str, Any]:
        """The partition config: every parameter plus the code version (JSON-ready)."""
        config = asdict(self)
        config["row_ks"] = list(self.row_ks)
        config["col_ks"] = list(self.col_ks)
        config["extra"] = dict(sorted(self.extra.items()))
        config["code_version"] = __version__
        return config

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BiclusterParams:
        """Inverse of :meth:`config` (the code version is ignored); an unknown key is an error."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__) - {"code_version"})
        if unknown:
            raise StageError(
                f"unknown bicluster parameter(s) {unknown}; known: {', '.join(cls.__dataclass_fields__)}"
            )
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        if "row_ks" in known:
            known["row_ks"] = tuple(known["row_ks"])
        if "col_ks" in known:
            known["col_ks"] = tuple(known["col_ks"])
        return cls(**known)


