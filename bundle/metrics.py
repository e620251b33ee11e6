# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Evaluation metrics for nuclei segmentation, detection and unsupervised clustering.

Plain functions on numpy arrays, no hidden state.

Segmentation (instance maps are 2-D integer arrays of shape (H, W), 0 = background, any
non-negative ids, not necessarily consecutive):

* :func:`pixel_scores` -- pixel-level F1 / IoU / precision / recall of the foreground (> 0).
* :func:`object_dice` -- object-level Dice of the Gland Segmentation challenge (Sirinukunwattana et al. 2017).
* :func:`aji` -- Aggregated Jaccard Index (Kumar et al. 2017).
* :func:`aji_plus` -- AJI+ with one-to-one matching (Graham et al. 2019, HoVer-Net).
* :func:`panoptic_quality` -- PQ = DQ x SQ (Kirillov et al. 2019, as used by HoVer-Net).
* :func:`instance_scores` -- all of the above from one contingency computation.

Detection (point sets of shape (N, 2)):

* :func:`match_points` / :func:`point_scores` -- one-to-one matching within a radius.
* :func:`multiclass_point_scores` -- per-class and class-agnostic detection scores.

Clustering:

* :func:`clustering_scores` -- purity, entropy, NMI, ARI and clustering F-measure.

Conventions: a score whose numerator and denominator are both zero because *both* inputs are
empty is 1.0 (perfect agreement on "nothing"); any other 0/0 is 0.0.

Implementation: every instance metric is derived from a sparse contingency table of the
flattened (gt, pred) label pairs, computed once with ``np.bincount`` (or ``np.unique`` when the
dense table would be too large). One-to-one matchings use ``scipy.optimize.linear_sum_assignment``
on each connected component of the overlap / proximity graph, so their cost stays small even
with thousands of objects.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, NamedTuple, Sequence, Tuple

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.segmentation import relabel_sequential
from sklearn import metrics as skmetrics

__all__ = [
    "pixel_scores", "object_dice", "aji", "aji_plus", "panoptic_quality", "instance_scores", "match_points",
    "point_scores", "multiclass_point_scores", "clustering_scores", "confusion_counts", "match_clusters",
    "semantic_scores", "matching_scores"
]

# Largest (n_gt + 1) * (n_pred + 1) for which the contingency table is built densely with bincount.
_DENSE_TABLE_MAX = 1 << 24


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _safe_div(num: float, den: float) -> float:
    """``num / den`` as a Python float, 0.0 when ``den == 0``."""
    return float(num) / float(den) if den else 0.0


