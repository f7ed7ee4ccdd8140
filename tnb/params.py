"""The study's parameters: one definition, with their defaults, help texts and validation.

A study is one :class:`Study`: where its tokens come from (:class:`CorpusParams`), which
models and activation sites it reads (:class:`ExtractParams`), how each layer is
biclustered and tested against its null (:class:`BiclusterParams`), and where the
bicluster tasks run (:class:`ComputeParams`). Everything reads this one definition:

- the command line generates its options from these fields (:func:`tnb.cli.add_params`):
  option ``--max-tokens`` is field ``max_tokens``, its default and help text are the
  field's, and a test checks that every field has its option and nothing else does;
- the Prefect flow takes a whole :class:`Study` (``flows.pipeline.pipeline_flow(study)``),
  which Prefect validates with pydantic, and ``prefect.yaml`` passes one;
- manifests store :meth:`BiclusterParams.config` (the bicluster section plus the code version).

Validation happens once, in each section's ``__post_init__``, with messages that name the
bad value (``n_null should be an int >= 2. Got 1 instead.``). :meth:`Study.from_mapping`
validates nested mappings (a deployment's parameters, a YAML file) through pydantic,
which coerces types and refuses unknown keys.

Light on purpose (standard-library dataclasses; no numpy, no pydantic at import): ``tnb --help``
reads the fields, and must start fast. pydantic validates these dataclasses as they are
(``__pydantic_config__`` forbids unknown keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tnb import __version__
from tnb.errors import TnbError
from tnb.models import SITES

__all__ = [
    "DTYPES",
    "INPUTS",
    "METHODS",
    "NULLS",
    "SELECTION_RULES",
    "SITES",
    "STAGES",
    "STATISTICS",
    "BiclusterParams",
    "ComputeParams",
    "CorpusParams",
    "ExtractParams",
    "StageError",
    "Study",
]

METHODS = ("biclustering", "coclustering")
STATISTICS = ("r2_interaction", "r2")
SELECTION_RULES = ("excess", "z", "adjusted_r2", "r2")
NULLS = ("interaction_refit", "column_refit")
INPUTS = ("abs", "signed")
DTYPES = ("float16", "float32")
STAGES = ("extract", "bicluster", "analyze")

# pydantic reads this attribute of a standard-library dataclass: a mapping with an unknown key is an error
_FORBID_EXTRA = {"extra": "forbid"}


class StageError(TnbError):
    """Bad bicluster-stage parameters, or a layer too small for them."""


def _param(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A dataclass field with its command-line help (``cli``: ``option``, ``aliases``, ``choices``, ``shown``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple: dataclass defaults must be immutable")
    return field(default=default, metadata={"help": help, **cli})


def _check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise TnbError(f"{name} should be an int >= {low}{' or None' if optional else ''}. Got {value!r} instead.")


def _check_choices(name: str, values: tuple[str, ...], choices: tuple[str, ...], allow_empty: bool = False) -> None:
    bad = [value for value in values if value not in choices]
    if bad or (not values and not allow_empty):
        raise TnbError(f"{name} should be among {', '.join(choices)}. Got {list(values)} instead.")


@dataclass(frozen=True)
class CorpusParams:
    """Where the token stream comes from, and how much of it (ingest + tokenize)."""

    __pydantic_config__ = _FORBID_EXTRA

    source: str | None = _param(
        None, "local .parquet/.jsonl/.txt file or directory, or a hub dataset id", option="--corpus",
        shown="the bundled Wikipedia sample",
    )
    config: str | None = _param(None, "the hub dataset's config, e.g. 20231101.en", option="--corpus-config")
    text_column: str = _param("text", "column holding the text")
    max_documents: int | None = _param(None, "read at most N documents", shown="all")
    max_tokens: int = _param(20_000, "token positions in the stream")
    seq_len: int = _param(128, "sequence length the stream is cut into")

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("seq_len", self.seq_len, 1)
        _check_int("max_documents", self.max_documents, 1, optional=True)
        if self.seq_len > self.max_tokens:
            raise TnbError(f"seq_len should be <= max_tokens={self.max_tokens}. Got {self.seq_len} instead.")
        if self.config and not self.source:
            raise TnbError("--corpus-config needs --corpus (a hub dataset id such as wikimedia/wikipedia)")


@dataclass(frozen=True)
class ExtractParams:
    """Which models, sites and layers are read, and how (the extract stage)."""

    __pydantic_config__ = _FORBID_EXTRA

    models: tuple[str, ...] = _param(
        ("minilm",), "presets (minilm, gpt2, gpt2-medium, gpt2-large, gpt2-xl, smollm2), model directories or hub ids",
        option="--model", aliases=("--models",),
    )
    sites: tuple[str, ...] = _param(("resid",), "activation sites", choices=SITES, aliases=("--site",))
    layers: tuple[int, ...] | None = _param(None, "layer numbers", shown="all")
    batch_size: int = _param(16, "sequences per forward pass")
    dtype: str = _param("float16", "stored precision of the activations", choices=DTYPES)
    add_bos: bool = _param(
        False, "put the tokenizer's BOS before every sequence where it puts none (GPT-2: <|endoftext|>)",
        aliases=("--bos",),
    )
    control: bool = _param(
        True, "also run each model's untrained twin, <model>-untrained (weights drawn under the bicluster seed)",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "sites", tuple(self.sites))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if not self.models:
            raise TnbError("models should name at least one model. Got () instead.")
        _check_choices("sites", self.sites, SITES)
        for layer in self.layers or ():
            _check_int("every layer", layer, 0)
        _check_int("batch_size", self.batch_size, 1)
        if self.dtype not in DTYPES:
            raise TnbError(f"dtype should be one of {', '.join(DTYPES)}. Got {self.dtype!r} instead.")


@dataclass(frozen=True)
class ComputeParams:
    """Where the bicluster tasks run. Results do not depend on it (every partition is seeded alone)."""

    __pydantic_config__ = _FORBID_EXTRA

    dask_address: str | None = _param(
        None, "scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786", shown="a local cluster",
    )
    n_workers: int | None = _param(None, "local Dask workers", aliases=("--workers",), shown="one per core")
    serial: bool = _param(False, "no Dask: one layer at a time in this process")
    null_chunk_size: int = _param(25, "null draws per Dask task", aliases=("--null-chunk",))

    def __post_init__(self) -> None:
        _check_int("n_workers", self.n_workers, 1, optional=True)
        _check_int("null_chunk_size", self.null_chunk_size, 1)


@dataclass(frozen=True)
class BiclusterParams:
    """Everything that decides a bicluster partition's contents (its config, with the code version)."""

    __pydantic_config__ = _FORBID_EXTRA

    method: str = _param(
        "biclustering", "Kluger's spectral biclustering (the study's) or Dhillon's coclustering", choices=METHODS,
    )
    row_ks: tuple[int, ...] = _param((6, 9, 12), "token-cluster counts of the grid")
    col_ks: tuple[int, ...] = _param((6, 9, 12), "neuron-cluster counts of the grid")
    input: str = _param("abs", "matrix clustered: the study's |z| per neuron, or the signed z", choices=INPUTS)
    null: str = _param(
        "interaction_refit", "null of z and p; each draw refits the whole grid (interaction_refit keeps token and "
        "neuron scales, loses their association)", choices=NULLS,
    )
    n_null: int = _param(99, "null draws, each a whole grid refit; p >= 1/(n_null+1)")
    statistic: str = _param("r2_interaction", "what z and p test (or the study's whole r2)", choices=STATISTICS)
    n_seeds: int = _param(5, "grid fits with different seeds behind `stability`")
    n_shuffles: int = _param(100, "label shuffles behind z_shuffle (fitted vs shuffled labels); 0 skips")
    selection: str = _param("excess", "rule marking each layer's selected grid point ('r2' is the study's)",
                            choices=SELECTION_RULES)
    alpha: float = _param(0.05, "significance level: significant when p_layer < alpha")
    min_stability: float = _param(0.8, "stable when stability (mean pairwise ARI of token labels) >= this")
    seed: int = _param(0, "random_state of SVD, k-means, null draws, shuffles and the untrained twin's weights")
    drop_first: int = _param(0, "leading positions of every sequence left out of the matrix")
    extra: Mapping[str, Any] = field(default_factory=dict)  # more grid_search keyword arguments (no option)

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


