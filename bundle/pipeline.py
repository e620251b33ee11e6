# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Folder runners: the parts of a workflow that walk a folder of tiles and write per-image files.

:class:`PseudoMaskRunner` — tiles -> PSM map, pseudo mask (0/255 PNG) and overlay per image, plus metrics when
labels are listed. A bad file is reported in one line and skipped; outputs are written atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from .io import ImageError, load_datalist, read_rgb, write_csv, write_image, write_json

logger = logging.getLogger(__name__)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """(H, W, 3) uint8 image with the boundaries of ``mask`` (bool or labels) drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    out[find_boundaries(mask, mode="inner")] = colour
    return out


def score_pseudo_mask(mask: np.ndarray, gt_inst: np.ndarray) -> dict:
    """Pixel scores of a binary mask and instance scores of its connected components against a GT instance map."""
    from skimage.measure import label

    from .metrics import instance_scores

    return instance_scores(label(mask, connectivity=1), gt_inst)


class PseudoMaskRunner:
    """PSM -> SCM over a folder or datalist.

    Args:
        network: the activation network.  inferer: :class:`bundle.psm.PSMInferer`.  scm: :class:`bundle.clustering.SCM`.
        data: a folder of tiles, one tile, a datalist JSON (items may carry ``label`` instance maps for scoring),
            or a list of ``{"image": path}`` dicts.
        output_dir: gets ``psm/``, ``masks/``, ``overlays/`` (PNG per image), ``metrics.csv`` and ``summary.json``.
        ckpt_path: weights to load; ``None`` runs the network as it is (e.g. random init, for ablations).
        device: torch device.  min_size: smallest accepted tile side.
    """

    def __init__(self, network, inferer, scm, data, output_dir, ckpt_path=None, device="cpu", min_size: int = 32,
                 datalist_key: str = "training", write_overlays: bool = True):
        self.network, self.inferer, self.scm = network, inferer, scm
        self.data, self.output_dir = data, Path(output_dir)
        self.ckpt_path, self.device, self.min_size = ckpt_path, torch.device(device), min_size
        self.datalist_key, self.write_overlays = datalist_key, write_overlays

    def items(self) -> list:
        if isinstance(self.data, (list, tuple)):
            return [d if isinstance(d, dict) else {"image": d} for d in self.data]
        return load_datalist(self.data, self.datalist_key)

    def run(self) -> dict:
        from tqdm import tqdm

        from .annotations import read_instance_label
        from .handlers import load_network_weights

        items = self.items()
        if self.ckpt_path:
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()
        rows, skipped = [], []
        for it in tqdm(items, desc="PSM -> pseudo masks", unit="img"):
            path = it["image"]
            try:
                rgb = read_rgb(path, min_size=self.min_size)
            except ImageError as e:
                logger.warning(f"skipped {e}")
                skipped.append(str(e))
                continue
            stem = Path(path).stem
            t0 = time.perf_counter()
            x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].float().to(self.device)
            psm = self.inferer(x, self.network)[0, 0].cpu().numpy()
            t1 = time.perf_counter()
            mask = self.scm(rgb, psm)
            t2 = time.perf_counter()
            write_image(self.output_dir / "psm" / f"{stem}.png", (psm * 255 + 0.5).astype(np.uint8))
            write_image(self.output_dir / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
            if self.write_overlays:
                write_image(self.output_dir / "overlays" / f"{stem}.png", overlay_mask(rgb, mask))
            row = {"image": stem, "foreground_fraction": float(mask.mean()), "psm_s": t1 - t0, "scm_s": t2 - t1}
            if it.get("label"):
                row.update(score_pseudo_mask(mask, read_instance_label(it["label"])))
            rows.append(row)
        if not rows:
            raise ImageError(f"{self.data}: no image could be processed ({len(skipped)} skipped)")
        write_csv(self.output_dir / "metrics.csv", rows)
        numeric = [k for k in rows[0] if k != "image"]
        summary = {k: float(np.mean([r[k] for r in rows if k in r])) for k in numeric}
        summary.update({"n_images": len(rows), "n_skipped": len(skipped), "skipped": skipped})
        write_json(self.output_dir / "summary.json", summary)
        if skipped:
            logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
        logger.info(f"wrote {len(rows)} pseudo masks to {self.output_dir} (PSM {summary['psm_s']:.2f} s/img, "
                    f"SCM {summary['scm_s']:.2f} s/img)")
        return summary