def _check_pair(pred: Any, gt: Any, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """Convert to arrays and check both are 2-D with the same shape."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{what}: prediction and ground truth shapes differ: {pred.shape} vs {gt.shape}.")
    if pred.ndim != 2:
        raise ValueError(f"{what}: expected 2-D arrays of shape (H, W), got {pred.ndim}-D arrays of shape {pred.shape}.")
    return pred, gt


def _as_label_image(x: np.ndarray, name: str) -> np.ndarray:
    """Validate an instance map (integer or bool, non-negative) and relabel it to 0..N."""
    if x.dtype == bool:
        x = x.astype(np.uint8)
    elif not np.issubdtype(x.dtype, np.integer):
        if np.issubdtype(x.dtype, np.floating) and np.all(np.mod(x, 1) == 0):
            x = x.astype(np.int64)
        else:
            raise ValueError(f"{name} must be an integer instance map, got dtype {x.dtype}.")
    if x.size and x.min() < 0:
        raise ValueError(f"{name} must not contain negative ids (0 = background).")
    return relabel_sequential(x)[0]


class _Contingency(NamedTuple):
    """Sparse overlap table between relabelled GT objects (rows) and prediction objects (columns).

    Object indices are 0-based (label ``k`` -> index ``k - 1``). Pairs are sorted by (gt, pred).
    """

    gt_area: np.ndarray  # (n_gt,) int64, pixel count of each GT object
    pred_area: np.ndarray  # (n_pred,) int64, pixel count of each predicted object
    gt_idx: np.ndarray  # (n_pairs,) int64, GT index of each overlapping pair
    pred_idx: np.ndarray  # (n_pairs,) int64, prediction index of each overlapping pair
    inter: np.ndarray  # (n_pairs,) int64, |G ∩ S| > 0
    union: np.ndarray  # (n_pairs,) int64, |G ∪ S|
    iou: np.ndarray  # (n_pairs,) float64 in (0, 1]

    @property
    def n_gt(self) -> int:
        return len(self.gt_area)

    @property
    def n_pred(self) -> int:
        return len(self.pred_area)


def _contingency(pred_inst: Any, gt_inst: Any, what: str = "instance metrics") -> _Contingency:
    """Build the overlap table of two instance maps in O(H*W) with a single bincount."""
    pred, gt = _check_pair(pred_inst, gt_inst, what)
    g = _as_label_image(gt, "gt_inst").ravel().astype(np.int64, copy=False)
    p = _as_label_image(pred, "pred_inst").ravel().astype(np.int64, copy=False)
    n_g = int(g.max()) if g.size else 0
    n_p = int(p.max()) if p.size else 0
    gt_area = np.bincount(g, minlength=n_g + 1)[1:].astype(np.int64)
    pred_area = np.bincount(p, minlength=n_p + 1)[1:].astype(np.int64)

    both = (g > 0) & (p > 0)
    key = g[both] * (n_p + 1) + p[both]
    if (n_g + 1) * (n_p + 1) <= _DENSE_TABLE_MAX:
        counts = np.bincount(key, minlength=(n_g + 1) * (n_p + 1))
        keys = np.flatnonzero(counts)
        inter = counts[keys].astype(np.int64)
    else:
        keys, inter = np.unique(key, return_counts=True)
        inter = inter.astype(np.int64)
    gi = keys // (n_p + 1) - 1
    pj = keys % (n_p + 1) - 1
    union = gt_area[gi] + pred_area[pj] - inter
    iou = inter / union if len(inter) else np.zeros(0, dtype=np.float64)
    return _Contingency(gt_area, pred_area, gi, pj, inter, union, iou)


def _argmax_per_group(group: np.ndarray, value: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each distinct ``group`` id, the index of the element with the largest ``value``.

    Ties go to the element that comes first in the input order (pairs are sorted by (gt, pred),
    so ties resolve to the lowest partner id). Returns ``(groups, element_index)``.
    """
    if len(group) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.lexsort((-value, group))  # primary: group, secondary: value descending (stable)
    g_sorted = group[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = g_sorted[1:] != g_sorted[:-1]
    return g_sorted[first], order[first]


def _sparse_assignment(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, fill: float) -> np.ndarray:
    """Minimum-cost one-to-one assignment restricted to the given edges.

    Solves ``linear_sum_assignment`` independently on every connected component of the
    bipartite graph (rows, cols), where non-edges get cost ``fill``; assignments that fall on a
    non-edge are dropped. Components with a single edge are matched without calling the solver.

    Returns the sorted indices (into ``rows``/``cols``/``cost``) of the selected edges.
    """
    n_edges = len(rows)
    if n_edges == 0:
        return np.zeros(0, dtype=np.int64)
    _, r = np.unique(rows, return_inverse=True)
    _, c = np.unique(cols, return_inverse=True)
    r = r.ravel()
    c = c.ravel()
    n_r, n_c = int(r.max()) + 1, int(c.max()) + 1
    graph = sparse.coo_matrix((np.ones(n_edges), (r, n_r + c)), shape=(n_r + n_c, n_r + n_c))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[r]
    edges_per_comp = np.bincount(edge_comp)
    single = edges_per_comp[edge_comp] == 1
    selected = [np.flatnonzero(single)]

    multi = np.flatnonzero(~single)
    if multi.size:
        multi = multi[np.argsort(edge_comp[multi], kind="stable")]
        starts = np.flatnonzero(np.r_[True, edge_comp[multi][1:] != edge_comp[multi][:-1]])
        for e in np.split(multi, starts[1:]):
            _, ri = np.unique(r[e], return_inverse=True)
            _, ci = np.unique(c[e], return_inverse=True)
            ri, ci = ri.ravel(), ci.ravel()
            shape = (int(ri.max()) + 1, int(ci.max()) + 1)
            block = np.full(shape, fill, dtype=np.float64)
            block[ri, ci] = cost[e]
            edge_of = np.full(shape, -1, dtype=np.int64)
            edge_of[ri, ci] = e
            a, b = linear_sum_assignment(block)
            chosen = edge_of[a, b]
            selected.append(chosen[chosen >= 0])
    return np.sort(np.concatenate(selected))


def _match_iou(ct: _Contingency) -> np.ndarray:
    """Pair indices of the one-to-one GT/prediction matching that maximises the summed IoU."""
    return _sparse_assignment(ct.gt_idx, ct.pred_idx, -ct.iou, fill=0.0)


# ----------------------------------------------------------------------------------------------
# segmentation metrics (computed from a contingency table)
# ----------------------------------------------------------------------------------------------
def _pixel_from_counts(tp: int, n_pred: int, n_gt: int) -> Dict[str, float]:
    if n_pred == 0 and n_gt == 0:
        return {"f1": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {
        "f1": _safe_div(2 * tp, n_pred + n_gt),
        "iou": _safe_div(tp, n_pred + n_gt - tp),
        "precision": _safe_div(tp, n_pred),
        "recall": _safe_div(tp, n_gt),
    }


def _pixel_from_ct(ct: _Contingency) -> Dict[str, float]:
    return _pixel_from_counts(int(ct.inter.sum()), int(ct.pred_area.sum()), int(ct.gt_area.sum()))


def _object_dice_from_ct(ct: _Contingency) -> float:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return 1.0
    if ct.n_gt == 0 or ct.n_pred == 0:
        return 0.0
    dice = 2.0 * ct.inter / (ct.gt_area[ct.gt_idx] + ct.pred_area[ct.pred_idx])
    # GT side: each G_i against the prediction with the largest overlap (Dice 0 if none).
    g_has, g_best = _argmax_per_group(ct.gt_idx, ct.inter)
    term_g = float(np.sum(ct.gt_area[g_has] * dice[g_best])) / float(ct.gt_area.sum())
    # Prediction side, symmetric.
    p_has, p_best = _argmax_per_group(ct.pred_idx, ct.inter)
    term_p = float(np.sum(ct.pred_area[p_has] * dice[p_best])) / float(ct.pred_area.sum())
    return 0.5 * (term_g + term_p)


def _aji_from_ct(ct: _Contingency) -> float:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return 1.0
    g_has, best = _argmax_per_group(ct.gt_idx, ct.iou)
    inter = int(ct.inter[best].sum())
    # Matched GT: |G ∪ S*|; missed GT (no overlapping prediction): |G| only.
    union = int(ct.union[best].sum()) + int(ct.gt_area.sum()) - int(ct.gt_area[g_has].sum())
    used = np.zeros(ct.n_pred, dtype=bool)
    used[ct.pred_idx[best]] = True
    union += int(ct.pred_area[~used].sum())
    return _safe_div(inter, union)


def _aji_plus_from_ct(ct: _Contingency, matched: np.ndarray) -> float:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return 1.0
    inter = int(ct.inter[matched].sum())
    union = int(ct.union[matched].sum())
    g_used = np.zeros(ct.n_gt, dtype=bool)
    g_used[ct.gt_idx[matched]] = True
    p_used = np.zeros(ct.n_pred, dtype=bool)
    p_used[ct.pred_idx[matched]] = True
    union += int(ct.gt_area[~g_used].sum()) + int(ct.pred_area[~p_used].sum())
    return _safe_div(inter, union)


def _check_iou_threshold(iou_threshold: float) -> float:
    iou_threshold = float(iou_threshold)
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}.")
    return iou_threshold


def _pq_from_ct(ct: _Contingency, iou_threshold: float, matched: np.ndarray | None = None) -> Dict[str, float]:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    if iou_threshold >= 0.5:
        # IoU > 0.5 implies a unique match in both directions: no assignment needed.
        tp_pairs = np.flatnonzero(ct.iou > iou_threshold)
    else:
        if matched is None:
            matched = _match_iou(ct)
        tp_pairs = matched[ct.iou[matched] > iou_threshold]
    tp = len(tp_pairs)
    fp = ct.n_pred - tp
    fn = ct.n_gt - tp
    dq = _safe_div(tp, tp + 0.5 * fp + 0.5 * fn)
    sq = float(ct.iou[tp_pairs].mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


# ----------------------------------------------------------------------------------------------
# public segmentation API
# ----------------------------------------------------------------------------------------------
def pixel_scores(pred: Any, gt: Any) -> Dict[str, float]:
    """Pixel-level scores of the binary foreground.

    Args:
        pred: (H, W) array of any numeric/bool dtype; foreground is ``pred > 0``.
        gt: (H, W) array, same shape; foreground is ``gt > 0``.

    Returns:
        ``{"f1", "iou", "precision", "recall"}``, Python floats in [0, 1]. Both foregrounds
        empty -> all 1.0; otherwise an undefined ratio (e.g. precision with an empty
        prediction) is 0.0.

    Raises:
        ValueError: if the shapes differ or the arrays are not 2-D.
    """
    pred, gt = _check_pair(pred, gt, "pixel_scores")
    p = pred > 0
    g = gt > 0
    return _pixel_from_counts(int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g)))


def object_dice(pred_inst: Any, gt_inst: Any) -> float:
    """Object-level Dice of the GlaS challenge (Sirinukunwattana et al., MedIA 2017).

    ``0.5 * [sum_i w_i Dice(G_i, S*(G_i)) + sum_j w~_j Dice(G~*(S_j), S_j)]`` with
    ``w_i = |G_i| / sum_k |G_k|`` and ``w~_j = |S_j| / sum_k |S_k|``; ``S*(G_i)`` is the predicted
    object with the largest overlap (pixel count) with ``G_i`` (Dice 0 if none overlaps) and
    ``G~*(S_j)`` symmetrically. Ties in overlap go to the lowest id.

    Args:
        pred_inst: (H, W) integer instance map, 0 = background, ids need not be consecutive.
        gt_inst: (H, W) integer instance map, same shape.

    Returns:
        Float in [0, 1]. Both maps empty -> 1.0; exactly one empty -> 0.0.

    Raises:
        ValueError: on shape mismatch, non-2-D input, non-integer values or negative ids.
    """
    return _object_dice_from_ct(_contingency(pred_inst, gt_inst, "object_dice"))


def aji(pred_inst: Any, gt_inst: Any) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017).

    For every GT object ``G_i`` the matched prediction is the one with the largest IoU among the
    predictions overlapping it; ``|G_i ∩ S|`` is added to the aggregated intersection C and
    ``|G_i ∪ S|`` to the aggregated union U. A GT object overlapping no prediction adds only
    ``|G_i|`` to U (it is *not* paired with an arbitrary prediction). A prediction may be matched
    to several GT objects (original definition); predictions never matched are added to U.
    ``AJI = C / U``. Ties in IoU go to the lowest prediction id.

    Args:
        pred_inst: (H, W) integer instance map, 0 = background, ids need not be consecutive.
        gt_inst: (H, W) integer instance map, same shape.

    Returns:
        Float in [0, 1]. Both maps empty -> 1.0; exactly one empty -> 0.0.

    Raises:
        ValueError: on shape mismatch, non-2-D input, non-integer values or negative ids.
    """
    return _aji_from_ct(_contingency(pred_inst, gt_inst, "aji"))


def aji_plus(pred_inst: Any, gt_inst: Any) -> float:
    """AJI+ (Graham et al., HoVer-Net, MedIA 2019): AJI with a one-to-one matching.

    GT and predicted objects are paired one-to-one by maximising the summed IoU
    (``linear_sum_assignment``; only pairs with IoU > 0 are kept). Matched pairs add their
    intersection to C and union to U; unmatched GT and unmatched predicted objects add their
    areas to U. ``AJI+ = C / U``. Equals :func:`aji` whenever the AJI matching is already
    one-to-one.

    Args:
        pred_inst: (H, W) integer instance map, 0 = background, ids need not be consecutive.
        gt_inst: (H, W) integer instance map, same shape.

    Returns:
        Float in [0, 1]. Both maps empty -> 1.0; exactly one empty -> 0.0.

    Raises:
        ValueError: on shape mismatch, non-2-D input, non-integer values or negative ids.
    """
    ct = _contingency(pred_inst, gt_inst, "aji_plus")
    return _aji_plus_from_ct(ct, _match_iou(ct))


def panoptic_quality(pred_inst: Any, gt_inst: Any, iou_threshold: float = 0.5) -> Dict[str, float]:
    """Panoptic quality for a single class (Kirillov et al. 2019; HoVer-Net convention).

    True positives are GT/prediction pairs with ``IoU > iou_threshold`` (strict). For a threshold
    >= 0.5 such pairs are unique by construction; for a lower threshold the pairs are first
    matched one-to-one by maximum summed IoU and then thresholded.
    ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = mean IoU of the TPs`` (0 without TPs), ``PQ = DQ * SQ``.

    Args:
        pred_inst: (H, W) integer instance map, 0 = background, ids need not be consecutive.
        gt_inst: (H, W) integer instance map, same shape.
        iou_threshold: float in [0, 1), default 0.5.

    Returns:
        ``{"pq", "dq", "sq"}``, floats in [0, 1]. Both maps empty -> all 1.0.

    Raises:
        ValueError: on shape mismatch, invalid input or threshold outside [0, 1).
    """
    iou_threshold = _check_iou_threshold(iou_threshold)
    return _pq_from_ct(_contingency(pred_inst, gt_inst, "panoptic_quality"), iou_threshold)


def instance_scores(pred_inst: Any, gt_inst: Any, iou_threshold: float = 0.5) -> Dict[str, float]:
    """All segmentation scores from a single contingency computation.

    Args:
        pred_inst: (H, W) integer instance map, 0 = background, ids need not be consecutive.
        gt_inst: (H, W) integer instance map, same shape.
        iou_threshold: PQ matching threshold, see :func:`panoptic_quality`.

    Returns:
        Dict of Python floats with keys ``"pixel_f1", "pixel_iou", "pixel_precision",
        "pixel_recall", "object_dice", "aji", "aji_plus", "pq", "dq", "sq"``; identical to the
        values returned by the individual functions.

    Raises:
        ValueError: on shape mismatch, non-2-D input, non-integer values or negative ids.
    """
    iou_threshold = _check_iou_threshold(iou_threshold)
    ct = _contingency(pred_inst, gt_inst, "instance_scores")
    matched = _match_iou(ct)
    out = {f"pixel_{k}": v for k, v in _pixel_from_ct(ct).items()}
    out["object_dice"] = _object_dice_from_ct(ct)
    out["aji"] = _aji_from_ct(ct)
    out["aji_plus"] = _aji_plus_from_ct(ct, matched)
    out.update(_pq_from_ct(ct, iou_threshold, matched))
    return out


# ----------------------------------------------------------------------------------------------
# point detection
# ----------------------------------------------------------------------------------------------
def _as_points(xy: Any, name: str) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        return xy.reshape(0, 2)
    if xy.ndim != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {xy.shape}.")
    return xy


def match_points(pred_xy: Any, gt_xy: Any, radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to GT points within ``radius``.

    Among all one-to-one matchings that only use pairs at Euclidean distance ``<= radius``
    (inclusive), returns one with the largest number of pairs and, among those, the smallest
    total distance (Hungarian algorithm, ``linear_sum_assignment``, per connected component of
    the proximity graph).

    Args:
        pred_xy: (N, 2) float array of predicted coordinates (any consistent order, e.g. x, y).
        gt_xy: (M, 2) float array of GT coordinates in the same units.
        radius: non-negative matching radius in the same units.

    Returns:
        ``(pred_idx, gt_idx)``: two int64 arrays of length K (number of matches), sorted by
        ``pred_idx``; ``pred_xy[pred_idx[k]]`` is matched to ``gt_xy[gt_idx[k]]``.
    """
    pred = _as_points(pred_xy, "pred_xy")
    gt = _as_points(gt_xy, "gt_xy")
    radius = float(radius)
    if not radius >= 0:
        raise ValueError(f"radius must be non-negative, got {radius}.")
    if len(pred) and len(gt) and pred.shape[1] != gt.shape[1]:
        raise ValueError(f"pred_xy and gt_xy dimensions differ: {pred.shape} vs {gt.shape}.")
    empty = np.zeros(0, dtype=np.int64)
    if len(pred) == 0 or len(gt) == 0:
        return empty, empty
    # Candidate pairs from KD-trees (slightly inflated radius), then an exact, inclusive check.
    cand = cKDTree(pred).sparse_distance_matrix(cKDTree(gt), radius * (1 + 1e-9) + 1e-12, output_type="ndarray")
    pi = cand["i"].astype(np.int64)
    gj = cand["j"].astype(np.int64)
    dist = np.linalg.norm(pred[pi] - gt[gj], axis=1)
    keep = dist <= radius
    pi, gj, dist = pi[keep], gj[keep], dist[keep]
    if len(pi) == 0:
        return empty, empty
    # Non-edges cost more than any set of edges, so the solver maximises the match count first.
    big = radius * (min(len(pred), len(gt)) + 1) + 1.0
    sel = _sparse_assignment(pi, gj, dist, fill=big)
    order = np.argsort(pi[sel], kind="stable")
    return pi[sel][order], gj[sel][order]


