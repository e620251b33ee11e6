# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Inference defaults chosen on MoNuSeg **train** (labels only to score; test is never looked at here), with the
shipped network run as a user runs ``configs/inference.json`` (no TTA). Each choice has a rule fixed before looking.

``--choice min_size``: the smallest nucleus kept (``min_size``, px at 40x; issue 29's nucleus counts). One run at the
grid's smallest value (``--mpp 0.25``); each larger value removes the smaller instances from that run's label maps
(the maps a run at that value writes: checked for 60 px). Per value: mean per-image AJI, PQ, predicted / true nucleus
counts and the images whose count is within 15 % of the true one; the classical baseline's counts as a reference.
Rule: the most images within 15 % with mean AJI within 0.001 of the smallest value's; ties go to the smaller value.

    python -m scripts.benchmark_train_choices --choice min_size --monuseg ../shared/data/monuseg \
        --out docs/results/min_size_train

``--choice dead_zone``: the estimated-scale ratios that count as the network's own magnification
(``runner#scale_dead_zone``). The train images at 1x, 0.75x and 0.5x (box-resized as in
:mod:`scripts.benchmark_scale`), each run twice: at its folder's 40x (``--mpp 0.25``) and at its estimated scale
(``--auto_scale True`` with no dead zone); a dead zone [lo, hi] takes the first where the estimate lies inside it.
Rule: the highest mean AJI over the three folders.

    python -m scripts.benchmark_train_choices --choice dead_zone --monuseg ../shared/data/monuseg \
        --out docs/results/dead_zone_train

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

import numpy as np
from skimage.morphology import remove_small_objects

from bundle.annotations import read_instance_label
from bundle.io import read_rgb
from bundle.label_free import child_env
from bundle.metrics import instance_scores
from bundle.nuclei.postprocess import classical_nuclei
from scripts import write_results
from scripts.benchmark_scale import count_summary, counts, infer, make_folders

DEAD_ZONE_LO = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
DEAD_ZONE_HI = (1.0, 1.1, 1.25, 1.5)


def counts_and_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    s = instance_scores(pred, gt)
    return {"aji": s["aji"], "pq": s["pq"], **counts(pred, gt)}


def summarise(rows: list) -> dict:
    return {"aji": round(float(np.mean([r["aji"] for r in rows])), 4),
            "pq": round(float(np.mean([r["pq"] for r in rows])), 4), **count_summary(rows)}


def choose_min_size(grid: dict) -> int:
    """Most images within 15 % with mean AJI within 0.001 of the smallest value's (ties: the smaller value)."""
    base = grid[min(grid)]["aji"]
    ok = [k for k in sorted(grid) if grid[k]["aji"] >= base - 0.001]
    return max(ok, key=lambda k: (grid[k]["images_within_15pct"], -k))


def min_size(a, env) -> dict:
    grid = sorted(int(v) for v in a.grid.split(","))
    train, out = a.monuseg / "train", a.work / "min_size"
    run = infer(train / "images", out, env, ["--mpp", 0.25, "--tta", False, "--min_size", grid[0]])
    params = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "classical_baseline.json")
                        .read_text())["selected"]
    rows, classical = {k: [] for k in grid}, []
    for p in sorted((train / "images").glob("*.png")):
        gt = read_instance_label(train / "labels" / p.name)
        pred = read_instance_label(out / "labels" / p.name)
        for k in grid:
            rows[k].append(counts_and_scores(remove_small_objects(pred, max_size=k - 1) if k > grid[0] else pred, gt))
        classical.append(counts_and_scores(classical_nuclei(read_rgb(p), **params), gt))
    res = {str(k): summarise(v) for k, v in rows.items()}
    return {"inference_command": run["command"], "grid": res, "classical": summarise(classical),
            "chosen": choose_min_size({int(k): v for k, v in res.items()})}


