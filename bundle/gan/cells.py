# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Unsupervised nuclei finder and 32x32 white-padded cell crops for the cell-level InfoGAN (METHODS.md section 3).

The classical pipeline of the paper (Hu, Tang et al. 2019; reference code ``utils/segmentation_functions.py``),
re-implemented with numpy / scikit-image (no HistomicsTK):

1. stain normalisation: Reinhard (CIELAB mean/std of the tissue pixels matched to a target: a reference image, or
   by default the mean statistics of the whole input set, so no external reference is needed);
2. colour deconvolution with a Macenko stain matrix estimated per image; the haematoxylin column is identified
   **explicitly** as the estimated stain vector closest (cosine) to the Ruifrok haematoxylin vector (Macenko's
   column order is arbitrary); Ruifrok H&E vectors are the fallback when too little tissue is stained;
3. threshold: Otsu on the (smoothed) haematoxylin concentration of the tissue, holes filled;
4. multiscale LoG (scale-normalised, max over sigmas) -> local maxima as seeds -> clustering of the mask pixels to
   the seeds (watershed on the negative LoG response, the role of HistomicsTK's max-clustering);
5. size rules: objects smaller than ``min_area`` are dropped; larger than ``max_area`` are opened (disk of
   ``open_radius``) and the pieces within the size range kept.

Crops: each nucleus is cut from the normalised image at its bounding box, pixels outside the (dilated) nucleus
mask are set to white, crops larger than 32 px are shrunk (aspect kept) and every crop is centred on a white
32x32 canvas. Cells can also come from an instance map (e.g. the project's PSM / segmentation output, or labels)
or from points (e.g. detections or annotations): then a ``window`` around each point is cropped and the stained
component under the point kept.

:class:`CellExtractor` runs this over a folder / datalist and writes ``cells.npy`` (N, 32, 32, 3) uint8,
``cells.csv`` (one row per cell: index, source image, centre row/col, area, bbox, source), ``summary.json`` and a
preview montage.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bundle.annotations import read_points
from bundle.io import ImageError, datalist_items, item_name, read_rgb, write_csv, write_image, write_json, write_npy
from bundle.stain import (
    hematoxylin_concentration,
    lab_stats,
    optical_density,
    reinhard_normalize,
    stain_matrix,
    tissue_by_od,
)

logger = logging.getLogger(__name__)

__all__ = [
    "multiscale_log", "find_nuclei", "NucleusFinder", "crop_cells", "crop_at_points", "montage",
    "CellExtractor", "load_cells"
]


def multiscale_log(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Scale-normalised blob response: max over ``sigmas`` of ``-sigma^2 * LoG(image)`` (bright blobs > 0)."""
    from scipy.ndimage import gaussian_laplace

    img = image.astype(np.float32)
    return np.max(np.stack([-(s ** 2) * gaussian_laplace(img, s) for s in sigmas]), axis=0)


def find_nuclei(rgb: np.ndarray, min_radius: float = 8.0, max_radius: float = 16.0, n_scales: int = 4,
                threshold_scale: float = 1.0, min_area: int = 80, max_area: int = 2500, open_radius: int = 5,
                smooth_sigma: float = 1.0, stain_method: str = "macenko") -> np.ndarray:
    """Unsupervised nuclei instance map of an (already stain-normalised) RGB image.

    Haematoxylin concentration (explicit H column) -> Gaussian ``smooth_sigma`` -> Otsu threshold over tissue
    pixels (times ``threshold_scale``) -> holes filled -> multiscale LoG seeds (sigmas from ``min_radius`` to
    ``max_radius`` divided by sqrt 2, seeds >= ``min_radius`` px apart) -> watershed of the negative LoG response
    from the seeds inside the mask -> size rules (``min_area`` .. ``max_area`` px; bigger objects are opened with
    a disk of ``open_radius`` and the pieces in range kept).

    The defaults suit 40x H&E (MoNuSeg nuclei: median area ~700 px); scale the radii and areas for other
    magnifications. Returns (H, W) int32, 0 = background, 1..N.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.morphology import disk
    from skimage.segmentation import relabel_sequential, watershed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"find_nuclei expects an (H, W, 3) RGB image, got shape {rgb.shape}")
    h = hematoxylin_concentration(rgb, stain_matrix(rgb, stain_method)[0])
    if smooth_sigma > 0:
        h = ndi.gaussian_filter(h, smooth_sigma)
    tissue = tissue_by_od(rgb)
    vals = h[tissue] if tissue.sum() > 100 else h.ravel()
    if np.ptp(vals) <= 1e-6:
        return np.zeros(h.shape, np.int32)
    mask = h > threshold_otsu(vals) * threshold_scale
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_opening(mask, iterations=1)
    if not mask.any():
        return np.zeros(h.shape, np.int32)
    sigmas = np.linspace(min_radius, max_radius, max(1, n_scales)) / np.sqrt(2.0)
    resp = multiscale_log(h, sigmas)
    comps = label(mask, connectivity=2)
    peaks = peak_local_max(resp, min_distance=max(1, int(round(min_radius))), labels=comps, exclude_border=False)
    markers = np.zeros(h.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    inst = watershed(-resp, markers, mask=mask)
    unmarked = mask & (inst == 0)  # components without a seed stay whole
    if unmarked.any():
        extra = label(unmarked, connectivity=2)
        inst[unmarked] = extra[unmarked] + inst.max()
    out = np.zeros(h.shape, np.int32)
    n = 0
    fp = disk(max(1, int(open_radius)))
    for rp in regionprops(inst):
        if rp.area < min_area:
            continue
        r0, c0, r1, c1 = rp.bbox
        if rp.area <= max_area:
            n += 1
            out[r0:r1, c0:c1][rp.image] = n
            continue
        pieces = label(ndi.binary_opening(rp.image, structure=fp), connectivity=1)
        for pp in regionprops(pieces):
            if min_area <= pp.area <= max_area:
                n += 1
                out[r0:r1, c0:c1][pieces == pp.label] = n
    return relabel_sequential(out)[0].astype(np.int32)


@dataclass
class NucleusFinder:
    """The classical nucleus finder's settings (:func:`find_nuclei`: multiscale LoG between ``min_radius`` and
    ``max_radius`` px over ``n_scales`` scales, threshold x ``threshold_scale``, objects of ``min_area`` to ``max_area``
    px, opening of ``open_radius``, ``stain_method`` "macenko" or "ruifrok"); call it on a stain-normalised RGB tile."""

    min_radius: float = 8.0
    max_radius: float = 16.0
    n_scales: int = 4
    threshold_scale: float = 1.0
    min_area: int = 80
    max_area: int = 2500
    open_radius: int = 5
    stain_method: str = "macenko"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) int32 instance map."""
        return find_nuclei(rgb, **asdict(self))


def _place(crop: np.ndarray, size: int) -> np.ndarray:
    """Shrink ``crop`` (h, w, 3) so its longest side is <= size (aspect kept), centre it on a white size x size."""
    from PIL import Image

    h, w = crop.shape[:2]
    if max(h, w) > size:
        f = size / max(h, w)
        nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
        crop = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.BILINEAR))
        h, w = nh, nw
    canvas = np.full((size, size, 3), 255, np.uint8)
    t, l = (size - h) // 2, (size - w) // 2
    canvas[t : t + h, l : l + w] = crop
    return canvas


def crop_cells(rgb: np.ndarray, inst: np.ndarray, size: int = 32, dilate: int = 1):
    """One white-padded ``size`` x ``size`` crop per instance of ``inst``.

    Returns (crops (N, size, size, 3) uint8, rows: list of dicts with ``row``, ``col`` (centroid), ``area``,
    ``bbox`` "r0 c0 r1 c1", ``label`` (the instance id)).
    """
    from scipy import ndimage as ndi
    from skimage.measure import regionprops

    inst = np.asarray(inst)
    if inst.shape != rgb.shape[:2]:
        raise ValueError(f"instance map shape {inst.shape} does not match image {rgb.shape[:2]}")
    H, W = inst.shape
    crops, rows = [], []
    for rp in regionprops(inst.astype(np.int32)):
        r0, c0, r1, c1 = rp.bbox
        R0, C0, R1, C1 = max(0, r0 - dilate), max(0, c0 - dilate), min(H, r1 + dilate), min(W, c1 + dilate)
        m = inst[R0:R1, C0:C1] == rp.label
        if dilate > 0:
            m = ndi.binary_dilation(m, iterations=int(dilate))
        crop = np.where(m[..., None], rgb[R0:R1, C0:C1], 255).astype(np.uint8)
        crops.append(_place(crop, size))
        rows.append({"row": round(float(rp.centroid[0]), 1), "col": round(float(rp.centroid[1]), 1),
                     "area": int(rp.area), "bbox": f"{r0} {c0} {r1} {c1}", "label": int(rp.label)})
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return arr, rows


def crop_at_points(rgb: np.ndarray, points: np.ndarray, window: int = 32, size: int = 32, mask_mode: str = "stain",
                   disc_radius: float | None = None, dilate: int = 1):
    """White-padded crops of a ``window`` x ``window`` square centred on each (row, col) point.

    ``mask_mode``: ``"stain"`` keeps the stained (total optical density > Otsu) component under the point (within
    3 px), else a disc; ``"disc"`` keeps a disc of ``disc_radius`` (default window / 4); ``"none"`` keeps the square.
    Points outside the image are dropped. Returns (crops (N, size, size, 3) uint8, rows like :func:`crop_cells`).
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    if mask_mode not in ("stain", "disc", "none"):
        raise ValueError(f"unknown mask_mode {mask_mode!r} (use 'stain', 'disc' or 'none')")
    pts = np.rint(np.asarray(points, np.float64)).astype(np.int64).reshape(-1, 2)
    H, W = rgb.shape[:2]
    half = window // 2
    pad = np.pad(rgb, ((half, half), (half, half), (0, 0)), constant_values=255)
    r = disc_radius if disc_radius is not None else window / 4.0
    yy, xx = np.mgrid[:window, :window]
    disc = (yy - half) ** 2 + (xx - half) ** 2 <= r * r
    stained = None
    if mask_mode == "stain":
        od = ndi.gaussian_filter(optical_density(rgb, log10=True).sum(-1), 1.0)
        stained = np.pad(od > threshold_otsu(od), half, constant_values=False)
    crops, rows = [], []
    for y, x in pts:
        if not (0 <= y < H and 0 <= x < W):
            continue
        win = pad[y : y + window, x : x + window]
        if mask_mode == "none":
            m = np.ones((window, window), bool)
        elif mask_mode == "disc":
            m = disc
        else:
            lab = label(stained[y : y + window, x : x + window], connectivity=1)
            near = lab[max(0, half - 3) : half + 4, max(0, half - 3) : half + 4]
            ids = near[near > 0]
            if len(ids):
                m = lab == np.bincount(ids).argmax()
                if dilate > 0:
                    m = ndi.binary_dilation(m, iterations=int(dilate))
            else:
                m = disc
        crop = np.where(m[..., None], win, 255).astype(np.uint8)
        crops.append(_place(crop, size) if window != size else crop)
        rows.append({"row": float(y), "col": float(x), "area": int(m.sum()),
                     "bbox": f"{y - half} {x - half} {y - half + window} {x - half + window}"})
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return arr, rows


def montage(cells: np.ndarray, ncol: int = 16, pad: int = 2, bg: int = 255) -> np.ndarray:
    """Grid of (N, h, w, 3) uint8 crops -> one uint8 image (at most ``ncol`` per row)."""
    cells = np.asarray(cells)
    if len(cells) == 0:
        return np.full((8, 8, 3), bg, np.uint8)
    n, h, w = cells.shape[:3]
    ncol = min(ncol, n)
    nrow = (n + ncol - 1) // ncol
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), bg, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = cells[i]
    return out


class CellExtractor:
    """Find nuclei without labels in every image of a folder / datalist and write 32x32 white-padded crops.

    Per item the cells come from (``source="auto"``): its ``label`` instance map if the datalist gives one (e.g. the
    project's PSM / segmentation output), else its ``points`` file (.h5 / .csv / .npy) if given, else the classical
    finder :func:`find_nuclei`. ``source`` may force ``"classical"``, ``"label"`` or ``"points"``.

    Args:
        normalize: ``"reinhard"`` (default; target = ``reference`` image statistics, or the mean statistics of
            all usable inputs) or ``"none"``.  size: crop side (32).  window: square cut around points.
        max_cells_per_image: keep at most this many (random, seeded) cells per image (0 = all).
        mask_mode, dilate: how a crop masks its neighbours (see :func:`crop_cells`).
        finder: :class:`NucleusFinder` (the classical finder's settings); default ``NucleusFinder()``.
        min_size, seed, datalist_key: smallest accepted image side, the random choice of cells, datalist key.

    ``run(data, output_dir)`` writes ``cells.npy``, ``cells.csv``, ``summary.json``, ``cells_preview.png``; an
    unreadable image is reported in one line naming it and skipped (listed in ``summary.json``).
    """

    def __init__(self, source: str = "auto", normalize: str = "reinhard", reference: str | None = None,
                 size: int = 32, window: int = 32, mask_mode: str = "stain", dilate: int = 1, finder=None,
                 max_cells_per_image: int = 0, min_size: int = 16, seed: int = 0, datalist_key: str = "training"):
        if source not in ("auto", "classical", "label", "points"):
            raise ValueError(f"unknown cell source {source!r} (use auto, classical, label or points)")
        if normalize not in ("reinhard", "none"):
            raise ValueError(f"unknown normalize {normalize!r} (use 'reinhard' or 'none')")
        self.source, self.normalize, self.reference = source, normalize, reference
        self.size, self.window, self.mask_mode, self.dilate = int(size), int(window), mask_mode, int(dilate)
        self.finder = NucleusFinder() if finder is None else finder
        self.max_cells, self.min_size, self.seed, self.key = int(max_cells_per_image), int(min_size), seed, datalist_key

    def _items(self, data) -> list:
        return datalist_items(data, self.key)

    def _target(self, items) -> tuple:
        if self.reference:
            return lab_stats(read_rgb(self.reference))
        stats = []
        for it in items:
            try:
                stats.append(lab_stats(read_rgb(it["image"], self.min_size)))
            except ImageError:
                continue
        if not stats:
            return None
        return np.mean([s[0] for s in stats], 0), np.mean([s[1] for s in stats], 0)

    def cells_of_image(self, rgb: np.ndarray, item: dict, target=None):
        """-> (crops, rows) for one image (``item`` may carry ``label`` / ``points``)."""
        norm = reinhard_normalize(rgb, *target) if (self.normalize == "reinhard" and target is not None) else rgb
        src = self.source
        if src == "auto":
            src = "label" if item.get("label") else "points" if item.get("points") else "classical"
        if src == "label":
            if not item.get("label"):
                raise ValueError(f"{item['image']}: source 'label' but the datalist item has no 'label'")
            from bundle.annotations import read_instance_label

            inst = read_instance_label(item["label"])
            if inst.shape != rgb.shape[:2]:
                raise ValueError(f"{item['label']}: instance map {inst.shape} does not match image {rgb.shape[:2]}")
            crops, rows = crop_cells(norm, inst, self.size, self.dilate)
        elif src == "points":
            if not item.get("points"):
                raise ValueError(f"{item['image']}: source 'points' but the datalist item has no 'points'")
            crops, rows = crop_at_points(norm, read_points(item["points"]), self.window, self.size, self.mask_mode,
                                         dilate=self.dilate)
        else:
            inst = self.finder(norm)
            crops, rows = crop_cells(norm, inst, self.size, self.dilate)
        for r in rows:
            r["source"] = src
        return crops, rows

    def run(self, data, output_dir) -> dict:
        from tqdm import tqdm

        out = Path(output_dir)
        items = self._items(data)
        target = self._target(items) if self.normalize == "reinhard" else None
        rng = np.random.default_rng(self.seed)
        all_crops, table, skipped, per_image = [], [], [], []
        t0 = time.perf_counter()
        for it in tqdm(items, desc="cells", unit="img"):
            path = str(it["image"])
            try:
                rgb = read_rgb(path, min_size=self.min_size)
                crops, rows = self.cells_of_image(rgb, it, target)
            except (ImageError, ValueError) as e:
                msg = str(e) if path in str(e) else f"{path}: {e}"
                logger.warning(f"skipped {msg}")
                skipped.append(msg)
                continue
            if self.max_cells and len(rows) > self.max_cells:
                keep = np.sort(rng.choice(len(rows), self.max_cells, replace=False))
                crops, rows = crops[keep], [rows[i] for i in keep]
            stem = item_name(it)
            for r in rows:
                table.append({"index": len(table), "image": str(Path(path).resolve()), "image_name": stem, **r})
            all_crops.append(crops)
            per_image.append({"image": stem, "n_cells": len(rows)})
        if not per_image:
            raise ImageError(f"{data}: no image could be processed ({len(skipped)} skipped"
                             f"{': ' + skipped[0] if skipped else ''})")
        cells = np.concatenate(all_crops) if all_crops else np.zeros((0, self.size, self.size, 3), np.uint8)
        if len(cells) == 0:
            raise ImageError(f"{data}: no cells found in {len(per_image)} image(s); check the image scale "
                             "(min_radius / max_radius / min_area)")
        write_npy(out / "cells.npy", cells)
        write_csv(out / "cells.csv", table)
        sel = rng.choice(len(cells), min(128, len(cells)), replace=False)
        write_image(out / "cells_preview.png", montage(cells[np.sort(sel)], 16))
        summary = {"n_cells": int(len(cells)), "n_images": len(per_image), "n_skipped": len(skipped),
                   "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2), "per_image": per_image,
                   "normalize": self.normalize, "source": self.source}
        write_json(out / "summary.json", summary)
        if skipped:
            logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
        logger.info(f"wrote {len(cells)} cells from {len(per_image)} images to {out}")
        return summary


def load_cells(path: str | os.PathLike):
    """Read ``cells.npy`` (a file, or a folder holding it) -> (N, S, S, 3) uint8 and the ``cells.csv`` rows (or []).

    Raises:
        ImageError: one line naming the file (missing, unreadable, wrong shape or dtype, empty).
    """
    import csv

    p = Path(path)
    f = p if (p.suffix.lower() == ".npy" or p.is_file()) else p / "cells.npy"
    if not f.is_file():
        raise ImageError(f"{f}: cell file does not exist (run configs/cells_extract.json first)")
    try:
        arr = np.load(f, allow_pickle=False)
    except Exception as e:
        raise ImageError(f"{f}: cannot read cells ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ImageError(f"{f}: expected (N, H, W, 3) uint8 cell crops, got {arr.shape} {arr.dtype}")
    if len(arr) == 0:
        raise ImageError(f"{f}: contains no cells")
    table = f.with_suffix(".csv")
    rows = []
    if table.is_file():
        with open(table, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if len(rows) != len(arr):
            raise ImageError(f"{table}: {len(rows)} rows but {f.name} holds {len(arr)} cells")
    return arr, rows
