# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests for bundle.metrics against hand-computed cases and brute-force reference implementations."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from bundle.metrics import (
    aji,
    aji_plus,
    clustering_scores,
    confusion_counts,
    instance_scores,
    match_clusters,
    match_points,
    matching_scores,
    multiclass_point_scores,
    object_dice,
    panoptic_quality,
    pixel_scores,
    point_scores,
    semantic_scores,
)

INSTANCE_KEYS = {
    "pixel_f1",
    "pixel_iou",
    "pixel_precision",
    "pixel_recall",
    "object_dice",
    "aji",
    "aji_plus",
    "pq",
    "dq",
    "sq",
}


def square(m, label, r, c, h=10, w=10):
    """Paint an h x w rectangle with top-left corner (r, c) into m (in place) and return m."""
    m[r : r + h, c : c + w] = label
    return m


def all_scores(pred, gt):
    """instance_scores, checked against the individual functions."""
    s = instance_scores(pred, gt)
    assert set(s) == INSTANCE_KEYS
    px = pixel_scores(pred, gt)
    pq = panoptic_quality(pred, gt)
    single = {
        **{f"pixel_{k}": v for k, v in px.items()},
        "object_dice": object_dice(pred, gt),
        "aji": aji(pred, gt),
        "aji_plus": aji_plus(pred, gt),
        **pq,
    }
    for k in INSTANCE_KEYS:
        assert s[k] == pytest.approx(single[k], abs=1e-12), k
    return s


# ----------------------------------------------------------------------------------------------
# instance segmentation: hand-made cases
# ----------------------------------------------------------------------------------------------
def test_identical_maps_score_one():
    gt = np.zeros((64, 64), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 0, 10)  # touching object 1
    square(gt, 3, 30, 30, 15, 7)
    s = all_scores(gt.copy(), gt)
    for k, v in s.items():
        assert v == pytest.approx(1.0), k


def test_empty_maps():
    z = np.zeros((20, 20), np.int32)
    one = square(np.zeros((20, 20), np.int32), 1, 2, 2, 5, 5)
    # both empty: perfect agreement by convention
    assert all(v == 1.0 for v in all_scores(z, z).values())
    # prediction empty, GT not: everything 0 (undefined precision is 0, not 1)
    assert all(v == 0.0 for v in all_scores(z, one).values())
    # GT empty, prediction not
    assert all(v == 0.0 for v in all_scores(one, z).values())


def test_merge_of_two_touching_squares():
    # GT: A = rows 0-9, cols 0-9 (100 px), B = rows 0-9, cols 10-19 (100 px).
    # Prediction: one object P = rows 0-9, cols 0-19 (200 px) = A ∪ B.
    gt = np.zeros((30, 30), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 0, 10)
    pred = square(np.zeros((30, 30), np.int32), 1, 0, 0, 10, 20)
    s = all_scores(pred, gt)
    # pixels identical
    assert s["pixel_f1"] == pytest.approx(1.0)
    assert s["pixel_iou"] == pytest.approx(1.0)
    # AJI: A -> P (IoU 100/200), B -> P (IoU 100/200); C = 100 + 100, U = 200 + 200 -> 0.5
    assert s["aji"] == pytest.approx(0.5)
    # AJI+: P matched to one of them only: C = 100, U = 200 + 100 (unmatched GT) -> 1/3
    assert s["aji_plus"] == pytest.approx(1 / 3)
    # Dice(A, P) = 2*100/(100+200) = 2/3 = Dice(B, P).
    # GT side: 0.5*2/3 + 0.5*2/3 = 2/3; prediction side: 1.0*2/3; object Dice = 2/3
    assert s["object_dice"] == pytest.approx(2 / 3)
    # PQ: IoU exactly 0.5 is not > 0.5 -> TP = 0, FP = 1, FN = 2 -> DQ = SQ = PQ = 0
    assert (s["pq"], s["dq"], s["sq"]) == (0.0, 0.0, 0.0)


