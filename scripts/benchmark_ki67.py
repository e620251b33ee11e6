# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""BCData benchmark of label-free Ki-67 positive / negative cell detection (issue 4).

All images of ``--data`` (BCData layout: ``images/<stem>.png``, ``annotations/{positive,negative}/<stem>.h5``) are
*unlabelled input*; the annotations are read only here, to score. The protocol is transductive: the network
(``--ckpt``, trained by ``configs/ki67_train.json`` on the same images' pseudo labels) is scored on the images it was
trained on without labels.

Methods, all scored by :func:`bundle.metrics.multiclass_point_scores` (one-to-one Hungarian matching within a
radius; TP / FP / FN summed over images = micro average) at radius 6 and 10 px:

* ``otsu_rule`` — the issue's calibration: Otsu threshold of the combined stain OD (H + DAB), components, class by
  mean DAB vs haematoxylin;
* ``classical_log`` — classical baseline: colour deconvolution + LoG blob detection on H + DAB OD
  (``skimage.feature.blob_log``, sigmas from the nucleus diameter, default threshold), class by mean DAB vs H;
  ``classical_log_per_stain`` — the same per stain (DAB blobs positive, haematoxylin blobs negative);
* ``alt_*`` — pseudo-label alternatives tried while designing (see docs/ki67.md);
* ``pseudo_labels`` — :class:`bundle.ki67.pseudo_labels.Ki67PseudoLabeler` alone (``Ki67Runner(method="classical")``);
* ``network`` — the trained 3-class ResUNet-34 through :class:`bundle.ki67.runner.Ki67Runner` (flip TTA), and
  ``network_no_tta``; ``--point_mode`` places its points at the centroid of each cell's region (the default) or at
  the probability peak (``both``: each, the peak rows marked ``, peak``).

Also per method: counting MAE per class (mean over images of |#pred - #gt|), Ki-67 index error (mean over images of
|index_pred - index_gt|, and the folder-level index error), seconds per 640x640 image on this CPU (1 thread).

    OMP_NUM_THREADS=1 python -m scripts.benchmark_ki67 --data ../shared/data/bcdata_sample \
        --ckpt network=/tmp/ki67bench/root/models/ki67/model.pt \
        --ckpt network_round2=/tmp/ki67bench/root/models/ki67_r2/model.pt \
        --he_dir ../shared/data/monuseg/test/images --work /tmp/ki67bench/bench --out docs/results/ki67_benchmark

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bundle.annotations import read_point_table
from bundle.checkpoints import resunet_checkpoint_dims, resunet_input_channels
from bundle.inferers import TilePredictor
from bundle.io import read_rgb
from bundle.ki67.data import read_bcdata_item
from bundle.ki67.points import POINT_MODES, Ki67Cells
from bundle.ki67.pseudo_labels import (
    NEGATIVE,
    POSITIVE,
    Ki67PseudoLabeler,
    blob_points,  # the alt_* variants find blobs exactly as Ki67PseudoLabeler does
    dab_fraction,
)
from bundle.ki67.runner import Ki67Runner
from bundle.metrics import multiclass_point_scores
from bundle.stain import hd_from_od, optical_density

RADII = (6, 10)
CURVE_RADII = (6, 8, 10, 12, 15, 20)  # overall F1 vs radius: how much of the score is localisation
CLASSES = (POSITIVE, NEGATIVE)
NAMES = {POSITIVE: "positive", NEGATIVE: "negative", "overall": "overall"}


# --------------------------------------------------------------------------------------------- classical methods
def _hd(rgb, sigma=1.5):
    hd = np.maximum(hd_from_od(optical_density(rgb, sigma)), 0)
    return hd[..., 0], hd[..., 1]


def _classify_by_stain(pts, h, dab, radius):
    """Class of each point by mean DAB vs haematoxylin OD in a disk of ``radius``."""
    from scipy import ndimage as ndi

    if len(pts) == 0:
        return np.zeros(0, np.uint8)
    mh = ndi.uniform_filter(h, int(2 * radius + 1))[pts[:, 0], pts[:, 1]]
    md = ndi.uniform_filter(dab, int(2 * radius + 1))[pts[:, 0], pts[:, 1]]
    return np.where(md > mh, POSITIVE, NEGATIVE).astype(np.uint8)


def otsu_rule(rgbs, d):
    """Plain Otsu on H + DAB OD, connected components >= 30 % of a nucleus, centroid, DAB-vs-H rule."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    out = []
    for rgb in rgbs:
        h, dab = _hd(rgb)
        tot = h + dab
        lab = label(tot > threshold_otsu(tot))
        min_area = 0.3 * np.pi * (d / 2) ** 2
        pts = np.array([np.rint(r.centroid) for r in regionprops(lab) if r.area >= min_area], np.int64).reshape(-1, 2)
        out.append((pts, _classify_by_stain(pts, h, dab, d / 4)))
    return out


def classical_log(rgbs, d):
    """Colour deconvolution + LoG blob detection (scikit-image defaults apart from the sigma range)."""
    from skimage.feature import blob_log

    s = d / (2 * np.sqrt(2))
    out = []
    for rgb in rgbs:
        h, dab = _hd(rgb)
        tot = h + dab
        tot = tot / max(1e-6, np.percentile(tot, 99.5))
        b = blob_log(np.clip(tot, 0, 1), min_sigma=0.6 * s, max_sigma=1.4 * s, num_sigma=5, overlap=0.5)
        pts = np.rint(b[:, :2]).astype(np.int64).reshape(-1, 2)
        out.append((pts, _classify_by_stain(pts, h, dab, d / 4)))
    return out


def classical_log_per_stain(rgbs, d):
    """Colour deconvolution + LoG blob detection per stain: blobs of the DAB OD -> positive, blobs of the
    haematoxylin OD -> negative (dropped within d/2 of a DAB blob); each channel scaled by its 99.5th percentile,
    scikit-image's default threshold."""
    from scipy.spatial import cKDTree
    from skimage.feature import blob_log

    s = d / (2 * np.sqrt(2))
    out = []
    for rgb in rgbs:
        h, dab = _hd(rgb)
        res = []
        for ch in (dab, h):
            ch = np.clip(ch / max(1e-6, np.percentile(ch, 99.5)), 0, 1)
            b = blob_log(ch, min_sigma=0.6 * s, max_sigma=1.4 * s, num_sigma=5, overlap=0.5)
            res.append(np.rint(b[:, :2]).astype(np.int64).reshape(-1, 2))
        a, b = res
        if len(a) and len(b):
            b = b[cKDTree(a).query(b)[0] > d / 2]
        out.append((np.concatenate([a, b]).reshape(-1, 2),
                    np.r_[np.full(len(a), POSITIVE), np.full(len(b), NEGATIVE)].astype(np.uint8)))
    return out


def alt_kmeans_only(rgbs, d, labeler):
    """Only the OD K-Means clusters (positive stain clusters -> positives; no haematoxylin threshold)."""
    out = []
    for rgb in rgbs:
        mp, _ = labeler.masks(rgb)
        a = blob_points(mp, labeler.min_distance, labeler.min_area)
        out.append((a, np.full(len(a), POSITIVE, np.uint8)))
    return out


def alt_blue_ratio(rgbs, d, labeler):
    """Negatives from 'blueness' OD_red - OD_blue > Otsu over the folder's positive values (instead of the
    haematoxylin OD): the first negative detector tried."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    bl = [optical_density(r, 1.5) for r in rgbs]
    vals = np.concatenate([(o[..., 0] - o[..., 2])[::4, ::4].ravel() for o in bl])
    t = threshold_otsu(vals[vals > 0])
    out = []
    for rgb, o in zip(rgbs, bl):
        mp, _ = labeler.masks(rgb)
        mn = ndi.binary_opening(((o[..., 0] - o[..., 2]) > t) & ~ndi.binary_dilation(mp, iterations=2))
        a = blob_points(mp, labeler.min_distance, labeler.min_area)
        b = blob_points(mn, labeler.min_distance, labeler.min_area)
        out.append((np.concatenate([a, b]).reshape(-1, 2), np.r_[np.full(len(a), POSITIVE), np.full(len(b), NEGATIVE)]))
    return out


def alt_union_ratio(rgbs, d, labeler):
    """Candidates from the union of both masks, each classified by its DAB fraction DAB / (H + DAB) against an
    Otsu threshold over all candidates of the folder (the 'classify candidates by stain ratio' design)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from bundle.points import merge_close_points

    cands = []
    for rgb in rgbs:
        mp, mn = labeler.masks(rgb)
        pts = blob_points(mp | mn, labeler.min_distance, labeler.min_area)
        if len(pts) > 1:
            pts = pts[np.sort(merge_close_points(pts, np.ones(len(pts)), labeler.merge_distance, p=2))]
        h, dab = _hd(rgb)
        k = int(d / 2) | 1
        mh = ndi.uniform_filter(h, k)[pts[:, 0], pts[:, 1]] if len(pts) else np.zeros(0)
        md = ndi.uniform_filter(dab, k)[pts[:, 0], pts[:, 1]] if len(pts) else np.zeros(0)
        cands.append((pts, md / (mh + md + 1e-6)))
    allr = np.concatenate([c[1] for c in cands])
    t = threshold_otsu(allr) if len(allr) > 1 else 0.5
    return [(p, np.where(r > t, POSITIVE, NEGATIVE).astype(np.uint8)) for p, r in cands]


# --------------------------------------------------------------------------------------------- scoring
def score(preds, gts, seconds=None):
    """preds / gts: lists of (points (N, 2) (row, col) or (x, y) for gts, classes)."""
    res = {}
    for r in RADII:
        acc = {c: {"tp": 0, "fp": 0, "fn": 0} for c in (*CLASSES, "overall")}
        for (pp, pc), (gxy, gc) in zip(preds, gts):
            s = multiclass_point_scores(np.asarray(pp, float).reshape(-1, 2)[:, ::-1], pc, gxy, gc, r, CLASSES)
            for c in acc:
                for k in ("tp", "fp", "fn"):
                    acc[c][k] += int(s[c][k])
        out = {}
        for c, v in acc.items():
            p = v["tp"] / max(1, v["tp"] + v["fp"])
            rc = v["tp"] / max(1, v["tp"] + v["fn"])
            f = 2 * v["tp"] / max(1, 2 * v["tp"] + v["fp"] + v["fn"])
            out[NAMES[c]] = {**v, "precision": round(p, 4), "recall": round(rc, 4), "f1": round(f, 4)}
        res[f"r{r}"] = out
    mae, idx_err, npred, ngt = {}, [], {c: 0 for c in CLASSES}, {c: 0 for c in CLASSES}
    for c in CLASSES:
        mae[NAMES[c]] = round(float(np.mean([abs(int((pc == c).sum()) - int((gc == c).sum()))
                                              for (_, pc), (_, gc) in zip(preds, gts)])), 3)
    for (_, pc), (_, gc) in zip(preds, gts):
        for c in CLASSES:
            npred[c] += int((pc == c).sum())
            ngt[c] += int((gc == c).sum())
        ip = float((pc == POSITIVE).mean()) if len(pc) else 0.0
        ig = float((gc == POSITIVE).mean()) if len(gc) else 0.0
        idx_err.append(abs(ip - ig))
    fp_ = npred[POSITIVE] / max(1, sum(npred.values()))
    fg_ = ngt[POSITIVE] / max(1, sum(ngt.values()))
    res["count_mae"] = mae
    res["ki67_index_mae"] = round(float(np.mean(idx_err)), 4)
    res["folder_ki67_index"] = {"pred": round(fp_, 4), "gt": round(fg_, 4), "abs_error": round(abs(fp_ - fg_), 4)}
    res["n_pred"] = {NAMES[c]: npred[c] for c in CLASSES}
    res["n_gt"] = {NAMES[c]: ngt[c] for c in CLASSES}
    if seconds is not None:
        res["seconds_per_image"] = round(float(seconds), 3)
    return res


def tile_stems(img_dir) -> list:
    """Stems of the PNG tiles in ``img_dir`` in numeric order (BCData names them 0.png, 1.png, ...)."""
    return sorted((p.stem for p in Path(img_dir).glob("*.png")), key=lambda s: (len(s), s))


def split_stems(stems):
    """Fixed dev / test halves of the tiles: in numeric stem order, even positions are dev, odd positions test.

    Labels of the dev half may guide a choice (a default, an ablation); the test half is only reported."""
    return {"dev": [i for i in range(len(stems)) if i % 2 == 0], "test": [i for i in range(len(stems)) if i % 2 == 1]}


def radius_curve(preds, gts, radii=CURVE_RADII):
    """Overall (class-agnostic) F1 at each matching radius, micro-averaged over images: {radius: f1}."""
    out = {}
    for r in radii:
        tp = fp = fn = 0
        for (pp, pc), (gxy, gc) in zip(preds, gts):
            s = multiclass_point_scores(np.asarray(pp, float).reshape(-1, 2)[:, ::-1], pc, gxy, gc, r, CLASSES)
            tp, fp, fn = tp + int(s["overall"]["tp"]), fp + int(s["overall"]["fp"]), fn + int(s["overall"]["fn"])
        out[str(r)] = round(2 * tp / max(1, 2 * tp + fp + fn), 4)
    return out


def error_anatomy(preds, gts, radius=10, shapes=None, edge=10):
    """Where the unmatched points at ``radius`` lie (overall matching, classes ignored).

    False positives by distance to the nearest GT point: ``fp_near`` (under 1.5 radius: on a GT cell but too far
    from its click, or a second point on a cell already matched), ``fp_mid`` (1.5 to 2.5 radius), ``fp_far``
    (beyond: no annotated cell there), and
    ``fp_far_edge`` = far ones within ``edge`` px of the tile border (``shapes``: (H, W) per image, default
    640 x 640, BCData's size); false positives per predicted class
    (``fp_positive`` / ``fp_negative``). False negatives by distance to the nearest prediction, the same bands.
    """
    from scipy.spatial import cKDTree

    from bundle.metrics import match_points

    c = {k: 0 for k in ("fp", "fp_near", "fp_mid", "fp_far", "fp_far_edge", "fp_positive", "fp_negative",
                        "fn", "fn_near", "fn_mid", "fn_far")}
    for k, ((pp, pc), (gxy, _)) in enumerate(zip(preds, gts)):
        shape = shapes[k] if shapes is not None else (640, 640)
        pxy = np.asarray(pp, float).reshape(-1, 2)[:, ::-1]
        gxy = np.asarray(gxy, float).reshape(-1, 2)
        mp, mg = match_points(pxy, gxy, radius)
        up, ug = np.setdiff1d(np.arange(len(pxy)), mp), np.setdiff1d(np.arange(len(gxy)), mg)
        for kind, pts, others, idx in (("fp", pxy, gxy, up), ("fn", gxy, pxy, ug)):
            c[kind] += len(idx)
            if not len(idx):
                continue
            d = cKDTree(others).query(pts[idx])[0] if len(others) else np.full(len(idx), np.inf)
            c[f"{kind}_near"] += int((d < 1.5 * radius).sum())
            c[f"{kind}_mid"] += int(((d >= 1.5 * radius) & (d < 2.5 * radius)).sum())
            far = d >= 2.5 * radius
            c[f"{kind}_far"] += int(far.sum())
            if kind == "fp":
                xy = pts[idx][far]
                c["fp_far_edge"] += int((np.minimum(xy, np.array(shape[::-1]) - 1 - xy).min(1) < edge).sum())
                cls = np.asarray(pc)[idx]
                c["fp_positive"] += int((cls == POSITIVE).sum())
                c["fp_negative"] += int((cls == NEGATIVE).sum())
    return c


def score_split(preds, gts, halves, seconds=None, shapes=None):
    """:func:`score` on all images plus ``res["split"][half]`` on each half of :func:`split_stems`, the overall F1
    over :data:`CURVE_RADII` (``res["radius_curve"]``) and :func:`error_anatomy` at 10 px."""
    res = score(preds, gts, seconds)
    res["split"] = {h: score([preds[i] for i in idx], [gts[i] for i in idx]) for h, idx in halves.items()}
    res["radius_curve"] = radius_curve(preds, gts)
    res["errors_r10"] = error_anatomy(preds, gts, 10, shapes)
    return res


def group_summary(methods):
    """Mean / sd / values of overall F1 (10 and 6 px) over the runs of each group: a method named
    ``GROUP@RUN (TTA)`` belongs to ``GROUP`` (e.g. ``default@seed0``); groups of one run are left out."""
    groups = {}
    for m, res in methods.items():
        if "@" in m and m.endswith("(TTA)"):
            groups.setdefault(m.split("@")[0], []).append(res)
    out = {}
    for g, runs in groups.items():
        if len(runs) < 2:
            continue
        row = {"n_runs": len(runs)}
        for part in ("all", "dev", "test"):
            for r in RADII:
                v = [(x if part == "all" else x["split"][part])[f"r{r}"]["overall"]["f1"] for x in runs]
                row[f"{part}_r{r}"] = {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v, ddof=1)), 4),
                                       "values": v}
        out[g] = row
    return out


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0)


