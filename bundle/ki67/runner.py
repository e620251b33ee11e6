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
   points_from_probability`), each given the class with the larger smoothed probability and placed at the centroid
   of its region of the foreground.
4. :class:`Ki67Runner` (``configs/ki67_infer.json``): per image a points CSV ``image,x,y,class,score``, a QuPath
   GeoJSON (small classified polygons, Positive / Negative), an overlay (positive red, negative blue), counts and
   the Ki-67 index; ``summary.csv`` / ``summary.json`` over the folder. ``stain="he"`` runs the H&E nuclei
   workflow (:class:`bundle.nuclei.runner.NucleiRunner`) instead. An image without DAB (brown) signal, e.g. an H&E tile
   given to the IHC mode, gets zero positives and a warning.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bundle.io import ImageError, read_rgb, write_csv, write_image, write_json
from bundle.ki67.points import Ki67Cells, circle_polygon, ki67_points, overlay_points
from bundle.ki67.pseudo_labels import (
    CLASS_COLOURS,
    CLASS_NAMES,
    IGNORE,
    NEGATIVE,
    POSITIVE,
    Ki67PseudoLabeler,
    NoDABWarning,
    dab_fraction,
)
from bundle.nuclei.handlers import NucleiImageHandler
from bundle.runs import POINT_FIELDS, run_items

logger = logging.getLogger(__name__)

__all__ = ["Ki67Runner", "Ki67ImageHandler", "stain_runner"]


class Ki67Runner:
    """Ki-67 positive / negative cells for a folder, a datalist or single images (label-free).

    Per image ``<stem>`` in ``output_dir``: ``points/<stem>.csv`` (``image,x,y,class,score``; x = column, y = row,
    class ``Positive`` / ``Negative``), ``geojson/<stem>.geojson`` (QuPath detections: 12-gon of radius
    ``marker_radius`` per cell, classification Positive red / Negative blue), ``overlays/<stem>.png`` (positive red,
    negative blue rings); then ``summary.csv`` (per image: n_positive, n_negative, n_cells, ki67_index, dab_fraction,
    seconds) and ``summary.json`` (folder totals, folder Ki-67 index, skipped files).

    Whole slides (pyramidal TIFF / SVS ..., :func:`bundle.wsi.is_wsi`; ``method="network"`` only) are streamed tile by
    tile over the tissue (:class:`bundle.wsi.SlideTiles` with its IHC tissue mask, ``wsi_*`` options as in
    :class:`bundle.nuclei.runner.NucleiRunner`; each tile read with a margin of max(64 px, 3 nucleus diameters), a cell
    kept by the tile whose core holds its point). Points
    and GeoJSON are in level-0 pixels and written tile by tile; ``tiles/<stem>.csv`` holds the counts and index of
    every tile (level-0 ``x, y`` of its top-left corner); the overlay is the slide's thumbnail with positive cells red
    and negative blue; the summary row adds ``tiles`` and the **hotspot**: the highest tile index among tiles with at
    least ``hotspot_min_cells`` cells (``hotspot_ki67_index``, ``hotspot_x``, ``hotspot_y``, ``hotspot_cells``). The
    no-DAB rule is applied once per slide, on the tissue of its thumbnail, not per tile (a tile of negative tumour has
    no brown; glass would dilute the fraction).

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

    H&E nuclei in the same config (``ki67_infer.json --stain he``) run :class:`bundle.nuclei.runner.NucleiRunner`
    instead (:func:`stain_runner`).
    """

    def __init__(self, network=None, data=None, output_dir="eval/ki67", ckpt_path=None, device="cpu",
                 method: str = "network", predictor=None, cells=None, wsi=None, hotspot_min_cells: int = 100,
                 seed: int = 0, write_overlays: bool = True, datalist_key: str = "testing"):
        from bundle.inferers import TilePredictor
        from bundle.wsi import SlideOptions

        if method not in ("network", "classical"):
            raise ValueError(f"unknown method {method!r} (use 'network' or 'classical')")
        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.predictor = TilePredictor() if predictor is None else predictor
        self.cells = Ki67Cells() if cells is None else cells
        self.wsi = SlideOptions() if wsi is None else wsi
        self.write_overlays, self.datalist_key = write_overlays, datalist_key
        self.method, self.seed = method, int(seed)
        self.hotspot_min_cells = int(hotspot_min_cells)
        if self.hotspot_min_cells < 0:
            raise ValueError(f"hotspot_min_cells must be >= 0, got {hotspot_min_cells}")
        self.labeler = None

    @property
    def resample(self) -> float:
        """The factor tiles are resized by before the network (:attr:`bundle.inferers.TilePredictor.resample`)."""
        return self.predictor.resample

    def items(self) -> list:
        """Same inputs as :meth:`bundle.nuclei.runner.NucleiRunner.items` (list, file, datalist JSON or folder)."""
        from bundle.wsi import input_items

        return input_items(self.data, self.datalist_key)

    def detect(self, rgb: np.ndarray, path: str = "image"):
        """(H, W, 3) uint8 -> (points (N, 2) (row, col), classes (N,), scores (N,), dab_fraction)."""
        frac = dab_fraction(rgb)
        if self.method == "classical":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoDABWarning)
                pts, cls = self.labeler.points(rgb, path)
            score = np.ones(len(pts), np.float32)
        else:
            prob = self.predictor(self.network, rgb, self.device)
            c = self.cells
            pts, cls, score = ki67_points(prob, c.threshold, c.nucleus_diameter, point_mode=c.point_mode)
        if frac < self.cells.min_dab_fraction:
            n_pos = int((cls == POSITIVE).sum())
            logger.warning(f"{path}: no DAB (brown) signal (brown pixel fraction {frac:.4f}) - is this an H&E image? "
                           f"reporting 0 positive cells ({n_pos} network positive(s) relabelled negative)")
            cls = np.full(len(pts), NEGATIVE, np.uint8)
        return pts, cls, score, frac

    def run_image(self, item) -> dict:
        from bundle.io import write_geojson

        path = item["image"]
        rgb = read_rgb(path, min_size=32)
        stem = Path(path).stem
        t0 = time.perf_counter()
        pts, cls, score, frac = self.detect(rgb, path)
        sec = time.perf_counter() - t0
        rows = [{"image": stem, "x": int(c), "y": int(r), "class": CLASS_NAMES[int(k)], "score": round(float(s), 4)}
                for (r, c), k, s in zip(pts, cls, score)]
        csv_path = self.output_dir / "points" / f"{stem}.csv"
        write_csv(csv_path, rows, fieldnames=POINT_FIELDS)
        polys = [circle_polygon(r, c, self.cells.marker_radius) for r, c in pts]
        props = [{"classification": {"name": CLASS_NAMES[int(k)], "color": list(CLASS_COLOURS[int(k)])},
                  "measurements": {"score": round(float(s), 4)}} for k, s in zip(cls, score)]
        write_geojson(self.output_dir / "geojson" / f"{stem}.geojson", polys, props)
        if self.write_overlays:
            write_image(self.output_dir / "overlays" / f"{stem}.png",
                        overlay_points(rgb, pts, cls, radius=max(2, int(round(self.cells.nucleus_diameter / 3)))))
        n_pos, n_neg = int((cls == POSITIVE).sum()), int((cls == NEGATIVE).sum())
        return {"image": stem, "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                "ki67_index": round(n_pos / (n_pos + n_neg), 4) if n_pos + n_neg else 0.0,
                "dab_fraction": round(frac, 4), "seconds": round(sec, 3), "height": rgb.shape[0],
                "width": rgb.shape[1]}

    def run_slide(self, item) -> dict:
        """One whole slide, streamed tile by tile (see the class docstring)."""
        from bundle.io import remove_stale_parts

        path = item["image"]
        if self.method != "network":
            raise ValueError(f"{path}: whole slides need method 'network' (the classical labeller is fitted on tiles)")
        stem = Path(path).stem
        outputs = (self.output_dir / "points" / f"{stem}.csv", self.output_dir / "geojson" / f"{stem}.geojson")
        for out in outputs:  # a killed earlier run of this slide leaves its temporaries behind
            remove_stale_parts(out)
        slide = self.wsi.open(path, margin=max(64, int(round(3 * self.cells.nucleus_diameter))), tissue="density")
        slide.check_mpp(0.25 * 20.0 / self.cells.nucleus_diameter)  # the default diameter, 20 px, is set for 0.25 um/px
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
        no_dab = bool(tiles) and frac < self.cells.min_dab_fraction
        if no_dab:
            logger.warning(f"{path}: no DAB (brown) signal (brown pixel fraction {frac:.4f} of the thumbnail's tissue) "
                           "- is this an H&E slide? reporting 0 positive cells")
        if not tiles:
            logger.warning(f"{path}: no tissue found; writing empty outputs")
        h_threshold = (slide.hematoxylin_threshold() or None) if tiles and input_channels(self.network) == 4 else None
        tile_rows = []
        ov = thumb.copy() if self.write_overlays else None
        s = thumb.shape[0] / slide.level_sizes[0][0]  # level-0 px -> thumbnail px
        with streamed_outputs(outputs[0], POINT_FIELDS, outputs[1]) as add:
            for r, c, rgb in tqdm(slide, total=len(tiles), desc=f"{stem} tiles", unit="tile", leave=False):
                prob = self.predictor(self.network, rgb, self.device, h_threshold)
                cl = self.cells
                pts, cls, score = ki67_points(prob, cl.threshold, cl.nucleus_diameter, point_mode=cl.point_mode)
                if no_dab:
                    cls = np.full(len(pts), NEGATIVE, np.uint8)
                off_r, off_c = slide.last_offset
                core = ((pts[:, 0] >= off_r) & (pts[:, 0] < off_r + min(slide.tile_size, slide.size[0] - r))
                        & (pts[:, 1] >= off_c) & (pts[:, 1] < off_c + min(slide.tile_size, slide.size[1] - c)))
                pts, cls, score = pts[core], cls[core], score[core]
                yx = (pts - np.array([off_r, off_c]) + np.array([r, c])) * ds  # level-0 pixels
                rows = [{"image": stem, "x": round(float(x), 2), "y": round(float(y), 2), "class": CLASS_NAMES[int(k)],
                         "score": round(float(sc), 4)} for (y, x), k, sc in zip(yx, cls, score)]
                add(rows, [circle_polygon(y, x, self.cells.marker_radius * ds) for y, x in yx],
                    [{"classification": {"name": CLASS_NAMES[int(k)], "color": list(CLASS_COLOURS[int(k)])},
                      "measurements": {"score": round(float(sc), 4)}} for k, sc in zip(cls, score)])
                n_pos, n_neg = int((cls == POSITIVE).sum()), int((cls == NEGATIVE).sum())
                tile_rows.append({"x": round(c * ds), "y": round(r * ds), "n_positive": n_pos, "n_negative": n_neg,
                                  "n_cells": n_pos + n_neg,
                                  "ki67_index": round(n_pos / (n_pos + n_neg), 4) if n_pos + n_neg else 0.0})
                if ov is not None:  # cells drawn as they come: nothing kept per cell
                    for (y, x), k in zip((yx * s).astype(int), cls):
                        ov[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = CLASS_COLOURS[int(k)]
        write_csv(self.output_dir / "tiles" / f"{stem}.csv", tile_rows,
                  fieldnames=("x", "y", "n_positive", "n_negative", "n_cells", "ki67_index"))
        if ov is not None:
            write_image(self.output_dir / "overlays" / f"{stem}.png", ov)
        n_pos = int(sum(t["n_positive"] for t in tile_rows))
        n_neg = int(sum(t["n_negative"] for t in tile_rows))
        hot = max((t for t in tile_rows if t["n_cells"] >= self.hotspot_min_cells), key=lambda t: t["ki67_index"],
                  default=None)
        if hot is None and tile_rows:
            logger.warning(f"{path}: no tile has {self.hotspot_min_cells} cells; no hotspot reported")
        return {"image": stem, "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                "ki67_index": round(n_pos / (n_pos + n_neg), 4) if n_pos + n_neg else 0.0,
                "dab_fraction": round(frac, 4), "seconds": round(time.perf_counter() - t0, 3),
                "height": slide.level_sizes[0][0], "width": slide.level_sizes[0][1], "tiles": len(tile_rows),
                "hotspot_ki67_index": hot["ki67_index"] if hot else "", "hotspot_x": hot["x"] if hot else "",
                "hotspot_y": hot["y"] if hot else "", "hotspot_cells": hot["n_cells"] if hot else ""}

    def run(self) -> dict:

        from bundle.checkpoints import load_network_weights

        items = self.items()
        if self.method == "network":
            if self.network is None:
                raise ValueError("Ki67Runner: method 'network' needs a network (or use method 'classical')")
            if self.ckpt_path:
                load_network_weights(self.network, self.ckpt_path, map_location=self.device)
            self.network.to(self.device).eval()
            if getattr(self.network, "head", None) is not None and self.network.head.out_channels != 3:
                raise ValueError(f"Ki67Runner: the network has {self.network.head.out_channels} output channels; "
                                 "the IHC mode needs 3 (background / positive / negative)")
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
        if self.method == "classical" and tile_paths:
            self.labeler = Ki67PseudoLabeler(self.cells.nucleus_diameter, min_dab_fraction=self.cells.min_dab_fraction,
                                             seed=self.seed).fit(tile_paths)
        one = lambda it: self.run_slide(it) if is_wsi(it["image"]) else self.run_image(it)  # noqa: E731
        rows, skipped = run_items(readable, one, "Ki-67", skipped)
        if not rows:
            raise ImageError(f"{self.data}: no image could be processed ({len(skipped)} skipped: "
                             f"{skipped[0] if skipped else ''})")
        write_csv(self.output_dir / "summary.csv", rows)
        n_pos = int(sum(r["n_positive"] for r in rows))
        n_neg = int(sum(r["n_negative"] for r in rows))
        summary = {"n_images": len(rows), "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                   "ki67_index": n_pos / (n_pos + n_neg) if n_pos + n_neg else 0.0,
                   "mean_image_ki67_index": float(np.mean([r["ki67_index"] for r in rows])),
                   "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
                   "method": self.method, "n_skipped": len(skipped), "skipped": skipped}
        write_json(self.output_dir / "summary.json", summary)
        if skipped:
            logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
        logger.info(f"Ki-67: {len(rows)} image(s), {n_pos} positive / {n_neg} negative cells, index "
                    f"{summary['ki67_index']:.3f}; outputs in {self.output_dir}")
        return summary


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
