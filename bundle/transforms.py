# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Transforms shared by training and inference, so both see identically normalised inputs.

* :func:`normalize_rgb` — the one input normalisation of the activation network: (rgb/255 - 0.5) / 0.25.
* :func:`hematoxylin_od` — haematoxylin optical density by colour deconvolution (Ruifrok & Johnston).
* :class:`LoadTiled` — MONAI dictionary transform reading a tile with :func:`bundle.io.read_rgb` to (3, H, W) float.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

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


class LoadLabeld(MapTransform):
    """Read a training label into a float32 tensor (L, H, W): ``.npy`` arrays (H, W) or (L, H, W), or a
    PNG/TIFF (H, W) (a 0/255 pseudo mask becomes 0/1 when ``binarize``). Keeps integer values (e.g. 255 = ignore).

    Raises ``ValueError`` naming the file when it cannot be read.
    """

    def __init__(self, keys=("label",), binarize: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.binarize = binarize

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            try:
                if path.endswith(".npy"):
                    arr = np.load(path, allow_pickle=False)
                else:
                    from .annotations import read_instance_label

                    arr = read_instance_label(path)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{path}: cannot read label ({str(e).splitlines()[0] if str(e) else e})") from None
            arr = np.asarray(arr)
            if arr.ndim == 2:
                arr = arr[None]
            if self.binarize:
                arr = (arr > 0).astype(np.uint8)
            d[key] = torch.from_numpy(np.ascontiguousarray(arr)).float()
        return d


class NormalizeRGBd(MapTransform):
    """Dictionary version of :func:`normalize_rgb` ((3, H, W) in [0, 255] -> normalised float)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_rgb(torch.as_tensor(d[key]).float())
        return d


class RandStainJitterd(Randomizable, MapTransform):
    """Random H&E colour augmentation on a (3, H, W) [0, 255] image: per-channel optical-density scale
    ``1 +- sigma`` and shift ``+- bias`` (OD units), with probability ``prob``; seeded like any MONAI randomizable
    transform (``set_determinism`` / ``Compose.set_random_state``)."""

    def __init__(self, keys=("image",), sigma: float = 0.05, bias: float = 0.02, prob: float = 0.8):
        MapTransform.__init__(self, keys)
        self.sigma, self.bias, self.prob = sigma, bias, prob

    def randomize(self, data=None):
        self._do = self.R.rand() < self.prob
        self._a = 1 + self.R.uniform(-self.sigma, self.sigma, 3)
        self._b = self.R.uniform(-self.bias, self.bias, 3)

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        a = torch.as_tensor(self._a, dtype=torch.float32)[:, None, None]
        b = torch.as_tensor(self._b, dtype=torch.float32)[:, None, None]
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()
            od = -torch.log((x + 1) / 256)
            d[key] = (256 * torch.exp(-(od * a + b)) - 1).clamp(0, 255)
        return d