def test_merge_of_two_separate_squares_with_gap():
    # GT: A = cols 0-9, B = cols 15-24 (rows 0-9, 100 px each).
    # Prediction: P = rows 0-9, cols 0-24 (250 px), covering both and the 5-px gap.
    gt = np.zeros((30, 30), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 0, 15)
    pred = square(np.zeros((30, 30), np.int32), 1, 0, 0, 10, 25)
    s = all_scores(pred, gt)
    # pixels: TP 200, pred 250, GT 200
    assert s["pixel_precision"] == pytest.approx(0.8)
    assert s["pixel_recall"] == pytest.approx(1.0)
    assert s["pixel_f1"] == pytest.approx(400 / 450)
    assert s["pixel_iou"] == pytest.approx(0.8)
    # AJI: C = 100 + 100, U = 250 + 250 -> 0.4
    assert s["aji"] == pytest.approx(0.4)
    # AJI+: C = 100, U = 250 + 100 -> 2/7
    assert s["aji_plus"] == pytest.approx(2 / 7)
    # Dice(A, P) = Dice(B, P) = 200/350 = 4/7; object Dice = 0.5*(4/7 + 4/7) = 4/7
    assert s["object_dice"] == pytest.approx(4 / 7)
    assert s["pq"] == 0.0 and s["dq"] == 0.0


def test_missed_gt_object_adds_only_its_area_to_aji_union():
    # GT object 1 (the missed one, 100 px, far away) and GT object 2 (100 px) perfectly predicted
    # by prediction #1. Correct AJI: C = 100, U = 100 (G2 ∪ P1) + 100 (missed G1) = 200 -> 0.5.
    # The buggy "pair a missed GT with prediction #1" variant would add |G1 ∪ P1| = 200 instead:
    # U = 300 -> 1/3.
    gt = np.zeros((40, 40), np.int32)
    square(gt, 1, 25, 25)
    square(gt, 2, 0, 0)
    pred = square(np.zeros((40, 40), np.int32), 1, 0, 0)
    s = all_scores(pred, gt)
    assert s["aji"] == pytest.approx(0.5)
    assert s["aji"] != pytest.approx(1 / 3)
    assert s["aji_plus"] == pytest.approx(0.5)
    # object Dice: GT side 0.5*1 + 0.5*0 = 0.5; prediction side 1.0 -> 0.75
    assert s["object_dice"] == pytest.approx(0.75)
    # PQ: TP = 1, FN = 1 -> DQ = 1/(1 + 0.5) = 2/3, SQ = 1
    assert s["dq"] == pytest.approx(2 / 3)
    assert s["sq"] == pytest.approx(1.0)
    assert s["pq"] == pytest.approx(2 / 3)
    assert s["pixel_recall"] == pytest.approx(0.5)
    assert s["pixel_precision"] == pytest.approx(1.0)


def test_false_positive_prediction():
    # GT: one 10x10 square, predicted exactly by pred 1; pred 2 is an extra 10x10 square.
    gt = square(np.zeros((40, 40), np.int32), 1, 0, 0)
    pred = square(np.zeros((40, 40), np.int32), 1, 0, 0)
    square(pred, 2, 25, 25)
    s = all_scores(pred, gt)
    # AJI = AJI+ : C = 100, U = 100 + 100 (unused prediction) = 200 -> 0.5
    assert s["aji"] == pytest.approx(0.5)
    assert s["aji_plus"] == pytest.approx(0.5)
    # object Dice: GT side 1.0; prediction side 0.5*1 + 0.5*0 = 0.5 -> 0.75
    assert s["object_dice"] == pytest.approx(0.75)
    # PQ: TP 1, FP 1 -> DQ 2/3, SQ 1
    assert s["dq"] == pytest.approx(2 / 3)
    assert s["sq"] == pytest.approx(1.0)
    assert s["pq"] == pytest.approx(2 / 3)
    # pixels: TP 100, pred 200, GT 100
    assert s["pixel_precision"] == pytest.approx(0.5)
    assert s["pixel_recall"] == pytest.approx(1.0)
    assert s["pixel_f1"] == pytest.approx(2 / 3)
    assert s["pixel_iou"] == pytest.approx(0.5)


