# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Label-free multi-class (Ki-67 positive / negative) cell detection in DAB + haematoxylin IHC tiles (issue 4).

The PSM paper reports multi-class Ki-67 detection but its code has none; this is the project's design
(docs/ki67.md):

1. **Pseudo labels, no annotation** (:class:`Ki67PseudoLabeler`): colour features of the whole folder.

   * positive (brown) nuclei: 4-cluster K-Means of the smoothed RGB optical density (OD) of the folder's pixels;
     the lowest-OD cluster is background and the other clusters whose centre absorbs blue light at least as much
     as red (brown: OD_blue >= OD_red; haematoxylin absorbs red more) are the positive stain;
   * negative (pale blue) nuclei: haematoxylin OD (colour deconvolution of the smoothed OD) above an Otsu
     threshold computed over the folder's non-positive pixels (clipped at their 99th percentile so that dark
     outliers do not drive it);
   * each mask is split into nuclei by distance-transform peaks (``min_distance`` = half a nucleus diameter,
     components smaller than ~30 % of a nucleus are dropped) and close points are merged.

   Every parameter is derived from one physical setting, ``nucleus_diameter`` (px).
2. **3-class point label** (:func:`point_label`): 0 background, 1 positive disk, 2 negative disk, 255 an ignore
   ring around each disk; written as ``.npy`` by :func:`prepare_ki67_labels` for ``configs/ki67_train.json`` (the
   ``det_train`` machinery with a ResUNet-34, ``out_channels`` 3).
3. **Per-class points** (:func:`ki67_points`): peaks of ``1 - P(background)`` (:func:`bundle.labels.
   points_from_probability`), each placed at the centroid of its region of the foreground; its class comes from the
   absolute DAB rule (:mod:`bundle.ki67.positivity`: mean DAB OD of the nucleus core >= ``dab_threshold``, stain
   vectors estimated on the folder or slide), not from the network, so that a folder without brown nuclei gets none.
