# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 on a whole slide (issue 4): the slide mode of ``configs/ki67_infer.json`` against its tile mode.

Does the slide mode find the same cells as the tile mode, and what does it cost? Builds a pyramidal TIFF "slide"
(:func:`bundle.wsi.write_pyramid_tiff`, 0.25 um/px, 3 levels) from the BCData tiles laid side by side (``--cols``
per row, ``--gap`` px of glass between them) inside a glass border (RGB 242), so the slide's 1024-px analysis tiles
cut across the BCData tiles. With ``--gap 0`` a cell at a BCData tile's edge sees an
unrelated image beside it, a seam real slides do not have. Then runs, each in its own process under
``/usr/bin/time -v``:

    python -m monai.bundle run --config_file configs/ki67_infer.json --dataset_dir SLIDE --bundle_root ROOT ...
    python -m monai.bundle run --config_file configs/ki67_infer.json --dataset_dir BCDATA/images --bundle_root ROOT ...

and scores both against the BCData annotations (moved into slide pixels for the slide) with the same metric code as
``scripts.benchmark_ki67`` (one-to-one matching within 10 px, per tile, summed). Labels only score.

    python -m scripts.benchmark_ki67_wsi --data ../shared/data/bcdata_sample --root /tmp/krecipe --round 2 \
        --out docs/results/ki67_wsi

