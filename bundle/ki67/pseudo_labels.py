# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 colour pseudo labels (no annotation): DAB and haematoxylin densities after colour deconvolution, nucleus
blobs, and the positive / negative decision (:class:`Ki67PseudoLabeler`). Class ids: 0 background, 1 positive,
2 negative, 255 ignored."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from bundle.io import read_rgb
from bundle.ki67.positivity import DAB_THRESHOLD
from bundle.stain import hd_from_od, optical_density

logger = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND", "POSITIVE", "NEGATIVE", "IGNORE", "CLASS_NAMES", "CLASS_COLOURS", "NoDABWarning",
    "dab_fraction", "he_fraction", "looks_like_he", "blob_points", "Ki67PseudoLabeler"
]

BACKGROUND, POSITIVE, NEGATIVE, IGNORE = 0, 1, 2, 255


CLASS_NAMES = {POSITIVE: "Positive", NEGATIVE: "Negative"}


CLASS_COLOURS = {POSITIVE: (255, 0, 0), NEGATIVE: (0, 0, 255)}


class NoDABWarning(UserWarning):
    """An image given to the IHC mode has no DAB (brown) signal."""


def dab_fraction(rgb: np.ndarray, margin: float = 10.0, min_od: float = 0.6) -> float:
    """Fraction of 'brown' pixels (R > G > B by ``margin`` grey levels each and summed OD > ``min_od``).

    H&E tiles (pink / purple: green is the lowest channel) give ~0 (MoNuSeg test: <= 0.00013); BCData Ki-67 tiles
    0.047-0.326 (docs/results/ki67_benchmark.md). Used to recognise an image without DAB signal.
    """
    f = np.asarray(rgb, np.float32)
    brown = (f[..., 0] - f[..., 1] > margin) & (f[..., 1] - f[..., 2] > margin)
    od = -np.log((f + 1) / 256).sum(-1)
    return float((brown & (od > min_od)).mean())


def he_fraction(rgb: np.ndarray, margin: float = 10.0, min_od: float = 0.3) -> float:
    """Fraction of stained pixels (summed OD > ``min_od``) whose green is the lowest channel by ``margin`` grey levels
    on both sides: the pink / purple of H&E (eosin and haematoxylin under eosin). MoNuSeg and WSSS4LUAD H&E tiles
    give 0.76-0.99, BCData Ki-67 tiles and scikit-image's ``ihc.png`` (blue haematoxylin counterstain, brown DAB)
    0.0004-0.011."""
    f = np.asarray(rgb, np.float32)
    od = -np.log((f + 1) / 256).sum(-1)
    stained = od > min_od
    if not stained.any():
        return 0.0
    pink = (f[..., 0] - f[..., 1] > margin) & (f[..., 2] - f[..., 1] > margin)
    return float(pink[stained].mean())


def looks_like_he(rgb: np.ndarray, min_dab_fraction: float = 0.002, min_he_fraction: float = 0.3) -> bool:
    """True for an image that the IHC mode must not count: no brown (:func:`dab_fraction` < ``min_dab_fraction``) and
    H&E colours (:func:`he_fraction` >= ``min_he_fraction``). A DAB IHC tile without brown (every nucleus Ki-67
    negative: blue counterstain only) is *not* H&E: its index is a valid 0."""
    return dab_fraction(rgb) < min_dab_fraction and he_fraction(rgb) >= min_he_fraction


