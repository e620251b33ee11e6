# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Detection / segmentation stage of the PSM pipeline (METHODS.md 1.4-1.5): training labels from pseudo masks,
the partial cross-entropy loss, sliding-window prediction and instance / point extraction.

Label files are uint8 PNGs, one per tile, with ``IGNORE`` (255) where the loss must not look:

* detection targets (:func:`detection_target`): ``"binary"`` = the pseudo mask (0 background, 1 nucleus), or
  ``"three"`` = background / interior / boundary of the pseudo instances (pseudo mask split by a distance
  watershed), which lets the network learn to separate touching nuclei;
* segmentation targets (:func:`segmentation_targets`): the pseudo mask with its foreground optionally ignored
  (the reference ignores it) and the Voronoi label of the detected points (0 edges, 1 point disks, 255 rest).

:class:`PartialCrossEntropy` adds one weighted cross-entropy per label channel, each ignoring 255.
:func:`predict_probability` runs a network over an image of any size (sliding window, optional flip TTA) and
:func:`nuclei_from_probability` turns the probabilities into instances and points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bundle.losses import IGNORE
from bundle.nuclei.labels import instance_target, voronoi_label
from bundle.nuclei.postprocess import instances_by_watershed, instances_from_foreground, instances_from_three_class
from bundle.points import points_from_probability

__all__ = [
    "detection_target", "segmentation_targets", "blend_hematoxylin", "instance_points", "mask_points",
    "nuclei_from_probability", "instance_settings", "instance_mode", "detection_points", "NucleiPostprocess"
]


