# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The F-SEG concept bank: K-Means centres of pooled frozen-network features for several k, saved with the
extractor's signature (checked on load), and its builder (``configs/fseg_bank.json``)."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from bundle.fseg.features import FeatureExtractor, window_gap_features
from bundle.io import (
    ImageError,
    datalist_items,
    read_rgb_or_skip,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BANK_FORMAT", "BANK_VERSION", "SIGNATURE_KEYS", "BankMismatchError", "fit_kmeans_bank", "ConceptBank",
    "ConceptBankBuilder"
]

BANK_FORMAT = "fseg-concept-bank"


BANK_VERSION = 1


#: the signature fields a concept bank must share with the extractor it is used with
SIGNATURE_KEYS = ("backbone", "layer", "channels", "stride", "preprocessing", "weights_sha256")


class BankMismatchError(ValueError):
    """A concept bank used with a backbone other than the one it was fitted on (one-line message)."""


def fit_kmeans_bank(vectors: np.ndarray, ks: Sequence[int], seed: int = 0, n_init: int = 4) -> Dict[int, np.ndarray]:
    """K-Means (scikit-learn, Euclidean, no normalisation, as F-SEG) on (N, C) GAP features for every k.

    Returns ``{k: (k, C) float32 centres}``. Raises ValueError (one line) when N < k.
    """
    from sklearn.cluster import KMeans

    vectors = np.asarray(vectors, np.float32)
    out = {}
    for k in sorted({int(k) for k in ks}):
        if k < 1:
            raise ValueError(f"concept bank k must be >= 1, got {k}")
        if len(vectors) < k:
            raise ValueError(f"only {len(vectors)} tile features for k={k}; add tiles, raise windows_per_image, "
                             f"or drop k={k}")
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(vectors)
        out[k] = km.cluster_centers_.astype(np.float32)
    return out