4. :class:`Ki67Runner` (``configs/ki67_infer.json``): per image a points CSV ``image,x,y,class,score,dab_od``, a
   QuPath GeoJSON (small classified polygons, Positive / Negative, measurement ``DAB OD mean``), an overlay (positive
   red, negative blue), counts and the Ki-67 index with its 95 % Wilson interval; ``summary.csv`` / ``summary.json``
   over the folder and ``dab_histogram.png`` (every cell's DAB OD, the threshold marked). ``stain="he"`` runs the
   H&E nuclei workflow (:class:`bundle.nuclei.runner.NucleiRunner`) instead. An H&E image given to the IHC mode (no
   brown, H&E colours: :func:`looks_like_he`) gets zero positives, no index and a warning.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bundle.io import ImageError, item_name, read_rgb, write_csv, write_image, write_json
from bundle.ki67.points import Ki67Cells, ki67_points, overlay_points
from bundle.ki67.positivity import DABHistogram, wilson_interval
from bundle.ki67.pseudo_labels import (
    CLASS_COLOURS,
    CLASS_NAMES,
    IGNORE,
    NEGATIVE,
    POSITIVE,
    Ki67PseudoLabeler,
    NoDABWarning,
    dab_fraction,
    looks_like_he,
)
from bundle.nuclei.handlers import NucleiImageHandler
from bundle.points import circle_polygon
from bundle.runs import POINT_FIELDS, run_items
from bundle.scale import DEAD_ZONE

logger = logging.getLogger(__name__)

__all__ = ["Ki67Runner", "Ki67ImageHandler", "stain_runner", "index_fields", "INDEX_FIELDS", "KI67_POINT_FIELDS"]

KI67_POINT_FIELDS = (*POINT_FIELDS, "dab_od")  # the points CSV: every workflow's columns + each cell's DAB OD
INDEX_FIELDS = ("ki67_index", "ki67_index_ci_low", "ki67_index_ci_high")


def index_fields(n_pos: int, n_neg: int, valid: bool = True, digits: int | None = 4) -> dict:
    """``ki67_index`` (positive / all cells) with its 95 % Wilson interval; empty strings when ``valid`` is false
    (no DAB signal: no index is reported as if it were one) and index 0 with interval (0, 1) for no cells."""
    if not valid:
        return dict.fromkeys(INDEX_FIELDS, "")
    n = n_pos + n_neg
    lo, hi = wilson_interval(n_pos, n)
    vals = (n_pos / n if n else 0.0, lo, hi)
    return {k: (round(v, digits) if digits is not None else float(v)) for k, v in zip(INDEX_FIELDS, vals)}


class Ki67Runner:
    """Ki-67 positive / negative cells for a folder, a datalist or single images (label-free).

    Per image ``<stem>`` in ``output_dir``: ``points/<stem>.csv`` (``image,x,y,class,score,dab_od``; x = column,
    y = row, class ``Positive`` / ``Negative``, dab_od the cell's mean nucleus DAB OD that decided it),
    ``geojson/<stem>.geojson`` (QuPath detections: 12-gon of radius ``marker_radius`` per cell, classification
    Positive red / Negative blue, measurements ``score`` and ``DAB OD mean``), ``overlays/<stem>.png`` (positive red,
    negative blue rings); then ``summary.csv`` (per image: n_positive, n_negative, n_cells, ki67_index with
    ki67_index_ci_low / _high (95 % Wilson), dab_fraction, seconds, note), ``summary.json`` (folder totals, folder
    Ki-67 index and interval, the stain vectors used, the threshold, skipped files) and ``dab_histogram.png``.

    Whole slides (pyramidal TIFF / SVS ..., :func:`bundle.wsi.is_wsi`; ``method="network"`` only) are streamed tile by
    tile over the tissue (:class:`bundle.wsi.SlideTiles` with its IHC tissue mask, ``wsi_*`` options as in
    :class:`bundle.nuclei.runner.NucleiRunner`; each tile read with a margin of max(64 px, 3 nucleus diameters), a cell
    kept by the tile whose core holds its point). Points
    and GeoJSON are in level-0 pixels and written tile by tile; ``tiles/<stem>.csv`` holds the counts and index of
    every tile (level-0 ``x, y`` of its top-left corner); the overlay is the slide's thumbnail with positive cells red
    and negative blue; the summary row adds ``tiles`` and the **hotspot**: the highest tile index among tiles with at
    least ``hotspot_min_cells`` cells (``hotspot_ki67_index`` with its Wilson interval, ``hotspot_x``, ``hotspot_y``,
    ``hotspot_cells``). The stain vectors and the H&E check come once per slide, from the tissue of its thumbnail, not
    per tile (a tile of negative tumour has no brown; glass would dilute the fraction).

    Args:
        network: 3-class (background / positive / negative) per-pixel classifier (``method="network"``).
        method: ``"network"`` (trained ki67 network) or ``"classical"`` (:class:`Ki67PseudoLabeler` on the folder,
            no network: the pseudo labels themselves).
        predictor: :class:`bundle.inferers.TilePredictor` (sliding window, flip TTA, resizing to the network's pixel
            size); default ``TilePredictor()``.
        cells: :class:`bundle.ki67.points.Ki67Cells` (points, classes, markers, the no-DAB rule); default
            ``Ki67Cells()``.
        wsi: :class:`bundle.wsi.SlideOptions`; default ``SlideOptions()``.
        hotspot_min_cells: a slide tile counts for the hotspot when it has at least this many cells.
        seed: of the classical labeller's K-Means.  write_overlays, datalist_key: as
            :class:`bundle.nuclei.runner.NucleiRunner`.
        auto_scale, scale_dead_zone, trained_diameter: tiles of unknown magnification (no ``mpp`` given; network
            method): each tile's nucleus size is estimated (haematoxylin + DAB blobs,
            :func:`bundle.scale.estimate_nucleus_diameter` ``stain="ihc"``; ``trained_diameter`` by the same
            estimator, None = :data:`bundle.scale.IHC_REFERENCE_DIAMETER`) and the tile run at the network's pixel
            size, its nucleus diameter (points, DAB disk) scaled to match, as
            :class:`bundle.nuclei.runner.NucleiRunner` does; the summary row adds ``nucleus_diameter_px`` and
            ``scale_factor``.

        backend: the engine that runs the network, as :class:`bundle.nuclei.runner.NucleiRunner`'s.

    H&E nuclei in the same config (``ki67_infer.json --stain he``) run :class:`bundle.nuclei.runner.NucleiRunner`
    instead (:func:`stain_runner`).
    """

    def __init__(self, network=None, data=None, output_dir="eval/ki67", ckpt_path=None, device="cpu",
                 method: str = "network", predictor=None, cells=None, wsi=None, hotspot_min_cells: int = 100,
                 seed: int = 0, write_overlays: bool = True, datalist_key: str = "testing", write_report: bool = True,
                 auto_scale: bool = False, scale_dead_zone=DEAD_ZONE, trained_diameter: float | None = None,
                 backend: str = "pytorch"):
        from bundle.inferers import TilePredictor
        from bundle.wsi import SlideOptions

        if method not in ("network", "classical"):
            raise ValueError(f"unknown method {method!r} (use 'network' or 'classical')")
        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.predictor = TilePredictor() if predictor is None else predictor
        self.cells = Ki67Cells() if cells is None else cells
        self.wsi = SlideOptions() if wsi is None else wsi
        self.write_overlays, self.datalist_key, self.write_report = write_overlays, datalist_key, bool(write_report)
        self.method, self.seed = method, int(seed)
        self.hotspot_min_cells = int(hotspot_min_cells)
        self.auto_scale, self.scale_dead_zone = bool(auto_scale), tuple(float(v) for v in scale_dead_zone)
        self.trained_diameter = None if trained_diameter is None else float(trained_diameter)
        self.backend = str(backend)
        if self.hotspot_min_cells < 0:
            raise ValueError(f"hotspot_min_cells must be >= 0, got {hotspot_min_cells}")
        self.labeler, self.stain, self.stain_source = None, None, None
        self.histogram = DABHistogram()

    @property
    def resample(self) -> float:
        """The factor tiles are resized by before the network (:attr:`bundle.inferers.TilePredictor.resample`)."""
        return self.predictor.resample

    @property
    def mpp(self) -> float:
        """Micrometres per pixel the tiles are taken at: the default nucleus diameter, 20 px, is set for 0.25 um/px."""
        return self._mpp(self.cells)

    @staticmethod
    def _mpp(cells) -> float:
        return 0.25 * 20.0 / cells.nucleus_diameter

    def items(self) -> list:
        """Same inputs as :meth:`bundle.nuclei.runner.NucleiRunner.items` (list, file, datalist JSON or folder)."""
        from bundle.wsi import input_items

        return input_items(self.data, self.datalist_key)

    def tile_scale(self, rgb: np.ndarray, path: str = "image") -> tuple[float | None, float | None]:
        """(estimated nucleus diameter px or None, size scale) of a tile with :attr:`auto_scale` and the network
        method; (None, None) otherwise (the folder's scale)."""
        if not self.auto_scale or self.method != "network":
            return None, None
        from bundle.scale import estimate_nucleus_diameter

        return self._scale_from_diameter(estimate_nucleus_diameter(rgb, stain="ihc"), path)

    def slide_scale(self, slide) -> tuple[float | None, float | None]:
        """:meth:`tile_scale` of a whole slide: one scale from four of its tissue tiles."""
        if not self.auto_scale or self.method != "network":
            return None, None
        return self._scale_from_diameter(slide.nucleus_diameter(4, "ihc"), slide.path)

    def _scale_from_diameter(self, d: float | None, path: str) -> tuple[float | None, float]:
        from bundle.scale import IHC_REFERENCE_DIAMETER, REFERENCE_MPP, scale_from_diameter

        p = self.predictor
        ref = self.trained_diameter  # by the IHC estimator; else the shipped network's (BCData) at 40x
        if ref is None:
            ref = IHC_REFERENCE_DIAMETER * REFERENCE_MPP / (p.network_mpp or REFERENCE_MPP)
        return d, scale_from_diameter(d, p.size_scale, p.network_mpp, ref, self.scale_dead_zone, path)

    def _at_scale(self, size_scale: float | None):
        """(predictor, cells) for a tile at ``size_scale`` (None: the folder's)."""
        p, c = self.predictor, self.cells
        if size_scale is None or size_scale == p.size_scale:
            return p, c
        from dataclasses import replace

        f = float(size_scale) / p.size_scale
        return replace(p, size_scale=float(size_scale)), replace(c, nucleus_diameter=c.nucleus_diameter * f)

    def detect(self, rgb: np.ndarray, path: str = "image", matrix=None, size_scale: float | None = None):
        """(H, W, 3) uint8 -> (points (N, 2) (row, col), classes (N,), scores (N,), DAB OD (N,), dab_fraction).

        ``matrix``: the stain matrix of the folder or slide (default :attr:`stain`). ``size_scale``: this tile's
        (:meth:`tile_scale`; None = the folder's)."""
        predictor, cells = self._at_scale(size_scale)
        frac = dab_fraction(rgb)
        if self.method == "classical":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoDABWarning)
                pts, cls = self.labeler.points(rgb, path)
            score = np.ones(len(pts), np.float32)
        else:
            prob = predictor(self.network, rgb, self.device)
            c = cells
            pts, cls, score = ki67_points(prob, c.threshold, c.nucleus_diameter, point_mode=c.point_mode)
        cls, dab = cells.classify(rgb, pts, cls, self.stain if matrix is None else matrix)
        if looks_like_he(rgb, self.cells.min_dab_fraction):
            n_pos = int((cls == POSITIVE).sum())
            logger.warning(f"{path}: no DAB (brown) signal (brown pixel fraction {frac:.4f}) and H&E colours - is this "
                           f"an H&E image? reporting 0 positive cells and no Ki-67 index ({n_pos} positive(s) "
                           "relabelled negative)")
            cls = np.full(len(pts), NEGATIVE, np.uint8)
        return pts, cls, score, dab, frac

    def _cell_rows(self, stem, yx, cls, score, dab):
        """Points CSV rows and GeoJSON properties of cells at (row, col) ``yx``."""
        rows = [{"image": stem, "x": round(float(x), 2), "y": round(float(y), 2), "class": CLASS_NAMES[int(k)],
                 "score": round(float(s), 4), "dab_od": round(float(d), 4)}
                for (y, x), k, s, d in zip(yx, cls, score, dab)]
        props = [{"classification": {"name": CLASS_NAMES[int(k)], "color": list(CLASS_COLOURS[int(k)])},
                  "measurements": {"score": round(float(s), 4), "DAB OD mean": round(float(d), 4)}}
                 for k, s, d in zip(cls, score, dab)]
        return rows, props

    def run_image(self, item) -> dict:
        from bundle.io import write_geojson
        from bundle.stain import blank_reason, tissue_by_od

        path = item["image"]
        rgb = read_rgb(path, min_size=32)
        stem = item_name(item)
        t0 = time.perf_counter()
        blank = blank_reason(rgb)
        d = s = None
        if blank:
            logger.warning(f"{path}: {blank}; no cells")
            pts, cls = np.zeros((0, 2), np.int64), np.zeros(0, np.uint8)
            score, dab, frac = np.zeros(0, np.float32), np.zeros(0, np.float32), 0.0
        else:
            d, s = self.tile_scale(rgb, path)
            pts, cls, score, dab, frac = self.detect(rgb, path, size_scale=s)
        cells = self._at_scale(s)[1]
        sec = time.perf_counter() - t0
        rows, props = self._cell_rows(stem, pts.astype(np.int64), cls, score, dab)
        for r in rows:
            r["x"], r["y"] = int(r["x"]), int(r["y"])
        write_csv(self.output_dir / "points" / f"{stem}.csv", rows, fieldnames=KI67_POINT_FIELDS)
        polys = [circle_polygon(r, c, self.cells.marker_radius) for r, c in pts]
        write_geojson(self.output_dir / "geojson" / f"{stem}.geojson", polys, props)
        if self.write_overlays:
            write_image(self.output_dir / "overlays" / f"{stem}.png",
                        overlay_points(rgb, pts, cls, radius=max(2, int(round(cells.nucleus_diameter / 3)))))
        no_dab = not blank and looks_like_he(rgb, self.cells.min_dab_fraction)
        if not no_dab:
            self.histogram.add(dab)
        n_pos, n_neg = int((cls == POSITIVE).sum()), int((cls == NEGATIVE).sum())
        tissue_mm2 = float(tissue_by_od(rgb).sum()) * (self._mpp(cells) / 1000.0) ** 2  # at this tile's scale
        scale = {"nucleus_diameter_px": round(d, 2) if d else "", "scale_factor": round(s, 3) if s else ""}
        return {"image": stem, "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                **index_fields(n_pos, n_neg, valid=not no_dab), "dab_fraction": round(frac, 4),
                "seconds": round(sec, 3), "height": rgb.shape[0], "width": rgb.shape[1],
                "tissue_mm2": round(tissue_mm2, 5),
                "cells_per_mm2": round((n_pos + n_neg) / tissue_mm2, 1) if tissue_mm2 > 0 else "",
                **(scale if self.auto_scale else {}),
                "note": "blank" if blank else "H&E: no DAB signal" if no_dab else ""}

    def run_slide(self, item) -> dict:
        """One whole slide, streamed tile by tile (see the class docstring)."""
        from bundle.io import remove_stale_parts

        path = item["image"]
        if self.method != "network":
            raise ValueError(f"{path}: whole slides need method 'network' (the classical labeller is fitted on tiles)")
        stem = item_name(item)
        outputs = (self.output_dir / "points" / f"{stem}.csv", self.output_dir / "geojson" / f"{stem}.geojson")
        for out in outputs:  # a killed earlier run of this slide leaves its temporaries behind
            remove_stale_parts(out)
        slide = self.wsi.open(path, margin=max(64, int(round(3 * self.cells.nucleus_diameter))), tissue="density")
        slide.check_mpp(self.mpp)
        try:
            return self._run_slide(slide, stem, outputs)
        finally:
            slide.close()

    def _run_slide(self, slide, stem: str, outputs) -> dict:
        from tqdm import tqdm

        from bundle.inferers import input_channels
        from bundle.io import streamed_outputs

        path, ds, t0 = slide.path, slide.downsample, time.perf_counter()
        thumb, tissue = slide.thumbnail(max_side=2048), slide.mask  # the mask is made from the same thumbnail
        frac = dab_fraction(thumb[tissue]) if tissue.any() else 0.0
        tiles = slide.core_tiles()
        matrix = self.fit_stain([thumb[tissue][:, None]] if tissue.any() else [], path)
        no_dab = bool(tiles) and looks_like_he(thumb[tissue][:, None], self.cells.min_dab_fraction)
        if no_dab:
            logger.warning(f"{path}: no DAB (brown) signal (brown pixel fraction {frac:.4f} of the thumbnail's tissue) "
                           "and H&E colours - is this an H&E slide? reporting 0 positive cells and no Ki-67 index")
        if not tiles:
            logger.warning(f"{path}: no tissue found; writing empty outputs")
        h_threshold = (slide.hematoxylin_threshold() or None) if tiles and input_channels(self.network) == 4 else None
        d, sc = self.slide_scale(slide) if tiles and not no_dab else (None, None)
        predictor, cl = self._at_scale(sc)  # a slide whose file gives no pixel size: its measured scale
        tile_rows = []
        ov = thumb.copy() if self.write_overlays else None
        s = thumb.shape[0] / slide.level_sizes[0][0]  # level-0 px -> thumbnail px
        with streamed_outputs(outputs[0], KI67_POINT_FIELDS, outputs[1]) as add:
            for r, c, rgb in tqdm(slide, total=len(tiles), desc=f"{stem} tiles", unit="tile", leave=False):
                prob = predictor(self.network, rgb, self.device, h_threshold)
                pts, cls, score = ki67_points(prob, cl.threshold, cl.nucleus_diameter, point_mode=cl.point_mode)
                cls, dab = cl.classify(rgb, pts, cls, matrix)
                if no_dab:
                    cls = np.full(len(pts), NEGATIVE, np.uint8)
                off_r, off_c = slide.last_offset
                core = ((pts[:, 0] >= off_r) & (pts[:, 0] < off_r + min(slide.tile_size, slide.size[0] - r))
                        & (pts[:, 1] >= off_c) & (pts[:, 1] < off_c + min(slide.tile_size, slide.size[1] - c)))
                pts, cls, score, dab = pts[core], cls[core], score[core], dab[core]
                if not no_dab:
                    self.histogram.add(dab)
                yx = (pts - np.array([off_r, off_c]) + np.array([r, c])) * ds  # level-0 pixels
                rows, props = self._cell_rows(stem, yx, cls, score, dab)
                add(rows, [circle_polygon(y, x, self.cells.marker_radius * ds) for y, x in yx], props)
                n_pos, n_neg = int((cls == POSITIVE).sum()), int((cls == NEGATIVE).sum())
                tile_rows.append({"x": round(c * ds), "y": round(r * ds), "n_positive": n_pos, "n_negative": n_neg,
                                  "n_cells": n_pos + n_neg, **index_fields(n_pos, n_neg, valid=not no_dab)})
                if ov is not None:  # cells drawn as they come: nothing kept per cell
                    for (y, x), k in zip((yx * s).astype(int), cls):
                        ov[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = CLASS_COLOURS[int(k)]
        write_csv(self.output_dir / "tiles" / f"{stem}.csv", tile_rows,
                  fieldnames=("x", "y", "n_positive", "n_negative", "n_cells", *INDEX_FIELDS))
        if ov is not None:
            write_image(self.output_dir / "overlays" / f"{stem}.png", ov)
        n_pos = int(sum(t["n_positive"] for t in tile_rows))
        n_neg = int(sum(t["n_negative"] for t in tile_rows))
        hot = None if no_dab else max((t for t in tile_rows if t["n_cells"] >= self.hotspot_min_cells),
                                      key=lambda t: t["ki67_index"], default=None)
        if hot is None and tile_rows and not no_dab:
            logger.warning(f"{path}: no tile has {self.hotspot_min_cells} cells; no hotspot reported")
        return {"image": stem, "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                **index_fields(n_pos, n_neg, valid=not no_dab and bool(tiles)),
                "dab_fraction": round(frac, 4), "seconds": round(time.perf_counter() - t0, 3),
                "height": slide.level_sizes[0][0], "width": slide.level_sizes[0][1],
                "note": "H&E: no DAB signal" if no_dab else ("no tissue" if not tiles else ""), "tiles": len(tile_rows),
                "hotspot_ki67_index": hot["ki67_index"] if hot else "", "hotspot_ki67_index_ci_low":
                hot["ki67_index_ci_low"] if hot else "", "hotspot_ki67_index_ci_high": hot["ki67_index_ci_high"] if hot
                else "", "hotspot_x": hot["x"] if hot else "", "hotspot_y": hot["y"] if hot else "",
                "hotspot_cells": hot["n_cells"] if hot else "",
                **({"nucleus_diameter_px": round(d, 2) if d else "", "scale_factor": round(sc, 3) if sc else ""}
                   if self.auto_scale else {})}

    def run(self) -> dict:
        """Process every input (see the class docstring) with ``output_dir`` locked to this run
        (:func:`bundle.runs.output_run`: a second run into it stops with one line; a killed run's temporaries and
        old summaries are cleared first). Returns the folder summary."""
        from bundle.runs import output_run

        with output_run(self.output_dir):
            return self._run()

    def _run(self) -> dict:

        from bundle.checkpoints import check_network_kind, load_network_weights

        items = self.items()
        if self.method == "network":
            if self.network is None:
                raise ValueError("Ki67Runner: method 'network' needs a network (or use method 'classical')")
            if self.ckpt_path:
                check_network_kind(self.ckpt_path, "ki67")
                load_network_weights(self.network, self.ckpt_path, map_location=self.device)
            self.network.to(self.device).eval()
            if getattr(self.network, "head", None) is not None and self.network.head.out_channels != 3:
                raise ValueError(f"Ki67Runner: the network has {self.network.head.out_channels} output channels; "
                                 "the IHC mode needs 3 (background / positive / negative)")
            from bundle.backends import inference_network

            self.network = inference_network(self.network, self.backend, self.ckpt_path,
                                             self.output_dir / ".cache", self.device)
        from bundle.wsi import is_wsi

        rows, skipped, readable = [], [], []
        for it in items:  # check every file first: one line per bad file (slides are opened when their turn comes)
            if is_wsi(it["image"]):
                readable.append(it)
                continue
            try:
                read_rgb(it["image"], min_size=32)
                readable.append(it)
            except (ImageError, ValueError, FileNotFoundError) as e:
                logger.warning(f"skipped {e}")
                skipped.append(str(e))
        tile_paths = [it["image"] for it in readable if not is_wsi(it["image"])]
        self.histogram = DABHistogram()
        self.stain = self.fit_stain(tile_paths, str(self.data)) if tile_paths else None
        if self.method == "classical" and tile_paths:
            dab_rule = self.cells.dab_threshold if self.cells.positivity == "dab" else None
            self.labeler = Ki67PseudoLabeler(self.cells.nucleus_diameter, min_dab_fraction=self.cells.min_dab_fraction,
                                             seed=self.seed, stain=self.stain, dab_threshold=dab_rule).fit(tile_paths)
        one = lambda it: self.run_slide(it) if is_wsi(it["image"]) else self.run_image(it)  # noqa: E731
        from bundle.distributed import broadcast, gather, gather_rows, rank_world, shard

        names = [item_name(it) for it in readable]
        rank = rank_world()[0]
        rows, mine_skipped = run_items(shard(readable, names), one, "Ki-67", [])  # a share per rank under torchrun
        rows, mine_skipped = gather_rows(rows, mine_skipped, names)
        hist = gather(self.histogram.counts)  # every rank's per-cell DAB histogram
        if rank != 0:
            return broadcast(None)
        self.histogram.counts = np.sum(hist, 0)
        return broadcast(self._summarise(rows, skipped + mine_skipped))

    def _summarise(self, rows: list, skipped: list) -> dict:
        """The folder's summary.csv / summary.json, DAB histogram and report from every image's row."""
        if not rows:
            raise ImageError(f"{self.data}: no image could be processed ({len(skipped)} skipped: "
                             f"{skipped[0] if skipped else ''})")
        write_csv(self.output_dir / "summary.csv", rows)
        valid = [r for r in rows if r["ki67_index"] != ""]
        n_pos = int(sum(r["n_positive"] for r in valid))
        n_neg = int(sum(r["n_negative"] for r in valid))
        if self.cells.positivity == "dab":
            self.histogram.figure(self.cells.dab_threshold, self.output_dir / "dab_histogram.png",
                                  title=Path(str(self.data)).name or "cells")
        summary = {"n_images": len(rows), "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                   **index_fields(n_pos, n_neg, valid=bool(valid), digits=None),
                   "mean_image_ki67_index": float(np.mean([r["ki67_index"] for r in valid])) if valid else "",
                   "n_images_without_index": len(rows) - len(valid),
                   "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
                   "method": self.method, "positivity": self.cells.positivity,
                   "dab_threshold": self.cells.dab_threshold,
                   "stain_vectors": None if self.stain is None else np.round(self.stain[:, :2].T, 4).tolist(),
                   "stain_source": self.stain_source, "n_skipped": len(skipped), "skipped": skipped}
        write_json(self.output_dir / "summary.json", summary)
        if self.write_report:
            from bundle.report import write_report

            write_report(self.output_dir, settings={
                "data": str(self.data), "method": self.method, "checkpoint": str(self.ckpt_path or ""),
                "positivity": self.cells.positivity, "DAB OD threshold": self.cells.dab_threshold,
                "stain vectors": summary["stain_vectors"], "stain source": self.stain_source})
        if skipped:
            logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
        if valid:
            logger.info(f"Ki-67: {len(rows)} image(s), {n_pos} positive / {n_neg} negative cells, index "
                        f"{summary['ki67_index']:.3f} (95 % CI {summary['ki67_index_ci_low']:.3f}-"
                        f"{summary['ki67_index_ci_high']:.3f}); outputs in {self.output_dir}")
        else:
            logger.warning(f"{self.data}: every image looks like H&E (no DAB signal); no Ki-67 index reported "
                           f"(outputs in {self.output_dir})")
        return summary

    def fit_stain(self, images, name: str):
        """The haematoxylin-DAB stain matrix of a folder (paths; up to 32 spread over it) or a slide (its tissue
        pixels), :func:`bundle.ki67.positivity.ihc_stain_matrix`; warns when the folder's DAB signal is weak
        (fewer than 2 % of its tissue pixels above the positivity threshold)."""
        from bundle.ki67.positivity import dab_density, ihc_stain_matrix

        images = list(images)
        if len(images) > 32:
            images = [images[i] for i in np.linspace(0, len(images) - 1, 32).round().astype(int)]
        rgbs = [read_rgb(im) if isinstance(im, (str, Path)) else np.asarray(im) for im in images]
        if not rgbs:
            self.stain_source = None
            return None
        matrix, self.stain_source = ihc_stain_matrix(rgbs, name=name)
        from bundle.stain import tissue_by_od

        tissue = np.concatenate([tissue_by_od(im).ravel() for im in rgbs])
        dab = np.concatenate([dab_density(im, matrix).ravel() for im in rgbs])[tissue]
        strong = float((dab >= self.cells.dab_threshold).mean()) if len(dab) else 0.0
        if self.cells.positivity == "dab" and strong < 0.02:
            logger.warning(f"{name}: weak DAB signal ({100 * strong:.2f} % of tissue pixels reach DAB OD "
                           f"{self.cells.dab_threshold:g}); few or no cells will be positive - check the stain if "
                           "this tissue should have Ki-67 positive nuclei")
        logger.info(f"{name}: stain vectors ({self.stain_source}) H {np.round(matrix[:, 0], 3).tolist()} "
                    f"DAB {np.round(matrix[:, 1], 3).tolist()}")
        return matrix


# ------------------------------------------------------------------------------------------------ TensorBoard
class Ki67ImageHandler(NucleiImageHandler):
    """Every ``interval`` epochs, log [tile | training label | P(positive) red + P(negative) blue | points] for up
    to 4 fixed tiles (centre crops of at most ``max_size``) to TensorBoard."""

    def __init__(self, network, images, labels=None, log_dir: str = "./runs", interval: int = 1,
                 max_size: int = 320, tag: str = "ki67", nucleus_diameter: float = 20.0):
        super().__init__(network, images, labels, log_dir=log_dir, interval=interval, max_size=max_size, tag=tag)
        self.d = nucleus_diameter

    def panel(self, rgb: np.ndarray, lab, prob: np.ndarray) -> np.ndarray:
        pts, cls, _ = ki67_points(prob, nucleus_diameter=self.d)
        lab_img = np.full(rgb.shape, 0.5, np.float32) if lab is None else np.stack(
            [lab == POSITIVE, np.zeros_like(lab, bool), lab == NEGATIVE], -1).astype(np.float32)
        if lab is not None:
            lab_img[lab == IGNORE] = 0.3
        pm = np.stack([prob[1], np.zeros_like(prob[1]), prob[2]], -1)
        return np.concatenate([rgb / 255.0, lab_img, pm, overlay_points(rgb, pts, cls) / 255.0], 1)


def stain_runner(stain: str, ihc, he):
    """The runner of ``ki67_infer.json``'s ``stain``: ``ihc`` (Ki-67 positive / negative cells) or ``he`` (H&E
    nuclei); one-line error for anything else."""
    if stain not in ("ihc", "he"):
        raise ValueError(f"unknown stain {stain!r} (use 'ihc' for Ki-67 DAB + haematoxylin or 'he' for H&E)")
    return ihc if stain == "ihc" else he