def _runner_points(out_dir, stems):
    preds = []
    for s in stems:
        t = read_point_table(Path(out_dir) / "points" / f"{s}.csv")
        cls = np.where(t["class"] == "Positive", POSITIVE, NEGATIVE).astype(np.uint8)
        preds.append((np.rint(t["points"]).astype(np.int64), cls))
    return preds


def run_network(data_dir, ckpt, work, stems, d, tta, base_channels, threshold, scale=1.0, network_mpp="auto",
                point_mode="centroid"):
    import torch

    from bundle.networks import ResUNet34

    torch.set_num_threads(1)
    net = ResUNet34(in_channels=resunet_input_channels(ckpt), out_channels=3,
                    base_channels=base_channels or resunet_checkpoint_dims(ckpt)[1])
    suffix = "" if point_mode == "centroid" else f"_{point_mode}"
    out = Path(work) / (("network" if tta else "network_no_tta") + suffix)
    from bundle.checkpoints import trained_mpp

    mpp = trained_mpp(ckpt) if network_mpp == "auto" else float(network_mpp)
    summ = Ki67Runner(net, str(Path(data_dir) / "images"), out, ckpt_path=ckpt,
                      predictor=TilePredictor(tta=tta, size_scale=scale, network_mpp=mpp),
                      cells=Ki67Cells(threshold=threshold, nucleus_diameter=d, point_mode=point_mode)).run()
    return _runner_points(out, stems), summ["seconds_per_image"]