def test_square_shifted_by_half_is_fp_plus_fn_for_pq():
    # 10x10 square shifted by 5 px: intersection 50, union 150, IoU = 1/3
    gt = square(np.zeros((30, 30), np.int32), 1, 0, 0)
    pred = square(np.zeros((30, 30), np.int32), 1, 0, 5)
    s = all_scores(pred, gt)
    assert (s["pq"], s["dq"], s["sq"]) == (0.0, 0.0, 0.0)  # TP 0, FP 1, FN 1
    assert s["aji"] == pytest.approx(1 / 3)
    assert s["aji_plus"] == pytest.approx(1 / 3)
    assert s["object_dice"] == pytest.approx(0.5)  # 2*50/200 on both sides
    assert s["pixel_iou"] == pytest.approx(1 / 3)
    assert s["pixel_f1"] == pytest.approx(0.5)
    # with a lower threshold the pair is a TP: DQ 1, SQ = PQ = 1/3
    low = panoptic_quality(pred, gt, iou_threshold=0.3)
    assert low["dq"] == pytest.approx(1.0)
    assert low["sq"] == pytest.approx(1 / 3)
    assert low["pq"] == pytest.approx(1 / 3)


def test_square_shifted_by_two_is_true_positive():
    # shift by 2 px: intersection 80, union 120, IoU 2/3 > 0.5 -> TP; DQ 1, SQ = PQ = 2/3
    gt = square(np.zeros((30, 30), np.int32), 1, 0, 0)
    pred = square(np.zeros((30, 30), np.int32), 1, 0, 2)
    s = panoptic_quality(pred, gt)
    assert s["dq"] == pytest.approx(1.0)
    assert s["sq"] == pytest.approx(2 / 3)
    assert s["pq"] == pytest.approx(2 / 3)


def test_aji_equals_aji_plus_for_one_to_one_matches():
    # GT: A (rows 0-9), B (rows 20-29), C (rows 40-49), all cols 0-9.
    # Pred: A shifted 2 cols (I 80, U 120), B exact (100, 100), C missed, FP D at rows 0-9, cols 40-49.
    # C = 80 + 100 = 180; U = 120 + 100 + 100 (missed C) + 100 (FP D) = 420 -> 3/7
    gt = np.zeros((60, 60), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 20, 0)
    square(gt, 3, 40, 0)
    pred = np.zeros((60, 60), np.int32)
    square(pred, 1, 0, 2)
    square(pred, 2, 20, 0)
    square(pred, 3, 0, 40)
    assert aji(pred, gt) == pytest.approx(3 / 7)
    assert aji_plus(pred, gt) == pytest.approx(3 / 7)


def test_aji_differs_from_aji_plus_when_one_prediction_covers_two_gt():
    # same as the merge test: AJI reuses the prediction for both GT objects, AJI+ cannot
    gt = np.zeros((30, 30), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 0, 10)
    pred = square(np.zeros((30, 30), np.int32), 5, 0, 0, 10, 20)
    assert aji(pred, gt) == pytest.approx(0.5)
    assert aji_plus(pred, gt) == pytest.approx(1 / 3)