class ConceptBank:
    """K-Means centres for several k, plus the signature of the features they were fitted on.

    Args:
        centres: ``{k: (k, C) array}``.  meta: at least the keys of :data:`SIGNATURE_KEYS`, plus free-form
            provenance (number of tiles, window, seed, ...).
    File format (:meth:`save`): a torch file readable with ``weights_only=True``:
    ``{"format": "fseg-concept-bank", "version": 1, "meta": {...}, "centres": {"8": tensor (8, C), ...}}``.
    """

    def __init__(self, centres: Dict[int, np.ndarray], meta: dict):
        self.centres = {int(k): np.asarray(v, np.float32) for k, v in centres.items()}
        self.meta = dict(meta)
        self.path = None

    @property
    def ks(self) -> List[int]:
        return sorted(self.centres)

    def save(self, path) -> None:
        from bundle.checkpoints import atomic_torch_save

        obj = {"format": BANK_FORMAT, "version": BANK_VERSION, "meta": self.meta,
               "centres": {str(k): torch.from_numpy(v) for k, v in self.centres.items()}}
        atomic_torch_save(obj, path)
        self.path = str(path)

    @classmethod
    def load(cls, path) -> "ConceptBank":
        """Raises FileNotFoundError / ValueError with one line naming the file."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: concept bank not found (fit it first with configs/fseg_bank.json)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: cannot read concept bank ({msg[:200]})") from None
        if not isinstance(obj, dict) or obj.get("format") != BANK_FORMAT or "centres" not in obj:
            raise ValueError(f"{path}: not an F-SEG concept bank (fit one with configs/fseg_bank.json)")
        bank = cls({int(k): v.numpy() for k, v in obj["centres"].items()}, obj.get("meta", {}))
        bank.path = path
        return bank

    def check(self, signature: dict) -> None:
        """Raise :class:`BankMismatchError` (one line) when ``signature`` differs from the bank's in any of
        :data:`SIGNATURE_KEYS` (``input_scale`` differing only logs a warning)."""
        diff = [k for k in SIGNATURE_KEYS if str(self.meta.get(k)) != str(signature.get(k))]
        if diff:
            what = ", ".join(f"{k}={self.meta.get(k)!r} vs {signature.get(k)!r}" for k in diff)
            raise BankMismatchError(f"{self.path or 'concept bank'}: fitted on other features than the configured "
                                    f"backbone ({what}); refit the bank with configs/fseg_bank.json for this "
                                    "backbone/weights")
        if "input_scale" in self.meta and float(self.meta["input_scale"]) != float(signature.get("input_scale", 1)):
            logger.warning(f"{self.path}: bank fitted at input_scale {self.meta['input_scale']}, "
                           f"used at {signature.get('input_scale')}")

    def get(self, k: int) -> np.ndarray:
        """(k, C) centres for one k. Raises ValueError (one line) if the bank has no such k."""
        if int(k) not in self.centres:
            raise ValueError(f"{self.path or 'concept bank'}: has k in {self.ks}, not {k}")
        return self.centres[int(k)]


# ----------------------------------------------------------------------------------------------
# runners
# ----------------------------------------------------------------------------------------------
def image_features(extractor: FeatureExtractor, rgb: np.ndarray) -> torch.Tensor:
    return extractor(rgb)[0]


class ConceptBankBuilder:
    """Fit a concept bank over a folder / datalist of tiles (``configs/fseg_bank.json``).

    Every image is passed through the extractor once; ``windows_per_image`` random windows of ``window`` px
    (``window / stride`` feature cells; tiles cut from the feature map, so each tile sees its neighbourhood as
    context) are global-average-pooled, plus the image's full-map average; K-Means for each k in ``ks``.

    Args:
        extractor: a :class:`FeatureExtractor`.  data: folder, datalist JSON or list of paths.
        bank_path: output ``.pt``; a JSON summary (``<bank_path>.json``) is written beside it.
        max_images: use at most this many images (random subset, ``seed``).
        tiles_per_slide, wsi: a whole-slide image in the data (:func:`bundle.wsi.is_wsi`) contributes the GAP
            features of ``tiles_per_slide`` random ``window``-px tiles over tissue at the level (or mpp) of ``wsi``
            (:class:`bundle.wsi.SlideOptions`; its ``backend``, ``level`` and ``mpp`` are used), as the reference's
            tile bank.
    """

    def __init__(self, extractor: FeatureExtractor, data, bank_path, ks: Sequence[int] = (8, 16, 32, 64),
                 window: int = 256, windows_per_image: int = 8, seed: int = 0, min_size: int = 32,
                 max_images: Optional[int] = None, n_init: int = 4, datalist_key: str = "training",
                 tiles_per_slide: int = 64, wsi=None):
        from bundle.wsi import SlideOptions

        self.extractor, self.data, self.bank_path = extractor, data, Path(bank_path)
        self.tiles_per_slide, self.wsi = int(tiles_per_slide), SlideOptions() if wsi is None else wsi
        self.ks, self.window, self.windows_per_image = [int(k) for k in ks], int(window), int(windows_per_image)
        self.seed, self.min_size, self.max_images, self.n_init = int(seed), int(min_size), max_images, int(n_init)
        self.datalist_key = datalist_key

    def collect(self) -> tuple:
        """-> ((N, C) GAP vectors, n_images used, skipped messages)."""
        from tqdm import tqdm

        items = datalist_items(self.data, self.datalist_key)
        rng = np.random.default_rng(self.seed)
        if self.max_images and len(items) > self.max_images:
            items = [items[i] for i in sorted(rng.choice(len(items), int(self.max_images), replace=False))]
        cells = max(1, int(round(self.window * self.extractor.input_scale / self.extractor.stride)))
        vecs, skipped, used = [], [], 0
        from bundle.wsi import is_wsi

        for it in tqdm(items, desc="F-SEG bank features", unit="img"):
            if is_wsi(it["image"]):
                try:
                    v = self.slide_vectors(it["image"], rng)
                except (ValueError, FileNotFoundError) as e:
                    logger.warning(f"skipped {e}")
                    skipped.append(str(e))
                    continue
                if len(v):
                    vecs.append(v)
                    used += 1
                continue
            rgb = read_rgb_or_skip(it["image"], skipped, self.min_size)
            if rgb is None:
                continue
            f = image_features(self.extractor, rgb)
            hs, ws = self.extractor.scaled_size(*rgb.shape[:2])
            valid = (math.ceil(hs / self.extractor.stride), math.ceil(ws / self.extractor.stride))
            v = [f[:, :valid[0], :valid[1]].mean(dim=(1, 2))[None]]
            if self.windows_per_image > 0:
                v.append(window_gap_features(f, cells, self.windows_per_image, rng, valid))
            vecs.append(torch.cat(v).cpu().numpy())
            used += 1
        if not vecs:
            raise ImageError(f"{self.data}: no image could be read for the concept bank ({len(skipped)} skipped)")
        return np.concatenate(vecs), used, skipped

    def slide_vectors(self, path, rng: np.random.Generator) -> np.ndarray:
        """(n, C) GAP features of up to ``tiles_per_slide`` random tissue tiles of ``window`` px of one slide."""
        from bundle.wsi import SlideTiles

        slide = SlideTiles(path, tile_size=self.window, margin=0, min_tissue=0.5, backend=self.wsi.backend,
                           level=self.wsi.level, mpp=self.wsi.mpp)
        try:
            corners = slide.core_tiles()
            if not corners:
                logger.warning(f"{path}: no tissue tile found for the concept bank")
                return np.zeros((0, self.extractor.channels), np.float32)
            pick = rng.choice(len(corners), min(self.tiles_per_slide, len(corners)), replace=False)
            out = []
            for i in sorted(pick):
                r, c = corners[i]
                h, w = min(self.window, slide.size[0] - r), min(self.window, slide.size[1] - c)
                rgb = slide.read(r, c, h, w)
                f = image_features(self.extractor, rgb)
                hs, ws = self.extractor.scaled_size(h, w)
                valid = (math.ceil(hs / self.extractor.stride), math.ceil(ws / self.extractor.stride))
                out.append(f[:, :valid[0], :valid[1]].mean(dim=(1, 2)).cpu().numpy())
            return np.stack(out)
        finally:
            slide.close()

    def run(self) -> ConceptBank:
        t0 = time.perf_counter()
        vecs, used, skipped = self.collect()
        centres = fit_kmeans_bank(vecs, self.ks, self.seed, self.n_init)
        meta = {**self.extractor.signature(), "ks": sorted(centres), "n_images": used, "n_vectors": int(len(vecs)),
                "window": self.window, "windows_per_image": self.windows_per_image, "seed": self.seed,
                "gap": "global average pool of the (padded-crop) feature map", "kmeans": "sklearn KMeans, Euclidean",
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        bank = ConceptBank(centres, meta)
        bank.save(self.bank_path)
        write_json(str(self.bank_path) + ".json", {**meta, "skipped": skipped, "seconds": time.perf_counter() - t0})
        logger.info(f"concept bank k={bank.ks} from {len(vecs)} tile features of {used} images -> {self.bank_path}")
        return bank
