# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Benchmark of the cell-level InfoGAN (issue 6): docs/results/gan_benchmark.{json,md}, docs/figures/gan_*.png.

1. Cell level, BCData sample (Ki-67 IHC, 26 images): cells cropped at the annotated points (32x32 window, a white
   disc mask of radius 11 px around each point, the same for both classes), Reinhard-normalised to the set's mean;
   the GAN is trained on them without labels (``configs/gan_train.json``, CPU profile) and argmax Q is scored
   against positive / negative with ``bundle.metrics.clustering_scores``; baselines with the same K and the same
   metric code: K-Means on raw pixels, on the trained critic-trunk features and on a random-init critic's features.
2. Image level, MoNuSeg train (30 images, 7 organs): ``configs/cells_extract.json`` (classical finder) ->
   ``configs/gan_train.json`` (on a random subset of the cells) -> ``configs/gan_classify.json`` with
   ``organs.csv``: K-Means (k = 7) and leave-one-out linear SVM on the per-image category proportions, against
   chance; the same classification on proportions of raw-pixel and trunk-feature K-Means clusters.

Run (from the repository root; one thread, as the numbers in docs/gan.md):

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.benchmark_gan --work /tmp/gan_bench

Reruns reuse finished training runs (the bundle resumes and stops at the configured epoch).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bundle_run(config: str, **override):
    from monai.bundle import run

    return run(config_file=str(ROOT / "configs" / config), meta_file=str(ROOT / "configs" / "metadata.json"),
               logging_file=str(ROOT / "configs" / "logging.conf"), **override)


def load_critic(path, K, channels):
    import torch

    from bundle.networks.infogan import InfoGANCritic

    net = InfoGANCritic(n_categories=K, channels=channels, q_norm=True)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def load_generator(path, K, noise_dim, channels):
    import torch

    from bundle.networks.infogan import Generator

    g = Generator(noise_dim=noise_dim, n_categories=K, channels=channels)
    g.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return g.eval()


def kmeans(X, k, seed=0, fit_max=6000):
    from sklearn.cluster import KMeans

    X = np.asarray(X, np.float32)
    rng = np.random.default_rng(seed)
    fit = X[rng.choice(len(X), fit_max, replace=False)] if len(X) > fit_max else X
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(fit)
    return km.predict(X)


def raw_pixels(cells):
    return cells.reshape(len(cells), -1).astype(np.float32) / 255.0


