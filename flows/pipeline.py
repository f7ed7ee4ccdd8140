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
from pathlib import Path
from typing import Any

from . import _env  # noqa: F401  (Prefect settings before prefect is imported)

# isort: split

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tnb.params import Study

from .artifacts import artifact_prefix, inline_png
from .bicluster import bicluster_flow
from .extract import DEFAULT_STUDY, extract_flow


def _markdown_table(frame: Any, max_rows: int = 60) -> str:
    """A Polars frame as the report writes a Markdown table (token text escaped), cut at ``max_rows``."""
    from tnb.report import markdown_table

    table = markdown_table(frame.head(max_rows))
    if frame.height > max_rows:
        table += f"\n\n... {frame.height - max_rows} more rows in the report"
    return table


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


def publish_artifacts(summary: dict[str, Any], lake: str = "lake") -> list[str]:
    """Publish the report's key parts as Prefect artifacts, keyed by the lake; returns the keys published."""
    from prefect.artifacts import create_markdown_artifact

    prefix = artifact_prefix(lake)
    published = []
    create_markdown_artifact(
        summary["metrics_md"], key=f"{prefix}-metrics", description=f"Selected grid point of every layer ({lake})"
    )
    published.append(f"{prefix}-metrics")
    if summary["emergence"]:  # the figure itself, inline: the UI shows it (it would not open a file:// link)
        create_markdown_artifact(
            inline_png(summary["emergence"], "emergence curves"), key=f"{prefix}-emergence",
            description=f"R^2 parts, excess over the null and specialization per layer; dashed: untrained twin ({lake})",
        )
        published.append(f"{prefix}-emergence")
    create_markdown_artifact(
        f"The full report (figures, verdicts, clusters, families) is `{Path(summary['html']).absolute()}` "
        f"(Markdown: `{Path(summary['markdown']).absolute()}`) on the machine that ran the flow; open it in a "
        "browser there, or copy the directory.",
        key=f"{prefix}-report", description=f"Where the full report is ({lake})",
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
def pipeline_flow(study: Study = DEFAULT_STUDY) -> dict[str, Any]:
    """Run the study: extract every model's activations, bicluster every layer, write the report.

    Parameters
    ----------
    study : Study
        The whole study (:class:`tnb.params.Study`): lake, corpus, models and extraction,
        the bicluster stage's parameters, where its tasks run, the report directory, which
        stages run and whether to overwrite. A deployment passes it as a nested mapping
        (``prefect.yaml``), which Prefect validates into a :class:`Study`; missing fields
        take their defaults. With ``extract.control`` every model's untrained twin,
        ``<model>-untrained`` (weights drawn under ``torch.manual_seed(bicluster.seed)``),
        is extracted, biclustered and reported beside it.

    Returns
    -------
    dict
        Per stage: its result and wall seconds (``seconds``).
    """
    params, extract, compute = study.bicluster, study.extract, study.compute
    outcome: dict[str, Any] = {"seconds": {}}
    model_names: list[str] = []
    twins = (False, True) if extract.control else (False,)
    if "extract" in study.stages:
        start = time.perf_counter()
        outcome["extract"] = [
            extract_flow(study=study, model=model, untrained=untrained, twin_seed=params.seed)
            for model in extract.models
            for untrained in twins
        ]
        model_names = [result["model"] for result in outcome["extract"]]
        outcome["seconds"]["extract"] = time.perf_counter() - start
    else:
        from tnb.models import resolve_model, untrained_twin

        specs = [resolve_model(model) for model in extract.models]
        model_names = [untrained_twin(spec, params.seed).name if untrained else spec.name for spec in specs for untrained in twins]
    if "bicluster" in study.stages:
        start = time.perf_counter()
        outcome["bicluster"] = bicluster_flow(
            lake=study.lake, models=model_names, sites=list(extract.sites),
            layers=list(extract.layers) if extract.layers is not None else None, bicluster=params.config(),
            overwrite=study.overwrite, dask_address=compute.dask_address, n_workers=compute.n_workers,
            serial=compute.serial, null_chunk_size=compute.null_chunk_size,
        )
        outcome["seconds"]["bicluster"] = time.perf_counter() - start
    if "analyze" in study.stages and study.report_dir:
        start = time.perf_counter()
        outcome["analyze"] = analyze_flow(
            lake=study.lake, report_dir=study.report_dir, site=extract.sites[0] if len(extract.sites) == 1 else None,
            method=params.method, drop_first=params.drop_first,
        )
        outcome["seconds"]["analyze"] = time.perf_counter() - start
    return outcome
