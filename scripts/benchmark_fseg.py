# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG benchmark on WSSS4LUAD validation patches (labels used only for scoring) + CPU speed.

For each backbone (own SSL Res2Net, random-init Res2Net floor, optionally ResNet-50 with local weights): features of
every patch (native size, one pass), a concept bank fitted on the same unlabelled patches (GAP of random windows),
then for each k variants A and B scored by matching, normalised matching and the linear probe
(:class:`bundle.fseg.evaluate.FSegEvaluator`). Floor without a network: per-pixel colour K-Means with the same k and
the same matching. Speed: one 1024x1024 tile, 1 CPU thread: features, variant A, variant B, and the NNLS of variant B
(``bpp`` and ``cd``) against scikit-learn's ``non_negative_factorization(update_H=False)`` on identical inputs.

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.benchmark_fseg --data ../shared/data/wsss4luad_val \\
        --ssl_ckpt /tmp/fseg_ssl/models/ssl/model.pt

Writes docs/results/fseg_benchmark.json and .md and docs/figures/fseg_examples.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bundle import fseg
from bundle.io import write_image, write_json
from bundle.metrics import confusion_counts, matching_scores

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ["tumour", "stroma", "normal", "background"]
CLASS_COLOURS = np.array([[200, 30, 40], [240, 150, 200], [40, 160, 60], [245, 245, 245]], np.uint8)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__}, 1 thread"


