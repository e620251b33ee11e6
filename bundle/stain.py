# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Stain maths, one definition of each: optical density, colour deconvolution (H-E-DAB, Macenko stain vectors),
haematoxylin and DAB densities and the haematoxylin evidence / channel the networks use, Reinhard normalisation.
Inputs are (H, W, 3) uint8 RGB unless stated."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "hematoxylin_od", "hematoxylin_threshold", "hematoxylin_ratio", "hematoxylin_channel",
    "hematoxylin_evidence", "threshold_otsu_or_zero", "dab_od", "REF_HEMATOXYLIN", "REF_EOSIN", "REF_DAB",
    "optical_density", "lab_stats", "reinhard_normalize", "macenko_stain_vectors", "hematoxylin_index",
    "stain_matrix", "hematoxylin_concentration", "hd_from_od", "blank_reason", "reference_stain_matrix", "od_lookup"
]


def hematoxylin_od(rgb: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 haematoxylin optical density (>= 0; nuclei high).

    Uses scikit-image's H&E-DAB deconvolution matrix (``rgb2hed``); for IHC it separates haematoxylin from DAB.
    ``sigma`` > 0 smooths the result with a Gaussian (sigma=1: Otsu-mask pixel F1 0.683 -> 0.706 on MoNuSeg train,
    docs/results/psm_benchmark.md).
    """
    from skimage.color import rgb2hed

    h = rgb2hed(rgb)[..., 0].astype(np.float32)
    h = np.maximum(h - h.min(), 0) if h.min() < 0 else h
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        h = gaussian_filter(h, sigma)
    return h


def hematoxylin_threshold(images) -> float:
    """Otsu threshold of the haematoxylin OD (sigma 1) pooled over one (H, W, 3) uint8 RGB image or a list of them
    (e.g. tiles sampled over a whole slide); 0.0 when the pooled OD is flat."""
    images = [images] if isinstance(images, np.ndarray) else list(images)
    h = np.concatenate([hematoxylin_od(np.asarray(im).astype(np.uint8, copy=False), 1.0).ravel() for im in images])
    return threshold_otsu_or_zero(h)


def hematoxylin_ratio(rgb: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> (H, W) float32 ``h / t``: the haematoxylin OD (sigma 1) over a threshold ``t``,
    the image's own Otsu threshold (:func:`hematoxylin_threshold`) unless ``threshold`` is given (a whole slide
    passes one for all its tiles, so a tile without nuclei is not rescaled as if its darkest stroma were nuclei).
    1 at the threshold, > 1 on nuclei; all 0 for a flat image or ``t <= 0``."""
    h = hematoxylin_od(np.asarray(rgb).astype(np.uint8, copy=False), 1.0)
    t = threshold_otsu_or_zero(h) if threshold is None else float(threshold)
    return (h / t).astype(np.float32) if t > 0 else np.zeros_like(h)


def hematoxylin_channel(rgb: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> (H, W) float32 extra network input: ``r = clip(h / t, 0, 4)``
    (:func:`hematoxylin_ratio`, same ``threshold``), coded as ``127.5 + 63.75 (r - 1)`` so that
    :func:`normalize_rgb` turns it into ``r - 1`` (0 at the threshold, > 0 on nuclei).

    Why: with a fixed RGB normalisation a pale image's nuclei look like a dark image's cytoplasm, and the network
    misses the pale nuclei its per-image-Otsu teacher marks (docs/nuclei.md). This channel gives it the
    teacher's per-image scale. A flat image (no contrast) gets ``r = 0``.
    """
    r = np.clip(hematoxylin_ratio(rgb, threshold), 0, 4)
    return (127.5 + 63.75 * (r - 1.0)).astype(np.float32)


def hematoxylin_evidence(rgb: np.ndarray, threshold: float | None = None, steepness: float = 8.0) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> (H, W) float32 in [0, 1]: ``sigmoid(steepness (h / t - 1))``, a soft
    "haematoxylin above the image's Otsu threshold" (:func:`hematoxylin_ratio`, same ``threshold``). Blended into
    a network's nucleus probability by :func:`bundle.nuclei.detection.blend_hematoxylin` (docs/nuclei.md)."""
    r = hematoxylin_ratio(rgb, threshold)
    return (1.0 / (1.0 + np.exp(-float(steepness) * (r - 1.0)))).astype(np.float32)


def blank_reason(rgb: np.ndarray, min_contrast: float = 16.0) -> str | None:
    """Why an (H, W, 3) uint8 tile holds no tissue evidence, or None when it does: a flat image (the 1st-99th
    percentile range of its grey levels below ``min_contrast``: all white, all black, uniform grey, glass with
    noise). Real tiles: 113-255 (MoNuSeg, BCData, WSSS4LUAD; median 189). Such a tile yields no nuclei and is left
    out of training."""
    px = np.asarray(rgb).reshape(-1, 3)
    if len(px) > 1_000_000:  # a sample is enough for percentiles (taken before the float copy)
        px = px[:: len(px) // 1_000_000]
    g = px.astype(np.float32).mean(1)
    lo, hi = np.percentile(g, [1, 99])
    if hi - lo < min_contrast:
        return f"blank tile (grey levels {lo:.0f}-{hi:.0f}: no tissue contrast)"
    return None


def otsu_of_chunks(chunks, nbins: int = 256) -> float:
    """``threshold_otsu`` of all values of the arrays ``chunks()`` yields, without holding them together: two passes
    (range, then one 256-bin histogram over it), the same bins ``threshold_otsu`` makes of the concatenated values,
    so the same threshold. ``chunks``: a callable returning a fresh iterable each call. 0.0 when all are equal."""
    from skimage.filters import threshold_otsu

    lo = hi = None
    for a in chunks():
        if a.size:  # kept in the arrays' dtype: np.histogram then makes the same (float32) bin edges
            lo = a.min() if lo is None else min(lo, a.min())
            hi = a.max() if hi is None else max(hi, a.max())
    if lo is None or not hi > lo:
        return 0.0
    hist, edges = 0, None
    for a in chunks():
        h, edges = np.histogram(a, bins=nbins, range=(lo, hi))
        hist = hist + h
    return float(threshold_otsu(hist=(hist, (edges[:-1] + edges[1:]) / 2.0)))


def threshold_otsu_or_zero(values: np.ndarray) -> float:
    """Otsu threshold of an array, 0.0 when it is flat."""
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if values.size and float(np.ptp(values)) > 0 else 0.0


def dab_od(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 DAB optical density (brown IHC stain)."""
    from skimage.color import rgb2hed

    return np.maximum(rgb2hed(rgb)[..., 2].astype(np.float32), 0)


# Ruifrok & Johnston optical-density stain vectors (unit length below).
REF_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])


REF_EOSIN = np.array([0.072, 0.990, 0.105])


REF_DAB = np.array([0.268, 0.570, 0.776])


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / (np.linalg.norm(v, axis=0, keepdims=True) + 1e-12)


def reference_stain_matrix(second=REF_EOSIN) -> np.ndarray:
    """(3, 3) decadic OD matrix of the reference (Ruifrok) vectors: haematoxylin, ``second`` (:data:`REF_EOSIN` for
    H&E, :data:`REF_DAB` for IHC) and their unit cross product, as columns of unit length."""
    h, o = _unit(REF_HEMATOXYLIN), _unit(second)
    r = np.cross(h, o)
    return np.stack([h, o, r / np.linalg.norm(r)], 1)


def optical_density(rgb: np.ndarray, sigma: float = 0.0, log10: bool = False, io: float = 255.0) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) optical density ``-log((I + 1) / (io + 1))`` (>= 0 for ``io`` 255).

    Natural log in float32 by default, optionally Gaussian-smoothed by ``sigma`` (the IHC colour maths); with
    ``log10`` the decadic OD in float64 (the Beer-Lambert convention of the stain-vector estimates)."""
    if log10:
        return np.maximum(-np.log10((rgb.astype(np.float64) + 1.0) / (io + 1.0)), 0.0)
    od = -np.log((np.asarray(rgb, np.float32) + 1.0) / (io + 1.0))
    if sigma > 0:
        from scipy import ndimage as ndi

        od = np.stack([ndi.gaussian_filter(od[..., c], sigma) for c in range(3)], -1)
    return od.astype(np.float32)


def od_lookup(io: float = 255.0) -> np.ndarray:
    """(256,) float64 decadic optical density of each uint8 level, the values :func:`optical_density` with ``log10``
    gives: per-pixel OD by table lookup, without a float64 copy of a whole (H, W, 3) image."""
    return np.maximum(-np.log10((np.arange(256, dtype=np.float64) + 1.0) / (io + 1.0)), 0.0)


def tissue_by_od(rgb: np.ndarray, od_min: float = 0.15) -> np.ndarray:
    """(H, W) bool: pixels whose summed decadic optical density exceeds ``od_min`` (tissue, not glass)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        return optical_density(rgb, log10=True).sum(-1) > od_min
    lut = od_lookup()
    return lut[rgb[..., 0]] + lut[rgb[..., 1]] + lut[rgb[..., 2]] > od_min


def lab_stats(rgb: np.ndarray, tissue_only: bool = True):
    """(mean (3,), std (3,)) of the CIELAB values of the tissue pixels (all pixels if fewer than 100 are tissue)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb).reshape(-1, 3)
    m = tissue_by_od(rgb).reshape(-1) if tissue_only else np.ones(len(lab), bool)
    if m.sum() < 100:
        m = np.ones(len(lab), bool)
    return lab[m].mean(0), lab[m].std(0) + 1e-6


def reinhard_normalize(rgb: np.ndarray, target_mean: Sequence[float], target_std: Sequence[float]) -> np.ndarray:
    """Reinhard colour transfer in CIELAB: tissue statistics of ``rgb`` -> the target's; background (near-white)
    pixels keep their colour. Returns (H, W, 3) uint8."""
    from skimage.color import lab2rgb, rgb2lab

    mean, std = lab_stats(rgb)
    lab = rgb2lab(rgb)
    out = (lab - mean) / std * np.asarray(target_std) + np.asarray(target_mean)
    new = np.clip(lab2rgb(out) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bg = ~tissue_by_od(rgb)
    new[bg] = rgb[bg]
    return new


def macenko_stain_vectors(rgb: np.ndarray, beta: float = 0.15, alpha: float = 1.0, max_pixels: int = 200_000,
                          seed: int = 0) -> np.ndarray:
    """Macenko et al. (ISBI 2009) stain vectors: (3, 2) unit OD columns, in arbitrary order.

    Raises:
        ValueError: fewer than 100 stained pixels (OD > ``beta`` in every channel).
    """
    od = optical_density(rgb, log10=True).reshape(-1, 3)
    od = od[np.all(od > beta, axis=1)]
    if len(od) < 100:
        raise ValueError(f"only {len(od)} stained pixels, too few for a Macenko estimate")
    if len(od) > max_pixels:
        od = od[np.random.default_rng(seed).choice(len(od), max_pixels, replace=False)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]  # two largest eigenvectors
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0
    plane[:, 1] *= np.sign(plane[:, 1].sum()) or 1.0
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v = np.stack([v1, v2], 1)
    v *= np.where(v.sum(0) < 0, -1.0, 1.0)[None]
    return _unit(np.abs(v) * (v >= 0) + 1e-6)


def hematoxylin_index(vectors: np.ndarray) -> int:
    """Column of ``vectors`` (3, k) that is the haematoxylin stain: the largest cosine with the Ruifrok H vector."""
    return int(np.argmax(_unit(REF_HEMATOXYLIN) @ _unit(vectors)))


def stain_matrix(rgb: np.ndarray, method: str = "macenko", min_cosine: float = 0.85) -> tuple:
    """(3, 3) OD stain matrix with the haematoxylin vector in column 0, the other stain in column 1 and their
    cross product in column 2, and the name of the source ("macenko" or "ruifrok" fallback).

    The Macenko estimate is used when its haematoxylin column has cosine >= ``min_cosine`` with the reference
    haematoxylin vector and is closer to it than the other column; otherwise (little stain, odd colours) the
    Ruifrok H&E matrix is used.
    """
    src = "ruifrok"
    h, other = _unit(REF_HEMATOXYLIN), _unit(REF_EOSIN)
    if method == "macenko":
        try:
            v = macenko_stain_vectors(rgb)
            i = hematoxylin_index(v)
            cos = _unit(REF_HEMATOXYLIN) @ v
            if cos[i] >= min_cosine and cos[i] > cos[1 - i]:
                h, other, src = v[:, i], v[:, 1 - i], "macenko"
        except ValueError:
            pass
    elif method != "ruifrok":
        raise ValueError(f"unknown stain matrix method {method!r} (use 'macenko' or 'ruifrok')")
    third = np.cross(h, other)
    return _unit(np.stack([h, other, third / (np.linalg.norm(third) + 1e-12)], 1)), src


def hematoxylin_concentration(rgb: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 haematoxylin concentration (>= 0) by colour deconvolution with ``matrix`` (column 0 = H;
    default: :func:`stain_matrix` of the image)."""
    if matrix is None:
        matrix = stain_matrix(rgb)[0]
    conc = optical_density(rgb, log10=True).reshape(-1, 3) @ np.linalg.pinv(matrix).T
    return np.maximum(conc[:, 0], 0).reshape(rgb.shape[:2]).astype(np.float32)


# ------------------------------------------------------------------------------------------------ colour features
def hd_from_od(od: np.ndarray) -> np.ndarray:
    """(..., 3) OD -> (..., 2) haematoxylin and DAB concentrations (scikit-image's H-E-DAB deconvolution)."""
    from skimage.color import hed_from_rgb

    hed = np.asarray(od, np.float64) @ hed_from_rgb
    return hed[..., [0, 2]]