def blob_points(mask: np.ndarray, min_distance: int, min_area: int, min_thickness: float = 0.0) -> np.ndarray:
    """(N, 2) (row, col) nucleus centres of a binary mask: peaks of the smoothed distance transform, one or more
    per connected component of at least ``min_area`` px. Peaks where the mask is thinner than ``min_thickness`` px
    (distance to the mask's edge, i.e. half the local width) are dropped: thin streaks are not nuclei centres."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import label

    if not mask.any():
        return np.zeros((0, 2), np.int64)
    lab = label(mask)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    pk = peak_local_max(dist, min_distance=max(1, int(min_distance)), labels=lab, exclude_border=False)
    if len(pk) == 0:
        return np.zeros((0, 2), np.int64)
    areas = np.bincount(lab.ravel())
    pk = pk[areas[lab[pk[:, 0], pk[:, 1]]] >= min_area]
    if min_thickness > 0 and len(pk):
        pk = pk[ndi.distance_transform_edt(mask)[pk[:, 0], pk[:, 1]] >= min_thickness]
    return pk.astype(np.int64)


def _negative_threshold(v: np.ndarray) -> float:
    """Otsu threshold of haematoxylin OD values clipped at their 99th percentile; inf when empty or flat."""
    from bundle.stain import threshold_otsu_or_zero

    v = np.asarray(v, np.float32).ravel()
    if not len(v):
        return float("inf")
    v = np.clip(v, 0, np.percentile(v, 99))
    return threshold_otsu_or_zero(v) if np.ptp(v) > 0 else float("inf")


class Ki67PseudoLabeler:
    """Label-free positive / negative nuclei points of IHC tiles from colour alone (see module docstring).

    Args:
        nucleus_diameter: typical nucleus diameter in px (20 scores best on BCData, 30 measured worse). Sets
            ``min_distance`` (d/2), ``min_area`` (0.3 * pi * (d/2)^2) and ``merge_distance`` (0.6 d).
        sigma: Gaussian smoothing of the OD (px) before clustering / thresholding (also damps JPEG blocks).
        n_clusters: K of the OD K-Means (background + stain clusters).
        min_dab_fraction: an image whose :func:`dab_fraction` is below this has no DAB signal: no positives and a
            :class:`NoDABWarning`.
        h_threshold: fixed haematoxylin OD threshold for negatives (``None`` = Otsu over the folder).
        seed: K-Means seed.
        min_thickness: drop blob centres where the stain mask is thinner than this (px, half the local width;
            0 = off). Spindle-shaped stromal nuclei are thin streaks that BCData does not annotate.
        negative_threshold: ``"folder"`` (one Otsu haematoxylin threshold for the folder, fitted) or ``"tile"``
            (each tile's own Otsu threshold of its non-positive pixels, as the H&E teacher does per image).
        dab_threshold: the absolute positivity rule (:mod:`bundle.ki67.positivity`): every blob is measured, and a
            cell is positive only when the mean DAB OD of its core reaches this; a brown-cluster blob below it is
            left out (neither a clear positive nor a haematoxylin nucleus), a haematoxylin blob above it becomes
            positive. ``None``: the folder-relative colour clusters alone (before 2026-12-04).
        stain: (3, 3) haematoxylin-DAB stain matrix (:func:`bundle.ki67.positivity.ihc_stain_matrix`); default:
            estimated by :meth:`fit` on the same tiles.

    Use: ``lab = Ki67PseudoLabeler().fit(list_of_rgb)``, then ``points, classes = lab.points(rgb)``.
    """

    def __init__(self, nucleus_diameter: float = 20.0, sigma: float = 1.5, n_clusters: int = 4,
                 min_dab_fraction: float = 0.002, h_threshold: float | None = None, seed: int = 0,
                 max_pixels: int = 400_000, min_thickness: float = 0.0, negative_threshold: str = "folder",
                 dab_threshold: float | None = DAB_THRESHOLD, stain=None):
        if negative_threshold not in ("folder", "tile"):
            raise ValueError(f"negative_threshold must be 'folder' or 'tile', got {negative_threshold!r}")
        self.negative_threshold = negative_threshold
        self.d = float(nucleus_diameter)
        self.min_thickness = float(min_thickness)
        self.sigma, self.n_clusters, self.seed = float(sigma), int(n_clusters), int(seed)
        self.min_dab_fraction, self.h_threshold, self.max_pixels = float(min_dab_fraction), h_threshold, max_pixels
        self.km = None
        self.positive_clusters: list[int] = []
        self.dab_threshold = None if dab_threshold is None else float(dab_threshold)
        self.stain = stain

    @property
    def min_distance(self) -> int:
        return max(2, int(round(self.d / 2)))

    @property
    def min_area(self) -> int:
        return max(4, int(round(0.3 * np.pi * (self.d / 2) ** 2)))

    @property
    def merge_distance(self) -> float:
        return 0.6 * self.d

    def _features(self, rgb):
        od = optical_density(rgb, self.sigma)
        h = np.maximum(hd_from_od(od)[..., 0], 0).astype(np.float32)
        return od, h

    def fit(self, images: Sequence) -> "Ki67PseudoLabeler":
        """Fit the OD K-Means and the haematoxylin threshold on a list of (H, W, 3) uint8 tiles or paths."""
        from sklearn.cluster import KMeans

        images = list(images)
        if not images:
            raise ValueError("Ki67PseudoLabeler.fit needs at least one image")
        rng = np.random.default_rng(self.seed)
        per = max(1000, self.max_pixels // len(images))
        feats, hs, rgbs = [], [], []
        for im in images:
            rgb = read_rgb(im) if isinstance(im, (str, Path)) else np.asarray(im)
            if self.dab_threshold is not None and self.stain is None and len(rgbs) < 32:
                rgbs.append(rgb)
            od, h = self._features(rgb)
            idx = rng.choice(od.shape[0] * od.shape[1], size=min(per, od.shape[0] * od.shape[1]), replace=False)
            feats.append(od.reshape(-1, 3)[idx])
            hs.append((h.reshape(-1)[idx], rgb))
        if self.dab_threshold is not None and self.stain is None:
            from bundle.ki67.positivity import ihc_stain_matrix

            self.stain = ihc_stain_matrix(rgbs, seed=self.seed, name="Ki-67 pseudo labels")[0]
        X = np.concatenate(feats)
        k = min(self.n_clusters, max(2, len(np.unique(X.round(3), axis=0))))
        self.km = KMeans(k, n_init=3, random_state=self.seed).fit(X)
        c = self.km.cluster_centers_
        bg = int(np.argmin(np.linalg.norm(c, axis=1)))
        # brown (DAB) absorbs blue light at least as much as red; haematoxylin (blue) absorbs red more than blue.
        # (Deconvolution of the centre is not used: near-black DAB clusters deconvolve as haematoxylin-dominant.)
        self.positive_clusters = [j for j in range(k) if j != bg and c[j, 2] >= c[j, 0]]
        if self.h_threshold is None:
            vals = []
            for (h, rgb), f in zip(hs, feats):
                lab = self.km.predict(f)
                vals.append(h[~np.isin(lab, self.positive_clusters)])
            self.h_threshold_ = _negative_threshold(np.concatenate(vals))
        else:
            self.h_threshold_ = float(self.h_threshold)
        logger.info(f"Ki-67 pseudo labeller: {k} OD clusters (background {bg}, positive {self.positive_clusters}), "
                    f"haematoxylin threshold {self.h_threshold_:.4f}")
        return self

    def masks(self, rgb: np.ndarray):
        """(positive mask, negative mask) of a tile, both (H, W) bool."""
        from scipy import ndimage as ndi

        if self.km is None:
            raise RuntimeError("Ki67PseudoLabeler: call fit() first")
        od, h = self._features(rgb)
        lab = self.km.predict(od.reshape(-1, 3).astype(self.km.cluster_centers_.dtype)).reshape(od.shape[:2])
        pos = np.isin(lab, self.positive_clusters)
        t = self.h_threshold_
        if self.negative_threshold == "tile" and self.h_threshold is None:
            t_tile = _negative_threshold(h[~pos])
            t = t_tile if np.isfinite(t_tile) else t
        mp = ndi.binary_opening(pos, iterations=1)
        mn = (h > t) & ~ndi.binary_dilation(mp, iterations=2)
        mn = ndi.binary_opening(mn, iterations=1)
        return mp, mn

    def points(self, rgb: np.ndarray, path: str = "image"):
        """(points (N, 2) int (row, col), classes (N,) uint8 in {1 positive, 2 negative}) of one tile.

        An H&E image (:func:`looks_like_he`: no brown, H&E colours) has all its nuclei negative and raises a
        :class:`NoDABWarning` naming ``path``.
        """
        from bundle.points import merge_close_points

        rgb = np.asarray(rgb)
        mp, mn = self.masks(rgb)
        if looks_like_he(rgb, self.min_dab_fraction):
            warnings.warn(f"{path}: no DAB (brown) signal and H&E colours - is this an H&E image? reporting 0 positive "
                          "cells",
                          NoDABWarning, stacklevel=2)
            mn = mn | mp
            mp = np.zeros_like(mp)
        a = blob_points(mp, self.min_distance, self.min_area, self.min_thickness)
        b = blob_points(mn, self.min_distance, self.min_area, self.min_thickness)
        if self.dab_threshold is not None and len(a) + len(b):
            from bundle.ki67.positivity import CELL_RADIUS, cell_dab, dab_density

            dab = dab_density(rgb, self.stain)
            r = max(1.0, CELL_RADIUS * self.d)
            a = a[cell_dab(dab, a, r) >= self.dab_threshold] if len(a) else a
            if len(b) and mp.any():  # a haematoxylin blob whose core is brown is a positive the clusters missed
                up = cell_dab(dab, b, r) >= self.dab_threshold
                a, b = np.concatenate([a, b[up]]).reshape(-1, 2), b[~up]
        pts = np.concatenate([a, b]).reshape(-1, 2)
        cls = np.r_[np.full(len(a), POSITIVE), np.full(len(b), NEGATIVE)].astype(np.uint8)
        if len(pts) > 1:  # positives win over negatives found at the same nucleus
            keep = merge_close_points(pts, np.r_[np.full(len(a), 2.0), np.ones(len(b))], self.merge_distance, p=2)
            pts, cls = pts[keep], cls[keep]
        return pts.astype(np.int64), cls
