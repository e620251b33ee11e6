#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Which cue tells BCData's annotated (tumour) nuclei from the unannotated ones among our negative points? (issue 4)

Most of our Ki-67 errors are negative points on nuclei that BCData does not annotate (stroma, lymphocytes). For
every predicted *negative* point of one or more points folders (``points/<stem>.csv`` written by
``configs/ki67_infer.json`` or ``scripts/benchmark_ki67.py``), the point is "annotated" when it matches any GT cell
(positive or negative) within ``--radius`` px (Hungarian matching, :func:`bundle.metrics.match_points`). Each cue
is scored by its ROC AUC for that split, orientation-free (``max(AUC, 1 - AUC)``; 0.5 = no information):

* ``psm_9`` / ``psm_41``: the PSM map (``--psm_dir``, PNGs from ``configs/psm_infer.json`` run on the IHC tiles
  with an activation network trained on them) averaged over 9 / 41 px around the point;
* ``h_9`` / ``h_41``: the haematoxylin optical density, same windows;
* ``score``: the point's own score column (the network's probability; constant for pseudo labels).

    python scripts/diagnose_ki67_negatives.py --data ../shared/data/bcdata_sample \
        --points recipe_round2=/tmp/krecipe/bench/recipe_round2@seed0/network/points \
        --psm_dir /tmp/ihcssl/eval/pseudo_masks/psm --out docs/results/ki67_negative_cues

Labels are used only to score. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.cells import read_point_table  # noqa: E402
from bundle.io import read_rgb, write_json  # noqa: E402
from bundle.ki67 import _hd_of_od, optical_density, read_bcdata_item  # noqa: E402
from bundle.metrics import match_points  # noqa: E402

CUES = ("psm_9", "psm_41", "h_9", "h_41", "score")


def negative_points(csv_path: Path):
    """(xy (N, 2) float, score (N,)) of the rows whose class is Negative."""
    t = read_point_table(csv_path)
    keep = np.char.startswith(np.char.lower(t["class"]), "neg")
    return t["points"][keep][:, ::-1].reshape(-1, 2), np.nan_to_num(t["score"][keep])


def cue_table(data: Path, points_dir: Path, psm_dir: Path, radius: float):
    """(features (N, len(CUES)), annotated (N,) bool) over every image of ``data/images``."""
    from scipy import ndimage as ndi

    from bundle.annotations import read_instance_label  # the project's reader of single-channel 8/16-bit maps

    feats, ys = [], []
    for img in sorted((data / "images").glob("*.png")):
        p = points_dir / f"{img.stem}.csv"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no points for image {img.name}")
        xy, score = negative_points(p)
        if not len(xy):
            continue
        gxy, _ = read_bcdata_item(data, img.stem)
        matched, _ = match_points(xy, gxy, radius)
        y = np.zeros(len(xy), bool)
        y[matched] = True
        rgb = read_rgb(img)
        psm = read_instance_label(psm_dir / f"{img.stem}.png").astype(np.float32) / 255
        if psm.shape != rgb.shape[:2]:
            raise ValueError(f"{psm_dir / (img.stem + '.png')}: PSM is {psm.shape}, "
                             f"image {img.name} is {rgb.shape[:2]}")
        h = np.maximum(_hd_of_od(optical_density(rgb, 1.5))[..., 0], 0)
        r = xy[:, 1].astype(int).clip(0, rgb.shape[0] - 1)
        c = xy[:, 0].astype(int).clip(0, rgb.shape[1] - 1)
        cols = [ndi.uniform_filter(m, w)[r, c] for m in (psm, h) for w in (9, 41)]
        feats.append(np.c_[cols[0], cols[1], cols[2], cols[3], score])
        ys.append(y)
    if not feats:
        return np.zeros((0, len(CUES))), np.zeros(0, bool)
    return np.concatenate(feats), np.concatenate(ys)


def main(argv=None):
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="BCData folder (images/, annotations/)")
    ap.add_argument("--points", nargs="+", required=True, help="NAME=POINTS_DIR pairs")
    ap.add_argument("--psm_dir", type=Path, required=True)
    ap.add_argument("--radius", type=float, default=10.0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    res = {}
    for spec in a.points:
        name, d = spec.split("=", 1)
        X, y = cue_table(a.data, Path(d), a.psm_dir, a.radius)
        aucs = {}
        for i, cue in enumerate(CUES):
            if not len(y) or np.ptp(X[:, i]) == 0 or y.all() or not y.any():
                aucs[cue] = None
                continue
            v = float(roc_auc_score(y, X[:, i]))
            aucs[cue] = {"auc": max(v, 1 - v), "higher_is_annotated": v >= 0.5}
        res[name] = {"n_negative_points": int(len(y)), "annotated_fraction": float(y.mean()) if len(y) else 0.0,
                     "auc": aucs}
        print(name, res[name], flush=True)
    out = {"command": " ".join(shlex.quote(x) for x in ["python", *sys.argv]), "radius": a.radius, "results": res}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), out)
    lines = ["# Cues among our negative Ki-67 points: annotated (tumour) vs unannotated nuclei", "",
             f"Command: `{out['command']}`", "",
             "ROC AUC, orientation-free (0.5 = no information); a point is annotated when it matches a GT cell of "
             f"either class within {a.radius:g} px.", "",
             "| points | negatives | annotated | " + " | ".join(CUES) + " |", "|---|---|---|" + "---|" * len(CUES)]
    for name, r in res.items():
        cells = [f"{r['auc'][c]['auc']:.3f}" if r["auc"][c] else "-" for c in CUES]
        lines.append(f"| {name} | {r['n_negative_points']} | {r['annotated_fraction']:.2f} | " + " | ".join(cells)
                     + " |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
