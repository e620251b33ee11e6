# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG: unsupervised tissue segmentation by factorising frozen network features (Gildenblat & Hadar 2024).

No labels and no training of the backbone:

1. A frozen backbone gives non-negative spatial features ``A`` (C, h, w) at stride ``s`` (16 for every backbone
   here); the input is padded (replicate, bottom/right) to a multiple of ``s``. Three backbone kinds share one
   interface (:class:`FeatureExtractor`): the project's own self-supervised :class:`bundle.networks.Res2Net`
   (:class:`Res2NetFeatures`), ResNet-50 ``layer3`` built with MONAI (:class:`ResNet50Features`) and a timm ViT
   (:class:`TimmViTFeatures`, last block, CLS/register tokens dropped, ReLU). Weights always come from a local file;
   nothing is downloaded.
2. A concept bank (:class:`ConceptBank`): K-Means on global-average-pooled features of many tiles, several k at
   once, stored with the backbone's signature (kind, layer, channels, stride, preprocessing, weights fingerprint) so
   that it cannot be used with another backbone (:class:`BankMismatchError`, one line).
3. Segmentation of one image (``X`` = A reshaped to (P = h*w, C)):

   * variant **A** (:func:`variant_a`): NMF ``X ~ W H`` with ``n`` components (:func:`nmf`), each row of H mapped
     to the most cosine-similar bank centre, pixel label = centre of the argmax of the bilinearly upsampled W;
   * variant **B** (:func:`variant_b`): H fixed to the bank centres (negatives clipped to 0), solve ``W >= 0``
     per pixel (:func:`nnls`, the same coordinate descent and stopping rule as scikit-learn's
     ``non_negative_factorization(update_H=False)``, batched over pixels in torch); label = argmax = centre id.

   Labels are bank centre ids, so they are consistent across images and tiles.
4. Evaluation with ground-truth masks (:class:`FSegEvaluator`): matching (each cluster -> the GT class with most
   pixels, or with the largest class-frequency-normalised share) and the paper's linear probe on concept features.

