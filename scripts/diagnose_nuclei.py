#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Where does the label-free nuclei pipeline lose AJI on MoNuSeg? (issue 3 research; labels used only to score)

For a trained segmentation network (``--run NAME=BUNDLE_ROOT``, weights ``models/seg/model.pt``) and the classical
teacher, on train and test:

1. **Oracle decomposition.** Instances = point-seeded watershed (the shipped default) of
   (our foreground, our points) | (GT foreground, our points) | (our foreground, GT centroids) |
   (GT foreground, GT centroids). If the GT foreground with our points scores near the top and our foreground with
   GT points stays near our own score, the foreground (which pixels are nucleus), not the splitting, is what limits
   AJI.
2. **Error breakdown** (pixels summed over images): missed GT pixels (FN) that belong to wholly missed nuclei
   (< 20 % covered) or lie in the +-3 px band around GT boundaries; false pixels (FP) in spurious objects (< 20 %
   GT) or in that band.
3. **Fit to the teacher on train.** Per train image: foreground fraction of GT, teacher (haematoxylin Otsu,
   ``bundle.postprocess.classical_foreground``) and network, and the network's pixel F1 against its own teacher.
4. **Teacher variants** (train only; distance watershed): hole filling, threshold rules, smoothing; and how often the
   PSM and haematoxylin teachers agree (``--psm_masks``: a folder of the PSM pipeline's 0/255 pseudo masks).
5. **Spurious objects** (predicted instances with < 20 % GT pixels): the AJI if every one of them were removed (an
   oracle), how well per-object features tell them from real nuclei (ROC AUC), what label-free drop rules chosen by
   train AJI give, and, as a ceiling for such rules, a logistic classifier fitted on the *train labels* of those
   features (a diagnostic only: labels never reach the shipped pipeline).

``--blend W`` blends the image's haematoxylin evidence into the network's probability first, as ``inference.json``
does by default since docs/README.md item 11 (``--blend 0.35``); the default 0 reproduces the 2026-11-22 file.

    python scripts/diagnose_nuclei.py --monuseg ../shared/data/monuseg --run hotsu_keepfg=runs/pipe/hotsu_keepfg \
        --psm_masks runs/pipe/monuseg/eval/pseudo_masks/masks --out docs/results/nuclei_diagnosis
    python scripts/diagnose_nuclei.py --monuseg ../shared/data/monuseg --run hotsu_hx=runs/pipe/hotsu_hx \
        --blend 0.35 --out docs/results/nuclei_diagnosis_blend

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_classical import load_split, mean_rows  # noqa: E402

from bundle.clustering import clean_mask  # noqa: E402
from bundle.detection import (blend_hematoxylin, detection_points, instance_points, nuclei_from_probability,  # noqa: E402
                              predict_probability)
from bundle.handlers import resunet_input_channels  # noqa: E402
from bundle.io import read_mask, write_json  # noqa: E402
from bundle.metrics import instance_scores  # noqa: E402
from bundle.networks import ResUNet34  # noqa: E402
from bundle.postprocess import classical_foreground, instances_by_watershed  # noqa: E402
from bundle.transforms import hematoxylin_od, hematoxylin_ratio  # noqa: E402

KEYS = ("pixel_f1", "pixel_precision", "pixel_recall", "object_dice", "aji", "pq")


def _f1(p, g):
    return float(2 * (p & g).sum() / max(1, int(p.sum()) + int(g.sum())))


def oracle(prob, gt):
    """Scores of the four (foreground, markers) combinations."""
    pts, gpts = detection_points(prob), instance_points(gt)
    fg, gfg = clean_mask((1 - prob[0]) > 0.5, 20, 64), gt > 0
    ws = lambda m, p: instances_by_watershed(m, p, sigma=1.0, min_size=20)  # noqa: E731
    return {"ours": instance_scores(nuclei_from_probability(prob, "watershed", points=pts), gt),
            "gt_foreground+our_points": instance_scores(ws(gfg, pts), gt),
            "our_foreground+gt_points": instance_scores(ws(fg, gpts), gt),
            "gt_foreground+gt_points": instance_scores(ws(gfg, gpts), gt)}


def errors(inst, gt):
    """(gt px, pred px, FN, FN in missed objects, FN in band, FP, FP in spurious objects, FP in band)."""
    from scipy import ndimage as ndi

    fg, g = inst > 0, gt > 0
    gid = np.unique(gt[g])
    missed = np.isin(gt, gid[np.asarray(ndi.mean(fg, gt, gid)) < 0.2]) if len(gid) else np.zeros_like(g)
    spur = drop(inst, gt_fraction(inst, gt) >= 0.2) > 0  # instances with < 20 % GT pixels
    band = ndi.binary_dilation(g, iterations=3) & ~ndi.binary_erosion(g, iterations=3)
    fn, fp = g & ~fg, fg & ~g
    return np.array([g.sum(), fg.sum(), fn.sum(), (fn & missed).sum(), (fn & band).sum(), fp.sum(),
                     (fp & spur).sum(), (fp & band).sum()], np.float64)


def breakdown(e):
    g, p, fn, fnm, fnb, fp, fps, fpb = e
    return {"fn_of_gt": fn / g, "fn_in_missed_objects": fnm / fn, "fn_in_boundary_band": fnb / fn,
            "fp_of_pred": fp / p, "fp_in_spurious_objects": fps / fp, "fp_in_boundary_band": fpb / fp}


OBJECT_FEATURES = ("area", "mean P(nucleus)", "mean H / t", "max H / t", "H / t contrast to a 3 px ring",
                   "std H / t", "grey contrast to the ring")


def object_features(inst, prob, rgb):
    """(N, 7) features of instances 1..N (:data:`OBJECT_FEATURES`; H / t = haematoxylin OD over the image's Otsu
    threshold, :func:`bundle.transforms.hematoxylin_ratio`)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    ids = np.arange(1, int(inst.max()) + 1)
    if not len(ids):
        return np.zeros((0, len(OBJECT_FEATURES)))
    hr, grey = hematoxylin_ratio(rgb), np.asarray(rgb, np.float32).mean(-1) / 255.0
    ring = np.where(inst > 0, 0, expand_labels(inst, 3))
    mean = lambda x, lab: np.asarray(ndi.mean(x, lab, ids))  # noqa: E731
    mh = mean(hr, inst)
    return np.stack([np.asarray(ndi.sum(np.ones_like(grey), inst, ids)), mean(1.0 - prob[0], inst), mh,
                     np.asarray(ndi.maximum(hr, inst, ids)), mh - mean(hr, ring),
                     np.asarray(ndi.standard_deviation(hr, inst, ids)), mean(grey, ring) - mean(grey, inst)], 1)


def gt_fraction(inst, gt):
    """Fraction of each instance 1..N's pixels that are GT foreground."""
    from scipy import ndimage as ndi

    return np.asarray(ndi.mean(gt > 0, inst, np.arange(1, int(inst.max()) + 1)))


def drop(inst, bad):
    """``inst`` without the instances whose (1-based) ids have ``bad`` True."""
    return np.where(np.isin(inst, np.flatnonzero(bad) + 1), 0, inst)


def spurious_objects(objs):
    """Section 5 from per-image ``(split, inst, gt, features)``: oracle, feature AUCs, rules, supervised ceiling."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def aji(split, bad_fn):
        return float(np.mean([instance_scores(drop(i, bad_fn(f, g)), gt)["aji"]
                              for s, i, gt, f, g in objs if s == split]))

    out = {"oracle": {}, "auc": {}, "rules": {}, "supervised_ceiling": {}}
    for split in ("train", "test"):
        frac = np.concatenate([g for s, *_, g in objs if s == split])
        feats = np.concatenate([f for s, _, _, f, _ in objs if s == split])
        real = frac >= 0.2
        out["oracle"][split] = {"objects": int(len(frac)), "spurious": int((~real).sum()),
                                "aji": aji(split, lambda f, g: np.zeros(len(g), bool)),
                                "aji_without_spurious": aji(split, lambda f, g: g < 0.2)}
        out["auc"][split] = {n: float(roc_auc_score(real, feats[:, k])) if 0 < real.sum() < len(real) else None
                             for k, n in enumerate(OBJECT_FEATURES)}
    # label-free rules: drop instances smaller than a fraction of the image's median area and fainter (max H / t)
    # than a fraction of the image's median, chosen by train AJI
    for a in (0.25, 0.4, 0.6):
        for m in (None, 0.8, 0.7):
            def rule(f, g, a=a, m=m):
                bad = f[:, 0] < a * np.median(f[:, 0]) if len(f) else np.zeros(0, bool)
                return bad & (f[:, 3] < m * np.median(f[:, 3])) if m is not None else bad
            out["rules"][f"area < {a} x median" + (f", max H / t < {m} x median" if m else "")] = {
                s: aji(s, rule) for s in ("train", "test")}
    lg = lambda f: np.c_[np.log(np.maximum(f[:, :1], 1)), f[:, 1:]]  # noqa: E731
    tr = [(f, g) for s, _, _, f, g in objs if s == "train"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(
        lg(np.concatenate([f for f, _ in tr])), np.concatenate([g for _, g in tr]) >= 0.2)
    te = np.concatenate([f for s, _, _, f, _ in objs if s == "test"])
    te_real = np.concatenate([g for s, *_, g in objs if s == "test"]) >= 0.2
    out["supervised_ceiling"]["test_auc"] = float(roc_auc_score(te_real, clf.predict_proba(lg(te))[:, 1]))
    for tau in (0.3, 0.5, 0.7):
        out["supervised_ceiling"][f"p(real) < {tau}"] = {
            s: aji(s, lambda f, g, tau=tau: clf.predict_proba(lg(f))[:, 1] < tau if len(f) else np.zeros(0, bool))
            for s in ("train", "test")}
    return out


def teacher_variants():
    from skimage import filters
    from skimage.morphology import closing, disk, opening

    def otsu(rgb, scale=1.0, hole=64, sigma=1.0, method="otsu"):
        h = hematoxylin_od(rgb, sigma)
        t = {"otsu": filters.threshold_otsu, "li": filters.threshold_li}[method](h)
        return clean_mask(h > scale * t, 30, hole)

    def local(rgb, block=101, w=0.5):
        h = hematoxylin_od(rgb, 1.0)
        t = filters.threshold_otsu(h)
        from scipy import ndimage as ndi

        return clean_mask(h > np.maximum(w * t + (1 - w) * ndi.uniform_filter(h, block), 0.5 * t), 30, 64)

    def hyst(rgb, lo=0.8):
        h = hematoxylin_od(rgb, 1.0)
        t = filters.threshold_otsu(h)
        return clean_mask(filters.apply_hysteresis_threshold(h, lo * t, t), 30, 300)

    def multi(rgb):
        h = hematoxylin_od(rgb, 1.0)
        return clean_mask(h > filters.threshold_multiotsu(h, 3)[0], 30, 64)

    def close(rgb):
        m = otsu(rgb)
        return clean_mask(opening(closing(m, disk(2)), disk(2)), 30, 300)

    return {"otsu (shipped teacher)": otsu, "otsu, holes < 300 px filled": lambda r: otsu(r, hole=300),
            "otsu x 0.9, holes < 300": lambda r: otsu(r, 0.9, 300), "otsu, sigma 2": lambda r: otsu(r, sigma=2.0),
            "Li threshold": lambda r: otsu(r, method="li"), "local mean (101 px) / Otsu blend": local,
            "hysteresis 0.8-1.0 x Otsu": hyst, "multi-Otsu (3 classes), lower threshold": multi,
            "otsu + closing/opening r2": close}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--run", required=True, help="NAME=BUNDLE_ROOT with models/seg/model.pt")
    ap.add_argument("--psm_masks", type=Path, default=None)
    ap.add_argument("--base_channels", type=int, default=16)
    ap.add_argument("--blend", type=float, default=0.0,
                    help="haematoxylin evidence blended into the probability (inference.json's default: 0.35)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    t0 = time.time()
    name, root = a.run.split("=", 1)
    ckpt = Path(root) / "models" / "seg" / "model.pt"
    net = ResUNet34(in_channels=resunet_input_channels(ckpt), out_channels=2, base_channels=a.base_channels)
    net.load_state_dict(torch.load(ckpt, map_location="cpu"))
    res = {"command": "python " + " ".join(shlex.quote(x) for x in sys.argv), "run": name, "blend": a.blend}
    splits = {s: load_split(a.monuseg, s, a.limit) for s in ("train", "test")}
    fit_rows, train_teachers, objs = [], {}, []
    for split, items in splits.items():
        rows, err = {}, {"network": np.zeros(8), "classical teacher": np.zeros(8)}
        for stem, rgb, gt in items:
            prob = blend_hematoxylin(predict_probability(net, rgb, tta=True), rgb, a.blend)
            for k, v in oracle(prob, gt).items():
                rows.setdefault(k, []).append(v)
            inst = nuclei_from_probability(prob, "watershed", points=detection_points(prob))
            teacher = classical_foreground(rgb)
            err["network"] += errors(inst, gt)
            objs.append((split, inst, gt, object_features(inst, prob, rgb), gt_fraction(inst, gt)))
            err["classical teacher"] += errors(instances_by_watershed(teacher, None, sigma=1.0, min_size=30), gt)
            if split == "train":
                train_teachers[stem] = teacher
                net_fg, g = inst > 0, gt > 0
                fit_rows.append({"image": stem, "gt_fg": float(g.mean()), "teacher_fg": float(teacher.mean()),
                                 "network_fg": float(net_fg.mean()), "network_vs_teacher_f1": _f1(net_fg, teacher),
                                 "network_vs_gt_f1": _f1(net_fg, g), "teacher_vs_gt_f1": _f1(teacher, g)})
        res[split] = {"oracle": {k: mean_rows(v, KEYS) for k, v in rows.items()},
                      "errors": {k: breakdown(v) for k, v in err.items()}}
        print(split, {k: round(v["aji"], 3) for k, v in res[split]["oracle"].items()}, flush=True)
    res["train_fit"] = fit_rows
    res["spurious_objects"] = spurious_objects(objs)
    variants = {}
    for vname, fn in teacher_variants().items():
        sc = [instance_scores(instances_by_watershed(fn(rgb), None, sigma=1.0, min_size=30), gt)
              for _, rgb, gt in splits["train"]]
        variants[vname] = mean_rows(sc, KEYS)
        print(vname, round(variants[vname]["aji"], 4), flush=True)
    res["teacher_variants_train"] = variants
    if a.psm_masks:
        agree = []
        for stem, rgb, gt in splits["train"]:
            psm = read_mask(a.psm_masks / f"{stem}.png")
            cl, g = train_teachers[stem], gt > 0
            same = psm == cl
            agree.append([same.mean(), _f1(cl[same], g[same]), _f1(cl, g), _f1(psm, g)])
        m = np.mean(agree, 0)
        res["teacher_agreement_train"] = {"agree_fraction": m[0], "teacher_f1_on_agreed_pixels": m[1],
                                          "haematoxylin_teacher_f1": m[2], "psm_teacher_f1": m[3]}
    res.update(seconds=time.time() - t0, machine=f"{platform.machine()} {platform.system()}, "
               f"{torch.get_num_threads()} torch threads", date=datetime.date.today().isoformat())
    write_json(a.out.with_suffix(".json"), res)
    a.out.with_suffix(".md").write_text(render(res))
    print(render(res))


def render(r) -> str:
    L = [f"# Where the label-free nuclei pipeline loses AJI (run `{r['run']}`)", "",
         f"Command: `{r['command']}`  ", f"Machine: {r['machine']}; {r['date']}; {r['seconds']:.0f} s; "
         f"haematoxylin blend {r.get('blend', 0.0)}.", "",
         "## 1. Oracle decomposition (point-seeded watershed; means over images)", "",
         "| split | foreground / markers | pixel F1 | object Dice | AJI | PQ |", "|---|---|---|---|---|---|"]
    for split in ("train", "test"):
        for k, v in r[split]["oracle"].items():
            L.append(f"| {split} | {k} | {v['pixel_f1']:.3f} | {v['object_dice']:.3f} | {v['aji']:.3f} | {v['pq']:.3f} |")
    L += ["", "## 2. Pixel errors (summed over images)", "",
          "| split | method | FN / GT px | FN in missed nuclei | FN in +-3 px band | FP / pred px | FP in spurious objects | FP in band |",
          "|---|---|---|---|---|---|---|---|"]
    for split in ("train", "test"):
        for k, v in r[split]["errors"].items():
            L.append(f"| {split} | {k} | {v['fn_of_gt']:.3f} | {v['fn_in_missed_objects']:.2f} | "
                     f"{v['fn_in_boundary_band']:.2f} | {v['fp_of_pred']:.3f} | {v['fp_in_spurious_objects']:.2f} | "
                     f"{v['fp_in_boundary_band']:.2f} |")
    fit = r["train_fit"]
    low = [f for f in fit if f["network_fg"] < 0.5 * f["teacher_fg"]]
    L += ["", "## 3. Does the network fit its own teacher on the training images?", "",
          f"Mean pixel F1 network vs its teacher on train: {np.mean([f['network_vs_teacher_f1'] for f in fit]):.3f}; "
          f"network vs GT {np.mean([f['network_vs_gt_f1'] for f in fit]):.3f}; teacher vs GT "
          f"{np.mean([f['teacher_vs_gt_f1'] for f in fit]):.3f}. Images where the network marks less than half the "
          f"teacher's foreground: {len(low)} of {len(fit)}.", "",
          "| image | GT fg | teacher fg | network fg | network vs teacher F1 |", "|---|---|---|---|---|"]
    for f in sorted(fit, key=lambda f: f["network_vs_teacher_f1"])[:8]:
        L.append(f"| {f['image']} | {f['gt_fg']:.3f} | {f['teacher_fg']:.3f} | {f['network_fg']:.3f} | "
                 f"{f['network_vs_teacher_f1']:.3f} |")
    L += ["", "## 4. Classical teacher variants (train; distance watershed)", "",
          "| teacher | pixel F1 | precision | recall | object Dice | AJI | PQ |", "|---|---|---|---|---|---|---|"]
    for k, v in r["teacher_variants_train"].items():
        L.append(f"| {k} | {v['pixel_f1']:.3f} | {v['pixel_precision']:.3f} | {v['pixel_recall']:.3f} | "
                 f"{v['object_dice']:.3f} | {v['aji']:.3f} | {v['pq']:.3f} |")
    if "teacher_agreement_train" in r:
        t = r["teacher_agreement_train"]
        L += ["", f"PSM and haematoxylin teachers agree on {t['agree_fraction']:.3f} of train pixels; the teacher's "
              f"pixel F1 on the agreed pixels is {t['teacher_f1_on_agreed_pixels']:.3f} (haematoxylin teacher "
              f"overall {t['haematoxylin_teacher_f1']:.3f}, PSM teacher {t['psm_teacher_f1']:.3f}): ignoring the "
              "disagreement cannot clean the labels much."]
    if "spurious_objects" in r:
        L += render_spurious(r["spurious_objects"])
    return "\n".join(L) + "\n"


def render_spurious(s) -> list:
    L = ["", "## 5. Spurious objects (predicted instances with < 20 % GT pixels)", "",
         "| split | objects | spurious | AJI | AJI with every spurious object removed (oracle) |", "|---|---|---|---|---|"]
    for split, o in s["oracle"].items():
        L.append(f"| {split} | {o['objects']} | {o['spurious']} | {o['aji']:.4f} | {o['aji_without_spurious']:.4f} |")
    L += ["", "How well one feature tells real nuclei from spurious objects (ROC AUC, 0.5 = not at all):", "",
          "| feature | train AUC | test AUC |", "|---|---|---|"]
    for n in s["auc"]["train"]:
        tr, te = s["auc"]["train"][n], s["auc"]["test"][n]
        L.append(f"| {n} | {tr if tr is None else f'{tr:.3f}'} | {te if te is None else f'{te:.3f}'} |")
    L += ["", "Drop rules (label-free; a rule would be chosen by train AJI):", "", "| rule | train AJI | test AJI |",
          "|---|---|---|", f"| none | {s['oracle']['train']['aji']:.4f} | {s['oracle']['test']['aji']:.4f} |"]
    L += [f"| {k} | {v['train']:.4f} | {v['test']:.4f} |" for k, v in s["rules"].items()]
    c = s["supervised_ceiling"]
    L += ["", f"Ceiling, a diagnostic only: a logistic regression on all seven features fitted on the **train labels** "
          f"(real vs spurious objects) reaches test AUC {c['test_auc']:.3f}; dropping the objects it finds unlikely:", "",
          "| dropped if | train AJI | test AJI |", "|---|---|---|"]
    L += [f"| {k} | {v['train']:.4f} | {v['test']:.4f} |" for k, v in c.items() if k != "test_auc"]
    return L


if __name__ == "__main__":
    main()
