#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Feasibility probe for issue 3 (not a workflow): train a small ResUNet-34 on pseudo masks for a fixed time, then
score instances on MoNuSeg test. Answers "does learning from pseudo masks beat the masks and the classical
baseline?" before the det/seg workflows are built.

    python scripts/probe_seg_on_pseudo.py --monuseg ../shared/data/monuseg --pseudo runs/pseudo_train/masks \
        --minutes 8 --out docs/results/probe_seg_psm

Training sees only train images and their pseudo masks (labels are read for test scoring only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.annotations import read_instance_label  # noqa: E402
from bundle.clustering import hematoxylin_otsu  # noqa: E402
from bundle.io import read_rgb  # noqa: E402
from bundle.metrics import instance_scores  # noqa: E402
from bundle.networks import ResUNet34  # noqa: E402
from bundle.postprocess import instances_by_watershed, instances_from_foreground  # noqa: E402
from bundle.transforms import normalize_rgb  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--pseudo", required=True,
                    help="folder of <stem>.png 0/255 pseudo masks of the train images (e.g. psm_infer's masks/), "
                         "or 'hotsu' to train on smoothed haematoxylin-Otsu masks computed here")
    ap.add_argument("--minutes", type=float, default=8)
    ap.add_argument("--base_channels", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/results/probe_seg_psm"))
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    train = []
    for p in sorted((a.monuseg / "train" / "images").glob("*.png")):
        rgb = read_rgb(p)
        m = hematoxylin_otsu(rgb) if a.pseudo == "hotsu" else read_rgb(Path(a.pseudo) / p.name)[..., 0] > 127
        train.append((torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float(), torch.from_numpy(m).long()))
    net = ResUNet34(base_channels=a.base_channels)
    opt = torch.optim.Adam(net.parameters(), a.lr)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < a.minutes * 60:
        xs, ys = [], []
        for _ in range(a.batch):
            x, y = train[rng.integers(len(train))]
            i, j = rng.integers(0, x.shape[1] - a.crop + 1), rng.integers(0, x.shape[2] - a.crop + 1)
            x, y = x[:, i : i + a.crop, j : j + a.crop], y[i : i + a.crop, j : j + a.crop]
            k = int(rng.integers(4))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
            if rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            xs.append(x)
            ys.append(y)
        net.train()
        loss = F.cross_entropy(net(normalize_rgb(torch.stack(xs))), torch.stack(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {np.mean(losses[-20:]):.4f} {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    net.eval()
    rows = {"cc": [], "watershed": []}
    t1 = time.time()
    for p in sorted((a.monuseg / "test" / "images").glob("*.png")):
        x = torch.from_numpy(read_rgb(p).transpose(2, 0, 1).copy()).float()[None]
        with torch.no_grad():
            prob = torch.softmax(net(normalize_rgb(x)), 1)[0, 1].numpy()
        gt = read_instance_label(a.monuseg / "test" / "labels" / p.name)
        rows["cc"].append(instance_scores(instances_from_foreground(prob, 0.5), gt))
        rows["watershed"].append(instance_scores(instances_by_watershed(prob > 0.5, min_distance=6), gt))
    infer_s = (time.time() - t1) / 14
    res = {"cmd": " ".join(sys.argv), "steps": step, "train_s": train_s, "final_loss": float(np.mean(losses[-20:])),
           "infer_and_postprocess_s_per_img": infer_s,
           "test_mean": {k: {m: float(np.mean([r[m] for r in v])) for m in v[0]} for k, v in rows.items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["test_mean"], indent=1), "steps", step)


if __name__ == "__main__":
    main()
