# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Score instance maps against ground-truth instance maps with the same stems (``configs/evaluate.json``):
``metrics.csv`` / ``metrics.json`` with pixel F1, object Dice, AJI, AJI+ and PQ."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bundle.io import (
    ImageError,
    write_csv,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = ["EvaluateRunner"]


class EvaluateRunner:
    """Score instance maps against a folder of ground-truth instance maps (matched by file stem).

    Writes ``metrics.csv`` (per image: pixel F1 / IoU / precision / recall, object Dice, AJI, AJI+, PQ, DQ, SQ)
    and ``metrics.json`` (means and the settings) into ``output_dir``. Images without a matching GT are listed.
    """

    def __init__(self, pred_dir, gt_dir, output_dir, crop: int | None = None):
        self.pred_dir, self.gt_dir, self.output_dir, self.crop = Path(pred_dir), Path(gt_dir), Path(output_dir), crop

    def run(self) -> dict:
        from bundle.annotations import read_instance_label
        from bundle.metrics import instance_scores

        for d, what in ((self.pred_dir, "prediction"), (self.gt_dir, "ground-truth")):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: {what} folder not found")
        gts = {p.stem: p for p in sorted(self.gt_dir.iterdir()) if p.suffix.lower() in (".png", ".tif", ".tiff")}
        if not gts:
            raise ImageError(f"{self.gt_dir}: no ground-truth label maps (.png/.tif)")
        rows, missing = [], []
        for stem, g in gts.items():
            cand = [self.pred_dir / f"{stem}{s}" for s in (".png", ".tif", ".tiff")]
            pred = next((c for c in cand if c.is_file()), None)
            if pred is None:
                missing.append(stem)
                continue
            p, t = read_instance_label(pred), read_instance_label(g)
            if p.shape != t.shape:
                raise ValueError(f"{pred}: shape {p.shape} differs from ground truth {g} {t.shape}")
            if self.crop:
                h, w = t.shape
                r0, c0 = max(0, (h - self.crop) // 2), max(0, (w - self.crop) // 2)
                p, t = p[r0: r0 + self.crop, c0: c0 + self.crop], t[r0: r0 + self.crop, c0: c0 + self.crop]
            rows.append({"image": stem, **instance_scores(p, t)})
        if not rows:
            raise ImageError(f"{self.pred_dir}: no prediction matches a ground-truth file of {self.gt_dir}")
        write_csv(self.output_dir / "metrics.csv", rows)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
        out = {"mean": mean, "n_images": len(rows), "missing_predictions": missing,
               "protocol": f"centre {self.crop}x{self.crop} crop" if self.crop else "full images",
               "pred_dir": str(self.pred_dir), "gt_dir": str(self.gt_dir)}
        write_json(self.output_dir / "metrics.json", out)
        logger.info("evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
        return out
