# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Whole-slide inference: wall time and peak memory of ``configs/inference.json`` on slides of growing size (issue 3).

Builds pyramidal TIFF "slides" (:func:`bundle.wsi.write_pyramid_tiff`, 0.25 um/px, 3 levels) as an ``n x n``
grid of 1000 px cells: tissue cells are MoNuSeg test images (cycled), the others glass (RGB 242), a checkerboard
so half the slide is tissue. For each size the bundle command runs in its own process under ``/usr/bin/time -v``
(peak RSS of that process):

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir SLIDE --bundle_root RUN \
        --output_dir OUT/SIZE

and the script records wall time, peak RSS, tiles and nuclei found. If memory is bounded by the tile, the peak RSS
stays about flat as the slide grows. For the first (smallest) slide it also runs ``inference.json`` on the test images
it holds, as tiles, and compares the two modes' nuclei (``agreement``): points matched one to one within 3 px, and
the detection F1 of each mode against the centroids of the ground-truth instances within 6 px (labels only score).

    python -m scripts.benchmark_wsi --monuseg ../shared/data/monuseg --run runs/pipe/default_hx --grids 4,8 \
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

from bundle.checkpoints import stage_checkpoint
from bundle.io import read_rgb, write_json
from bundle.label_free import child_env
from bundle.wsi import write_pyramid_tiff

ROOT = Path(__file__).resolve().parents[1]

CELL = 1000


def make_slide(path: Path, tiles: list, n: int):
    """Write an ``n x n``-cell checkerboard slide of ``tiles`` (cycled) and glass; returns (its tissue fraction,
    [(tile index, row, col) of every tissue cell])."""
    img = np.full((n * CELL, n * CELL, 3), 242, np.uint8)
    k, placed = 0, []
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                t = tiles[k % len(tiles)][:CELL, :CELL]
                img[i * CELL: i * CELL + t.shape[0], j * CELL: j * CELL + t.shape[1]] = t
                placed.append((k % len(tiles), i * CELL, j * CELL))
                k += 1
    write_pyramid_tiff(path, img, mpp=0.25, levels=3, tile=256)
    return k / (n * n), placed


def agreement(slide_csv: Path, tile_dir: Path, names: list, gts: list, placed: list) -> dict:
    """Slide-mode points against tile-mode points of the same images (one-to-one within 3 px), and each mode's
    detection F1 against the GT instance centroids (within 6 px), summed over the slide's tissue cells."""
    from skimage.measure import regionprops

    from bundle.annotations import read_point_table
    from bundle.metrics import match_points

    sl = read_point_table(slide_csv)["points"]
    c = {"matched": 0, "slide": 0, "tiles": 0, "gt": 0, "tp_slide": 0, "tp_tiles": 0}
    for k, r, col in placed:
        inside = (sl[:, 0] >= r) & (sl[:, 0] < r + CELL) & (sl[:, 1] >= col) & (sl[:, 1] < col + CELL)
        s = sl[inside] - np.array([r, col])
        t = read_point_table(tile_dir / "points" / f"{names[k]}.csv")["points"]
        g = np.array([p.centroid for p in regionprops(gts[k])]).reshape(-1, 2)
        c["matched"] += len(match_points(s[:, ::-1], t[:, ::-1], 3)[0])
        c["tp_slide"] += len(match_points(s[:, ::-1], g[:, ::-1], 6)[0])
        c["tp_tiles"] += len(match_points(t[:, ::-1], g[:, ::-1], 6)[0])
        c["slide"], c["tiles"], c["gt"] = c["slide"] + len(s), c["tiles"] + len(t), c["gt"] + len(g)
    c["agreement"] = c["matched"] / max(c["slide"], c["tiles"], 1)
    for m in ("slide", "tiles"):
        c[f"f1_{m}"] = 2 * c[f"tp_{m}"] / max(c[m] + c["gt"], 1)
    return c


def peak_rss_gb(time_v_stderr: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v_stderr)
    return int(m.group(1)) / 1024**2 if m else float("nan")


