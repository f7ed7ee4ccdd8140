"""Ingest + tokenize + extract as Prefect flows: thin wrappers over :mod:`tnb.extract`."""

from __future__ import annotations

from . import _env  # noqa: F401  (Prefect settings before prefect is imported)

# isort: split

from prefect import flow, task

from tnb.extract import ensure_token_stream, extract_activations
from tnb.lake import Lake
from tnb.models import DEFAULT_TWIN_SEED, load_tokenizer, resolve_model, untrained_twin

from .bicluster import _retry_on_os_error  # retry transient I/O only, never bad input


@task(name="tokenize", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_on_os_error)
def tokenize_task(
    lake: str,
    model: str,
    corpus: str | None,
    max_tokens: int,
    seq_len: int,
    text_column: str,
    max_documents: int | None,
    overwrite: bool,
    hub_config: str | None = None,
) -> str:
    """Write the (corpus, tokenizer) token stream once; returns its stream id."""
    spec = resolve_model(model)
    tokenizer_name, tokenizer = load_tokenizer(spec)
    return ensure_token_stream(
        Lake(lake), corpus, tokenizer_name, tokenizer, max_tokens, seq_len, text_column, max_documents, overwrite,
        hub_config,
    )


@task(name="extract")
def extract_task(
    lake: str,
    model: str,
    stream: str,
    sites: tuple[str, ...],
    layers: list[int] | None,
    batch_size: int,
    dtype: str,
    overwrite: bool,
    progress: bool,
    untrained: bool = False,
    twin_seed: int = DEFAULT_TWIN_SEED,
    add_bos: bool = False,
) -> dict:
    """Publish one activations partition per (site, layer); complete ones are skipped.

    ``untrained``: the model's random-initialised twin (``<model>-untrained``) instead.
    """
    spec = resolve_model(model)
    if untrained:
        spec = untrained_twin(spec, twin_seed)
    result = extract_activations(
        Lake(lake), spec, stream, sites, layers, batch_size, dtype, overwrite, progress=progress, add_bos=add_bos
    )
    return {
        "model": result.model,
        "stream": result.stream,
        "n_layers": result.n_layers,
        "written": list(result.written),
        "skipped": list(result.skipped),
    }


@flow(name="tnb-tokenize", log_prints=True)
def tokenize_flow(
    lake: str = "lake",
    model: str = "minilm",
    corpus: str | None = None,
    max_tokens: int = 20_000,
    seq_len: int = 128,
    text_column: str = "text",
    max_documents: int | None = None,
    overwrite: bool = False,
    hub_config: str | None = None,
) -> str:
    """Ingest the corpus and write its token stream for ``model``'s tokenizer."""
    return tokenize_task(lake, model, corpus, max_tokens, seq_len, text_column, max_documents, overwrite, hub_config)


@flow(name="tnb-extract", log_prints=True)
def extract_flow(
    lake: str = "lake",
    model: str = "minilm",
    corpus: str | None = None,
    max_tokens: int = 20_000,
    seq_len: int = 128,
    sites: tuple[str, ...] = ("resid",),
    layers: list[int] | None = None,
    batch_size: int = 16,
    dtype: str = "float16",
    overwrite: bool = False,
    text_column: str = "text",
    max_documents: int | None = None,
    progress: bool = True,
    hub_config: str | None = None,
    untrained: bool = False,
    twin_seed: int = DEFAULT_TWIN_SEED,
    add_bos: bool = False,
) -> dict:
    """Tokenize (once per corpus and tokenizer) and extract every requested layer of ``model``.

    ``untrained`` extracts the model's untrained twin (same config and tokenizer, weights
    drawn under ``torch.manual_seed(twin_seed)``), stored as ``<model>-untrained``;
    ``add_bos`` puts the tokenizer's BOS before every sequence where it puts none (GPT-2).
    """
    stream = tokenize_task(lake, model, corpus, max_tokens, seq_len, text_column, max_documents, overwrite, hub_config)
    result = extract_task(
        lake, model, stream, tuple(sites), layers, batch_size, dtype, overwrite, progress, untrained, twin_seed, add_bos
    )
    print(f"{result['model']}: {len(result['written'])} partitions written, {len(result['skipped'])} already complete")
    return result
