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
   workflow (:class:`bundle.pipeline.NucleiRunner`) instead. An image without DAB (brown) signal, e.g. an H&E tile
   given to the IHC mode, gets zero positives and a warning.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .handlers import NucleiImageHandler
from .io import ImageError, load_datalist, read_rgb, usable_items, write_csv, write_image, write_json, write_npy
from .pipeline import POINT_FIELDS, NucleiRunner, is_stale, settings_changed, split_items
from .postprocess import resample_factor

logger = logging.getLogger(__name__)

__all__ = ["BACKGROUND", "POSITIVE", "NEGATIVE", "IGNORE", "CLASS_NAMES", "optical_density", "dab_fraction",
           "Ki67PseudoLabeler", "point_label", "prepare_ki67_labels", "run_name", "round_checkpoints", "teacher_list",
           "ki67_points", "region_centroids", "overlay_points", "Ki67Runner", "Ki67ImageHandler", "synthetic_ihc_tile",
           "read_bcdata_item", "NoDABWarning"]

BACKGROUND, POSITIVE, NEGATIVE, IGNORE = 0, 1, 2, 255
CLASS_NAMES = {POSITIVE: "Positive", NEGATIVE: "Negative"}
CLASS_COLOURS = {POSITIVE: (255, 0, 0), NEGATIVE: (0, 0, 255)}


class NoDABWarning(UserWarning):
    """An image given to the IHC mode has no DAB (brown) signal."""


