"""The report: figures, the metrics table, each layer's clusters and the families, as HTML and Markdown.

``write_report(lake_root, out_dir)`` writes ``out_dir/index.html`` and ``out_dir/report.md``
with the figures beside them in ``out_dir/figures/`` (PNG shown, SVG linked). Both come
from one context of plain dicts, lists and strings (:class:`_Context`), rendered by the
Jinja2 templates ``tnb/templates/report.html.j2`` and ``report.md.j2``. The HTML has no
external resources and no script: inline CSS and local images; its tables wrap long
cells, so they fit the page.

The report leads with a verdict per layer (significant against the pipeline's own null?
stable across seeds? beyond the untrained twin?), and every figure and table says what it
is compared against. The nulls drawn are the pipeline's own draws on the matrix it
clustered (the metrics table's ``null_draws``); the report recomputes no statistic.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import polars as pl

from tnb.errors import TnbError
from tnb.families import Families, family_counts, lake_families
from tnb.figures import (
    bicluster_map_figure,
    emergence_figure,
    family_flow_figure,
    grid_figure,
    null_figure,
    save_figure,
    topicality_figure,
)
from tnb.lake import Lake, partition_key
from tnb.query import run_query, tables

LayerKey = tuple[str, str, int]  # (model, site, layer)


class ReportError(TnbError):
    """The lake has nothing to report yet."""


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote, and the tables a flow may publish as artifacts."""

    html: Path
    markdown: Path
    figures: list[Path]
    metrics: pl.DataFrame
    top_tokens: pl.DataFrame
    families: pl.DataFrame
    artifacts: pl.DataFrame
    verdicts: pl.DataFrame = field(default_factory=pl.DataFrame)  # one row per layer of every trained model
    topicality: pl.DataFrame = field(default_factory=pl.DataFrame)
    family_counts: pl.DataFrame = field(default_factory=pl.DataFrame)
    sections: dict[str, str] = field(default_factory=dict)  # Markdown text by section title


# ----------------------------------------------------------------------------- lake reads
def _layer_matrix(lake: Lake, model: str, site: str, layer: int, method: str, drop_first: int, row_k: int, col_k: int):
    """(matrix, token labels, neuron labels) of one layer's grid point, rows = labelled positions."""
    keys: dict[str, str | int] = {"model": model, "site": site, "layer": layer, "method": method, "drop_first": drop_first}
    labels = pl.from_arrow(lake.read(partition_key("labels", **keys)))
    assert isinstance(labels, pl.DataFrame)
    labels = labels.filter((pl.col("row_k") == row_k) & (pl.col("col_k") == col_k))
    tokens = labels.filter(pl.col("axis") == "token").sort("index")
    neurons = labels.filter(pl.col("axis") == "neuron").sort("index")
    matrix, sorted_pos = lake.read_layer_rows(model, site, layer)  # content rows, in pos order
    wanted = tokens["index"].to_numpy()
    rows = np.searchsorted(sorted_pos, wanted)
    if rows.size and (rows.max() >= sorted_pos.size or not np.array_equal(sorted_pos[rows], wanted)):
        raise ReportError(f"labels of {model}/{site}/{layer} name positions missing from its activations; re-run bicluster")
    return matrix[rows][:, neurons["index"].to_numpy()], tokens["label"].to_numpy(), neurons["label"].to_numpy()


