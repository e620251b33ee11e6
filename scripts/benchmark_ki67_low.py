# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 on low-proliferation folders (issue 34): the folder-relative positive class (before 2026-12-04) against the
absolute DAB rule (:mod:`bundle.ki67.positivity`), per folder of known index.

The BCData sample is high-proliferation (image indices 0.13-0.82), so low-index folders are cut from it: 224 px
crops chosen (greedily, not overlapping) where the annotation has 0-2 positive and at least 5 negative cells, and
a regular grid of 320 px crops. The annotations are read only to choose crops and to score, never by a method.
Images 0-12 form the **calibration** half (the default ``dab_threshold`` was chosen there: the threshold of the
sweep below with the smallest worst-folder index error); images 13-25 the **test** half, reported with the
threshold fixed. Folders per half: ``none`` (crops with no annotated positive), ``low`` (0-2 positives per crop),
``mix_<t>`` (the low crops plus grid crops drawn with a fixed seed until the folder's index is closest to t) and
``full`` (the grid). Every folder is run as a user would: ``Ki67Runner`` on the folder (stain vectors, and for the
classical method the K-Means, fitted on that folder).

Methods: ``network (old)`` the shipped network's own class; ``network`` the shipped network's cells classified by
the DAB rule (the default); ``pseudo_labels (old)`` / ``pseudo_labels`` :class:`Ki67PseudoLabeler` fitted on the
folder without / with the DAB rule; ``classical_log`` the classical baseline of ``benchmark_ki67``; and each
``--trained NAME=DIR``: a whole label-free Ki-67 run (``python -m bundle.label_free --stain ihc``) trained on one of
the folders and run on it, e.g. the old workflow (before 2026-12-04) and the new one on ``test/low``.
Scores per folder: per-tile Ki-67 index absolute error (mean, worst), positive-class precision / recall / F1 and
overall F1 at 10 px (micro), predicted positives on the crops annotated with none.

    python -m scripts.benchmark_ki67_low --data ../shared/data/bcdata_sample --ckpt models/ki67/model.pt \
        --work /tmp/ki67_low --out docs/results/ki67_low_proliferation \
        --trained "workflow (old)=/tmp/wf_old/eval/ki67" --trained "workflow=/tmp/wf_new/eval/ki67"

(the two workflow runs: ``python -m bundle.label_free --dataset_dir /tmp/ki67_low/test/low/images --bundle_root
/tmp/wf_new --stain ihc``, and the same command from a checkout of the commit before this benchmark for the old one;
the folder is written by a first run of this script).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bundle.io import read_rgb, write_image
from bundle.ki67.data import read_bcdata_item
from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE
from bundle.metrics import multiclass_point_scores
from scripts import write_results
from scripts.benchmark_ki67 import classical_log, tile_stems

THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)
TARGETS = (0.15, 0.25)  # the low crops alone are at about 0.1 (BCData is a high-proliferation set)
EDGE = 8


# --------------------------------------------------------------------------------------------- folders
def _in(pts, oy, ox, s):
    return (pts[:, 0] >= ox) & (pts[:, 0] < ox + s) & (pts[:, 1] >= oy) & (pts[:, 1] < oy + s)


def make_crops(data, stems, size=224, grid=320, step=32, max_pos=2, min_neg=5):
    """(low crops, grid crops): dicts {name, stem, oy, ox, size, gt (N, 2) (x, y), cls}."""
    low, reg = [], []
    for s in stems:
        pts, cls = read_bcdata_item(data, s)
        cands = []
        for oy in range(0, 640 - size + 1, step):
            for ox in range(0, 640 - size + 1, step):
                m = _in(pts, oy, ox, size)
                p, n = int((cls[m] == POSITIVE).sum()), int((cls[m] == NEGATIVE).sum())
                if p <= max_pos and n >= min_neg:
                    cands.append((p, -n, oy, ox))
        taken = []
        for p, _, oy, ox in sorted(cands):
            if all(abs(oy - a) >= size or abs(ox - b) >= size for a, b in taken):
                taken.append((oy, ox))
        for k, (oy, ox) in enumerate(taken):
            m = _in(pts, oy, ox, size)
            low.append({"name": f"{s}_low{k}", "stem": s, "oy": oy, "ox": ox, "size": size,
                        "gt": pts[m] - [ox, oy], "cls": cls[m]})
        for oy in range(0, 640 - grid + 1, grid):
            for ox in range(0, 640 - grid + 1, grid):
                m = _in(pts, oy, ox, grid)
                reg.append({"name": f"{s}_g{oy}_{ox}", "stem": s, "oy": oy, "ox": ox, "size": grid,
                            "gt": pts[m] - [ox, oy], "cls": cls[m]})
    return low, reg