# ------------------------------------------------------------------------------------------------ colour features
def optical_density(rgb: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 optical density ``-log((I + 1) / 256)``, optionally smoothed."""
    od = -np.log((np.asarray(rgb, np.float32) + 1.0) / 256.0)
    if sigma > 0:
        from scipy import ndimage as ndi

        od = np.stack([ndi.gaussian_filter(od[..., c], sigma) for c in range(3)], -1)
    return od.astype(np.float32)


def _hd_of_od(od: np.ndarray) -> np.ndarray:
    """(..., 3) OD -> (..., 2) haematoxylin and DAB concentrations (scikit-image's H-E-DAB deconvolution)."""
    from skimage.color import hed_from_rgb

    hed = np.asarray(od, np.float64) @ hed_from_rgb
    return hed[..., [0, 2]]


def dab_fraction(rgb: np.ndarray, margin: float = 10.0, min_od: float = 0.6) -> float:
    """Fraction of 'brown' pixels (R > G > B by ``margin`` grey levels each and summed OD > ``min_od``).

    H&E tiles (pink / purple: green is the lowest channel) give ~0 (MoNuSeg test: <= 0.00013); BCData Ki-67 tiles
    0.047-0.326 (docs/results/ki67_benchmark.md). Used to recognise an image without DAB signal.
    """
    f = np.asarray(rgb, np.float32)
    brown = (f[..., 0] - f[..., 1] > margin) & (f[..., 1] - f[..., 2] > margin)
    od = -np.log((f + 1) / 256).sum(-1)
    return float((brown & (od > min_od)).mean())


def _blob_points(mask: np.ndarray, min_distance: int, min_area: int, min_thickness: float = 0.0) -> np.ndarray:
    """(N, 2) (row, col) nucleus centres of a binary mask: peaks of the smoothed distance transform, one or more
    per connected component of at least ``min_area`` px. Peaks where the mask is thinner than ``min_thickness`` px
    (distance to the mask's edge, i.e. half the local width) are dropped: thin streaks are not nuclei centres."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import label

    if not mask.any():
        return np.zeros((0, 2), np.int64)
    lab = label(mask)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    pk = peak_local_max(dist, min_distance=max(1, int(min_distance)), labels=lab, exclude_border=False)
    if len(pk) == 0:
        return np.zeros((0, 2), np.int64)
    areas = np.bincount(lab.ravel())
    pk = pk[areas[lab[pk[:, 0], pk[:, 1]]] >= min_area]
    if min_thickness > 0 and len(pk):
        pk = pk[ndi.distance_transform_edt(mask)[pk[:, 0], pk[:, 1]] >= min_thickness]
    return pk.astype(np.int64)


def _negative_threshold(v: np.ndarray) -> float:
    """Otsu threshold of haematoxylin OD values clipped at their 99th percentile; inf when empty or flat."""
    from .transforms import threshold_otsu_or_zero

    v = np.asarray(v, np.float32).ravel()
    if not len(v):
        return float("inf")
    v = np.clip(v, 0, np.percentile(v, 99))
    return threshold_otsu_or_zero(v) if np.ptp(v) > 0 else float("inf")


class Ki67PseudoLabeler:
    """Label-free positive / negative nuclei points of IHC tiles from colour alone (see module docstring).

    Args:
        nucleus_diameter: typical nucleus diameter in px (20 scores best on BCData, 30 measured worse). Sets
            ``min_distance`` (d/2), ``min_area`` (0.3 * pi * (d/2)^2) and ``merge_distance`` (0.6 d).
        sigma: Gaussian smoothing of the OD (px) before clustering / thresholding (also damps JPEG blocks).
        n_clusters: K of the OD K-Means (background + stain clusters).
        min_dab_fraction: an image whose :func:`dab_fraction` is below this has no DAB signal: no positives and a
            :class:`NoDABWarning`.
        h_threshold: fixed haematoxylin OD threshold for negatives (``None`` = Otsu over the folder).
        seed: K-Means seed.
        min_thickness: drop blob centres where the stain mask is thinner than this (px, half the local width;
            0 = off). Spindle-shaped stromal nuclei are thin streaks that BCData does not annotate.
        negative_threshold: ``"folder"`` (one Otsu haematoxylin threshold for the folder, fitted) or ``"tile"``
            (each tile's own Otsu threshold of its non-positive pixels, as the H&E teacher does per image).

    Use: ``lab = Ki67PseudoLabeler().fit(list_of_rgb)``, then ``points, classes = lab.points(rgb)``.
    """

    def __init__(self, nucleus_diameter: float = 20.0, sigma: float = 1.5, n_clusters: int = 4,
                 min_dab_fraction: float = 0.002, h_threshold: float | None = None, seed: int = 0,
                 max_pixels: int = 400_000, min_thickness: float = 0.0, negative_threshold: str = "folder"):
        if negative_threshold not in ("folder", "tile"):
            raise ValueError(f"negative_threshold must be 'folder' or 'tile', got {negative_threshold!r}")
        self.negative_threshold = negative_threshold
        self.d = float(nucleus_diameter)
        self.min_thickness = float(min_thickness)
        self.sigma, self.n_clusters, self.seed = float(sigma), int(n_clusters), int(seed)
        self.min_dab_fraction, self.h_threshold, self.max_pixels = float(min_dab_fraction), h_threshold, max_pixels
        self.km = None
        self.positive_clusters: list[int] = []

    @property
    def min_distance(self) -> int:
        return max(2, int(round(self.d / 2)))

    @property
    def min_area(self) -> int:
        return max(4, int(round(0.3 * np.pi * (self.d / 2) ** 2)))

    @property
    def merge_distance(self) -> float:
        return 0.6 * self.d

    def _features(self, rgb):
        od = optical_density(rgb, self.sigma)
        h = np.maximum(_hd_of_od(od)[..., 0], 0).astype(np.float32)
        return od, h

    def fit(self, images: Sequence) -> "Ki67PseudoLabeler":
        """Fit the OD K-Means and the haematoxylin threshold on a list of (H, W, 3) uint8 tiles or paths."""
        from sklearn.cluster import KMeans

        images = list(images)
        if not images:
            raise ValueError("Ki67PseudoLabeler.fit needs at least one image")
        rng = np.random.default_rng(self.seed)
        per = max(1000, self.max_pixels // len(images))
        feats, hs = [], []
        for im in images:
            rgb = read_rgb(im) if isinstance(im, (str, Path)) else np.asarray(im)
            od, h = self._features(rgb)
            idx = rng.choice(od.shape[0] * od.shape[1], size=min(per, od.shape[0] * od.shape[1]), replace=False)
            feats.append(od.reshape(-1, 3)[idx])
            hs.append((h.reshape(-1)[idx], rgb))
        X = np.concatenate(feats)
        k = min(self.n_clusters, max(2, len(np.unique(X.round(3), axis=0))))
        self.km = KMeans(k, n_init=3, random_state=self.seed).fit(X)
        c = self.km.cluster_centers_
        bg = int(np.argmin(np.linalg.norm(c, axis=1)))
        # brown (DAB) absorbs blue light at least as much as red; haematoxylin (blue) absorbs red more than blue.
        # (Deconvolution of the centre is not used: near-black DAB clusters deconvolve as haematoxylin-dominant.)
        self.positive_clusters = [j for j in range(k) if j != bg and c[j, 2] >= c[j, 0]]
        if self.h_threshold is None:
            vals = []
            for (h, rgb), f in zip(hs, feats):
                lab = self.km.predict(f)
                vals.append(h[~np.isin(lab, self.positive_clusters)])
            self.h_threshold_ = _negative_threshold(np.concatenate(vals))
        else:
            self.h_threshold_ = float(self.h_threshold)
        logger.info(f"Ki-67 pseudo labeller: {k} OD clusters (background {bg}, positive {self.positive_clusters}), "
                    f"haematoxylin threshold {self.h_threshold_:.4f}")
        return self

    def masks(self, rgb: np.ndarray):
        """(positive mask, negative mask) of a tile, both (H, W) bool."""
        from scipy import ndimage as ndi

        if self.km is None:
            raise RuntimeError("Ki67PseudoLabeler: call fit() first")
        od, h = self._features(rgb)
        lab = self.km.predict(od.reshape(-1, 3).astype(self.km.cluster_centers_.dtype)).reshape(od.shape[:2])
        pos = np.isin(lab, self.positive_clusters)
        t = self.h_threshold_
        if self.negative_threshold == "tile" and self.h_threshold is None:
            t_tile = _negative_threshold(h[~pos])
            t = t_tile if np.isfinite(t_tile) else t
        mp = ndi.binary_opening(pos, iterations=1)
        mn = (h > t) & ~ndi.binary_dilation(mp, iterations=2)
        mn = ndi.binary_opening(mn, iterations=1)
        return mp, mn

    def points(self, rgb: np.ndarray, path: str = "image"):
        """(points (N, 2) int (row, col), classes (N,) uint8 in {1 positive, 2 negative}) of one tile.

        An image without DAB signal (:func:`dab_fraction` < ``min_dab_fraction``) has all its nuclei negative
        and raises a :class:`NoDABWarning` naming ``path``.
        """
        from .labels import merge_close_points

        rgb = np.asarray(rgb)
        mp, mn = self.masks(rgb)
        if dab_fraction(rgb) < self.min_dab_fraction:
            warnings.warn(f"{path}: no DAB (brown) signal - is this an H&E image? reporting 0 positive cells",
                          NoDABWarning, stacklevel=2)
            mn = mn | mp
            mp = np.zeros_like(mp)
        a = _blob_points(mp, self.min_distance, self.min_area, self.min_thickness)
        b = _blob_points(mn, self.min_distance, self.min_area, self.min_thickness)
        pts = np.concatenate([a, b]).reshape(-1, 2)
        cls = np.r_[np.full(len(a), POSITIVE), np.full(len(b), NEGATIVE)].astype(np.uint8)
        if len(pts) > 1:  # positives win over negatives found at the same nucleus
            keep = merge_close_points(pts, np.r_[np.full(len(a), 2.0), np.ones(len(b))], self.merge_distance, p=2)
            pts, cls = pts[keep], cls[keep]
        return pts.astype(np.int64), cls


# ------------------------------------------------------------------------------------------------ training labels
def point_label(points: np.ndarray, classes: np.ndarray, shape, disk_radius: float = 5.0,
                ignore_radius: float = 10.0) -> np.ndarray:
    """(H, W) uint8 3-class point label: 0 background, ``classes[i]`` (1 positive / 2 negative) in a disk of
    ``disk_radius`` around point i, 255 (ignore) from there out to ``ignore_radius``. Disks are assigned by the
    nearest point (touching disks do not overwrite each other's centre)."""
    from scipy import ndimage as ndi

    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.uint8)
    pts = np.rint(np.asarray(points, np.float64).reshape(-1, 2)).astype(np.int64)
    if len(pts) == 0:
        return out
    pts = np.clip(pts, 0, [h - 1, w - 1])
    seeds = np.zeros((h, w), np.int32)
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1)
    dist, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cls_map = np.r_[0, np.asarray(classes, np.uint8).reshape(-1)][seeds[ri, ci]]
    out[dist <= ignore_radius] = IGNORE
    disk = dist <= disk_radius
    out[disk] = cls_map[disk]
    return out


def run_name(round: int = 1, seed: int = 0, prefix: str = "ki67") -> str:
    """Folder name of one Ki-67 training run under ``models/`` (``prefix`` ``ki67_train`` under ``eval/``): ``ki67``
    for round 1 seed 0, ``ki67_r2`` for round 2, ``ki67_seed1`` / ``ki67_r2_seed1`` for other seeds."""
    return prefix + ("" if int(round) == 1 else f"_r{int(round)}") + ("" if int(seed) == 0 else f"_seed{int(seed)}")


def round_checkpoints(bundle_root, round: int) -> list[str]:
    """``model.pt`` of every seed of training round ``round`` under ``<bundle_root>/models`` (seed 0 first): the
    teachers of round ``round + 1``, whose probabilities are averaged. Raises FileNotFoundError naming the folder
    when there is none (train that round first)."""
    models = Path(bundle_root) / "models"
    base = run_name(round)
    seeds = sorted(int(m.group(1)) for d in models.glob(f"{base}_seed*")
                   if (m := re.fullmatch(re.escape(base) + r"_seed(\d+)", d.name)))
    found = [str(models / run_name(round, s) / "model.pt") for s in [0] + seeds]
    found = [f for f in found if Path(f).is_file()]
    if not found:
        raise FileNotFoundError(f"{models / base}/model.pt: no round-{round} checkpoint to teach round {round + 1} "
                                f"(train round {round} first)")
    return found


def teacher_list(teacher_ckpt) -> list[str]:
    """Checkpoint paths from ``None`` / ``""`` (no teacher), one path, a comma-separated string or a list of paths."""
    if not teacher_ckpt:
        return []
    if isinstance(teacher_ckpt, (str, os.PathLike)):
        teacher_ckpt = str(teacher_ckpt).split(",")
    return [str(t).strip() for t in teacher_ckpt if str(t).strip()]


def label_radii(nucleus_diameter: float, disk_radius: float | None = None,
                ignore_radius: float | None = None) -> tuple[float, float]:
    """Radii (px) of :func:`point_label`'s class disk and ignore ring: ``disk_radius`` / ``ignore_radius``, or by
    default a quarter / half of ``nucleus_diameter``."""
    d = float(nucleus_diameter)
    return (0.25 * d if disk_radius is None else float(disk_radius),
            0.5 * d if ignore_radius is None else float(ignore_radius))


def label_settings(nucleus_diameter: float, min_thickness: float = 0.0, disk_radius: float | None = None,
                   negative_threshold: str = "folder", label_seed: int = 0, ignore_radius: float | None = None,
                   threshold: float = 0.5, teachers=(), teacher_point_mode: str = "peak") -> dict:
    """The record (``<label_dir>/settings.json``) of what :func:`prepare_ki67_labels` made a label folder with; a
    different record rebuilds the labels. Arguments as there (``teachers``: :func:`teacher_list`); settings that do
    not apply (the colour labeller's for a self-training round, the teachers' threshold for round 1) are None.
    ``teacher_point_mode`` is recorded only when it is not the default ``"peak"``, so folders written before it existed
    stay valid."""
    out = {"nucleus_diameter": float(nucleus_diameter), "min_thickness": float(min_thickness),
           "disk_radius": disk_radius, "negative_threshold": None if teachers else negative_threshold,
           "label_seed": None if teachers else int(label_seed), "ignore_radius": ignore_radius,
           "threshold": float(threshold) if teachers else None}
    if teachers and teacher_point_mode != "peak":
        out["teacher_point_mode"] = teacher_point_mode
    return out


def prepare_ki67_labels(data, label_dir, nucleus_diameter: float = 20.0, disk_radius: float | None = None,
                        ignore_radius: float | None = None, val_fraction: float = 0.1, seed: int = 0,
                        datalist_key: str = "training", min_size: int = 64, teacher_ckpt=None,
                        base_channels: int = 16, threshold: float = 0.5, device="cpu",
                        min_thickness: float = 0.0, negative_threshold: str = "folder", label_seed: int = 0,
                        mpp: float | None = None, teacher_point_mode: str = "peak") -> dict:
    """Label-free 3-class training labels for every readable tile of ``data`` (folder or datalist).

    Round 1 (``teacher_ckpt=None``): fits :class:`Ki67PseudoLabeler` (``min_thickness`` and ``negative_threshold``
    passed on, K-Means seed ``label_seed``) on all tiles (no annotation is read). ``seed`` only draws the held-back
    split: the labels of a folder do not depend on the training seed, so runs with several seeds in one bundle root
    share them and may start side by side.
    Self-training rounds (``teacher_ckpt`` = a trained 3-class ResUNet-34 with ``base_channels``): the points are
    the teacher's own detections (:func:`ki67_points` with ``teacher_point_mode``, flip TTA). ``teacher_ckpt`` may
    also be a list (or a comma-separated string) of checkpoints, e.g. round-1 runs with different seeds: their
    flip-TTA probabilities are averaged (an ensemble teacher). Each teacher sees the tiles at the pixel size it was
    trained at: tiles of ``mpp`` um/px (None = the 40x reference) are resized for a teacher whose ``settings.json``
    records another ``mpp`` (:func:`bundle.handlers.trained_mpp`) and its probabilities resized back. Writes
    ``<label_dir>/<stem>.npy`` ((1, H, W) uint8 :func:`point_label`) and ``<label_dir>/points/<stem>.csv`` (``x, y,
    class``); a rerun reuses labels newer than their image (and teacher) when the label settings
    (``label_dir/settings.json``) are unchanged. Unreadable tiles are reported in one line and left out.

    Returns:
        ``{"training": [...], "validation": [...]}`` with items ``{"image", "label"}`` (held-back split, seeded).
    """
    items = load_datalist(data, datalist_key) if not isinstance(data, (list, tuple)) else [
        d if isinstance(d, dict) else {"image": d} for d in data]
    label_dir = Path(label_dir)
    try:
        usable = usable_items([{"image": it["image"]} for it in items], min_size=min_size)
    except ImageError as e:
        raise ImageError(f"{data}: {e}") from None
    good = [{"image": it["image"], "label": str(label_dir / f"{Path(it['image']).stem}.npy")} for it in usable]
    teachers = teacher_list(teacher_ckpt)
    redo = settings_changed(label_dir, label_settings(nucleus_diameter, min_thickness, disk_radius, negative_threshold,
                                                      label_seed, ignore_radius, threshold, teachers,
                                                      teacher_point_mode))
    todo = [it for it in good if redo or is_stale(Path(it["label"]), it["image"], *teachers)]
    if todo:
        d = float(nucleus_diameter)
        r_disk, r_ign = label_radii(d, disk_radius, ignore_radius)
        if teachers:
            from .detection import predict_probability
            from .handlers import SETTINGS_NAME, load_network_weights, resunet_input_channels, trained_mpp
            from .networks import ResUNet34
            from .postprocess import size_scale

            nets = [load_network_weights(ResUNet34(resunet_input_channels(t), 3, base_channels=base_channels), t,
                                         map_location=device).to(device).eval() for t in teachers]
            hint = f"copy the teacher's training {SETTINGS_NAME} beside it to have tiles resized"
            scales = [resample_factor(size_scale(mpp), trained_mpp(t, mpp, hint)) for t in teachers]
            for t, f in zip(teachers, scales):
                if f != 1.0:
                    logger.info(f"teacher {t}: tiles resized x{f:.3g} to the pixel size it was trained at")
            logger.info(f"Ki-67 self-training labels from the teacher{'s (averaged)' if len(nets) > 1 else ''} "
                        f"{', '.join(teachers)}")
        else:
            labeler = Ki67PseudoLabeler(nucleus_diameter=d, seed=label_seed, min_thickness=min_thickness,
                                        negative_threshold=negative_threshold)
            labeler.fit([it["image"] for it in good])
        for it in todo:
            rgb = read_rgb(it["image"])
            if teachers:
                prob = np.mean([predict_probability(n, rgb, device, tta=True, scale=f) for n, f in zip(nets, scales)],
                               axis=0)
                pts, cls, _ = ki67_points(prob, threshold, d, point_mode=teacher_point_mode)
                if dab_fraction(rgb) < 0.002:
                    logger.warning(f"{it['image']}: no DAB (brown) signal - is this an H&E image? 0 positive cells")
                    cls = np.full(len(pts), NEGATIVE, np.uint8)
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pts, cls = labeler.points(rgb, it["image"])
                for w in caught:
                    logger.warning(str(w.message))
            lab = point_label(pts, cls, rgb.shape[:2], r_disk, r_ign)
            write_npy(it["label"], lab[None])
            stem = Path(it["image"]).stem
            rows = [{"x": int(c), "y": int(r), "class": CLASS_NAMES[int(k)]} for (r, c), k in zip(pts, cls)]
            csv_path = label_dir / "points" / f"{stem}.csv"
            write_csv(csv_path, rows, fieldnames=("x", "y", "class"))
    train, val = split_items(good, val_fraction, seed)
    logger.info(f"Ki-67 pseudo labels in {label_dir}: {len(train)} training / {len(val)} held-back tiles")
    return {"training": train, "validation": val}


# ------------------------------------------------------------------------------------------------ inference
POINT_MODES = ("centroid", "peak")


def check_point_mode(point_mode: str) -> str:
    """``point_mode`` if it is one of :data:`POINT_MODES`, else a one-line ValueError."""
    if point_mode not in POINT_MODES:
        raise ValueError(f"unknown point_mode {point_mode!r}; use one of {', '.join(POINT_MODES)}")
    return point_mode


def ki67_points(prob: np.ndarray, threshold: float = 0.5, nucleus_diameter: float = 20.0, sigma: float = 2.0,
                point_mode: str = "centroid"):
    """Per-class points from a (3, H, W) background / positive / negative probability map.

    Cells are the peaks of the Gaussian-smoothed ``1 - P(background)`` above ``threshold`` (:func:`bundle.labels.
    points_from_probability`, min distance d/2, merge distance 0.6 d (L1)), each with the class whose smoothed
    probability is larger at the peak. ``point_mode`` places each cell's point:

    * ``"centroid"`` (default): the centroid of the peak's region, its watershed basin of the smoothed foreground
      within ``foreground > threshold`` (the centre of the nucleus the network sees; a point whose basin is empty
      stays at its peak);
    * ``"peak"``: the peak itself (before 2026-11-24; the self-training labels of ``prepare_ki67_labels`` still use
      it by default, ``teacher_point_mode``).

    Returns (points (N, 2) int (row, col), classes (N,) uint8, scores (N,) float32 = smoothed foreground at the peak).
    """
    from scipy import ndimage as ndi

    from .labels import points_from_probability

    check_point_mode(point_mode)
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 3 or prob.shape[0] != 3:
        raise ValueError(f"ki67_points expects a (3, H, W) background/positive/negative map, got {prob.shape}")
    d = float(nucleus_diameter)
    fg = 1.0 - prob[0]
    pts = points_from_probability(fg, sigma_or_blur=sigma, threshold=threshold, min_distance=max(2, int(d / 2)),
                                  merge_distance=0.6 * d, blur="gaussian")
    if len(pts) == 0:
        return pts, np.zeros(0, np.uint8), np.zeros(0, np.float32)
    sp = ndi.gaussian_filter(prob[1], sigma)[pts[:, 0], pts[:, 1]]
    sn = ndi.gaussian_filter(prob[2], sigma)[pts[:, 0], pts[:, 1]]
    cls = np.where(sp >= sn, POSITIVE, NEGATIVE).astype(np.uint8)
    smooth = ndi.gaussian_filter(fg, sigma)
    score = smooth[pts[:, 0], pts[:, 1]]
    if point_mode == "centroid":
        pts = region_centroids(smooth, pts, threshold)
    return pts, cls, score.astype(np.float32)


def region_centroids(fg: np.ndarray, points: np.ndarray, threshold: float) -> np.ndarray:
    """Move each point to the centroid of its region: the marker-controlled watershed basin of ``-fg`` within
    ``fg > threshold`` (``skimage.segmentation.watershed``).

    fg: (H, W) float foreground score; points: (N, 2) int (row, col) markers. Returns (N, 2) int (row, col), rounded;
    a point whose basin is empty (its marker below ``threshold``) keeps its position.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    points = np.asarray(points).reshape(-1, 2).astype(int)
    if len(points) == 0:
        return points
    markers = np.zeros(fg.shape, np.int32)
    idx = np.arange(1, len(points) + 1)
    markers[points[:, 0], points[:, 1]] = idx
    mask = fg > threshold
    basins = watershed(-fg, markers, mask=mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.array(ndi.center_of_mass(mask, basins, idx), float).reshape(-1, 2)
    c = np.where(np.isfinite(c), c, points)
    return np.round(c).astype(int)


def _circle(r, c, radius, n=12):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([c + radius * np.cos(a), r + radius * np.sin(a)], 1)


def overlay_points(rgb: np.ndarray, points: np.ndarray, classes: np.ndarray, radius: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``rgb`` with a ring per point: positive red, negative blue."""
    from skimage.draw import circle_perimeter

    out = np.asarray(rgb).copy()
    h, w = out.shape[:2]
    for (r, c), k in zip(np.asarray(points).reshape(-1, 2), np.asarray(classes).reshape(-1)):
        for rad in (radius, radius + 1):
            rr, cc = circle_perimeter(int(r), int(c), rad, shape=(h, w))
            out[rr, cc] = CLASS_COLOURS.get(int(k), (0, 255, 0))
    return out


class Ki67Runner:
    """Ki-67 positive / negative cells for a folder, a datalist or single images (label-free).

    Per image ``<stem>`` in ``output_dir``: ``points/<stem>.csv`` (``image,x,y,class,score``; x = column, y = row,
    class ``Positive`` / ``Negative``), ``geojson/<stem>.geojson`` (QuPath detections: 12-gon of radius
    ``marker_radius`` per cell, classification Positive red / Negative blue), ``overlays/<stem>.png`` (positive red,
    negative blue rings); then ``summary.csv`` (per image: n_positive, n_negative, n_cells, ki67_index, dab_fraction,
    seconds) and ``summary.json`` (folder totals, folder Ki-67 index, skipped files).

    Whole slides (pyramidal TIFF / SVS ..., :func:`bundle.wsi.is_wsi`; ``method="network"`` only) are streamed tile by
    tile over the tissue (:class:`bundle.wsi.SlideTiles` with its IHC tissue mask, ``wsi_*`` options as in
    :class:`bundle.pipeline.NucleiRunner`; each tile read with a margin of max(64 px, 3 nucleus diameters), a cell
    kept by the tile whose core holds its point). Points
    and GeoJSON are in level-0 pixels and written tile by tile; ``tiles/<stem>.csv`` holds the counts and index of
    every tile (level-0 ``x, y`` of its top-left corner); the overlay is the slide's thumbnail with positive cells red
    and negative blue; the summary row adds ``tiles`` and the **hotspot**: the highest tile index among tiles with at
    least ``hotspot_min_cells`` cells (``hotspot_ki67_index``, ``hotspot_x``, ``hotspot_y``, ``hotspot_cells``). The
    no-DAB rule is applied once per slide, on the tissue of its thumbnail, not per tile (a tile of negative tumour has
    no brown; glass would dilute the fraction).

    Args:
        network: 3-class (background / positive / negative) per-pixel classifier (``method="network"``).
        stain: ``"ihc"`` (this workflow) or ``"he"`` (delegates to :class:`bundle.pipeline.NucleiRunner`: H&E
            nuclei instances, with a 2- or 3-channel nuclei network and its checkpoint).
        method: ``"network"`` (trained ki67 network) or ``"classical"`` (:class:`Ki67PseudoLabeler` on the folder,
            no network: the pseudo labels themselves).
        threshold: foreground threshold of :func:`ki67_points`.  nucleus_diameter: px.
        point_mode: where a cell's point goes, ``"centroid"`` of its region (default) or the probability ``"peak"``
            (:func:`ki67_points`).
        min_dab_fraction: below it an image has no DAB: zero positives and a warning.
        hotspot_min_cells: a slide tile counts for the hotspot when it has at least this many cells.
        network_mpp: pixel size (um/px) the network was trained at (:func:`bundle.handlers.trained_mpp`); tiles at
            another one (``0.25 / size_scale``) are resized to it before the network, as in
            :class:`bundle.pipeline.NucleiRunner`. ``None``: no resizing.
    Other args as :class:`bundle.pipeline.NucleiRunner`; extra keyword arguments go to it (``stain="he"`` only).
    """

    def __init__(self, network=None, data=None, output_dir="eval/ki67", ckpt_path=None, device="cpu",
                 stain: str = "ihc", method: str = "network", threshold: float = 0.5,
                 nucleus_diameter: float = 20.0, min_dab_fraction: float = 0.002, marker_radius: float = 4.0,
                 roi_size: int = 512, overlap: float = 0.25, tta: bool = True, write_overlays: bool = True,
                 datalist_key: str = "testing", seed: int = 0, wsi_level: int | None = 0,
                 wsi_mpp: float | None = None, wsi_tile: int = 1024, wsi_backend: str = "tifffile",
                 wsi_min_tissue: float = 0.001, hotspot_min_cells: int = 100, network_mpp: float | None = None,
                 point_mode: str = "centroid", **he_kwargs):
        if stain not in ("ihc", "he"):
            raise ValueError(f"unknown stain {stain!r} (use 'ihc' for Ki-67 DAB + haematoxylin or 'he' for H&E)")
        if method not in ("network", "classical"):
            raise ValueError(f"unknown method {method!r} (use 'network' or 'classical')")
        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.roi_size, self.overlap, self.tta = roi_size, overlap, tta
        self.write_overlays, self.datalist_key, self.he_kwargs = write_overlays, datalist_key, he_kwargs
        self.stain, self.method, self.threshold = stain, method, float(threshold)
        self.nucleus_diameter, self.min_dab_fraction = float(nucleus_diameter), float(min_dab_fraction)
        self.marker_radius, self.seed = float(marker_radius), int(seed)
        self.wsi = {"wsi_level": wsi_level, "wsi_mpp": wsi_mpp, "wsi_tile": int(wsi_tile), "wsi_backend": wsi_backend,
                    "wsi_min_tissue": float(wsi_min_tissue)}
        self.hotspot_min_cells = int(hotspot_min_cells)
        self.point_mode = check_point_mode(point_mode)
        if not 0.0 <= self.wsi["wsi_min_tissue"] <= 1.0:
            raise ValueError(f"wsi_min_tissue must be in [0, 1], got {wsi_min_tissue}")
        if self.hotspot_min_cells < 0:
            raise ValueError(f"hotspot_min_cells must be >= 0, got {hotspot_min_cells}")
        self.labeler = None
        self.network_mpp = network_mpp
        self.resample = resample_factor(float(he_kwargs.get("size_scale", 1.0)), network_mpp)

    def _nuclei_runner(self) -> NucleiRunner:
        """The H&E nuclei workflow with the same inputs (composition, not inheritance)."""
        return NucleiRunner(self.network, self.data, self.output_dir, ckpt_path=self.ckpt_path, device=self.device,
                            roi_size=self.roi_size, overlap=self.overlap, tta=self.tta,
                            write_overlays=self.write_overlays, datalist_key=self.datalist_key, **self.wsi,
                            network_mpp=self.network_mpp, **self.he_kwargs)

    def items(self) -> list:
        """Same inputs as :meth:`bundle.pipeline.NucleiRunner.items` (list, file, datalist JSON or folder)."""
        return self._nuclei_runner().items()

    def detect(self, rgb: np.ndarray, path: str = "image"):
        """(H, W, 3) uint8 -> (points (N, 2) (row, col), classes (N,), scores (N,), dab_fraction)."""
        from .detection import predict_probability

        frac = dab_fraction(rgb)
        if self.method == "classical":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoDABWarning)
                pts, cls = self.labeler.points(rgb, path)
            score = np.ones(len(pts), np.float32)
        else:
            prob = predict_probability(self.network, rgb, self.device, self.roi_size, self.overlap, tta=self.tta,
                                       scale=self.resample)
            pts, cls, score = ki67_points(prob, self.threshold, self.nucleus_diameter, point_mode=self.point_mode)
        if frac < self.min_dab_fraction:
            n_pos = int((cls == POSITIVE).sum())
            logger.warning(f"{path}: no DAB (brown) signal (brown pixel fraction {frac:.4f}) - is this an H&E image? "
                           f"reporting 0 positive cells ({n_pos} network positive(s) relabelled negative)")
            cls = np.full(len(pts), NEGATIVE, np.uint8)
        return pts, cls, score, frac

    def run_image(self, item) -> dict:
        from .io import write_geojson

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
        polys = [_circle(r, c, self.marker_radius) for r, c in pts]
        props = [{"classification": {"name": CLASS_NAMES[int(k)], "color": list(CLASS_COLOURS[int(k)])},
                  "measurements": {"score": round(float(s), 4)}} for k, s in zip(cls, score)]
        write_geojson(self.output_dir / "geojson" / f"{stem}.geojson", polys, props)
        if self.write_overlays:
            write_image(self.output_dir / "overlays" / f"{stem}.png",
                        overlay_points(rgb, pts, cls, radius=max(2, int(round(self.nucleus_diameter / 3)))))
        n_pos, n_neg = int((cls == POSITIVE).sum()), int((cls == NEGATIVE).sum())
        return {"image": stem, "n_positive": n_pos, "n_negative": n_neg, "n_cells": n_pos + n_neg,
                "ki67_index": round(n_pos / (n_pos + n_neg), 4) if n_pos + n_neg else 0.0,
                "dab_fraction": round(frac, 4), "seconds": round(sec, 3), "height": rgb.shape[0],
                "width": rgb.shape[1]}

    def run_slide(self, item) -> dict:
        """One whole slide, streamed tile by tile (see the class docstring)."""
        from .io import remove_stale_parts
        from .wsi import SlideTiles

        path = item["image"]
        if self.method != "network":
            raise ValueError(f"{path}: whole slides need method 'network' (the classical labeller is fitted on tiles)")
        stem = Path(path).stem
        outputs = (self.output_dir / "points" / f"{stem}.csv", self.output_dir / "geojson" / f"{stem}.geojson")
        for out in outputs:  # a killed earlier run of this slide leaves its temporaries behind
            remove_stale_parts(out)
        slide = SlideTiles(path, backend=self.wsi["wsi_backend"], level=self.wsi["wsi_level"], mpp=self.wsi["wsi_mpp"],
                           tile_size=self.wsi["wsi_tile"], margin=max(64, int(round(3 * self.nucleus_diameter))),
                           min_tissue=self.wsi["wsi_min_tissue"], tissue="density")
        slide.check_mpp(0.25 * 20.0 / self.nucleus_diameter)  # the default diameter, 20 px, is set for 0.25 um/px
        try:
            return self._run_slide(slide, stem, outputs)
        finally:
            slide.close()

    def _run_slide(self, slide, stem: str, outputs) -> dict:
        from tqdm import tqdm

        from .detection import input_channels, predict_probability
        from .io import streamed_outputs

        path, ds, t0 = slide.path, slide.downsample, time.perf_counter()
        thumb, tissue = slide.thumbnail(max_side=2048), slide.mask  # the mask is made from the same thumbnail
        frac = dab_fraction(thumb[tissue]) if tissue.any() else 0.0
        tiles = slide.core_tiles()
        no_dab = bool(tiles) and frac < self.min_dab_fraction
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
                prob = predict_probability(self.network, rgb, self.device, self.roi_size, self.overlap, tta=self.tta,
                                           hematoxylin_threshold=h_threshold, scale=self.resample)
                pts, cls, score = ki67_points(prob, self.threshold, self.nucleus_diameter, point_mode=self.point_mode)
                if no_dab:
                    cls = np.full(len(pts), NEGATIVE, np.uint8)
                off_r, off_c = slide.last_offset
                core = ((pts[:, 0] >= off_r) & (pts[:, 0] < off_r + min(slide.tile_size, slide.size[0] - r))
                        & (pts[:, 1] >= off_c) & (pts[:, 1] < off_c + min(slide.tile_size, slide.size[1] - c)))
                pts, cls, score = pts[core], cls[core], score[core]
                yx = (pts - np.array([off_r, off_c]) + np.array([r, c])) * ds  # level-0 pixels
                rows = [{"image": stem, "x": round(float(x), 2), "y": round(float(y), 2), "class": CLASS_NAMES[int(k)],
                         "score": round(float(sc), 4)} for (y, x), k, sc in zip(yx, cls, score)]
                add(rows, [_circle(y, x, self.marker_radius * ds) for y, x in yx],
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
        from tqdm import tqdm

        from .handlers import load_network_weights

        if self.stain == "he":
            logger.info("stain 'he': running the H&E nuclei workflow (bundle.pipeline.NucleiRunner)")
            return self._nuclei_runner().run()
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
        from .wsi import is_wsi

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
            self.labeler = Ki67PseudoLabeler(self.nucleus_diameter, min_dab_fraction=self.min_dab_fraction,
                                             seed=self.seed).fit(tile_paths)
        for it in tqdm(readable, desc="Ki-67", unit="img"):
            try:
                rows.append(self.run_slide(it) if is_wsi(it["image"]) else self.run_image(it))
            except (ImageError, ValueError, FileNotFoundError) as e:
                logger.warning(f"skipped {e}")
                skipped.append(str(e))
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


# ------------------------------------------------------------------------------------------------ data helpers
def synthetic_ihc_tile(size: int = 256, n_positive: int = 8, n_negative: int = 12, radius: float = 8.0,
                       seed: int = 0, dab: bool = True):
    """A synthetic DAB + haematoxylin tile by Beer-Lambert mixing of scikit-image's stain vectors: dark brown
    (DAB + some haematoxylin) and pale blue (haematoxylin) elliptical nuclei on a light background with noise.

    Returns:
        rgb (size, size, 3) uint8, points (N, 2) int (row, col), classes (N,) uint8 (1 positive, 2 negative).
        ``dab=False`` makes every nucleus haematoxylin-only (classes all 2).
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb_from_hed

    rng = np.random.default_rng(seed)
    n = n_positive + n_negative
    pts = []
    tries = 0
    while len(pts) < n and tries < 5000:
        tries += 1
        p = rng.uniform(radius + 2, size - radius - 2, 2)
        if all(np.hypot(*(p - q)) > 2.6 * radius for q in pts):
            pts.append(p)
    pts = np.asarray(pts).reshape(-1, 2)
    cls = np.r_[np.full(min(n_positive, len(pts)), POSITIVE), np.full(max(0, len(pts) - n_positive), NEGATIVE)]
    if not dab:
        cls[:] = NEGATIVE
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    conc = np.zeros((size, size, 3), np.float32)  # H, E, DAB concentrations
    conc[..., 0] += 0.02 + 0.01 * rng.random((size, size))
    conc[..., 2] += (0.03 if dab else 0.0) * rng.random((size, size))
    for (r, c), k in zip(pts, cls):
        a, b = radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - r, xx - c
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        m = (u ** 2 + v ** 2) <= 1
        if k == POSITIVE:
            conc[m, 2] += rng.uniform(0.5, 0.9)
            conc[m, 0] += 0.1
        else:
            conc[m, 0] += rng.uniform(0.12, 0.25)
    conc = np.stack([ndi.gaussian_filter(conc[..., i], 1.0) for i in range(3)], -1)
    od = conc @ rgb_from_hed
    rgb = 255 * np.exp(-od * np.log(10)) + rng.normal(0, 2.0, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), np.rint(pts).astype(np.int64), cls.astype(np.uint8)


def read_bcdata_item(root, stem: str):
    """BCData ground truth of one image (scoring only): ``root/annotations/{positive,negative}/<stem>.h5``
    (:func:`bundle.annotations.read_bcdata_points`) -> (points (N, 2) (x, y), classes (N,) 1 / 2)."""
    from .annotations import read_bcdata_points

    root = Path(root)
    p = read_bcdata_points(root / "annotations" / "positive" / f"{stem}.h5")
    n = read_bcdata_points(root / "annotations" / "negative" / f"{stem}.h5")
    return np.concatenate([p, n]).reshape(-1, 2), np.r_[np.full(len(p), POSITIVE), np.full(len(n), NEGATIVE)]
