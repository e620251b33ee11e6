# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Cell and image classification with a trained InfoGAN critic: cell categories, per-image category proportions,
K-Means / SVM image classes from the proportions, and the folder runner (``configs/gan_classify.json``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bundle.gan.train import cells_to_tensor
from bundle.io import ImageError, write_csv, write_image, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_COLOURS", "assign_categories", "trunk_features", "category_proportions", "cluster_accuracy",
    "classify_images", "plot_proportions", "read_image_labels", "ClassifyRunner"
]

CATEGORY_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


# ----------------------------------------------------------------------------------------------------------------
# use of the trained critic
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _batched(fn, cells: np.ndarray, batch_size: int, device) -> np.ndarray:
    outs = []
    for i in range(0, len(cells), batch_size):
        x = cells_to_tensor(cells[i : i + batch_size]).to(device)
        outs.append(fn(x).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,))


def assign_categories(critic, cells: np.ndarray, batch_size: int = 512, device="cpu"):
    """argmax Q per cell: (N, S, S, 3) uint8 -> (labels (N,) int64, probabilities (N, K) float32)."""
    critic = critic.to(device).eval()
    logq = _batched(critic, np.asarray(cells), batch_size, device)
    probs = np.exp(logq).astype(np.float32)
    return probs.argmax(1).astype(np.int64), probs


def trunk_features(critic, cells: np.ndarray, batch_size: int = 512, device="cpu") -> np.ndarray:
    """(N, C) critic-trunk features (ReLU + global average pool) of uint8 cells."""
    critic = critic.to(device).eval()
    return _batched(critic.features, np.asarray(cells), batch_size, device)


def category_proportions(labels: Sequence[int], groups: Sequence, n_categories: int):
    """Per-group (image) proportion of cells in each category.

    Returns (names: sorted distinct groups, proportions (M, K) float64 with rows summing to 1, counts (M,) int).
    Raises ValueError for an empty input, mismatched lengths or a label outside 0..K-1.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if len(labels) != len(groups):
        raise ValueError(f"labels and groups lengths differ: {len(labels)} vs {len(groups)}")
    if len(labels) == 0:
        raise ValueError("category_proportions needs at least one cell")
    if labels.min() < 0 or labels.max() >= n_categories:
        raise ValueError(f"category labels must be in 0..{n_categories - 1}, got {labels.min()}..{labels.max()}")
    names, inv = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(names), n_categories), np.int64)
    np.add.at(counts, (inv.reshape(-1), labels), 1)
    n = counts.sum(1)
    return [str(x) for x in names], counts / n[:, None], n


def cluster_accuracy(pred: Sequence, true: Sequence) -> float:
    """Accuracy after the best one-to-one mapping of clusters to classes (Hungarian); extra clusters count wrong."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(np.asarray(true), np.asarray(pred))
    r, c = linear_sum_assignment(-table)
    return float(table[r, c].sum() / table.sum())


