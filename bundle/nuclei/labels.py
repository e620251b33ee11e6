# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Training labels derived from network outputs (METHODS.md 1.4-1.5), as pure scikit-image style functions.

* :func:`points_from_probability` -- nuclei centres from a detection network's foreground probability:
  blur, threshold, local maxima, merge of close maxima.
* :func:`voronoi_label` -- the segmentation network's partial label from points: Voronoi edges = background (0),
  a small disk at each point = foreground (1), everything else = ignore (2).

Points are always (N, 2) arrays of (row, col) pixel coordinates (note: ``bundle.metrics.point_scores`` and the
BCData readers use whatever order they are given; convert with ``pts[:, ::-1]`` for (x, y)).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch

from bundle.distributed import rank_zero_first
from bundle.io import (
    item_name,
    ImageError,
    load_datalist,
    read_mask,
    read_rgb,
    usable_items,
    write_csv,
    write_npy,
)
from bundle.points import check_points, point_settings
from bundle.runs import is_stale, settings_changed, split_items

logger = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND", "FOREGROUND", "IGNORE", "voronoi_cells", "voronoi_label", "instance_target",
    "prepare_detection_labels", "prepare_segmentation_labels"
]

BACKGROUND, FOREGROUND, IGNORE = 0, 1, 2