def test_aji_plus_uses_optimal_not_greedy_matching():
    # GT X = rows 0-9 cols 0-9 (100 px), GT Y = rows 0-9 cols 10-13 (40 px).
    # Pred P = rows 0-9 cols 3-13 (110 px), pred Q = rows 0-9 cols 0-1 (20 px).
    # IoU(X,P) = 70/140 = 0.5, IoU(Y,P) = 40/110 = 0.364, IoU(X,Q) = 20/100 = 0.2, IoU(Y,Q) = 0.
    # Greedy by IoU takes X-P first and leaves Y, Q unmatched (sum 0.5); the assignment maximising
    # the summed IoU is X-Q + Y-P (sum 0.564).
    # AJI+ (optimal) = (20 + 40) / (100 + 110) = 2/7; greedy would give 70 / (140 + 40 + 20) = 0.35.
    gt = np.zeros((20, 20), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 0, 10, 10, 4)
    pred = np.zeros((20, 20), np.int32)
    square(pred, 1, 0, 3, 10, 11)
    square(pred, 2, 0, 0, 10, 2)
    assert aji_plus(pred, gt) == pytest.approx(2 / 7)
    # AJI: X -> P (0.5 > 0.2), Y -> P; C = 70 + 40, U = 140 + 110 + 20 (Q unused) -> 110/270
    assert aji(pred, gt) == pytest.approx(110 / 270)


def test_non_consecutive_ids_and_dtypes():
    gt = np.zeros((40, 40), np.int32)
    square(gt, 1, 0, 0)
    square(gt, 2, 0, 10)
    square(gt, 3, 20, 20)
    pred = np.zeros((40, 40), np.int32)
    square(pred, 1, 0, 0, 10, 20)
    square(pred, 2, 20, 22)
    square(pred, 3, 32, 0, 5, 5)
    ref = all_scores(pred, gt)
    gt2 = np.choose(gt, [0, 70000, 7, 1000]).astype(np.int64)  # 1->70000, 2->7, 3->1000
    pred2 = np.choose(pred, [0, 3, 99999, 12]).astype(np.uint32)
    s = all_scores(pred2, gt2)
    for k in INSTANCE_KEYS:
        assert s[k] == pytest.approx(ref[k]), k
    s16 = instance_scores(pred.astype(np.uint16), gt.astype(np.uint8))
    for k in INSTANCE_KEYS:
        assert s16[k] == pytest.approx(ref[k]), k


def test_input_validation():
    a = np.zeros((10, 10), np.int32)
    b = np.zeros((10, 12), np.int32)
    for fn in (instance_scores, aji, aji_plus, object_dice, panoptic_quality, pixel_scores):
        with pytest.raises(ValueError, match="shapes differ"):
            fn(a, b)
    with pytest.raises(ValueError, match="2-D"):
        aji(np.zeros((2, 5, 5), np.int32), np.zeros((2, 5, 5), np.int32))
    with pytest.raises(ValueError, match="negative"):
        aji(a - 1, a)
    with pytest.raises(ValueError, match="integer"):
        aji(a + 0.5, a)
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(a, a, iou_threshold=1.0)


# ----------------------------------------------------------------------------------------------
# instance segmentation: brute-force references on random maps
# ----------------------------------------------------------------------------------------------
def _random_instances(rng, shape=(48, 48), n=12):
    m = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 14, size=2)
        m[r : r + h, c : c + w] = k
    return m


def _reference_scores(pred, gt):
    """Object-by-object loops with dense IoU matrices (slow, obviously correct)."""
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    G = [gt == i for i in g_ids]
    P = [pred == j for j in p_ids]
    inter = np.array([[np.sum(g & p) for p in P] for g in G], dtype=float).reshape(len(G), len(P))
    union = np.array([[np.sum(g | p) for p in P] for g in G], dtype=float).reshape(len(G), len(P))
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    g_area = np.array([g.sum() for g in G], float)
    p_area = np.array([p.sum() for p in P], float)
    out = {}
    # AJI (Kumar), missed GT adds only its area
    C = U = 0.0
    used = set()
    for i in range(len(G)):
        if len(P) and inter[i].max() > 0:
            j = int(np.argmax(iou[i]))
            C += inter[i, j]
            U += union[i, j]
            used.add(j)
        else:
            U += g_area[i]
    U += sum(p_area[j] for j in range(len(P)) if j not in used)
    out["aji"] = C / U
    # AJI+ (HoVer-Net): dense Hungarian on IoU
    r, c = linear_sum_assignment(-iou)
    keep = iou[r, c] > 0
    r, c = r[keep], c[keep]
    C = inter[r, c].sum()
    U = union[r, c].sum() + np.delete(g_area, r).sum() + np.delete(p_area, c).sum()
    out["aji_plus"] = C / U
    # object Dice
    dice = 2 * inter / (g_area[:, None] + p_area[None, :])
    out["object_dice"] = 0.5 * (
        sum(g_area[i] / g_area.sum() * dice[i, np.argmax(inter[i])] for i in range(len(G)))
        + sum(p_area[j] / p_area.sum() * dice[np.argmax(inter[:, j]), j] for j in range(len(P)))
    )
    # PQ
    tp = iou[iou > 0.5]
    dq = len(tp) / (len(tp) + 0.5 * (len(P) - len(tp)) + 0.5 * (len(G) - len(tp)))
    out["dq"] = dq
    out["sq"] = tp.mean() if len(tp) else 0.0
    out["pq"] = dq * out["sq"]
    return out