def _detection_scores(tp: int, n_pred: int, n_gt: int) -> Dict[str, float]:
    fp, fn = n_pred - tp, n_gt - tp
    if n_pred == 0 and n_gt == 0:
        precision = recall = f1 = 1.0
    else:
        precision = _safe_div(tp, n_pred)
        recall = _safe_div(tp, n_gt)
        f1 = _safe_div(2 * tp, n_pred + n_gt)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def point_scores(pred_xy: Any, gt_xy: Any, radius: float) -> Dict[str, float]:
    """Detection scores from a one-to-one matching within ``radius`` (see :func:`match_points`).

    Args:
        pred_xy: (N, 2) float array of predicted points.
        gt_xy: (M, 2) float array of GT points.
        radius: non-negative matching radius (distance ``<= radius`` matches).

    Returns:
        ``{"tp", "fp", "fn"}`` (ints) and ``{"precision", "recall", "f1"}`` (floats in [0, 1]).
        No predictions and no GT -> precision = recall = f1 = 1.0; otherwise an undefined ratio
        is 0.0.
    """
    pred = _as_points(pred_xy, "pred_xy")
    gt = _as_points(gt_xy, "gt_xy")
    pred_idx, _ = match_points(pred, gt, radius)
    return _detection_scores(len(pred_idx), len(pred), len(gt))


