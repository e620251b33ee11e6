# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The nuclei runner of ``configs/inference.json``: tiles, folders, datalists or whole slides -> instance maps, points,
GeoJSON, overlays and a summary, each image through a predictor and a post-processing step. A bad file is reported
in one line and skipped; outputs are written atomically."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from bundle.io import (
    image_size,
    item_name,
    overlay_mask,
    read_rgb,
    remove_stale_parts,
    streamed_outputs,
    write_csv,
    write_image,
    write_parquet,
)
from bundle.runs import POINT_FIELDS, run_items, write_summary
from bundle.scale import NUCLEI_DEAD_ZONE

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
    points, GeoJSON, measurements and a thumbnail overlay but no full-resolution label map. A slide without tissue
    gives empty outputs and a warning; with :attr:`auto_scale`, a slide gets one scale from four tissue windows
    (:meth:`slide_scale`).

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
        label_format, write_overlays, write_masks, class_name, class_colour: outputs (``write_masks`` also writes
            ``masks/<stem>.png``, the 0/255 pseudo-mask format of the training configs, so a trained network can
            teach a self-training round; ``class_name`` / ``class_colour`` (RGB) name and colour the objects in the
            points CSV and GeoJSON).
        write_measurements: per tile also ``measurements/<stem>.csv``, one row per nucleus with an ``id`` equal to
            its label in the instance map and its GeoJSON feature id: centroid, area, perimeter, equivalent diameter
            (px and um at :attr:`mpp`), eccentricity, solidity, orientation, mean and integrated haematoxylin and
            eosin OD (:func:`bundle.measure.nucleus_measurements`), score, class; the GeoJSON features carry the same
            measurements under QuPath's names. Slides and big tiles get it too, streamed window by window, with
            centroids in level-0 pixels (CSV only: no Parquet).
        auto_scale: tiles of unknown magnification (no ``mpp`` given): each tile's nucleus size is estimated
            (:meth:`image_scale`) and the tile is resized to the network's pixel size and post-processed with px
            sizes to match, as if its own ``--mpp`` had been given; the summary row adds ``nucleus_diameter_px`` and
            ``scale_factor`` (1 = 40x, 0.5 = 20x). ``scale_dead_zone``: diameter ratios inside it count as the
            network's own magnification (:data:`bundle.scale.NUCLEI_DEAD_ZONE`, chosen on MoNuSeg train).
            ``trained_diameter``: the nucleus diameter (px) the network learnt on (its ``settings.json``; None =
            :data:`bundle.scale.REFERENCE_DIAMETER` at 40x).
        write_report: also ``report.html``, a self-contained report of the run (:func:`bundle.report.write_report`).
        big_tile_px: a plain image (PNG, JPEG, TIFF...) with more pixels than this is not read whole but processed in
            windows of ``wsi.tile`` px as a slide is (a non-TIFF one first copied, strip by strip, into a temporary
            tiled TIFF: :func:`bundle.io.tiled_tiff_copy`), so memory stays bounded whatever its size; it gets the
            same files as a tile, its label map as a tiled TIFF (``labels/<stem>.tif``, :class:`LabelCanvas
            <bundle.annotations.LabelCanvas>`) and a thumbnail overlay. Default 2048 x 2048 (4.2 megapixels).
        backend: the engine that runs the network (:func:`bundle.backends.inference_network`): ``"pytorch"``
            (default), ``"torchscript"``, ``"onnxruntime"`` or ``"openvino"`` (CPU; extras ``[onnx]`` / ``[openvino]``;
            the checkpoint's ONNX export beside it, made once when missing, else under ``<output_dir>/.cache``).
    """

    def __init__(self, network, data, output_dir, ckpt_path=None, device="cpu", predictor=None, postprocess=None,
                 wsi=None, label_format: str = "png", write_overlays: bool = True, write_masks: bool = False,
                 datalist_key: str = "testing", class_name: str = "Nucleus", write_measurements: bool = True,
                 class_colour=(0, 200, 0), auto_scale: bool = False, scale_dead_zone=NUCLEI_DEAD_ZONE,
                 trained_diameter: float | None = None, write_report: bool = True, big_tile_px: int = 2048 * 2048,
                 backend: str = "pytorch"):
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
        self.write_measurements, self.class_colour = bool(write_measurements), tuple(int(c) for c in class_colour)
        self.auto_scale, self.scale_dead_zone = bool(auto_scale), tuple(float(v) for v in scale_dead_zone)
        self.trained_diameter = None if trained_diameter is None else float(trained_diameter)
        self.write_report = bool(write_report)
        self.big_tile_px = int(big_tile_px)
        self.backend = str(backend)

    @property
    def resample(self) -> float:
        """The factor tiles are resized by before the network (:attr:`bundle.inferers.TilePredictor.resample`)."""
        return self.predictor.resample

    def items(self) -> list:
        """A list, one image or slide file, a datalist JSON (``datalist_key``, else ``training``), or a folder
        (its images plus any slide files): :func:`bundle.wsi.input_items`."""
        from bundle.wsi import input_items

        return input_items(self.data, self.datalist_key)

    def predict(self, rgb: np.ndarray, hematoxylin_threshold: float | None = None, size_scale: float | None = None):
        """(H, W, 3) uint8 -> (instances (H, W) int32, probabilities (C, H, W)); ``hematoxylin_threshold``: see
        :func:`bundle.inferers.predict_probability` (a slide's, for its tiles). ``size_scale``: this image's pixel
        density relative to 40x (:attr:`auto_scale`), replacing the folder's in the predictor and the postprocess's
        px sizes."""
        predictor, postprocess = self.predictor, self.postprocess
        if size_scale is not None and size_scale != predictor.size_scale:
            from dataclasses import replace

            from bundle.scale import scaled

            f = float(size_scale) / predictor.size_scale
            predictor = replace(predictor, size_scale=float(size_scale))
            postprocess = replace(postprocess, size_scale=postprocess.size_scale * f,
                                  min_size=scaled(postprocess.min_size, f, area=True),
                                  min_distance=scaled(postprocess.min_distance, f))
        prob = predictor(self.network, rgb, self.device, hematoxylin_threshold)
        return postprocess(prob, rgb, hematoxylin_threshold)

    def image_scale(self, rgb: np.ndarray, path: str = "image") -> tuple[float | None, float | None]:
        """(estimated nucleus diameter px or None, the size_scale to use) of one tile: with :attr:`auto_scale`, the
        tile's pixel size from its nuclei against those the network learnt on (:func:`bundle.scale.tile_mpp` with
        ``trained_diameter``; a ratio within ``scale_dead_zone`` keeps the network's pixel size), else the folder's;
        a tile where no nuclei size is found gets the folder's, with a warning."""
        if not self.auto_scale:
            return None, None
        from bundle.scale import estimate_nucleus_diameter

        return self._scale_from_diameter(estimate_nucleus_diameter(rgb), path)

    def _scale_from_diameter(self, d: float | None, path: str) -> tuple[float | None, float]:
        from bundle.scale import scale_from_diameter

        return d, scale_from_diameter(d, self.predictor.size_scale, self.predictor.network_mpp, self.trained_diameter,
                                      self.scale_dead_zone, path)

    def slide_scale(self, slide, big_tile: bool = False) -> tuple[float | None, float | None]:
        """:meth:`image_scale` of a slide or a big tile read in windows: the median nucleus diameter of up to four
        tissue windows spread over the slide; for a big tile, that of its central crop, the part
        :func:`bundle.scale.estimate_nucleus_diameter` reads of a whole tile, so both give the same scale."""
        if not self.auto_scale:
            return None, None
        from bundle.scale import estimate_nucleus_diameter

        H, W, t = slide.size[0], slide.size[1], 512
        if big_tile:
            r0, c0 = max(0, (H - t) // 2), max(0, (W - t) // 2)
            return self._scale_from_diameter(estimate_nucleus_diameter(slide.read(r0, c0, min(t, H), min(t, W))),
                                             slide.path)
        return self._scale_from_diameter(slide.nucleus_diameter(4), slide.path)

    def _rows(self, stem, inst, prob):
        from scipy import ndimage as ndi

        from bundle.nuclei.detection import instance_points

        n = int(inst.max())
        cen = instance_points(inst)
        score = ndi.mean(1.0 - prob[0], inst, np.arange(1, n + 1)) if n else []
        return [{"image": stem, "x": round(c, 2), "y": round(r, 2), "class": self.class_name,
                 "score": round(float(s), 4)} for (r, c), s in zip(cen, score)]

    def _geojson_properties(self, rows, table: dict | None = None) -> list:
        from bundle.measure import qupath_measurements

        cls = {"name": self.class_name, "color": list(self.class_colour)}
        return [{"classification": cls, "measurements": {"score": r["score"], **(
            qupath_measurements(table, i) if table is not None else {})}} for i, r in enumerate(rows)]

    def _write_points(self, stem, rows, polys, table: dict | None = None):
        from bundle.io import write_geojson

        write_csv(self.output_dir / "points" / f"{stem}.csv", rows, fieldnames=POINT_FIELDS)
        write_geojson(self.output_dir / "geojson" / f"{stem}.geojson", polys, self._geojson_properties(rows, table))

    @property
    def mpp(self) -> float:
        """Micrometres per pixel of the tiles (the predictor's ``size_scale`` relative to 40x, 0.25 um/px)."""
        from bundle.scale import REFERENCE_MPP

        return REFERENCE_MPP / self.predictor.size_scale

    def _write_measurements(self, stem, rgb, inst, rows, mpp: float, polygons: dict | None = None) -> dict:
        """``measurements/<stem>.csv``: one row per nucleus (``id`` = its label in the instance map and its GeoJSON
        feature id; :func:`bundle.measure.nucleus_measurements` at :attr:`mpp`, plus score and class)."""
        from bundle.measure import nucleus_measurements

        table = nucleus_measurements(inst, rgb, mpp, polygons=polygons)
        out = self._measurement_rows(stem, table, rows)
        fields = ["image", *table, "score", "class"]
        write_csv(self.output_dir / "measurements" / f"{stem}.csv", out, fieldnames=fields)
        write_parquet(self.output_dir / "measurements" / f"{stem}.parquet",
                      {k: [r[k] for r in out] for k in fields})  # when pyarrow is installed
        return table

    def _measurement_rows(self, stem: str, table: dict, rows: list) -> list:
        """CSV rows of a :func:`bundle.measure.nucleus_measurements` table, with the points rows' score and class."""
        n = len(table["id"])
        return [{"image": stem, **{k: (int(v[i]) if k == "id" else round(float(v[i]), 4)) for k, v in table.items()},
                 "score": rows[i]["score"] if i < len(rows) else "", "class": self.class_name} for i in range(n)]

    @staticmethod
    def _size_stats(area_um2: np.ndarray, n: int, tissue_mm2: float) -> dict:
        """Summary columns: nucleus size statistics and density per mm^2 of tissue (optical density > 0.15)."""
        return {"mean_area_um2": round(float(area_um2.mean()), 2) if len(area_um2) else "",
                "median_area_um2": round(float(np.median(area_um2)), 2) if len(area_um2) else "",
                "tissue_mm2": round(tissue_mm2, 5),
                "nuclei_per_mm2": round(n / tissue_mm2, 1) if tissue_mm2 > 0 else ""}

    def infer_tile(self, rgb: np.ndarray, path: str = "image") -> tuple:
        """One tile -> (instances (H, W) int32, probabilities (C, H, W), info): a blank tile
        (:func:`bundle.stain.blank_reason`) gets no nuclei and a warning; otherwise the tile's scale
        (:meth:`image_scale`) and :meth:`predict`. ``info``: ``blank`` (reason or ""), ``mpp`` (the tile's um/px, None =
        the folder's), and with :attr:`auto_scale` ``nucleus_diameter_px`` and ``scale_factor``. Also used by the
        MONAI Deploy application, so both give the same instances."""
        from bundle.scale import REFERENCE_MPP
        from bundle.stain import blank_reason

        blank = blank_reason(rgb)
        d = s = None
        if blank:  # white, black or uniform: no nuclei, whatever a network or an Otsu threshold of noise would say
            logger.warning(f"{path}: {blank}; no nuclei")
            inst = np.zeros(rgb.shape[:2], np.int32)
            prob = np.ones((1, *rgb.shape[:2]), np.float32)  # P(background) = 1
        else:
            d, s = self.image_scale(rgb, path)
            inst, prob = self.predict(rgb, size_scale=s)
        info = {"blank": blank or "", "mpp": None if s is None else REFERENCE_MPP / s}
        if self.auto_scale:
            info.update({"nucleus_diameter_px": round(d, 2) if d else "", "scale_factor": round(s, 3) if s else ""})
        return inst, prob, info

    def run_image(self, item) -> dict:
        from bundle.annotations import read_instance_label
        from bundle.metrics import instance_scores

        path = item["image"]
        h, w = image_size(path)
        if h * w > self.big_tile_px:
            return self.run_big_image(item, (h, w))
        rgb = read_rgb(path, min_size=32)
        t0 = time.perf_counter()
        inst, prob, info = self.infer_tile(rgb, path)
        row = self.write_outputs(item_name(item), rgb, inst, prob, time.perf_counter() - t0, mpp=info["mpp"])
        row.update({k: v for k, v in info.items() if k not in ("blank", "mpp")})
        row["note"] = "blank" if info["blank"] else ""
        if item.get("label"):
            row.update(instance_scores(inst, read_instance_label(item["label"])))
        return row

    def write_outputs(self, stem: str, rgb: np.ndarray, inst: np.ndarray, prob: np.ndarray, seconds: float,
                      mpp: float | None = None) -> dict:
        """The files of one tile (instance map, points CSV, GeoJSON, overlay, optional mask) -> its summary row.
        Also used by the MONAI Deploy application (:mod:`bundle.deploy`) on tiles it got as arrays."""
        from bundle.annotations import write_instance_label
        from bundle.measure import instance_polygons

        suffix = ".tif" if self.label_format in ("tif", "tiff") else ".png"
        write_instance_label(self.output_dir / "labels" / f"{stem}{suffix}", inst)
        rows = self._rows(stem, inst, prob)
        polys = instance_polygons(inst)
        mpp = self.mpp if mpp is None else float(mpp)
        table = self._write_measurements(stem, rgb, inst, rows, mpp, polys) if self.write_measurements else None
        self._write_points(stem, rows, [polys[i] for i in sorted(polys)], table)
        if self.write_overlays:
            write_image(self.output_dir / "overlays" / f"{stem}.png", overlay_mask(rgb, inst))
        if self.write_masks:  # 0/255 foreground, the pseudo-mask format: lets a trained network teach a new round
            write_image(self.output_dir / "masks" / f"{stem}.png", (inst > 0).astype(np.uint8) * 255)
        row = {"image": stem, "n_nuclei": int(inst.max()), "seconds": seconds, "height": rgb.shape[0],
               "width": rgb.shape[1]}
        if table is not None:  # size statistics and density per mm^2 of tissue (optical density > 0.15)
            from bundle.stain import tissue_by_od

            tissue_mm2 = float(tissue_by_od(rgb).sum()) * (mpp / 1000.0) ** 2
            row.update(self._size_stats(table.get("area_um2", np.zeros(0)), int(inst.max()), tissue_mm2))
        return row

    def _slide_outputs(self, stem: str, label_map: bool) -> dict:
        out = {"points": self.output_dir / "points" / f"{stem}.csv",
               "geojson": self.output_dir / "geojson" / f"{stem}.geojson"}
        if self.write_measurements:
            out["measurements"] = self.output_dir / "measurements" / f"{stem}.csv"
        if label_map:
            out["labels"] = self.output_dir / "labels" / f"{stem}.tif"
        for f in out.values():  # a killed earlier run of this input leaves its (hours-long) temporaries behind
            remove_stale_parts(f)
        return out

    def run_slide(self, item) -> dict:
        path = item["image"]
        stem = item_name(item)
        outputs = self._slide_outputs(stem, label_map=False)
        slide = self.wsi.open(path, margin=64)
        slide.check_mpp(0.25 / self.predictor.size_scale)
        try:
            return self._run_windows(slide, stem, outputs)
        finally:
            slide.close()

    def run_big_image(self, item, shape) -> dict:
        """A plain image of more than :attr:`big_tile_px` pixels, in windows (see the class docstring)."""
        import tempfile

        from bundle.io import tiled_tiff_copy
        from bundle.wsi import SlideTiles

        path, stem = item["image"], item_name(item)
        outputs = self._slide_outputs(stem, label_map=True)
        if self.write_masks:
            logger.warning(f"{path}: no training mask for a tile this big (train on tiles up to "
                           f"{self.big_tile_px} px)")
        logger.info(f"{path}: {shape[0]}x{shape[1]} px, more than --big_tile_px {self.big_tile_px}: processed in "
                    f"{self.wsi.tile} px windows")
        src, tmp = path, None
        if not path.lower().endswith((".tif", ".tiff")):  # TIFFs are read region by region as they are
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part.tif", dir=self.output_dir)
            os.close(fd)
            t0 = time.perf_counter()
            tiled_tiff_copy(path, tmp)
            logger.info(f"{path}: copied into a tiled TIFF in {time.perf_counter() - t0:.1f} s")
            src = tmp
        try:
            slide = SlideTiles(src, tile_size=self.wsi.tile, margin=64, min_tissue=0.0)
            try:
                row = self._run_windows(slide, stem, outputs, name=path)
            finally:
                slide.close()
        finally:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
        if item.get("label"):
            logger.warning(f"{path}: not scored against its label (a tile this big is not held in memory)")
        return row

    def _window_nuclei(self, stem, inst, prob, rgb, slide, r, c, first_id: int, mpp: float | None):
        """The nuclei of one window whose centroid lies in its core tile: (points rows, polygons, measurement table
        or None, their (h, w) label map in window coordinates with ids from ``first_id``), in level-0 pixels."""
        from bundle.measure import instance_polygons, nucleus_measurements

        off_r, off_c = slide.last_offset
        core_h, core_w = min(slide.tile_size, slide.size[0] - r), min(slide.tile_size, slide.size[1] - c)
        tile_polys = instance_polygons(inst)
        rows, polys, keep = [], [], []
        ds = slide.downsample
        for i, row in enumerate(self._rows(stem, inst, prob), start=1):  # nuclei centred in the core tile
            y, x = row["y"] - off_r, row["x"] - off_c
            if not (0 <= y < core_h and 0 <= x < core_w) or i not in tile_polys:
                continue
            row["x"], row["y"] = round((x + c) * ds, 2), round((y + r) * ds, 2)
            rows.append(row)
            keep.append(i)
            polys.append((tile_polys[i] + np.array([c - off_c, r - off_r])) * ds)
        lut = np.zeros(int(inst.max()) + 1, np.int32)
        lut[keep] = np.arange(first_id, first_id + len(keep), dtype=np.int32)
        kept = lut[inst]
        table = None
        if self.write_measurements:
            table = nucleus_measurements(kept, rgb, mpp, polygons={int(lut[i]): tile_polys[i] for i in keep})
            table["x"] = (table["x"] + c - off_c) * ds  # level-0 px, as the points
            table["y"] = (table["y"] + r - off_r) * ds
            if mpp:
                table["x_um"], table["y_um"] = table["x"] * mpp / ds, table["y"] * mpp / ds
        return rows, polys, table, kept

    def _run_windows(self, slide, stem: str, outputs: dict, name: str | None = None) -> dict:
        """A slide, or a big tile (``outputs`` with ``labels``) opened as one, window by window: points, GeoJSON and
        measurements streamed to disk, the label map painted on disk (:class:`bundle.annotations.LabelCanvas`)."""
        from contextlib import ExitStack

        from tqdm import tqdm

        from bundle.annotations import LabelCanvas
        from bundle.inferers import input_channels
        from bundle.io import streamed_csv
        from bundle.scale import REFERENCE_MPP
        from bundle.stain import blank_reason, tissue_by_od

        path = name or slide.path
        big_tile = "labels" in outputs
        t0 = time.perf_counter()
        centres, n_tiles, n_nuclei, areas, tissue_px = [], 0, 0, [], 0
        tiles = slide.core_tiles()
        if not tiles:
            logger.warning(f"{path}: no tissue found; writing empty outputs")
        d, s = self.slide_scale(slide, big_tile) if tiles else (None, None)
        mpp = REFERENCE_MPP / (s or self.predictor.size_scale)  # um/px of the analysed level
        h_threshold = None
        if tiles and (input_channels(self.network) == 4 or self.postprocess.hematoxylin_prior > 0):  # one per slide
            # a slide: pooled over 16 tissue tiles; a big tile: over all of it, as if it were read whole
            h_threshold = slide.hematoxylin_threshold(None if big_tile else 16) or None  # flat: each tile's own
            logger.info(f"{path}: haematoxylin OD threshold {h_threshold}")
        with ExitStack() as stack:
            # points and polygons go to disk tile by tile: memory does not grow with the number of nuclei
            add = stack.enter_context(streamed_outputs(outputs["points"], POINT_FIELDS, outputs["geojson"]))
            add_measured = fields = None
            canvas = stack.enter_context(LabelCanvas(slide.size, outputs["labels"].parent)) if big_tile else None
            for r, c, rgb in tqdm(slide, total=len(tiles), desc=f"{stem} tiles", unit="tile", leave=False):
                n_tiles += 1
                off_r, off_c = slide.last_offset
                core = rgb[off_r: off_r + slide.tile_size, off_c: off_c + slide.tile_size]
                tissue_px += int(tissue_by_od(core).sum())
                if blank_reason(rgb):  # glass, a black border, a flat region: no nuclei
                    continue
                inst, prob = self.predict(rgb, h_threshold, size_scale=s)
                rows, polys, table, kept = self._window_nuclei(stem, inst, prob, rgb, slide, r, c, n_nuclei + 1, mpp)
                if canvas is not None:
                    canvas.paint(r - off_r, c - off_c, kept)
                add(rows, polys, self._geojson_properties(rows, table))
                if table is not None:
                    if add_measured is None:
                        fields = ["image", *table, "score", "class"]
                        add_measured = stack.enter_context(streamed_csv(outputs["measurements"], fields))
                    add_measured(self._measurement_rows(stem, table, rows))
                    areas.append(table.get("area_um2", np.zeros(0)))
                n_nuclei += len(rows)
                if self.write_overlays:
                    centres.append(np.array([(row["y"], row["x"]) for row in rows], np.float64).reshape(-1, 2))
            if self.write_measurements and add_measured is None:  # no nuclei: a header-only table
                from bundle.measure import nucleus_measurements

                empty = nucleus_measurements(np.zeros((1, 1), np.int32), np.zeros((1, 1, 3), np.uint8), mpp)
                stack.enter_context(streamed_csv(outputs["measurements"], ["image", *empty, "score", "class"]))
            if canvas is not None:
                canvas.write(outputs["labels"])
        if self.write_overlays:
            thumb = slide.thumbnail(max_side=2048).copy()
            f = thumb.shape[0] / slide.level_sizes[0][0]
            for y, x in (np.concatenate(centres) * f).astype(int) if centres else ():
                thumb[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = (0, 255, 0)
            write_image(self.output_dir / "overlays" / f"{stem}.png", thumb)
        row = {"image": stem, "n_nuclei": n_nuclei, "seconds": time.perf_counter() - t0, "tiles": n_tiles,
               "height": slide.level_sizes[0][0], "width": slide.level_sizes[0][1]}
        if self.write_measurements:
            area = np.concatenate(areas) if areas else np.zeros(0)
            tissue_mm2 = tissue_px * (mpp / 1000.0) ** 2
            row.update(self._size_stats(area, n_nuclei, tissue_mm2))
        if self.auto_scale:
            row.update({"nucleus_diameter_px": round(d, 2) if d else "", "scale_factor": round(s, 3) if s else ""})
        return row

    def prepare(self) -> "NucleiRunner":
        """Load ``ckpt_path`` into the network (one-line error when missing or mismatched) and set it to eval."""
        from bundle.backends import inference_network
        from bundle.checkpoints import check_network_kind, load_network_weights

        if self.ckpt_path:
            check_network_kind(self.ckpt_path, "seg")
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()
        self.network = inference_network(self.network, self.backend, self.ckpt_path, self.output_dir / ".cache",
                                         self.device)
        return self

    def run(self) -> dict:
        """Process every input (see the class docstring) with ``output_dir`` locked to this run
        (:func:`bundle.runs.output_run`: a second run into it stops with one line; a killed run's temporaries and
        old summaries are cleared first). Returns the folder summary."""
        from bundle.runs import output_run

        with output_run(self.output_dir):
            return self._run()

    def _run(self) -> dict:
        from bundle.distributed import broadcast, gather_rows, rank_world, shard
        from bundle.wsi import is_wsi

        items = self.items()
        self.prepare()
        names = [item_name(it) for it in items]
        mine = shard(items, names)  # all of them in one process; a disjoint share per rank under torchrun
        key, reused = self.fingerprint(), []

        def one(it):
            row = self._finished_row(it, key)
            if row is not None:
                reused.append(it["image"])
                return row
            row = self.run_slide(it) if is_wsi(it["image"]) else self.run_image(it)
            self._mark_finished(it, key, row)
            return row

        rows, skipped = run_items(mine, one, "nuclei")
        if reused:
            logger.info(f"kept the outputs of {len(reused)} image(s) that an earlier run with the same weights and "
                        f"settings finished (delete {self.output_dir / self.DONE} to redo them)")
        rows, skipped = gather_rows(rows, skipped, names)
        rank, world = rank_world()
        summary = None
        if rank == 0:
            summary = write_summary(self.output_dir, rows, skipped, self.data, csv_name="summary.csv")
            if self.write_report:
                from bundle.report import write_report

                write_report(self.output_dir, settings={**self.settings(), "processes": world})
            logger.info(f"wrote nuclei of {len(rows)} image(s) to {self.output_dir}")
        return broadcast(summary)

    DONE = ".done"  # <output_dir>/.done/<name>.json: one per finished input, written after all its files

    def fingerprint(self) -> str | None:
        """What an input's outputs depend on besides the input: the weights file (path, size, mtime) and every setting.
        None without ``ckpt_path`` (weights given as a network object cannot be identified: nothing is reused)."""
        import hashlib

        if not self.ckpt_path or not Path(self.ckpt_path).is_file():
            return None
        st = Path(self.ckpt_path).stat()
        parts = (str(Path(self.ckpt_path).resolve()), st.st_size, st.st_mtime_ns, repr(self.predictor),
                 repr(self.postprocess), repr(self.wsi), self.label_format, self.write_overlays, self.write_masks,
                 self.write_measurements, self.auto_scale, self.scale_dead_zone, self.trained_diameter,
                 self.class_name, self.class_colour, self.big_tile_px, self.backend)
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    @staticmethod
    def _input_stamp(item) -> list:
        return [[str(item.get(k)), os.stat(item[k]).st_size, os.stat(item[k]).st_mtime_ns]
                for k in ("image", "label") if item.get(k) and os.path.isfile(item[k])]

    def _finished_row(self, item, key: str | None) -> dict | None:
        """The summary row of ``item`` when an earlier run into this folder finished it with the same ``key`` (see
        :meth:`fingerprint`) and the same input files; else None (the input is processed)."""
        if key is None:
            return None
        p = self.output_dir / self.DONE / f"{item_name(item)}.json"
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(rec, dict) and rec.get("key") == key and rec.get("input") == self._input_stamp(item)
        return rec.get("row") if ok and isinstance(rec.get("row"), dict) else None

    def _mark_finished(self, item, key: str | None, row: dict) -> None:
        if key is not None:
            from bundle.io import write_json

            record = {"key": key, "input": self._input_stamp(item), "row": row}
            write_json(self.output_dir / self.DONE / f"{item_name(item)}.json",
                       json.loads(json.dumps(record, default=float)))  # numpy numbers as plain JSON numbers

    def settings(self) -> dict:
        """What produced this run's outputs (the report's settings table)."""
        return {"data": str(self.data), "checkpoint": str(self.ckpt_path or ""), "device": str(self.device),
                "um per px (folder)": "measured per tile" if self.auto_scale else round(self.mpp, 4),
                "flip TTA": self.predictor.tta, "instances": self.postprocess.mode,
                "threshold": self.postprocess.threshold}
