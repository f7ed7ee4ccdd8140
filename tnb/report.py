"""The report: figures, the metrics table, each layer's clusters and the families, as HTML and Markdown.

``write_report(lake_root, out_dir)`` writes ``out_dir/index.html`` and ``out_dir/report.md``
with the figures beside them in ``out_dir/figures/`` (PNG shown, SVG linked). The HTML has
no external resources: inline CSS, local images, and a few lines of script that record
whether each figure loaded (``#image-check``), which the browser test reads.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tnb.errors import TnbError
from tnb.families import Families, lake_families
from tnb.figures import (
    bicluster_map_figure,
    emergence_figure,
    family_flow_figure,
    grid_figure,
    null_figure,
    save_figure,
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
    sections: dict[str, str] = field(default_factory=dict)  # Markdown text by section title


# ----------------------------------------------------------------------------- statistics
def block_r2(matrix: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray) -> float:
    """R^2 of the block-mean model: each cell predicted by its bicluster's mean.

    Parameters
    ----------
    matrix : ndarray of shape (n_tokens, n_neurons)
    row_labels : ndarray of shape (n_tokens,)
    col_labels : ndarray of shape (n_neurons,)
    """
    return float(label_shuffle_null(matrix, row_labels, col_labels, n_permutations=0)[1])


def label_shuffle_null(
    matrix: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray, n_permutations: int = 200, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Block-mean R^2 under shuffled token labels, and the observed R^2.

    Columns are summed per neuron cluster once; each permutation then only regroups rows,
    so a thousand permutations of a 20,000 x 384 layer take well under a second.

    Returns
    -------
    null : ndarray of shape (n_permutations,)
    observed : float
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    _, rows = np.unique(row_labels, return_inverse=True)
    col_ids, cols = np.unique(col_labels, return_inverse=True)
    col_sums = np.zeros((matrix.shape[0], col_ids.size))
    np.add.at(col_sums.T, cols, matrix.T)  # (n_tokens, n_col_clusters)
    col_sizes = np.bincount(cols).astype(np.float64)
    total = matrix.sum()
    grand = total / matrix.size
    ss_total = float(((matrix - grand) ** 2).sum())
    n_row = rows.max() + 1

    def r2(labels: np.ndarray) -> float:
        sums = np.zeros((n_row, col_ids.size))
        np.add.at(sums, labels, col_sums)
        cells = np.outer(np.bincount(labels, minlength=n_row), col_sizes)
        explained = np.where(cells > 0, sums**2 / np.where(cells > 0, cells, 1.0), 0.0).sum() - total**2 / matrix.size
        return explained / ss_total if ss_total > 0 else 0.0

    rng = np.random.default_rng(seed)
    null = np.array([r2(rng.permutation(rows)) for _ in range(n_permutations)])
    return null, r2(rows)


# ----------------------------------------------------------------------------- lake reads
def _layer_matrix(lake: Lake, model: str, site: str, layer: int, method: str, drop_first: int, row_k: int, col_k: int):
    """(matrix, token labels, neuron labels) of one layer's grid point, rows = labelled positions."""
    keys = {"model": model, "site": site, "layer": layer, "method": method, "drop_first": drop_first}
    labels = pl.from_arrow(lake.read(partition_key("labels", **keys)))
    assert isinstance(labels, pl.DataFrame)
    labels = labels.filter((pl.col("row_k") == row_k) & (pl.col("col_k") == col_k))
    tokens = labels.filter(pl.col("axis") == "token").sort("index")
    neurons = labels.filter(pl.col("axis") == "neuron").sort("index")
    activations = lake.read(partition_key("activations", model=model, site=site, layer=layer), columns=["pos"])
    stored_pos = activations.column("pos").to_numpy()
    matrix = lake.read_layer(model, site, layer)  # rows in pos order
    sorted_pos, wanted = np.sort(stored_pos), tokens["index"].to_numpy()
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
def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(item) for item in value)
    return "" if value is None else str(value)


def _html_table(frame: pl.DataFrame, caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(value))}</td>" for value in row) + "</tr>" for row in frame.rows()
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(frame: pl.DataFrame) -> str:
    def cell(value: object) -> str:
        return _fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.rows()]
    return "\n".join(lines)


