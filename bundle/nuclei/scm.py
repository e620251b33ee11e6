# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Semantic clustering module (SCM): fuse a PSM with colour, K-Means the pixels, keep the nuclei cluster.

Plain functions on arrays (no hidden state). Two fusions:

* ``"jet"`` (the paper, Eq. 5 as implemented): F = JET(PSM) + beta * RGB, 3 channels. The JET channels are taken
  in B, G, R order so that the foreground rule "cluster with the lowest mean of channel 0 + channel 1" means
  "high activation (JET red: B = G = 0) and dark (low R, G)". ``beta = inf`` clusters raw colour only.
* ``"stack"`` (ours): F = [w_psm * PSM, beta * RGB, w_h * H] with H the haematoxylin optical density scaled to
  [0, 1] per image; foreground = the cluster whose centre is most nuclear (high PSM, dark, high H).

Then connected objects < ``min_size`` px are removed and holes < ``hole_size`` px filled.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.cluster import KMeans

from bundle.stain import hematoxylin_od

__all__ = [
    "jet", "scaled_hematoxylin", "scm_features", "kmeans_labels", "clean_mask", "semantic_clustering",
    "hematoxylin_otsu", "SCM"
]


def jet(x: np.ndarray) -> np.ndarray:
    """JET colour map of a map in [0, 1]: (H, W) -> (H, W, 3) RGB in [0, 1] (matplotlib's piecewise-linear form)."""
    x = np.clip(x, 0, 1)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # R, G, B peak positions at x = 0.75, 0.5, 0.25
    return np.clip(1.5 - np.abs(4 * x - centres), 0, 1).astype(np.float32)


def scaled_hematoxylin(rgb: np.ndarray, q: float = 99.0, sigma: float = 1.0) -> np.ndarray:
    """Haematoxylin OD (Gaussian-smoothed by ``sigma``) scaled to [0, 1] by its ``q``-th percentile: -> (H, W)."""
    h = hematoxylin_od(rgb, sigma)
    top = np.percentile(h, q)
    return np.clip(h / (top + 1e-6), 0, 1).astype(np.float32)


def scm_features(rgb: np.ndarray, psm: np.ndarray | None, fusion: str = "jet", beta: float = 1.0,
                 psm_weight: float = 1.0, h_weight: float = 1.0, h_sigma: float = 1.0):
    """Pixel features and the 'nucleus direction' used to pick the foreground cluster.

    Args:
        rgb: (H, W, 3) uint8.  psm: (H, W) float in [0, 1], or None when ``beta`` is inf / ``psm_weight`` is 0.
    Returns:
        feats (H*W, C) float32 and direction (C,): the foreground cluster maximises ``centre @ direction``.
    """
    c = rgb.reshape(-1, 3).astype(np.float32) / 255.0
    if fusion == "jet":
        if math.isinf(beta):
            return c, np.array([-1.0, -1.0, 0.0], np.float32)
        if psm is None:
            raise ValueError("fusion 'jet' with finite beta needs a PSM")
        j = jet(psm).reshape(-1, 3)[:, ::-1]  # B, G, R
        return j + beta * c, np.array([-1.0, -1.0, 0.0], np.float32)
    if fusion == "stack":
        cols, dirs = [], []
        if psm_weight > 0:
            if psm is None:
                raise ValueError("fusion 'stack' with psm_weight > 0 needs a PSM")
            cols.append(psm_weight * psm.reshape(-1, 1).astype(np.float32))
            dirs.append([1.0])
        if beta > 0 and not math.isinf(beta):
            cols.append(beta * c)
            dirs.append([-1.0, -1.0, -1.0])
        if h_weight > 0:
            cols.append(h_weight * scaled_hematoxylin(rgb, sigma=h_sigma).reshape(-1, 1))
            dirs.append([1.0])
        if not cols:
            raise ValueError("fusion 'stack' needs at least one of psm_weight, beta, h_weight > 0")
        return np.concatenate(cols, 1), np.concatenate([np.asarray(d, np.float32) for d in dirs])
    raise ValueError(f"unknown fusion {fusion!r} (use 'jet' or 'stack')")


