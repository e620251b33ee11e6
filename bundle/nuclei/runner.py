# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The nuclei runner of ``configs/inference.json``: tiles, folders, datalists or whole slides -> instance maps, points,
GeoJSON, overlays and a summary, each image through a predictor and a post-processing step. A bad file is reported
in one line and skipped; outputs are written atomically."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from bundle.io import (
    item_name,
    overlay_mask,
    read_rgb,
    remove_stale_parts,
    streamed_outputs,
    write_csv,
    write_image,
)
from bundle.runs import POINT_FIELDS, run_items, write_summary

logger = logging.getLogger(__name__)

__all__ = ["NucleiRunner"]


class NucleiRunner:
    """Nuclei instances, points and outlines for a folder, a datalist, single images or whole slides.

    Per image ``<stem>`` it writes into ``output_dir``: ``labels/<stem>.png`` (uint16 instance map, or ``.tif``
    with ``label_format="tif"``), ``points/<stem>.csv`` (image, x, y, class, score; x = column, y = row, in
    level-0 pixels for slides), ``geojson/<stem>.geojson`` (QuPath-importable nucleus polygons) and
    ``overlays/<stem>.png`` (outlines in green); then ``summary.csv`` / ``summary.json`` (counts, seconds and,
    when a datalist gives ``label`` instance maps, pixel F1 / IoU, object Dice, AJI, AJI+, PQ). A whole slide
    (:func:`bundle.wsi.is_wsi`) is streamed tile by tile over tissue (:class:`bundle.wsi.SlideTiles`); it gets
    points, GeoJSON and a thumbnail overlay but no full-resolution label map. A slide without tissue gives empty
    outputs and a warning.

    Args:
        network: per-pixel classifier (2-channel background/nucleus or 3-channel background/interior/boundary).
        data: a folder, one image or slide, a datalist JSON (``datalist_key``, else ``training``) or a list.
        ckpt_path: weights to load (one-line error when missing or mismatched).  device: torch device.
        predictor: :class:`bundle.inferers.TilePredictor` (sliding window, flip TTA, resizing to the network's
            pixel size); default ``TilePredictor()``.
        postprocess: :class:`bundle.nuclei.detection.NucleiPostprocess` (haematoxylin blend, instances); default
            ``NucleiPostprocess()``.
        wsi: :class:`bundle.wsi.SlideOptions` for whole slides; default ``SlideOptions()`` (every tile that touches
            tissue is predicted: ``min_tissue`` 0.001; at 0.05 the thin strips of tissue that a tile grid cuts off at
            the tissue's edges were never predicted).
        label_format, write_overlays, write_masks, class_name: outputs (``write_masks`` also writes
            ``masks/<stem>.png``, the 0/255 pseudo-mask format of the training configs, so a trained network can
            teach a self-training round; ``class_name`` names the objects in the points CSV and GeoJSON).
    """

    def __init__(self, network, data, output_dir, ckpt_path=None, device="cpu", predictor=None, postprocess=None,
                 wsi=None, label_format: str = "png", write_overlays: bool = True, write_masks: bool = False,
                 datalist_key: str = "testing", class_name: str = "Nucleus"):
        from bundle.inferers import TilePredictor
        from bundle.nuclei.detection import NucleiPostprocess
        from bundle.wsi import SlideOptions

        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.predictor = TilePredictor() if predictor is None else predictor
        self.postprocess = NucleiPostprocess() if postprocess is None else postprocess
        self.wsi = SlideOptions() if wsi is None else wsi
        self.label_format, self.write_overlays, self.datalist_key = label_format, write_overlays, datalist_key
        self.class_name, self.write_masks = class_name, write_masks

    @property
    def resample(self) -> float:
        """The factor tiles are resized by before the network (:attr:`bundle.inferers.TilePredictor.resample`)."""
        return self.predictor.resample

    def items(self) -> list:
        """A list, one image or slide file, a datalist JSON (``datalist_key``, else ``training``), or a folder
        (its images plus any slide files): :func:`bundle.wsi.input_items`."""
        from bundle.wsi import input_items

        return input_items(self.data, self.datalist_key)

    def predict(self, rgb: np.ndarray, hematoxylin_threshold: float | None = None):
        """(H, W, 3) uint8 -> (instances (H, W) int32, probabilities (C, H, W)); ``hematoxylin_threshold``: see
        :func:`bundle.inferers.predict_probability` (a slide's, for its tiles)."""
        prob = self.predictor(self.network, rgb, self.device, hematoxylin_threshold)
        return self.postprocess(prob, rgb, hematoxylin_threshold)

    def _rows(self, stem, inst, prob):
        from scipy import ndimage as ndi

        from bundle.nuclei.detection import instance_points

        n = int(inst.max())
        cen = instance_points(inst)
        score = ndi.mean(1.0 - prob[0], inst, np.arange(1, n + 1)) if n else []
        return [{"image": stem, "x": round(c, 2), "y": round(r, 2), "class": self.class_name,
                 "score": round(float(s), 4)} for (r, c), s in zip(cen, score)]

    def _geojson_properties(self, rows) -> list:
        return [{"classification": {"name": self.class_name}, "measurements": {"score": r["score"]}} for r in rows]

    def _write_points(self, stem, rows, polys):
        from bundle.io import write_geojson

        write_csv(self.output_dir / "points" / f"{stem}.csv", rows, fieldnames=POINT_FIELDS)
        write_geojson(self.output_dir / "geojson" / f"{stem}.geojson", polys, self._geojson_properties(rows))

    def run_image(self, item) -> dict:
        from bundle.annotations import read_instance_label
        from bundle.metrics import instance_scores

        path = item["image"]
        rgb = read_rgb(path, min_size=32)
        t0 = time.perf_counter()
        inst, prob = self.predict(rgb)
        row = self.write_outputs(item_name(item), rgb, inst, prob, time.perf_counter() - t0)
        if item.get("label"):
            row.update(instance_scores(inst, read_instance_label(item["label"])))
        return row

    def write_outputs(self, stem: str, rgb: np.ndarray, inst: np.ndarray, prob: np.ndarray, seconds: float) -> dict:
        """The files of one tile (instance map, points CSV, GeoJSON, overlay, optional mask) -> its summary row.
        Also used by the MONAI Deploy application (:mod:`bundle.deploy`) on tiles it got as arrays."""
        from bundle.annotations import write_instance_label
        from bundle.nuclei.postprocess import instance_polygons

        suffix = ".tif" if self.label_format in ("tif", "tiff") else ".png"
        write_instance_label(self.output_dir / "labels" / f"{stem}{suffix}", inst)
        rows = self._rows(stem, inst, prob)
        polys = instance_polygons(inst)
        self._write_points(stem, rows, [polys[i] for i in sorted(polys)])
        if self.write_overlays:
            write_image(self.output_dir / "overlays" / f"{stem}.png", overlay_mask(rgb, inst))
        if self.write_masks:  # 0/255 foreground, the pseudo-mask format: lets a trained network teach a new round
            write_image(self.output_dir / "masks" / f"{stem}.png", (inst > 0).astype(np.uint8) * 255)
        return {"image": stem, "n_nuclei": int(inst.max()), "seconds": seconds, "height": rgb.shape[0],
                "width": rgb.shape[1]}

    def run_slide(self, item) -> dict:
        path = item["image"]
        stem = item_name(item)
        outputs = (self.output_dir / "points" / f"{stem}.csv", self.output_dir / "geojson" / f"{stem}.geojson")
        for out in outputs:  # a killed earlier run of this slide leaves its (hours-long) temporaries behind
            remove_stale_parts(out)
        slide = self.wsi.open(path, margin=64)
        slide.check_mpp(0.25 / self.predictor.size_scale)
        try:
            return self._run_slide(slide, stem, outputs)
        finally:
            slide.close()

    def _run_slide(self, slide, stem: str, outputs) -> dict:
        from bundle.inferers import input_channels
        from bundle.nuclei.postprocess import instance_polygons

        path = slide.path
        t0 = time.perf_counter()
        centres, n_tiles, n_nuclei = [], 0, 0  # centres: one small (k, 2) array per tile, for the overview only
        tiles = slide.core_tiles()
        if not tiles:
            logger.warning(f"{path}: no tissue found; writing empty outputs")
        h_threshold = None
        if tiles and (input_channels(self.network) == 4 or self.postprocess.hematoxylin_prior > 0):  # one per slide
            h_threshold = slide.hematoxylin_threshold() or None  # flat slide: each tile's own threshold
            logger.info(f"{path}: slide haematoxylin OD threshold {h_threshold}")
        from tqdm import tqdm

        # points and polygons go to disk tile by tile: memory does not grow with the number of nuclei
        with streamed_outputs(outputs[0], POINT_FIELDS, outputs[1]) as add:
            for r, c, rgb in tqdm(slide, total=len(tiles), desc=f"{stem} tiles", unit="tile", leave=False):
                n_tiles += 1
                inst, prob = self.predict(rgb, h_threshold)
                off_r, off_c = slide.last_offset
                core_h, core_w = min(slide.tile_size, slide.size[0] - r), min(slide.tile_size, slide.size[1] - c)
                tile_polys = instance_polygons(inst)
                rows, polys = [], []
                for i, row in enumerate(self._rows(stem, inst, prob), start=1):  # nuclei centred in the core tile
                    y, x = row["y"] - off_r, row["x"] - off_c
                    if not (0 <= y < core_h and 0 <= x < core_w) or i not in tile_polys:
                        continue
                    row["x"] = round((x + c) * slide.downsample, 2)
                    row["y"] = round((y + r) * slide.downsample, 2)
                    rows.append(row)
                    polys.append((tile_polys[i] + np.array([c - off_c, r - off_r])) * slide.downsample)
                add(rows, polys, self._geojson_properties(rows))
                n_nuclei += len(rows)
                if self.write_overlays:
                    centres.append(np.array([(row["y"], row["x"]) for row in rows], np.float64).reshape(-1, 2))
        if self.write_overlays:
            thumb = slide.thumbnail(max_side=2048).copy()
            s = thumb.shape[0] / slide.level_sizes[0][0]
            for y, x in (np.concatenate(centres) * s).astype(int) if centres else ():
                thumb[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = (0, 255, 0)
            write_image(self.output_dir / "overlays" / f"{stem}.png", thumb)
        return {"image": stem, "n_nuclei": n_nuclei, "seconds": time.perf_counter() - t0, "tiles": n_tiles,
                "height": slide.level_sizes[0][0], "width": slide.level_sizes[0][1]}

    def prepare(self) -> "NucleiRunner":
        """Load ``ckpt_path`` into the network (one-line error when missing or mismatched) and set it to eval."""
        from bundle.checkpoints import load_network_weights

        if self.ckpt_path:
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()
        return self

    def run(self) -> dict:
        """Process every input (see the class docstring) with ``output_dir`` locked to this run
        (:func:`bundle.runs.output_run`: a second run into it stops with one line; a killed run's temporaries and
        old summaries are cleared first). Returns the folder summary."""
        from bundle.runs import output_run

        with output_run(self.output_dir):
            return self._run()

    def _run(self) -> dict:
        from bundle.wsi import is_wsi

        items = self.items()
        self.prepare()
        rows, skipped = run_items(items, lambda it: self.run_slide(it) if is_wsi(it["image"]) else self.run_image(it),
                                  "nuclei")
        summary = write_summary(self.output_dir, rows, skipped, self.data, csv_name="summary.csv")
        logger.info(f"wrote nuclei of {len(rows)} image(s) to {self.output_dir}")
        return summary