@pytest.mark.parametrize("seed", range(15))
def test_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    gt = _random_instances(rng)
    # prediction: perturbed GT (shifted, some ids merged / dropped) or independent
    if seed % 3 == 0:
        pred = _random_instances(rng)
    else:
        pred = np.roll(gt, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        pred[pred == 3] = 4  # merge
        pred[pred == 5] = 0  # miss
        pred = square(pred, 50, 40, 40, 6, 6)  # false positive
    s = instance_scores(pred, gt)
    ref = _reference_scores(pred, gt)
    for k, v in ref.items():
        assert s[k] == pytest.approx(v, abs=1e-12), k


def test_sparse_contingency_fallback_matches_dense(monkeypatch):
    import bundle.metrics as bm

    rng = np.random.default_rng(123)
    gt = _random_instances(rng, n=20)
    pred = _random_instances(rng, n=20)
    dense = instance_scores(pred, gt)
    monkeypatch.setattr(bm, "_DENSE_TABLE_MAX", 0)  # force the np.unique path
    sparse_ = instance_scores(pred, gt)
    for k in INSTANCE_KEYS:
        assert sparse_[k] == pytest.approx(dense[k], abs=1e-12), k


def test_fast_enough_on_large_map():
    # 1000 x 1000 with ~700 objects; generous bound to keep CI stable (typically ~0.05 s)
    import time

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1000, 0:1000]
    centres = rng.uniform(0, 1000, size=(700, 2))
    gt = np.zeros((1000, 1000), np.int32)
    # grid-bucketed painting of disks of radius 10 (fast enough for a test)
    for k, (cy, cx) in enumerate(centres, start=1):
        r0, r1 = int(max(cy - 10, 0)), int(min(cy + 11, 1000))
        c0, c1 = int(max(cx - 10, 0)), int(min(cx + 11, 1000))
        sub = (yy[r0:r1, c0:c1] - cy) ** 2 + (xx[r0:r1, c0:c1] - cx) ** 2 <= 100
        gt[r0:r1, c0:c1][sub] = k
    pred = np.roll(gt, (3, -2), axis=(0, 1))
    t = time.perf_counter()
    s = instance_scores(pred, gt)
    assert time.perf_counter() - t < 2.0
    assert 0 < s["aji"] < 1 and 0 < s["pq"] < 1


# ----------------------------------------------------------------------------------------------
# points
# ----------------------------------------------------------------------------------------------
def test_point_radius_is_inclusive():
    gt = np.array([[0.0, 0.0]])
    pred = np.array([[3.0, 4.0]])  # distance exactly 5
    inside = point_scores(pred, gt, radius=5.0)
    assert (inside["tp"], inside["fp"], inside["fn"]) == (1, 0, 0)
    assert inside["f1"] == 1.0
    outside = point_scores(pred, gt, radius=4.99)
    assert (outside["tp"], outside["fp"], outside["fn"]) == (0, 1, 1)
    assert outside["precision"] == outside["recall"] == outside["f1"] == 0.0


