"""The whole study as one Prefect flow: ingest/tokenize/extract -> bicluster -> analyze.

Each stage is its own flow, runnable alone (``flows.extract.extract_flow``,
:func:`flows.bicluster.bicluster_flow`, :func:`analyze_flow`); :func:`pipeline_flow`
runs them in order as subflows, so the Prefect UI shows one pipeline run with a child
run per stage and a task run per partition. Every stage skips what the lake already
holds, so re-running after a crash (or with one more model) does only the missing work.

The analyze stage writes the HTML/Markdown report (:func:`tnb.report.write_report`)
and publishes the parts worth seeing in the UI as Prefect artifacts: the metrics table,
a link to the emergence-curve figure and the report, and the top tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _env  # noqa: F401  (Prefect settings before prefect is imported)

# isort: split

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from .bicluster import bicluster_flow
from .extract import extract_flow

STAGES = ("extract", "bicluster", "analyze")

#: The study's parameters (the defaults of :func:`pipeline_flow`).
STUDY = {
    "models": ("minilm",),
    "max_tokens": 20_000,
    "seq_len": 128,
    "sites": ("resid",),
    "control": True,  # also run each model's untrained twin (<model>-untrained)
}


def _markdown_table(frame: Any, max_rows: int = 60) -> str:
    """A Polars frame as a GitHub Markdown table (floats to 4 significant digits)."""
    columns = frame.columns
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.head(max_rows).iter_rows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if frame.height > max_rows:
        lines.append(f"\n... {frame.height - max_rows} more rows in the report")
    return "\n".join(lines)


def _top_tokens_per_cluster(top_tokens: Any, top_n: int = 5) -> Any:
    """One row per token cluster: its size and its top tokens by lift, as readable text."""
    import polars as pl

    keys = ["model", "site", "layer", "method", "drop_first", "token_cluster"]
    rows: dict[tuple, dict[str, Any]] = {}
    for row in top_tokens.filter(pl.col("rank") <= top_n).sort([*keys, "rank"]).iter_rows(named=True):
        entry = rows.setdefault(tuple(row[k] for k in keys), {**{k: row[k] for k in keys}, "size": row["cluster_size"], "top": []})
        entry["top"].append(f"{row['token']!r} ({row['lift']:.1f}x)")
    return pl.DataFrame(
        [{**{k: v for k, v in entry.items() if k != "top"}, "top tokens (lift)": ", ".join(entry["top"])} for entry in rows.values()]
    )


@task(name="write-report", cache_policy=NO_CACHE)
def report_task(lake: str, report_dir: str, site: str | None, method: str | None, drop_first: int) -> dict[str, Any]:
    """Write the report; return its paths and the small tables worth publishing (as Markdown)."""
    from tnb.report import write_report

    report = write_report(lake, report_dir, site=site, method=method, drop_first=drop_first)
    emergence = next((p for p in report.figures if p.stem == "emergence" and p.suffix == ".png"), None)
    return {
        "html": str(report.html),
        "markdown": str(report.markdown),
        "emergence": None if emergence is None else str(emergence),
        "metrics_md": _markdown_table(report.metrics),
        "top_tokens_md": _markdown_table(_top_tokens_per_cluster(report.top_tokens), max_rows=120),
    }


def artifact_prefix(lake: str) -> str:
    """``tnb-<lake name>-<hash of its absolute path>``: runs on different lakes do not overwrite each other's artifacts.

    Prefect artifact keys allow lowercase letters, digits and dashes only.
    """
    import hashlib
    import re

    root = Path(lake).absolute()
    name = re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-")[:24] or "lake"
    return f"tnb-{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def publish_artifacts(summary: dict[str, Any], lake: str = "lake") -> list[str]:
    """Publish the report's key parts as Prefect artifacts, keyed by the lake; returns the keys published."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    prefix = artifact_prefix(lake)
    published = []
    create_markdown_artifact(
        summary["metrics_md"], key=f"{prefix}-metrics", description=f"Selected grid point of every layer ({lake})"
    )
    published.append(f"{prefix}-metrics")
    if summary["emergence"]:
        create_link_artifact(
            Path(summary["emergence"]).absolute().as_uri(), link_text="Emergence curves (PNG)",
            key=f"{prefix}-emergence", description=f"R^2, Z and specialization per layer ({lake})",
        )
        published.append(f"{prefix}-emergence")
    create_link_artifact(
        Path(summary["html"]).absolute().as_uri(), link_text="tnb report (HTML)", key=f"{prefix}-report",
        description=f"The full report: figures, clusters, families ({lake})",
    )
    published.append(f"{prefix}-report")
    create_markdown_artifact(
        summary["top_tokens_md"], key=f"{prefix}-top-tokens",
        description=f"Top tokens of each selected token cluster ({lake})",
    )
    published.append(f"{prefix}-top-tokens")
    return published


@flow(name="tnb-analyze", log_prints=True)
def analyze_flow(
    lake: str = "lake",
    report_dir: str = "report",
    site: str | None = None,
    method: str | None = None,
    drop_first: int = 0,
    artifacts: bool = True,
) -> dict[str, Any]:
    """Write the report for a lake and publish its key parts as Prefect artifacts."""
    summary = report_task(lake, report_dir, site, method, drop_first)
    if artifacts:
        try:
            summary["artifacts"] = publish_artifacts(summary, lake)
        except Exception as error:  # the report is written; a UI nicety must not fail the run
            get_run_logger().warning("could not publish Prefect artifacts: %s", error)
            summary["artifacts"] = []
    print(f"report: {summary['html']}")
    return summary