def _token_text(token: str) -> str:
    return token.replace("\n", "\\n")


class _Document:
    """Collects the report once and renders it as HTML and Markdown."""

    def __init__(self, title: str):
        self.title = title
        self.html: list[str] = []
        self.md: list[str] = [f"# {title}", ""]
        self.sections: dict[str, str] = {}
        self._section: str | None = None

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += [f"{'#' * level} {text}", ""]
        if level == 2:
            self._section = text
            self.sections[text] = ""

    def _md(self, text: str) -> None:
        self.md += [text, ""]
        if self._section is not None:
            self.sections[self._section] += text + "\n\n"

    def paragraph(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self._md(text)

    def figure(self, paths: list[Path], out_dir: Path, caption: str) -> None:
        png, svg = (path.relative_to(out_dir).as_posix() for path in paths)
        self.html.append(
            f'<figure><img src="{html.escape(png)}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)} (<a href="{html.escape(svg)}">SVG</a>)</figcaption></figure>'
        )
        self._md(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))")

    def table(self, frame: pl.DataFrame, caption: str = "") -> None:
        self.html.append(_html_table(frame, caption))
        self._md((f"*{caption}*\n\n" if caption else "") + _md_table(frame))

    def raw(self, html_text: str, md_text: str) -> None:
        self.html.append(html_text)
        self._md(md_text)

    def render_html(self) -> str:
        return _PAGE.format(title=html.escape(self.title), body="\n".join(self.html))

    def render_md(self) -> str:
        return "\n".join(self.md).rstrip() + "\n"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