def multiclass_point_scores(
    pred_xy: Any,
    pred_cls: Any,
    gt_xy: Any,
    gt_cls: Any,
    radius: float,
    classes: Sequence[Hashable],
) -> Dict[Any, Dict[str, float]]:
    """Per-class and class-agnostic point detection scores.

    Args:
        pred_xy: (N, 2) float array of predicted points; pred_cls: (N,) their class labels.
        gt_xy: (M, 2) float array of GT points; gt_cls: (M,) their class labels.
        radius: non-negative matching radius.
        classes: the class labels to report. Points whose label is not listed are ignored by
            the per-class scores but still count in ``"overall"``.

    Returns:
        ``{c: scores for c in classes}`` plus ``"overall"``. Per-class scores are
        :func:`point_scores` restricted to the points of that class on both sides (a point
        detected with the wrong class is a FP of its predicted class and a FN of its true class);
        ``"overall"`` matches all points ignoring classes. Every entry also has
        ``"count_abs_error"`` = ``|#pred - #gt|`` (int) for that class (overall: all points).
    """
    pred = _as_points(pred_xy, "pred_xy")
    gt = _as_points(gt_xy, "gt_xy")
    pred_cls = np.asarray(pred_cls).reshape(-1)
    gt_cls = np.asarray(gt_cls).reshape(-1)
    if len(pred_cls) != len(pred):
        raise ValueError(f"pred_cls has {len(pred_cls)} labels for {len(pred)} points.")
    if len(gt_cls) != len(gt):
        raise ValueError(f"gt_cls has {len(gt_cls)} labels for {len(gt)} points.")
    out: Dict[Any, Dict[str, float]] = {}
    for c in classes:
        pm = pred_cls == c
        gm = gt_cls == c
        scores = point_scores(pred[pm], gt[gm], radius)
        scores["count_abs_error"] = abs(int(pm.sum()) - int(gm.sum()))
        out[c.item() if isinstance(c, np.generic) else c] = scores
    overall = point_scores(pred, gt, radius)
    overall["count_abs_error"] = abs(len(pred) - len(gt))
    out["overall"] = overall
    return out


