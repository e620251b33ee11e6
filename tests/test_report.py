# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.report: the self-contained HTML report of a nuclei and a Ki-67 run, read back by parsing it."""

import base64
import csv
import io
from html.parser import HTMLParser

import pytest
from PIL import Image


class _Report(HTMLParser):
    """Every <img src>, and the cells of each table by its id."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self._table, self._cell, self.links = [], {}, None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(path):
    p = _Report()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _check_embedded(images):
    assert images
    for src in images:  # every image is in the file itself, and decodes
        head, _, data = src.partition(";base64,")
        assert head in ("data:image/png", "data:image/jpeg"), src[:40]
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.size[0] > 10


def test_nuclei_report_embeds_its_images_and_matches_the_summary(tmp_path, nuclei_runner):
    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile

    for s in range(2):
        write_image(tmp_path / "in" / f"t{s}.png", synthetic_he_tile(192, seed=s)[0])
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    nuclei_runner(tmp_path / "in", tmp_path / "out").run()
    rep = _parse(tmp_path / "out" / "report.html")
    _check_embedded(rep.images)
    assert not rep.links  # nothing to fetch: no stylesheet or script from elsewhere
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    summary = dict(rep.tables["summary"])
    assert int(summary["images"]) == len(rows) == 2
    n = sum(int(r["n_nuclei"]) for r in rows)
    assert int(summary["nuclei"]) == n and n > 0
    assert dict(rep.tables["classes"][1:]) == {"Nucleus": str(n)}  # one class, every measured nucleus
    tissue = sum(float(r["tissue_mm2"]) for r in rows)
    assert float(summary["nuclei per mm^2 of tissue"]) == pytest.approx(n / tissue, rel=1e-3)
    assert int(summary["skipped files"]) == 1
    assert "broken.png" in (tmp_path / "out" / "report.html").read_text()
    per_image = rep.tables["images"]
    assert [r[0] for r in per_image[1:]] == [r["image"] for r in rows]


def test_ki67_report_counts_classes_and_shows_the_index(tmp_path):
    from bundle.inferers import TilePredictor
    from bundle.io import write_image
    from bundle.ki67.data import synthetic_ihc_tile
    from bundle.ki67.points import Ki67Cells
    from bundle.ki67.runner import Ki67Runner

    for s in range(2):
        write_image(tmp_path / "in" / f"k{s}.png", synthetic_ihc_tile(160, n_positive=5, n_negative=7, radius=7,
                                                                      seed=s)[0])
    summary = Ki67Runner(None, str(tmp_path / "in"), tmp_path / "out", method="classical",
                         predictor=TilePredictor(tta=False), cells=Ki67Cells(nucleus_diameter=14)).run()
    rep = _parse(tmp_path / "out" / "report.html")
    _check_embedded(rep.images)
    table = dict(rep.tables["summary"])
    assert int(table["positive"]) == summary["n_positive"] and int(table["negative"]) == summary["n_negative"]
    classes = dict(rep.tables["classes"][1:])
    assert int(classes.get("Positive", 0)) == summary["n_positive"]
    assert int(classes.get("Negative", 0)) == summary["n_negative"]
    assert float(table["Ki-67 index"]) == pytest.approx(summary["ki67_index"], abs=1e-4)
    low, high = (float(v) for v in table["95 % CI"].split(" - "))
    assert low <= summary["ki67_index"] <= high
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    density = sum(int(r["n_cells"]) for r in rows) / sum(float(r["tissue_mm2"]) for r in rows)
    assert float(table["cells per mm^2 of tissue (tiles)"]) == pytest.approx(density, rel=1e-3)


def test_report_of_a_folder_without_a_run_names_it(tmp_path):
    from bundle.report import write_report

    with pytest.raises(FileNotFoundError, match="summary.csv"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_report_renders_in_a_headless_browser_without_console_errors(tmp_path, nuclei_runner):
    """Opened by a real browser (headless Chromium, where one is installed: not on the CI machine), the report
    renders its tables and logs nothing to the console."""
    import shutil
    import subprocess

    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium on this machine")
    write_image(tmp_path / "in" / "t0.png", synthetic_he_tile(160, seed=0)[0])
    nuclei_runner(tmp_path / "in", tmp_path / "out").run()
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        "--dump-dom", (tmp_path / "out" / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    assert '<table id="summary">' in r.stdout and '<table id="images">' in r.stdout
    assert r.stdout.count("<img ") >= 3  # two histograms and the example overlay
    assert not [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
