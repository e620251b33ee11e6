# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Folder runners: the parts of a workflow that walk a folder of tiles and write per-image files.

:class:`PseudoMaskRunner` — tiles -> PSM map, pseudo mask (0/255 PNG) and overlay per image, plus metrics when
labels are listed. A bad file is reported in one line and skipped; outputs are written atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .io import (ImageError, load_datalist, read_mask, read_rgb, read_rgb_or_skip, remove_stale_parts, streamed_outputs,
                 usable_items, write_csv, write_image, write_json, write_npy)
from .postprocess import resample_factor

logger = logging.getLogger(__name__)

POINT_FIELDS = ("image", "x", "y", "class", "score")  # columns of every points CSV


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """(H, W, 3) uint8 image with the boundaries of ``mask`` (bool or labels) drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    out[find_boundaries(mask, mode="inner")] = colour
    return out


def write_summary(output_dir, rows: list, skipped: list, data, csv_name: str = "summary.csv") -> dict:
    """Per-image ``rows`` -> ``<output_dir>/<csv_name>`` and ``summary.json`` (means of the numeric columns,
    counts, skipped files), atomically. Raises ``ImageError`` naming ``data`` when no image was processed."""
    if not rows:
        raise ImageError(f"{data}: no image could be processed ({len(skipped)} skipped"
                         + (f": {skipped[0]})" if skipped else ")"))
    output_dir = Path(output_dir)
    write_csv(output_dir / csv_name, rows)
    numeric = [k for k in rows[0] if k != "image" and isinstance(rows[0][k], (int, float, np.floating, np.integer))]
    summary = {k: float(np.mean([r[k] for r in rows if k in r])) for k in numeric}
    summary.update({"n_images": len(rows), "n_skipped": len(skipped), "skipped": skipped})
    write_json(output_dir / "summary.json", summary)
    if skipped:
        logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
    return summary


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
        use_psm = getattr(self.scm, "needs_psm", True)
        if use_psm and self.ckpt_path:
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()
        rows, skipped = [], []
        for it in tqdm(items, desc="PSM -> pseudo masks" if use_psm else "pseudo masks", unit="img"):
            path = it["image"]
            rgb = read_rgb_or_skip(path, skipped, self.min_size)
            if rgb is None:
                continue
            stem = Path(path).stem
            t0 = time.perf_counter()
            psm = None
            if use_psm:
                x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].float().to(self.device)
                psm = self.inferer(x, self.network)[0, 0].cpu().numpy()
            t1 = time.perf_counter()
            mask = self.scm(rgb, psm)
            t2 = time.perf_counter()
            if psm is not None:
                write_image(self.output_dir / "psm" / f"{stem}.png", (psm * 255 + 0.5).astype(np.uint8))
            write_image(self.output_dir / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
            if self.write_overlays:
                write_image(self.output_dir / "overlays" / f"{stem}.png", overlay_mask(rgb, mask))
            row = {"image": stem, "foreground_fraction": float(mask.mean()), "psm_s": t1 - t0, "scm_s": t2 - t1}
            if it.get("label"):
                row.update(score_pseudo_mask(mask, read_instance_label(it["label"])))
            rows.append(row)
        summary = write_summary(self.output_dir, rows, skipped, self.data, csv_name="metrics.csv")
        logger.info(f"wrote {len(rows)} pseudo masks to {self.output_dir} (PSM {summary['psm_s']:.2f} s/img, "
                    f"SCM {summary['scm_s']:.2f} s/img)")
        return summary


def split_items(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train / held-back split of a list (at least one of each when there are >= 2 items)."""
    if val_fraction <= 0 or len(items) < 2:
        return items, items[:1] if val_fraction > 0 else []
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = min(len(items) - 1, max(1, int(round(val_fraction * len(items)))))
    val = sorted(order[:n_val].tolist())
    return [items[i] for i in range(len(items)) if i not in set(val)], [items[i] for i in val]


def is_stale(out: Path, *inputs) -> bool:
    """True when ``out`` is missing or older than any existing input path."""
    if not out.is_file():
        return True
    t = out.stat().st_mtime
    return any(Path(p).is_file() and Path(p).stat().st_mtime > t for p in inputs if p)


def settings_changed(label_dir: Path, settings: dict) -> bool:
    """Record the label settings in ``label_dir/settings.json``; True when they differ from the recorded ones
    (then every label is rewritten, so a changed option never reuses stale labels)."""
    path = Path(label_dir) / "settings.json"
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
    if old != settings:
        write_json(path, settings)
        return old is not None
    return False