def test_hungarian_beats_greedy_nearest():
    # radius 2; g1 = (0, 0), g2 = (0, 3); p1 = (0, 1.8) (1.8 from g1, 1.2 from g2), p2 = (0, 4.5)
    # (1.5 from g2, 4.5 from g1). Greedy by smallest distance takes p1-g2 (1.2) first and then
    # nothing else is within 2 -> 1 match. One-to-one optimum: p1-g1 and p2-g2 -> 2 matches.
    gt = np.array([[0.0, 0.0], [0.0, 3.0]])
    pred = np.array([[0.0, 1.8], [0.0, 4.5]])
    d = np.linalg.norm(pred[:, None] - gt[None], axis=-1)
    greedy, used_p, used_g = 0, set(), set()
    for flat in np.argsort(d, axis=None):
        i, j = np.unravel_index(flat, d.shape)
        if d[i, j] <= 2 and i not in used_p and j not in used_g:
            greedy += 1
            used_p.add(i)
            used_g.add(j)
    assert greedy == 1
    s = point_scores(pred, gt, radius=2.0)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    pi, gj = match_points(pred, gt, 2.0)
    assert pi.tolist() == [0, 1] and gj.tolist() == [0, 1]


def test_matching_maximises_matches_within_radius():
    # Plain "Hungarian on distances, then drop pairs > radius" picks p1-g1 (0) + p2-g2 (1.79) =
    # 1.79 < p1-g2 (1) + p2-g1 (1) = 2, losing a match. Restricting to pairs within the radius
    # finds both.
    gt = np.array([[0.0, 0.0], [1.0, 0.0]])
    pred = np.array([[0.0, 0.0], [-0.6, 0.8]])
    d = np.linalg.norm(pred[:, None] - gt[None], axis=-1)
    r, c = linear_sum_assignment(d)
    assert np.sum(d[r, c] <= 1.05) == 1
    s = point_scores(pred, gt, radius=1.05)
    assert s["tp"] == 2


def test_point_empty_conventions():
    none = np.zeros((0, 2))
    pts = np.array([[1.0, 1.0], [5.0, 5.0]])
    s = point_scores(none, none, 3.0)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 0, 0)
    assert s["precision"] == s["recall"] == s["f1"] == 1.0
    s = point_scores(none, pts, 3.0)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 0, 2)
    assert s["precision"] == s["recall"] == s["f1"] == 0.0
    s = point_scores(pts, [], 3.0)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 2, 0)
    assert s["f1"] == 0.0


def test_point_scores_partial():
    # 3 GT, 2 predictions, one of them matches: P = 1/2, R = 1/3, F1 = 2*1/(2+3) = 0.4
    gt = np.array([[0, 0], [10, 10], [20, 20]], float)
    pred = np.array([[0.5, 0.5], [50, 50]], float)
    s = point_scores(pred, gt, 2.0)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 2)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(0.4)