def bank_from_features(extractor, feats, shapes, ks, window, per_image, seed):
    """Same sampling as ConceptBankBuilder, on precomputed features."""
    rng = np.random.default_rng(seed)
    cells = max(1, int(round(window / extractor.stride)))
    vecs = []
    for f, (h, w) in zip(feats, shapes):
        valid = (-(-h // extractor.stride), -(-w // extractor.stride))
        v = [f[:, :valid[0], :valid[1]].mean(dim=(1, 2))[None],
             fseg.window_gap_features(f, cells, per_image, rng, valid)]
        vecs.append(torch.cat(v).numpy())
    vecs = np.concatenate(vecs)
    return fseg.fit_kmeans_bank(vecs, ks, seed), len(vecs)


def colour_kmeans(pairs, ks, seed, n_sample=200000):
    """Per-pixel RGB K-Means (fit on a pixel sample of all patches, ids shared across patches) + matching."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    pix = np.concatenate([rgb.reshape(-1, 3) for _, rgb, _ in pairs]).astype(np.float32)
    sample = pix[rng.choice(len(pix), min(n_sample, len(pix)), replace=False)]
    out, maps = {}, {}
    for k in ks:
        t0 = time.perf_counter()
        km = KMeans(k, n_init=4, random_state=seed).fit(sample)
        counts = np.zeros((k, len(CLASSES)), np.int64)
        maps[k] = []
        for _, rgb, gt in pairs:
            lab = km.predict(rgb.reshape(-1, 3).astype(np.float32)).reshape(gt.shape)
            counts += confusion_counts(lab, gt, k, len(CLASSES))
            maps[k].append(lab)
        out[f"colour_k{k}"] = {"variant": "colour K-Means", "k": k,
                               "match": matching_scores(counts, CLASSES),
                               "match_norm": matching_scores(counts, CLASSES, normalize=True),
                               "seconds": time.perf_counter() - t0}
    return out, maps


def speed(extractors, tile, banks_for_speed, n_components, seed):
    """Seconds per 1024x1024 tile of features, variant B and variant A for each backbone."""
    res = {}
    for name, ex in extractors.items():
        t0 = time.perf_counter()
        f = ex(tile)[0]
        tf = time.perf_counter() - t0
        row = {"features_s": tf, "grid": list(f.shape[1:]), "channels": int(f.shape[0])}
        cen = banks_for_speed.get(name)
        if cen is None:  # a bank of the right width for timing only (e.g. ResNet-50): K-Means of the tile's cells
            X = f.reshape(f.shape[0], -1).T.numpy()
            cen = fseg.fit_kmeans_bank(X, [64], seed)
        for k in sorted(cen):
            t0 = time.perf_counter()
            fseg.variant_b(f, cen[k], tile.shape[:2], ex)
            row[f"variant_b_k{k}_s"] = time.perf_counter() - t0
        k0 = max(cen)
        t0 = time.perf_counter()
        fseg.variant_a(f, cen[k0], tile.shape[:2], ex, n_components, seed=seed)
        row[f"variant_a_n{n_components}_s"] = time.perf_counter() - t0
        res[name] = row
    return res


def nnls_vs_sklearn(ex, tile, bank, ks):
    """Variant B's solve on identical inputs: torch bpp (default), torch cd (sklearn's iterates), sklearn cd."""
    from sklearn.decomposition import non_negative_factorization

    f = ex(tile)[0]
    C, h, w = f.shape
    X = f.reshape(C, -1).T.contiguous()
    out = {}
    for k in ks:
        H = np.clip(bank[k], 0, None).astype(np.float32)
        t0 = time.perf_counter()
        Ws, _, n_iter = non_negative_factorization(X.numpy(), H=H.copy(), n_components=k, update_H=False,
                                                   max_iter=10000, random_state=0)
        t_sk = time.perf_counter() - t0
        ref = fseg.bilinear_argmax(torch.from_numpy(Ws).T.reshape(-1, h, w), tile.shape[:2])
        row = {"pixels": int(X.shape[0]), "sklearn_s": t_sk, "sklearn_iter": int(n_iter)}
        obj = lambda W: float(((X.double() - W.double() @ torch.from_numpy(H).double()) ** 2).sum())  # noqa: E731
        row["sklearn_objective"] = obj(torch.from_numpy(Ws))
        for method in ("bpp", "cd"):
            t0 = time.perf_counter()
            W = fseg.nnls(X, torch.from_numpy(H), method=method)
            t = time.perf_counter() - t0
            lab = fseg.bilinear_argmax(W.T.reshape(-1, h, w), tile.shape[:2])
            row.update({f"{method}_s": t, f"{method}_speedup": t_sk / t,
                        f"{method}_cell_label_agreement": float((W.argmax(1).numpy() == Ws.argmax(1)).mean()),
                        f"{method}_pixel_label_agreement": float((lab == ref).float().mean()),
                        f"{method}_objective": obj(W)})
        out[f"k{k}"] = row
        print(f"NNLS k={k}: sklearn {t_sk:.2f}s ({n_iter} it), bpp {row['bpp_s']:.2f}s (x{row['bpp_speedup']:.1f}, "
              f"agree {row['bpp_pixel_label_agreement']:.4f}), cd {row['cd_s']:.2f}s (x{row['cd_speedup']:.1f}, "
              f"agree {row['cd_pixel_label_agreement']:.4f})", flush=True)
    return out


def class_map(labels, mapping):
    m = np.asarray(mapping)
    m = np.where(m < 0, 3, m)
    return CLASS_COLOURS[m[labels]]


def figure(pairs, panels, path, idx):
    """Rows = patches; columns = image, GT, then each panel's matched class map. PIL only."""
    from PIL import Image, ImageDraw

    side = 200
    cols = ["image", "ground truth"] + [p[0] for p in panels]
    head = 48
    canvas = Image.new("RGB", (side * len(cols), head + side * len(idx)), "white")
    d = ImageDraw.Draw(canvas)
    for j, c in enumerate(cols):
        for li, line in enumerate(c.split("\n")):
            d.text((j * side + 4, 2 + 14 * li), line, fill=(0, 0, 0))
    x = 4
    for name, colour in zip(CLASSES, CLASS_COLOURS):  # legend: concepts shown in the colour of their matched class
        d.rectangle([x, 32, x + 12, 44], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        d.text((x + 16, 32), name, fill=(0, 0, 0))
        x += 100
    d.text((x, 32), "(each concept drawn in the colour of its matched GT class; matching uses the labels)",
           fill=(0, 0, 0))
    for r, i in enumerate(idx):
        stem, rgb, gt = pairs[i]
        tiles = [rgb, CLASS_COLOURS[gt]] + [class_map(p[1][i], p[2]) for p in panels]
        for j, t in enumerate(tiles):
            im = Image.fromarray(np.asarray(t, np.uint8))
            im.thumbnail((side - 4, side - 4))
            canvas.paste(im, (j * side + 2, head + r * side + 2))
    write_image(path, np.asarray(canvas))


def markdown(res) -> str:
    L = ["# F-SEG on WSSS4LUAD validation (31 patches; labels used only for scoring)", "",
         f"Machine: {res['machine']}. Date: {res['date']}. Command: `{res['command']}`", "",
         "mIoU and per-class F1 from pixel counts pooled over all patches. *match*: each concept -> the GT class "
         "with most pixels; *norm*: class-frequency-normalised matching; *probe*: the paper's linear probe on "
         f"concept features, {res['settings']['probe_folds']}-fold cross-validation over patches.", "",
         "| backbone | variant | k | mIoU match | mIoU norm | mIoU probe | F1 tumour | F1 stroma | F1 normal | "
         "F1 background | F1 (norm) normal |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["scores"].items():
        m, n = r["match"], r["match_norm"]
        probe = f"{r['probe']['miou']:.3f}" if "probe" in r else "-"
        f1 = " | ".join(f"{m['f1'][c]:.3f}" for c in CLASSES)
        L.append(f"| {r['backbone']} | {r['variant']} | {r['k']} | {m['miou']:.3f} | {n['miou']:.3f} | {probe} | "
                 f"{f1} | {n['f1']['normal']:.3f} |")
    if "speed" not in res:
        return "\n".join(L + ["", f"Settings: {json.dumps(res['settings'])}", ""])
    L += ["", "## Speed (one 1024x1024 tile, 1 CPU thread, seconds)", "", "| backbone | " +
          " | ".join(k for k in next(iter(res["speed"].values())) if k.endswith("_s")) + " |"]
    keys = [k for k in next(iter(res["speed"].values())) if k.endswith("_s")]
    L.append("|---|" + "---|" * len(keys))
    for name, r in res["speed"].items():
        L.append(f"| {name} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in keys) + " |")
    L += ["", "## Variant B solve vs scikit-learn (same features and centres, own SSL backbone, 1024x1024 tile)", "",
          "| k | pixels | sklearn s (iterations) | bpp s | speed-up | bpp label agreement (cells / pixels) | "
          "cd s | speed-up | cd label agreement (cells / pixels) | objective sklearn / bpp |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in res["nnls_vs_sklearn"].items():
        L.append(f"| {k[1:]} | {r['pixels']} | {r['sklearn_s']:.2f} ({r['sklearn_iter']}) | {r['bpp_s']:.2f} | "
                 f"{r['bpp_speedup']:.1f}x | {r['bpp_cell_label_agreement']:.4f} / {r['bpp_pixel_label_agreement']:.4f}"
                 f" | {r['cd_s']:.2f} | {r['cd_speedup']:.1f}x | {r['cd_cell_label_agreement']:.4f} / "
                 f"{r['cd_pixel_label_agreement']:.4f} | {r['sklearn_objective']:.2f} / {r['bpp_objective']:.2f} |")
    L += ["", f"Settings: {json.dumps(res['settings'])}", ""]
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "wsss4luad_val"))
    ap.add_argument("--ssl_ckpt", required=True, help="models/ssl/model.pt of configs/ssl_train.json")
    ap.add_argument("--resnet50_weights", default=None, help="optional local ResNet-50 state dict")
    ap.add_argument("--ssl_layer2", action="store_true", help="also the own SSL network's layer2 (stride 8)")
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--windows_per_image", type=int, default=8)
    ap.add_argument("--n_components", type=int, default=20)
    ap.add_argument("--probe_folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed_ks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--skip_speed", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "fseg_benchmark"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "fseg_examples.png"))
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    data = Path(a.data)

    extractors = {"own SSL Res2Net": fseg.build_extractor("res2net", a.ssl_ckpt, seed=a.seed),
                  "random-init Res2Net": fseg.build_extractor("res2net", "random", seed=a.seed)}
    if a.ssl_layer2:
        extractors["own SSL Res2Net layer2"] = fseg.build_extractor("res2net", a.ssl_ckpt, layer="layer2", seed=a.seed)
    if a.resnet50_weights:
        extractors["ResNet-50 (local weights)"] = fseg.build_extractor("resnet50", a.resnet50_weights)
    ev = fseg.FSegEvaluator(extractors["own SSL Res2Net"], None, data / "img", "/tmp/unused",
                            label_dir=data / "mask", ks=a.ks, class_names=CLASSES,
                            factor=fseg.Factorisation(n_components=a.n_components, seed=a.seed),
                            probe_folds=a.probe_folds)
    pairs, skipped = ev.load()
    print(f"{len(pairs)} patches ({sum(g.size for _, _, g in pairs) / 1e6:.2f} Mpx), skipped {skipped}", flush=True)

    scores, timings, banks, maps = {}, {}, {}, {}
    for name, ex in extractors.items():
        t0 = time.perf_counter()
        feats = [ex(rgb)[0] for _, rgb, _ in pairs]
        t_feat = time.perf_counter() - t0
        bank, n_vec = bank_from_features(ex, feats, [rgb.shape[:2] for _, rgb, _ in pairs], a.ks, a.window,
                                         a.windows_per_image, a.seed)
        banks[name] = bank
        ev.extractor = ex
        t1 = time.perf_counter()
        res = ev.evaluate_pairs(pairs, bank, ["A", "B"], feats)
        for key, r in res.items():
            r["backbone"] = name
            scores[f"{name} {key}"] = r
            print(f"{name:22s} {key:7s} mIoU match {r['match']['miou']:.3f} norm {r['match_norm']['miou']:.3f} "
                  f"probe {r['probe']['miou']:.3f}  ({r['seconds']:.1f}s)", flush=True)
        # label maps for the figure (k = smallest)
        k0 = min(a.ks)
        for v in ("A", "B"):
            maps[(name, v)] = [fseg.segment(f, bank[k0], rgb.shape[:2], ex, v, a.n_components, a.seed)["labels"]
                               .numpy() for f, (_, rgb, _) in zip(feats, pairs)]
        timings[name] = {"features_all_s": t_feat, "bank_vectors": n_vec, "evaluate_all_s": time.perf_counter() - t1,
                         "signature": ex.signature()}
    col, col_maps = colour_kmeans(pairs, a.ks, a.seed)
    for key, r in col.items():
        r["backbone"] = "none (RGB pixels)"
        scores[key] = r
        print(f"colour K-Means {key:7s} mIoU match {r['match']['miou']:.3f} norm {r['match_norm']['miou']:.3f}",
              flush=True)

    k0 = min(a.ks)
    idx = [i for i, (_, _, g) in enumerate(pairs) if len(np.unique(g)) >= 3][:3] + [2]
    panels = [(f"colour K-Means\nk={k0}", col_maps[k0], scores[f"colour_k{k0}"]["match"]["mapping"])]
    for name in [n for n in extractors if "layer2" not in n]:
        for v in ("B", "A"):
            short = name.replace(" Res2Net", "").replace("random-init", "random")
            panels.append((f"{short} {v}\nk={k0}", maps[(name, v)], scores[f"{name} {v}_k{k0}"]["match"]["mapping"]))
    figure(pairs, panels, a.figure, idx)

    res = {"machine": machine(), "date": a.date, "python": platform.python_version(),
           "command": " ".join(["OMP_NUM_THREADS=1 .venv/bin/python -m scripts.benchmark_fseg",
                                *(argv or sys.argv[1:])]),
           "data": {"path": str(data), "n_patches": len(pairs), "megapixels": sum(g.size for _, _, g in pairs) / 1e6,
                    "classes": CLASSES},
           "settings": {"ks": a.ks, "window_px": a.window, "windows_per_image": a.windows_per_image,
                        "n_components_variant_a": a.n_components, "probe_folds": a.probe_folds, "seed": a.seed,
                        "input": "native resolution, padded to stride 16",
                        "bank": "fitted on the same 31 unlabelled patches (transductive, no labels)"},
           "timings": timings, "scores": scores}
    if not a.skip_speed:
        big = [rgb[:256, :256] for _, rgb, _ in pairs if min(rgb.shape[:2]) >= 256]  # 16 crops -> 1024 x 1024
        big = [big[i % len(big)] for i in range(16)]
        tile = np.concatenate([np.concatenate(big[j:j + 4], 1) for j in range(0, 16, 4)], 0)
        assert tile.shape == (1024, 1024, 3), tile.shape
        sp_ex = {n: e for n, e in extractors.items() if n.startswith("own")}  # random-init: same cost as own SSL
        if "ResNet-50 (local weights)" not in sp_ex:
            sp_ex["ResNet-50 (random weights, timing only)"] = fseg.build_extractor("resnet50", "random")
        sp_banks = {n: {k: b[k] for k in a.speed_ks if k in b} for n, b in banks.items()}
        res["speed"] = speed(sp_ex, tile, sp_banks, a.n_components, a.seed)
        for n, r in res["speed"].items():
            print(n, {k: round(v, 2) for k, v in r.items() if k.endswith("_s")}, flush=True)
        res["nnls_vs_sklearn"] = nnls_vs_sklearn(extractors["own SSL Res2Net"], tile, banks["own SSL Res2Net"],
                                                 a.speed_ks)
    res["total_s"] = time.perf_counter() - t_all
    write_json(a.out + ".json", res)
    with open(a.out + ".md.part", "w") as f:
        f.write(markdown(res))
    os.replace(a.out + ".md.part", a.out + ".md")
    print(f"done in {res['total_s']:.0f}s -> {a.out}.json/.md, {a.figure}")


if __name__ == "__main__":
    main()