def labelled_grid(rows, labels, scale=3, label_w=110):
    """Stack uint8 montage rows (each a (h, w, 3) image), nearest-upscaled, with a text label on the left."""
    from PIL import Image, ImageDraw

    w = max(r.shape[1] for r in rows) * scale
    h = sum(r.shape[0] for r in rows) * scale
    img = Image.new("RGB", (w + label_w, h), "white")
    dr = ImageDraw.Draw(img)
    y = 0
    for r, lab in zip(rows, labels):
        im = Image.fromarray(r).resize((r.shape[1] * scale, r.shape[0] * scale), Image.NEAREST)
        img.paste(im, (label_w, y))
        for j, line in enumerate(str(lab).split("\n")):
            dr.text((4, y + r.shape[0] * scale // 2 - 12 + 12 * j), line, fill="black")
        y += r.shape[0] * scale
    return np.asarray(img)


def chance_matched_accuracy(y, k, n=2000, seed=0):
    """Mean one-to-one-matched accuracy of uniformly random cluster labels (k clusters) against ``y``."""
    from bundle.gan.classify import cluster_accuracy

    rng = np.random.default_rng(seed)
    return float(np.mean([cluster_accuracy(rng.integers(0, k, len(y)), y) for _ in range(n)]))


# ------------------------------------------------------------------------------------------------------------------
def bcdata_cells(data: Path, out: Path, radius: float):
    from bundle.annotations import read_points
    from bundle.gan.cells import crop_at_points
    from bundle.io import atomic_path, read_rgb, write_csv
    from bundle.stain import lab_stats, reinhard_normalize

    imgs = sorted((data / "images").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    rgbs = {p.stem: read_rgb(p) for p in imgs}
    stats = [lab_stats(v) for v in rgbs.values()]
    target = (np.mean([s[0] for s in stats], 0), np.mean([s[1] for s in stats], 0))
    cells, rows = [], []
    for p in imgs:
        norm = reinhard_normalize(rgbs[p.stem], *target)
        for cls in ("positive", "negative"):
            f = data / "annotations" / cls / f"{p.stem}.h5"
            if not f.is_file():
                continue
            c, r = crop_at_points(norm, read_points(f), window=32, size=32, mask_mode="disc", disc_radius=radius)
            cells.append(c)
            for x in r:
                rows.append({"index": len(rows), "image": str(p), "image_name": p.stem, **x, "source": "points",
                             "label": cls})
    cells = np.concatenate(cells)
    with atomic_path(out / "cells.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, cells)
    write_csv(out / "cells.csv", rows)
    return cells, np.array([r["label"] for r in rows]), [r["image_name"] for r in rows]


def cell_level(args, results, figs):
    import torch

    from bundle.gan.cells import montage
    from bundle.gan.classify import assign_categories, trunk_features
    from bundle.gan.train import generated_grid
    from bundle.metrics import clustering_scores
    from bundle.networks.infogan import InfoGANCritic

    work = Path(args.work) / "bcdata"
    K, ch = args.k, args.channels
    cells, y, _ = bcdata_cells(Path(args.bcdata), work / "cells", args.disc_radius)
    n_pos = int((y == "positive").sum())
    print(f"BCData: {len(cells)} cells ({n_pos} positive)", flush=True)
    t0 = time.time()
    bundle_run("gan_train.json", bundle_root=str(work), epochs=args.bc_epochs, channels=ch, n_categories=K,
               seed=args.seed)
    train_s = time.time() - t0
    hist = json.loads((work / "eval" / "gan" / "gan_history.json").read_text())
    critic = load_critic(work / "models" / "model.pt", K, ch)
    q, _ = assign_categories(critic, cells)
    feats = trunk_features(critic, cells)
    torch.manual_seed(args.seed)
    rand_feats = trunk_features(InfoGANCritic(n_categories=K, channels=ch, q_norm=True), cells)
    raw = raw_pixels(cells)
    rows = {
        f"InfoGAN argmax Q (K={K})": q,
        f"K-Means raw pixels (K={K})": kmeans(raw, K, args.seed),
        f"K-Means critic-trunk features (K={K})": kmeans(feats, K, args.seed),
        f"K-Means random-init critic features (K={K})": kmeans(rand_feats, K, args.seed),
        "K-Means raw pixels (K=2)": kmeans(raw, 2, args.seed),
        "K-Means mean RGB of the crop (K=2)": kmeans(cells.reshape(len(cells), -1, 3).mean(1), 2, args.seed),
    }
    table = {}
    for name, lab in rows.items():
        s = clustering_scores(lab, y)
        table[name] = {k: round(float(v), 4) for k, v in s.items()}
        table[name]["clusters_used"] = int(len(np.unique(lab)))
        print(f"  {name}: {table[name]}", flush=True)
    per_cat = []
    for k in range(K):
        m = q == k
        per_cat.append({"category": k, "n": int(m.sum()),
                        "positive_fraction": round(float((y[m] == "positive").mean()), 3) if m.any() else None})
    results["cell_level"] = {
        "data": "BCData sample, 26 test images, cells at annotated points",
        "n_cells": int(len(cells)), "n_positive": n_pos, "n_negative": int(len(cells) - n_pos),
        "chance_purity_majority_class": round(max(n_pos, len(cells) - n_pos) / len(cells), 4),
        "crop": f"32x32 window at each point, white outside a disc of radius {args.disc_radius} px",
        "training": {"epochs": args.bc_epochs, "channels": ch, "n_categories": K, "batch_size": 32,
                     "seconds_total": round(train_s, 1), "per_epoch": hist},
        "scores": table, "q_categories": per_cat,
    }
    # figures: generated cells per category, real cells per category
    gen = load_generator(work / "models" / "generator.pt", K, 32, ch)
    grid = generated_grid(gen, n_per_category=10, seed=args.seed)
    rows_img = np.array_split(grid[2:], K, axis=0)
    from bundle.io import write_image

    write_image(figs / "gan_generated_bcdata.png",
                labelled_grid(rows_img, [f"category {k}" for k in range(K)]))
    rng = np.random.default_rng(args.seed)
    real_rows, labels = [], []
    for k in range(K):
        idx = np.flatnonzero(q == k)
        pick = rng.choice(idx, min(10, len(idx)), replace=False) if len(idx) else []
        real_rows.append(montage(cells[pick], ncol=10) if len(pick) else np.full((34, 342, 3), 255, np.uint8))
        pf = per_cat[k]["positive_fraction"]
        labels.append(f"category {k}\nn={per_cat[k]['n']}\n{'' if pf is None else f'{100 * pf:.0f}% Ki-67+'}")
    write_image(figs / "gan_cells_per_category_bcdata.png", labelled_grid(real_rows, labels))


def image_level(args, results, figs):
    from bundle.gan.cells import load_cells
    from bundle.gan.classify import (
        assign_categories,
        category_proportions,
        classify_images,
        plot_proportions,
        read_image_labels,
        trunk_features,
    )
    from bundle.gan.train import generated_grid
    from bundle.io import write_image

    work = Path(args.work) / "monuseg"
    K, ch = args.k, args.channels
    data = Path(args.monuseg)
    t0 = time.time()
    if not (work / "cells" / "cells.npy").is_file():
        bundle_run("cells_extract.json", bundle_root=str(work), dataset_dir=str(data / "images"), seed=args.seed)
    extract_s = time.time() - t0
    cells, table = load_cells(work / "cells")
    images = [r["image_name"] for r in table]
    print(f"MoNuSeg: {len(cells)} cells from {len(set(images))} images ({extract_s:.0f} s)", flush=True)
    t0 = time.time()
    bundle_run("gan_train.json", bundle_root=str(work), epochs=args.mo_epochs, channels=ch, n_categories=K,
               max_cells=args.mo_max_cells, seed=args.seed)
    train_s = time.time() - t0
    hist = json.loads((work / "eval" / "gan" / "gan_history.json").read_text())
    organs_csv = data / "organs.csv"
    bundle_run("gan_classify.json", bundle_root=str(work), channels=ch, n_categories=K, labels_csv=str(organs_csv),
               seed=args.seed)
    summ = json.loads((work / "eval" / "gan_classify" / "summary.json").read_text())
    organs = read_image_labels(organs_csv)
    critic = load_critic(work / "models" / "model.pt", K, ch)
    q, _ = assign_categories(critic, cells)
    feats = trunk_features(critic, cells)
    variants = {f"InfoGAN argmax Q (K={K})": q,
                f"K-Means raw pixels (K={K})": kmeans(raw_pixels(cells), K, args.seed),
                f"K-Means critic-trunk features (K={K})": kmeans(feats, K, args.seed)}
    out = {}
    for name, lab in variants.items():
        names, props, n = category_proportions(lab, images, K)
        y = [organs[x] for x in names]
        res = classify_images(props, y, n_clusters=len(set(y)), seed=args.seed)
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()
                     if k in ("kmeans_accuracy", "kmeans_nmi", "kmeans_purity", "svm_loo_accuracy")}
        print(f"  {name}: {out[name]}", flush=True)
        if name.startswith("InfoGAN"):
            gan_props, gan_names, gan_y = props, names, y
            assert abs(res["kmeans_accuracy"] - summ["kmeans_accuracy"]) < 1e-9  # the config gives the same
    classes, counts = np.unique(gan_y, return_counts=True)
    results["image_level"] = {
        "data": "MoNuSeg 2018 train, 30 images, organ from organs.csv",
        "n_images": len(gan_names), "organs": dict(zip(classes.tolist(), counts.tolist())),
        "n_cells": int(len(cells)),
        "cells_per_image_median": float(np.median(np.unique(images, return_counts=True)[1])),
        "extract_seconds": round(extract_s, 1),
        "chance": {"majority_class": round(float(counts.max() / counts.sum()), 4),
                   "uniform": round(1 / len(classes), 4),
                   "kmeans_matched_random_labels": round(chance_matched_accuracy(np.asarray(gan_y), len(classes)), 4)},
        "training": {"epochs": args.mo_epochs, "channels": ch, "n_categories": K, "batch_size": 32,
                     "max_cells": args.mo_max_cells, "seconds_total": round(train_s, 1), "per_epoch": hist},
        "classification": out,
        "gan_classify_summary": summ,
    }
    plot_proportions(gan_props, gan_names, gan_y, figs / "gan_proportions_monuseg.png",
                     title=f"MoNuSeg train: InfoGAN cell-category proportions per image, grouped by organ (K={K})")
    gen = load_generator(work / "models" / "generator.pt", K, 32, ch)
    grid = generated_grid(gen, n_per_category=10, seed=args.seed)
    write_image(figs / "gan_generated_monuseg.png",
                labelled_grid(np.array_split(grid[2:], K, axis=0), [f"category {k}" for k in range(K)]))


def write_md(results, path):
    L = ["# Cell-level InfoGAN benchmark", "",
         f"Machine: {results['machine']}; date {results['date']}.", "", "Commands:", ""] + \
        [f"    {c}" for c in results["commands"].values()] + [""]
    c = results.get("cell_level")
    if c:
        t = c["training"]
        L += ["## Cell level: BCData sample (Ki-67 positive vs negative)", "",
              f"{c['n_cells']} cells ({c['n_positive']} positive, {c['n_negative']} negative) from 26 images; "
              f"{c['crop']}. Majority-class purity (chance): {c['chance_purity_majority_class']}. "
              f"GAN: {t['epochs']} epochs, channels {t['channels']}, batch {t['batch_size']}, "
              f"{t['seconds_total']} s in total.", "",
              "| clustering | clusters used | purity | entropy (lower better) | NMI | ARI | F-score |",
              "|---|---|---|---|---|---|---|"]
        for name, s in c["scores"].items():
            L.append(f"| {name} | {s['clusters_used']} | {s['purity']:.3f} | {s['entropy']:.3f} | {s['nmi']:.3f} | "
                     f"{s['ari']:.3f} | {s['f_score']:.3f} |")
        L += ["", "Q categories: " + "; ".join(f"{p['category']}: n={p['n']}, {p['positive_fraction']} positive"
                                              for p in c["q_categories"]), ""]
    m = results.get("image_level")
    if m:
        t = m["training"]
        ch = m["chance"]
        L += ["## Image level: MoNuSeg train, organ from cell-category proportions", "",
              f"{m['n_images']} images, organs {m['organs']}; {m['n_cells']} cells found by cells_extract "
              f"(median {m['cells_per_image_median']:.0f} per image, {m['extract_seconds']} s). GAN trained on "
              f"{t['max_cells']} random cells, {t['epochs']} epochs, {t['seconds_total']} s.", "",
              f"Chance: majority class {ch['majority_class']}, uniform {ch['uniform']}, matched accuracy of random "
              f"7-cluster labels {ch['kmeans_matched_random_labels']}.", "",
              "| cell categories | K-Means (k=7) matched accuracy | K-Means NMI | K-Means purity "
              "| LOO linear SVM accuracy |",
              "|---|---|---|---|---|"]
        for name, s in m["classification"].items():
            L.append(f"| {name} | {s['kmeans_accuracy']:.3f} | {s['kmeans_nmi']:.3f} | {s['kmeans_purity']:.3f} | "
                     f"{s['svm_loo_accuracy']:.3f} |")
        L.append("")
    L += ["## Training time per epoch (CPU profile, 1 thread)", "", "| data | cells per epoch | iterations | "
          "median s / epoch |", "|---|---|---|---|"]
    for key, name in (("cell_level", "BCData"), ("image_level", "MoNuSeg")):
        if key in results:
            h = results[key]["training"]["per_epoch"]
            n = results[key]["n_cells"] if key == "cell_level" else results[key]["training"]["max_cells"]
            L.append(f"| {name} | {n} | {h[0]['iterations']} | {np.median([e['seconds'] for e in h]):.1f} |")
    Path(path).write_text("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bcdata", default=str(ROOT.parent / "shared" / "data" / "bcdata_sample"))
    ap.add_argument("--monuseg", default=str(ROOT.parent / "shared" / "data" / "monuseg" / "train"))
    ap.add_argument("--work", default="/tmp/gan_bench")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--bc_epochs", type=int, default=12)
    ap.add_argument("--mo_epochs", type=int, default=6)
    ap.add_argument("--mo_max_cells", type=int, default=6000)
    ap.add_argument("--disc_radius", type=float, default=11.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["cell", "image"], default=None)
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    figs = ROOT / "docs" / "figures"
    res_dir = ROOT / "docs" / "results"
    out_json = res_dir / "gan_benchmark.json"
    results = json.loads(out_json.read_text()) if (args.only and out_json.is_file()) else {}
    cmd = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python -m scripts.benchmark_gan", *sys.argv[1:]])
    part = args.only or "all"
    if "command" in results and "commands" not in results:  # older single-command format
        results["commands"] = {"cell" if "--only cell" in results["command"] else "all": results["command"]}
    results.update({"machine": f"2-core CPU, shared with other jobs ({cpu_name()}), torch threads 1",
                    "date": args.date, "torch": torch.__version__,
                    "commands": {**results.get("commands", {}), part: cmd}})
    results.pop("command", None)
    if args.only in (None, "cell"):
        cell_level(args, results, figs)
    if args.only in (None, "image"):
        image_level(args, results, figs)
    from bundle.io import write_json

    write_json(out_json, results)
    write_md(results, res_dir / "gan_benchmark.md")
    print(f"wrote {out_json} and {res_dir / 'gan_benchmark.md'}")


if __name__ == "__main__":
    main()
