#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Which points should the seg stage's Voronoi labels use? (issue 3 research; MoNuSeg **train** labels only score)

For each finished bundle root (``--runs NAME=ROOT``: ``eval/pseudo_masks/masks`` and the detection network's points
in ``eval/seg_labels/points``, as ``seg_train.json`` writes them with its default ``point_source det``), the points
of the detection network and the points taken from the pseudo masks themselves
(:func:`bundle.detection.mask_points`, peaks ``--min_distance`` px apart) are matched one to one against the
centroids of the annotated train nuclei within 6 and 10 px (:func:`bundle.metrics.point_scores`, pooled over the 30
train images). The test images are never read.

    python scripts/diagnose_seg_points.py --monuseg ../shared/data/monuseg \
        --runs hematoxylin=runs/pipe/hotsu_hx psm=runs/pipe/cl --out docs/results/seg_points_train

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.annotations import read_instance_label  # noqa: E402
from bundle.cells import read_points  # noqa: E402
from bundle.detection import instance_points, mask_points  # noqa: E402
from bundle.io import read_mask, write_json  # noqa: E402
from bundle.metrics import point_scores  # noqa: E402

RADII = (6, 10)


def pooled(pairs, radius) -> dict:
    """Precision / recall / F1 of (pred, gt) (row, col) point pairs, counts summed over images."""
    tp = n_pred = n_gt = 0
    for pred, gt in pairs:
        tp += point_scores(pred, gt, radius)["tp"]
        n_pred, n_gt = n_pred + len(pred), n_gt + len(gt)
    return {"n_points": n_pred, "precision": tp / max(n_pred, 1), "recall": tp / max(n_gt, 1),
            "f1": 2 * tp / max(n_pred + n_gt, 1)}


def score_root(root: Path, images: list, labels: Path, min_distances) -> dict:
    settings = root / "eval" / "seg_labels" / "settings.json"
    if settings.is_file() and json.loads(settings.read_text()).get("point_source", "det") != "det":
        raise SystemExit(f"{settings}: these seg labels took their points from the pseudo masks (point_source mask), "
                         "not from a detection network; give a root trained with the det stage")
    sources = {"det": []}
    sources.update({f"mask_md{m}": [] for m in min_distances})
    for p in images:
        gt = instance_points(read_instance_label(labels / p.name))
        sources["det"].append((read_points(root / "eval" / "seg_labels" / "points" / f"{p.stem}.csv"), gt))
        mask = read_mask(root / "eval" / "pseudo_masks" / "masks" / f"{p.stem}.png")
        for m in min_distances:
            sources[f"mask_md{m}"].append((mask_points(mask, min_distance=m), gt))
    return {name: {str(r): pooled(pairs, r) for r in RADII} for name, pairs in sources.items()}


def render(r) -> str:
    lines = ["# Points for the seg stage's Voronoi labels, against the MoNuSeg train annotations", "",
             f"Command: `{r['command']}` ({r['date']}, {r['machine']}, {r['seconds']:.0f} s).", "",
             "Pooled over the 30 train images; one-to-one matching to annotated centroids. `det` = the detection "
             "network's points (`point_source det`), `mask_mdN` = the pseudo mask's own watershed centres, peaks N px "
             "apart (`point_source mask` uses 8).", "",
             "| run | points | n | P @6 | R @6 | F1 @6 | P @10 | R @10 | F1 @10 |", "|---|---|---|---|---|---|---|---|---|"]
    for run, res in r["runs"].items():
        for src, s in res.items():
            a, b = s["6"], s["10"]
            lines.append(f"| {run} | {src} | {a['n_points']} | {a['precision']:.3f} | {a['recall']:.3f} | "
                         f"{a['f1']:.3f} | {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="NAME=BUNDLE_ROOT (det points and pseudo masks written)")
    ap.add_argument("--min_distance", type=int, nargs="+", default=[6, 8, 10])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    images = sorted((a.monuseg / "train" / "images").glob("*.png"))
    if not images:
        raise SystemExit(f"{a.monuseg / 'train' / 'images'}: no PNG images")
    t0 = time.perf_counter()
    runs = {}
    for spec in a.runs:
        name, _, root = spec.partition("=")
        runs[name] = score_root(Path(root), images, a.monuseg / "train" / "labels", a.min_distance)
    r = {"command": "python scripts/diagnose_seg_points.py " + " ".join(sys.argv[1:] if argv is None else argv),
         "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
         "seconds": time.perf_counter() - t0, "runs": runs}
    write_json(a.out.with_suffix(".json"), r)
    a.out.with_suffix(".md").write_text(render(r))
    print(render(r))
    return r


if __name__ == "__main__":
    main()