# ----------------------------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------------------------
def clustering_scores(pred_labels: Any, true_labels: Any) -> Dict[str, float]:
    """External clustering validation scores.

    Args:
        pred_labels: (N,) cluster assignment (any hashable labels; e.g. -1 noise is just another
            cluster).
        true_labels: (N,) ground-truth class labels.

    Returns:
        Dict of floats:

        * ``"purity"`` in [0, 1]: ``sum_clusters max_class n_ck / N`` (higher is better).
        * ``"entropy"`` in [0, 1]: size-weighted mean over clusters of the entropy (log2) of the
          class distribution inside the cluster, divided by ``log2(n_classes)``; 0 for a
          single class. Lower is better.
        * ``"nmi"``: ``sklearn.metrics.normalized_mutual_info_score`` (arithmetic normalisation).
        * ``"ari"``: ``sklearn.metrics.adjusted_rand_score`` (in [-0.5, 1]).
        * ``"f_score"`` in [0, 1]: clustering F-measure, ``sum_classes (n_c / N) max_k F(c, k)``
          with ``F(c, k) = 2 n_ck / (n_c + n_k)`` (harmonic mean of precision n_ck/n_k and recall
          n_ck/n_c).

    Raises:
        ValueError: if the inputs are empty or their lengths differ.
    """
    pred = np.asarray(pred_labels).reshape(-1)
    true = np.asarray(true_labels).reshape(-1)
    if len(pred) != len(true):
        raise ValueError(f"pred_labels and true_labels lengths differ: {len(pred)} vs {len(true)}.")
    if len(pred) == 0:
        raise ValueError("clustering_scores needs at least one sample.")
    table = skmetrics.cluster.contingency_matrix(true, pred).astype(np.float64)  # (classes, clusters)
    n = table.sum()
    class_size = table.sum(axis=1)
    cluster_size = table.sum(axis=0)

    purity = table.max(axis=0).sum() / n

    n_classes = table.shape[0]
    if n_classes > 1:
        p = table / cluster_size[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log2(p), 0.0)
        cluster_entropy = -plogp.sum(axis=0) / np.log2(n_classes)
        entropy = float(np.sum(cluster_size / n * cluster_entropy))
    else:
        entropy = 0.0

    f = 2.0 * table / (class_size[:, None] + cluster_size[None, :])
    f_score = float(np.sum(class_size / n * f.max(axis=1)))

    return {
        "purity": float(purity),
        "entropy": entropy,
        "nmi": float(skmetrics.normalized_mutual_info_score(true, pred)),
        "ari": float(skmetrics.adjusted_rand_score(true, pred)),
        "f_score": f_score,
    }