def make_figure(path, rgbs, gts, columns, stems, pick=("0", "5"), crop=320):
    """Rows = images (centre crop), columns = [ground truth] + methods; positive red, negative blue rings."""
    from PIL import Image, ImageDraw

    from bundle.io import write_image
    from bundle.ki67.points import overlay_points

    rows = []
    for st in pick:
        if st not in stems:
            continue
        i = stems.index(st)
        rgb = rgbs[i]
        h, w = rgb.shape[:2]
        t, l = (h - crop) // 2, (w - crop) // 2
        panels = []
        gxy, gc = gts[i]
        for name, (pts, cls) in [("ground truth (scoring only)", (np.asarray(gxy)[:, ::-1], gc))] + \
                [(n, p[i]) for n, p in columns.items()]:
            pts = np.asarray(pts).reshape(-1, 2)
            keep = (pts[:, 0] >= t) & (pts[:, 0] < t + crop) & (pts[:, 1] >= l) & (pts[:, 1] < l + crop)
            ov = overlay_points(rgb[t: t + crop, l: l + crop], pts[keep] - [t, l], np.asarray(cls)[keep], radius=6)
            im = Image.fromarray(ov)
            ImageDraw.Draw(im).rectangle([0, 0, crop, 14], fill=(255, 255, 255))
            ImageDraw.Draw(im).text((3, 2), f"{name} - image {st}", fill=(0, 0, 0))
            panels.append(np.asarray(im))
        rows.append(np.concatenate(panels, 1))
    if rows:
        write_image(path, np.concatenate(rows, 0))