def detection_target(mask: np.ndarray, target: str = "three", min_distance: int = 6, boundary_width: int = 1,
                     ignore_band: int = 0) -> np.ndarray:
    """Training label of the detection network from a (H, W) bool pseudo mask.

    Args:
        target: ``"binary"`` (0 / 1) or ``"three"`` (0 background, 1 interior, 2 boundary of the pseudo instances,
            which are the mask split by :func:`bundle.nuclei.postprocess.instances_by_watershed` with ``min_distance``).
        ignore_band: pixels within this many px outside the pseudo-mask border are set to ``IGNORE`` (0 = none):
            the pseudo mask's outline is its least certain part.
    Returns:
        (H, W) uint8 label.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"detection_target expects a 2-D (H, W) mask, got shape {mask.shape}")
    if target == "binary":
        out = mask.astype(np.uint8)
    elif target == "three":
        inst = instances_by_watershed(mask, None, min_distance=min_distance, sigma=1.0, min_size=1)
        out = instance_target(inst, boundary_width)
    else:
        raise ValueError(f"unknown detection target {target!r} (use 'binary' or 'three')")
    if ignore_band > 0:
        from scipy import ndimage as ndi

        band = ndi.binary_dilation(mask, iterations=int(ignore_band)) & ~mask
        out[band] = IGNORE
    return out


def segmentation_targets(mask: np.ndarray, points: np.ndarray, keep_foreground: bool = False,
                         disk_radius: float = 2) -> np.ndarray:
    """Two-channel label of the segmentation network (reference: Qu et al. 2019 / PSM).

    Args:
        mask: (H, W) bool pseudo mask.  points: (N, 2) (row, col) detected nuclei.
        keep_foreground: keep the pseudo mask's foreground as class 1 in channel 0 (else it is ``IGNORE``, the
            reference's choice: only its background is trusted).
    Returns:
        (2, H, W) uint8: channel 0 pseudo-mask label (0 / 1 / 255), channel 1 Voronoi label (0 edges, 1 disks,
        255 elsewhere).
    """
    mask = np.asarray(mask).astype(bool)
    ch0 = mask.astype(np.uint8)
    if not keep_foreground:
        ch0[mask] = IGNORE
    vor = voronoi_label(points, mask.shape, disk_radius=disk_radius)
    vor[vor == 2] = IGNORE
    return np.stack([ch0, vor])


def blend_hematoxylin(prob: np.ndarray, rgb: np.ndarray, weight: float = 0.35,
                      threshold: float | None = None) -> np.ndarray:
    """Blend a (C, H, W) probability map (channel 0 background) with the image's own haematoxylin evidence
    :math:`E` (:func:`bundle.stain.hematoxylin_evidence`: soft "haematoxylin OD above the image's Otsu
    threshold", or above ``threshold``, a slide's):
    ``P'(nucleus) = (1 - weight) P(nucleus) + weight E``; the foreground is shared among channels 1.. as in ``prob``.

    Why: the network, trained on colour pseudo masks, still misses pale nuclei and keeps faint spurious blobs;
    the image's own stain evidence lowers the foreground threshold where the haematoxylin is high and raises it
    where it is low. On MoNuSeg ``weight`` 0.35 was selected on train and lifts test AJI by 0.012 on average
    over six seg networks (docs/nuclei.md). ``weight`` 0 returns ``prob`` unchanged.

    Returns:
        (C, H, W) float32, still summing to 1 over C.
    """
    from bundle.stain import hematoxylin_evidence

    prob = np.asarray(prob, np.float32)
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"blend_hematoxylin weight must be in [0, 1], got {weight}")
    if w == 0.0:
        return prob
    if prob.ndim != 3 or prob.shape[0] < 2 or prob.shape[1:] != np.asarray(rgb).shape[:2]:
        raise ValueError(f"blend_hematoxylin: probability map {prob.shape} does not fit image {np.asarray(rgb).shape}")
    e = hematoxylin_evidence(rgb, threshold)
    fg = prob[1:].sum(0)
    share = np.where(fg > 1e-6, prob[1:] / np.maximum(fg, 1e-6), 1.0 / (prob.shape[0] - 1))
    new_fg = (1.0 - w) * fg + w * e
    return np.concatenate([(1.0 - new_fg)[None], share * new_fg[None]]).astype(np.float32)


def instance_points(inst: np.ndarray) -> np.ndarray:
    """(N, 2) float (row, col) centroids of instances 1..N of an (H, W) instance map."""
    from scipy import ndimage as ndi

    n = int(inst.max())
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones_like(inst), inst, np.arange(1, n + 1)), dtype=np.float64)


def mask_points(mask: np.ndarray, size_scale: float = 1.0, min_distance: int = 8, min_size: int = 20) -> np.ndarray:
    """(N, 2) float (row, col) nuclei centres of a binary pseudo mask without a network: the centroids of its
    distance-transform watershed instances (:func:`bundle.nuclei.postprocess.instances_by_watershed`, peaks at least
    ``min_distance`` px apart, instances under ``min_size`` px dropped; both 40x values, scaled by ``size_scale``).
    On the MoNuSeg train images these points match the annotated centres better than the detection network's
    trained on the same masks (docs/nuclei.md)."""
    from bundle.nuclei.postprocess import instances_by_watershed
    from bundle.scale import scaled

    inst = instances_by_watershed(np.asarray(mask, bool), None, min_distance=scaled(min_distance, size_scale),
                                  sigma=scaled(1.0, size_scale, integer=False, minimum=0.5),
                                  min_size=scaled(min_size, size_scale, area=True))
    return instance_points(inst)


def nuclei_from_probability(prob: np.ndarray, mode: str = "auto", min_size: int = 20, min_distance: int = 6,
                            points: np.ndarray | None = None, threshold: float = 0.5, grow: int = 0,
                            min_score: float = 0.0, hole_size: int = 64, sigma: float = 1.0,
                            min_seed_size: int = 8) -> np.ndarray:
    """Instances from a (C, H, W) probability map.

    Args:
        mode: ``"three"`` (background / interior / boundary head: seeded watershed), ``"watershed"``
            (foreground = ``1 - P(background) > threshold`` split by a distance-transform watershed with peaks at
            least ``min_distance`` px apart, or markers = ``points`` if given), ``"cc"`` (connected components of
            the foreground; the reference), ``"auto"`` = ``"three"`` for 3 channels else ``"watershed"``.
        grow: grow every instance by this many px into the background without merging instances
            (:func:`skimage.segmentation.expand_labels`): networks trained on colour-threshold pseudo masks draw
            nuclei tighter than annotators do (docs/results/nuclei_diagnosis.md).
        min_score: drop instances whose mean foreground probability is below this (faint blobs; 0 = keep all),
            before growing; the rest are renumbered 1..N.
        hole_size: holes in the foreground smaller than this (px) are filled.
        sigma: Gaussian smoothing (px) of the distance transform in ``"watershed"`` mode.
        min_seed_size: smallest interior seed (px) in ``"three"`` mode.
            The px sizes (``min_size``, ``min_distance``, ``hole_size``, ``sigma``, ``min_seed_size``) are 40x
            values by default; callers scale them to other pixel sizes with :func:`bundle.scale.scaled`.
    Returns:
        (H, W) int32 instance map, 0 = background.
    """
    prob = np.asarray(prob)
    inst = _nuclei(prob, mode, min_size, min_distance, points, threshold, hole_size, sigma, min_seed_size)
    if min_score > 0 and inst.max() > 0:
        from scipy import ndimage as ndi
        from skimage.segmentation import relabel_sequential

        ids = np.arange(1, int(inst.max()) + 1)
        faint = ids[np.asarray(ndi.mean(1.0 - prob[0], inst, ids)) < float(min_score)]
        inst = relabel_sequential(np.where(np.isin(inst, faint), 0, inst))[0].astype(np.int32)
    if grow > 0:
        from skimage.segmentation import expand_labels

        inst = expand_labels(inst, int(grow)).astype(np.int32)
    return inst


def instance_settings(scale: float = 1.0) -> dict:
    """The fixed-px keyword arguments of :func:`nuclei_from_probability` (``hole_size``, ``sigma``,
    ``min_seed_size``, set at 40x) carried to a pixel density ``scale`` relative to 40x
    (:func:`bundle.scale.size_scale`; 0.5 for 20x tiles), as :func:`bundle.points.point_settings` does for
    the point extraction. ``min_size`` and ``min_distance`` are not here: the configs scale them."""
    from bundle.scale import scaled

    return {"hole_size": scaled(64, scale, area=True), "sigma": scaled(1.0, scale, integer=False, minimum=0.5),
            "min_seed_size": scaled(8, scale, area=True, minimum=2)}


def instance_mode(mode: str, n_channels: int) -> str:
    """The instance mode ``mode`` stands for: ``"auto"`` is ``"three"`` for a 3-channel map, else ``"watershed"``."""
    return ("three" if int(n_channels) == 3 else "watershed") if mode == "auto" else mode


def _nuclei(prob, mode, min_size, min_distance, points, threshold, hole_size=64, sigma=1.0, min_seed_size=8) -> np.ndarray:
    mode = instance_mode(mode, prob.shape[0])
    if mode == "three":
        if prob.shape[0] != 3:
            raise ValueError(f"mode 'three' needs a 3-channel background/interior/boundary map, got {prob.shape[0]}")
        return instances_from_three_class(prob, fg_threshold=threshold, min_seed_size=min_seed_size, min_size=min_size,
                                          hole_size=hole_size)
    fg = 1.0 - prob[0]
    if mode == "cc":
        return instances_from_foreground(fg, threshold, min_size=min_size, hole_size=hole_size)
    if mode == "watershed":
        from bundle.nuclei.scm import clean_mask

        return instances_by_watershed(clean_mask(fg > threshold, min_size, hole_size), points, min_distance=min_distance,
                                      sigma=sigma, min_size=min_size)
    raise ValueError(f"unknown instance mode {mode!r} (use 'auto', 'three', 'watershed' or 'cc')")


def detection_points(prob: np.ndarray, threshold: float = 0.5, **kwargs) -> np.ndarray:
    """(N, 2) (row, col) nuclei centres from a (C, H, W) probability map (foreground = 1 - P(background)),
    by :func:`bundle.points.points_from_probability` (reference parameters by default)."""
    return points_from_probability(1.0 - np.asarray(prob)[0], threshold=threshold, **kwargs)


@dataclass
class NucleiPostprocess:
    """Probabilities -> nuclei instances: the post-processing step of :class:`bundle.nuclei.runner.NucleiRunner`.

    ``__call__(prob, rgb)`` blends a 2-channel (background / nucleus) map with the image's own haematoxylin evidence
    (weight ``hematoxylin_prior`` in [0, 1]; 0 = off; :func:`blend_hematoxylin`), then makes instances by
    :func:`nuclei_from_probability` (``mode``, ``threshold``, ``min_size``, ``min_distance``, ``grow``,
    ``min_score``); ``markers="points"`` seeds the watershed with the detected points (:func:`detection_points`),
    ``"distance"`` with distance-transform peaks. ``size_scale`` (pixel density relative to 40x) scales the fixed-px
    sizes of the point extraction and the instance step; the other sizes are taken as given (the configs scale them).
    """

    mode: str = "auto"
    markers: str = "points"
    threshold: float = 0.5
    min_size: int = 20
    min_distance: int = 6
    grow: int = 0
    min_score: float = 0.0
    hematoxylin_prior: float = 0.35
    size_scale: float = 1.0

    def __post_init__(self):
        self.grow, self.min_score = int(self.grow), float(self.min_score)
        self.hematoxylin_prior, self.size_scale = float(self.hematoxylin_prior), float(self.size_scale)
        if not 0.0 <= self.hematoxylin_prior <= 1.0:
            raise ValueError(f"hematoxylin_prior must be in [0, 1], got {self.hematoxylin_prior}")
        if not self.size_scale > 0:
            raise ValueError(f"size_scale must be > 0, got {self.size_scale}")

    def __call__(self, prob: np.ndarray, rgb: np.ndarray, hematoxylin_threshold: float | None = None):
        """(C, H, W) probabilities of the (H, W, 3) uint8 ``rgb`` -> (instances (H, W) int32, the probabilities the
        instances were made from (blended for a 2-channel map))."""
        from bundle.points import point_settings

        if prob.shape[0] == 2:  # the blend was measured on background / nucleus networks only
            prob = blend_hematoxylin(prob, rgb, self.hematoxylin_prior, hematoxylin_threshold)
        mode = instance_mode(self.mode, prob.shape[0])
        pts = (detection_points(prob, **point_settings(self.size_scale))
               if (self.markers == "points" and mode == "watershed") else None)
        inst = nuclei_from_probability(prob, mode, min_size=self.min_size, min_distance=self.min_distance,
                                       points=pts, threshold=self.threshold, grow=self.grow,
                                       min_score=self.min_score, **instance_settings(self.size_scale))
        return inst, prob