@dataclass(frozen=True)
class Study:
    """A whole study: the lake, its sections, and which stages run.

    ``Study()`` is the study's default: all-MiniLM-L6-v2 and its untrained twin over 20,000
    tokens of the bundled Wikipedia sample, residual stream, grid {6,9,12}^2, a null of 99
    grid refits, 5 seeds. :meth:`from_mapping` reads the nested form :meth:`dump` writes.
    """

    __pydantic_config__ = _FORBID_EXTRA

    lake: str = _param("lake", "lake root directory")
    corpus: CorpusParams = field(default_factory=CorpusParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    bicluster: BiclusterParams = field(default_factory=BiclusterParams)
    compute: ComputeParams = field(default_factory=ComputeParams)
    report_dir: str | None = _param("report", "where the analyze stage writes the report")
    stages: tuple[str, ...] = _param(STAGES, "run only these stages (each reads what the earlier ones left)",
                                     choices=STAGES)
    overwrite: bool = _param(False, "redo partitions that are already complete")
    progress: bool = _param(True, "show progress bars while extracting")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _check_choices("stages", self.stages, STAGES)
        if not isinstance(self.lake, str) or not self.lake:
            raise TnbError(f"lake should be a directory path. Got {self.lake!r} instead.")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Study:
        """A study from its nested mapping (:meth:`dump`'s form), validated by pydantic; missing keys take defaults.

        Raises
        ------
        TnbError
            On an unknown key or a value of the wrong type (one line naming the field), or
            on a value the section refuses (its own message).
        """
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(cls).validate_python(dict(values))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in error.errors()
            )
            raise TnbError(f"bad study parameters: {problems}") from None

    def dump(self) -> dict[str, Any]:
        """The study as a JSON-ready nested mapping that :meth:`from_mapping` reads back.

        Its ``bicluster`` section is what bicluster partitions store in their manifests
        (:meth:`BiclusterParams.config`), less the code version.
        """
        values = asdict(self)
        for name in ("corpus", "extract", "compute"):
            values[name] = {key: list(value) if isinstance(value, tuple) else value
                            for key, value in values[name].items()}
        values["bicluster"] = {key: value for key, value in self.bicluster.config().items() if key != "code_version"}
        values["stages"] = list(self.stages)
        return values
