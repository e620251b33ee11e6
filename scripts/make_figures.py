# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Figures for docs/: per test image, [tile | PSM (JET) | pseudo mask overlay | ground truth] for each network.

    python -m scripts.make_figures --monuseg ../shared/data/monuseg --net random=random:head \
        --net contrastive=runs/contrastive/models/ssl/model.pt:feature_norm --out docs/figures/psm_examples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bundle.annotations import read_instance_label
from bundle.checkpoints import load_network_weights
from bundle.io import overlay_mask, read_rgb, write_image
from bundle.networks import Res2Net
from bundle.nuclei.psm import PSMInferer, psm_for_image
from bundle.nuclei.scm import hematoxylin_otsu, jet, semantic_clustering


def labelled(img: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 8 + 7 * len(text), 16], fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--monuseg", type=Path, required=True)
    ap.add_argument("--net", action="append", default=[])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--crop", type=int, default=320)
    ap.add_argument("--depth", default="cpu")
    ap.add_argument("--base_channels", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("docs/figures/psm_examples.png"))
    a = ap.parse_args(argv)
    paths = sorted((a.monuseg / "test" / "images").glob("*.png"))[: a.images]
    rows = []
    for p in paths:
        rgb = read_rgb(p)
        gt = read_instance_label(a.monuseg / "test" / "labels" / p.name) > 0
        c = a.crop
        t, l = (rgb.shape[0] - c) // 2, (rgb.shape[1] - c) // 2
        crop = lambda x: x[t : t + c, l : l + c]  # noqa: E731
        row = [labelled(crop(rgb), p.stem[:12]), labelled(crop(overlay_mask(rgb, gt)), "ground truth"),
               labelled(crop(overlay_mask(rgb, hematoxylin_otsu(rgb))), "H-OD Otsu")]
        for spec in a.net:
            name, rest = spec.split("=", 1)
            ckpt, target = rest.rsplit(":", 1)
            torch.manual_seed(0)
            net = Res2Net(a.depth if a.depth == "cpu" else int(a.depth), base_channels=a.base_channels)
            if ckpt != "random":
                load_network_weights(net, ckpt)
            net.eval()
            psm = psm_for_image(rgb, net, PSMInferer(stage=1, target=target))
            jet_img = (jet(psm) * 255).astype(np.uint8)
            paper = semantic_clustering(rgb, psm, k=3, beta=1.0, fusion="jet")
            stack = semantic_clustering(rgb, psm, k=2, fusion="stack", beta=0, h_weight=1)
            row += [labelled(crop(jet_img), f"PSM {name}"), labelled(crop(overlay_mask(rgb, paper)), f"SCM jet {name}"),
                    labelled(crop(overlay_mask(rgb, stack)), f"SCM PSM+H {name}")]
        rows.append(np.concatenate(row, 1))
    write_image(a.out, np.concatenate(rows, 0))
    print(a.out)


if __name__ == "__main__":
    main()
