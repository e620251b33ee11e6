# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""A self-contained HTML report of one inference run (issue 31): one file, every image embedded as a ``data:`` URI,
so it opens offline in any browser and can be mailed as it is.

:func:`write_report` reads what a runner already wrote into its output folder (``summary.csv`` / ``summary.json``,
``measurements/`` or ``points/`` CSVs, ``overlays/``) and adds ``report.html``: the folder's summary table (counts
per class, density per mm^2 of tissue, size statistics, the Ki-67 index with its 95 % interval), a grid of example
overlays, size and stain-intensity histograms (matplotlib), the Ki-67 hotspot of slides, the settings and bundle
version that produced it, and the files that were skipped. Templates by Jinja2 (autoescaped: file names are data).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["folder_tables", "write_report"]

MAX_EXAMPLES = 12
THUMB_SIDE = 360

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.t,th.t{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0;font-size:12px;text-align:center}
.grid img{max-width:{{ thumb }}px;border:1px solid #ccc}.warn{color:#a33}
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ workflow }} results of {{ n_images }} image(s) in <code>{{ output_dir }}</code>; bundle {{ version }}.</p>
<h2>Summary</h2>
<table id="summary">{% for k, v in summary %}<tr><th class="t">{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Counts per class</h2>
<table id="classes"><tr><th class="t">class</th><th>cells</th></tr>
{% for k, v in classes %}<tr><td class="t">{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% if hotspots %}<h2>Ki-67 hotspot (per slide)</h2>
<table id="hotspots"><tr><th class="t">slide</th><th>hotspot index</th><th>95 % CI</th></tr>
{% for h in hotspots %}<tr><td class="t">{{ h[0] }}</td><td>{{ h[1] }}</td><td>{{ h[2] }}</td></tr>{% endfor %}
</table>{% endif %}
{% if plots %}<h2>Distributions</h2><div class="grid">
{% for name, uri in plots %}<figure><img src="{{ uri }}" alt="{{ name }}">
<figcaption>{{ name }}</figcaption></figure>
{% endfor %}</div>{% endif %}
{% if examples %}<h2>Examples</h2><div class="grid">
{% for name, uri in examples %}<figure><img src="{{ uri }}" alt="{{ name }}">
<figcaption>{{ name }}</figcaption></figure>
{% endfor %}</div>{% endif %}
<h2>Per image</h2>
<div style="overflow-x:auto"><table id="images"><tr>{% for c in columns %}<th class="t">{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in columns %}<td>{{ r.get(c, "") }}</td>{% endfor %}</tr>{% endfor %}</table></div>
<h2>Skipped files</h2>
{% if skipped %}<ul id="skipped">{% for s in skipped %}<li class="warn">{{ s }}</li>{% endfor %}</ul>
{% else %}<p id="skipped">none</p>{% endif %}
<h2>Settings</h2>
<table id="settings">{% for k, v in settings %}<tr><th class="t">{{ k }}</th><td class="t">{{ v }}</td></tr>
{% endfor %}</table>
</body></html>
"""


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([x for x in (_num(r.get(key)) for r in rows) if x is not None], float)


def _png_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _thumbnail_uri(path: Path, side: int = THUMB_SIDE) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return _png_uri(buf.getvalue(), "image/jpeg")


def _histogram_uri(values: np.ndarray, xlabel: str, title: str, threshold: float | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 2.8), dpi=100)
    ax = fig.add_subplot()
    if threshold is None:
        ax.hist(values, bins=40, color="#3b7dd8")
    else:  # two colours: below (negative) and at or above the threshold (positive)
        edges = np.histogram_bin_edges(values, bins=40)
        ax.hist(values[values < threshold], bins=edges, color="#1f77b4", label="negative")
        ax.hist(values[values >= threshold], bins=edges, color="#d62728", label="positive")
        ax.axvline(threshold, color="k", lw=1)
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cells")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _png_uri(buf.getvalue())


def _fmt(v, digits: int = 4):
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):  # 4 significant digits, never in exponent form for large values
        return f"{float(v):.0f}" if abs(float(v)) >= 10 ** digits else f"{float(v):.{digits}g}"
    return str(v)


def folder_tables(output_dir: str | os.PathLike) -> dict:
    """The numbers :func:`write_report` shows, from the files of a nuclei or Ki-67 run in ``output_dir``:
    ``workflow`` ("nuclei" / "ki67"), ``rows`` (summary.csv), ``summary`` ([(name, value)]), ``classes``
    ([(class, count)]), ``cells`` (per-cell rows of ``measurements/`` or ``points/``), ``skipped``."""
    out = Path(output_dir)
    if not (out / "summary.csv").is_file():
        raise FileNotFoundError(f"{out / 'summary.csv'}: no summary to report (run inference into {out} first)")
    rows = _read_csv(out / "summary.csv")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    ki67 = "n_positive" in (rows[0] if rows else {})
    cell_dir = out / ("points" if ki67 else "measurements")
    cells = [c for p in sorted(cell_dir.glob("*.csv")) for c in _read_csv(p)] if cell_dir.is_dir() else []
    classes: dict[str, int] = {}
    for c in cells:
        classes[c.get("class", "")] = classes.get(c.get("class", ""), 0) + 1
    table = [("images", len(rows))]
    if ki67:
        n_pos, n_neg = int(_column(rows, "n_positive").sum()), int(_column(rows, "n_negative").sum())
        table += [("cells", n_pos + n_neg), ("positive", n_pos), ("negative", n_neg)]
        if summary.get("ki67_index") not in (None, ""):
            table += [("Ki-67 index", _fmt(summary["ki67_index"])),
                      ("95 % CI", f"{_fmt(summary['ki67_index_ci_low'])} - {_fmt(summary['ki67_index_ci_high'])}")]
        else:
            table += [("Ki-67 index", "none (no DAB signal)")]
        tissue = _column(rows, "tissue_mm2").sum()
        if tissue > 0:
            table += [("tissue mm^2 (tiles)", _fmt(tissue)),
                      ("cells per mm^2 of tissue (tiles)", _fmt(_column([r for r in rows if _num(r.get("tissue_mm2"))],
                                                                        "n_cells").sum() / tissue))]
        if not cells:
            classes = {"Positive": n_pos, "Negative": n_neg}
    else:
        n = int(_column(rows, "n_nuclei").sum())
        table.append(("nuclei", n))
        tissue = _column(rows, "tissue_mm2").sum()
        if tissue > 0:
            table += [("tissue mm^2", _fmt(tissue)), ("nuclei per mm^2 of tissue", _fmt(n / tissue))]
        area = _column(cells, "area_um2")
        if len(area):
            q1, med, q3 = np.percentile(area, [25, 50, 75])
            table.append(("nucleus area um^2, median (IQR)", f"{_fmt(med)} ({_fmt(q1)} - {_fmt(q3)})"))
        if not cells:
            classes = {"nucleus": n}
    sec = _column(rows, "seconds")
    if len(sec):
        table.append(("seconds per image", _fmt(sec.mean(), 3)))
    skipped = summary.get("skipped") or []
    table.append(("skipped files", len(skipped)))
    return {"workflow": "ki67" if ki67 else "nuclei", "rows": rows, "summary": table,
            "classes": sorted(classes.items()), "cells": cells, "skipped": skipped, "json": summary}


def write_report(output_dir: str | os.PathLike, title: str | None = None, settings: dict | None = None,
                 path: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (or ``path``) for the nuclei or Ki-67 run in ``output_dir``; returns its path.
    ``settings``: what produced the run (shown as a table beside the bundle version)."""
    import jinja2

    import bundle
    from bundle.io import atomic_path

    out = Path(output_dir)
    t = folder_tables(out)
    plots = []
    if t["workflow"] == "ki67":
        dab = _column(t["cells"], "dab_od")
        thr = _num(t["json"].get("dab_threshold"))
        if len(dab):
            plots.append(("nucleus DAB OD", _histogram_uri(dab, "nucleus DAB OD (mean)", "DAB per cell", thr)))
    else:
        area = _column(t["cells"], "area_um2")
        if len(area):
            plots.append(("nucleus area", _histogram_uri(area, "area (um^2)", "nucleus area")))
        hem = _column(t["cells"], "hematoxylin_od_mean")
        if len(hem):
            plots.append(("haematoxylin OD", _histogram_uri(hem, "haematoxylin OD (mean)", "nucleus haematoxylin")))
    ov = sorted((out / "overlays").glob("*.png")) if (out / "overlays").is_dir() else []
    if len(ov) > MAX_EXAMPLES:
        ov = [ov[i] for i in np.linspace(0, len(ov) - 1, MAX_EXAMPLES).round().astype(int)]
    examples = [(p.stem, _thumbnail_uri(p)) for p in ov]
    hotspots = [(r["image"], r["hotspot_ki67_index"], f"{r.get('hotspot_ki67_index_ci_low', '')} - "
                 f"{r.get('hotspot_ki67_index_ci_high', '')}") for r in t["rows"] if r.get("hotspot_ki67_index")]
    columns = list(dict.fromkeys(k for r in t["rows"] for k in r))
    shown = [{k: (v if k == "image" or _num(v) is None or float(v).is_integer() else _fmt(float(v)))
              for k, v in r.items()} for r in t["rows"]]  # numbers to 4 significant digits
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_TEMPLATE).render(
        title=title or f"{'Ki-67' if t['workflow'] == 'ki67' else 'Nuclei'} report: {out.name}",
        workflow="Ki-67" if t["workflow"] == "ki67" else "Nuclei", n_images=len(t["rows"]), output_dir=str(out),
        version=bundle.__version__, summary=t["summary"], classes=t["classes"], hotspots=hotspots, plots=plots,
        examples=examples, columns=columns, rows=shown, skipped=t["skipped"], thumb=THUMB_SIDE,
        settings=[(k, _fmt(v)) for k, v in (settings or {}).items()])
    path = Path(path) if path is not None else out / "report.html"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    return path