# ----------------------------------------------------------------------------------------------
# semantic segmentation: confusion counts, cluster -> class matching (unsupervised segmentation)
# ----------------------------------------------------------------------------------------------
def confusion_counts(pred: Any, gt: Any, n_pred: int, n_gt: int, ignore_index: int | None = None) -> np.ndarray:
    """Pixel co-occurrence counts of two label maps of the same shape.

    Args:
        pred: integer labels in [0, n_pred) (e.g. cluster ids).  gt: integer labels in [0, n_gt) (GT classes);
            GT pixels outside that range or equal to ``ignore_index`` are not counted.
    Returns:
        (n_pred, n_gt) int64, ``counts[i, j]`` = pixels with pred i and gt j.

    Raises:
        ValueError: shapes differ, or a prediction is outside [0, n_pred).
    """
    p, g = _check_pair(pred, gt, "confusion_counts")
    p = p.astype(np.int64).ravel()
    g = g.astype(np.int64).ravel()
    keep = (g >= 0) & (g < n_gt)
    if ignore_index is not None:
        keep &= g != ignore_index
    p, g = p[keep], g[keep]
    if p.size and (p.min() < 0 or p.max() >= n_pred):
        raise ValueError(f"confusion_counts: predictions must lie in [0, {n_pred}), got {p.min()}..{p.max()}.")
    return np.bincount(p * n_gt + g, minlength=n_pred * n_gt).reshape(n_pred, n_gt).astype(np.int64)


