# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Per-pixel probabilities of a whole tile: sliding window, flip TTA, resizing to the network's pixel size and the
haematoxylin input channel (:func:`predict_probability`, :class:`TilePredictor`), and the MONAI-inferer form of the
same (:class:`ScaledInferer`) for the evaluator of ``configs/inference.json``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["input_channels", "predict_probability", "ScaledInferer", "TilePredictor"]


def input_channels(network: torch.nn.Module) -> int:
    """Input channels a convolutional network expects: its ``in_channels`` attribute (a :mod:`bundle.backends`
    engine), else dim 1 of its first 4-D weight (3 when it has none)."""
    if isinstance(getattr(network, "in_channels", None), int):
        return network.in_channels
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
    :func:`bundle.stain.hematoxylin_channel` of the whole image as the 4th, relative to the image's own Otsu
    threshold or to ``hematoxylin_threshold`` (one value for all tiles of a slide).

    ``scale`` != 1 resizes the image by that factor (bilinear, anti-aliased when shrinking) before the network and
    the probabilities back to (H, W) after it: 2 shows 20x tiles (0.5 um/px) to a network trained at 40x
    (0.25 um/px) at the nucleus size it learnt (``network_mpp`` of :class:`bundle.nuclei.runner.NucleiRunner`).

    Returns:
        (C, H, W) float32 probabilities summing to 1 over C, at the input's (H, W).
    """
    from monai.inferers import SlidingWindowInferer

    from bundle.transforms import network_input

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
    :func:`bundle.scale.resample_factor` (2 for 20x tiles and a network trained at 40x), as
    :func:`predict_probability` does with its ``scale`` for the runner. ``hematoxylin=True`` (a 4-channel network,
    ``inputs`` = :func:`bundle.transforms.normalize_rgb` of RGB + :func:`bundle.stain.hematoxylin_channel`):
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

        from bundle.transforms import MEAN, STD, network_input

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


@dataclass
class TilePredictor:
    """Per-pixel class probabilities of one (H, W, 3) uint8 tile by :func:`predict_probability`: a sliding window of
    ``roi_size`` with ``overlap``, flip test-time augmentation (``tta``), and the tile resized to the pixel size the
    network was trained at (``network_mpp``, um/px) from its own (``size_scale``: pixel density relative to 40x,
    :func:`bundle.scale.size_scale`). ``network_mpp`` ``None``: no resizing."""

    roi_size: int = 1024
    overlap: float = 0.25
    tta: bool = True
    size_scale: float = 1.0
    network_mpp: float | None = None

    def __post_init__(self):
        from bundle.scale import resample_factor

        self.size_scale = float(self.size_scale)
        if not self.size_scale > 0:
            raise ValueError(f"size_scale must be > 0, got {self.size_scale}")
        self.network_mpp = None if self.network_mpp is None else float(self.network_mpp)
        self.resample = resample_factor(self.size_scale, self.network_mpp)

    def __call__(self, network, rgb: np.ndarray, device="cpu", hematoxylin_threshold: float | None = None):
        """-> (C, H, W) float32 softmax probabilities (``hematoxylin_threshold``: see :func:`predict_probability`)."""
        return predict_probability(network, rgb, device, self.roi_size, self.overlap, tta=self.tta,
                                   hematoxylin_threshold=hematoxylin_threshold, scale=self.resample)