def keyword_in_context(
    lake: Lake, top_tokens: pl.DataFrame, n_snippets: int = 3, width: int = 6
) -> pl.DataFrame:
    """A few snippets per token cluster: the first occurrence of each of its top tokens, in context.

    Returns one row per snippet: ``model, site, layer, method, drop_first, token_cluster,
    pos, left, keyword, right`` (context from the same sequence only).
    """
    frames = tables(lake)
    keys = ["model", "site", "layer", "method", "drop_first", "row_k", "col_k"]
    wanted = top_tokens.filter(pl.col("rank") <= n_snippets).select(*keys, "token_cluster", "token_id", "rank")
    if wanted.is_empty():
        return pl.DataFrame()
    labels = (
        frames["labels"]
        .filter(pl.col("axis") == "token")
        .join(wanted.select(keys).unique().lazy(), on=keys)
        .select(*keys, pl.col("label").alias("token_cluster"), pl.col("index").alias("pos"))
    )
    tokens = frames["tokens"].select("stream", "pos", "seq_id", "token_id", "token")
    streams = frames["models"].select("model", "stream")
    centres = (
        labels.join(streams, on="model")
        .join(tokens, on=["stream", "pos"])
        .join(wanted.lazy(), on=[*keys, "token_cluster", "token_id"])
        .group_by(*keys, "token_cluster", "rank")
        .agg(pl.col("pos").min(), pl.col("stream").first())
        .join(tokens.select("stream", "pos", "seq_id"), on=["stream", "pos"])
    )
    offsets = pl.LazyFrame({"offset": list(range(-width, width + 1))})
    # GPT-2-style tokens carry their own leading space (" the"); WordPiece ones do not
    # ("the", "##ing"): space those out and glue "##" pieces back on.
    spaced = tokens.group_by("stream").agg((pl.col("token").str.contains(r"^\s").mean() > 0.1).alias("spaced"))
    shown = (
        pl.when(pl.col("spaced"))
        .then(pl.col("token"))
        .when(pl.col("token").str.starts_with("##"))
        .then(pl.col("token").str.slice(2))
        .otherwise(pl.lit(" ") + pl.col("token"))
    )
    context = (
        centres.join(offsets, how="cross")
        .with_columns(at=pl.col("pos") + pl.col("offset"))
        .join(tokens.rename({"pos": "at", "seq_id": "at_seq"}), on=["stream", "at"])
        .join(spaced, on="stream")
        .with_columns(token=shown)
        .filter(pl.col("at_seq") == pl.col("seq_id"))
        .sort("offset")
        .group_by(*keys, "token_cluster", "rank", "pos")
        .agg(
            pl.col("token").filter(pl.col("offset") < 0).str.join("").alias("left"),
            pl.col("token").filter(pl.col("offset") == 0).first().alias("keyword"),
            pl.col("token").filter(pl.col("offset") > 0).str.join("").alias("right"),
        )
    )
    return context.sort(*keys, "token_cluster", "rank").drop("rank").collect()


# ----------------------------------------------------------------------------- rendering
# One context (plain dicts, lists and strings) rendered by two templates: report.html.j2
# (autoescaped) and report.md.j2 (text from the data through the ``md`` filter).
def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(item) for item in value)
    return "" if value is None else str(value)


def _md_text(text: str) -> str:
    """Text from the data (token text, names) as Markdown that renders it, never as HTML markup."""
    return html.escape(text, quote=False).replace("|", "\\|")