def match_clusters(counts: Any, normalize: bool = False) -> np.ndarray:
    """Map each cluster to one GT class by pixel overlap (several clusters may share a class).

    Args:
        counts: (n_clusters, n_classes) pixel counts (:func:`confusion_counts`).
        normalize: divide each class column by that class's total pixels first, so a rare class can win a
            cluster in which it is over-represented relative to its frequency.
    Returns:
        (n_clusters,) int64 class per cluster; -1 for clusters with no (counted) pixels.
    """
    c = np.asarray(counts, np.float64)
    if normalize:
        c = c / np.maximum(c.sum(0, keepdims=True), 1.0)
    out = c.argmax(1).astype(np.int64)
    out[np.asarray(counts).sum(1) == 0] = -1
    return out


def semantic_scores(conf: Any, class_names: Sequence[str] | None = None) -> Dict[str, Any]:
    """Per-class IoU and F1 (Dice), their means and pixel accuracy from a pooled confusion matrix.

    Args:
        conf: (n, n) counts, rows = predicted class, columns = GT class.
    Returns:
        ``{"iou": {name: v}, "f1": {name: v}, "miou", "mean_f1", "pixel_accuracy"}``; a class absent from both
        prediction and GT gets NaN and is left out of the means.
    """
    m = np.asarray(conf, np.float64)
    n = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = np.diag(m)
    fp = m.sum(1) - tp
    fn = m.sum(0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = m.sum()
    return {
        "iou": {names[i]: float(iou[i]) for i in range(n)},
        "f1": {names[i]: float(f1[i]) for i in range(n)},
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
    }


def matching_scores(counts: Any, class_names: Sequence[str] | None = None, normalize: bool = False) -> Dict[str, Any]:
    """Matching evaluation of an unsupervised segmentation: clusters -> classes by :func:`match_clusters`, then
    :func:`semantic_scores` of the resulting class maps (pooled over all pixels of ``counts``).

    Args:
        counts: (n_clusters, n_classes) pixel counts.  normalize: class-frequency-normalised matching.
    Returns:
        :func:`semantic_scores` plus ``"mapping"`` (cluster id -> class id, -1 for empty clusters).
    """
    c = np.asarray(counts, np.int64)
    n_classes = c.shape[1]
    mapping = match_clusters(c, normalize)
    conf = np.zeros((n_classes, n_classes), np.int64)
    for cl, cls in enumerate(mapping):
        if cls >= 0:
            conf[cls] += c[cl]
    out = semantic_scores(conf, class_names)
    out["mapping"] = [int(v) for v in mapping]
    return out
