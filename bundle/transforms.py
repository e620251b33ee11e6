# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Transforms shared by training and inference, so both see identically normalised inputs.

* :func:`normalize_rgb` — the one input normalisation of the activation network: (rgb/255 - 0.5) / 0.25.
* :func:`hematoxylin_od` — haematoxylin optical density by colour deconvolution (Ruifrok & Johnston).
* :class:`LoadTiled` — MONAI dictionary transform reading a tile with :func:`bundle.io.read_rgb` to (3, H, W) float.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform

from .io import read_rgb

MEAN, STD = 0.5, 0.25


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) RGB in [0, 255] -> network input, (x/255 - 0.5)/0.25."""
    return (x / 255.0 - MEAN) / STD


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


def dab_od(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 DAB optical density (brown IHC stain)."""
    from skimage.color import rgb2hed

    return np.maximum(rgb2hed(rgb)[..., 2].astype(np.float32), 0)


class LoadTiled(MapTransform):
    """Read ``data[key]`` (a path) as a float32 tensor (3, H, W) in [0, 255]; keeps the path in ``<key>_path``.

    Raises :class:`bundle.io.ImageError` (one line, names the file) for unreadable or too-small images.
    """

    def __init__(self, keys=("image",), min_size: int = 32, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_size = min_size

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            img = read_rgb(path, min_size=self.min_size)
            d[key] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
            d[f"{key}_path"] = str(path)
        return d