def voronoi_cells(points: np.ndarray, shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Discrete Voronoi partition of the image by nearest point (Euclidean distance transform with indices).

    Args:
        points: (N, 2) (row, col) inside ``shape``; duplicates are allowed (they share one cell).
        shape: (H, W).
    Returns:
        cells (H, W) int32 with values 1..N (cell of point i is i + 1; 0 everywhere when N = 0),
        dist (H, W) float64 Euclidean distance to the nearest point (inf when N = 0).
        Equidistant pixels go to one of the tied points (scipy's choice).
    """
    from scipy import ndimage as ndi

    shape = (int(shape[0]), int(shape[1]))
    pts = check_points(points, shape)
    if len(pts) == 0:
        return np.zeros(shape, np.int32), np.full(shape, np.inf)
    seeds = np.zeros(shape, np.int32)
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1, dtype=np.int32)
    dist, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[ri, ci], dist


def voronoi_label(points: np.ndarray, shape: Sequence[int], disk_radius: float = 2,
                  edge_mode: str = "inner") -> np.ndarray:
    """Partial segmentation label from points (Qu et al. 2019 / PSM): Voronoi edges, point disks, ignore.

    The Voronoi cells are computed with :func:`voronoi_cells`; the edges are the cell boundary pixels from
    ``skimage.segmentation.find_boundaries(cells, connectivity=1, mode=edge_mode)``. With the default ``"inner"``
    both cells' pixels along a shared border are marked, so an edge is about 2 px wide and centred on the
    perpendicular bisector, like the reference's inner polygon outlines; ``"thick"`` widens it. The image border
    is not an edge.

    Args:
        points: (N, 2) (row, col), integer or float (rounded), inside ``shape``.
        shape: (H, W) of the label.
        disk_radius: foreground disk radius in px (Euclidean, ``<=``; 2 = ``skimage.morphology.disk(2)``).
    Returns:
        (H, W) uint8: 0 = background (Voronoi edges), 1 = foreground (disks at points; they win over edges),
        2 = ignore (the rest). No points -> all 2.
    """
    from skimage.segmentation import find_boundaries

    cells, dist = voronoi_cells(points, shape)
    label = np.full(cells.shape, IGNORE, np.uint8)
    if cells.max() == 0:
        return label
    label[find_boundaries(cells, connectivity=1, mode=edge_mode)] = BACKGROUND
    label[dist <= disk_radius] = FOREGROUND
    return label


def instance_target(inst: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Three-class, instance-aware training label from a (pseudo) instance map.

    Every pixel of an instance that touches another label (background or another instance, 4-connectivity) is
    *boundary*; the rest of the instance is *interior*. A network trained on it separates touching nuclei by
    their shared boundary, and :func:`bundle.nuclei.postprocess.instances_from_three_class` turns its output back into
    instances.

    Args:
        inst: (H, W) integer instance map, 0 = background.
        boundary_width: boundary thickness in px (>= 1), grown inwards from the instance border.
    Returns:
        (H, W) uint8: 0 = background, 1 = interior, 2 = boundary.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"instance_target expects a 2-D (H, W) instance map, got shape {inst.shape}")
    fg = inst > 0
    edge = find_boundaries(inst, connectivity=1, mode="inner") & fg
    if boundary_width > 1:
        edge = ndi.binary_dilation(edge, iterations=int(boundary_width) - 1) & fg
    out = np.zeros(inst.shape, np.uint8)
    out[fg] = 1
    out[edge] = 2
    return out


def _items_with_pseudo(data, pseudo_dir, datalist_key="training", min_size=32) -> list:
    items = load_datalist(data, datalist_key) if not isinstance(data, (list, tuple)) else list(data)
    pseudo_dir = Path(pseudo_dir)
    if not pseudo_dir.is_dir():
        raise FileNotFoundError(f"{pseudo_dir}: pseudo-mask folder not found (run psm_infer first)")
    out, missing = [], []
    for it in items:
        it = it if isinstance(it, dict) else {"image": it}
        mask = pseudo_dir / f"{item_name(it)}.png"
        if mask.is_file():
            out.append({**it, "mask": str(mask)})
        else:
            missing.append(str(mask))
    if missing:
        logger.warning(f"{len(missing)} image(s) have no pseudo mask and are left out, e.g. {missing[0]}")
    if not out:
        raise ImageError(f"{pseudo_dir}: no pseudo mask matches an image of {data}")
    return usable_items(out, min_size=min_size)


@rank_zero_first()  # under torchrun: rank 0 writes the labels, the others then reuse them
def prepare_detection_labels(data, pseudo_dir, label_dir, target: str = "three", val_fraction: float = 0.1,
                             seed: int = 0, min_distance: int = 6, ignore_band: int = 0,
                             datalist_key: str = "training") -> dict:
    """Write the detection network's training labels (:func:`bundle.nuclei.detection.detection_target`) for every tile
    with a pseudo mask, and split the tiles into training / held-back validation (no ground truth involved).

    Returns:
        ``{"training": [...], "validation": [...]}``, items ``{"image", "mask" (pseudo mask), "label" (.npy)}``.
        Labels newer than their pseudo mask are reused (a rerun skips the work).
    """
    from bundle.nuclei.detection import detection_target

    items = _items_with_pseudo(data, pseudo_dir, datalist_key)
    label_dir = Path(label_dir)
    redo = settings_changed(label_dir, {"target": target, "min_distance": min_distance, "ignore_band": ignore_band})
    for it in items:
        out = label_dir / f"{item_name(it)}.npy"
        if redo or is_stale(out, it["mask"]):
            mask = read_mask(it["mask"])
            lab = detection_target(mask, target, min_distance=min_distance, ignore_band=ignore_band)
            write_npy(out, lab[None])
        it["label"] = str(out)
    train, val = split_items(items, val_fraction, seed)
    logger.info(f"detection labels ({target}) in {label_dir}: {len(train)} training / {len(val)} held-back tiles")
    return {"training": train, "validation": val}


@rank_zero_first()  # under torchrun: rank 0 writes the labels, the others then reuse them
def prepare_segmentation_labels(data, pseudo_dir, label_dir, det_network, det_ckpt, device="cpu",
                                keep_foreground: bool = False, val_fraction: float = 0.1, seed: int = 0,
                                point_threshold: float = 0.5, datalist_key: str = "training",
                                size_scale: float = 1.0, point_source: str = "det") -> dict:
    """Take points on every tile and write the segmentation labels
    (:func:`bundle.nuclei.detection.segmentation_targets`:
    pseudo mask + Voronoi) as (2, H, W) uint8 ``.npy`` plus ``points/<tile>.csv``.

    ``point_source="det"`` (the PSM method) runs the trained detection network and takes its points
    (:func:`bundle.nuclei.detection.detection_points`); labels newer than the detection checkpoint are reused.
    ``point_source="mask"`` takes the centres of the pseudo mask's own distance-transform watershed instances
    (:func:`bundle.nuclei.detection.mask_points`), so no detection network is needed (``det_ckpt`` may be missing).
    ``size_scale`` (:func:`bundle.scale.size_scale`, 0.5 for 20x tiles) scales the point extraction
    (:func:`bundle.points.point_settings`) and the Voronoi disks (radius 2 px at 40x).

    Returns:
        ``{"training": [...], "validation": [...]}`` as :func:`prepare_detection_labels`.
    """
    from bundle.checkpoints import load_network_weights
    from bundle.inferers import predict_probability
    from bundle.nuclei.detection import detection_points, mask_points, segmentation_targets
    from bundle.scale import scaled

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
        stem = item_name(it)
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
