#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Research script for issue 3: which training target turns pseudo labels into the best nuclei instances?

Trains a ResUNet-34 for a fixed time on the MoNuSeg *train* images with a label-free target built from a teacher
(no labels), then scores instances on train (for selection) and test (reported). Every variant is one command:

    python scripts/explore_seg.py --monuseg ../shared/data/monuseg --teacher classical --target three \
        --minutes 10 --out runs/explore/three_classical

teacher: ``classical`` (haematoxylin Otsu + watershed instances, bundle.postprocess.classical_nuclei) or a folder
of 0/255 pseudo masks (e.g. psm_infer's ``masks/``; instances by distance watershed).
target: ``binary`` (foreground CE; instances by distance watershed) or ``three`` (background / interior /
boundary; instances by seeded watershed, bundle.postprocess.instances_from_three_class).
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
from bundle.detection import predict_probability  # noqa: E402
from bundle.io import read_mask, read_rgb  # noqa: E402
from bundle.labels import instance_target  # noqa: E402
from bundle.metrics import instance_scores  # noqa: E402
from bundle.networks import ResUNet34  # noqa: E402
from bundle.postprocess import classical_nuclei, instances_by_watershed, instances_from_three_class  # noqa: E402
from bundle.transforms import hematoxylin_channel, normalize_rgb  # noqa: E402


def teacher_instances(rgb, name, teacher):
    if teacher == "classical":
        return classical_nuclei(rgb)
    m = read_mask(Path(teacher) / name)
    return instances_by_watershed(m, None, min_distance=6, sigma=1.0, min_size=30)


def predict(net, rgb, tta):
    """Whole-image softmax (no sliding window), as the recorded runs used. For a 4-channel input (``--norm hchannel``)
    only its RGB is passed: ``predict_probability`` recomputes the same haematoxylin channel for a 4-channel network."""
    return predict_probability(net, rgb[..., :3], roi_size=max(rgb.shape[:2]), tta=bool(tta))


def instances(prob, target):
    if target == "three":
        return instances_from_three_class(prob)
    return instances_by_watershed(prob[1] > 0.5, None, min_distance=6, sigma=1.0, min_size=30)


def standardize_rgb(rgb: np.ndarray, eps: float = 1.0) -> np.ndarray:
    """Per-image colour standardisation: each channel of an (H, W, 3) RGB image is shifted and scaled to the
    mean 127.5 and standard deviation 63.75 (so that :func:`normalize_rgb` then gives zero mean, unit variance).

    A network fed standardised images sees each image relative to its own staining, as a per-image threshold
    (Otsu) does (hypothesis; measured: it does not help, docs/results/nuclei_diagnosis.md); with the fixed :func:`normalize_rgb` alone, a pale image's nuclei look like a dark image's
    cytoplasm. Returns (H, W, 3) float32 (not clipped).
    """
    x = np.asarray(rgb, np.float32)
    mean = x.reshape(-1, 3).mean(0)
    std = x.reshape(-1, 3).std(0)
    return ((x - mean) / np.maximum(std, eps) * 63.75 + 127.5).astype(np.float32)


def with_hematoxylin_channel(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W, 4) float32: RGB plus :func:`bundle.transforms.hematoxylin_channel` (the haematoxylin
    OD relative to the image's own Otsu threshold), the input of ``seg_train.json --hematoxylin_input True``."""
    return np.concatenate([np.asarray(rgb, np.float32), hematoxylin_channel(rgb)[..., None]], -1)


def make_prep(norm):
    """Input colour normalisation applied to every image before the network (train and test alike)."""
    if norm == "fixed":
        return lambda rgb: rgb
    if norm == "image":
        return standardize_rgb
    if norm == "hchannel":
        return with_hematoxylin_channel
    raise ValueError(norm)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--teacher", default="classical")
    ap.add_argument("--target", default="three", choices=["binary", "three"])
    ap.add_argument("--boundary_width", type=int, default=1)
    ap.add_argument("--class_weights", default="1,1,2")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--base_channels", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tta", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--norm", default="fixed", choices=["fixed", "image", "hchannel"])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    train, names = [], []
    prep = make_prep(a.norm)
    for p in sorted((a.monuseg / "train" / "images").glob("*.png")):
        rgb = read_rgb(p)
        inst = teacher_instances(rgb, p.name, a.teacher)
        rgb = prep(rgb)
        y = instance_target(inst, a.boundary_width) if a.target == "three" else (inst > 0).astype(np.uint8)
        train.append((torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float(), torch.from_numpy(y).long()))
        names.append(p)
    n_cls = 3 if a.target == "three" else 2
    weights = torch.tensor([float(v) for v in a.class_weights.split(",")][:n_cls])
    net = ResUNet34(in_channels=4 if a.norm == "hchannel" else 3, out_channels=n_cls, base_channels=a.base_channels)
    opt = torch.optim.Adam(net.parameters(), a.lr)
    t0, step, losses = time.time(), 0, []
    budget = a.minutes * 60
    while time.time() - t0 < budget:
        for g in opt.param_groups:  # cosine decay over the time budget
            g["lr"] = a.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (time.time() - t0) / budget)))
        xs, ys = [], []
        for _ in range(a.batch):
            x, y = train[rng.integers(len(train))]
            i, j = rng.integers(0, x.shape[1] - a.crop + 1), rng.integers(0, x.shape[2] - a.crop + 1)
            x, y = x[:, i: i + a.crop, j: j + a.crop], y[i: i + a.crop, j: j + a.crop]
            k = int(rng.integers(4))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
            if rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            xs.append(x)
            ys.append(y)
        net.train()
        loss = F.cross_entropy(net(normalize_rgb(torch.stack(xs))), torch.stack(ys), weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {np.mean(losses[-25:]):.4f} {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    net.eval()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), a.out.with_suffix(".pt"))
    res = {"cmd": " ".join(sys.argv), "steps": step, "train_s": train_s, "final_loss": float(np.mean(losses[-25:]))}
    for split in ("train", "test"):
        rows = []
        for p in sorted((a.monuseg / split / "images").glob("*.png")):
            prob = predict(net, prep(read_rgb(p)), a.tta)
            gt = read_instance_label(a.monuseg / split / "labels" / p.name)
            rows.append(instance_scores(instances(prob, a.target), gt))
        res[split] = {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}
        print(split, {k: round(v, 4) for k, v in res[split].items()}, flush=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
