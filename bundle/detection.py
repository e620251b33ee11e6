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

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .labels import instance_target, points_from_probability, voronoi_label
from .postprocess import instances_by_watershed, instances_from_foreground, instances_from_three_class

__all__ = ["IGNORE", "detection_target", "segmentation_targets", "PartialCrossEntropy", "predict_probability", "ScaledInferer",
           "blend_hematoxylin", "mask_points", "nuclei_from_probability", "instance_settings", "instance_points"]

IGNORE = 255


def detection_target(mask: np.ndarray, target: str = "three", min_distance: int = 6, boundary_width: int = 1,
                     ignore_band: int = 0) -> np.ndarray:
    """Training label of the detection network from a (H, W) bool pseudo mask.

    Args:
        target: ``"binary"`` (0 / 1) or ``"three"`` (0 background, 1 interior, 2 boundary of the pseudo instances,
            which are the mask split by :func:`bundle.postprocess.instances_by_watershed` with ``min_distance``).
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


class PartialCrossEntropy(torch.nn.Module):
    """Sum of weighted cross-entropies, one per label channel, each ignoring ``ignore_index``.

    ``forward(logits, label)``: logits (B, C, H, W) float; label (B, L, H, W) or (B, H, W) integer-valued
    (float or int tensors accepted), L = ``len(weights)``. Returns a scalar. A channel with no labelled pixel in
    the batch contributes 0.

    Args:
        weights: one weight per label channel (reference segmentation loss: ``(1.0, 1.5)``).
        class_weights: optional per-class weights of the cross-entropy (e.g. ``(1, 1, 2)`` for boundary pixels).
        dice_weight: weight of a soft Dice loss of the foreground ``1 - P(background)`` against label channel 0's
            foreground (its labelled pixels only, summed over the batch); 0 = off (the default).
        bootstrap: soft bootstrapping of label channel 0 (Reed et al. 2015, for noisy labels such as pseudo masks):
            its cross-entropy becomes ``bootstrap * CE + (1 - bootstrap) * H(softmax)`` over its labelled pixels,
            so the network may keep confident predictions that disagree with the label; 1 = off (the default).
    """

    def __init__(self, weights: Sequence[float] = (1.0,), class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE, dice_weight: float = 0.0, bootstrap: float = 1.0):
        super().__init__()
        self.weights = [float(w) for w in weights]
        self.dice_weight = float(dice_weight)
        self.bootstrap = float(bootstrap)
        if not 0.0 < self.bootstrap <= 1.0:
            raise ValueError(f"bootstrap must be in (0, 1], got {bootstrap}")
        self.ignore_index = int(ignore_index)
        cw = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.ndim == logits.ndim - 1:
            label = label[:, None]
        if label.shape[1] != len(self.weights):
            raise ValueError(f"label has {label.shape[1]} channels but {len(self.weights)} loss weights are set")
        label = label.long()
        cw = None if self.class_weights is None else self.class_weights.to(logits.device)
        total = logits.new_zeros(())
        for i, w in enumerate(self.weights):
            y = label[:, i]
            if w == 0 or not bool((y != self.ignore_index).any()):
                continue
            ce = F.cross_entropy(logits, y, weight=cw, ignore_index=self.ignore_index)
            if i == 0 and self.bootstrap < 1.0:
                known = (y != self.ignore_index).float()
                logp = torch.log_softmax(logits.float(), 1)
                entropy = -(logp.exp() * logp).sum(1)
                ce = self.bootstrap * ce + (1.0 - self.bootstrap) * (entropy * known).sum() / known.sum()
            total = total + w * ce
        if self.dice_weight > 0:
            y = label[:, 0]
            known = (y != self.ignore_index).float()
            if bool(known.any()):
                fg = 1.0 - torch.softmax(logits.float(), 1)[:, 0]
                target = (y > 0).float() * known
                inter = (fg * target).sum()
                total = total + self.dice_weight * (1.0 - (2 * inter + 1.0) / ((fg * known).sum() + target.sum() + 1.0))
        return total


def input_channels(network: torch.nn.Module) -> int:
    """Input channels a convolutional network expects: dim 1 of its first 4-D weight (3 when it has none)."""
    for p in network.parameters():
        if p.ndim == 4:
            return int(p.shape[1])
    return 3


def predict_probability(network: torch.nn.Module, rgb: np.ndarray, device="cpu", roi_size: int = 512,
                        overlap: float = 0.25, sw_batch_size: int = 2, tta: bool = True,
                        hematoxylin_threshold: float | None = None, scale: float = 1.0) -> np.ndarray:
    """Softmax probabilities of a per-pixel classifier over an (H, W, 3) uint8 RGB image of any size.

    Images larger than ``roi_size`` are processed with MONAI's Gaussian-weighted sliding window (``overlap``);
    ``tta`` averages the four flips. The input is normalised with :func:`bundle.transforms.normalize_rgb`. A network
    with 4 input channels (``seg_train.json --hematoxylin_input True``) gets
    :func:`bundle.transforms.hematoxylin_channel` of the whole image as the 4th, relative to the image's own Otsu
    threshold or to ``hematoxylin_threshold`` (one value for all tiles of a slide).

    ``scale`` != 1 resizes the image by that factor (bilinear, anti-aliased when shrinking) before the network and
    the probabilities back to (H, W) after it: 2 shows 20x tiles (0.5 um/px) to a network trained at 40x
    (0.25 um/px) at the nucleus size it learnt (``network_mpp`` of :class:`bundle.pipeline.NucleiRunner`).

    Returns:
        (C, H, W) float32 probabilities summing to 1 over C, at the input's (H, W).
    """
    from monai.inferers import SlidingWindowInferer

    from .transforms import network_input

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"predict_probability expects (H, W, 3) RGB, got shape {rgb.shape}")
    h0, w0 = rgb.shape[:2]
    device = torch.device(device)
    x = network_input(rgb, scale, input_channels(network) == 4, hematoxylin_threshold)[None].to(device)
    h, w = x.shape[-2:]
    if max(h, w) > roi_size:
        inferer = SlidingWindowInferer(roi_size=[min(roi_size, h), min(roi_size, w)], sw_batch_size=sw_batch_size,
                                       overlap=overlap, mode="gaussian", padding_mode="reflect")

        def run(t):
            return inferer(t, lambda z: torch.softmax(network(z), 1))
    else:
        def run(t):
            return torch.softmax(network(t), 1)
    flips = [[], [-1], [-2], [-1, -2]] if tta else [[]]
    acc = None
    network.eval()
    with torch.no_grad():
        for f in flips:
            p = run(x.flip(f)) if f else run(x)
            p = p.flip(f) if f else p
            acc = p if acc is None else acc + p
    acc = acc / len(flips)
    if acc.shape[-2:] != (h0, w0):
        acc = torch.nn.functional.interpolate(acc, size=(h0, w0), mode="bilinear", align_corners=False)
    return acc[0].float().cpu().numpy()


class ScaledInferer:
    """A MONAI inferer run at another pixel size: ``inputs`` (B, C, H, W) are resized by ``scale`` (bilinear,
    anti-aliased when shrinking), ``inferer(inputs, network)`` runs on them, and its (B, K, h, w) output is resized
    back to (H, W). ``scale`` 1 calls ``inferer`` unchanged.

    Used by the Deploy-style ``evaluator`` of ``configs/inference.json`` with ``scale`` =
    :func:`bundle.postprocess.resample_factor` (2 for 20x tiles and a network trained at 40x), as
    :func:`predict_probability` does with its ``scale`` for the runner. ``hematoxylin=True`` (a 4-channel network,
    ``inputs`` = :func:`bundle.transforms.normalize_rgb` of RGB + :func:`bundle.transforms.hematoxylin_channel`):
    the RGB channels are taken back to [0, 255], resized as :func:`bundle.transforms.resize_rgb` does, and the 4th
    channel is computed again on the resized image (relative to its own Otsu threshold, or ``hematoxylin_threshold``),
    so the network sees exactly what the runner shows it; without it the normalised channels are resized in float.
    """

    def __init__(self, inferer, scale: float = 1.0, hematoxylin: bool = False,
                 hematoxylin_threshold: float | None = None):
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.inferer, self.scale = inferer, float(scale)
        self.hematoxylin, self.hematoxylin_threshold = bool(hematoxylin), hematoxylin_threshold

    def _resize_input(self, inputs: torch.Tensor, size) -> torch.Tensor:
        if not (self.hematoxylin and inputs.shape[1] == 4):
            return F.interpolate(inputs, size=size, mode="bilinear", align_corners=False, antialias=self.scale < 1)
        from monai.data import MetaTensor

        from .transforms import MEAN, STD, network_input

        rgbs = ((inputs[:, :3] * STD + MEAN) * 255.0).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        out = torch.stack([network_input(rgb, self.scale, True, self.hematoxylin_threshold)
                           for rgb in rgbs.cpu().numpy()]).to(inputs.device, inputs.dtype)
        if isinstance(inputs, MetaTensor):  # keep the image's meta data (file name ...) for a Deploy app
            out = MetaTensor(out, meta=inputs.meta)
        return out

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if self.scale == 1.0:
            return self.inferer(inputs, network, *args, **kwargs)
        inputs = torch.as_tensor(inputs)
        size = inputs.shape[-2:]
        new = [max(1, round(s * self.scale)) for s in size]
        y = self.inferer(self._resize_input(inputs, new), network, *args, **kwargs)
        return F.interpolate(torch.as_tensor(y), size=tuple(size), mode="bilinear", align_corners=False,
                             antialias=self.scale > 1)


def blend_hematoxylin(prob: np.ndarray, rgb: np.ndarray, weight: float = 0.35,
                      threshold: float | None = None) -> np.ndarray:
    """Blend a (C, H, W) probability map (channel 0 background) with the image's own haematoxylin evidence
    :math:`E` (:func:`bundle.transforms.hematoxylin_evidence`: soft "haematoxylin OD above the image's Otsu
    threshold", or above ``threshold``, a slide's):
    ``P'(nucleus) = (1 - weight) P(nucleus) + weight E``; the foreground is shared among channels 1.. as in ``prob``.

    Why: the network, trained on colour pseudo masks, still misses pale nuclei and keeps faint spurious blobs;
    the image's own stain evidence lowers the foreground threshold where the haematoxylin is high and raises it
    where it is low. On MoNuSeg ``weight`` 0.35 was selected on train and lifts test AJI by 0.012 on average
    over six seg networks (docs/README.md, item 11). ``weight`` 0 returns ``prob`` unchanged.

    Returns:
        (C, H, W) float32, still summing to 1 over C.
    """
    from .transforms import hematoxylin_evidence

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
    distance-transform watershed instances (:func:`bundle.postprocess.instances_by_watershed`, peaks at least
    ``min_distance`` px apart, instances under ``min_size`` px dropped; both 40x values, scaled by ``size_scale``).
    On the MoNuSeg train images these points match the annotated centres better than the detection network's
    trained on the same masks (docs/README.md, item 21)."""
    from .postprocess import instances_by_watershed, scaled

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
            values by default; callers scale them to other pixel sizes with :func:`bundle.postprocess.scaled`.
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
    (:func:`bundle.postprocess.size_scale`; 0.5 for 20x tiles), as :func:`bundle.labels.point_settings` does for
    the point extraction. ``min_size`` and ``min_distance`` are not here: the configs scale them."""
    from .postprocess import scaled

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
        from .clustering import clean_mask

        return instances_by_watershed(clean_mask(fg > threshold, min_size, hole_size), points, min_distance=min_distance,
                                      sigma=sigma, min_size=min_size)
    raise ValueError(f"unknown instance mode {mode!r} (use 'auto', 'three', 'watershed' or 'cc')")


def detection_points(prob: np.ndarray, threshold: float = 0.5, **kwargs) -> np.ndarray:
    """(N, 2) (row, col) nuclei centres from a (C, H, W) probability map (foreground = 1 - P(background)),
    by :func:`bundle.labels.points_from_probability` (reference parameters by default)."""
    return points_from_probability(1.0 - np.asarray(prob)[0], threshold=threshold, **kwargs)
