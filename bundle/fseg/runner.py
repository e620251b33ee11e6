# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG over a folder, datalist or whole slide (``configs/fseg_infer.json``): label maps with ids consistent across
images, colour overlays, area fractions."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from bundle.fseg.bank import ConceptBank, image_features
from bundle.fseg.features import FeatureExtractor
from bundle.fseg.segmentation import Factorisation, area_fractions, colour_overlay, palette
from bundle.io import (
    item_name,
    ImageError,
    datalist_items,
    read_rgb_or_skip,
    write_csv,
    write_image,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = ["FSegRunner"]


class FSegRunner:
    """Segment a folder / datalist of tiles with a concept bank (``configs/fseg_infer.json``).

    Writes into ``output_dir``: ``labels/<tile>.png`` (centre id per pixel, uint8, or uint16 for k > 255; ids are
    consistent across images), ``overlays/<tile>.png`` (colour overlay), ``area_fractions.csv`` (one row per
    image: fraction of pixels per concept), ``palette.json`` (concept id -> RGB) and ``summary.json``.

    Args:
        extractor: :class:`FeatureExtractor` matching the bank (checked).  bank_path: concept bank file.
        k: which of the bank's k to use.  factor: :class:`bundle.fseg.segmentation.Factorisation` (variant A / B and
            their solver settings); default ``Factorisation()``.
        wsi: :class:`bundle.wsi.SlideOptions`: a whole-slide image in the data (:func:`bundle.wsi.is_wsi`) is
            streamed in ``wsi.tile``-px tiles (rounded to the feature stride) over tissue (``wsi_margin`` px of
            context) at ``wsi.level`` (or the level nearest ``wsi.mpp``); its label map is written at one pixel per
            feature cell (255 = no tissue, not analysed) and its area fractions are over the analysed tissue tiles.
            Default ``SlideOptions(tile=2048, min_tissue=0.05)``.
        min_size, write_overlays, overlay_alpha, datalist_key: inputs and outputs.
    """

    def __init__(self, extractor: FeatureExtractor, bank_path, data, output_dir, k: int = 16, factor=None,
                 wsi=None, wsi_margin: int = 128, min_size: int = 32, write_overlays: bool = True,
                 overlay_alpha: float = 0.45, datalist_key: str = "training"):
        from bundle.wsi import SlideOptions

        self.extractor, self.bank_path, self.data, self.output_dir = extractor, bank_path, data, Path(output_dir)
        self.k, self.factor = int(k), Factorisation() if factor is None else factor
        self.wsi = SlideOptions(tile=2048, min_tissue=0.05) if wsi is None else wsi
        self.wsi_margin, self.min_size = int(wsi_margin), int(min_size)
        self.write_overlays, self.overlay_alpha, self.datalist_key = write_overlays, overlay_alpha, datalist_key

    @property
    def variant(self) -> str:
        return self.factor.variant

    def load_bank(self) -> np.ndarray:
        bank = ConceptBank.load(self.bank_path)
        bank.check(self.extractor.signature())
        return bank.get(self.k)

    def segment_rgb(self, rgb: np.ndarray, centres: np.ndarray) -> dict:
        """One (H, W, 3) uint8 tile -> :func:`segment` result plus timings."""
        t0 = time.perf_counter()
        f = image_features(self.extractor, rgb)
        t1 = time.perf_counter()
        res = self.factor(f, centres, rgb.shape[:2], self.extractor)
        res["feature_s"], res["factor_s"] = t1 - t0, time.perf_counter() - t1
        return res

    def run_slide(self, path, centres: np.ndarray, name: str | None = None) -> dict:
        """Segment a whole-slide image tile by tile; writes its downsampled label map and overlay, returns its row."""
        from bundle.wsi import SlideTiles

        k = len(centres)
        f = max(1, int(round(self.extractor.stride / self.extractor.input_scale)))  # px per feature cell
        tile = max(f, self.wsi.tile // f * f)
        slide = SlideTiles(path, tile_size=tile, margin=self.wsi_margin // f * f, backend=self.wsi.backend,
                           level=self.wsi.level, mpp=self.wsi.mpp, min_tissue=self.wsi.min_tissue)
        t0 = time.perf_counter()
        try:
            H, W = slide.size
            hd, wd = -(-H // f), -(-W // f)
            none = 255 if k < 255 else 65535
            lab_ds = np.full((hd, wd), none, np.uint8 if k < 255 else np.uint16)
            thumb = np.full((hd, wd, 3), 255, np.uint8)
            counts = np.zeros(k, np.int64)
            n_tiles = 0
            for r, c, rgb in slide:
                oy, ox = slide.last_offset
                th, tw = min(tile, H - r), min(tile, W - c)
                lab = self.segment_rgb(rgb, centres)["labels"].cpu().numpy()[oy:oy + th, ox:ox + tw]
                counts += np.bincount(lab.ravel(), minlength=k)[:k]
                sub = lab[::f, ::f]
                lab_ds[r // f:r // f + sub.shape[0], c // f:c // f + sub.shape[1]] = sub
                thumb[r // f:r // f + sub.shape[0], c // f:c // f + sub.shape[1]] = rgb[oy:oy + th:f, ox:ox + tw:f]
                n_tiles += 1
            level, downsample = slide.level, slide.downsample
        finally:
            slide.close()
        stem = name or Path(path).stem
        write_image(self.output_dir / "labels" / f"{stem}.png", lab_ds)
        if self.write_overlays:
            tissue = lab_ds != none
            ov = thumb.copy()
            if tissue.any():
                ov = colour_overlay(thumb, np.where(tissue, lab_ds, 0).astype(np.int64), k, self.overlay_alpha)
                ov[~tissue] = thumb[~tissue]
            write_image(self.output_dir / "overlays" / f"{stem}.png", ov)
        fr = counts / max(1, counts.sum())
        row = {"image": stem, "height": H, "width": W, "feature_s": 0.0,
               "factor_s": round(time.perf_counter() - t0, 4), "wsi_level": level, "wsi_downsample": downsample,
               "tiles": n_tiles, "label_px": f}
        row.update({f"concept_{j:03d}": round(float(fr[j]), 6) for j in range(k)})
        if not n_tiles:
            logger.warning(f"{path}: no tissue tile found; empty label map written")
        return row

    def run(self) -> dict:
        """Process every input (see the class docstring) with ``output_dir`` locked to this run
        (:func:`bundle.runs.output_run`: a second run into it stops with one line; a killed run's temporaries and
        old summaries are cleared first). Returns the folder summary."""
        from bundle.runs import output_run

        with output_run(self.output_dir):
            return self._run()

    def _run(self) -> dict:
        from tqdm import tqdm

        centres = self.load_bank()  # a wrong bank stops before any image is read
        items = datalist_items(self.data, self.datalist_key)
        k = len(centres)
        rows, skipped = [], []
        from bundle.wsi import is_wsi

        for it in tqdm(items, desc=f"F-SEG variant {self.variant}", unit="img"):
            path = it["image"]
            if is_wsi(path):
                try:
                    rows.append(self.run_slide(path, centres, item_name(it)))
                except (ValueError, FileNotFoundError) as e:
                    logger.warning(f"skipped {e}")
                    skipped.append(str(e))
                continue
            rgb = read_rgb_or_skip(path, skipped, self.min_size)
            if rgb is None:
                continue
            stem = item_name(it)
            res = self.segment_rgb(rgb, centres)
            labels = res["labels"].cpu().numpy()
            write_image(self.output_dir / "labels" / f"{stem}.png", labels.astype(np.uint8 if k <= 256 else np.uint16))
            if self.write_overlays:
                write_image(self.output_dir / "overlays" / f"{stem}.png",
                            colour_overlay(rgb, labels, k, self.overlay_alpha))
            fr = area_fractions(labels, k)
            row = {"image": stem, "height": rgb.shape[0], "width": rgb.shape[1],
                   "feature_s": round(res["feature_s"], 4), "factor_s": round(res["factor_s"], 4)}
            row.update({f"concept_{j:03d}": round(float(fr[j]), 6) for j in range(k)})
            rows.append(row)
        if not rows:
            raise ImageError(f"{self.data}: no image could be segmented ({len(skipped)} skipped)")
        write_csv(self.output_dir / "area_fractions.csv", rows)
        write_json(self.output_dir / "palette.json", {str(j): c.tolist() for j, c in enumerate(palette(k))})
        summary = {"n_images": len(rows), "n_skipped": len(skipped), "skipped": skipped, "k": k,
                   "variant": self.variant, "bank": str(self.bank_path), **self.extractor.signature(),
                   "feature_s": float(np.mean([r["feature_s"] for r in rows])),
                   "factor_s": float(np.mean([r["factor_s"] for r in rows]))}
        write_json(self.output_dir / "summary.json", summary)
        if skipped:
            logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
        logger.info(f"F-SEG {self.variant} k={k}: {len(rows)} label maps -> {self.output_dir}")
        return summary