def kmeans_labels(feats: np.ndarray, k: int = 3, n_init: int = 10, max_iter: int = 20, sample: int = 100_000,
                  seed: int = 0):
    """K-Means fitted on at most ``sample`` random pixels, then every pixel assigned: -> (labels (N,), centres (k, C))."""
    rng = np.random.default_rng(seed)
    fit = feats if len(feats) <= sample else feats[rng.choice(len(feats), sample, replace=False)]
    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(fit)
    return km.predict(feats), km.cluster_centers_


def clean_mask(mask: np.ndarray, min_size: int = 200, hole_size: int = 64) -> np.ndarray:
    """Remove objects with fewer than ``min_size`` px and fill holes with fewer than ``hole_size`` px."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    m = mask.astype(bool)
    if min_size > 1:
        m = remove_small_objects(m, max_size=min_size - 1)
    if hole_size > 1:
        m = remove_small_holes(m, max_size=hole_size - 1)
    return m


def semantic_clustering(rgb: np.ndarray, psm: np.ndarray | None = None, k: int = 3, beta: float = 1.0,
                        fusion: str = "jet", psm_weight: float = 1.0, h_weight: float = 1.0, h_sigma: float = 1.0,
                        n_init: int = 10,
                        max_iter: int = 20, sample: int = 100_000, min_size: int = 200, hole_size: int = 64,
                        seed: int = 0) -> np.ndarray:
    """SCM pseudo mask: (H, W, 3) uint8 RGB [+ (H, W) PSM in [0, 1]] -> (H, W) bool nuclei foreground."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"semantic_clustering expects (H, W, 3) RGB, got {rgb.shape}")
    if psm is not None and psm.shape != rgb.shape[:2]:
        raise ValueError(f"PSM shape {psm.shape} does not match image shape {rgb.shape[:2]}")
    feats, direction = scm_features(rgb, psm, fusion, beta, psm_weight, h_weight, h_sigma)
    labels, centres = kmeans_labels(feats, k, n_init, max_iter, sample, seed)
    fg = int(np.argmax(centres @ direction))
    return clean_mask((labels == fg).reshape(rgb.shape[:2]), min_size, hole_size)


def hematoxylin_otsu(rgb: np.ndarray, threshold_scale: float = 1.0, h_sigma: float = 1.0, min_size: int = 200,
                     hole_size: int = 64) -> np.ndarray:
    """Classical foreground: haematoxylin OD (smoothed by ``h_sigma``) > ``threshold_scale`` x Otsu, cleaned.

    (H, W, 3) uint8 RGB -> (H, W) bool. ``threshold_scale`` < 1 keeps paler nuclei. A flat image gives all False.
    """
    from skimage.filters import threshold_otsu

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expects (H, W, 3) RGB, got {rgb.shape}")
    h = hematoxylin_od(rgb, h_sigma)
    if float(h.max()) <= float(h.min()):
        return np.zeros(h.shape, bool)
    return clean_mask(h > threshold_scale * threshold_otsu(h), min_size, hole_size)


class SCM:
    """Callable wrapper of :func:`semantic_clustering` with fixed parameters, for configs
    (``_target_: bundle.nuclei.scm.SCM``).

    ``fusion="otsu"`` is the classical teacher instead: :func:`hematoxylin_otsu` (uses ``h_sigma``, ``min_size``,
    ``hole_size``, ``threshold_scale``; no PSM needed, ``needs_psm`` is False, so the runner skips the network).
    """

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.needs_psm = kwargs.get("fusion", "jet") != "otsu"

    def __call__(self, rgb: np.ndarray, psm: np.ndarray | None = None) -> np.ndarray:
        if not self.needs_psm:
            kw = self.kwargs
            return hematoxylin_otsu(rgb, kw.get("threshold_scale", 1.0), kw.get("h_sigma", 1.0),
                                    kw.get("min_size", 200), kw.get("hole_size", 64))
        return semantic_clustering(rgb, psm, **self.kwargs)