def test_multiclass_point_scores():
    # GT: (0,0) class 1; (10,0) and (20,0) class 2.
    # Pred: (0,1) class 1 (correct), (10,1) class 1 (right place, wrong class), (50,50) class 2.
    gt_xy = np.array([[0, 0], [10, 0], [20, 0]], float)
    gt_cls = np.array([1, 2, 2])
    pred_xy = np.array([[0, 1], [10, 1], [50, 50]], float)
    pred_cls = np.array([1, 1, 2])
    s = multiclass_point_scores(pred_xy, pred_cls, gt_xy, gt_cls, radius=2.0, classes=[1, 2])
    assert set(s) == {1, 2, "overall"}
    # class 1: preds (0,1), (10,1) vs GT (0,0): TP 1, FP 1, FN 0; |2 - 1| = 1
    assert (s[1]["tp"], s[1]["fp"], s[1]["fn"], s[1]["count_abs_error"]) == (1, 1, 0, 1)
    assert s[1]["precision"] == pytest.approx(0.5) and s[1]["recall"] == pytest.approx(1.0)
    # class 2: pred (50,50) vs GT (10,0), (20,0): TP 0, FP 1, FN 2; |1 - 2| = 1
    assert (s[2]["tp"], s[2]["fp"], s[2]["fn"], s[2]["count_abs_error"]) == (0, 1, 2, 1)
    assert s[2]["f1"] == 0.0
    # overall (class-agnostic): TP 2, FP 1, FN 1; |3 - 3| = 0
    o = s["overall"]
    assert (o["tp"], o["fp"], o["fn"], o["count_abs_error"]) == (2, 1, 1, 0)
    assert o["f1"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------------------------
def test_clustering_perfect_up_to_renaming():
    true = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array(["b", "b", "c", "c", "a", "a", "a"])
    s = clustering_scores(pred, true)
    assert s["purity"] == pytest.approx(1.0)
    assert s["entropy"] == pytest.approx(0.0)
    assert s["nmi"] == pytest.approx(1.0)
    assert s["ari"] == pytest.approx(1.0)
    assert s["f_score"] == pytest.approx(1.0)


def test_clustering_known_confusion():
    # classes A, B (4 each); cluster 1 = {A, A, A, B}, cluster 2 = {A, B, B, B}
    true = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    pred = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    s = clustering_scores(pred, true)
    # purity = (3 + 3) / 8
    assert s["purity"] == pytest.approx(0.75)
    # each cluster has class distribution (3/4, 1/4): H = -(.75 log2 .75 + .25 log2 .25)
    # = 0.811278; normalised by log2(2) = 1
    h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert s["entropy"] == pytest.approx(h)
    assert s["entropy"] == pytest.approx(0.8112781, abs=1e-6)
    # MI = 0.75 log2(1.5) + 0.25 log2(0.5) = 1 - H = 0.188722 bits; H(true) = H(pred) = 1 bit
    assert s["nmi"] == pytest.approx(1 - h)
    # ARI: sum C(n_ij, 2) = 6, row/col sums C(4,2)*2 = 12 each, C(8,2) = 28
    # expected = 144/28; ARI = (6 - 144/28) / (12 - 144/28) = 0.125
    assert s["ari"] == pytest.approx(0.125)
    # F(class, cluster) = 2 n_ij / (n_i + n_j): max per class = 2*3/8 = 0.75, weights 1/2 each
    assert s["f_score"] == pytest.approx(0.75)


def test_clustering_single_class_and_errors():
    s = clustering_scores([0, 1, 1], [5, 5, 5])
    assert s["entropy"] == 0.0
    assert s["purity"] == pytest.approx(1.0)
    # F: class size 3; cluster 1 (size 2): 2*2/5 = 0.8; cluster 0: 2*1/4 = 0.5 -> 0.8
    assert s["f_score"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="lengths differ"):
        clustering_scores([0, 1], [0])
    with pytest.raises(ValueError):
        clustering_scores([], [])


# ----------------------------------------------------------------------------------------------
# semantic segmentation: clusters matched to classes
# ----------------------------------------------------------------------------------------------
def test_matching_and_semantic_scores():
    counts = np.array([[90, 10, 0], [80, 0, 5], [0, 50, 0], [0, 0, 0]])  # 4 clusters x 3 classes
    np.testing.assert_array_equal(match_clusters(counts), [0, 0, 1, -1])
    np.testing.assert_array_equal(match_clusters(counts, normalize=True), [0, 2, 1, -1])  # rare class 2 wins
    s = matching_scores(counts, ["a", "b", "c"])
    assert s["mapping"] == [0, 0, 1, -1]
    assert s["iou"]["a"] == pytest.approx(170 / 185) and s["iou"]["c"] == 0.0
    assert s["f1"]["b"] == pytest.approx(2 * 50 / (2 * 50 + 10))
    s = semantic_scores(np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]]))
    assert np.isnan(s["iou"]["2"]) and s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    c = confusion_counts(np.array([[0, 1], [1, 1]]), np.array([[0, 255], [1, 0]]), 2, 2, ignore_index=255)
    np.testing.assert_array_equal(c, [[1, 0], [1, 1]])
