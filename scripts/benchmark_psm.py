# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Pseudo-mask benchmark on MoNuSeg: PSM -> SCM against colour baselines, with ablations and timings.

Labels are used only for scoring. Selection of a configuration must be done on the train rows; test rows are
reported. Example (the command behind docs/README.md's tables):

    python -m scripts.benchmark_psm --monuseg ../shared/data/monuseg \
        --net random=random:head --net contrastive=runs/contrastive/models/ssl/model.pt:feature_norm \
        --out docs/results/psm_benchmark

Each ``--net NAME=CKPT:TARGET`` is a Res2Net of ``--depth``/``--base_channels`` (CKPT ``random`` = seeded init).
Writes ``<out>.json`` (every row) and ``<out>.md`` (tables).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bundle.annotations import read_instance_label
from bundle.checkpoints import load_network_weights
from bundle.io import read_rgb, write_json
from bundle.networks import Res2Net
from bundle.nuclei.pseudo_masks import score_pseudo_mask
from bundle.nuclei.psm import PSMInferer, psm_for_image
from bundle.nuclei.scm import hematoxylin_otsu, semantic_clustering

KEYS = ("pixel_f1", "pixel_precision", "pixel_recall", "object_dice", "aji")


def load_split(root: Path, split: str, limit: int | None):
    imgs = sorted((root / split / "images").glob("*.png"))[:limit]
    return [(p.stem, read_rgb(p), read_instance_label(root / split / "labels" / p.name)) for p in imgs]


def build_net(spec: str, depth, base_channels: int, seed: int):
    name, rest = spec.split("=", 1)
    ckpt, target = rest.rsplit(":", 1)
    torch.manual_seed(seed)
    net = Res2Net(depth, base_channels=base_channels)
    if ckpt != "random":
        load_network_weights(net, ckpt)
    return name, net.eval(), target


def score(masks, data):
    rows = [score_pseudo_mask(m, gt) for m, (_, _, gt) in zip(masks, data)]
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {
        "fg_fraction": float(np.mean([m.mean() for m in masks]))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", required=True, type=Path)
    ap.add_argument("--net", action="append", default=[], help="NAME=CKPT|random:head|feature_norm")
    ap.add_argument("--depth", default="cpu")
    ap.add_argument("--base_channels", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="images per split (debug)")
    ap.add_argument("--ablate", default="main", help="name of the network that gets the stage/sign ablations")
    ap.add_argument("--baselines", type=int, default=1, help="0: skip the RGB K-Means rows")
    ap.add_argument("--out", type=Path, default=Path("docs/results/psm_benchmark"))
    a = ap.parse_args(argv)
    depth = a.depth if a.depth == "cpu" else int(a.depth)
    splits = {s: load_split(a.monuseg, s, a.limit) for s in ("train", "test")}
    rows = []

    def add(method, fn, network="-", stage="-", **fields):
        """Score ``fn(split, index, rgb) -> mask`` on both splits; one row per split."""
        for split, data in splits.items():
            t = time.perf_counter()
            masks = [fn(split, i, rgb) for i, (_, rgb, _) in enumerate(data)]
            dt = (time.perf_counter() - t) / len(data)
            r = {"split": split, "method": method, "network": network, "stage": stage, **fields, "s_per_img": dt}
            r.update(score(masks, data))
            rows.append(r)
            print(json.dumps(r), flush=True)

    add("H-OD Otsu, unsmoothed", lambda s, i, rgb: hematoxylin_otsu(rgb, h_sigma=0))
    add("H-OD Otsu (smoothed, sigma 1)", lambda s, i, rgb: hematoxylin_otsu(rgb))
    for k in ((2, 3, 4) if a.baselines else ()):
        add(f"RGB K-Means K={k} (beta=inf)", lambda s, i, rgb, k=k: semantic_clustering(rgb, None, k=k, beta=float("inf")))

    timings = {}
    for spec in a.net:
        name, net, target = build_net(spec, depth, a.base_channels, a.seed)
        main_net = name == a.ablate
        stages = (1, 2, 3, 4) if main_net else (1,)
        signs = ("hematoxylin", "none") if main_net else ("hematoxylin",)
        for stage in stages:
            for sign in signs:
                inf = PSMInferer(stage=stage, target=target, sign=sign)
                psms = {}
                for split, data in splits.items():
                    t = time.perf_counter()
                    psms[split] = [psm_for_image(rgb, net, inf) for _, rgb, _ in data]
                    timings[f"{name}/stage{stage}/{sign}/{split}"] = (time.perf_counter() - t) / len(data)
                variants = []
                if stage == 1 and sign == "hematoxylin" and main_net:
                    variants += [(f"jet beta={b} K=3", dict(fusion="jet", beta=b, k=3)) for b in (0.5, 1.0, 2.0)]
                    variants += [(f"jet beta=1 K={k}", dict(fusion="jet", beta=1.0, k=k)) for k in (2, 4)]
                    variants += [("stack PSM only K=2", dict(fusion="stack", psm_weight=1, beta=0, h_weight=0, k=2)),
                                 ("stack PSM+H K=2", dict(fusion="stack", psm_weight=1, beta=0, h_weight=1, k=2)),
                                 ("stack PSM+H K=3", dict(fusion="stack", psm_weight=1, beta=0, h_weight=1, k=3)),
                                 ("stack PSM+RGB+H K=3", dict(fusion="stack", psm_weight=1, beta=1, h_weight=1, k=3)),
                                 ("stack H only K=2", dict(fusion="stack", psm_weight=0, beta=0, h_weight=1, k=2))]
                elif stage == 1:
                    variants += [("jet beta=1 K=3", dict(fusion="jet", beta=1.0, k=3)),
                                 ("jet beta=2 K=3", dict(fusion="jet", beta=2.0, k=3)),
                                 ("stack PSM only K=2", dict(fusion="stack", psm_weight=1, beta=0, h_weight=0, k=2)),
                                 ("stack PSM+H K=2", dict(fusion="stack", psm_weight=1, beta=0, h_weight=1, k=2))]
                else:
                    variants += [("jet beta=1 K=3", dict(fusion="jet", beta=1.0, k=3)),
                                 ("stack PSM+H K=2", dict(fusion="stack", psm_weight=1, beta=0, h_weight=1, k=2))]
                for label, kw in variants:
                    add(label, lambda s, i, rgb, kw=kw: semantic_clustering(rgb, psms[s][i], **kw),
                        network=name, stage=stage, sign=sign)

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    meta = {"torch_threads": torch.get_num_threads(), "peak_rss_gb": peak_gb, "psm_s_per_img": timings,
            "depth": str(depth), "base_channels": a.base_channels, "nets": a.net,
            "cmd": " ".join(["python", "-m", "scripts.benchmark_psm", *sys.argv[1:]])}
    write_json(a.out.with_suffix(".json"), {"meta": meta, "rows": rows})
    write_md(rows, meta, a.out.with_suffix(".md"))


def write_md(rows, meta, path):
    lines = [f"Command: `{meta['cmd']}`", "", f"Peak RSS {meta['peak_rss_gb']:.2f} GB, torch threads "
             f"{meta['torch_threads']}. Metrics: mean over images; AJI/object Dice of connected components of the "
             "pseudo mask vs true instances; full 1000x1000 images.", "",
             "| method | network | stage | sign | train F1 | train AJI | test F1 | test P / R | test obj Dice | test AJI | s/img (SCM) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["method"], r["network"], str(r["stage"]), r.get("sign", "-"))  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["split"]] = r
    for k, d in by.items():
        tr, te = d.get("train", {}), d.get("test", {})
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {tr.get('pixel_f1', float('nan')):.3f} | "
                     f"{tr.get('aji', float('nan')):.3f} | {te.get('pixel_f1', float('nan')):.3f} | "
                     f"{te.get('pixel_precision', float('nan')):.2f} / {te.get('pixel_recall', float('nan')):.2f} | "
                     f"{te.get('object_dice', float('nan')):.3f} | {te.get('aji', float('nan')):.3f} | "
                     f"{te.get('s_per_img', float('nan')):.2f} |")
    lines += ["", "PSM seconds per image (1000x1000 unless --limit), 2-core CPU:", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in meta["psm_s_per_img"].items()]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
