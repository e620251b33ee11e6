#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Whole-slide inference: wall time and peak memory of ``configs/inference.json`` on slides of growing size (issue 3).

Builds pyramidal TIFF "slides" (:func:`bundle.wsi.write_pyramid_tiff`, 0.25 um/px, 3 levels) as an ``n x n``
grid of 1000 px cells: tissue cells are MoNuSeg test images (cycled), the others glass (RGB 242), a checkerboard
so half the slide is tissue. For each size the bundle command runs in its own process under ``/usr/bin/time -v``
(peak RSS of that process):

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir SLIDE --bundle_root RUN \
        --output_dir OUT/SIZE

and the script records wall time, peak RSS, tiles and nuclei found. If memory is bounded by the tile, the peak RSS
stays about flat as the slide grows.

    python scripts/benchmark_wsi.py --monuseg ../shared/data/monuseg --run runs/pipe/default_hx --grids 4,8 \
        --out docs/results/wsi_benchmark

Writes ``<out>.json`` and ``<out>.md``; the slides and outputs go to ``--work`` (deleted unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.io import read_rgb, write_json  # noqa: E402
from bundle.wsi import write_pyramid_tiff  # noqa: E402

CELL = 1000


def make_slide(path: Path, tiles: list, n: int) -> float:
    """Write an ``n x n``-cell checkerboard slide of ``tiles`` (cycled) and glass; returns its tissue fraction."""
    img = np.full((n * CELL, n * CELL, 3), 242, np.uint8)
    k = 0
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                t = tiles[k % len(tiles)][:CELL, :CELL]
                img[i * CELL: i * CELL + t.shape[0], j * CELL: j * CELL + t.shape[1]] = t
                k += 1
    write_pyramid_tiff(path, img, mpp=0.25, levels=3, tile=256)
    return k / (n * n)


def peak_rss_gb(time_v_stderr: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v_stderr)
    return int(m.group(1)) / 1024**2 if m else float("nan")


def render_md(res: dict) -> str:
    lines = ["# Whole-slide inference: time and peak memory against slide size", "",
             f"Command: `{res['command']}` ({res['date']}, {res['machine']['cpus']} CPUs, OMP_NUM_THREADS "
             f"{res['threads']}). Each slide: `configs/inference.json` in its own process (flip TTA, haematoxylin "
             "blend, point-seeded watershed), peak RSS by `/usr/bin/time -v`. Tiles: 1024 px cores with tissue "
             "(the slides' 1000-px cells do not line up with them, so most tiles touch tissue).", "",
             "| slide side (px) | megapixels | tissue | file (MB) | tiles run | nuclei | wall (s) | s per tile | "
             "peak RSS (GB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        n = r["summary"].get("tiles", 0)
        lines.append(f"| {r['side_px']} | {r['megapixels']:.0f} | {r['tissue_fraction']:.2f} | {r['slide_mb']:.0f} | "
                     f"{n:.0f} | {r['summary'].get('n_nuclei', 0):.0f} | {r['wall_s']:.0f} | "
                     f"{r['wall_s'] / max(n, 1):.2f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="bundle root with models/seg/model.pt")
    ap.add_argument("--grids", default="4,8", help="slide sides in 1000-px cells")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi_benchmark"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("docs/results/wsi_benchmark"))
    a = ap.parse_args(argv)
    if not (a.run / "models" / "seg" / "model.pt").is_file():
        raise SystemExit(f"{a.run / 'models' / 'seg' / 'model.pt'}: no trained seg network")
    tiles = [read_rgb(p) for p in sorted((a.monuseg / "test" / "images").glob("*.png"))]
    if not tiles:
        raise SystemExit(f"{a.monuseg / 'test' / 'images'}: no images")
    a.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    rows = []
    for n in [int(g) for g in a.grids.split(",")]:
        slide = a.work / f"slide_{n * CELL}.tif"
        tissue = make_slide(slide, tiles, n)
        out = a.work / f"out_{n * CELL}"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.json"),
               "--dataset_dir", str(slide), "--bundle_root", str(a.run), "--output_dir", str(out),
               "--meta_file", str(ROOT / "configs" / "metadata.json"),
               "--logging_file", str(ROOT / "configs" / "logging.conf")]
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"inference failed on {slide}: {p.stderr[-1500:]}")
        summary = json.loads((out / "summary.json").read_text())
        row = {"side_px": n * CELL, "megapixels": (n * CELL) ** 2 / 1e6, "tissue_fraction": tissue,
               "slide_mb": slide.stat().st_size / 1e6, "wall_s": wall, "peak_rss_gb": peak_rss_gb(p.stderr),
               "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"command": " ".join(shlex.quote(x) for x in ["python", *sys.argv]), "threads": a.threads,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "date": time.strftime("%Y-%m-%d"),
           "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), res)
    a.out.with_suffix(".md").write_text(render_md(res))
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
