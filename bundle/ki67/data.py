# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 data helpers: a synthetic IHC tile with known positive / negative cells (tests, demo) and the BCData reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE

__all__ = ["synthetic_ihc_tile", "read_bcdata_item"]


# ------------------------------------------------------------------------------------------------ data helpers
def synthetic_ihc_tile(size: int = 256, n_positive: int = 8, n_negative: int = 12, radius: float = 8.0,
                       seed: int = 0, dab: bool = True):
    """A synthetic DAB + haematoxylin tile by Beer-Lambert mixing of scikit-image's stain vectors: dark brown
    (DAB + some haematoxylin) and pale blue (haematoxylin) elliptical nuclei on a light background with noise.

    Returns:
        rgb (size, size, 3) uint8, points (N, 2) int (row, col), classes (N,) uint8 (1 positive, 2 negative).
        ``dab=False`` makes every nucleus haematoxylin-only (classes all 2).
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb_from_hed

    rng = np.random.default_rng(seed)
    n = n_positive + n_negative
    pts = []
    tries = 0
    while len(pts) < n and tries < 5000:
        tries += 1
        p = rng.uniform(radius + 2, size - radius - 2, 2)
        if all(np.hypot(*(p - q)) > 2.6 * radius for q in pts):
            pts.append(p)
    pts = np.asarray(pts).reshape(-1, 2)
    cls = np.r_[np.full(min(n_positive, len(pts)), POSITIVE), np.full(max(0, len(pts) - n_positive), NEGATIVE)]
    if not dab:
        cls[:] = NEGATIVE
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    conc = np.zeros((size, size, 3), np.float32)  # H, E, DAB concentrations
    conc[..., 0] += 0.02 + 0.01 * rng.random((size, size))
    conc[..., 2] += (0.03 if dab else 0.0) * rng.random((size, size))
    for (r, c), k in zip(pts, cls):
        a, b = radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - r, xx - c
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        m = (u ** 2 + v ** 2) <= 1
        if k == POSITIVE:
            conc[m, 2] += rng.uniform(0.5, 0.9)
            conc[m, 0] += 0.1
        else:
            conc[m, 0] += rng.uniform(0.12, 0.25)
    conc = np.stack([ndi.gaussian_filter(conc[..., i], 1.0) for i in range(3)], -1)
    od = conc @ rgb_from_hed
    rgb = 255 * np.exp(-od * np.log(10)) + rng.normal(0, 2.0, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), np.rint(pts).astype(np.int64), cls.astype(np.uint8)


def read_bcdata_item(root, stem: str):
    """BCData ground truth of one image (scoring only): ``root/annotations/{positive,negative}/<stem>.h5``
    (:func:`bundle.annotations.read_bcdata_points`) -> (points (N, 2) (x, y), classes (N,) 1 / 2)."""
    from bundle.annotations import read_bcdata_points

    root = Path(root)
    p = read_bcdata_points(root / "annotations" / "positive" / f"{stem}.h5")
    n = read_bcdata_points(root / "annotations" / "negative" / f"{stem}.h5")
    return np.concatenate([p, n]).reshape(-1, 2), np.r_[np.full(len(p), POSITIVE), np.full(len(n), NEGATIVE)]