Writes ``<out>.json`` and ``<out>.md``; the slide and outputs go to ``--work`` (deleted unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bundle.annotations import read_point_table
from bundle.io import read_rgb, write_json
from bundle.ki67.data import read_bcdata_item
from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE
from bundle.label_free import child_env
from bundle.metrics import multiclass_point_scores
from bundle.wsi import write_pyramid_tiff
from scripts.benchmark_ki67 import tile_stems
from scripts.benchmark_wsi import run_inference

BORDER = 256
INNER = 20  # px: the band along each BCData tile's edge left out of the "inner" scores


def make_mosaic(path: Path, tiles: list, cols: int, gap: int = 0) -> list:
    """Write the tiles side by side (``cols`` per row, all the same size, ``gap`` px of glass between them) inside a
    glass border; returns each tile's (row, col) offset in the slide."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    img = np.full((rows * (h + gap) - gap + 2 * BORDER, cols * (w + gap) - gap + 2 * BORDER, 3), 242, np.uint8)
    offsets = []
    for k, t in enumerate(tiles):
        r, c = BORDER + (k // cols) * (h + gap), BORDER + (k % cols) * (w + gap)
        img[r: r + h, c: c + w] = t
        offsets.append((r, c))
    write_pyramid_tiff(path, img, mpp=0.25, levels=3, tile=256)
    return offsets


def score(pred: dict, gts: list, boxes: list, inner: int = 0) -> dict:
    """Summed TP / FP / FN over tiles (predictions assigned to the tile whose box holds them) -> P / R / F1 overall and
    per class, at 10 px. ``pred``: a :func:`bundle.annotations.read_point_table` table in the boxes' frame.
    ``inner`` > 0 scores only the points (predicted and annotated) at least that far inside their box."""
    c = {k: np.zeros(3, np.int64) for k in ("overall", POSITIVE, NEGATIVE)}
    yx, cls = pred["points"], np.where(pred["class"] == "Positive", POSITIVE, NEGATIVE)
    for (gxy, gcls), (r0, c0, r1, c1) in zip(gts, boxes):
        inside = ((yx[:, 0] >= r0 + inner) & (yx[:, 0] < r1 - inner) & (yx[:, 1] >= c0 + inner)
                  & (yx[:, 1] < c1 - inner))
        g = gxy + np.array([c0, r0])
        gin = (g[:, 1] >= r0 + inner) & (g[:, 1] < r1 - inner) & (g[:, 0] >= c0 + inner) & (g[:, 0] < c1 - inner)
        s = multiclass_point_scores(yx[inside][:, ::-1], cls[inside], g[gin], gcls[gin], 10, (POSITIVE, NEGATIVE))
        for k in c:
            c[k] += [s[k]["tp"], s[k]["fp"], s[k]["fn"]]
    out = {}
    for k, (tp, fp, fn) in c.items():
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        out[{"overall": "overall", POSITIVE: "positive", NEGATIVE: "negative"}[k]] = {
            "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12), "tp": int(tp), "fp": int(fp),
            "fn": int(fn)}
    return out


def run_infer(data, root: Path, round: int, out: Path, threads: int, hotspot_min_cells: int = 100) -> dict:
    env = child_env(OMP_NUM_THREADS=threads)
    wall, rss, summary = run_inference(data, root, out, env, ("--round", str(round), "--hotspot_min_cells",
                                                               str(hotspot_min_cells)), config="ki67_infer.json")
    return {"wall_s": wall, "peak_rss_gb": rss, "summary": summary}


def render_md(res: dict) -> str:
    lines = ["# Ki-67 on a whole slide: slide mode against tile mode (BCData mosaic)", "",
             f"Command: `{res['command']}` ({res['date']}, {res['machine']['cpus']} CPUs, OMP_NUM_THREADS "
             f"{res['threads']}). Slide: {res['slide']['n_tiles']} BCData tiles, {res['slide']['cols']} per row, "
             f"{res['slide']['gap']} px of glass between them, in a {BORDER}-px glass border: "
             f"{res['slide']['height']} x {res['slide']['width']} px, "
             f"{res['slide']['mb']:.0f} MB. Network: `{res['ckpt']}`. Matching radius 10 px, per tile, summed.", "",
             "| mode | overall P | overall R | **overall F1** | pos F1 | neg F1 | #pos | #neg | Ki-67 index | "
             "tiles run | wall (s) | peak RSS (GB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, key in (("tiles", "scores"), ("slide", "scores"), (f"tiles, >= {INNER} px inside", "scores_inner"),
                      (f"slide, >= {INNER} px inside", "scores_inner")):
        r = res[name.split(",")[0]]
        s, m = r[key], r["run"]["summary"]
        run = " | ".join(["-"] * 6)  # counts, time and memory belong to the whole run, not to the inner band
        if key == "scores":
            run = (f"{m['n_positive']} | {m['n_negative']} | {m['ki67_index']:.3f} | {r.get('tiles_run', '-')} | "
                   f"{r['run']['wall_s']:.0f} | {r['run']['peak_rss_gb']:.2f}")
        lines.append(f"| {name} | {s['overall']['precision']:.3f} | {s['overall']['recall']:.3f} | "
                     f"**{s['overall']['f1']:.3f}** | {s['positive']['f1']:.3f} | {s['negative']['f1']:.3f} | {run} |")
    h = res["slide"].get("hotspot")
    if h:
        lines += ["", f"Slide hotspot (the 1024-px tile with the highest index among tiles with at least "
                  f"{res['hotspot_min_cells']} cells): "
                  f"index {h['hotspot_ki67_index']} over {h['hotspot_cells']} cells at level-0 (x, y) = "
                  f"({h['hotspot_x']}, {h['hotspot_y']}); "
                  f"slide index {res['slide']['run']['summary']['ki67_index']:.3f}; "
                  f"annotated index of the {res['slide']['n_tiles']} tiles {res['gt_index']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="BCData folder (images/, annotations/)")
    ap.add_argument("--root", type=Path, required=True, help="bundle root with the trained Ki-67 network(s)")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--cols", type=int, default=6)
    ap.add_argument("--gap", type=int, default=64, help="glass between the BCData tiles (px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hotspot_min_cells", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ki67_wsi_benchmark"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("docs/results/ki67_wsi"))
    a = ap.parse_args(argv)
    ckpt = a.root / "models" / ("ki67" if a.round == 1 else f"ki67_r{a.round}") / "model.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: no trained Ki-67 network")
    stems = tile_stems(a.data / "images")
    if not stems:
        raise SystemExit(f"{a.data / 'images'}: no images")
    tiles = [read_rgb(a.data / "images" / f"{s}.png") for s in stems]
    gts = [tuple(np.asarray(v) for v in read_bcdata_item(a.data, s)) for s in stems]
    gts = [(g.astype(np.float64).reshape(-1, 2), c) for g, c in gts]
    a.work.mkdir(parents=True, exist_ok=True)
    slide = a.work / "bcdata_mosaic.tif"
    offsets = make_mosaic(slide, tiles, a.cols, a.gap)
    h, w = tiles[0].shape[:2]
    command = ["python", "-m", "scripts.benchmark_ki67_wsi", *sys.argv[1:]]
    res = {"command": " ".join(shlex.quote(x) for x in command), "threads": a.threads,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "date": time.strftime("%Y-%m-%d"),
           "ckpt": str(ckpt), "hotspot_min_cells": a.hotspot_min_cells,
           "gt_index": float(np.mean(np.concatenate([c for _, c in gts]) == POSITIVE))}

    run = run_infer(a.data / "images", a.root, a.round, a.work / "out_tiles", a.threads)
    pts = [read_point_table(a.work / "out_tiles" / "points" / f"{s}.csv") for s in stems]
    merged = {"points": np.concatenate([t["points"] + np.array(o) for t, o in zip(pts, offsets)]),
              "class": np.concatenate([t["class"] for t in pts])}
    boxes = [(r, c, r + h, c + w) for r, c in offsets]
    res["tiles"] = {"run": run, "scores": score(merged, gts, boxes), "scores_inner": score(merged, gts, boxes, INNER)}
    print("tiles", json.dumps(res["tiles"]["scores"]["overall"]), flush=True)

    run = run_infer(slide, a.root, a.round, a.work / "out_slide", a.threads, a.hotspot_min_cells)
    row = next(iter(_csv_rows(a.work / "out_slide" / "summary.csv")))
    spts = read_point_table(a.work / "out_slide" / "points" / f"{slide.stem}.csv")
    res["slide"] = {"run": run, "scores": score(spts, gts, boxes), "scores_inner": score(spts, gts, boxes, INNER),
                    "tiles_run": int(row["tiles"]), "hotspot": {k: row[k] for k in row if k.startswith("hotspot")},
                    "n_tiles": len(stems), "cols": a.cols, "gap": a.gap, "mb": slide.stat().st_size / 1e6,
                    "height": int(row["height"]), "width": int(row["width"])}
    print("slide", json.dumps(res["slide"]["scores"]["overall"]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), res)
    a.out.with_suffix(".md").write_text(render_md(res))
    print(render_md(res))
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


def _csv_rows(path: Path) -> list:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    main()