# --------------------------------------------------------------------------------------------- report
def _md(report) -> str:
    L = [f"# Ki-67 benchmark (BCData sample, {report['n_images']} images; labels used only to score)", "",
         f"Machine: {report['machine']}; date {report['date']}. Command: `{report['command']}`", "",
         "Transductive protocol: the label-free pipeline (and the network's training) saw these same images without "
         "labels. Micro-averaged over images; one-to-one Hungarian matching within the radius.", ""]
    for r in RADII:
        L += [f"## Radius {r} px", "",
              "| method | pos P | pos R | pos F1 | neg P | neg R | neg F1 | overall P | overall R | overall F1 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for m, res in report["methods"].items():
            s = res[f"r{r}"]
            L.append(f"| {m} | " + " | ".join(f"{s[c][k]:.3f}" for c in ("positive", "negative", "overall")
                                                 for k in ("precision", "recall", "f1")) + " |")
        L.append("")
    L += ["## Counts, Ki-67 index, speed", "",
          "| method | #pos (GT {gp}) | #neg (GT {gn}) | count MAE pos | count MAE neg | Ki-67 index MAE (per image) | "
          "folder index (GT {gi}) | s / {side}x{side} image |".format(
              gp=report["gt_counts"]["positive"], gn=report["gt_counts"]["negative"], gi=report["gt_folder_index"],
              side=int(round(640 * 0.25 / report.get("mpp", 0.25)))),  # BCData tiles: 640 px at 40x
          "|---|---|---|---|---|---|---|---|"]
    for m, res in report["methods"].items():
        L.append(f"| {m} | {res['n_pred']['positive']} | {res['n_pred']['negative']} | "
                 f"{res['count_mae']['positive']:.2f} | {res['count_mae']['negative']:.2f} | "
                 f"{res['ki67_index_mae']:.3f} | {res['folder_ki67_index']['pred']:.3f} | "
                 f"{res.get('seconds_per_image', float('nan')):.2f} |")
    if "split" in report:
        sp = report["split"]
        L += ["", "## Dev / test halves (overall F1)", "",
              f"Fixed halves (`split_stems`): dev = tiles {', '.join(sp['dev'])}; "
              f"test = tiles {', '.join(sp['test'])}. Choices may be made on dev; test is only reported.", "",
              "| method | all 10 px | dev 10 px | test 10 px | all 6 px | dev 6 px | test 6 px |",
              "|---|---|---|---|---|---|---|"]
        for m, res in report["methods"].items():
            cells = [(res if h == "all" else res["split"][h])[f"r{r}"]["overall"]["f1"] for r in (10, 6)
                     for h in ("all", "dev", "test")]
            L.append(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    L += ["", "## Overall F1 against the matching radius (all tiles)", "",
          "How much of the score is localisation: the annotators' click and our point on the same nucleus can be "
          "more than 10 px apart on large nuclei (BCData nuclei are about 20-35 px across at 40x).", "",
          "| method | " + " | ".join(f"{r} px" for r in CURVE_RADII) + " |", "|---|" + "---|" * len(CURVE_RADII)]
    for m, res in report["methods"].items():
        L.append(f"| {m} | " + " | ".join(f"{res['radius_curve'][str(r)]:.3f}" for r in CURVE_RADII) + " |")
    L += ["", "## Where the errors are (10 px, classes ignored)", "",
          "FP = predicted points left unmatched at 10 px, by distance to the nearest GT point: < 15 px "
          "(on an annotated cell: off its click, or a second point on it), 15-25 px, > 25 px (no annotated cell: "
          "unannotated nuclei such as stromal cells, or false detections); 'edge' = the > 25 px ones within 10 px of the tile border. FN = GT "
          "points left unmatched at 10 px, by distance to the nearest prediction.", "",
          "| method | FP | < 15 | 15-25 | > 25 | > 25 at edge | FP pos / neg | FN | < 15 | 15-25 | > 25 |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, res in report["methods"].items():
        e = res["errors_r10"]
        L.append(f"| {m} | {e['fp']} | {e['fp_near']} | {e['fp_mid']} | {e['fp_far']} | {e['fp_far_edge']} | "
                 f"{e['fp_positive']} / {e['fp_negative']} | {e['fn']} | {e['fn_near']} | {e['fn_mid']} | "
                 f"{e['fn_far']} |")
    if report.get("groups"):
        L += ["", "## Runs grouped (`GROUP@RUN`, TTA): overall F1 mean (sd) over runs", "",
              "| group | runs | all 10 px | dev 10 px | test 10 px | all 6 px | test 6 px | values, all 10 px |",
              "|---|---|---|---|---|---|---|---|"]
        for g, row in report["groups"].items():
            cell = [f"{row[k]['mean']:.3f} ({row[k]['sd']:.3f})" for k in ("all_r10", "dev_r10", "test_r10", "all_r6",
                                                                          "test_r6")]
            L.append(f"| {g} | {row['n_runs']} | " + " | ".join(cell) + " | "
                     + " / ".join(f"{v:.3f}" for v in row["all_r10"]["values"]) + " |")
    dab = report["dab_fraction"]
    L += ["", f"Brown-pixel fraction (`dab_fraction`): BCData {dab['bcdata_min']:.4f} to {dab['bcdata_max']:.4f}"
          + (f"; H&E tiles of {dab['he_dir']} ({dab['he_n_images']}): max {dab['he_max']:.5f}"
             if "he_max" in dab else "")
          + (f"; IHC mode ({dab['he_network']}) on those H&E tiles: {dab['he_n_positive']} positive / "
             f"{dab['he_n_negative']} negative cells" if "he_n_positive" in dab else "") + "."]
    L += ["", "Seconds: per image on one CPU thread, reading excluded; `pseudo_labels` / `alt_*` also need a "
          f"one-off folder fit ({report['fit_seconds']:.1f} s for the {report['n_images']} images, not included).", ""]
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="BCData-style folder (images/, annotations/{positive,negative}/)")
    ap.add_argument("--ckpt", action="append", help="[NAME=]PATH of a trained ki67 network (models/ki67/model.pt); "
                    "repeat for several; omit to skip the network")
    ap.add_argument("--base_channels", type=int, default=None,
                    help="network width (default: read from each checkpoint)")
    ap.add_argument("--nucleus_diameter", type=float, default=None, help="px (default 20 at 40x, scaled by --mpp)")
    ap.add_argument("--mpp", type=float, default=0.25,
                    help="um per pixel of the tiles (0.25 = BCData at 40x; 0.5 for a 20x copy made by "
                         "python -m scripts.make_lowres --bcdata): scales the nucleus diameter as ki67_infer.json "
                         "--mpp does, and points are scored in 40x pixels, so the 6 / 10 px radii keep their size "
                         "in um")
    ap.add_argument("--network_mpp", default="auto",
                    help="pixel size the networks were trained at: 'auto' = their settings.json (else 0.25), as "
                         "ki67_infer.json does; tiles at another mpp are resized to it. A number overrides (the "
                         "tiles' own mpp: no resizing)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--work", default="/tmp/ki67_bench", help="scratch folder for runner outputs")
    ap.add_argument("--out", default="docs/results/ki67_benchmark")
    ap.add_argument("--machine", default="2-core CPU, shared with other jobs")
    ap.add_argument("--he_dir", default=None, help="optional folder of H&E tiles: no-DAB check in IHC mode")
    ap.add_argument("--figure", default="docs/figures/ki67_examples.png", help="example figure ('' = none)")
    ap.add_argument("--figure_nets", default="", help="comma-separated --ckpt names shown in the figure (default all)")
    ap.add_argument("--tta", choices=("both", "on", "off"), default="both",
                    help="score networks with / without flip TTA")
    ap.add_argument("--point_mode", choices=(*POINT_MODES, "both"), default="centroid",
                    help="where a network's cell points go (bundle.ki67.points.ki67_points): the centroid of the "
                         "cell's region (ki67_infer's default since 2026-11-24) or the probability peak (before); "
                         "'both' scores each, the peak rows marked ', peak'")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from bundle.scale import scaled, size_scale

    scale = size_scale(a.mpp)
    d = a.nucleus_diameter or scaled(20, scale)
    img_dir = Path(a.data) / "images"
    stems = tile_stems(img_dir)
    rgbs = [read_rgb(img_dir / f"{s}.png") for s in stems]
    gts_tile = [read_bcdata_item(a.data, s) for s in stems]  # in the tiles' pixels (figure)

    def to40x(preds):  # points in 40x pixels, so the matching radii keep their physical size at any --mpp
        return preds if scale == 1 else [(np.asarray(p, np.float64) / scale, c) for p, c in preds]

    gts = to40x(gts_tile)
    shapes = [tuple(round(x / scale) for x in r.shape[:2]) for r in rgbs]
    n = len(stems)
    halves = split_stems(stems)
    methods = {}
    preds, t = _timed(otsu_rule, rgbs, d)
    methods["otsu_rule (calibration)"] = score_split(to40x(preds), gts, halves, t / n, shapes)
    preds, t = _timed(classical_log, rgbs, d)
    methods["classical_log (baseline)"] = score_split(to40x(preds), gts, halves, t / n, shapes)
    fig_cols = {"classical_log baseline": preds}
    preds, t = _timed(classical_log_per_stain, rgbs, d)
    methods["classical_log_per_stain (baseline)"] = score_split(to40x(preds), gts, halves, t / n, shapes)
    labeler, fit_s = _timed(lambda: Ki67PseudoLabeler(d).fit(rgbs))
    for name, fn in (("alt_kmeans_only", alt_kmeans_only), ("alt_blue_ratio", alt_blue_ratio),
                     ("alt_union_ratio", alt_union_ratio)):
        preds, t = _timed(fn, rgbs, d, labeler)
        methods[name] = score_split(to40x(preds), gts, halves, t / n, shapes)
    tile_labeler = Ki67PseudoLabeler(d, negative_threshold="tile").fit(rgbs)  # ki67_train --negative_threshold tile
    preds, t = _timed(lambda: [tile_labeler.points(r) for r in rgbs])
    methods["alt_tile_negative_threshold"] = score_split(to40x(preds), gts, halves, t / n, shapes)
    out = Path(a.work) / "pseudo_labels"
    summ = Ki67Runner(None, str(img_dir), out, method="classical", cells=Ki67Cells(nucleus_diameter=d)).run()
    pseudo = _runner_points(out, stems)
    fig_cols["pseudo labels"] = pseudo
    methods["pseudo_labels (Ki67PseudoLabeler)"] = score_split(to40x(pseudo), gts, halves, summ["seconds_per_image"], shapes)
    for spec in a.ckpt or []:
        name, _, path = spec.rpartition("=")
        name = name or "network"
        modes = ("peak", "centroid") if a.point_mode == "both" else (a.point_mode,)  # the figure shows the last
        for tta in {"both": (False, True), "on": (True,), "off": (False,)}[a.tta]:
            for mode in modes:
                preds, sec = run_network(a.data, path, Path(a.work) / name, stems, d, tta, a.base_channels,
                                         a.threshold, scale, a.network_mpp, mode)
                key = f"{name} ({'TTA' if tta else 'no TTA'}{', peak' if mode == 'peak' and len(modes) > 1 else ''})"
                methods[key] = score_split(to40x(preds), gts, halves, sec, shapes)
        if not a.figure_nets or name in a.figure_nets.split(","):
            fig_cols[f"{name} (TTA)" if tta else name] = preds
    if a.figure:
        make_figure(a.figure, rgbs, gts_tile, fig_cols, stems)
    dab = {"bcdata_min": round(min(dab_fraction(r) for r in rgbs), 4),
           "bcdata_max": round(max(dab_fraction(r) for r in rgbs), 4)}
    if a.he_dir:  # H&E tiles given to the IHC mode: DAB fraction and positives found
        from bundle.io import list_images

        he, fr = [], []
        for p in list_images(a.he_dir):
            try:
                fr.append(dab_fraction(read_rgb(p)))
                he.append(p)
            except ValueError as e:  # ImageError: reported and left out
                print(f"skipped {e}")
        dab.update({"he_dir": a.he_dir, "he_n_images": len(he), "he_max": round(max(fr), 5)})
        if a.ckpt:
            from bundle.networks import ResUNet34

            name, _, path = a.ckpt[-1].rpartition("=")
            width = a.base_channels or resunet_checkpoint_dims(path)[1]
            sm = Ki67Runner(ResUNet34(resunet_input_channels(path), 3, base_channels=width), a.he_dir,
                            Path(a.work) / "he_in_ihc_mode", ckpt_path=path, predictor=TilePredictor(tta=False),
                            cells=Ki67Cells(nucleus_diameter=d)).run()
            dab.update({"he_network": name or "network", "he_n_positive": sm["n_positive"],
                        "he_n_negative": sm["n_negative"]})
    gtc = {"positive": int(sum((g[1] == POSITIVE).sum() for g in gts)),
           "negative": int(sum((g[1] == NEGATIVE).sum() for g in gts))}
    report = {"date": datetime.date.today().isoformat(), "machine": a.machine, "platform": platform.platform(),
              "command": "OMP_NUM_THREADS=1 python -m scripts.benchmark_ki67 " + " ".join(shlex.quote(x) for x in
                                                                                         (argv or sys.argv[1:])),
              "n_images": n, "radii_px": list(RADII), "nucleus_diameter_px": d, "mpp": a.mpp, "gt_counts": gtc,
              "gt_folder_index": round(gtc["positive"] / max(1, sum(gtc.values())), 4), "fit_seconds": round(fit_s, 2),
              "labeler": {"positive_clusters": labeler.positive_clusters, "h_threshold": labeler.h_threshold_,
                          "cluster_centres_od": np.round(labeler.km.cluster_centers_, 4).tolist()},
              "dab_fraction": dab, "split": {h: [stems[i] for i in idx] for h, idx in halves.items()},
              "methods": methods, "groups": group_summary(methods)}
    outp = Path(a.out)
    from bundle.io import atomic_path, write_json

    write_json(outp.with_suffix(".json"), report)
    with atomic_path(outp.with_suffix(".md")) as tmp, open(tmp, "w") as f:
        f.write(_md(report))
    print(_md(report))


if __name__ == "__main__":
    main()