def _index(crops):
    """Annotated Ki-67 index of a folder (cells away from the crop borders, as scored)."""
    inner = [c["cls"][_inner(np.asarray(c["gt"], float).reshape(-1, 2)[:, ::-1], c["size"], EDGE)] for c in crops]
    return sum(int((k == POSITIVE).sum()) for k in inner) / max(1, sum(len(k) for k in inner))


def make_folders(low, reg, seed=0):
    folders = {"none": [c for c in low if not (c["cls"][_inner(c["gt"][:, ::-1], c["size"], EDGE)] == POSITIVE).any()],
               "low": list(low)}
    rng = np.random.default_rng(seed)
    order = [reg[i] for i in rng.permutation(len(reg))]
    for t in TARGETS:
        best = min(range(len(order) + 1), key=lambda k: abs(_index(low + order[:k]) - t))
        folders[f"mix_{t:g}"] = low + order[:best]
    folders["full"] = list(reg)
    return {k: v for k, v in folders.items() if v}


def write_folder(data, crops, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for c in crops:
        p = out_dir / f"{c['name']}.png"
        if not p.exists():
            rgb = read_rgb(Path(data) / "images" / f"{c['stem']}.png")
            write_image(p, rgb[c["oy"]: c["oy"] + c["size"], c["ox"]: c["ox"] + c["size"]])
    return out_dir


# --------------------------------------------------------------------------------------------- methods
def read_cells(out_dir, name):
    with open(Path(out_dir) / "points" / f"{name}.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    pts = np.array([[float(r["y"]), float(r["x"])] for r in recs]).reshape(-1, 2)
    cls = np.array([POSITIVE if r["class"] == "Positive" else NEGATIVE for r in recs], np.uint8)
    dab = np.array([float(r.get("dab_od") or "nan") for r in recs], float)
    return pts, cls, dab


def run_runner(folder, out, crops, ckpt, method, positivity, threshold):
    import torch

    from bundle.checkpoints import resunet_checkpoint_dims, resunet_input_channels
    from bundle.inferers import TilePredictor
    from bundle.ki67.points import Ki67Cells
    from bundle.ki67.runner import Ki67Runner
    from bundle.networks import ResUNet34

    net = None
    if method == "network":
        net = ResUNet34(resunet_input_channels(ckpt), 3, base_channels=resunet_checkpoint_dims(ckpt)[1])
    torch.manual_seed(0)
    summ = Ki67Runner(net, str(folder), out, ckpt_path=ckpt if method == "network" else None, method=method,
                      predictor=TilePredictor(tta=True),
                      cells=Ki67Cells(positivity=positivity, dab_threshold=threshold), write_overlays=False).run()
    return [read_cells(out, c["name"]) for c in crops], summ


def _inner(pts_rc, size, edge):
    pts_rc = np.asarray(pts_rc, float).reshape(-1, 2)
    return np.all((pts_rc >= edge) & (pts_rc < size - edge), axis=1)


def score_folder(preds, crops, radius=10, edge=EDGE):
    """Scores of one folder; cells (predicted or annotated) within ``edge`` px of a crop's border are left out: a
    nucleus cut by the crop has its annotated centre outside it but shows, and is found, inside."""
    acc = {c: [0, 0, 0] for c in (POSITIVE, NEGATIVE, "overall")}
    errs, fp_none, n_none, n_gt_pos, n_pred_pos = [], 0, 0, 0, 0
    for (pp, pc), c in zip(preds, crops):
        keep = _inner(pp, c["size"], edge)
        pp, pc = np.asarray(pp).reshape(-1, 2)[keep], np.asarray(pc)[keep]
        g = _inner(np.asarray(c["gt"], float).reshape(-1, 2)[:, ::-1], c["size"], edge)
        c = {**c, "gt": np.asarray(c["gt"]).reshape(-1, 2)[g], "cls": np.asarray(c["cls"])[g]}
        s = multiclass_point_scores(np.asarray(pp, float).reshape(-1, 2)[:, ::-1], pc, c["gt"], c["cls"], radius,
                                    (POSITIVE, NEGATIVE))
        for k in acc:
            acc[k] = [a + int(s[k][m]) for a, m in zip(acc[k], ("tp", "fp", "fn"))]
        ip = float((pc == POSITIVE).mean()) if len(pc) else 0.0
        ig = float((c["cls"] == POSITIVE).mean()) if len(c["cls"]) else 0.0
        errs.append(abs(ip - ig))
        n_gt_pos += int((c["cls"] == POSITIVE).sum())
        n_pred_pos += int((pc == POSITIVE).sum())
        if not (c["cls"] == POSITIVE).any():
            fp_none += int((pc == POSITIVE).sum())
            n_none += 1
    tp, fp, fn = acc[POSITIVE]
    f1 = lambda t: 2 * t[0] / max(1, 2 * t[0] + t[1] + t[2])  # noqa: E731
    return {"index_mae": round(float(np.mean(errs)), 4), "index_worst": round(float(np.max(errs)), 4),
            "pos_precision": round(tp / max(1, tp + fp), 4), "pos_recall": round(tp / max(1, tp + fn), 4),
            "pos_f1": round(f1(acc[POSITIVE]), 4), "overall_f1": round(f1(acc["overall"]), 4),
            "n_pred_pos": n_pred_pos,
            "n_gt_pos": n_gt_pos,
            "pos_on_none_crops": fp_none, "none_crops": n_none}


# --------------------------------------------------------------------------------------------- report
def _md(rep) -> str:
    lines = ["# Ki-67 on low-proliferation folders (BCData sample crops; labels used only to choose crops and score)",
             "", f"Machine: {rep['machine']}; date {rep['date']}; {rep['seconds']:.0f} s. Command: `{rep['command']}`",
             "", "Default `dab_threshold` (mean nucleus DAB OD) chosen on the calibration half (images 0-12): "
             f"**{rep['chosen_threshold']:g}** (smallest worst-folder mean index error of the network's cells; sweep "
             "below). Test half: images 13-25, threshold fixed. Crops: 224 px with 0-2 annotated positives (`low`; "
             "`none` = no positive), 320 px grid (`full`), and mixes of both with a target index.", ""]
    for half in ("calibration", "test"):
        lines += [f"## {half.capitalize()} half", "",
                  "| folder | crops | GT index | method | index MAE | index worst | pos P | pos R | pos F1 "
                  "| overall F1 | #pos pred / GT | pos on crops with none |", "|---" * 12 + "|"]
        for fname, f in rep[half]["folders"].items():
            for m, s in f["methods"].items():
                lines.append(f"| {fname} | {f['n_crops']} | {f['gt_index']:.3f} | {m} | {s['index_mae']:.3f} | "
                             f"{s['index_worst']:.3f} | {s['pos_precision']:.3f} | {s['pos_recall']:.3f} | "
                             f"{s['pos_f1']:.3f} | {s['overall_f1']:.3f} | {s['n_pred_pos']} / {s['n_gt_pos']} | "
                             f"{s['pos_on_none_crops']} ({s['none_crops']} crops) |")
        lines.append("")
    lines += ["## Threshold sweep (network cells, DAB rule; index MAE per folder)", "",
              "| half | threshold | " + " | ".join(rep["calibration"]["folders"]) + " | worst |",
              "|---" * (len(rep["calibration"]["folders"]) + 3) + "|"]
    for half in ("calibration", "test"):
        for t, row in rep[half]["sweep"].items():
            lines.append(f"| {half} | {t} | " + " | ".join(f"{row.get(k, float('nan')):.3f}"
                                                          for k in rep["calibration"]["folders"])
                         + f" | {max(row.values()):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="BCData-style folder (images/, annotations/{positive,negative}/)")
    ap.add_argument("--ckpt", default="models/ki67/model.pt", help="Ki-67 network (default: the shipped one)")
    ap.add_argument("--work", default="/tmp/ki67_low")
    ap.add_argument("--out", default="docs/results/ki67_low_proliferation")
    ap.add_argument("--machine", default="2-core CPU")
    ap.add_argument("--trained", action="append", default=[],
                    help="NAME=DIR: score a whole label-free Ki-67 run trained on one of the folders (its "
                         "eval/ki67 output folder), e.g. the old and the new workflow (see --trained_folder)")
    ap.add_argument("--trained_folder", default="test/low", help="HALF/FOLDER the --trained runs were made on")
    ap.add_argument("--figure", default="docs/figures/ki67_dab_histogram.png",
                    help="DAB OD histogram of the test half's full folder with the default threshold ('' = none)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t0 = time.time()
    stems = tile_stems(Path(args.data) / "images")
    half_stems = {"calibration": stems[:13], "test": stems[13:]}
    work = Path(args.work)
    rep = {"machine": f"{args.machine} ({platform.processor() or platform.machine()})",
           "date": datetime.date.today().isoformat(), "command": "python -m scripts.benchmark_ki67_low "
           + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}
    cells, folders_by_half = {}, {}
    for half in ("calibration", "test"):
        low, reg = make_crops(args.data, half_stems[half])
        folders = folders_by_half[half] = make_folders(low, reg)
        rep[half] = {"folders": {}}
        for fname, crops in folders.items():
            folder = write_folder(args.data, crops, work / half / fname / "images")
            res = {}
            for label, method, rule in (("network (old)", "network", "network"), ("network", "network", "dab"),
                                        ("pseudo_labels (old)", "classical", "network"),
                                        ("pseudo_labels", "classical", "dab")):
                out = work / half / fname / label.replace(" ", "_").replace("(", "").replace(")", "")
                preds, _ = run_runner(folder, out, crops, args.ckpt, method, rule, 0.3)
                if label == "network":
                    cells[(half, fname)] = preds
                res[label] = score_folder([(p, c) for p, c, _ in preds], crops)
            rgbs = [read_rgb(folder / f"{c['name']}.png") for c in crops]
            res["classical_log (baseline)"] = score_folder(classical_log(rgbs, 20.0), crops)
            rep[half]["folders"][fname] = {"n_crops": len(crops), "gt_index": round(_index(crops), 4),
                                           "methods": res}
            print(half, fname, len(crops), {k: (v["index_mae"], v["pos_precision"]) for k, v in res.items()},
                  flush=True)
        rep[half]["sweep"] = {}
        for t in THRESHOLDS:
            row = {}
            for fname, crops in folders.items():
                preds = [(p, np.where(d >= t, POSITIVE, NEGATIVE).astype(np.uint8)) for p, _, d in
                         cells[(half, fname)]]
                row[fname] = score_folder(preds, crops)["index_mae"]
            rep[half]["sweep"][f"{t:g}"] = row
    half, fname = args.trained_folder.split("/")
    for spec in args.trained:
        name, _, out = spec.rpartition("=")
        crops = folders_by_half[half][fname]
        rep[half]["folders"][fname]["methods"][name or out] = score_folder(
            [read_cells(out, c["name"])[:2] for c in crops], crops)
    rep["chosen_threshold"] = float(min(THRESHOLDS, key=lambda t: max(rep["calibration"]["sweep"][f"{t:g}"].values())))
    if args.figure:
        from bundle.ki67.positivity import DAB_THRESHOLD, DABHistogram

        h = DABHistogram()
        for _, _, d in cells[("test", "full")]:
            h.add(d)
        h.figure(DAB_THRESHOLD, args.figure, title="BCData test-half crops, shipped network's cells")
    rep["seconds"] = time.time() - t0
    write_results(args.out, rep, _md(rep))


if __name__ == "__main__":
    main()
