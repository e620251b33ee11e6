#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Diagnostic ceilings: the training stages of the pipeline fed with *annotations* instead of pseudo labels.

NOT part of the label-free pipeline. It answers one question: how much of the gap to the goal is the teacher (the
pseudo labels), and how much is the rest (network, CPU schedule, post-processing, the data)? The script writes
annotation-derived labels into a bundle root in exactly the format the label-free stages write, so the unchanged
training configs train on them.

``monuseg``: the seg stage's labels from the MoNuSeg **train** annotations (the 14 test images are never read).
``--mask gt`` replaces the pseudo mask by the annotated foreground, ``--points gt`` the detected points by the
annotated instances' centroids (Voronoi edges and disks between them); ``from`` keeps the source root's. The det
network of ``--from`` is copied (``seg_train.json`` reads its input channels) with its old time stamp, so the
written labels count as fresh and are not regenerated. Then::

    python -m monai.bundle run --config_file configs/seg_train.json --dataset_dir ../shared/data/monuseg/train/images \
        --bundle_root ROOT
    python scripts/benchmark_nuclei.py --monuseg ../shared/data/monuseg --runs oracle=ROOT --stages seg ...

``--bcdata``: round-1 Ki-67 labels (:func:`bundle.ki67.point_label`, the config's default disk and ignore radii)
from the BCData annotations of the **dev** half of the tiles (``benchmark_ki67.split_stems``). Only those tiles are
linked into ``ROOT/tiles``, so the network never sees the test half, whose scores are the ones to read. The labels
go where round 1 reads its own (``ROOT/eval/ki67_labels``, with the settings record of ``ki67_train.json``'s
defaults, so they are reused, not refitted). Then::

    python -m monai.bundle run --config_file configs/ki67_train.json --dataset_dir ROOT/tiles --bundle_root ROOT
    python scripts/benchmark_ki67.py --data ../shared/data/bcdata_sample --ckpt oracle=ROOT/models/ki67/model.pt ...
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle.annotations import read_instance_label  # noqa: E402
from bundle.cells import read_points  # noqa: E402
from bundle.detection import instance_points, segmentation_targets  # noqa: E402
from bundle.io import read_mask, read_rgb, write_csv, write_image, write_json, write_npy  # noqa: E402


def monuseg(a) -> None:
    src, root = Path(a.source), Path(a.root)
    imgs = sorted((Path(a.monuseg) / "train" / "images").glob("*.png"))
    if not imgs:
        raise SystemExit(f"{Path(a.monuseg) / 'train' / 'images'}: no PNG images")
    # the det checkpoint first, keeping its (older) time stamp: labels written below are then newer than it
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "det").exists():
        shutil.copytree(src / "models" / "det", root / "models" / "det")
    mask_dir, label_dir = root / "eval" / "pseudo_masks" / "masks", root / "eval" / "seg_labels"
    n_pts = 0
    for p in imgs:
        stem = p.stem
        inst = read_instance_label(Path(a.monuseg) / "train" / "labels" / p.name)
        if a.mask == "gt":
            mask = inst > 0
        else:
            mask = read_mask(src / "eval" / "pseudo_masks" / "masks" / f"{stem}.png")
        if a.points == "gt":
            pts = np.round(instance_points(inst)).astype(int)
        else:
            pts = np.round(read_points(src / "eval" / "seg_labels" / "points" / f"{stem}.csv")).astype(int)
        n_pts += len(pts)
        write_image(mask_dir / f"{stem}.png", (mask * 255).astype(np.uint8))
        write_npy(label_dir / f"{stem}.npy", segmentation_targets(mask, pts, keep_foreground=True, disk_radius=2))
        write_csv(label_dir / "points" / f"{stem}.csv", [{"row": int(r), "col": int(c)} for r, c in pts])
    write_json(label_dir / "settings.json", {"keep_foreground": True, "point_threshold": 0.5})
    print(f"{root}: {len(imgs)} train tiles, mask={a.mask}, points={a.points} ({n_pts} points)")


def bcdata(a) -> None:
    from benchmark_ki67 import split_stems, tile_stems

    from bundle.ki67 import CLASS_NAMES, label_radii, label_settings, point_label, read_bcdata_item
    from bundle.pipeline import settings_changed

    root, img_dir = Path(a.root), Path(a.bcdata) / "images"
    stems = tile_stems(img_dir)
    if not stems:
        raise SystemExit(f"{img_dir}: no PNG images")
    dev = [stems[i] for i in split_stems(stems)["dev"]]
    tiles, label_dir = root / "tiles", root / "eval" / "ki67_labels"
    tiles.mkdir(parents=True, exist_ok=True)
    d = 20.0  # ki67_train.json's nucleus diameter at its default train_mpp 0.25
    settings_changed(label_dir, label_settings(d))  # round 1's record with the config's defaults: labels reused
    n = 0
    for stem in dev:
        link = tiles / f"{stem}.png"
        if not link.exists():
            link.symlink_to((img_dir / f"{stem}.png").resolve())
        xy, cls = read_bcdata_item(a.bcdata, stem)
        pts = np.asarray(xy, float).reshape(-1, 2)[:, ::-1]  # (x, y) -> (row, col)
        shape = read_rgb(link).shape[:2]
        write_npy(label_dir / f"{stem}.npy", point_label(pts, cls, shape, *label_radii(d))[None])
        write_csv(label_dir / "points" / f"{stem}.csv",
                  [{"x": int(round(c)), "y": int(round(r)), "class": CLASS_NAMES[int(k)]} for (r, c), k in zip(pts, cls)],
                  fieldnames=("x", "y", "class"))
        n += len(pts)
    print(f"{root}: {len(dev)} dev tiles of {len(stems)} linked into {tiles}, {n} annotated cells as labels")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--monuseg", type=Path, help="MoNuSeg root: seg-stage labels from the train annotations")
    what.add_argument("--bcdata", type=Path, help="BCData root: Ki-67 labels from the dev half's annotations")
    ap.add_argument("--from", dest="source", type=Path, help="(--monuseg) a finished label-free bundle root (det "
                    "network, pseudo masks, seg labels)")
    ap.add_argument("--root", type=Path, required=True, help="new bundle root to write")
    ap.add_argument("--mask", choices=("gt", "from"), default="gt")
    ap.add_argument("--points", choices=("gt", "from"), default="gt")
    a = ap.parse_args(argv)
    if a.monuseg is not None and a.source is None:
        ap.error("--monuseg needs --from (a finished label-free bundle root)")
    monuseg(a) if a.monuseg is not None else bcdata(a)


if __name__ == "__main__":
    main()
