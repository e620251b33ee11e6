# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 cells from a 3-class probability map: points at region centroids or probability peaks, their classes and
scores (:func:`ki67_points`), markers and overlays, and the :class:`Ki67Cells` settings a runner uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bundle.ki67.positivity import CELL_RADIUS, DAB_THRESHOLD
from bundle.ki67.pseudo_labels import CLASS_COLOURS, NEGATIVE, POSITIVE

__all__ = [
    "Ki67Cells", "POINT_MODES", "POSITIVITY_RULES", "check_point_mode", "ki67_points", "region_centroids",
    "overlay_points"
]

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


POSITIVITY_RULES = ("dab", "network")


@dataclass
class Ki67Cells:
    """How a Ki-67 probability map becomes cells: :func:`ki67_points` (foreground ``threshold``, ``nucleus_diameter``
    in px, ``point_mode`` ``"centroid"`` of each cell's region or its probability ``"peak"``), each cell's class,
    the GeoJSON marker (a 12-gon of ``marker_radius`` px) and the no-DAB rule (an image whose brown pixel fraction is
    below ``min_dab_fraction`` gets zero positives, no index and a warning: an H&E tile in IHC mode).

    ``positivity`` ``"dab"`` (default): a cell is positive when the mean DAB OD of its nucleus core (a disk of
    ``cell_radius`` x ``nucleus_diameter`` px, :mod:`bundle.ki67.positivity`) is at least ``dab_threshold``; the
    network only says where the cells are. ``"network"``: the network's own class (before 2026-12-04; its positive
    class was learnt from a folder-relative colour cluster, wrong on low-proliferation tissue).
    """

    threshold: float = 0.5
    nucleus_diameter: float = 20.0
    point_mode: str = "centroid"
    marker_radius: float = 4.0
    min_dab_fraction: float = 0.002
    dab_threshold: float = DAB_THRESHOLD
    positivity: str = "dab"
    cell_radius: float = CELL_RADIUS

    def __post_init__(self):
        self.threshold, self.nucleus_diameter = float(self.threshold), float(self.nucleus_diameter)
        self.marker_radius, self.min_dab_fraction = float(self.marker_radius), float(self.min_dab_fraction)
        self.point_mode = check_point_mode(self.point_mode)
        self.dab_threshold, self.cell_radius = float(self.dab_threshold), float(self.cell_radius)
        if not np.isfinite(self.dab_threshold) or self.dab_threshold <= 0:
            raise ValueError(f"dab_threshold must be a positive DAB optical density (e.g. {DAB_THRESHOLD}), "
                             f"got {self.dab_threshold}")
        if self.positivity not in POSITIVITY_RULES:
            raise ValueError(f"unknown positivity {self.positivity!r}; use one of {', '.join(POSITIVITY_RULES)}")

    @property
    def dab_radius(self) -> float:
        """Radius (px) of the disk each cell's DAB OD is measured in."""
        return max(1.0, self.cell_radius * self.nucleus_diameter)

    def classify(self, rgb: np.ndarray, points: np.ndarray, classes: np.ndarray, matrix=None):
        """(classes (N,) uint8, dab (N,) float32 mean DAB OD per cell) of the cells at ``points`` in ``rgb``
        (deconvolved with the stain ``matrix``, :func:`bundle.ki67.positivity.ihc_stain_matrix`); ``classes`` (the
        network's) are returned unchanged when ``positivity`` is ``"network"``."""
        from bundle.ki67.positivity import cell_dab, classify_by_dab, dab_density

        dab = cell_dab(dab_density(rgb, matrix), points, self.dab_radius) if len(points) else np.zeros(0, np.float32)
        if self.positivity == "dab":
            classes = classify_by_dab(dab, self.dab_threshold)
        return np.asarray(classes, np.uint8), dab
