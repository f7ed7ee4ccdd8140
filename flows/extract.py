"""Ingest + tokenize + extract as Prefect flows: thin wrappers over :mod:`tnb.extract`."""

from __future__ import annotations

from . import _env  # noqa: F401  (Prefect settings before prefect is imported)

# isort: split

from prefect import flow, task

from tnb.extract import ensure_token_stream, extract_activations
from tnb.lake import Lake
from tnb.models import DEFAULT_TWIN_SEED, load_tokenizer, resolve_model, untrained_twin
from tnb.params import ExtractParams, Study

from .artifacts import Progress, artifact_prefix
from .bicluster import retry_transient_io  # retry transient I/O only, never bad input

DEFAULT_MODEL = ExtractParams.models[0]
DEFAULT_STUDY = Study()  # the flows' default parameter (frozen: one instance serves every call)


def _key_part(name: str) -> str:
    """A model name as part of an artifact key (lowercase letters, digits, dashes)."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "model"


@task(name="tokenize", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient_io)
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
    bar = Progress(f"{artifact_prefix(lake)}-extract-{_key_part(spec.name)}-progress",
                   f"extract {spec.name}: token positions fed ({lake})", 1)

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.set(done)

    result = extract_activations(
        Lake(lake), spec, stream, sites, layers, batch_size, dtype, overwrite, progress=progress, add_bos=add_bos,
        on_progress=on_progress,
    )
    bar.set(bar.total)  # complete, also when every partition was already there
    return {
        "model": result.model,
        "stream": result.stream,
        "n_layers": result.n_layers,
        "written": list(result.written),
        "skipped": list(result.skipped),
    }


@flow(name="tnb-tokenize", log_prints=True)
def tokenize_flow(study: Study = DEFAULT_STUDY, model: str = DEFAULT_MODEL) -> str:
    """Ingest the study's corpus and write its token stream for ``model``'s tokenizer."""
    return _tokenize(study, model)


def _tokenize(study: Study, model: str) -> str:
    corpus = study.corpus
    return tokenize_task(
        study.lake, model, corpus.source, corpus.max_tokens, corpus.seq_len, corpus.text_column,
        corpus.max_documents, study.overwrite, corpus.config,
    )


@flow(name="tnb-extract", log_prints=True)
def extract_flow(
    study: Study = DEFAULT_STUDY,
    model: str = DEFAULT_MODEL,
    untrained: bool = False,
    twin_seed: int = DEFAULT_TWIN_SEED,
) -> dict:
    """Tokenize (once per corpus and tokenizer) and extract every requested layer of ``model``.

    The study says the corpus, sites, layers, batch size, dtype, BOS and whether to
    overwrite (its ``extract.models`` and ``control`` are the pipeline's business).
    ``untrained`` extracts the model's untrained twin (same config and tokenizer, weights
    drawn under ``torch.manual_seed(twin_seed)``), stored as ``<model>-untrained``.
    """
    stream = _tokenize(study, model)
    extract = study.extract
    result = extract_task(
        study.lake, model, stream, extract.sites, list(extract.layers) if extract.layers is not None else None,
        extract.batch_size, extract.dtype, study.overwrite, study.progress, untrained, twin_seed, extract.add_bos,
    )
    print(f"{result['model']}: {len(result['written'])} partitions written, {len(result['skipped'])} already complete")
    return result