def dead_zone(a, env) -> dict:
    plan = {k: v for k, v in make_folders(a.monuseg / "train", a.work / "train_copies").items()
            if k in ("1x", "0.75x", "0.5x")}
    per_image, commands = {}, []
    for folder, scales in plan.items():
        s = next(iter(scales.values()))
        d = a.work / "train_copies" / folder / f"{s:g}"
        runs = {}
        for method, extra in (("40x", ["--mpp", 0.25]),
                              ("estimated", ["--auto_scale", True, "--runner#scale_dead_zone", "[1.0,1.0]"])):
            out = a.work / "dead_zone" / folder / method
            runs[method] = infer(d / "images", out, env, ["--tta", False, *extra])
            commands.append(runs[method]["command"])
        for n in scales:
            gt = read_instance_label(d / "labels" / n)
            est = runs["estimated"]["rows"][Path(n).stem].get("scale_factor", "")
            per_image.setdefault(folder, {})[n] = {
                "estimate": float(est) if est not in ("", None) else 1.0,
                **{m: instance_scores(read_instance_label(a.work / "dead_zone" / folder / m / "labels" / n), gt)["aji"]
                   for m in runs}}
    grid = {}
    for lo in DEAD_ZONE_LO:
        for hi in DEAD_ZONE_HI:
            by_folder = {f: round(float(np.mean([v["40x" if lo <= v["estimate"] <= hi else "estimated"]
                                                 for v in rows.values()])), 4) for f, rows in per_image.items()}
            grid[f"{lo:g}-{hi:g}"] = {"folders": by_folder, "mean": round(float(np.mean(list(by_folder.values()))), 4)}
    chosen = max(grid, key=lambda k: grid[k]["mean"])
    return {"commands": commands, "grid": grid, "chosen": chosen, "per_image": per_image}


def render_md(r: dict) -> str:
    L = [f"# Inference defaults chosen on MoNuSeg train: `{r['choice']}` ({r['date']})", "",
         f"`{r['command']}` on {r['machine']}; {r['seconds'] / 60:.1f} min. Shipped network, no TTA; labels only to "
         "score.", ""]
    if r["choice"] == "min_size":
        L += ["Sizes in px at 40x (scaled with the image's size at other scales); `--mpp 0.25`.", "",
              "| min_size | AJI | PQ | nuclei pred / true | count ratio min / median / max | images within 15 % |",
              "|---|---|---|---|---|---|"]
        for k, v in [*r["grid"].items(), ("classical", r["classical"])]:
            L.append(f"| {k} | {v['aji']:.4f} | {v['pq']:.4f} | {v['pred_count']} / {v['true_count']} | "
                     f"{v['count_ratio_min']:.2f} / {v['count_ratio_median']:.2f} / {v['count_ratio_max']:.2f} | "
                     f"{v['images_within_15pct']} / {v['n_images']} |")
        L += ["", f"Rule: most images within 15 % with mean AJI within 0.001 of {min(map(int, r['grid']))} px; "
              f"chosen: **{r['chosen']} px**."]
    else:
        folders = list(next(iter(r["grid"].values()))["folders"])
        L += ["Mean AJI per folder when an image whose estimated scale lies inside the dead zone is run at 40x and "
              "every other one at its estimate.", "", "| dead zone | " + " | ".join(folders) + " | mean |",
              "|---" * (len(folders) + 2) + "|"]
        for k, v in r["grid"].items():
            L.append(f"| {k} | " + " | ".join(f"{v['folders'][f]:.4f}" for f in folders) + f" | {v['mean']:.4f} |")
        L += ["", f"Rule: highest mean; chosen: **{r['chosen']}**."]
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--choice", required=True, choices=("min_size", "dead_zone"))
    ap.add_argument("--monuseg", type=Path, required=True, help="prepared MoNuSeg (train/images, train/labels)")
    ap.add_argument("--grid", default="20,30,40,50,60,70,80", help="min_size values, px at 40x")
    ap.add_argument("--work", type=Path, default=Path("/tmp/train_choices"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    t0 = time.time()
    env = child_env(OMP_NUM_THREADS=os.cpu_count() or 1)
    res = min_size(a, env) if a.choice == "min_size" else dead_zone(a, env)
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_train_choices " + " ".join(
             map(str, argv if argv is not None else sys.argv[1:])),
         "choice": a.choice, **res, "seconds": round(time.time() - t0, 1)}
    write_results(a.out, r, render_md(r))


if __name__ == "__main__":
    main()
