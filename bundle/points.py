# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Points from probability maps: peaks of a blurred foreground probability, merged when closer than a distance, with
sizes set at 40x (:func:`point_settings`)."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["merge_close_points", "point_settings", "points_from_probability", "spaced_maxima", "check_points",
           "circle_polygon"]


def merge_close_points(points: np.ndarray, values: np.ndarray, merge_distance: float = 20,
                       p: float = 1) -> np.ndarray:
    """Greedy non-maximum suppression of points: keep the highest-valued point, drop every remaining point closer
    than ``merge_distance`` (Minkowski ``p``-norm; p = 1 is the reference's L1), repeat.

    Args:
        points: (N, 2) (row, col), any numeric dtype.  values: (N,) float, higher = kept first (ties: input order).
    Returns:
        (M,) int64 indices into ``points`` of the kept points, in descending value order.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(points) != len(values):
        raise ValueError(f"points ({len(points)}) and values ({len(values)}) differ in length")
    order = np.argsort(-values, kind="stable")
    if merge_distance <= 0 or len(points) < 2:
        return order.astype(np.int64)
    tree = cKDTree(points)
    alive = np.ones(len(points), bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        nb = np.asarray(tree.query_ball_point(points[i], merge_distance, p=p), dtype=np.int64)
        d = np.linalg.norm(points[nb] - points[i], ord=p, axis=1)
        alive[nb[d < merge_distance]] = False
    return np.asarray(keep, dtype=np.int64)


def point_settings(scale: float = 1.0) -> dict:
    """Keyword arguments of :func:`points_from_probability` (box blur 13 px, peaks 6 px apart, merged under 20 px:
    the reference's values at 40x) carried to tiles ``scale`` times the reference's pixel density (the box stays
    odd: 7 px at 20x)
    (:func:`bundle.scale.size_scale`; 0.5 for 20x tiles). ``scale`` 1 gives the reference."""
    from bundle.scale import scaled

    return {"sigma_or_blur": 2 * scaled(6, scale, minimum=0) + 1, "min_distance": scaled(6, scale),
            "merge_distance": scaled(20, scale, integer=False)}


def points_from_probability(prob: np.ndarray, sigma_or_blur: float = 13, threshold: float = 0.5,
                            min_distance: int = 6, merge_distance: float = 20, blur: str = "box") -> np.ndarray:
    """Nuclei centres from a foreground probability map (reference procedure of the PSM detection stage).

    1. Blur: ``blur="box"`` (the reference) is a ``sigma_or_blur`` x ``sigma_or_blur`` uniform (mean) filter
       (13 -> 13x13); ``blur="gaussian"`` a Gaussian of standard deviation ``sigma_or_blur`` px; ``blur="none"``
       or ``sigma_or_blur <= 0`` skips it. Borders are reflected.
    2. Local maxima of the blurred map that are strictly above ``threshold``, at least ``min_distance`` px apart
       (:func:`spaced_maxima`: ``skimage.feature.peak_local_max``, Chebyshev distance, borders included).
    3. Merge: among maxima closer than ``merge_distance`` (L1 distance, strict ``<``), keep only the one with the
       higher blurred value (greedy, highest first; see :func:`merge_close_points`).

    On a flat plateau (e.g. a blurred binary mask wider than the box) ``peak_local_max`` may return several plateau
    pixels; the merge then keeps one of them, which need not be the plateau's centre.

    Args:
        prob: (H, W) float foreground probability in [0, 1] (any real values are accepted).
    Returns:
        (N, 2) int64 array of (row, col), sorted by descending blurred probability; (0, 2) if none.
    """
    from scipy import ndimage as ndi

    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"points_from_probability expects a 2-D (H, W) map, got shape {prob.shape}")
    img = prob.astype(np.float32)
    if blur not in ("box", "gaussian", "none"):
        raise ValueError(f"unknown blur {blur!r} (use 'box', 'gaussian' or 'none')")
    if blur == "box" and sigma_or_blur > 1:
        img = ndi.uniform_filter(img, size=int(round(sigma_or_blur)), mode="reflect")
    elif blur == "gaussian" and sigma_or_blur > 0:
        img = ndi.gaussian_filter(img, sigma=float(sigma_or_blur), mode="reflect")
    if not np.any(img > threshold):
        return np.zeros((0, 2), np.int64)
    peaks = spaced_maxima(img, max(1, int(min_distance)), threshold)  # all strictly above threshold
    if len(peaks) == 0:
        return np.zeros((0, 2), np.int64)
    keep = merge_close_points(peaks, img[peaks[:, 0], peaks[:, 1]], merge_distance, p=1)
    return peaks[keep].astype(np.int64)


def spaced_maxima(img: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """``skimage.feature.peak_local_max(img, min_distance, threshold_abs=threshold, exclude_border=False)``, the same
    (N, 2) (row, col) int64 peaks in the same order (test against scikit-image): pixels equal to the maximum of their
    ``2 min_distance + 1`` square and above ``threshold``, highest first (stable), then greedily kept when no kept
    peak lies at a Chebyshev distance < ``min_distance``. The spacing step looks the kept peaks up in a raster instead
    of scikit-image's KD-tree batches, slow on the flat plateaus of a blurred probability (a fifth of the
    segmentation labels' time; docs/results/cpu_work.md)."""
    from scipy import ndimage as ndi

    img = np.asarray(img)
    cand = img == ndi.maximum_filter(img, size=2 * int(min_distance) + 1, mode="nearest")
    if img.size > 1 and cand.all():  # scikit-image: a constant image has no peak (one pixel: its threshold test)
        cand[:] = False
    cand &= img > threshold
    rr, cc = np.nonzero(cand)
    order = np.argsort(-img[rr, cc], kind="stable")
    rr, cc = rr[order], cc[order]
    if min_distance > 1 and len(rr) > 1:
        d = int(min_distance) - 1
        taken = np.zeros(img.shape, bool)
        keep = np.zeros(len(rr), bool)
        for i, (r, c) in enumerate(zip(rr.tolist(), cc.tolist())):
            if not taken[max(0, r - d):r + d + 1, max(0, c - d):c + d + 1].any():
                taken[r, c] = keep[i] = True
        rr, cc = rr[keep], cc[keep]
    return np.stack([rr, cc], 1).astype(np.int64)


def check_points(points, shape: Tuple[int, int]) -> np.ndarray:
    pts = np.asarray(points)
    if pts.size == 0:
        return np.zeros((0, 2), np.int64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2) of (row, col), got {pts.shape}")
    pts = np.rint(pts).astype(np.int64)
    bad = (pts[:, 0] < 0) | (pts[:, 0] >= shape[0]) | (pts[:, 1] < 0) | (pts[:, 1] >= shape[1])
    if bad.any():
        raise ValueError(f"{int(bad.sum())} point(s) outside the image of shape {tuple(shape)}, "
                         f"e.g. {pts[bad][0].tolist()}")
    return pts


def circle_polygon(r: float, c: float, radius: float, n: int = 12) -> np.ndarray:
    """(n, 2) (x, y) vertices of a circle of ``radius`` px around the point at row ``r``, column ``c``: the outline a
    point-like object (a Ki-67 cell, an InfoGAN cell) gets in GeoJSON."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([c + radius * np.cos(a), r + radius * np.sin(a)], 1)
