"""The report holds every figure and table, and opens in headless Chromium with its figures loaded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.analysis_lake import build_fixture_lake
from tnb.report import ReportError, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    return build_fixture_lake(tmp_path_factory.mktemp("report") / "lake")


@pytest.fixture(scope="module")
def report(lake, tmp_path_factory: pytest.TempPathFactory):
    null = np.linspace(0.05, 0.07, 100)
    return write_report(
        lake.root, tmp_path_factory.mktemp("out") / "report", null_samples={("small", "resid", 2): null}
    )


def test_report_contains_every_figure(report) -> None:
    page = report.html.read_text()
    markdown = report.markdown.read_text()
    pngs = [path for path in report.figures if path.suffix == ".png"]
    # emergence + families + (grid, map, null) for the highest-Z layer of each of 2 models
    assert len(pngs) == 8 and len(report.figures) == 16
    for path in report.figures:
        assert path.is_file() and path.stat().st_size > 1000
        rel = path.relative_to(report.html.parent).as_posix()
        assert rel in page and rel in markdown
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(p.relative_to(report.html.parent).as_posix() for p in pngs)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not load anything from the network"


def test_report_contains_every_table(report) -> None:
    page = report.html.read_text()
    for section in ("Emergence curves", "Metrics", "Effect of dropping the first positions", "Position artifacts",
                    "Bicluster maps, grids and nulls", "Token clusters per layer", "Circuit families"):
        assert f"<h2>{section}</h2>" in page and section in report.sections
    assert report.metrics.height == 8  # one selected grid point per layer: 3 (small) + 5 (large)
    assert report.artifacts.height == 8 and (report.artifacts["top_seq_pos"] == 0).all()
    # drop_first comparison: small layers 1-2 have both, so both r2 columns are filled there
    assert "r2_0" in report.sections["Effect of dropping the first positions"]
    assert page.count("<details><summary>") == 8
    assert set(report.families["kind"]) == {"persistent", "split", "merge"}
    assert "small/F1" in page and "large/F2" in page


def test_clusters_show_top_tokens_and_snippets(report) -> None:
    page = report.html.read_text()
    small_1 = page.split("<summary>small resid layer 1 (biclustering)</summary>")[1].split("</details>")[0]
    assert "&#x27; senate&#x27; ×" in small_1 and "position artifact" in small_1
    # keyword in context: the keyword bold, context from its own sequence
    snippets = re.findall(r'<span class="kw">…(.*?)<b>(.*?)</b>(.*?)…</span>', small_1)
    assert len(snippets) == 4 * 3
    assert any(keyword == " senate" for _, keyword, _ in snippets)
    md = report.markdown.read_text()
    assert "**small resid layer 1 (biclustering)**" in md and "**senate**" in md


def test_null_samples_from_the_pipeline_are_used(report) -> None:
    page = report.html.read_text()
    assert "Permutation null from the pipeline, small resid layer 2" in page
    assert "Label-shuffle null of block-mean R², recomputed for this figure (200 permutations, seed 0), large" in page


def test_report_on_an_empty_lake_says_what_to_run(tmp_path: Path) -> None:
    from tnb.analysis_cli import main
    from tnb.lake import Lake

    Lake(tmp_path / "empty")
    with pytest.raises(ReportError, match="run the bicluster stage first"):
        write_report(tmp_path / "empty", tmp_path / "out")
    assert main(["report", "--lake", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2


def _render(html: Path, profile: Path) -> str:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", html.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _image_check(dom: str) -> tuple[int, int]:
    found = re.search(r'id="image-check" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert found, "the page's load script did not run"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(report, tmp_path: Path) -> None:
    loaded, total = _image_check(_render(report.html, tmp_path / "profile"))
    assert (loaded, total) == (8, 8)
    # control: the same page with one figure missing is caught
    broken = tmp_path / "broken"
    shutil.copytree(report.html.parent, broken)
    (broken / "figures" / "emergence.png").unlink()
    loaded, total = _image_check(_render(broken / "index.html", tmp_path / "profile2"))
    assert (loaded, total) == (7, 8)


def test_cli_report_writes_index_html(lake, tmp_path: Path, capsys) -> None:
    from tnb.analysis_cli import main

    out = tmp_path / "cli"
    assert main(["report", "--lake", str(lake.root), "--out", str(out), "--drop-first", "1"]) == 0
    assert (out / "index.html").is_file() and (out / "report.md").is_file()
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "drop_first=1" in page and "small resid layer 1 (biclustering)" in page
    assert "large resid layer" not in page.split("<h2>Token clusters per layer</h2>")[1].split("<h2>")[0]
