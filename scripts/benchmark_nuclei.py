# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""MoNuSeg benchmark of the trained detection / segmentation networks (issue 3), next to the classical baseline.

Each ``--runs NAME=BUNDLE_ROOT`` is a bundle root produced by ``python -m bundle.label_free`` on the 30 MoNuSeg
*train* images (no labels); ``NAME=ROOT_A+ROOT_B+...`` scores the ensemble of those roots' networks (their flip-TTA
probabilities averaged); ``--scales 0.8,1,1.25`` adds scale test-time augmentation. For every network
(``models/det/model.pt``, ``models/model.pt``) and instance mode (``cc`` = connected components, the reference; ``watershed`` =
distance-transform watershed; ``points`` = watershed seeded by the detected points) the script predicts train and
test images once (flip TTA), scores
instances with :func:`bundle.metrics.instance_scores`, selects the mode by **train** AJI (labels used only to
score), and reports test under three protocols: ``full`` (1000x1000, true instances), ``crop512`` (centre crop,
true instances), ``crop512_cc`` (centre crop vs connected components of the binary GT, the PSM code's protocol).
The classical baseline (parameters from ``docs/results/classical_baseline.json``, chosen on train) is scored by
the same code.

    python -m scripts.benchmark_nuclei --monuseg ../shared/data/monuseg --runs psm=runs/pipe/monuseg \
        --out docs/results/nuclei_benchmark

Writes ``<out>.json`` (per-image rows, means, selection, timings, command) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bundle.checkpoints import load_network_weights, resunet_checkpoint_dims, resunet_input_channels, stage_checkpoint
from bundle.inferers import predict_probability
from bundle.io import write_json
from bundle.metrics import instance_scores
from bundle.networks import ResUNet34
from bundle.nuclei.detection import blend_hematoxylin, detection_points, instance_settings, nuclei_from_probability
from bundle.nuclei.postprocess import classical_nuclei
from bundle.points import point_settings
from bundle.scale import scaled, size_scale
from scripts.benchmark_classical import PROTOCOLS, centre_crop, load_split, mean_rows

KEYS = ("pixel_f1", "pixel_iou", "object_dice", "aji", "aji_plus", "pq")
MODES = ("cc", "watershed", "points")


def instances(prob, mode, min_size, threshold=0.5, min_distance=None, rgb=None, scale=1.0):
    """``mode`` is ``cc`` / ``watershed`` / ``points``, optionally suffixed ``@threshold``, ``/min_distance``,
    ``+grow`` (px the instances are grown by), ``~weight`` (the image's haematoxylin evidence blended into
    P(nucleus) first, :func:`bundle.nuclei.detection.blend_hematoxylin`; needs ``rgb``) and ``>min_score`` (instances
    whose mean P(nucleus) is below it dropped), in that order (``points@0.4+1~0.35>0.6``). ``scale`` (pixel
    density relative to 40x, :func:`bundle.scale.size_scale`) sets the default peak distance, the point
    extraction and the fixed-px sizes of :func:`bundle.nuclei.detection.instance_settings` (filled holes, distance
    smoothing, three-class seeds), as ``inference.json --mpp`` does."""
    grow, min_score = 0, 0.0
    min_distance = scaled(6, scale) if min_distance is None else min_distance
    fixed = instance_settings(scale)
    if ">" in mode:
        mode, ms = mode.split(">")
        min_score = float(ms)
    if "~" in mode:
        mode, w = mode.split("~")
        prob = blend_hematoxylin(prob, rgb, float(w))
    if "+" in mode:
        mode, g = mode.split("+")
        grow = int(g)
    if "/" in mode:
        mode, md = mode.split("/")
        min_distance = int(md)
    if "@" in mode:
        mode, th = mode.split("@")
        threshold = float(th)
    if mode == "points":
        return nuclei_from_probability(prob, "watershed", min_size=min_size, threshold=threshold,
                                       points=detection_points(prob, **point_settings(scale)), grow=grow,
                                       min_score=min_score, **fixed)
    return nuclei_from_probability(prob, mode, min_size=min_size, threshold=threshold, min_distance=min_distance,
                                   grow=grow, min_score=min_score, **fixed)


def score(pred, gt, crop):
    from skimage.measure import label

    pc, gc = centre_crop(pred, crop), centre_crop(gt, crop)
    return {"full": instance_scores(pred, gt), "crop512": instance_scores(pc, gc),
            "crop512_cc": instance_scores(pc, label(gc > 0))}


def predict_ensemble(nets, rgb, tta: bool, scales=(1.0,)):
    """(C, H, W) class probabilities of ``rgb``: :func:`bundle.inferers.predict_probability` averaged over
    ``nets`` and over ``scales`` (the image resized bilinearly by each factor, its prediction resized back)."""
    return np.mean([predict_probability(n, rgb, tta=tta, scale=s) for s in scales for n in nets], axis=0)


def load_net(root: Path, stage: str):
    """The ResUNet-34 that ``stage`` wrote under ``root`` (:func:`bundle.checkpoints.stage_checkpoint`); classes and
    width (base_channels) read from its head, input channels (3, or 4 with the haematoxylin channel) from its stem."""
    path = stage_checkpoint(root, stage)
    out_ch, width = resunet_checkpoint_dims(path)
    net = ResUNet34(in_channels=resunet_input_channels(path), out_channels=out_ch, base_channels=width)
    load_network_weights(net, path)
    return net.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, default=Path("/work/shared/data/monuseg"))
    ap.add_argument("--runs", nargs="+", required=True, help="NAME=BUNDLE_ROOT pairs")
    ap.add_argument("--stages", default="det,seg")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="instance modes; 'watershed@0.4/8' = foreground threshold 0.4, peaks 8 px apart")
    ap.add_argument("--tta", type=int, default=1)
    ap.add_argument("--scales", default="1",
                    help="scale test-time augmentation: the image resized by each factor, predicted (flip TTA as "
                         "--tta), resized back and averaged ('0.8,1,1.25'); default 1 = off")
    ap.add_argument("--min_size", type=int, default=None, help="px; default 20 at 40x, scaled by --mpp")
    ap.add_argument("--mpp", type=float, default=0.25,
                    help="um per pixel of the images (0.25 = MoNuSeg at 40x; 0.5 for a 20x copy): scales the "
                         "post-processing sizes as inference.json --mpp does")
    ap.add_argument("--classical", type=Path, default=Path(__file__).resolve().parents[1]
                    / "docs/results/classical_baseline.json",
                    help="the classical baseline's results JSON (scripts.benchmark_classical) whose selected "
                         "parameters are scored")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--limit", type=int, default=None, help="images per split (smoke tests only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("docs/results/nuclei_benchmark"))
    ap.add_argument("--figure", type=Path, default=None,
                    help="PNG: two test crops with GT, classical and each network's selected-mode instances")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    command = " ".join(shlex.quote(x) for x in [Path(sys.executable).name, "-m", "scripts.benchmark_nuclei",
                                                *sys.argv[1:]])
    t_start = time.perf_counter()
    train, test = load_split(a.monuseg, "train", a.limit), load_split(a.monuseg, "test", a.limit)
    modes = [m for m in a.modes.split(",") if m]
    scales = [float(x) for x in a.scales.split(",")]
    size = size_scale(a.mpp)
    if a.min_size is None:
        a.min_size = scaled(20, size, area=True)
    results = {}

    # classical baseline, same scoring code
    cl = json.loads(a.classical.read_text())
    params = cl["selected"]
    t0 = time.perf_counter()
    rows = [score(classical_nuclei(rgb, **params), gt, a.crop) for _, rgb, gt in test]
    results["classical"] = {"params": params, "test": {p: mean_rows([r[p] for r in rows], KEYS) for p in PROTOCOLS},
                            "train_aji": cl["train_score_of_selected"]["aji"],
                            "seconds_per_test_image": (time.perf_counter() - t0) / len(test)}
    print("classical test full", {k: round(v, 4) for k, v in results["classical"]["test"]["full"].items()}, flush=True)

    for spec in a.runs:
        name, root = spec.split("=", 1)
        for stage in [s for s in a.stages.split(",") if s]:
            roots = [Path(r) for r in root.split("+")]
            if not all(stage_checkpoint(r, stage).is_file() for r in roots):
                print(f"{name}/{stage}: no model, skipped", flush=True)
                continue
            nets = [load_net(r, stage) for r in roots]
            net = nets[-1]
            key = f"{name}/{stage}"
            res = {"train": {}, "test": {}, "n_classes": int(net.head.weight.shape[0]), "ensemble": len(nets)}
            timings = []
            for split, data in (("train", train), ("test", test)):
                per_mode = {m: [] for m in modes}
                for _, rgb, gt in data:
                    t1 = time.perf_counter()
                    prob = predict_ensemble(nets, rgb, bool(a.tta), scales)
                    timings.append(time.perf_counter() - t1)
                    for m in modes:
                        if m.startswith("points") and prob.shape[0] == 3:
                            continue
                        inst = instances(prob, m, a.min_size, rgb=rgb, scale=size)
                        per_mode[m].append(score(inst, gt, a.crop) if split == "test" else
                                           {"full": instance_scores(inst, gt)})
                for m, rws in per_mode.items():
                    if rws:
                        prots = PROTOCOLS if split == "test" else ("full",)
                        res[split][m] = {p: mean_rows([r[p] for r in rws], KEYS) for p in prots}
            res["selected_mode"] = max(res["train"], key=lambda m: res["train"][m]["full"]["aji"])
            res["predict_seconds_per_image"] = float(np.mean(timings))
            results[key] = res
            for m in res["test"]:
                print(f"{key} {m}: train AJI {res['train'][m]['full']['aji']:.4f} | test full "
                      + " ".join(f"{k} {v:.4f}" for k, v in res["test"][m]["full"].items()), flush=True)

    if a.figure is not None:
        make_figure(a, test, results, params)

    # speed of one 1000x1000 prediction (no flip TTA and flip TTA) as scored: the last run's network(s), --scales
    speed = {}
    if len(results) > 1:
        rgb = test[0][1]
        for tta in (False, True):
            predict_ensemble(nets, rgb, tta, scales)
            t1 = time.perf_counter()
            for _ in range(2):
                predict_ensemble(nets, rgb, tta, scales)
            speed["ms_per_1000px_image_tta" if tta else "ms_per_1000px_image"] = 1000 * (time.perf_counter() - t1) / 2
    out = {"command": command, "results": results, "speed": speed, "threads": a.threads, "limit": a.limit,
           "scales": scales,
           "total_seconds": time.perf_counter() - t_start,
           "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
           "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), out)
    a.out.with_suffix(".md").write_text(render_md(out))
    print(f"wrote {a.out.with_suffix('.json')} ({out['total_seconds']:.0f} s)")


def make_figure(a, test, results, params, size=320):
    """Rows = two test images (centre crops); columns = image, GT, classical, each network (selected mode)."""
    from bundle.io import overlay_mask, write_image
    from scripts.make_figures import labelled

    nets = [(k, v["selected_mode"]) for k, v in results.items() if k != "classical"]
    rows = []
    for name, rgb, gt in test[:2]:
        crop = lambda x: centre_crop(x, size)  # noqa: E731
        cols = [labelled(crop(rgb), name[:12]), labelled(crop(overlay_mask(rgb, gt)), "ground truth"),
                labelled(crop(overlay_mask(rgb, classical_nuclei(rgb, **params))), "classical")]
        for key, mode in nets:
            root, stage = key.split("/")
            spec = dict(s.split("=", 1) for s in a.runs)
            nets = [load_net(Path(r), stage) for r in spec[root].split("+")]
            inst = instances(predict_ensemble(nets, rgb, bool(a.tta), [float(x) for x in a.scales.split(",")]), mode,
                             a.min_size, rgb=rgb, scale=size_scale(a.mpp))
            cols.append(labelled(crop(overlay_mask(rgb, inst)), f"{key} {mode}"))
        rows.append(np.concatenate(cols, 1))
    write_image(a.figure, np.concatenate(rows, 0))


def render_md(r) -> str:
    lines = ["# Nuclei instances on MoNuSeg test (networks trained on the 30 train images: label-free, except "
             "diagnostic ceilings trained on annotation labels)", "",
             f"Command: `{r['command']}` ({r['date']}, {r['machine']['cpus']} CPUs, {r['threads']} torch thread(s)).",
             "", "Mode selected per network by **train** AJI (labels only score). Means over the 14 test images.", ""]
    if r["limit"]:
        lines += [f"**Smoke test only (--limit {r['limit']}): not a result.**", ""]
    lines += ["| method | mode | train AJI | protocol | pixel IoU | pixel F1 | object Dice | AJI | AJI+ | PQ |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    c = r["results"]["classical"]
    for p in PROTOCOLS:
        m = c["test"][p]
        lines.append(f"| classical (H Otsu + watershed) | - | {c['train_aji']:.3f} | {p} | {m['pixel_iou']:.3f} | "
                     f"{m['pixel_f1']:.3f} | {m['object_dice']:.3f} | {m['aji']:.3f} | {m['aji_plus']:.3f} | "
                     f"{m['pq']:.3f} |")
    for key, res in r["results"].items():
        if key == "classical":
            continue
        for mode in res["test"]:
            sel = " (selected)" if mode == res["selected_mode"] else ""
            for p in PROTOCOLS:
                m = res["test"][mode][p]
                lines.append(f"| {key} | {mode}{sel} | {res['train'][mode]['full']['aji']:.3f} | {p} | "
                             f"{m['pixel_iou']:.3f} | {m['pixel_f1']:.3f} | {m['object_dice']:.3f} | {m['aji']:.3f} | "
                             f"{m['aji_plus']:.3f} | {m['pq']:.3f} |")
    if r["speed"]:
        lines += ["", "Prediction time per 1000x1000 image (ResUNet-34, CPU; the last run's network(s), scales "
                  f"{r.get('scales', [1.0])}, ms): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["speed"].items()), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
