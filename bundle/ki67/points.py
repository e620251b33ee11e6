# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 cells from a 3-class probability map: points at region centroids or probability peaks, their classes and
scores (:func:`ki67_points`), markers and overlays, and the :class:`Ki67Cells` settings a runner uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bundle.ki67.pseudo_labels import CLASS_COLOURS, NEGATIVE, POSITIVE

__all__ = ["Ki67Cells", "POINT_MODES", "check_point_mode", "ki67_points", "region_centroids", "overlay_points"]

# ------------------------------------------------------------------------------------------------ inference
POINT_MODES = ("centroid", "peak")


def check_point_mode(point_mode: str) -> str:
    """``point_mode`` if it is one of :data:`POINT_MODES`, else a one-line ValueError."""
    if point_mode not in POINT_MODES:
        raise ValueError(f"unknown point_mode {point_mode!r}; use one of {', '.join(POINT_MODES)}")
    return point_mode


def ki67_points(prob: np.ndarray, threshold: float = 0.5, nucleus_diameter: float = 20.0, sigma: float = 2.0,
                point_mode: str = "centroid"):
    """Per-class points from a (3, H, W) background / positive / negative probability map.

    Cells are the peaks of the Gaussian-smoothed ``1 - P(background)`` above ``threshold`` (:func:`bundle.labels.
    points_from_probability`, min distance d/2, merge distance 0.6 d (L1)), each with the class whose smoothed
    probability is larger at the peak. ``point_mode`` places each cell's point:

    * ``"centroid"`` (default): the centroid of the peak's region, its watershed basin of the smoothed foreground
      within ``foreground > threshold`` (the centre of the nucleus the network sees; a point whose basin is empty
      stays at its peak);
    * ``"peak"``: the peak itself (before 2026-11-24; the self-training labels of ``prepare_ki67_labels`` still use
      it by default, ``teacher_point_mode``).

    Returns (points (N, 2) int (row, col), classes (N,) uint8, scores (N,) float32 = smoothed foreground at the peak).
    """
    from scipy import ndimage as ndi

    from bundle.points import points_from_probability

    check_point_mode(point_mode)
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 3 or prob.shape[0] != 3:
        raise ValueError(f"ki67_points expects a (3, H, W) background/positive/negative map, got {prob.shape}")
    d = float(nucleus_diameter)
    fg = 1.0 - prob[0]
    pts = points_from_probability(fg, sigma_or_blur=sigma, threshold=threshold, min_distance=max(2, int(d / 2)),
                                  merge_distance=0.6 * d, blur="gaussian")
    if len(pts) == 0:
        return pts, np.zeros(0, np.uint8), np.zeros(0, np.float32)
    sp = ndi.gaussian_filter(prob[1], sigma)[pts[:, 0], pts[:, 1]]
    sn = ndi.gaussian_filter(prob[2], sigma)[pts[:, 0], pts[:, 1]]
    cls = np.where(sp >= sn, POSITIVE, NEGATIVE).astype(np.uint8)
    smooth = ndi.gaussian_filter(fg, sigma)
    score = smooth[pts[:, 0], pts[:, 1]]
    if point_mode == "centroid":
        pts = region_centroids(smooth, pts, threshold)
    return pts, cls, score.astype(np.float32)


def region_centroids(fg: np.ndarray, points: np.ndarray, threshold: float) -> np.ndarray:
    """Move each point to the centroid of its region: the marker-controlled watershed basin of ``-fg`` within
    ``fg > threshold`` (``skimage.segmentation.watershed``).

    fg: (H, W) float foreground score; points: (N, 2) int (row, col) markers. Returns (N, 2) int (row, col), rounded;
    a point whose basin is empty (its marker below ``threshold``) keeps its position.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    points = np.asarray(points).reshape(-1, 2).astype(int)
    if len(points) == 0:
        return points
    markers = np.zeros(fg.shape, np.int32)
    idx = np.arange(1, len(points) + 1)
    markers[points[:, 0], points[:, 1]] = idx
    mask = fg > threshold
    basins = watershed(-fg, markers, mask=mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.array(ndi.center_of_mass(mask, basins, idx), float).reshape(-1, 2)
    c = np.where(np.isfinite(c), c, points)
    return np.round(c).astype(int)


def circle_polygon(r, c, radius, n=12):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([c + radius * np.cos(a), r + radius * np.sin(a)], 1)


def overlay_points(rgb: np.ndarray, points: np.ndarray, classes: np.ndarray, radius: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``rgb`` with a ring per point: positive red, negative blue."""
    from skimage.draw import circle_perimeter

    out = np.asarray(rgb).copy()
    h, w = out.shape[:2]
    for (r, c), k in zip(np.asarray(points).reshape(-1, 2), np.asarray(classes).reshape(-1)):
        for rad in (radius, radius + 1):
            rr, cc = circle_perimeter(int(r), int(c), rad, shape=(h, w))
            out[rr, cc] = CLASS_COLOURS.get(int(k), (0, 255, 0))
    return out


@dataclass
class Ki67Cells:
    """How a Ki-67 probability map becomes cells: :func:`ki67_points` (foreground ``threshold``, ``nucleus_diameter``
    in px, ``point_mode`` ``"centroid"`` of each cell's region or its probability ``"peak"``), the GeoJSON marker
    (a 12-gon of ``marker_radius`` px) and the no-DAB rule (an image whose brown pixel fraction is below
    ``min_dab_fraction`` gets zero positives and a warning: an H&E tile in IHC mode)."""

    threshold: float = 0.5
    nucleus_diameter: float = 20.0
    point_mode: str = "centroid"
    marker_radius: float = 4.0
    min_dab_fraction: float = 0.002

    def __post_init__(self):
        self.threshold, self.nucleus_diameter = float(self.threshold), float(self.nucleus_diameter)
        self.marker_radius, self.min_dab_fraction = float(self.marker_radius), float(self.min_dab_fraction)
        self.point_mode = check_point_mode(self.point_mode)