def _items_with_pseudo(data, pseudo_dir, datalist_key="training", min_size=32) -> list:
    items = load_datalist(data, datalist_key) if not isinstance(data, (list, tuple)) else list(data)
    pseudo_dir = Path(pseudo_dir)
    if not pseudo_dir.is_dir():
        raise FileNotFoundError(f"{pseudo_dir}: pseudo-mask folder not found (run psm_infer first)")
    out, missing = [], []
    for it in items:
        it = it if isinstance(it, dict) else {"image": it}
        mask = pseudo_dir / f"{Path(it['image']).stem}.png"
        if mask.is_file():
            out.append({**it, "mask": str(mask)})
        else:
            missing.append(str(mask))
    if missing:
        logger.warning(f"{len(missing)} image(s) have no pseudo mask and are left out, e.g. {missing[0]}")
    if not out:
        raise ImageError(f"{pseudo_dir}: no pseudo mask matches an image of {data}")
    return usable_items(out, min_size=min_size)


def prepare_detection_labels(data, pseudo_dir, label_dir, target: str = "three", val_fraction: float = 0.1,
                             seed: int = 0, min_distance: int = 6, ignore_band: int = 0,
                             datalist_key: str = "training") -> dict:
    """Write the detection network's training labels (:func:`bundle.detection.detection_target`) for every tile
    with a pseudo mask, and split the tiles into training / held-back validation (no ground truth involved).

    Returns:
        ``{"training": [...], "validation": [...]}``, items ``{"image", "mask" (pseudo mask), "label" (.npy)}``.
        Labels newer than their pseudo mask are reused (a rerun skips the work).
    """
    from .detection import detection_target

    items = _items_with_pseudo(data, pseudo_dir, datalist_key)
    label_dir = Path(label_dir)
    redo = settings_changed(label_dir, {"target": target, "min_distance": min_distance, "ignore_band": ignore_band})
    for it in items:
        out = label_dir / f"{Path(it['image']).stem}.npy"
        if redo or is_stale(out, it["mask"]):
            mask = read_mask(it["mask"])
            lab = detection_target(mask, target, min_distance=min_distance, ignore_band=ignore_band)
            write_npy(out, lab[None])
        it["label"] = str(out)
    train, val = split_items(items, val_fraction, seed)
    logger.info(f"detection labels ({target}) in {label_dir}: {len(train)} training / {len(val)} held-back tiles")
    return {"training": train, "validation": val}


