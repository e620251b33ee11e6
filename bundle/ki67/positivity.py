# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 positivity from an absolute quantity (issue 34): the DAB optical density inside each nucleus.

A cell is positive when the mean DAB density of its nucleus core (a disk around its point) is at least
``dab_threshold``, in decadic optical-density units after colour deconvolution with unit stain vectors (the same
units as QuPath's "DAB OD mean"). The stain vectors are estimated once per folder or slide (Macenko on the pooled
tissue pixels, :func:`ihc_stain_matrix`) and checked against the reference haematoxylin and DAB vectors; an
implausible estimate falls back to the reference vectors with a warning. Nothing here depends on how many positive
cells a folder has: a tile with no brown nuclei gets no positives.

Plain functions on arrays plus :class:`DABHistogram`, a fixed-bin accumulator for the per-cell DAB figure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from bundle.stain import REF_DAB, macenko_stain_vectors, optical_density, reference_stain_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "DAB_THRESHOLD", "CELL_RADIUS", "ihc_stain_matrix", "dab_density", "cell_dab", "classify_by_dab",
    "wilson_interval", "DABHistogram"
]

DAB_THRESHOLD = 0.3
"""Default positivity threshold: mean DAB OD (decadic, unit stain vectors) of a nucleus core. Chosen on the first
half of the BCData sample (images 0-12; docs/results/ki67_low_proliferation.md): annotated positive nuclei there have
a median of about 1.8, annotated negative ones about 0.11 (95th percentile 0.38)."""

CELL_RADIUS = 0.2
"""Radius of the disk a cell's DAB is measured in, as a fraction of the nucleus diameter (4 px at 40x)."""


