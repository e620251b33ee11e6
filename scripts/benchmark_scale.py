# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tiles of unknown and mixed magnification (issue 29): the shipped nuclei network with no size option, with each
tile's true ``--mpp`` (the oracle) and with the label-free per-tile scale estimate (``--auto_scale True``), next to
the classical baseline, on MoNuSeg **test** copies at 1x (40x), 0.75x, 0.5x (20x) and a mixed folder (each image at
one of 1 / 0.75 / 0.5 / 0.33, seed 0). Labels are used only to score.

    python -m scripts.benchmark_scale --monuseg ../shared/data/monuseg --work /tmp/scale_bench \
        --out docs/results/scale_estimate

A network trained on a mixed folder (each MoNuSeg **train** image at one of the same scales, same draw;
``bundle.label_free --mpp auto`` brings the tiles to 40x before training):

    python -m scripts.benchmark_scale --monuseg ../shared/data/monuseg \
        --write_train_mixed /tmp/mixtrain/train_mixed/images
    python -m bundle.label_free --dataset_dir /tmp/mixtrain/train_mixed/images --bundle_root /tmp/mixtrain/auto \
        --mpp auto --stages ssl,psm,det,seg
    python -m scripts.benchmark_scale --monuseg ../shared/data/monuseg --bundle_root /tmp/mixtrain/auto \
        --work /tmp/mixtrain/bench --out docs/results/scale_mixed_training

Images are box-averaged (PIL ``BOX``), label maps resized by nearest neighbour. Inference runs as a user runs it
(``configs/inference.json`` in its own process, bundle_root = this bundle, flip TTA unless ``--tta False``):
``none`` passes ``--mpp 0.25`` (every tile taken as 40x, the old default), ``oracle`` the true ``--mpp`` of each tile
(the mixed folder split by scale), ``auto`` ``--auto_scale True`` (what ``inference.json`` does by itself when no
``--mpp`` is given and the files carry none). Scores per image (pixel F1, object Dice, AJI,
AJI+, PQ; :func:`bundle.metrics.instance_scores`), averaged per folder; predicted vs true nucleus counts. The size
estimate itself: estimated / true scale per image on the **train** images (where ``REFERENCE_DIAMETER`` was set) and
on the test folders. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bundle.annotations import read_instance_label, write_instance_label
from bundle.io import read_rgb, write_image
from bundle.label_free import child_env
from bundle.metrics import instance_scores
from bundle.nuclei.postprocess import classical_nuclei
from bundle.scale import NUCLEI_DEAD_ZONE
from scripts import write_results
from scripts.benchmark_shipped import KEYS, run_bundle

SCALES = (1.0, 0.75, 0.5, 0.33)


def resized(rgb, lab, s):
    """(rgb, label) box- / nearest-resized by ``s`` (1 = unchanged)."""
    if s == 1.0:
        return rgb, lab
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))
    rows = np.minimum((np.arange(size[1]) + 0.5) / s, h - 1).astype(int)
    cols = np.minimum((np.arange(size[0]) + 0.5) / s, w - 1).astype(int)
    return small, lab[np.ix_(rows, cols)]