Runners for the bundle workflows: :class:`ConceptBankBuilder` (``configs/fseg_bank.json``), :class:`FSegRunner`
(``configs/fseg_infer.json``), :class:`FSegEvaluator` (``configs/fseg_evaluate.json``).
Whole-slide images in the data are read tile-wise through :class:`bundle.wsi.SlideTiles` (bank: random tissue tiles;
inference: streamed tissue tiles, label map at one pixel per feature cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bundle.fseg.features import FeatureExtractor
from bundle.fseg.solvers import nmf, nnls

__all__ = [
    "Factorisation", "VARIANTS", "bilinear_argmax", "cosine_assign", "relabel", "variant_b", "variant_a",
    "segment", "area_fractions", "palette", "colour_overlay"
]

VARIANTS = ("A", "B")


def bilinear_argmax(maps: torch.Tensor, out_hw: tuple, max_elements: int = 1 << 24) -> torch.Tensor:
    """argmax over the first axis of ``maps`` (n, h, w) bilinearly upsampled to ``out_hw`` (align_corners=False,
    the same values as ``F.interpolate``), computed in bands of output rows so that at most about
    ``max_elements`` floats are held at once (large images and whole-slide levels stay bounded in memory).

    Returns (H, W) int64 on maps' device.
    """
    n, h, w = maps.shape
    H, W = int(out_hw[0]), int(out_hw[1])
    band = max(1, min(H, max_elements // max(1, n * W)))
    y = (torch.arange(H, device=maps.device, dtype=torch.float64) + 0.5) * (h / H) - 0.5
    y = y.clamp(min=0)
    y0 = y.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    ly = (y - y0).to(maps.dtype)
    out = torch.empty((H, W), dtype=torch.long, device=maps.device)
    for s in range(0, H, band):
        e = min(H, s + band)
        lo, hi = int(y0[s]), int(y1[e - 1]) + 1  # input rows this band needs
        rows = F.interpolate(maps[None, :, lo:hi], size=(hi - lo, W), mode="bilinear", align_corners=False)[0]
        a, b, l = rows[:, y0[s:e] - lo], rows[:, y1[s:e] - lo], ly[s:e].view(1, -1, 1)
        out[s:e] = (a * (1 - l) + b * l).argmax(0)
    return out


def _grid_to_native(maps: torch.Tensor, image_hw: tuple, extractor: FeatureExtractor) -> torch.Tensor:
    """argmax label grid of (n, h, w) coefficient maps at the native image size (crop of the padded extent)."""
    H, W = image_hw
    n, h, w = maps.shape
    s = extractor.stride / extractor.input_scale  # native px per feature cell
    full = (max(H, int(round(h * s))), max(W, int(round(w * s))))
    return bilinear_argmax(maps, full)[:H, :W]


def cosine_assign(concepts: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(n, C) concept vectors -> (n,) index of the most cosine-similar of the (k, C) centres."""
    a = F.normalize(concepts.float(), dim=1, eps=1e-12)
    b = F.normalize(centres.to(concepts.device).float(), dim=1, eps=1e-12)
    return (a @ b.T).argmax(1)


def relabel(component_map: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Map per-image component ids (H, W) to global ids with ``mapping`` (n,): ``mapping[component_map]``."""
    return mapping.to(component_map.device)[component_map]


def variant_b(feats: torch.Tensor, centres, image_hw: tuple, extractor: FeatureExtractor, tol: float = 1e-4,
              max_iter: int = 10000, method: str = "bpp") -> dict:
    """F-SEG variant B for one image: H fixed to the bank centres, per-pixel NNLS, label = argmax = centre id.

    Args:
        feats: (C, h, w) >= 0 from ``extractor``.  centres: (k, C) bank centres.  image_hw: native (H, W).
    Returns:
        {"labels": (H, W) int64 centre ids, "coef": (k, h, w) W maps, "concepts": (k, C) centres (clipped),
        "components": (H, W) component ids (= labels)}.
    """
    C, h, w = feats.shape
    Hc = torch.as_tensor(np.asarray(centres), dtype=torch.float32, device=feats.device).clamp(min=0)
    Wm = nnls(feats.reshape(C, -1).T.contiguous(), Hc, tol=tol, max_iter=max_iter, method=method)
    coef = Wm.T.reshape(-1, h, w)
    labels = _grid_to_native(coef, image_hw, extractor)
    return {"labels": labels, "coef": coef, "concepts": Hc, "components": labels}


def variant_a(feats: torch.Tensor, centres, image_hw: tuple, extractor: FeatureExtractor, n_components: int = 20,
              max_iter: int = 200, tol: float = 1e-4, seed: int = 0) -> dict:
    """F-SEG variant A for one image: NMF into ``n_components``, each component's H row -> most cosine-similar
    bank centre, label = centre of the argmax component.

    Returns:
        {"labels": (H, W) int64 centre ids, "components": (H, W) component ids, "concepts": (n, C) H rows,
        "mapping": (n,) centre id per component, "coef": (n, h, w)}.
    """
    C, h, w = feats.shape
    Wm, Hm = nmf(feats.reshape(C, -1).T.contiguous(), n_components, max_iter, tol, seed)
    cen = torch.as_tensor(np.asarray(centres), dtype=torch.float32, device=feats.device)
    mapping = cosine_assign(Hm, cen)
    coef = Wm.T.reshape(-1, h, w)
    comp = _grid_to_native(coef, image_hw, extractor)
    return {"labels": relabel(comp, mapping), "components": comp, "concepts": Hm, "mapping": mapping, "coef": coef}


def segment(feats: torch.Tensor, centres, image_hw: tuple, extractor: FeatureExtractor, variant: str = "B",
            n_components: int = 20, seed: int = 0, nmf_iter: int = 200, tol: float = 1e-4,
            nnls_method: str = "bpp") -> dict:
    """Dispatch to :func:`variant_a` / :func:`variant_b` (``variant`` "A" or "B"; ``nnls_method`` for B)."""
    v = str(variant).upper()
    if v == "B":
        return variant_b(feats, centres, image_hw, extractor, tol=tol, method=nnls_method)
    if v == "A":
        return variant_a(feats, centres, image_hw, extractor, n_components, nmf_iter, tol, seed)
    raise ValueError(f"unknown F-SEG variant {variant!r}; use 'A' (per-image NMF) or 'B' (fixed H)")


def area_fractions(labels: np.ndarray, k: int) -> np.ndarray:
    """(k,) fraction of the pixels of an (H, W) label map in each concept id 0..k-1 (sums to 1)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=k)[:k].astype(np.float64)
    return counts / max(1.0, counts.sum())


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 distinct, deterministic colours (golden-ratio hues, alternating value/saturation)."""
    import colorsys

    cols = []
    for i in range(k):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.95) if i % 2 == 0 else (0.6, 0.75)
        cols.append([int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return np.asarray(cols, np.uint8).reshape(-1, 3)


def colour_overlay(rgb: np.ndarray, labels: np.ndarray, k: int, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: tile blended with the concept colours, region boundaries drawn in black."""
    from skimage.segmentation import find_boundaries

    col = palette(k)[labels]
    out = (rgb.astype(np.float32) * (1 - alpha) + col.astype(np.float32) * alpha).round().astype(np.uint8)
    out[find_boundaries(labels, mode="inner")] = 0
    return out


@dataclass
class Factorisation:
    """How a tile's features become concept labels (:func:`segment`): ``variant`` "B" (non-negative least squares
    against the bank, ``nnls_method`` ``"bpp"`` exact and fast or ``"cd"`` scikit-learn's iterations) or "A" (NMF of
    ``n_components`` for ``nmf_iter`` iterations, seeded by ``seed``), both to tolerance ``tol``."""

    variant: str = "B"
    n_components: int = 20
    nmf_iter: int = 200
    tol: float = 1e-4
    nnls_method: str = "bpp"
    seed: int = 0

    def __post_init__(self):
        self.variant = str(self.variant).upper()
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown F-SEG variant {self.variant!r}; use 'A' or 'B'")
        self.n_components, self.nmf_iter, self.tol = int(self.n_components), int(self.nmf_iter), float(self.tol)
        self.seed = int(self.seed)

    def __call__(self, feats, centres, image_hw: tuple, extractor: FeatureExtractor, variant: str | None = None) -> dict:
        """:func:`segment` of one tile's features with these settings (``variant`` overrides the default one)."""
        return segment(feats, centres, image_hw, extractor, variant or self.variant, self.n_components, self.seed,
                       self.nmf_iter, self.tol, self.nnls_method)