def ihc_stain_matrix(images: Sequence, min_cosine: float = 0.9, max_pixels: int = 200_000, seed: int = 0,
                     name: str = "images") -> tuple[np.ndarray, str]:
    """(3, 3) decadic OD stain matrix (columns: haematoxylin, DAB, their cross product; unit length) of a folder or
    slide, and its source: ``"macenko"`` or ``"reference"``.

    ``images``: (H, W, 3) uint8 RGB arrays (tiles, or a slide's tissue pixels as an (N, 1, 3) array). The Macenko
    estimate of the pooled pixels is kept when one of its vectors has cosine >= ``min_cosine`` with the reference
    (Ruifrok) haematoxylin and the other with the reference DAB; otherwise (an H&E or unstained folder, another
    chromogen, too few stained pixels) the reference H-DAB vectors are used and a one-line warning names ``name``
    and what was assumed.
    """
    rng = np.random.default_rng(seed)
    images = [np.asarray(im).reshape(-1, 3) for im in images]
    per = max(1000, max_pixels // max(1, len(images)))
    pix = [im[rng.choice(len(im), per, replace=False)] if len(im) > per else im for im in images]
    pooled = np.concatenate(pix)[None] if pix else np.zeros((1, 0, 3), np.uint8)
    why = ""
    try:
        v = macenko_stain_vectors(pooled.astype(np.uint8), seed=seed)
        ref = reference_stain_matrix(REF_DAB)  # unit reference haematoxylin and DAB in columns 0 and 1
        ch, cd = ref[:, 0] @ v, ref[:, 1] @ v
        i = int(np.argmax(ch))
        if ch[i] >= min_cosine and cd[1 - i] >= min_cosine:
            h, d = v[:, i], v[:, 1 - i]
            r = np.cross(h, d)
            return np.stack([h, d, r / (np.linalg.norm(r) + 1e-12)], 1), "macenko"
        why = (f"estimated stain vectors do not look like haematoxylin + DAB (cosines {ch[i]:.2f} and "
               f"{cd[1 - i]:.2f} with the references, need >= {min_cosine})")
    except ValueError as e:
        why = f"stain vectors could not be estimated ({e})"
    logger.warning(f"{name}: {why}; assuming the reference haematoxylin-DAB vectors (is this DAB IHC?)")
    return reference_stain_matrix(REF_DAB), "reference"


def dab_density(rgb: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 DAB density (decadic OD units, >= 0) by colour deconvolution with
    ``matrix`` (:func:`ihc_stain_matrix`; default the reference H-DAB vectors)."""
    m = reference_stain_matrix(REF_DAB) if matrix is None else np.asarray(matrix, np.float64)
    od = optical_density(np.asarray(rgb), log10=True)
    d = od.reshape(-1, 3) @ np.linalg.pinv(m)[1]
    return np.maximum(d, 0).reshape(od.shape[:2]).astype(np.float32)


def cell_dab(dab: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """(N,) float32 mean of the (H, W) density ``dab`` in a disk of ``radius`` px around each (row, col) point
    (pixels outside the image are left out)."""
    pts = np.asarray(points).reshape(-1, 2).astype(np.int64)
    out = np.zeros(len(pts), np.float32)
    r = max(0, int(np.ceil(radius)))
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    dy, dx = yy[(yy ** 2 + xx ** 2) <= radius ** 2 + 1e-9], xx[(yy ** 2 + xx ** 2) <= radius ** 2 + 1e-9]
    h, w = dab.shape[:2]
    for i, (pr, pc) in enumerate(pts):
        rr, cc = pr + dy, pc + dx
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        out[i] = float(dab[rr[ok], cc[ok]].mean()) if ok.any() else 0.0
    return out


def classify_by_dab(values: np.ndarray, threshold: float = DAB_THRESHOLD) -> np.ndarray:
    """(N,) uint8 classes from per-cell DAB densities: 1 positive (>= ``threshold``), 2 negative."""
    from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE

    return np.where(np.asarray(values) >= float(threshold), POSITIVE, NEGATIVE).astype(np.uint8)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95 % for the default ``z``); (0, 1) when ``n`` is 0."""
    k, n = int(k), int(n)
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, float(mid - half)), min(1.0, float(mid + half))


class DABHistogram:
    """Fixed-bin histogram of per-cell DAB densities (0 to ``top`` OD in ``bins`` bins; larger values in the last
    bin), so a whole slide's cells need no memory; :meth:`figure` draws it with the threshold marked."""

    def __init__(self, top: float = 2.5, bins: int = 50):
        self.edges = np.linspace(0.0, float(top), int(bins) + 1)
        self.counts = np.zeros(int(bins), np.int64)

    def add(self, values) -> None:
        v = np.clip(np.asarray(values, np.float64).ravel(), 0, self.edges[-1] - 1e-9)
        self.counts += np.histogram(v, self.edges)[0]

    def figure(self, threshold: float, path: str | Path | None = None, title: str = "cells") -> np.ndarray:
        """(H, W, 3) uint8 bar chart: cells per DAB OD bin (square-root height scale), negatives blue, positives
        red, the threshold as a black line; written to ``path`` when given."""
        from PIL import Image, ImageDraw

        W, H, L, B, T = 640, 300, 50, 40, 30
        im = Image.new("RGB", (W, H), "white")
        dr = ImageDraw.Draw(im)
        pw, ph = W - L - 20, H - B - T
        top = self.edges[-1]
        sq = np.sqrt(self.counts)
        scale = ph / sq.max() if sq.max() > 0 else 0.0
        bw = pw / len(self.counts)
        for i, (c, lo) in enumerate(zip(sq, self.edges[:-1])):
            col = (214, 39, 40) if lo + 1e-9 >= threshold else (31, 119, 180)
            x0 = L + i * bw
            dr.rectangle([x0, T + ph - c * scale, x0 + bw - 1, T + ph], fill=col)
        dr.line([L, T + ph, L + pw, T + ph], fill="black")
        dr.line([L, T, L, T + ph], fill="black")
        for t in np.arange(0, top + 1e-9, 0.5):
            x = L + pw * t / top
            dr.line([x, T + ph, x, T + ph + 4], fill="black")
            dr.text((x - 8, T + ph + 6), f"{t:.1f}", fill="black")
        xt = L + pw * min(threshold, top) / top
        dr.line([xt, T - 5, xt, T + ph], fill="black", width=2)
        n, npos = int(self.counts.sum()), int(self.counts[self.edges[:-1] + 1e-9 >= threshold].sum())
        dr.text((L, 8), f"{title}: {n} cells, {npos} with DAB OD >= {threshold:g} (positive, red); "
                        "bar height ~ sqrt(count)", fill="black")
        dr.text((L + pw // 2 - 60, H - 16), "nucleus DAB OD (mean)", fill="black")
        arr = np.asarray(im)
        if path is not None:
            from bundle.io import write_image

            write_image(path, arr)
        return arr