def mixed_plan(names, seed: int = 0) -> dict:
    """{image name: scale}: each image at one of :data:`SCALES`, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return {n: float(SCALES[i]) for n, i in zip(names, rng.integers(0, len(SCALES), len(names)))}


def write_train_mixed(train: Path, out: Path, seed: int = 0) -> dict:
    """The mixed copy of the train images (no labels: the pipeline trains on images alone) into ``out``."""
    plan = mixed_plan(sorted(p.name for p in (train / "images").glob("*.png")), seed)
    for n, s in plan.items():
        rgb = read_rgb(train / "images" / n)
        write_image(out / n, resized(rgb, np.zeros(rgb.shape[:2], np.int32), s)[0])
    return plan


def training_copy_errors(train: Path, run: Path, seed: int = 0) -> dict | None:
    """Estimated / true scale of the ``--mpp auto`` run's working-scale copies (its ``scales.csv``) of the mixed
    train folder."""
    import csv

    path = run / "eval" / "working_scale" / "scales.csv"
    if not path.is_file():
        return None
    plan = mixed_plan(sorted(p.name for p in (train / "images").glob("*.png")), seed)
    with open(path, newline="") as f:
        e = [float(r["scale_factor"]) / plan[Path(r["image"]).name] - 1 for r in csv.DictReader(f)]
    return {"median_abs_rel_error": round(float(np.median(np.abs(e))), 3),
            "worst_abs_rel_error": round(float(np.max(np.abs(e))), 3),
            "within_25pct": int(sum(abs(x) <= 0.25 for x in e)), "n_images": len(e)}


def make_folders(test: Path, work: Path, seed: int = 0) -> dict:
    """{folder name: {image name: scale}}; writes ``work/<folder>/<scale>/{images,labels}``."""
    names = sorted(p.name for p in (test / "images").glob("*.png"))
    mixed = mixed_plan(names, seed)
    plan = {"1x": dict.fromkeys(names, 1.0), "0.75x": dict.fromkeys(names, 0.75), "0.5x": dict.fromkeys(names, 0.5),
            "mixed": mixed}
    for folder, scales in plan.items():
        for n, s in scales.items():
            d = work / folder / f"{s:g}"
            if (d / "labels" / n).is_file():
                continue
            rgb, lab = resized(read_rgb(test / "images" / n), read_instance_label(test / "labels" / n), s)
            write_image(d / "images" / n, rgb)
            write_instance_label(d / "labels" / n, lab)
    return plan


def infer(images: Path, out: Path, env: dict, extra=()) -> dict:
    """One inference run (reused when ``out`` already holds its finished summary and a label map per image)."""
    import csv

    done = (out / "summary.csv").is_file() and all((out / "labels" / p.name).is_file() for p in images.glob("*.png"))
    r = {"command": "(reused)", "wall_s": None} if done else run_bundle(
        ["--config_file", "configs/inference.json", "--dataset_dir", images, "--output_dir", out, *extra], env)

    with open(out / "summary.csv", newline="") as f:
        rows = {r_["image"]: r_ for r_ in csv.DictReader(f)}
    return {"rows": rows, "command": r["command"], "wall_s": r["wall_s"]}


def score(pred_dir: Path, label_dir: Path, names) -> dict:
    out = {}
    for n in names:
        gt = read_instance_label(label_dir / n)
        pred = read_instance_label(pred_dir / n)
        out[n] = {**instance_scores(pred, gt), **counts(pred, gt)}
    return out


def counts(pred: np.ndarray, gt: np.ndarray) -> dict:
    return {"pred_count": int(len(np.unique(pred)) - 1), "true_count": int(len(np.unique(gt)) - 1)}


def count_summary(rows) -> dict:
    """Predicted vs true nucleus counts over images (rows of :func:`counts`): totals, the per-image ratio's range and
    median, and the images whose count is within 15 % of the true one (issue 29's target)."""
    ratios = [r["pred_count"] / max(1, r["true_count"]) for r in rows]
    return {"pred_count": int(sum(r["pred_count"] for r in rows)),
            "true_count": int(sum(r["true_count"] for r in rows)),
            "count_ratio_min": round(float(min(ratios)), 3), "count_ratio_median": round(float(np.median(ratios)), 3),
            "count_ratio_max": round(float(max(ratios)), 3),
            "images_within_15pct": int(sum(abs(r - 1) <= 0.15 for r in ratios)), "n_images": len(ratios)}


def summarise(per_image: dict) -> dict:
    m = {k: round(float(np.mean([v[k] for v in per_image.values()])), 4) for k in KEYS}
    return {"mean": m, **count_summary(list(per_image.values()))}


def estimator_on_train(train: Path) -> dict:
    """Estimated / true scale per train image at each of :data:`SCALES` (the estimate's own accuracy)."""
    from bundle.scale import REFERENCE_DIAMETER, estimate_nucleus_diameter

    errs = {s: [] for s in SCALES}
    for p in sorted((train / "images").glob("*.png")):
        rgb = read_rgb(p)
        for s in SCALES:
            small, _ = resized(rgb, np.zeros(rgb.shape[:2], np.int32), s)
            d = estimate_nucleus_diameter(small)
            errs[s].append(np.nan if d is None else d / REFERENCE_DIAMETER / s - 1)
    return {f"{s:g}": {"median_abs_rel_error": round(float(np.nanmedian(np.abs(e))), 3),
                       "worst_abs_rel_error": round(float(np.nanmax(np.abs(e))), 3),
                       "median_ratio": round(float(np.nanmedian(np.asarray(e) + 1)), 3)} for s, e in errs.items()}


def render_md(r: dict) -> str:
    L = [f"# Unknown and mixed magnification: {r.get('network', 'shipped network')}, MoNuSeg test ({r['date']})", "",
         f"`{r['command']}` on {r['machine']}; {r['seconds'] / 60:.1f} min. `none` = `--mpp 0.25` (all tiles taken "
         "as 40x, the old default); `oracle` = each tile's true `--mpp`; `auto` = `--auto_scale True` (each tile's "
         "nucleus size estimated; the default when no `--mpp` is given); classical = haematoxylin Otsu + watershed "
         "with its 40x parameters (chosen on train).", "",
         "| folder | method | pixel F1 | object Dice | AJI | AJI+ | PQ | nuclei pred / true | images within 15 % |",
         "|---|---|---|---|---|---|---|---|---|"]
    for folder, res in r["folders"].items():
        for method, v in res.items():
            m = v["mean"]
            L.append(f"| {folder} | {method} | {m['pixel_f1']:.3f} | {m['object_dice']:.3f} | {m['aji']:.3f} | "
                     f"{m['aji_plus']:.3f} | {m['pq']:.3f} | {v.get('pred_count', '-')} / {v.get('true_count', '-')} "
                     f"| {v.get('images_within_15pct', '-')} / {v.get('n_images', '-')} |")
    lo, hi = r.get("dead_zone", (0.8, 1.25))
    L += ["", "Size estimate, estimated / true scale factor per image (auto runs; `scale_factor` 1 inside the dead "
          f"zone {lo:g}-{hi:g} of the network's own size):", "", "| folder | median abs. rel. error | worst |",
          "|---|---|---|"]
    for folder, e in r["estimate_test"].items():
        L.append(f"| {folder} | {e['median_abs_rel_error']:.3f} | {e['worst_abs_rel_error']:.3f} |")
    if r.get("estimate_training_copies"):
        e = r["estimate_training_copies"]
        L += ["", f"The `--mpp auto` run's working-scale copies of the mixed train folder: estimated / true scale, "
              f"median abs. rel. error {e['median_abs_rel_error']:.3f}, worst {e['worst_abs_rel_error']:.3f}, "
              f"{e['within_25pct']} of {e['n_images']} within 25 %."]
    L += ["", "The raw estimate on the 30 **train** images resized (where `REFERENCE_DIAMETER` was set):", "",
          "| scale | median ratio | median abs. rel. error | worst |", "|---|---|---|---|"]
    for s, e in r["estimate_train"].items():
        L.append(f"| {s} | {e['median_ratio']:.3f} | {e['median_abs_rel_error']:.3f} | "
                 f"{e['worst_abs_rel_error']:.3f} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True, help="prepared MoNuSeg (train/ and test/ images, labels)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale_bench"))
    ap.add_argument("--out", default="docs/results/scale_estimate")
    ap.add_argument("--tta", default="True", choices=("True", "False"))
    ap.add_argument("--machine", default="2-core CPU")
    ap.add_argument("--render", action="store_true", help="only rewrite <out>.md from an existing <out>.json")
    ap.add_argument("--bundle_root", type=Path, default=None, help="evaluate this run's network (its models/model.pt, "
                    "e.g. a `bundle.label_free --mpp auto` run on the mixed train copy) instead of the shipped one")
    ap.add_argument("--write_train_mixed", type=Path, default=None, help="only write the mixed copy of the train "
                    "images (same draw as the mixed test folder) into this folder, to train on")
    ap.add_argument("--folders", default="", help="comma-separated subset of 1x,0.75x,0.5x,mixed (default all)")
    a = ap.parse_args(argv)
    if a.write_train_mixed is not None:
        plan = write_train_mixed(a.monuseg / "train", a.write_train_mixed)
        print(f"wrote {len(plan)} images to {a.write_train_mixed}")
        return
    if a.render:
        Path(a.out + ".md").write_text(render_md(json.loads(Path(a.out + ".json").read_text())))
        return
    t0 = time.time()
    env = child_env(OMP_NUM_THREADS=os.cpu_count() or 1)
    plan = make_folders(a.monuseg / "test", a.work)
    if a.folders:
        plan = {k: v for k, v in plan.items() if k in a.folders.split(",")}
    params = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "classical_baseline.json")
                        .read_text())["selected"]
    folders, est = {}, {}
    for folder, scales in plan.items():
        groups = sorted(set(scales.values()), reverse=True)
        res = {"none": {}, "oracle": {}, "auto": {}}
        for s in groups:
            d = a.work / folder / f"{s:g}"
            names = [n for n, v in scales.items() if v == s]
            for method, extra in (("none", ["--mpp", 0.25]), ("oracle", ["--mpp", round(0.25 / s, 4)]),
                                  ("auto", ["--auto_scale", True])):
                if method == "oracle" and s == 1.0:
                    res["oracle"].update(res["none"])  # the same run
                    continue
                out = a.work / "out" / folder / f"{s:g}" / method
                network = ["--bundle_root", a.bundle_root] if a.bundle_root is not None else []
                run = infer(d / "images", out, env, ["--tta", a.tta, *network, *extra])
                res[method].update(score(out / "labels", d / "labels", names))
                if method == "auto":
                    for n in names:
                        f = run["rows"][Path(n).stem].get("scale_factor", "")
                        est.setdefault(folder, []).append(float(f) / s - 1 if f not in ("", None) else np.nan)
            print(folder, s, {m: round(float(np.mean([v["aji"] for k, v in r_.items() if scales[k] == s])), 4)
                              for m, r_ in res.items() if r_}, flush=True)
        folders[folder] = {m: summarise(v) for m, v in res.items()}
        cl = {}
        for s in groups:
            d = a.work / folder / f"{s:g}"
            for n in (n for n, v in scales.items() if v == s):
                gt = read_instance_label(d / "labels" / n)
                pred = classical_nuclei(read_rgb(d / "images" / n), **params)
                cl[n] = {**instance_scores(pred, gt), **counts(pred, gt)}
        folders[folder]["classical"] = summarise(cl)
    estimate_test = {f: {"median_abs_rel_error": round(float(np.nanmedian(np.abs(e))), 3),
                         "worst_abs_rel_error": round(float(np.nanmax(np.abs(e))), 3)} for f, e in est.items()}
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_scale " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "folders": folders, "estimate_test": estimate_test, "estimate_train": estimator_on_train(a.monuseg / "train"),
         "seconds": time.time() - t0, "mixed_scales": plan.get("mixed"), "dead_zone": list(NUCLEI_DEAD_ZONE),
         "network": str(a.bundle_root / "models" / "model.pt") if a.bundle_root else "shipped (models/model.pt)"}
    if a.bundle_root is not None:
        r["estimate_training_copies"] = training_copy_errors(a.monuseg / "train", a.bundle_root)
    write_results(a.out, r, render_md(r))


if __name__ == "__main__":
    main()
