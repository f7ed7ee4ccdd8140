"""The report holds every figure and table, and opens in headless Chromium with its figures loaded and its tables inside a 1,400 px window."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

import tnb.report
from tests.fixtures.analysis_lake import build_fixture_lake
from tnb.report import ReportError, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    return build_fixture_lake(tmp_path_factory.mktemp("report") / "lake")


@pytest.fixture(scope="module")
def report(lake, tmp_path_factory: pytest.TempPathFactory):
    return write_report(lake.root, tmp_path_factory.mktemp("out") / "report")


@pytest.fixture(scope="module")
def nothing_report(tmp_path_factory: pytest.TempPathFactory):
    """The same clusters, but no layer of any model beats its null."""
    lake = build_fixture_lake(tmp_path_factory.mktemp("nothing") / "lake", significant=False)
    return write_report(lake.root, tmp_path_factory.mktemp("out") / "nothing")


def test_report_contains_every_figure(report) -> None:
    page = report.html.read_text()
    markdown = report.markdown.read_text()
    pngs = [path for path in report.figures if path.suffix == ".png"]
    # emergence + topicality + families + (grid, null, map) for the best finding of each of 2 trained models
    assert len(pngs) == 9 and len(report.figures) == 18
    for path in report.figures:
        assert path.is_file() and path.stat().st_size > 1000
        rel = path.relative_to(report.html.parent).as_posix()
        assert rel in page and rel in markdown
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(p.relative_to(report.html.parent).as_posix() for p in pngs)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not load anything from the network"
    assert "<script" not in page.lower(), "the shipped page carries no script (the browser test brings its own probe)"


def test_report_contains_every_table(report) -> None:
    page = report.html.read_text()
    sections = ("Verdicts", "Emergence curves", "Metrics", "Topicality beyond token identity",
                "Effect of dropping the first positions", "Position artifacts", "Bicluster maps, grids and nulls",
                "Token clusters per layer", "Circuit families")
    for section in sections:
        assert f"<h2>{section}</h2>" in page and section in report.sections
    assert re.findall(r"<h2>(.*?)</h2>", page)[0] == "Verdicts"  # the report leads with its verdict
    assert report.metrics.height == 3 + 5 + 5  # one selected point per layer: small, large, large's twin
    assert report.artifacts.height == 8 and (report.artifacts["top_seq_pos"] == 0).all()
    # drop_first comparison: small layers 1-2 have both, so both r2 columns are filled there
    assert "p_layer_0" in report.sections["Effect of dropping the first positions"]
    assert page.count("<details><summary>") == 8
    assert set(report.families.filter(pl.col("n_clusters") > 1)["kind"]) == {"persistent", "split", "merge"}
    assert report.topicality.height == 13 and report.verdicts.height == 8
    assert "small/F1" in page and "large/F2" in page


def test_clusters_show_top_tokens_and_snippets(report) -> None:
    page = report.html.read_text()
    small_1 = page.split("<summary>small resid layer 1 (biclustering)</summary>")[1].split("</details>")[0]
    assert "' senate' ×" in html.unescape(small_1) and "position artifact" in small_1
    # keyword in context: the keyword bold, context from its own sequence
    snippets = re.findall(r'<span class="kw">…(.*?)<b>(.*?)</b>(.*?)…</span>', small_1)
    assert len(snippets) == 3 * 3  # P's four starters are seen 3 times each: below min_count (5), no top tokens
    assert any(keyword == " senate" for _, keyword, _ in snippets)
    md = report.markdown.read_text()
    assert "**small resid layer 1 (biclustering)**" in md and "**senate**" in md


def test_verdicts_lead_per_layer(report) -> None:
    verdicts = report.sections["Verdicts"]
    assert "large: findings (significant and stable) at layers 0, 1, 2, 3, 4; beyond its untrained twin at layers 0, 1, 2, 3, 4." in verdicts
    assert "small: findings (significant and stable) at layer 1; no untrained twin in the lake." in verdicts
    assert "No significant structure was found" not in verdicts
    assert "beat independent labellings and the twin's strongest link: large 3 (its untrained twin 0); small 3." in verdicts
    by_layer = dict(report.verdicts.filter(pl.col("model") == "small").select("layer", "verdict").iter_rows())
    assert by_layer[0].startswith("not significant")
    assert by_layer[2] == "significant (p_layer 0.025), not stable (stability 0.50), no twin to compare"
    assert "Z is the distance of the observed r2_interaction from the mean of the interaction_refit null" in verdicts


def test_nothing_significant_is_said_and_no_point_is_crowned(nothing_report) -> None:
    verdicts = nothing_report.sections["Verdicts"]
    assert verdicts.startswith("No significant structure was found: no layer of any model beats the interaction_refit null (39 draws)")
    assert "findings (significant and stable) at" not in verdicts
    assert not nothing_report.verdicts["significant"].any()
    names = [path.stem for path in nothing_report.figures if path.suffix == ".png"]
    assert not [name for name in names if name.startswith("map_")]  # no bicluster map drawn as a finding
    maps = nothing_report.sections["Bicluster maps, grids and nulls"]
    assert "not significant: shown for reference, not a finding" in maps
    assert "No bicluster map for large: none of its layers is significant." in maps


def test_nulls_are_the_pipelines_own_draws(report) -> None:
    assert not hasattr(tnb.report, "label_shuffle_null") and not hasattr(tnb.report, "block_r2")
    page = report.html.read_text()
    assert "The pipeline's own 39 interaction_refit null draws on the matrix it clustered, small resid layer 1" in html.unescape(page)
    assert "recomputed" not in page


def test_every_figure_says_what_it_is_compared_against(report) -> None:
    page = report.html.read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 9
    baselines = ("null", "twin", "token identity", "Gaussian noise")
    for caption in captions:
        if not caption.startswith("Bicluster map"):
            assert any(word in caption for word in baselines), caption
    for stem in ("grid_", "null_"):
        for caption in [c for c, p in zip(captions, re.findall(r'<img src="figures/([^"]+)"', page)) if p.startswith(stem)]:
            assert "Z is the distance" in caption and "p_layer" in caption


def test_report_on_an_empty_lake_says_what_to_run(tmp_path: Path) -> None:
    from tnb.cli import main
    from tnb.lake import Lake

    Lake(tmp_path / "empty")
    with pytest.raises(ReportError, match="run the bicluster stage first"):
        write_report(tmp_path / "empty", tmp_path / "out")
    assert main(["report", "--lake", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2


# The probe is the test's, added to a copy of the page: it opens every <details>, then
# records which figures loaded and whether any table reaches past the window's edge.
_PROBE = """<script>
window.addEventListener("load", function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  var width = document.documentElement.clientWidth, images = Array.from(document.images);
  var tables = Array.from(document.querySelectorAll("table"));
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    width: width, page_width: document.documentElement.scrollWidth, images: images.length, tables: tables.length,
    loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    wide: tables.filter(function (t) { return t.getBoundingClientRect().right > width; }).length,
  });
  document.body.appendChild(probe);
});
</script>"""


def _probe(report_dir: Path, profile: Path, style: str = "") -> dict:
    """Open a copy of the report with the probe (and ``style``) in headless Chromium at 1,400 x 900 px."""
    page = report_dir / "index.html"
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", f"{style}{_PROBE}</body>"))
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        "--hide-scrollbars", "--window-size=1400,900",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, "the probe did not run"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(report, tmp_path: Path) -> None:
    copy = tmp_path / "report"
    shutil.copytree(report.html.parent, copy)
    n_tables = report.html.read_text().count("<table")
    seen = _probe(copy, tmp_path / "profile")
    assert (seen["loaded"], seen["images"]) == (9, 9)
    assert seen["tables"] == n_tables > 10
    assert seen["width"] == 1400 and seen["wide"] == 0 and seen["page_width"] <= 1400, seen
    # controls: one figure missing is caught, and so are tables that cannot wrap
    (copy / "figures" / "emergence.png").unlink()
    seen = _probe(copy, tmp_path / "profile2", "<style>th, td, .kw, code { white-space: nowrap; }</style>")
    assert (seen["loaded"], seen["images"]) == (8, 9)
    assert seen["wide"] > 0 and seen["page_width"] > 1400, seen


def test_cli_report_writes_index_html(lake, tmp_path: Path, capsys) -> None:
    from tnb.cli import main

    out = tmp_path / "cli"
    assert main(["report", "--lake", str(lake.root), "--out", str(out), "--drop-first", "1"]) == 0
    assert (out / "index.html").is_file() and (out / "report.md").is_file()
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "drop_first=1" in page and "small resid layer 1 (biclustering)" in page
    assert "large resid layer" not in page.split("<h2>Token clusters per layer</h2>")[1].split("<h2>")[0]