def _token_text(token: str) -> str:
    return token.replace("\n", "\\n")


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("tnb", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.filters.update(
    md=_md_text, md_cell=lambda cell: _md_text(cell).replace("\n", " "), token_text=_token_text
)


def _table_block(frame: pl.DataFrame, caption: str = "") -> dict:
    """A table for the templates: column names and rows of display strings."""
    return {
        "kind": "table",
        "caption": caption,
        "columns": list(frame.columns),
        "rows": [[_fmt(value) for value in row] for row in frame.rows()],
    }


def markdown_table(frame: pl.DataFrame, caption: str = "") -> str:
    """A frame as a Markdown table, as the report writes it (token text escaped, floats to 4 digits)."""
    return str(_TEMPLATES.get_template("markdown.j2").module.table(_table_block(frame, caption)))  # type: ignore[attr-defined]


class _Context:
    """Collects the report's content once, as the context both templates render.

    ``blocks`` come before the first section; each section is ``{"title", "blocks"}``.
    A block is a dict with a ``kind``: paragraph, heading (level 3), figure, table or
    clusters (one layer's token clusters, with keyword-in-context snippets).
    """

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[dict] = []
        self.sections: list[dict] = []

    def _add(self, block: dict) -> None:
        (self.sections[-1]["blocks"] if self.sections else self.blocks).append(block)

    def heading(self, text: str, level: int = 2) -> None:
        if level == 2:
            self.sections.append({"title": text, "blocks": []})
        else:
            self._add({"kind": "heading", "text": text})

    def paragraph(self, text: str) -> None:
        self._add({"kind": "paragraph", "text": text})

    def figure(self, paths: list[Path], out_dir: Path, caption: str) -> None:
        png, svg = (path.relative_to(out_dir).as_posix() for path in paths)
        self._add({"kind": "figure", "png": png, "svg": svg, "caption": caption})

    def table(self, frame: pl.DataFrame, caption: str = "") -> None:
        self._add(_table_block(frame, caption))

    def clusters(self, title: str, rows: list[dict]) -> None:
        self._add({"kind": "clusters", "title": title, "rows": rows})

    def context(self) -> dict:
        return {"title": self.title, "blocks": self.blocks, "sections": self.sections}

    def render_html(self) -> str:
        return _TEMPLATES.get_template("report.html.j2").render(self.context())

    def render_md(self) -> str:
        return _TEMPLATES.get_template("report.md.j2").render(self.context()).rstrip() + "\n"

    def section_texts(self) -> dict[str, str]:
        """Markdown text of each section's body, by section title."""
        body = _TEMPLATES.get_template("markdown.j2").module.section_body  # type: ignore[attr-defined]
        return {section["title"]: str(body(section)) for section in self.sections}


# ----------------------------------------------------------------------------- the report
def null_sentence(row: Mapping) -> str:
    """One plain sentence: what Z and p mean for this metrics row, and under which null."""
    return (
        f"Z is the distance of the observed {row['statistic']} from the mean of the {row['null']} null in null "
        f"standard deviations ({row['n_null']} draws: the whole grid refitted on matrices that keep each token's "
        f"and each neuron's scale but lose their association); p is the share of null draws that reach the "
        f"observed value, and p_layer corrects p for choosing the best of the grid's points."
    )


def verdict_text(row: Mapping) -> str:
    """A layer's verdict in words, from a row of ``sql/verdicts.sql``."""
    if row["p_layer"] is None:
        return "no null computed: not tested"
    if not row["significant"]:
        return f"not significant (p_layer {row['p_layer']:.3g})"
    parts = [f"significant (p_layer {row['p_layer']:.3g})"]
    stability = "unknown" if row["stability"] is None else f"{row['stability']:.2f}"
    parts.append("stable" if row["stable"] else f"not stable (stability {stability})")
    if row["beyond_twin"] is None:
        parts.append("no twin to compare")
    else:
        parts.append("beyond the untrained twin" if row["beyond_twin"] else "not beyond the untrained twin")
    return ", ".join(parts)


def check_report_inputs(
    lake_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    site: str | None = None,
    method: str | None = None,
    drop_first: int = 0,
) -> None:
    """Fail as :func:`write_report` would on its inputs (the lake, ``out_dir``, the metrics), writing nothing.

    ``tnb run --stages analyze`` calls it before any Prefect server starts.
    """
    _report_inputs(lake_root, out_dir, site, method, drop_first)


def _report_inputs(
    lake_root: str | os.PathLike[str], out_dir: str | os.PathLike[str], site: str | None, method: str | None,
    drop_first: int,
) -> tuple[Lake, Path, pl.DataFrame]:
    """The lake, the absolute output directory and every drop_first's emergence curves, checked."""
    lake = Lake(lake_root, read_only=True)
    out = Path(out_dir).expanduser().absolute()
    if out.resolve() == lake.root.resolve() or lake.root.resolve() in out.resolve().parents:
        raise ReportError(f"--out {out} is inside the lake at {lake.root}; write the report outside the lake")
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a directory for the report")
    curves_all = run_query(lake, "emergence_curves", {"site": site, "method": method, "drop_first": None})
    if curves_all.is_empty():
        raise ReportError(f"no selected grid points in the metrics table of {lake.root}; run the bicluster stage first")
    if curves_all.filter(pl.col("drop_first") == drop_first).is_empty():
        raise ReportError(
            f"no metrics with drop_first={drop_first} in {lake.root}; it has {sorted(set(curves_all['drop_first']))}"
        )
    return lake, out, curves_all


def write_report(
    lake_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    site: str | None = None,
    method: str | None = None,
    drop_first: int = 0,
    top_n: int = 8,
    n_snippets: int = 3,
    map_layers: Mapping[str, int] | None = None,
    min_jaccard: float = 0.3,
) -> Report:
    """Write ``index.html`` and ``report.md`` (figures in ``figures/``) for a lake.

    Parameters
    ----------
    lake_root : path
    out_dir : path
        Created if missing; files of an earlier report there are replaced.
    site, method : str, optional
        Only this site / method (default: all in the lake).
    drop_first : int
        The drop_first partition the verdicts, clusters, maps and families describe. The
        emergence curves and a comparison table show every drop_first in the lake.
    top_n, n_snippets : int
        Top tokens per cluster, and keyword-in-context snippets per cluster.
    map_layers : mapping of model to layer, optional
        Layer of each model drawn as a bicluster map, grid and null (default: its finding
        with the largest excess; without a significant layer, no map is drawn).
    """
    lake, out, curves_all = _report_inputs(lake_root, out_dir, site, method, drop_first)
    figures_dir = out / "figures"
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"cannot write the report to {out}: {error.strerror or error}") from None
    base = {"site": site, "method": method}
    curves = curves_all.filter(pl.col("drop_first") == drop_first)
    trained = curves.filter(~pl.col("is_twin"))
    verdicts = run_query(lake, "verdicts", {**base, "drop_first": drop_first})
    verdicts = verdicts.with_columns(verdict=pl.Series([verdict_text(row) for row in verdicts.iter_rows(named=True)], dtype=pl.String))
    doc = _Context("tnb report: token-neuron biclusters")
    figures: list[Path] = []
    twins = sorted(set(curves.filter(pl.col("is_twin"))["model"]))
    doc.paragraph(
        f"Lake: {lake.root}. Models: {', '.join(sorted(set(trained['model'])))}"
        + (f"; untrained twins (random weights, same architecture and tokens): {', '.join(twins)}" if twins else "")
        + f". Clusters below are the selected grid point of each layer, drop_first={drop_first}."
    )

    found_families = lake_families(lake, site, method, drop_first, min_jaccard)
    counts_all = [family_counts(found) for found in found_families.values()]
    doc.heading("Verdicts")
    _verdict_section(doc, verdicts, curves, pl.concat(counts_all) if counts_all else pl.DataFrame())

    doc.heading("Emergence curves")
    paths = save_figure(emergence_figure(curves_all), figures_dir / "emergence")
    figures += paths
    doc.figure(
        paths, out,
        "Per layer, each score beside what it is compared against: the observed interaction R² with its null band "
        "(null mean to 95th percentile of the refits), the three parts of block-mean R² (token-cluster rows, "
        "neuron-cluster columns, interaction), mean specialization with the same measure on Gaussian noise (dotted), "
        "and spec_mi, which is 0 for shuffled labels. Untrained twins are dashed in their model's colour. "
        "R² and specialization axes start at 0.",
    )

    doc.heading("Metrics")
    metrics = curves.select(
        "model", "site", "method", "layer", "depth", "row_k", "col_k", "r2", "r2_rows", "r2_cols", "r2_interaction",
        "observed", "null_mean", "null_q95", "z", "p", "p_layer", "stability", "significant", "stable", "finding",
        "spec_mean", "spec_mean_noise", "spec_mi",
    )
    first = curves.row(0, named=True)
    doc.paragraph(null_sentence(first))
    doc.table(
        metrics,
        f"Selected grid point of every layer (selection: largest excess over the null). observed = "
        f"{first['statistic']}; null_mean and null_q95 are the {first['null']} null's mean and 95th percentile; "
        f"spec_mean_noise is spec_mean on Gaussian noise of the same shape.",
    )

    topicality = _topicality_section(doc, lake, out, figures_dir, figures, curves, site, method, drop_first)

    spread_all = run_query(lake, "cluster_spread", {**base, "drop_first": None})
    artifacts = spread_all.filter(pl.col("position_artifact")).select(
        "model", "site", "layer", "method", "drop_first", "token_cluster", "n_tokens", "top_seq_pos", "top_seq_pos_share"
    )
    if curves_all["drop_first"].n_unique() > 1:
        doc.heading("Effect of dropping the first positions")
        doc.paragraph(
            "drop_first = how many leading positions of each sequence were left out of the matrix before "
            "biclustering. The first positions' activations are outliers; with them kept, one token cluster "
            "is often just those positions."
        )
        doc.table(_drop_first_comparison(curves_all, artifacts), "Per layer: scores and position-artifact clusters by drop_first")

    doc.heading("Position artifacts")
    if artifacts.is_empty():
        doc.paragraph("No token cluster has more than 90% of its positions at one sequence position.")
    else:
        doc.paragraph(
            "These token clusters sit almost entirely at one position in the sequence: they are about "
            "position, not meaning, and should not be read as topics."
        )
        doc.table(artifacts, "Clusters flagged as position artifacts")

    top_tokens = run_query(lake, "top_tokens", {**base, "drop_first": drop_first, "top_n": top_n})
    spread = spread_all.filter(pl.col("drop_first") == drop_first)
    snippets = keyword_in_context(lake, top_tokens, n_snippets)

    doc.heading("Bicluster maps, grids and nulls")
    doc.paragraph(
        "For each model, the layer drawn is its finding (significant and stable) with the largest excess over the "
        "null; a model without a significant layer gets no map, only the grid and null of its layer closest to "
        "significance, for reference."
    )
    for (model, _, _), part in trained.group_by("model", "site", "method", maintain_order=True):
        row, status = _map_layer(part, (map_layers or {}).get(str(model)))
        figures += _layer_figures(doc, lake, out, figures_dir, row, status, spread)

    doc.heading("Token clusters per layer")
    doc.paragraph(
        "Top tokens are ranked by shrunk lift, (count + 5) / (expected + 5), among tokens seen at least 5 times in "
        "the cluster: a word seen a handful of times, all in one cluster, no longer heads the list on a tied lift."
    )
    _cluster_sections(doc, trained, top_tokens, spread, snippets)

    doc.heading("Circuit families")
    doc.paragraph(
        f"Clusters of consecutive layers are linked when their positions overlap (Jaccard >= {min_jaccard}) and the "
        "link beats two nulls: independent labellings of the same sizes (hypergeometric z >= 4), and, where the lake "
        "has the untrained twin, the twin's strongest link between the same two layers. Families are the chains of "
        "counted links; each carries the least seed-to-seed stability of its layers."
    )
    family_tables, count_tables = [], []
    for (group_site, group_method, group_drop), found in found_families.items():
        counts = family_counts(found)
        count_tables.append(counts.with_columns(site=pl.lit(group_site), method=pl.lit(group_method)))
        doc.table(counts, f"Families per model and its twin ({group_site}, {group_method}): families of 2+ clusters, "
                  "persistent, spanning every layer; candidate links, counted links, links no stronger than the twin's")
        table = _family_table(found)
        family_tables.append(table.with_columns(site=pl.lit(group_site), method=pl.lit(group_method)))
        name = f"families_{group_site}_{group_method}_{group_drop}"
        paths = save_figure(family_flow_figure(found), figures_dir / name)
        figures += paths
        doc.figure(
            paths, out,
            f"Token-cluster families across layers ({group_site}, {group_method}, drop_first={group_drop}); "
            "links that do not beat the nulls dotted",
        )
        doc.table(
            table.filter(pl.col("n_clusters") > 1),
            "Families of two or more clusters: counted links, stability (least over their layers), lineage joins models",
        )
    families = pl.concat(family_tables, how="diagonal") if family_tables else pl.DataFrame()

    html_path, md_path = out / "index.html", out / "report.md"
    try:
        html_path.write_text(doc.render_html(), encoding="utf-8")
        md_path.write_text(doc.render_md(), encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write the report to {out}: {error.strerror or error}") from None
    return Report(
        html=html_path,
        markdown=md_path,
        figures=figures,
        metrics=metrics,
        top_tokens=top_tokens,
        families=families,
        artifacts=artifacts,
        verdicts=verdicts,
        topicality=topicality,
        family_counts=pl.concat(count_tables, how="diagonal") if count_tables else pl.DataFrame(),
        sections=doc.section_texts(),
    )


def _verdict_section(doc: _Context, verdicts: pl.DataFrame, curves: pl.DataFrame, counts: pl.DataFrame) -> None:
    first = curves.row(0, named=True)
    if verdicts.is_empty() or not verdicts["significant"].any():
        doc.paragraph(
            f"No significant structure was found: no layer of any model beats the {first['null']} null "
            f"({first['n_null']} draws) after correcting for the choice among grid points (p_layer <= 0.05). "
            "The grid points below are what the selection rule picked, shown as measured, not as findings."
        )
    else:
        for (model,), part in verdicts.group_by("model", maintain_order=True):
            found = part.filter(pl.col("finding"))["layer"].to_list()
            beyond = part.filter(pl.col("finding") & pl.col("beyond_twin").fill_null(False))["layer"].to_list()
            twin = part["twin"].drop_nulls()
            twin_text = (
                f"; beyond its untrained twin at {_layers(beyond)}" if twin.len() else "; no untrained twin in the lake"
            )
            doc.paragraph(f"{model}: findings (significant and stable) at {_layers(found)}{twin_text}.")
    doc.paragraph(
        "Significant: the layer's selected grid point beats the null after the grid correction (p_layer <= 0.05). "
        "Stable: its token clusters agree across seeds (mean pairwise adjusted Rand index at or above the pipeline's "
        "threshold). Beyond the twin: its excess over its own null is larger than the untrained twin's at the same "
        "layer. " + null_sentence(first)
    )
    if not counts.is_empty():
        totals = counts.group_by("model").agg(pl.col("n_families").sum())
        by_model = dict(totals.iter_rows())
        lines = [
            f"{model} {by_model[model]}" + (f" (its untrained twin {by_model[twin]})" if twin in by_model else "")
            for model in sorted(by_model) if not model.endswith("-untrained")
            for twin in [f"{model}-untrained"]
        ]
        doc.paragraph(
            "Families of two or more clusters whose cross-layer links beat independent labellings and the twin's "
            f"strongest link: {'; '.join(lines)}."
        )
    shown = verdicts.select(
        "model", "layer", "row_k", "col_k", "observed", "null_q95", "p_layer", "stability", "twin_excess", "excess",
        "verdict",
    )
    doc.table(shown, "Verdict per layer (selected grid point; excess = observed - null mean)")


def _layers(layers: list[int]) -> str:
    return "no layer" if not layers else ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


def _topicality_section(
    doc: _Context, lake: Lake, out: Path, figures_dir: Path, figures: list[Path], curves: pl.DataFrame,
    site: str | None, method: str | None, drop_first: int,
) -> pl.DataFrame:
    doc.heading("Topicality beyond token identity")
    table = run_query(lake, "topicality", {"site": site, "method": method, "drop_first": drop_first})
    if table.is_empty():
        doc.paragraph("No token labels to score.")
        return table
    doc.paragraph(
        "How much each layer's token clusters say about the document (AMI, 0 for unrelated labels), beside how much "
        "of that token identity alone explains: each position's cluster predicted as its token id's most common "
        "cluster. ami_doc_beyond_token = ami_doc - ami_doc_from_token is the document information the clusters "
        "carry beyond the words themselves."
    )
    paths = save_figure(topicality_figure(table), figures_dir / "topicality")
    figures += paths
    doc.figure(paths, out, "Document AMI of the clusters (solid) and of token identity alone (dotted), and their difference; "
               "untrained twins dashed")
    doc.table(
        table.select("model", "layer", "is_twin", "ami_doc", "ami_token", "ami_doc_from_token", "ami_doc_beyond_token",
                     "n_positions", "n_docs"),
        "Topicality per layer, trained models and their untrained twins",
    )
    return table


def _map_layer(part: pl.DataFrame, asked: int | None) -> tuple[dict, str]:
    """The row of the layer to draw for one model, and its status in words."""
    if asked is not None:
        row = part.filter(pl.col("layer") == asked)
        if row.is_empty():
            raise ReportError(f"map_layers asks for {part['model'][0]} layer {asked}, which has no selected grid point")
        chosen = row.row(0, named=True)
    else:
        ranked = part.sort(
            pl.col("finding"), pl.col("significant"), pl.col("excess"), pl.col("layer"),
            descending=[True, True, True, False],
        )
        chosen = ranked.row(0, named=True)
        if not chosen["significant"]:
            chosen = part.sort("p_layer", "excess", descending=[False, True]).row(0, named=True)
    if chosen["finding"]:
        status = "finding: significant and stable"
    elif chosen["significant"]:
        status = "significant but not stable across seeds"
    else:
        status = "not significant: shown for reference, not a finding"
    return chosen, status


def _drop_first_comparison(curves_all: pl.DataFrame, artifacts: pl.DataFrame) -> pl.DataFrame:
    keys = ["model", "site", "method", "layer"]
    flagged = artifacts.group_by(*keys, "drop_first").agg(pl.len().alias("artifact_clusters"))
    scores = (
        curves_all.select(*keys, "drop_first", "r2_interaction", "excess", "p_layer")
        .join(flagged, on=[*keys, "drop_first"], how="left")
        .with_columns(pl.col("artifact_clusters").fill_null(0))
    )
    wide = scores.pivot(on="drop_first", index=keys, values=["r2_interaction", "excess", "p_layer", "artifact_clusters"])
    return wide.sort(keys)


def _layer_figures(
    doc: _Context, lake: Lake, out: Path, figures_dir: Path, row: dict, status: str, spread: pl.DataFrame
) -> list[Path]:
    model, site, layer, method, drop = row["model"], row["site"], row["layer"], row["method"], row["drop_first"]
    name = f"{model}_{site}_{layer}"
    title = f"{model} {site} layer {layer} ({row['row_k']}x{row['col_k']})"
    doc.heading(f"{title}: {status}", 3)
    paths: list[Path] = []
    keys = {"model": model, "site": site, "layer": layer, "method": method, "drop_first": drop}
    grid = run_query(lake, "grid_surface", keys)
    fig_paths = save_figure(grid_figure(grid, title), figures_dir / f"grid_{name}")
    doc.figure(
        fig_paths, out,
        f"Excess over the null and Z over the grid, {title}; the selected point boxed, * where p_layer <= 0.05. "
        + null_sentence(row),
    )
    paths += fig_paths
    draws = (
        tables(lake)["metrics"]
        .filter(pl.all_horizontal(pl.col(key) == value for key, value in keys.items()))
        .filter(pl.col("selected"))
        .select("null_draws")
        .collect()
    )
    stored = draws["null_draws"][0] if draws.height else None
    null_draws = np.asarray([] if stored is None else stored.to_list(), dtype=np.float64)
    if null_draws.size < 2:
        doc.paragraph(f"No null draws stored for {title} ({null_draws.size}): its null figure is skipped.")
    else:
        fig = null_figure(
            null_draws, float(row["observed"]), str(row["statistic"]), f"{title}: {row['statistic']} against its null",
            str(row["null"]), None if row["p_layer"] is None else float(row["p_layer"]),
            z=None if row["z"] is None else float(row["z"]), p=None if row["p"] is None else float(row["p"]),
        )
        fig_paths = save_figure(fig, figures_dir / f"null_{name}")
        doc.figure(
            fig_paths, out,
            f"The pipeline's own {row['n_null']} {row['null']} null draws on the matrix it clustered, {title}, with "
            f"the observed {row['statistic']} and the null's 95th percentile. " + null_sentence(row),
        )
        paths += fig_paths
    if not row["significant"]:
        doc.paragraph(f"No bicluster map for {model}: none of its layers is significant.")
        return paths
    key = partition_key("activations", model=model, site=site, layer=layer)
    if lake.manifest(key) is None:
        doc.paragraph(f"No activations for {key} in the lake: bicluster map skipped.")
        return paths
    matrix, token_labels, neuron_labels = _layer_matrix(lake, model, site, layer, method, drop, row["row_k"], row["col_k"])
    flagged = spread.filter(
        (pl.col("model") == model) & (pl.col("site") == site) & (pl.col("layer") == layer)
        & (pl.col("method") == method) & pl.col("position_artifact")
    )
    fig, _ = bicluster_map_figure(
        matrix, token_labels, neuron_labels, f"{title}: activations by bicluster",
        flagged_rows=frozenset(flagged["token_cluster"].to_list()),
    )
    fig_paths = save_figure(fig, figures_dir / f"map_{name}")
    doc.figure(
        fig_paths, out,
        f"Bicluster map, {title}: raw activations z-scored per neuron, rows and columns sorted by cluster, "
        "block-averaged; colour 0 is each neuron's mean",
    )
    return paths + fig_paths


def _cluster_sections(
    doc: _Context, curves: pl.DataFrame, top_tokens: pl.DataFrame, spread: pl.DataFrame, snippets: pl.DataFrame
) -> None:
    keys = ["model", "site", "method", "layer"]
    for layer_row in curves.sort(keys).iter_rows(named=True):
        select = pl.all_horizontal(pl.col(name) == layer_row[name] for name in keys)
        layer_spread = spread.filter(select).sort("token_cluster")
        layer_top = top_tokens.filter(select)
        layer_snips = snippets.filter(select) if not snippets.is_empty() else snippets
        title = f"{layer_row['model']} {layer_row['site']} layer {layer_row['layer']} ({layer_row['method']})"
        rows = []
        for cluster in layer_spread.iter_rows(named=True):
            number = cluster["token_cluster"]
            tops = layer_top.filter(pl.col("token_cluster") == number)
            snips = (
                layer_snips.filter(pl.col("token_cluster") == number) if not layer_snips.is_empty() else layer_snips
            )
            rows.append({
                "cluster": number,
                "spread": (
                    f"{cluster['n_tokens']} tokens, {cluster['n_docs']} docs (top doc {cluster['top_doc_share']:.0%}), "
                    f"top seq_pos {cluster['top_seq_pos']} ({cluster['top_seq_pos_share']:.0%})"
                ),
                "flag": "position artifact" if cluster["position_artifact"] else "",
                "top_tokens": ", ".join(
                    f"{_token_text(t)!r} ×{c} (shrunk lift {lift:.3g})"
                    for t, c, lift in zip(tops["token"], tops["count"], tops["lift_shrunk"], strict=True)
                ),
                # raw token text: each template marks the keyword up its own way
                "snippets": [
                    {"left": s["left"], "keyword": s["keyword"], "right": s["right"]} for s in snips.iter_rows(named=True)
                ],
            })
        doc.clusters(title, rows)


def _family_table(found: Families) -> pl.DataFrame:
    columns = [
        "family", "model", "kind", "first_layer", "last_layer", "n_clusters", "n_links", "stability", "max_size",
        "n_splits", "n_merges", "label", "position_artifact", "lineage", "matches",
    ]
    return found.families.select([name for name in columns if name in found.families.columns])
