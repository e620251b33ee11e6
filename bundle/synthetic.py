# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Synthetic H&E-like tiles with known nuclei, for the demo and the tests (no external data needed).

Pink eosin background with fibre texture, purple haematoxylin nuclei (ellipses of varied size, some touching),
light blur and noise. Returns the RGB tile and the uint16 instance map of the nuclei.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_he_tile", "write_synthetic_folder"]


def synthetic_he_tile(size: int = 256, n_nuclei: int | None = None, seed: int = 0):
    """-> (rgb (size, size, 3) uint8, instances (size, size) uint16)."""
    from scipy.ndimage import gaussian_filter
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    h = w = int(size)
    n = int(n_nuclei) if n_nuclei is not None else int(h * w / 1000)
    inst = np.zeros((h, w), np.uint16)
    k = 0
    for _ in range(n * 3):
        if k >= n:
            break
        r, c = rng.integers(6, h - 6), rng.integers(6, w - 6)
        a, b = rng.uniform(4, 9), rng.uniform(3.5, 7)
        rr, cc = ellipse(r, c, a, b, shape=(h, w), rotation=rng.uniform(0, np.pi))
        if (inst[rr, cc] > 0).mean() > 0.2:
            continue
        k += 1
        free = inst[rr, cc] == 0
        inst[rr[free], cc[free]] = k
    fibres = gaussian_filter(rng.normal(size=(h, w)), (1.0, 6.0))
    fibres = (fibres - fibres.min()) / (np.ptp(fibres) + 1e-8)
    bg = np.stack([235 - 25 * fibres, 170 - 40 * fibres, 205 - 25 * fibres], -1)
    nuc_tone = rng.uniform(0.8, 1.2, size=k + 1)[inst]
    chrom = gaussian_filter(rng.normal(size=(h, w)), 1.2)
    nuc = np.stack([110 - 20 * chrom, 70 - 15 * chrom, 150 - 10 * chrom], -1) * nuc_tone[..., None]
    m = gaussian_filter((inst > 0).astype(float), 0.8)[..., None]
    rgb = (1 - m) * bg + m * nuc + rng.normal(0, 4, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), inst


def write_synthetic_folder(folder, n_tiles: int = 6, size: int = 256, seed: int = 0, with_labels: bool = True):
    """Write ``tile_XX.png`` (+ ``labels/tile_XX.png``) and ``datalist.json``; returns the datalist path."""
    from pathlib import Path

    from bundle.annotations import write_instance_label
    from bundle.io import write_image, write_json

    folder = Path(folder)
    items = []
    for i in range(n_tiles):
        rgb, inst = synthetic_he_tile(size, seed=seed + i)
        img = folder / "images" / f"tile_{i:02d}.png"
        write_image(img, rgb)
        item = {"image": str(img.resolve())}
        if with_labels:
            lab = folder / "labels" / f"tile_{i:02d}.png"
            write_instance_label(lab, inst)
            item["label"] = str(lab.resolve())
        items.append(item)
    write_json(folder / "datalist.json", {"training": items})
    return str(folder / "datalist.json")
