# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Classical nuclei baseline on MoNuSeg: parameters tuned on TRAIN by mean AJI, scores reported on TEST.

Method: :func:`bundle.nuclei.postprocess.classical_nuclei` (haematoxylin OD -> Otsu x threshold_scale -> clean-up ->
smoothed distance transform -> peak markers -> watershed). Labels are used only to score. The grid (default
3 x 2 x 2 = 12 combinations of threshold_scale x min_distance x sigma, min_size fixed) is searched on the 30
train images; the combination with the highest mean per-image AJI is then run once on the 14 test images.

Test scores (means over images of :func:`bundle.metrics.instance_scores`) are reported under three protocols:

* ``full``: full 1000x1000 images, true GT instances (the project's main protocol);
* ``crop512``: the centre 512x512 crop of the full-image prediction against the cropped true GT instances;
* ``crop512_cc``: the same crop against connected components of the binary GT (touching nuclei merged): the
  PSM reference code's protocol.

The prediction is always computed on the full image and then cropped, so only the scoring differs.

    python -m scripts.benchmark_classical --monuseg /work/shared/data/monuseg --out docs/results/classical_baseline

Writes ``<out>.json`` (grid, selection, per-image test rows, means, timings, command) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bundle.annotations import read_instance_label
from bundle.io import read_rgb, write_json
from bundle.metrics import instance_scores
from bundle.nuclei.postprocess import classical_foreground, classical_nuclei, instances_by_watershed

KEYS = ("pixel_f1", "object_dice", "aji", "aji_plus", "pq", "dq", "sq", "pixel_iou")
PROTOCOLS = ("full", "crop512", "crop512_cc")


def floats(s: str):
    return [float(v) for v in s.split(",") if v.strip()]


def ints(s: str):
    return [int(v) for v in s.split(",") if v.strip()]


def load_split(root: Path, split: str, limit: int | None):
    imgs = sorted((root / split / "images").glob("*.png"))[:limit]
    if not imgs:
        raise SystemExit(f"{root / split / 'images'}: no PNG images (pass --monuseg)")
    return [(p.stem, read_rgb(p), read_instance_label(root / split / "labels" / p.name)) for p in imgs]


def centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[top:top + size, left:left + size]


def mean_rows(rows, keys=KEYS):
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, default=Path("/work/shared/data/monuseg"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/classical_baseline"))
    ap.add_argument("--limit", type=int, default=None, help="images per split (smoke tests only)")
    ap.add_argument("--threshold_scales", type=floats, default=floats("0.6,0.8,1.0"))
    ap.add_argument("--min_distances", type=ints, default=ints("6,10"))
    ap.add_argument("--sigmas", type=floats, default=floats("1,2"))
    ap.add_argument("--min_size", type=int, default=30)
    ap.add_argument("--hole_size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=512)
    a = ap.parse_args(argv)
    command = " ".join(shlex.quote(x) for x in [Path(sys.executable).name, "-m", "scripts.benchmark_classical",
                                                *sys.argv[1:]])
    t_start = time.perf_counter()

    train = load_split(a.monuseg, "train", a.limit)
    test = load_split(a.monuseg, "test", a.limit)
    t_load = time.perf_counter() - t_start

    # ---- grid search on TRAIN (the foreground depends only on threshold_scale: computed once per image) ----
    t0 = time.perf_counter()
    grid = []
    for ts in a.threshold_scales:
        masks = [classical_foreground(rgb, ts, a.min_size, a.hole_size) for _, rgb, _ in train]
        for md, sg in itertools.product(a.min_distances, a.sigmas):
            tc = time.perf_counter()
            rows = []
            for m, (_, _, gt) in zip(masks, train):
                pred = instances_by_watershed(m, None, min_distance=md, sigma=sg, min_size=a.min_size)
                rows.append(instance_scores(pred, gt))
            grid.append({"threshold_scale": ts, "min_distance": md, "sigma": sg, "min_size": a.min_size,
                         "hole_size": a.hole_size, **mean_rows(rows), "seconds": time.perf_counter() - tc})
            print(f"train ts={ts} md={md} sigma={sg}: AJI {grid[-1]['aji']:.4f} F1 {grid[-1]['pixel_f1']:.4f}",
                  flush=True)
    t_grid = time.perf_counter() - t0
    best = max(grid, key=lambda r: r["aji"])  # first of ties (grid order)
    params = {k: best[k] for k in ("threshold_scale", "min_distance", "sigma", "min_size", "hole_size")}
    print(f"selected on train: {params} (mean AJI {best['aji']:.4f})", flush=True)

    # ---- TEST with the selected parameters ----
    from skimage.measure import label

    t0 = time.perf_counter()
    per_image, seg_times = [], []
    for name, rgb, gt in test:
        ts = time.perf_counter()
        pred = classical_nuclei(rgb, **params)
        seg_times.append(time.perf_counter() - ts)
        pc, gc = centre_crop(pred, a.crop), centre_crop(gt, a.crop)
        row = {"image": name, "n_pred": int(len(np.unique(pred)) - 1), "n_gt": int(len(np.unique(gt)) - 1),
               "seconds": seg_times[-1]}
        row["full"] = instance_scores(pred, gt)
        row["crop512"] = instance_scores(pc, gc)
        row["crop512_cc"] = instance_scores(pc, label(gc > 0))
        per_image.append(row)
    t_test = time.perf_counter() - t0
    test_means = {p: mean_rows([r[p] for r in per_image]) for p in PROTOCOLS}
    for p in PROTOCOLS:
        m = test_means[p]
        print(f"test {p}: " + " ".join(f"{k} {m[k]:.4f}" for k in ("pixel_f1", "object_dice", "aji", "aji_plus", "pq")))

    import scipy
    import skimage

    total = time.perf_counter() - t_start
    result = {
        "command": command,
        "method": "bundle.nuclei.postprocess.classical_nuclei: haematoxylin OD (rgb2hed) > threshold_scale * Otsu, "
                  "clean_mask(min_size, hole_size), Gaussian-smoothed EDT, peak_local_max(min_distance) markers, "
                  "watershed(-EDT) in the mask, instances < min_size removed",
        "selection": "grid on MoNuSeg train (labels used only to score), max mean per-image AJI (full images, "
                     "true instances)",
        "protocols": {
            "full": "full images, true GT instances",
            "crop512": f"centre {a.crop}x{a.crop} crop of the full-image prediction vs cropped true GT instances",
            "crop512_cc": f"centre {a.crop}x{a.crop} crop vs connected components of the binary GT (PSM reference)",
        },
        "limit": a.limit,
        "n_train": len(train),
        "n_test": len(test),
        "grid": grid,
        "selected": params,
        "train_score_of_selected": {k: best[k] for k in KEYS},
        "test_mean": test_means,
        "test_per_image": per_image,
        "timing_s": {"load": t_load, "grid": t_grid, "test": t_test, "total": total,
                     "segment_per_test_image_mean": float(np.mean(seg_times))},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "scikit-image": skimage.__version__},
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), result)
    a.out.with_suffix(".md").write_text(render_md(result))
    print(f"wrote {a.out.with_suffix('.json')} and {a.out.with_suffix('.md')} in {total:.1f} s")
    return result


def render_md(r) -> str:
    cols = ("pixel_f1", "object_dice", "aji", "aji_plus", "pq")
    lines = ["# Classical nuclei baseline on MoNuSeg", "",
             f"Command: `{r['command']}`", "",
             f"Method: {r['method']}.", "",
             f"Selection: {r['selection']}; {r['n_train']} train images, {len(r['grid'])} combinations. "
             f"Selected: `{r['selected']}`.", ""]
    if r["limit"]:
        lines += [f"**Smoke test only (--limit {r['limit']}): not a result.**", ""]
    lines += [f"## Test ({r['n_test']} images), mean over images", "",
              "| protocol | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for p, m in r["test_mean"].items():
        lines.append(f"| {p}: {r['protocols'][p]} | " + " | ".join(f"{m[k]:.3f}" for k in cols) + " |")
    lines += ["", "## Train grid (mean over train images, full images, true instances)", "",
              "| threshold_scale | min_distance | sigma | " + " | ".join(cols) + " | seconds |",
              "|---" * (len(cols) + 4) + "|"]
    for g in r["grid"]:
        lines.append(f"| {g['threshold_scale']} | {g['min_distance']} | {g['sigma']} | "
                     + " | ".join(f"{g[k]:.3f}" for k in cols) + f" | {g['seconds']:.1f} |")
    t = r["timing_s"]
    lines += ["", f"Timing: total {t['total']:.1f} s (load {t['load']:.1f}, grid {t['grid']:.1f}, "
              f"test {t['test']:.1f}); "
              f"classical_nuclei {t['segment_per_test_image_mean']:.2f} s per 1000x1000 test image on "
              f"{r['machine']['cpus']} CPU(s). Versions: {r['versions']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