def run_inference(data: Path, run: Path, out: Path, env: dict, extra=(), config: str = "inference.json"):
    """``configs/<config>`` on ``data`` (plus ``extra`` command-line overrides) in its own process under
    ``/usr/bin/time -v`` -> (wall s, peak RSS GB, summary.json)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / config),
           "--dataset_dir", str(data), "--bundle_root", str(run), "--output_dir", str(out), *extra,
           "--meta_file", str(ROOT / "configs" / "metadata.json"),
           "--logging_file", str(ROOT / "configs" / "logging.conf")]
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{config} failed on {data}: {p.stderr[-1500:]}")
    return wall, peak_rss_gb(p.stderr), json.loads((out / "summary.json").read_text())


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
    ag = next((r["agreement"] for r in res["rows"] if "agreement" in r), None)
    if ag:
        lines += ["", f"Slide mode against tile mode ({res['rows'][0]['side_px']}-px slide; its tissue cells run "
                  f"again as the original test images): {ag['slide']} nuclei on the slide, {ag['tiles']} from the tiles, "
                  f"{ag['matched']} matched one to one within 3 px (agreement {ag['agreement']:.3f}). Detection F1 "
                  f"against the {ag['gt']} ground-truth instance centroids (6 px): slide {ag['f1_slide']:.3f}, tiles "
                  f"{ag['f1_tiles']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="bundle root with a trained seg network (models/model.pt)")
    ap.add_argument("--grids", default="4,8", help="slide sides in 1000-px cells")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi_benchmark"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--wsi_min_tissue", type=float, default=None, help="passed to inference.json (default: its own)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/wsi_benchmark"))
    a = ap.parse_args(argv)
    ckpt = stage_checkpoint(a.run, "seg")
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: no trained seg network")
    ckpt_arg = ("--ckpt_path", str(ckpt))
    paths = sorted((a.monuseg / "test" / "images").glob("*.png"))
    tiles = [read_rgb(p) for p in paths]
    if not tiles:
        raise SystemExit(f"{a.monuseg / 'test' / 'images'}: no images")
    a.work.mkdir(parents=True, exist_ok=True)
    env = child_env(OMP_NUM_THREADS=a.threads)
    rows = []
    for n in [int(g) for g in a.grids.split(",")]:
        slide = a.work / f"slide_{n * CELL}.tif"
        tissue, placed = make_slide(slide, tiles, n)
        out = a.work / f"out_{n * CELL}"
        extra = ckpt_arg + (() if a.wsi_min_tissue is None else ("--wsi#min_tissue", str(a.wsi_min_tissue)))
        wall, rss, summary = run_inference(slide, a.run, out, env, extra)
        row = {"side_px": n * CELL, "megapixels": (n * CELL) ** 2 / 1e6, "tissue_fraction": tissue,
               "slide_mb": slide.stat().st_size / 1e6, "wall_s": wall, "peak_rss_gb": rss,
               "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}
        if not rows:  # the smallest slide: the same images as tiles, and the two modes' nuclei compared
            from bundle.annotations import read_instance_label

            used = sorted({k for k, _, _ in placed})
            tile_dir = a.work / "tiles"
            tile_dir.mkdir(exist_ok=True)
            for k in used:
                shutil.copy(paths[k], tile_dir / paths[k].name)
            tw, trss, _ = run_inference(tile_dir, a.run, a.work / "out_tiles", env, ckpt_arg)
            gts = {k: read_instance_label(a.monuseg / "test" / "labels" / paths[k].name) for k in used}
            row["agreement"] = {**agreement(out / "points" / f"{slide.stem}.csv", a.work / "out_tiles",
                                            [p.stem for p in paths], [gts.get(k) for k in range(len(paths))], placed),
                                "tiles_wall_s": tw, "tiles_peak_rss_gb": trss}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = ["python", "-m", "scripts.benchmark_wsi", *sys.argv[1:]]
    res = {"command": " ".join(shlex.quote(x) for x in command), "threads": a.threads,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "date": time.strftime("%Y-%m-%d"),
           "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), res)
    a.out.with_suffix(".md").write_text(render_md(res))
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
