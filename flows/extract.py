"""Ingest + tokenize + extract as Prefect flows: thin wrappers over :mod:`tnb.extract`."""

from __future__ import annotations

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)

from prefect import flow, task

from flows.bicluster import _retry_on_os_error  # retry transient I/O only, never bad input
from tnb.extract import ensure_token_stream, extract_activations
from tnb.lake import Lake
from tnb.models import load_tokenizer, resolve_model


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
) -> dict:
    """Publish one activations partition per (site, layer); complete ones are skipped."""
    result = extract_activations(
        Lake(lake), resolve_model(model), stream, sites, layers, batch_size, dtype, overwrite, progress=progress
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
) -> dict:
    """Tokenize (once per corpus and tokenizer) and extract every requested layer of ``model``."""
    stream = tokenize_task(lake, model, corpus, max_tokens, seq_len, text_column, max_documents, overwrite, hub_config)
    result = extract_task(lake, model, stream, tuple(sites), layers, batch_size, dtype, overwrite, progress)
    print(f"{model}: {len(result['written'])} partitions written, {len(result['skipped'])} already complete")
    return result
