# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 training labels: point disks per class around each pseudo-labelled (round 1) or teacher-detected (round >= 2)
cell, written once per label folder with the settings that made them (``configs/ki67_train.json`` ``labels``)."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from bundle.distributed import rank_zero_first
from bundle.io import ImageError, item_name, load_datalist, read_rgb, usable_items, write_csv, write_npy
from bundle.ki67.points import ki67_points
from bundle.ki67.positivity import DAB_THRESHOLD
from bundle.ki67.pseudo_labels import CLASS_NAMES, IGNORE, NEGATIVE, Ki67PseudoLabeler, looks_like_he
from bundle.runs import is_stale, settings_changed, split_items
from bundle.scale import resample_factor
from bundle.stain import blank_reason

logger = logging.getLogger(__name__)

__all__ = [
    "point_label", "run_name", "round_checkpoints", "teacher_list", "label_radii", "label_settings",
    "prepare_ki67_labels"
]


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
                   threshold: float = 0.5, teachers=(), teacher_point_mode: str = "peak",
                   dab_threshold: float | None = None) -> dict:
    """The record (``<label_dir>/settings.json``) of what :func:`prepare_ki67_labels` made a label folder with; a
    different record rebuilds the labels. Arguments as there (``teachers``: :func:`teacher_list`); settings that do
    not apply (the colour labeller's for a self-training round, the teachers' threshold for round 1) are None.
    ``teacher_point_mode`` is recorded only when it is not the default ``"peak"``, so folders written before it existed
    stay valid; ``dab_threshold`` (the absolute positivity rule, None = the folder-relative colour clusters before
    2026-12-04) likewise only when set."""
    out = {"nucleus_diameter": float(nucleus_diameter), "min_thickness": float(min_thickness),
           "disk_radius": disk_radius, "negative_threshold": None if teachers else negative_threshold,
           "label_seed": None if teachers else int(label_seed), "ignore_radius": ignore_radius,
           "threshold": float(threshold) if teachers else None}
    if teachers and teacher_point_mode != "peak":
        out["teacher_point_mode"] = teacher_point_mode
    if dab_threshold is not None:
        out["dab_threshold"] = float(dab_threshold)
    return out


@rank_zero_first()  # under torchrun: rank 0 writes the labels, the others then reuse them
def prepare_ki67_labels(data, label_dir, nucleus_diameter: float = 20.0, disk_radius: float | None = None,
                        ignore_radius: float | None = None, val_fraction: float = 0.1, seed: int = 0,
                        datalist_key: str = "training", min_size: int = 64, teacher_ckpt=None,
                        base_channels: int = 16, threshold: float = 0.5, device="cpu",
                        min_thickness: float = 0.0, negative_threshold: str = "folder", label_seed: int = 0,
                        mpp: float | None = None, teacher_point_mode: str = "peak",
                        dab_threshold: float | None = DAB_THRESHOLD) -> dict:
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
    records another ``mpp`` (:func:`bundle.checkpoints.trained_mpp`) and its probabilities resized back. Writes
    ``<label_dir>/<stem>.npy`` ((1, H, W) uint8 :func:`point_label`) and ``<label_dir>/points/<stem>.csv`` (``x, y,
    class``); a rerun reuses labels newer than their image (and teacher) when the label settings
    (``label_dir/settings.json``) are unchanged. Unreadable tiles are reported in one line and left out.
    ``dab_threshold``: every cell's class, the colour labeller's and the teachers', follows the absolute DAB rule
    (:mod:`bundle.ki67.positivity`, stain vectors estimated on the folder) so that no round learns positives a DAB
    measurement rejects; ``None`` keeps the folder-relative colour clusters and the teachers' classes.

    Returns:
        ``{"training": [...], "validation": [...]}`` with items ``{"image", "label"}`` (held-back split, seeded).
    """
    items = load_datalist(data, datalist_key) if not isinstance(data, (list, tuple)) else [
        d if isinstance(d, dict) else {"image": d} for d in data]
    label_dir = Path(label_dir)
    try:
        usable = usable_items([{"image": it["image"], "name": item_name(it)} for it in items], min_size=min_size)
    except ImageError as e:
        raise ImageError(f"{data}: {e}") from None
    good = [{"image": it["image"], "name": it["name"], "label": str(label_dir / f"{it['name']}.npy")} for it in usable]
    teachers = teacher_list(teacher_ckpt)
    redo = settings_changed(label_dir, label_settings(nucleus_diameter, min_thickness, disk_radius, negative_threshold,
                                                      label_seed, ignore_radius, threshold, teachers,
                                                      teacher_point_mode, dab_threshold))
    todo = [it for it in good if redo or is_stale(Path(it["label"]), it["image"], *teachers)]
    if todo:
        d = float(nucleus_diameter)
        r_disk, r_ign = label_radii(d, disk_radius, ignore_radius)
        if teachers:
            from bundle.checkpoints import SETTINGS_NAME, load_network_weights, resunet_input_channels, trained_mpp
            from bundle.inferers import predict_probability
            from bundle.networks import ResUNet34
            from bundle.scale import size_scale

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
                                        negative_threshold=negative_threshold, dab_threshold=dab_threshold)
            labeler.fit([it["image"] for it in good])
        if teachers and dab_threshold is not None:
            from bundle.ki67.points import Ki67Cells
            from bundle.ki67.positivity import ihc_stain_matrix

            cells = Ki67Cells(nucleus_diameter=d, dab_threshold=dab_threshold)
            step = max(1, len(good) // 32)
            stain = ihc_stain_matrix([read_rgb(it["image"]) for it in good[::step]], name=str(data))[0]
        for it in todo:
            rgb = read_rgb(it["image"])
            why = blank_reason(rgb)
            if why:  # no label: the tile teaches nothing (left out below)
                logger.warning(f"{it['image']}: {why}; left out of training")
                Path(it["label"]).unlink(missing_ok=True)
                continue
            if teachers:
                prob = np.mean([predict_probability(n, rgb, device, tta=True, scale=f) for n, f in zip(nets, scales)],
                               axis=0)
                pts, cls, _ = ki67_points(prob, threshold, d, point_mode=teacher_point_mode)
                if dab_threshold is not None:
                    cls = cells.classify(rgb, pts, cls, stain)[0]
                if looks_like_he(rgb):
                    logger.warning(f"{it['image']}: no DAB (brown) signal and H&E colours - is this an H&E image? 0 "
                                   "positive cells")
                    cls = np.full(len(pts), NEGATIVE, np.uint8)
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pts, cls = labeler.points(rgb, it["image"])
                for w in caught:
                    logger.warning(str(w.message))
            lab = point_label(pts, cls, rgb.shape[:2], r_disk, r_ign)
            write_npy(it["label"], lab[None])
            stem = it["name"]
            rows = [{"x": int(c), "y": int(r), "class": CLASS_NAMES[int(k)]} for (r, c), k in zip(pts, cls)]
            csv_path = label_dir / "points" / f"{stem}.csv"
            write_csv(csv_path, rows, fieldnames=("x", "y", "class"))
    good = [it for it in good if Path(it["label"]).is_file()]
    if not good:
        raise ImageError(f"{data}: no tile has tissue to learn from (all blank)")
    train, val = split_items(good, val_fraction, seed)
    logger.info(f"Ki-67 pseudo labels in {label_dir}: {len(train)} training / {len(val)} held-back tiles")
    return {"training": train, "validation": val}