@flow(name="tnb-pipeline", log_prints=True)
def pipeline_flow(
    lake: str = "lake",
    models: Sequence[str] = STUDY["models"],
    corpus: str | None = None,
    hub_config: str | None = None,
    max_tokens: int = STUDY["max_tokens"],
    seq_len: int = STUDY["seq_len"],
    sites: Sequence[str] = STUDY["sites"],
    layers: list[int] | None = None,
    batch_size: int = 16,
    text_column: str = "text",
    max_documents: int | None = None,
    bicluster: dict[str, Any] | None = None,
    null_chunk_size: int = 25,
    dask_address: str | None = None,
    n_workers: int | None = None,
    serial: bool = False,
    report_dir: str | None = "report",
    stages: Sequence[str] = STAGES,
    overwrite: bool = False,
    progress: bool = True,
    control: bool = STUDY["control"],
    add_bos: bool = False,
) -> dict[str, Any]:
    """Run the study: extract every model's activations, bicluster every layer, write the report.

    Parameters
    ----------
    lake : str
        Lake root directory.
    models : sequence of str
        Presets (``minilm``, ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``),
        model directories or hub ids; each is extracted in turn (torch uses every core).
    corpus : str, optional
        Local file/directory or hub dataset; default: the bundled Wikipedia sample.
    hub_config : str, optional
        The hub dataset's config (e.g. ``20231101.en``).
    max_tokens, seq_len : int
        Token positions in the stream, and the sequence length they are cut into.
    sites : sequence of {"resid", "mlp"}
    layers : list of int, optional
        Layers to extract and bicluster (default: all).
    batch_size : int
        Sequences per forward pass.
    text_column, max_documents
        The corpus's text column, and at most how many documents to read.
    bicluster : dict, optional
        The bicluster stage's parameters (fields of :class:`tnb.bicluster_stage.BiclusterParams`:
        grid, input, null, n_null, n_seeds, selection, seed, drop_first, ...); default: its defaults.
    null_chunk_size : int
        Null draws per Dask task.
    dask_address, n_workers, serial
        Where the bicluster tasks run (:func:`flows.bicluster.make_task_runner`).
    report_dir : str, optional
        Where the analyze stage writes the report; None skips the stage.
    stages : sequence of {"extract", "bicluster", "analyze"}
        Which stages to run (each reads what the earlier ones left in the lake).
    overwrite : bool
        Redo complete partitions.
    control : bool
        Also extract, bicluster and report every model's untrained twin, ``<model>-untrained``
        (same config and tokenizer, weights initialised under ``torch.manual_seed(seed)``):
        what the trained model has and its twin does not is what training made.
    add_bos : bool
        Put the tokenizer's BOS before every sequence where its ``__call__`` puts none
        (GPT-2: ``<|endoftext|>``); BERT always gets ``[CLS] ... [SEP]``.

    Returns
    -------
    dict
        Per stage: its result and wall seconds (``seconds``).
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"stages should be among {STAGES}. Got {unknown} instead.")
    from tnb.bicluster_stage import BiclusterParams

    params = BiclusterParams.from_mapping(bicluster or {})
    outcome: dict[str, Any] = {"seconds": {}}
    model_names: list[str] = []
    twins = (False, True) if control else (False,)
    if "extract" in stages:
        start = time.perf_counter()
        outcome["extract"] = [
            extract_flow(
                lake=lake, model=model, corpus=corpus, hub_config=hub_config, max_tokens=max_tokens, seq_len=seq_len, sites=tuple(sites),
                layers=layers, batch_size=batch_size, overwrite=overwrite, text_column=text_column,
                max_documents=max_documents, progress=progress, untrained=untrained, twin_seed=params.seed, add_bos=add_bos,
            )
            for model in models
            for untrained in twins
        ]
        model_names = [result["model"] for result in outcome["extract"]]
        outcome["seconds"]["extract"] = time.perf_counter() - start
    else:
        from tnb.models import resolve_model, untrained_twin

        specs = [resolve_model(model) for model in models]
        model_names = [untrained_twin(spec, params.seed).name if untrained else spec.name for spec in specs for untrained in twins]
    if "bicluster" in stages:
        start = time.perf_counter()
        outcome["bicluster"] = bicluster_flow(
            lake=lake, models=model_names, sites=list(sites), layers=layers, bicluster=params.config(),
            overwrite=overwrite, dask_address=dask_address, n_workers=n_workers, serial=serial,
            null_chunk_size=null_chunk_size,
        )
        outcome["seconds"]["bicluster"] = time.perf_counter() - start
    if "analyze" in stages and report_dir:
        start = time.perf_counter()
        outcome["analyze"] = analyze_flow(
            lake=lake, report_dir=report_dir, site=sites[0] if len(sites) == 1 else None, method=params.method,
            drop_first=params.drop_first,
        )
        outcome["seconds"]["analyze"] = time.perf_counter() - start
    return outcome
