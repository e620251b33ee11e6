# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""From foreground maps to nuclei instances, and the classical (no learning) nuclei baseline.

* :func:`instances_from_foreground` -- threshold + clean-up + connected components (the reference PSM pipeline's
  instance step; touching nuclei stay merged).
* :func:`instances_by_watershed` -- marker-controlled watershed on the negative (smoothed) distance transform of
  the mask, markers = given points or distance-transform peaks; splits touching nuclei.
* :func:`classical_foreground` / :func:`classical_nuclei` -- the classical baseline of METHODS.md section 4:
  haematoxylin OD (colour deconvolution) -> Otsu -> clean-up -> distance-transform watershed.

All instance maps are (H, W) int32, 0 = background, instances numbered 1..N consecutively.

Pixel sizes: every size default of the H&E pipeline (object and hole areas, peak distances, blur widths, disk
radii) was tuned on MoNuSeg at 40x, :data:`REFERENCE_MPP` = 0.25 um/px. :func:`size_scale` and :func:`scaled`
carry them to tiles of another pixel size (the configs' ``mpp`` key: 0.5 for 20x tiles).
"""

from __future__ import annotations

import numpy as np

from bundle.measure import instance_polygons  # noqa: F401 - re-exported: outlines live with the measurements
from bundle.nuclei.scm import clean_mask, hematoxylin_otsu

__all__ = [
    "instances_from_foreground", "instances_by_watershed", "classical_foreground", "classical_nuclei",
    "instances_from_three_class", "instance_polygons"
]


def _as_mask(fg: np.ndarray, threshold: float) -> np.ndarray:
    fg = np.asarray(fg)
    if fg.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) foreground map, got shape {fg.shape}")
    return fg.astype(bool) if fg.dtype == bool else fg > threshold


def _relabel(inst: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(inst.astype(np.int32))[0].astype(np.int32)


def instances_from_foreground(fg_prob_or_mask: np.ndarray, threshold: float = 0.5, min_size: int = 20,
                              hole_size: int = 64, connectivity: int = 2) -> np.ndarray:
    """Connected components of a foreground map.

    Args:
        fg_prob_or_mask: (H, W) bool mask, or float probability / score (foreground where ``> threshold``).
        min_size: objects with fewer pixels are removed (before labelling; ``<= 1`` keeps all).
        hole_size: holes with fewer pixels are filled (``<= 1`` fills none); see :func:`bundle.nuclei.scm.clean_mask`.
        connectivity: 1 = 4-connected, 2 = 8-connected components (skimage convention).
    Returns:
        (H, W) int32 instance map, 0 = background, 1..N.
    """
    from skimage.measure import label

    mask = clean_mask(_as_mask(fg_prob_or_mask, threshold), min_size, hole_size)
    return label(mask, connectivity=connectivity).astype(np.int32)


def _markers_from_points(points, mask: np.ndarray) -> np.ndarray:
    pts = np.rint(np.asarray(points, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    h, w = mask.shape
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    pts = pts[inside]
    pts = pts[mask[pts[:, 0], pts[:, 1]]]
    markers = np.zeros(mask.shape, np.int32)
    markers[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1, dtype=np.int32)
    return markers


def instances_by_watershed(fg_mask: np.ndarray, markers_points: np.ndarray | None = None, min_distance: int = 6,
                           sigma: float = 1.0, min_size: int = 20, threshold: float = 0.5,
                           compactness: float = 0.0, connectivity: int = 2) -> np.ndarray:
    """Marker-controlled watershed of ``-distance_transform(mask)`` restricted to the mask.

    Args:
        fg_mask: (H, W) bool mask, or float map thresholded at ``threshold``. Used as given (no clean-up).
        markers_points: optional (N, 2) (row, col) markers (e.g. from
            :func:`bundle.points.points_from_probability`); points outside the mask are ignored. If None, markers
            are the local maxima of the distance transform (after Gaussian smoothing with ``sigma`` px; 0 = none),
            at least ``min_distance`` px apart (Chebyshev), found per connected component.
        min_size: instances with fewer pixels are removed after the watershed (``<= 1`` keeps all).
        compactness: ``skimage.segmentation.watershed`` compactness (0 = classical watershed).
        connectivity: connectivity of components and of the watershed neighbourhood (1 or 2).
    Returns:
        (H, W) int32 instance map, 0 = background, 1..N. A connected component without any marker becomes one
        instance of its own (so no foreground is lost for lack of markers).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    mask = _as_mask(fg_mask, threshold)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndi.distance_transform_edt(mask)
    if sigma and sigma > 0:
        dist = ndi.gaussian_filter(dist, sigma)
    comps = label(mask, connectivity=connectivity)
    if markers_points is not None:
        markers = _markers_from_points(markers_points, mask)
    else:
        peaks = peak_local_max(dist, min_distance=max(1, int(min_distance)), labels=comps, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    footprint = ndi.generate_binary_structure(2, connectivity)
    inst = watershed(-dist, markers, mask=mask, connectivity=footprint, compactness=compactness).astype(np.int32)
    unmarked = mask & (inst == 0)
    if unmarked.any():  # components with no marker: keep them whole
        extra = label(unmarked, connectivity=connectivity).astype(np.int32)
        inst[unmarked] = extra[unmarked] + inst.max()
    if min_size > 1:
        inst = remove_small_objects(inst, max_size=min_size - 1)
    return _relabel(inst)


def classical_foreground(rgb: np.ndarray, threshold_scale: float = 1.0, min_size: int = 30,
                         hole_size: int = 64, h_sigma: float = 1.0) -> np.ndarray:
    """Nuclei mask of the classical baseline: :func:`bundle.nuclei.scm.hematoxylin_otsu` with these defaults."""
    return hematoxylin_otsu(rgb, threshold_scale, h_sigma, min_size, hole_size)


def classical_nuclei(rgb: np.ndarray, min_distance: int = 6, sigma: float = 1.0, min_size: int = 30,
                     threshold_scale: float = 1.0, hole_size: int = 64, compactness: float = 0.0) -> np.ndarray:
    """Classical nuclei instance segmentation (no learning, no labels).

    Haematoxylin OD by colour deconvolution -> Otsu threshold (times ``threshold_scale``) -> remove objects
    < ``min_size`` px, fill holes < ``hole_size`` px -> Euclidean distance transform, Gaussian-smoothed with
    ``sigma`` -> markers = its local maxima ``min_distance`` px apart -> watershed of the negative distance within
    the mask -> instances < ``min_size`` px removed.

    Args:
        rgb: (H, W, 3) uint8 H&E RGB.
    Returns:
        (H, W) int32 instance map, 0 = background, 1..N.
    """
    mask = classical_foreground(rgb, threshold_scale, min_size, hole_size)
    return instances_by_watershed(mask, None, min_distance=min_distance, sigma=sigma, min_size=min_size,
                                  compactness=compactness)


def instances_from_three_class(prob: np.ndarray, seed_threshold: float = 0.5, fg_threshold: float = 0.5,
                               min_seed_size: int = 8, min_size: int = 20, hole_size: int = 64) -> np.ndarray:
    """Instances from a background / interior / boundary probability map
    (see :func:`bundle.nuclei.labels.instance_target`).

    Seeds = connected components of ``P(interior) > seed_threshold`` with at least ``min_seed_size`` px;
    foreground = ``1 - P(background) > fg_threshold`` (cleaned with ``min_size`` / ``hole_size``); each seed is
    grown over the foreground by a watershed of ``-P(interior)``. Foreground components without a seed become one
    instance each.

    Args:
        prob: (3, H, W) float probabilities (softmax output), channels background, interior, boundary.
    Returns:
        (H, W) int32 instance map, 0 = background, 1..N.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3 or prob.shape[0] != 3:
        raise ValueError(f"expected (3, H, W) background/interior/boundary probabilities, got shape {prob.shape}")
    fg = clean_mask((1.0 - prob[0]) > fg_threshold, min_size, hole_size)
    seeds = label((prob[1] > seed_threshold) & fg, connectivity=1).astype(np.int32)
    if min_seed_size > 1:
        seeds = remove_small_objects(seeds, max_size=min_seed_size - 1)
    inst = watershed(-prob[1], seeds, mask=fg, connectivity=ndi.generate_binary_structure(2, 1)).astype(np.int32)
    unmarked = fg & (inst == 0)
    if unmarked.any():
        extra = label(unmarked, connectivity=2).astype(np.int32)
        inst[unmarked] = extra[unmarked] + inst.max()
    if min_size > 1:
        inst = remove_small_objects(inst, max_size=min_size - 1)
    return _relabel(inst)