def classify_images(props: np.ndarray, labels: Sequence | None = None, n_clusters: int | None = None,
                    seed: int = 0, svm_c: float = 1.0) -> dict:
    """Image classification from cell-category proportions (rows of ``props``).

    Unsupervised: K-Means with ``n_clusters`` (default: number of label classes, else 2), 10 inits. With
    ``labels``: its accuracy after one-to-one cluster-to-class mapping, NMI and purity, and a leave-one-out
    ``LinearSVC`` (standardised features) accuracy; plus chance levels (majority-class rate; uniform 1 / classes).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    X = np.asarray(props, np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"need an (M >= 2, K) proportion matrix, got shape {X.shape}")
    y = None if labels is None else np.asarray([str(v) for v in labels])
    if n_clusters is None:
        n_clusters = len(set(y)) if y is not None else 2
    n_clusters = int(min(max(1, n_clusters), len(X)))
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(X)
    res = {"n_images": len(X), "n_clusters": n_clusters, "kmeans": km.labels_.astype(int).tolist()}
    if y is None:
        return res
    from bundle.metrics import clustering_scores

    classes, counts = np.unique(y, return_counts=True)
    res.update({"classes": classes.tolist(), "chance_majority": float(counts.max() / len(y)),
                "chance_uniform": float(1.0 / len(classes)), "kmeans_accuracy": cluster_accuracy(km.labels_, y),
                "kmeans_nmi": float(normalized_mutual_info_score(y, km.labels_)),
                "kmeans_purity": clustering_scores(km.labels_, y)["purity"]})
    if len(classes) >= 2:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        pred = []
        for i in range(len(X)):
            tr = np.arange(len(X)) != i
            if len(set(y[tr])) < 2:
                pred.append(y[tr][0])
                continue
            clf = make_pipeline(StandardScaler(), LinearSVC(C=svm_c, max_iter=20000, random_state=seed))
            clf.fit(X[tr], y[tr])
            pred.append(clf.predict(X[i : i + 1])[0])
        res["svm_loo_pred"] = [str(p) for p in pred]
        res["svm_loo_accuracy"] = float(np.mean(np.asarray(pred) == y))
    return res


def plot_proportions(props: np.ndarray, names: Sequence[str], groups: Sequence[str] | None, path,
                     title: str = "cell-category proportions per image", bar: int = 16) -> np.ndarray:
    """Stacked bars (one per image, categories coloured) grouped by ``groups``, with a legend; written as PNG.
    Returns the uint8 image."""
    from PIL import Image, ImageDraw

    props = np.asarray(props, np.float64)
    M, K = props.shape
    groups = [str(g) for g in (groups if groups is not None else ["all"] * M)]
    order = sorted(range(M), key=lambda i: (groups[i], names[i]))
    ug = list(dict.fromkeys(groups[i] for i in order))
    gap, H, top, left = bar, 220, 30, 40
    W = left + M * (bar + 2) + (len(ug) - 1) * gap + 150
    img = Image.new("RGB", (max(W, 360), top + H + 60), "white")
    dr = ImageDraw.Draw(img)
    dr.text((left, 8), title, fill="black")
    for t in (0.0, 0.5, 1.0):
        yv = top + H - t * H
        dr.line([(left - 4, yv), (left + M * (bar + 2) + (len(ug) - 1) * gap, yv)], fill=(220, 220, 220))
        dr.text((4, yv - 6), f"{t:.1f}", fill="black")
    x = left
    prev = None
    starts = {}
    for i in order:
        if prev is not None and groups[i] != prev:
            x += gap
        starts.setdefault(groups[i], [x, x])
        y0 = top + H
        for k in range(K):
            h = props[i, k] * H
            dr.rectangle([x, y0 - h, x + bar, y0], fill=CATEGORY_COLOURS[k % len(CATEGORY_COLOURS)])
            y0 -= h
        starts[groups[i]][1] = x + bar
        prev = groups[i]
        x += bar + 2
    for gname, (a, b) in starts.items():
        dr.line([(a, top + H + 4), (b, top + H + 4)], fill="black")
        dr.text((a, top + H + 8 + 12 * (ug.index(gname) % 2)), gname[:14], fill="black")
    lx = x + 20
    for k in range(K):
        dr.rectangle([lx, top + 14 * k, lx + 10, top + 14 * k + 10], fill=CATEGORY_COLOURS[k % len(CATEGORY_COLOURS)])
        dr.text((lx + 14, top + 14 * k - 1), f"category {k}", fill="black")
    arr = np.asarray(img)
    write_image(path, arr)
    return arr


def read_image_labels(path, image_column: str = "image", label_column: str | None = None) -> dict:
    """``{image stem: label}`` from a CSV (e.g. MoNuSeg ``organs.csv``: ``image,organ``). The label column defaults
    to the first column other than ``image_column``. Raises ValueError naming the file."""
    import csv

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"{p}: image label file does not exist")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{p}: image label file has no rows")
    cols = list(rows[0])
    if image_column not in cols:
        raise ValueError(f"{p}: no '{image_column}' column (found {cols})")
    label_column = label_column or next((c for c in cols if c != image_column), None)
    if label_column not in cols:
        raise ValueError(f"{p}: no label column '{label_column}' (found {cols})")
    return {Path(r[image_column]).stem: r[label_column] for r in rows}


def category_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours (matplotlib's ``tab10`` / ``tab20`` cycle) for cell categories 0..n-1."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [tuple(int(round(255 * v)) for v in cmap(k % cmap.N)[:3]) for k in range(n)]


class ClassifyRunner:
    """Assign every cell its category (argmax Q), write per-image proportions, classify the images.

    Args:
        network: the :class:`bundle.networks.infogan.InfoGANCritic`.  data: the ``cells_extract`` folder
            (``cells.npy`` + ``cells.csv``).  ckpt_path: critic weights (``models/gan/model.pt``).
        labels_csv: optional ``image,label`` CSV; enables the leave-one-out SVM and the accuracies.
        n_clusters: K-Means clusters (default: number of label classes, else 2).

    Writes to ``output_dir``: ``cell_categories.csv`` (per cell: source image, position, category, max prob),
    ``proportions.csv`` (per image: n_cells, p_0..p_K-1, label), ``image_classes.csv`` (K-Means cluster, SVM
    prediction), ``summary.json``, ``proportions.png`` and ``geojson/<image>.geojson`` (QuPath detections: a circle
    of ``marker_radius`` px per cell at its centre, classified ``Category k`` with the colour of
    :func:`category_colours`, the measurement ``probability``).
    """

    def __init__(self, network, data, output_dir, ckpt_path=None, device="cpu", labels_csv: str | None = None,
                 label_column: str | None = None, n_clusters: int | None = None, seed: int = 0,
                 batch_size: int = 512, min_cells: int = 1, marker_radius: float = 8.0):
        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device, self.labels_csv, self.label_column = ckpt_path, device, labels_csv, label_column
        self.n_clusters, self.seed, self.batch_size, self.min_cells = n_clusters, seed, batch_size, int(min_cells)
        self.marker_radius = float(marker_radius)

    def write_geojson(self, rows: list, n_categories: int) -> None:
        """One FeatureCollection per source image of the cells that have a position (see the class docstring)."""
        from bundle.io import write_geojson
        from bundle.points import circle_polygon

        colours = category_colours(n_categories)
        by_image: dict = {}
        for r in rows:
            if r["row"] not in (None, "") and r["col"] not in (None, ""):
                by_image.setdefault(Path(str(r["image_name"])).stem, []).append(r)
        for stem, rs in by_image.items():
            write_geojson(self.output_dir / "geojson" / f"{stem}.geojson",
                          [circle_polygon(float(r["row"]), float(r["col"]), self.marker_radius) for r in rs],
                          [{"classification": {"name": f"Category {r['category']}",
                                               "color": list(colours[r["category"]])},
                            "measurements": {"probability": r["probability"]}} for r in rs])

    def run(self) -> dict:
        from bundle.checkpoints import load_network_weights
        from bundle.gan.cells import load_cells

        cells, table = load_cells(self.data)
        if not table:
            raise ImageError(f"{self.data}: cells.csv is missing; it names each cell's source image")
        if self.ckpt_path:
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        K = self.network.n_categories
        cats, probs = assign_categories(self.network, cells, self.batch_size, self.device)
        rows = [{"index": r.get("index", i), "image_name": r["image_name"], "row": r.get("row"), "col": r.get("col"),
                 "category": int(c), "probability": round(float(p.max()), 4)}
                for i, (r, c, p) in enumerate(zip(table, cats, probs))]
        write_csv(self.output_dir / "cell_categories.csv", rows)
        self.write_geojson(rows, K)
        names, props, counts = category_proportions(cats, [r["image_name"] for r in table], K)
        keep = counts >= self.min_cells
        labels = read_image_labels(self.labels_csv, label_column=self.label_column) if self.labels_csv else {}
        prow = []
        for n, p, c in zip(names, props, counts):
            d = {"image": n, "n_cells": int(c), **{f"p_{k}": round(float(p[k]), 5) for k in range(K)}}
            if labels:
                d["label"] = labels.get(n, "")
            prow.append(d)
        write_csv(self.output_dir / "proportions.csv", prow)
        summary = {"n_cells": int(len(cells)), "n_images": len(names), "n_categories": K,
                   "cells_per_category": np.bincount(cats, minlength=K).tolist()}
        sel = [i for i in range(len(names)) if keep[i] and (not labels or names[i] in labels)]
        if labels and len(sel) < len(names):
            logger.warning(f"{len(names) - len(sel)} image(s) have no label in {self.labels_csv}: not classified")
        y = [labels[names[i]] for i in sel] if labels else None
        if len(sel) >= 2:
            res = classify_images(props[sel], y, self.n_clusters, self.seed)
            crow = []
            for j, i in enumerate(sel):
                d = {"image": names[i], "kmeans_cluster": res["kmeans"][j]}
                if labels:
                    d["label"] = y[j]
                    if "svm_loo_pred" in res:
                        d["svm_loo_pred"] = res["svm_loo_pred"][j]
                crow.append(d)
            write_csv(self.output_dir / "image_classes.csv", crow)
            summary.update({k: v for k, v in res.items() if k not in ("kmeans", "svm_loo_pred")})
        else:
            logger.warning("fewer than 2 images: no image-level classification")
        groups = [labels.get(n, "unlabelled") for n in names] if labels else None
        plot_proportions(props, names, groups, self.output_dir / "proportions.png")
        write_json(self.output_dir / "summary.json", summary)
        logger.info(f"{len(cells)} cells of {len(names)} images -> {self.output_dir}: " +
                    ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if isinstance(v, float)))
        return summary