caption {{ text-align: left; font-style: italic; padding: 2px; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
code, .kw {{ white-space: pre; font-family: ui-monospace, monospace; }}
.kw b {{ background: #ffe48a; }} .flag {{ color: #b00; font-weight: bold; }}
details {{ margin: 0.4em 0; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p id="image-check" data-loaded="" data-total="">figures not checked yet</p>
{body}
<script>
window.addEventListener("load", function () {{
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {{
    images[i].setAttribute("data-natural-width", images[i].naturalWidth);
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  }}
  var check = document.getElementById("image-check");
  check.setAttribute("data-loaded", loaded);
  check.setAttribute("data-total", images.length);
  check.textContent = loaded + " of " + images.length + " figures loaded";
}});
</script>
</body>
</html>
"""


# ----------------------------------------------------------------------------- the report
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
    null_samples: Mapping[LayerKey, np.ndarray] | None = None,
    n_permutations: int = 200,
    seed: int = 0,
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
        The drop_first partition the clusters, maps and families describe. The emergence
        curves and a comparison table show every drop_first in the lake.
    top_n, n_snippets : int
        Top tokens per cluster, and keyword-in-context snippets per cluster.
    map_layers : mapping of model to layer, optional
        Layer of each model drawn as a bicluster map, grid and null (default: highest Z).
    null_samples : mapping of (model, site, layer) to ndarray, optional
        The pipeline's permutation null for a map layer; without it the report recomputes a
        label-shuffle null of block-mean R^2 (``n_permutations``, ``seed``) for the figure.
    """
    lake = Lake(lake_root)
    out = Path(out_dir).expanduser()
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    base = {"site": site, "method": method}
    curves_all = run_query(lake, "emergence_curves", {**base, "drop_first": None})
    if curves_all.is_empty():
        raise ReportError(f"no selected grid points in the metrics table of {lake.root}; run the bicluster stage first")
    curves = curves_all.filter(pl.col("drop_first") == drop_first)
    if curves.is_empty():
        raise ReportError(
            f"no metrics with drop_first={drop_first} in {lake.root}; it has {sorted(set(curves_all['drop_first']))}"
        )
    doc = _Document("tnb report: token-neuron biclusters")
    figures: list[Path] = []
    doc.paragraph(
        f"Lake: {lake.root}. Models: {', '.join(sorted(set(curves['model'])))}. "
        f"Clusters below are the selected grid point of each layer, drop_first={drop_first}."
    )

    doc.heading("Emergence curves")
    paths = save_figure(emergence_figure(curves_all), figures_dir / "emergence")
    figures += paths
    doc.figure(paths, out, "Block-mean R² and Z (dashed) per layer, and mean specialization, by relative depth")

    doc.heading("Metrics")
    metrics = curves.select(
        "model", "site", "method", "layer", "depth", "row_k", "col_k", "r2", "adjusted_r2", "z", "p", "spec_mean"
    )
    doc.table(metrics, "Selected grid point of every layer")

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
    for (model, model_site, model_method), part in curves.group_by("model", "site", "method", maintain_order=True):
        chosen = part.sort("z", "layer", descending=[True, False]).row(0, named=True)
        layer = (map_layers or {}).get(str(model), chosen["layer"])
        row = part.filter(pl.col("layer") == layer)
        if row.is_empty():
            raise ReportError(f"map_layers asks for {model} layer {layer}, which has no selected grid point")
        figures += _layer_figures(
            doc, lake, out, figures_dir, row.row(0, named=True), spread, null_samples, n_permutations, seed
        )

    doc.heading("Token clusters per layer")
    _cluster_sections(doc, curves, top_tokens, spread, snippets)

    doc.heading("Circuit families")
    family_tables = []
    for (group_site, group_method, group_drop), found in lake_families(lake, site, method, drop_first, min_jaccard).items():
        table = _family_table(found)
        family_tables.append(table.with_columns(site=pl.lit(group_site), method=pl.lit(group_method)))
        name = f"families_{group_site}_{group_method}_{group_drop}"
        paths = save_figure(family_flow_figure(found), figures_dir / name)
        figures += paths
        doc.figure(paths, out, f"Token-cluster families across layers ({group_site}, {group_method}, drop_first={group_drop})")
        doc.table(table, "Families: clusters linked across layers by Jaccard of their positions; lineage joins models")
    families = pl.concat(family_tables, how="diagonal") if family_tables else pl.DataFrame()

    html_path, md_path = out / "index.html", out / "report.md"
    html_path.write_text(doc.render_html(), encoding="utf-8")
    md_path.write_text(doc.render_md(), encoding="utf-8")
    return Report(
        html=html_path,
        markdown=md_path,
        figures=figures,
        metrics=metrics,
        top_tokens=top_tokens,
        families=families,
        artifacts=artifacts,
        sections=dict(doc.sections),
    )


def _drop_first_comparison(curves_all: pl.DataFrame, artifacts: pl.DataFrame) -> pl.DataFrame:
    keys = ["model", "site", "method", "layer"]
    flagged = artifacts.group_by(*keys, "drop_first").agg(pl.len().alias("artifact_clusters"))
    scores = (
        curves_all.select(*keys, "drop_first", "r2", "z", "spec_mean")
        .join(flagged, on=[*keys, "drop_first"], how="left")
        .with_columns(pl.col("artifact_clusters").fill_null(0))
    )
    wide = scores.pivot(on="drop_first", index=keys, values=["r2", "z", "artifact_clusters"])
    return wide.sort(keys)


def _layer_figures(
    doc: _Document,
    lake: Lake,
    out: Path,
    figures_dir: Path,
    row: dict,
    spread: pl.DataFrame,
    null_samples: Mapping[LayerKey, np.ndarray] | None,
    n_permutations: int,
    seed: int,
) -> list[Path]:
    model, site, layer, method, drop = row["model"], row["site"], row["layer"], row["method"], row["drop_first"]
    name = f"{model}_{site}_{layer}"
    title = f"{model} {site} layer {layer} ({row['row_k']}x{row['col_k']})"
    doc.heading(title, 3)
    paths: list[Path] = []
    grid = run_query(lake, "grid_surface", {"model": model, "site": site, "layer": layer, "method": method, "drop_first": drop})
    fig_paths = save_figure(grid_figure(grid, title), figures_dir / f"grid_{name}")
    doc.figure(fig_paths, out, f"R² and Z over the grid, {title}; the selected point boxed")
    paths += fig_paths
    key = partition_key("activations", model=model, site=site, layer=layer)
    if lake.manifest(key) is None:
        doc.paragraph(f"No activations for {key} in the lake: bicluster map and null skipped.")
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
    doc.figure(fig_paths, out, f"Bicluster map, {title}: rows and columns sorted by cluster, block-averaged")
    paths += fig_paths
    given = (null_samples or {}).get((model, site, layer))
    if given is not None:
        null, observed = np.asarray(given), float(row["r2"])
        caption = f"Permutation null from the pipeline, {title}, observed R² marked"
    else:
        null, observed = label_shuffle_null(matrix, token_labels, neuron_labels, n_permutations, seed)
        caption = (
            f"Label-shuffle null of block-mean R², recomputed for this figure ({n_permutations} permutations, "
            f"seed {seed}), {title}"
        )
    fig_paths = save_figure(null_figure(null, observed, "block-mean R²", title), figures_dir / f"null_{name}")
    doc.figure(fig_paths, out, caption)
    return paths + fig_paths


def _cluster_sections(
    doc: _Document, curves: pl.DataFrame, top_tokens: pl.DataFrame, spread: pl.DataFrame, snippets: pl.DataFrame
) -> None:
    keys = ["model", "site", "method", "layer"]
    for layer_row in curves.sort(keys).iter_rows(named=True):
        select = pl.all_horizontal(pl.col(name) == layer_row[name] for name in keys)
        layer_spread = spread.filter(select).sort("token_cluster")
        layer_top = top_tokens.filter(select)
        layer_snips = snippets.filter(select) if not snippets.is_empty() else snippets
        title = f"{layer_row['model']} {layer_row['site']} layer {layer_row['layer']} ({layer_row['method']})"
        html_rows, md_rows = [], []
        for cluster in layer_spread.iter_rows(named=True):
            number = cluster["token_cluster"]
            tops = layer_top.filter(pl.col("token_cluster") == number)
            top_text = ", ".join(
                f"{_token_text(t)!r} ×{c} (lift {lift:.3g})" for t, c, lift in zip(tops["token"], tops["count"], tops["lift"], strict=True)
            )
            snips = (
                layer_snips.filter(pl.col("token_cluster") == number) if not layer_snips.is_empty() else layer_snips
            )
            flag = "position artifact" if cluster["position_artifact"] else ""
            kwic_html = "<br>".join(
                f'<span class="kw">…{html.escape(_token_text(s["left"]))}<b>{html.escape(_token_text(s["keyword"]))}</b>'
                f'{html.escape(_token_text(s["right"]))}…</span>'
                for s in snips.iter_rows(named=True)
            )
            kwic_md = " / ".join(
                f"…{_token_text(s['left'])}{' ' if s['keyword'][:1].isspace() else ''}"
                f"**{_token_text(s['keyword']).strip() or '␣'}**{_token_text(s['right'])}…"
                for s in snips.iter_rows(named=True)
            )
            spread_text = (
                f"{cluster['n_tokens']} tokens, {cluster['n_docs']} docs (top doc {cluster['top_doc_share']:.0%}), "
                f"top seq_pos {cluster['top_seq_pos']} ({cluster['top_seq_pos_share']:.0%})"
            )
            html_rows.append(
                f"<tr><td>{number}</td><td>{html.escape(spread_text)}</td><td class=\"flag\">{flag}</td>"
                f"<td><code>{html.escape(top_text)}</code></td><td>{kwic_html}</td></tr>"
            )
            md_rows.append(
                f"| {number} | {spread_text} | {flag} | {top_text.replace('|', chr(92) + '|')} | {kwic_md.replace('|', chr(92) + '|')} |"
            )
        header = "<tr><th>cluster</th><th>spread</th><th>flag</th><th>top tokens by lift</th><th>in context</th></tr>"
        doc.raw(
            f"<details><summary>{html.escape(title)}</summary><table><thead>{header}</thead>"
            f"<tbody>{''.join(html_rows)}</tbody></table></details>",
            f"**{title}**\n\n| cluster | spread | flag | top tokens by lift | in context |\n|---|---|---|---|---|\n"
            + "\n".join(md_rows),
        )


def _family_table(found: Families) -> pl.DataFrame:
    columns = [
        "family", "model", "kind", "first_layer", "last_layer", "n_clusters", "max_size", "n_splits", "n_merges",
        "label", "position_artifact", "lineage", "matches",
    ]
    return found.families.select([name for name in columns if name in found.families.columns])
