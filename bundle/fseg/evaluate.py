# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG against ground-truth tissue masks (``configs/fseg_evaluate.json``): matching, normalised matching and a
linear probe over pooled contingency tables; labels are used only to score."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from bundle.fseg.bank import ConceptBank, image_features
from bundle.fseg.features import FeatureExtractor
from bundle.fseg.segmentation import VARIANTS, Factorisation
from bundle.io import (
    ImageError,
    datalist_items,
    read_rgb,
    write_csv,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = ["read_class_mask", "probe_samples", "linear_probe", "label_items", "FSegEvaluator"]


def read_class_mask(path, shape: Optional[tuple] = None) -> np.ndarray:
    """Read a semantic mask (class index per pixel: palette 'P', 8/16-bit grey, or RGB with equal channels).

    Returns (H, W) int64. Raises :class:`ImageError` (one line naming the file) for unreadable files, colour masks
    and a size differing from ``shape``.
    """
    from PIL import Image

    path = str(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: mask file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{path}: cannot read mask ({msg})") from None
    if arr.ndim == 3:
        if arr.shape[-1] >= 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            arr = arr[..., 0]
        else:
            raise ImageError(f"{path}: mask is a colour image {arr.shape}; need one class index per pixel")
    if arr.ndim != 2:
        raise ImageError(f"{path}: mask has unsupported shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        raise ImageError(f"{path}: mask is {arr.shape[0]}x{arr.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return arr.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def probe_samples(concepts: np.ndarray, components: np.ndarray, gt: np.ndarray, n_classes: int,
                  threshold: float = 0.5, ignore_index: Optional[int] = None):
    """Training pairs of the paper's linear probe for one image: concept m gets class n when more than
    ``threshold`` of its pixels are GT class n.

    Args:
        concepts: (n, C) concept features.  components: (H, W) component ids in 0..n-1.  gt: (H, W) class ids.
    Returns:
        (X (m, C), y (m,)) for the concepts that pass the threshold.
    """
    comp = components.ravel()
    g = gt.ravel()
    keep = (g >= 0) & (g < n_classes)
    if ignore_index is not None:
        keep &= g != ignore_index
    n = concepts.shape[0]
    counts = np.bincount(comp[keep] * n_classes + g[keep], minlength=n * n_classes).reshape(n, n_classes)
    tot = counts.sum(1)
    frac = counts / np.maximum(tot, 1)[:, None]
    ok = (tot > 0) & (frac.max(1) > threshold)
    return concepts[ok], frac.argmax(1)[ok]


def linear_probe(records: Sequence[dict], n_classes: int, folds: int = 5, threshold: float = 0.5, seed: int = 0,
                 ignore_index: Optional[int] = None) -> np.ndarray:
    """The paper's linear probing with image-level cross-validation.

    For each fold, a logistic regression (standardised inputs) is trained on the concept features of the other
    images' concepts that pass :func:`probe_samples`; each held-out image's concepts are classified, and every
    pixel gets the class of its component.

    Args:
        records: per image ``{"concepts": (n, C), "components": (H, W), "gt": (H, W)}`` (numpy).
    Returns:
        (n_classes, n_classes) pixel confusion counts, rows = predicted class, columns = GT class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bundle.metrics import confusion_counts

    n = len(records)
    folds = max(2, min(int(folds), n))
    order = np.random.default_rng(seed).permutation(n)
    fold_of = np.empty(n, int)
    fold_of[order] = np.arange(n) % folds
    samples = [probe_samples(r["concepts"], r["components"], r["gt"], n_classes, threshold, ignore_index)
               for r in records]
    conf = np.zeros((n_classes, n_classes), np.int64)
    for f in range(folds):
        tr = [i for i in range(n) if fold_of[i] != f]
        Xtr = np.concatenate([samples[i][0] for i in tr]) if tr else np.zeros((0, 1))
        ytr = np.concatenate([samples[i][1] for i in tr]) if tr else np.zeros(0, int)
        clf = None
        if len(np.unique(ytr)) >= 2:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
            clf.fit(Xtr, ytr)
        const = int(np.bincount(ytr, minlength=n_classes).argmax()) if len(ytr) else 0
        for i in (i for i in range(n) if fold_of[i] == f):
            r = records[i]
            cls = clf.predict(r["concepts"]) if clf is not None else np.full(len(r["concepts"]), const)
            pred = np.asarray(cls, np.int64)[r["components"]]
            conf += confusion_counts(pred, r["gt"], n_classes, n_classes, ignore_index)
    return conf


def label_items(data, label_dir=None, key: str = "training") -> list:
    """Items with a ``label`` mask path: from the datalist, or ``label_dir/<image stem>.*`` when given."""
    items = datalist_items(data, key)
    if label_dir:
        masks = {}
        for p in sorted(Path(label_dir).iterdir()) if Path(label_dir).is_dir() else []:
            masks.setdefault(p.stem, str(p))
        if not masks:
            raise ImageError(f"{label_dir}: label folder does not exist or is empty")
        items = [{**it, "label": masks.get(Path(it["image"]).stem)} for it in items]
    return items


class FSegEvaluator:
    """Score F-SEG against ground-truth masks (``configs/fseg_evaluate.json``); labels are used only for scoring.

    Every image is passed through the extractor once; for each ``variant`` x ``k`` the label maps are pooled into
    one (k x n_classes) contingency table over all images, then

    * matching (``match``): each concept -> the GT class with the most pixels in it;
    * normalised matching (``match_norm``): the same after dividing each class's counts by its total pixels;
    * linear probe (``probe``): :func:`linear_probe` with ``probe_folds``-fold cross-validation over images.

    Writes ``evaluation.json`` (all scores, concept -> class maps) and ``per_class.csv`` into ``output_dir``.

    Args:
        label_dir: folder of masks named like the images (or give ``label`` entries in a datalist).
        class_names: names of GT classes 0..n-1; other values (e.g. 255) are ignored.
        factor: :class:`bundle.fseg.segmentation.Factorisation` (solver settings; each of ``variants`` is scored).
        probe_folds, probe_threshold: of :func:`linear_probe` (seeded by ``factor.seed``).
    """

    def __init__(self, extractor: FeatureExtractor, bank_path, data, output_dir, label_dir=None,
                 ks: Sequence[int] = (16,), variants: Sequence[str] = ("A", "B"),
                 class_names: Sequence[str] = ("tumour", "stroma", "normal", "background"), factor=None,
                 probe_folds: int = 5, probe_threshold: float = 0.5, min_size: int = 32,
                 datalist_key: str = "training"):
        self.extractor, self.bank_path, self.data, self.output_dir = extractor, bank_path, data, Path(output_dir)
        self.label_dir, self.ks = label_dir, [int(k) for k in ks]
        self.variants = [str(v).upper() for v in variants]
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown F-SEG variant {v!r}; use 'A' or 'B'")
        self.class_names = list(class_names)
        self.factor = Factorisation() if factor is None else factor
        self.probe_folds, self.probe_threshold, self.seed = int(probe_folds), float(probe_threshold), self.factor.seed
        self.min_size, self.datalist_key = int(min_size), datalist_key

    def load(self) -> tuple:
        """-> (list of (stem, rgb, gt) for the usable pairs, skipped messages)."""
        pairs, skipped = [], []
        for it in label_items(self.data, self.label_dir, self.datalist_key):
            try:
                if not it.get("label"):
                    raise ImageError(f"{it['image']}: no ground-truth mask for this image")
                rgb = read_rgb(it["image"], min_size=self.min_size)
                gt = read_class_mask(it["label"], rgb.shape)
            except ImageError as e:
                logger.warning(f"skipped {e}")
                skipped.append(str(e))
                continue
            pairs.append((Path(it["image"]).stem, rgb, gt))
        if not pairs:
            raise ImageError(f"{self.data}: no image with a usable mask ({skipped[0] if skipped else 'empty'})")
        return pairs, skipped

    def evaluate_pairs(self, pairs, banks: Dict[int, np.ndarray], variants=None, features=None) -> dict:
        """Scores for every variant x k on (stem, rgb, gt) ``pairs`` given ``{k: centres}``.

        ``features``: optional precomputed list of (C, h, w) tensors (one per pair) to reuse across calls.
        Returns ``{"B_k16": {"match": {...}, "match_norm": {...}, "probe": {...}, "seconds": ...}, ...}``.
        """
        from bundle.metrics import confusion_counts, matching_scores, semantic_scores

        nc = len(self.class_names)
        variants = variants or self.variants
        feats = features if features is not None else [image_features(self.extractor, rgb) for _, rgb, _ in pairs]
        out = {}
        for v in variants:
            for k, centres in banks.items():
                t0 = time.perf_counter()
                counts = np.zeros((k, nc), np.int64)
                records = []
                for (stem, rgb, gt), f in zip(pairs, feats):
                    res = self.factor(f, centres, rgb.shape[:2], self.extractor, variant=v)
                    lab = res["labels"].cpu().numpy()
                    counts += confusion_counts(lab, gt, k, nc)
                    records.append({"concepts": res["concepts"].cpu().numpy(),
                                    "components": res["components"].cpu().numpy(), "gt": gt})
                probe_conf = linear_probe(records, nc, self.probe_folds, self.probe_threshold, self.seed)
                out[f"{v}_k{k}"] = {
                    "variant": v, "k": k,
                    "match": matching_scores(counts, self.class_names, normalize=False),
                    "match_norm": matching_scores(counts, self.class_names, normalize=True),
                    "probe": semantic_scores(probe_conf, self.class_names),
                    "seconds": time.perf_counter() - t0,
                }
        return out

    def run(self) -> dict:
        bank = ConceptBank.load(self.bank_path)
        bank.check(self.extractor.signature())
        banks = {k: bank.get(k) for k in self.ks}
        pairs, skipped = self.load()
        res = self.evaluate_pairs(pairs, banks)
        rows = []
        for name, r in res.items():
            for mode in ("match", "match_norm", "probe"):
                s = r[mode]
                row = {"setting": name, "variant": r["variant"], "k": r["k"], "evaluation": mode,
                       "miou": s["miou"], "mean_f1": s["mean_f1"], "pixel_accuracy": s["pixel_accuracy"]}
                for c in self.class_names:
                    row[f"iou_{c}"] = s["iou"][c]
                    row[f"f1_{c}"] = s["f1"][c]
                rows.append(row)
        write_csv(self.output_dir / "per_class.csv", rows)
        summary = {"n_images": len(pairs), "n_skipped": len(skipped), "skipped": skipped,
                   "class_names": self.class_names, "bank": str(self.bank_path), **self.extractor.signature(),
                   "results": res}
        write_json(self.output_dir / "evaluation.json", summary)
        for name, r in res.items():
            logger.info(f"{name}: mIoU match {r['match']['miou']:.3f}, normalised {r['match_norm']['miou']:.3f}, "
                        f"probe {r['probe']['miou']:.3f}")
        return summary