def prepare_segmentation_labels(data, pseudo_dir, label_dir, det_network, det_ckpt, device="cpu",
                                keep_foreground: bool = False, val_fraction: float = 0.1, seed: int = 0,
                                point_threshold: float = 0.5, datalist_key: str = "training",
                                size_scale: float = 1.0, point_source: str = "det") -> dict:
    """Take points on every tile and write the segmentation labels (:func:`bundle.detection.segmentation_targets`:
    pseudo mask + Voronoi) as (2, H, W) uint8 ``.npy`` plus ``points/<tile>.csv``.

    ``point_source="det"`` (the PSM method) runs the trained detection network and takes its points
    (:func:`bundle.detection.detection_points`); labels newer than the detection checkpoint are reused.
    ``point_source="mask"`` takes the centres of the pseudo mask's own distance-transform watershed instances
    (:func:`bundle.detection.mask_points`), so no detection network is needed (``det_ckpt`` may be missing).
    ``size_scale`` (:func:`bundle.postprocess.size_scale`, 0.5 for 20x tiles) scales the point extraction
    (:func:`bundle.labels.point_settings`) and the Voronoi disks (radius 2 px at 40x).

    Returns:
        ``{"training": [...], "validation": [...]}`` as :func:`prepare_detection_labels`.
    """
    from .detection import detection_points, mask_points, predict_probability, segmentation_targets
    from .handlers import load_network_weights
    from .labels import point_settings
    from .postprocess import scaled

    items = _items_with_pseudo(data, pseudo_dir, datalist_key)
    label_dir = Path(label_dir)
    device = torch.device(device)
    loaded = False
    if point_source not in ("det", "mask"):
        raise ValueError(f"point_source must be 'det' or 'mask', got {point_source!r}")
    settings = {"keep_foreground": bool(keep_foreground), "point_threshold": point_threshold}
    if size_scale != 1.0:  # recorded only when set, so label folders written before the option stay valid
        settings["size_scale"] = float(size_scale)
    if point_source != "det":
        settings["point_source"] = point_source
    redo = settings_changed(label_dir, settings)
    point_kw, disk = point_settings(size_scale), scaled(2, size_scale, integer=False, minimum=0.5)
    for it in items:
        stem = Path(it["image"]).stem
        out = label_dir / f"{stem}.npy"
        if redo or is_stale(out, it["mask"], det_ckpt if point_source == "det" else None):
            mask = read_mask(it["mask"])
            if point_source == "mask":
                pts = mask_points(mask, size_scale)
            else:
                if not loaded:
                    load_network_weights(det_network, det_ckpt, map_location=device)
                    det_network.to(device).eval()
                    loaded = True
                pts = detection_points(predict_probability(det_network, read_rgb(it["image"]), device, tta=False),
                                       point_threshold, **point_kw)
            pts = np.rint(pts).astype(np.int64)  # mask points are float centroids; labels and CSV share these
            lab = segmentation_targets(mask, pts, keep_foreground=keep_foreground, disk_radius=disk)
            write_npy(out, lab)
            write_csv(label_dir / "points" / f"{stem}.csv", [{"row": int(r), "col": int(c)} for r, c in pts])
        it["label"] = str(out)
    train, val = split_items(items, val_fraction, seed)
    logger.info(f"segmentation labels in {label_dir}: {len(train)} training / {len(val)} held-back tiles")
    return {"training": train, "validation": val}


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
        ckpt_path: weights to load (one-line error when missing or mismatched).
        mode, threshold, min_distance, min_size, grow, min_score: instance post-processing of
            :func:`bundle.detection.nuclei_from_probability`; ``markers="points"`` (default) seeds the
            ``"watershed"`` mode (``"auto"`` for a 2-channel network) with the detected points
            (:func:`bundle.detection.detection_points`), ``"distance"`` with distance-transform peaks.
        hematoxylin_prior: weight in [0, 1] of the image's own haematoxylin evidence blended into P(nucleus) before
            the instances are made (:func:`bundle.detection.blend_hematoxylin`; 0.35 selected on MoNuSeg train,
            0 = off; 2-channel networks only). The points' ``score`` is then the mean blended P(nucleus).
        roi_size, overlap, tta: sliding window and flip test-time augmentation of
            :func:`bundle.detection.predict_probability`.
        wsi_level / wsi_mpp / wsi_tile / wsi_backend: slide options (level or microns per pixel, core tile side).
        wsi_min_tissue: a slide tile is predicted only when at least this fraction of it is tissue
            (:class:`bundle.wsi.SlideTiles`). The default 0.001 keeps any tile that touches tissue: at 0.05 the thin
            strips of tissue that a tile grid cuts off at the tissue's edges were never predicted
            (``scripts/benchmark_wsi.py``). Raise it to skip near-empty tiles at the cost of those nuclei.
        write_masks: also write ``masks/<stem>.png`` (0/255 foreground of the instances) for tiles, the pseudo-mask
            format of ``det_train`` / ``seg_train``, so a trained network can teach a self-training round.
        size_scale: pixel density relative to 40x (:func:`bundle.postprocess.size_scale`; 0.5 for 20x tiles):
            scales the point extraction (:func:`bundle.labels.point_settings`) and the filled hole size (64 px at
            40x). ``min_size`` / ``min_distance`` / ``grow`` are taken as given (the configs scale their defaults).
        network_mpp: the pixel size (um/px) the network was trained at (:func:`bundle.handlers.trained_mpp`);
            tiles at another pixel size (``0.25 / size_scale``) are resized to it before the network and its
            probabilities resized back (:func:`bundle.detection.predict_probability` ``scale``), so a network
            trained at 40x sees the nuclei of 20x tiles at the size it learnt. ``None``: no resizing.
    """

    def __init__(self, network, data, output_dir, ckpt_path=None, device="cpu", mode: str = "auto",
                 markers: str = "points", roi_size: int = 512, overlap: float = 0.25, tta: bool = True,
                 min_size: int = 20, threshold: float = 0.5, min_distance: int = 6, label_format: str = "png",
                 write_overlays: bool = True,
                 datalist_key: str = "testing", wsi_level: int | None = 0, wsi_mpp: float | None = None,
                 wsi_tile: int = 1024, wsi_backend: str = "tifffile", class_name: str = "Nucleus",
                 write_masks: bool = False, grow: int = 0, hematoxylin_prior: float = 0.35, min_score: float = 0.0,
                 wsi_min_tissue: float = 0.001, size_scale: float = 1.0, network_mpp: float | None = None):
        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.mode, self.markers, self.min_size = mode, markers, min_size
        self.threshold, self.min_distance, self.grow = threshold, min_distance, int(grow)
        self.min_score = float(min_score)
        self.roi_size, self.overlap, self.tta = roi_size, overlap, tta
        self.label_format, self.write_overlays, self.datalist_key = label_format, write_overlays, datalist_key
        self.wsi_level, self.wsi_mpp, self.wsi_tile, self.wsi_backend = wsi_level, wsi_mpp, wsi_tile, wsi_backend
        self.wsi_min_tissue = float(wsi_min_tissue)
        if not 0.0 <= self.wsi_min_tissue <= 1.0:
            raise ValueError(f"wsi_min_tissue must be in [0, 1], got {wsi_min_tissue}")
        self.size_scale = float(size_scale)
        if not self.size_scale > 0:
            raise ValueError(f"size_scale must be > 0, got {size_scale}")
        self.network_mpp = None if network_mpp is None else float(network_mpp)
        self.resample = resample_factor(self.size_scale, self.network_mpp)
        self.class_name, self.write_masks = class_name, write_masks
        self.hematoxylin_prior = float(hematoxylin_prior)
        if not 0.0 <= self.hematoxylin_prior <= 1.0:
            raise ValueError(f"hematoxylin_prior must be in [0, 1], got {hematoxylin_prior}")

    def items(self) -> list:
        """A list, one image or slide file, a datalist JSON (``datalist_key``, else ``training``), or a folder
        (its images plus any slide files)."""
        from .wsi import SLIDE_SUFFIXES

        if isinstance(self.data, (list, tuple)):
            return [d if isinstance(d, dict) else {"image": d} for d in self.data]
        p = Path(self.data)
        if p.is_file() and p.suffix.lower() == ".json":
            return load_datalist(p, self.datalist_key, fallback="training")
        if p.is_file():
            return [{"image": str(p)}]
        if not p.is_dir():
            raise ImageError(f"{p}: no such file or folder")
        items = [{"image": str(f)} for f in sorted(p.iterdir()) if f.suffix.lower() in SLIDE_SUFFIXES]
        try:
            items = load_datalist(p) + items
        except ImageError:
            pass
        if not items:
            raise ImageError(f"{p}: folder has no images or slides")
        return items

    def predict(self, rgb: np.ndarray, hematoxylin_threshold: float | None = None):
        """(H, W, 3) uint8 -> (instances (H, W) int32, probabilities (C, H, W)); ``hematoxylin_threshold``: see
        :func:`bundle.detection.predict_probability` (a slide's, for its tiles)."""
        from .detection import (blend_hematoxylin, detection_points, instance_mode, instance_settings,
                                nuclei_from_probability, predict_probability)

        prob = predict_probability(self.network, rgb, self.device, self.roi_size, self.overlap, tta=self.tta,
                                   hematoxylin_threshold=hematoxylin_threshold, scale=self.resample)
        if prob.shape[0] == 2:  # measured on background / nucleus networks only (docs/README.md, item 11)
            prob = blend_hematoxylin(prob, rgb, self.hematoxylin_prior, hematoxylin_threshold)
        mode = instance_mode(self.mode, prob.shape[0])
        from .labels import point_settings

        pts = (detection_points(prob, **point_settings(self.size_scale))
               if (self.markers == "points" and mode == "watershed") else None)
        inst = nuclei_from_probability(prob, mode, min_size=self.min_size, min_distance=self.min_distance,
                                       points=pts, threshold=self.threshold, grow=self.grow,
                                       min_score=self.min_score, **instance_settings(self.size_scale))
        return inst, prob

    def _rows(self, stem, inst, prob):
        from scipy import ndimage as ndi

        from .detection import instance_points

        n = int(inst.max())
        cen = instance_points(inst)
        score = ndi.mean(1.0 - prob[0], inst, np.arange(1, n + 1)) if n else []
        return [{"image": stem, "x": round(c, 2), "y": round(r, 2), "class": self.class_name,
                 "score": round(float(s), 4)} for (r, c), s in zip(cen, score)]

    def _geojson_properties(self, rows) -> list:
        return [{"classification": {"name": self.class_name}, "measurements": {"score": r["score"]}} for r in rows]

    def _write_points(self, stem, rows, polys):
        from .io import write_geojson

        write_csv(self.output_dir / "points" / f"{stem}.csv", rows, fieldnames=POINT_FIELDS)
        write_geojson(self.output_dir / "geojson" / f"{stem}.geojson", polys, self._geojson_properties(rows))

    def run_image(self, item) -> dict:
        from .annotations import read_instance_label, write_instance_label
        from .metrics import instance_scores
        from .postprocess import instance_polygons

        path = item["image"]
        rgb = read_rgb(path, min_size=32)
        stem = Path(path).stem
        t0 = time.perf_counter()
        inst, prob = self.predict(rgb)
        sec = time.perf_counter() - t0
        suffix = ".tif" if self.label_format in ("tif", "tiff") else ".png"
        write_instance_label(self.output_dir / "labels" / f"{stem}{suffix}", inst)
        rows = self._rows(stem, inst, prob)
        polys = instance_polygons(inst)
        self._write_points(stem, rows, [polys[i] for i in sorted(polys)])
        if self.write_overlays:
            write_image(self.output_dir / "overlays" / f"{stem}.png", overlay_mask(rgb, inst))
        if self.write_masks:  # 0/255 foreground, the pseudo-mask format: lets a trained network teach a new round
            write_image(self.output_dir / "masks" / f"{stem}.png", (inst > 0).astype(np.uint8) * 255)
        row = {"image": stem, "n_nuclei": int(inst.max()), "seconds": sec, "height": rgb.shape[0],
               "width": rgb.shape[1]}
        if item.get("label"):
            row.update(instance_scores(inst, read_instance_label(item["label"])))
        return row

    def run_slide(self, item) -> dict:
        from .wsi import SlideTiles

        path = item["image"]
        stem = Path(path).stem
        outputs = (self.output_dir / "points" / f"{stem}.csv", self.output_dir / "geojson" / f"{stem}.geojson")
        for out in outputs:  # a killed earlier run of this slide leaves its (hours-long) temporaries behind
            remove_stale_parts(out)
        slide = SlideTiles(path, backend=self.wsi_backend, level=self.wsi_level, mpp=self.wsi_mpp,
                           tile_size=self.wsi_tile, margin=64, min_tissue=self.wsi_min_tissue)
        slide.check_mpp(0.25 / self.size_scale)
        try:
            return self._run_slide(slide, stem, outputs)
        finally:
            slide.close()

    def _run_slide(self, slide, stem: str, outputs) -> dict:
        from .detection import input_channels
        from .postprocess import instance_polygons

        path = slide.path
        t0 = time.perf_counter()
        centres, n_tiles, n_nuclei = [], 0, 0  # centres: one small (k, 2) array per tile, for the overview only
        tiles = slide.core_tiles()
        if not tiles:
            logger.warning(f"{path}: no tissue found; writing empty outputs")
        h_threshold = None
        if tiles and (input_channels(self.network) == 4 or self.hematoxylin_prior > 0):  # one scale per slide
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

    def run(self) -> dict:
        from tqdm import tqdm

        from .handlers import load_network_weights
        from .wsi import is_wsi

        items = self.items()
        if self.ckpt_path:
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()
        rows, skipped = [], []
        for it in tqdm(items, desc="nuclei", unit="img"):
            try:
                rows.append(self.run_slide(it) if is_wsi(it["image"]) else self.run_image(it))
            except (ImageError, ValueError, FileNotFoundError) as e:
                logger.warning(f"skipped {e}")
                skipped.append(str(e))
        summary = write_summary(self.output_dir, rows, skipped, self.data, csv_name="summary.csv")
        logger.info(f"wrote nuclei of {len(rows)} image(s) to {self.output_dir}")
        return summary


class EvaluateRunner:
    """Score instance maps against a folder of ground-truth instance maps (matched by file stem).

    Writes ``metrics.csv`` (per image: pixel F1 / IoU / precision / recall, object Dice, AJI, AJI+, PQ, DQ, SQ)
    and ``metrics.json`` (means and the settings) into ``output_dir``. Images without a matching GT are listed.
    """

    def __init__(self, pred_dir, gt_dir, output_dir, crop: int | None = None):
        self.pred_dir, self.gt_dir, self.output_dir, self.crop = Path(pred_dir), Path(gt_dir), Path(output_dir), crop

    def run(self) -> dict:
        from .annotations import read_instance_label
        from .metrics import instance_scores

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
