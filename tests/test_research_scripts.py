# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Helpers of the research scripts (diagnose_nuclei, tune_ki67_postprocess, benchmark_ki67, explore_seg,
diagnose_ki67_negatives, pipeline_report, benchmark_nuclei, make_lowres, oracle_teacher) on tiny synthetic inputs (the scripts
themselves read MoNuSeg / BCData, which tests never need)."""

import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

diagnose = pytest.importorskip("diagnose_nuclei")
tune = pytest.importorskip("tune_ki67_postprocess")


def test_error_breakdown_separates_missed_and_spurious_objects():
    gt = np.zeros((40, 40), np.int32)
    gt[5:15, 5:15] = 1  # found
    gt[25:35, 5:15] = 2  # wholly missed
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 1
    pred[25:35, 25:35] = 2  # spurious, far from any GT
    b = diagnose.breakdown(diagnose.errors(pred, gt))
    assert b["fn_of_gt"] == pytest.approx(0.5)
    assert b["fn_in_missed_objects"] == pytest.approx(1.0)
    assert b["fp_of_pred"] == pytest.approx(0.5)
    assert b["fp_in_spurious_objects"] == pytest.approx(1.0)
    assert b["fp_in_boundary_band"] == pytest.approx(0.0)


def test_oracle_with_gt_foreground_and_gt_points_is_near_perfect():
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((64, 64), np.int32)
    for i, (r, c) in enumerate(((16, 14), (16, 27), (45, 45)), 1):  # a touching pair (with a neck) and one alone
        gt[((yy - r) ** 2 + (xx - c) ** 2 <= 49) & (gt == 0)] = i
    prob = np.stack([np.where(gt > 0, 0.1, 0.9), np.where(gt > 0, 0.9, 0.1)]).astype(np.float32)
    res = diagnose.oracle(prob, gt)
    assert res["gt_foreground+gt_points"]["aji"] > 0.95
    assert res["ours"]["pixel_f1"] > 0.95


def test_ki67_counts_match_points_per_class():
    prob = np.zeros((3, 64, 64), np.float32)
    prob[0] = 1.0
    yy, xx = np.mgrid[:64, :64]
    for (r, c), ch in (((16, 16), 1), ((40, 44), 2)):
        blob = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 4.0 ** 2))
        prob[ch] += blob
        prob[0] -= blob
    prob = np.clip(prob, 0, 1)
    gt_xy = np.array([[16.0, 16.0], [44.0, 40.0], [60.0, 5.0]])  # (x, y); the last one is missed
    gt_cls = np.array([1, 2, 2])
    c = tune.counts([(prob, gt_xy, gt_cls)], {"threshold": 0.5, "nucleus_diameter": 20.0, "sigma": 2.0}, 10)
    assert c[0].tolist() == [2, 2, 3]  # both found overall
    assert c[1].tolist() == [1, 1, 1]  # positive
    assert c[2].tolist() == [1, 1, 2]  # negative: one of two found
    assert tune.f1(c[0])["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))


def test_ki67_benchmark_halves_and_run_groups():
    bench = pytest.importorskip("benchmark_ki67")
    stems = [str(i) for i in range(5)]
    halves = bench.split_stems(stems)
    assert halves == {"dev": [0, 2, 4], "test": [1, 3]}
    # one GT positive per image at (x=10, y=10); the prediction hits it on dev images only
    gts = [(np.array([[10.0, 10.0]]), np.array([1])) for _ in stems]
    hit, miss = (np.array([[10, 10]]), np.array([1], np.uint8)), (np.array([[40, 40]]), np.array([1], np.uint8))
    preds = [hit if i % 2 == 0 else miss for i in range(5)]
    res = bench.score_split(preds, gts, halves)
    assert res["split"]["dev"]["r10"]["overall"]["f1"] == 1.0
    assert res["split"]["test"]["r10"]["overall"]["f1"] == 0.0
    assert res["r10"]["overall"]["tp"] == 3 and res["r10"]["overall"]["fp"] == 2
    all_hit = bench.score_split([hit] * 5, gts, halves)
    groups = bench.group_summary({"a@s0 (TTA)": res, "a@s1 (TTA)": all_hit, "a@s1 (no TTA)": res,
                                  "single@s0 (TTA)": res})
    assert list(groups) == ["a"] and groups["a"]["n_runs"] == 2  # no-TTA rows and one-run groups are left out
    assert groups["a"]["test_r10"]["values"] == [0.0, 1.0] and groups["a"]["test_r10"]["mean"] == 0.5


def test_ki67_benchmark_radius_curve_and_error_anatomy():
    bench = pytest.importorskip("benchmark_ki67")
    # GT cells (x, y): A (100, 100), B (300, 300), C (500, 100). Predictions (row, col): 12 px right of A (a near
    # miss), exactly on B, one at (row 5, col 320) far from every cell and at the tile edge; C is missed entirely.
    gts = [(np.array([[100.0, 100.0], [300.0, 300.0], [500.0, 100.0]]), np.array([1, 2, 2]))]
    preds = [(np.array([[100, 112], [300, 300], [5, 320]]), np.array([1, 2, 2], np.uint8))]
    curve = bench.radius_curve(preds, gts, radii=(10, 15))
    assert curve["10"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2), abs=1e-4)  # only B matches at 10 px
    assert curve["15"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1), abs=1e-4)  # A's near miss counts at 15 px
    e = bench.error_anatomy(preds, gts, 10, shapes=[(640, 640)])
    assert (e["fp"], e["fp_near"], e["fp_mid"], e["fp_far"], e["fp_far_edge"]) == (2, 1, 0, 1, 1)
    assert (e["fp_positive"], e["fp_negative"]) == (1, 1)
    assert (e["fn"], e["fn_near"], e["fn_far"]) == (2, 1, 1)


def test_explore_seg_hematoxylin_channel_input():
    ex = pytest.importorskip("explore_seg")
    import torch

    from bundle.networks import ResUNet34
    from bundle.transforms import normalize_rgb

    rgb = np.full((64, 64, 3), 230, np.uint8)
    rgb[20:40, 20:40] = (90, 60, 150)  # a purple (haematoxylin) square on a pale background
    x = ex.make_prep("hchannel")(rgb)
    assert x.shape == (64, 64, 4) and np.array_equal(x[..., :3], rgb.astype(np.float32))
    hc = normalize_rgb(torch.from_numpy(x[..., 3]))  # h / otsu - 1: positive on the nucleus, negative outside
    assert hc[30, 30] > 0 > hc[2, 2]
    torch.manual_seed(0)
    prob = ex.predict(ResUNet34(in_channels=4, out_channels=2, base_channels=8).eval(), x, tta=True)
    assert prob.shape == (2, 64, 64) and np.allclose(prob.sum(0), 1, atol=1e-5)


def test_ki67_negative_cues_separate_matched_from_unmatched_points(tmp_path):
    """A PSM that is bright exactly at the annotated cells gets AUC 1; the constant score column is skipped."""
    import h5py

    from bundle.io import write_image

    import diagnose_ki67_negatives as neg  # a plain import: a broken import must fail, not skip
    data = tmp_path / "bc"
    for sub in ("images", "annotations/positive", "annotations/negative", "points", "psm"):
        (data / sub).mkdir(parents=True)
    rgb = np.full((80, 80, 3), 220, np.uint8)
    write_image(data / "images" / "0.png", rgb)
    annotated, unannotated = [(10, 10), (30, 50)], [(60, 20), (70, 70)]  # (x, y)
    with h5py.File(data / "annotations/negative/0.h5", "w") as f:
        f["coordinates"] = np.array(annotated)
    with h5py.File(data / "annotations/positive/0.h5", "w") as f:
        f["coordinates"] = np.zeros((0, 2), int)
    rows = ["image,x,y,class,score"] + [f"0,{x},{y},Negative,0.9" for x, y in annotated + unannotated]
    (data / "points" / "0.csv").write_text("\n".join(rows) + "\n")
    psm = np.zeros((80, 80), np.uint8)
    for x, y in annotated:
        psm[y - 4: y + 5, x - 4: x + 5] = 255
    write_image(data / "psm" / "0.png", psm)
    X, y = neg.cue_table(data, data / "points", data / "psm", radius=5)
    assert X.shape == (4, len(neg.CUES)) and y.tolist() == [True, True, False, False]
    neg.main(["--data", str(data), "--points", f"toy={data / 'points'}", "--psm_dir", str(data / "psm"),
              "--radius", "5", "--out", str(tmp_path / "cues")])
    import json

    res = json.loads((tmp_path / "cues.json").read_text())["results"]["toy"]
    assert res["auc"]["psm_9"]["auc"] == pytest.approx(1.0) and res["auc"]["psm_9"]["higher_is_annotated"]
    assert res["auc"]["score"] is None and res["annotated_fraction"] == pytest.approx(0.5)


def test_pipeline_report_reads_stage_markers_and_pseudo_mask_scores(tmp_path):
    import json

    import pipeline_report as rep
    root = tmp_path / "run"
    (root / "stages").mkdir(parents=True)
    (root / "eval" / "pseudo_masks").mkdir(parents=True)
    for st, sec in (("ssl", 120.0), ("psm", 30.0)):
        (root / "stages" / f"{st}.json").write_text(json.dumps({"stage": st, "seconds": sec, "command": ["x"]}))
    (root / "eval" / "pseudo_masks" / "summary.json").write_text(json.dumps({"pixel_f1": 0.7, "aji": 0.2,
                                                                             "n_images": 3}))
    rep.main(["--runs", f"r={root}", "--note", "toy", "--out", str(tmp_path / "rep")])
    out = json.loads((tmp_path / "rep.json").read_text())["runs"]["r"]
    assert set(out["stages"]) == {"ssl", "psm"} and out["pseudo_masks"]["aji"] == 0.2
    assert "| r | 120 | 30 | - | - | - | 2.5 | 0.700 | - | 0.200 | - |" in (tmp_path / "rep.md").read_text()


def test_nuclei_benchmark_ensemble_and_scale_tta_average_probabilities():
    import benchmark_nuclei as bn  # a plain import: a broken import must fail, not skip
    import torch

    from bundle.detection import predict_probability
    from bundle.networks import ResUNet34

    rgb = np.random.default_rng(0).integers(0, 255, (48, 56, 3), dtype=np.uint8)
    torch.manual_seed(0)
    a, b = (ResUNet34(out_channels=2, base_channels=8).eval() for _ in range(2))
    pa, pb = (predict_probability(n, rgb, tta=False) for n in (a, b))
    assert np.allclose(bn.predict_ensemble([a], rgb, False), pa, atol=1e-6)
    assert np.allclose(bn.predict_ensemble([a, b], rgb, False), (pa + pb) / 2, atol=1e-6)
    ms = bn.predict_ensemble([a], rgb, False, scales=(0.5, 1.0))
    assert ms.shape == pa.shape and np.allclose(ms.sum(0), 1, atol=1e-5) and not np.allclose(ms, pa, atol=1e-4)


def test_ki67_wsi_benchmark_mosaic_offsets_and_scores(tmp_path):
    import benchmark_ki67_wsi as kw  # a plain import: a broken import must fail, not skip

    from bundle.wsi import SlideTiles

    tiles = [np.full((40, 50, 3), 200 - 10 * k, np.uint8) for k in range(5)]
    offsets = kw.make_mosaic(tmp_path / "m.tif", tiles, cols=2, gap=8)
    s = SlideTiles(tmp_path / "m.tif", tile_size=64, margin=0)
    for t, (r, c) in zip(tiles, offsets):
        assert np.array_equal(s.read(r, c, 40, 50), t)
    assert offsets[1] == (kw.BORDER, kw.BORDER + 58) and offsets[2] == (kw.BORDER + 48, kw.BORDER)
    s.close()
    # two tiles, one GT cell each; a prediction on each (one right class, one wrong), one far off (FP)
    gts = [(np.array([[10.0, 20.0]]), np.array([1])), (np.array([[30.0, 5.0]]), np.array([2]))]
    boxes = [(0, 0, 40, 50), (0, 60, 40, 110)]
    pred = {"points": np.array([[21.0, 11.0], [5.0, 92.0], [35.0, 45.0]]),
            "class": np.array(["Positive", "Positive", "Negative"])}
    sc = kw.score(pred, gts, boxes)
    assert (sc["overall"]["tp"], sc["overall"]["fp"], sc["overall"]["fn"]) == (2, 1, 0)
    assert sc["positive"]["tp"] == 1 and sc["negative"]["fn"] == 1
    inner = kw.score(pred, gts, boxes, inner=8)  # the GT at x = 5 and the point at (35, 45) lie in the edge band
    assert (inner["overall"]["tp"], inner["overall"]["fp"], inner["overall"]["fn"]) == (1, 0, 0)


def test_make_lowres_bcdata_halves_images_and_points(tmp_path):
    import h5py
    import make_lowres  # a plain import: a broken import must fail, not skip

    from bundle.io import read_rgb, write_image
    from bundle.ki67 import read_bcdata_item

    src = tmp_path / "bc"
    write_image(src / "images" / "0.png", np.full((64, 80, 3), 120, np.uint8))
    for cls, pts in (("positive", [[10, 20], [41, 61]]), ("negative", [[70, 6]])):
        (src / "annotations" / cls).mkdir(parents=True)
        with h5py.File(src / "annotations" / cls / "0.h5", "w") as f:
            f.create_dataset("coordinates", data=np.array(pts, np.float64))
    assert make_lowres.main(["--bcdata", str(src), "--factor", "2", "--out", str(tmp_path / "b20")]) == 0
    pts, cls = read_bcdata_item(tmp_path / "b20", "0")
    assert np.abs(pts - np.array([[5, 10], [20.5, 30.5], [35, 3]])).max() <= 0.5 and list(cls) == [1, 1, 2]
    assert read_rgb(tmp_path / "b20" / "images" / "0.png").shape == (32, 40, 3)
    assert make_lowres.main(["--bcdata", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    # --restore: 20x detail back on the 40x grid, annotations unchanged
    assert make_lowres.main(["--bcdata", str(src), "--restore", "--out", str(tmp_path / "up")]) == 0
    assert read_rgb(tmp_path / "up" / "images" / "0.png").shape == (64, 80, 3)
    assert np.array_equal(read_bcdata_item(tmp_path / "up", "0")[0], read_bcdata_item(src, "0")[0])


def test_oracle_teacher_writes_annotation_labels_in_the_pipelines_format(tmp_path):
    import os
    import time

    import h5py
    import oracle_teacher  # a plain import: a broken import must fail, not skip

    from bundle.annotations import write_instance_label
    from bundle.detection import instance_points, segmentation_targets
    from bundle.io import write_csv, write_image
    from bundle.ki67 import read_bcdata_item

    # MoNuSeg: two train tiles with two nuclei each; a finished label-free root to take the det network from
    mon, src = tmp_path / "monuseg", tmp_path / "src"
    gts = {}
    for k in range(2):
        gt = np.zeros((48, 48), np.int32)
        gt[5:15, 5:15], gt[30:40, 20 + k:32 + k] = 1, 2
        gts[f"t{k}"] = gt
        write_image(mon / "train" / "images" / f"t{k}.png", np.full((48, 48, 3), 150, np.uint8))
        write_instance_label(mon / "train" / "labels" / f"t{k}.png", gt)
        write_image(src / "eval" / "pseudo_masks" / "masks" / f"t{k}.png", np.zeros((48, 48), np.uint8))
        write_csv(src / "eval" / "seg_labels" / "points" / f"t{k}.csv", [{"row": 9, "col": 9}])
    (src / "models" / "det").mkdir(parents=True)
    (src / "models" / "det" / "model.pt").write_bytes(b"weights")
    old = time.time() - 3600
    os.utime(src / "models" / "det" / "model.pt", (old, old))
    root = tmp_path / "gt"
    oracle_teacher.main(["--monuseg", str(mon), "--from", str(src), "--root", str(root)])
    lab = np.load(root / "eval" / "seg_labels" / "t1.npy")
    want = segmentation_targets(gts["t1"] > 0, np.round(instance_points(gts["t1"])).astype(int), keep_foreground=True)
    assert np.array_equal(lab, want)
    det = root / "models" / "det" / "model.pt"  # copied with its old time stamp: the labels count as fresh
    assert det.read_bytes() == b"weights" and det.stat().st_mtime < (root / "eval" / "seg_labels" / "t1.npy").stat().st_mtime
    # pseudo mask kept, annotated points: the mask channel is the source's (empty) mask
    oracle_teacher.main(["--monuseg", str(mon), "--from", str(src), "--root", str(tmp_path / "pts"), "--mask", "from"])
    assert np.load(tmp_path / "pts" / "eval" / "seg_labels" / "t0.npy")[0].max() == 0
    with pytest.raises(SystemExit):
        oracle_teacher.main(["--monuseg", str(mon), "--root", str(tmp_path / "x")])  # --from is required

    # BCData: four tiles; only the dev half (stems 0 and 2) is linked and labelled from its annotations
    bc = tmp_path / "bc"
    for s in range(4):
        write_image(bc / "images" / f"{s}.png", np.full((80, 80, 3), 180, np.uint8))
        for cls, pts in (("positive", [[10, 20]]), ("negative", [[30, 5]])):
            (bc / "annotations" / cls).mkdir(parents=True, exist_ok=True)
            with h5py.File(bc / "annotations" / cls / f"{s}.h5", "w") as f:
                f.create_dataset("coordinates", data=np.array(pts, np.float64))
    oracle_teacher.main(["--bcdata", str(bc), "--root", str(tmp_path / "k")])
    assert sorted(p.name for p in (tmp_path / "k" / "tiles").iterdir()) == ["0.png", "2.png"]
    lab = np.load(tmp_path / "k" / "eval" / "ki67_labels" / "2.npy")[0]
    (x1, y1), (x2, y2) = read_bcdata_item(bc, "2")[0]
    assert lab.shape == (80, 80) and lab[int(y1), int(x1)] == 1 and lab[int(y2), int(x2)] == 2
    assert not (tmp_path / "k" / "eval" / "ki67_labels" / "1.npy").exists()
    # ki67_train.json's round 1 (its default label settings) must reuse these labels, not refit colour pseudo labels
    from bundle.ki67 import prepare_ki67_labels

    out = prepare_ki67_labels(str(tmp_path / "k" / "tiles"), tmp_path / "k" / "eval" / "ki67_labels",
                              nucleus_diameter=20, val_fraction=0.5)
    assert len(out["training"]) + len(out["validation"]) == 2
    assert np.array_equal(np.load(tmp_path / "k" / "eval" / "ki67_labels" / "2.npy")[0], lab)


def test_diagnose_seg_points_scores_det_and_mask_points(tmp_path):
    import diagnose_seg_points  # a plain import: a broken import must fail, not skip

    from bundle.annotations import write_instance_label
    from bundle.io import write_csv, write_image

    # one train tile with two separate nuclei; the pseudo mask is exact, the det network found only one of them
    mon, root = tmp_path / "monuseg", tmp_path / "root"
    gt = np.zeros((64, 64), np.int32)
    gt[5:17, 5:17], gt[40:52, 30:42] = 1, 2
    write_image(mon / "train" / "images" / "t.png", np.full((64, 64, 3), 150, np.uint8))
    write_instance_label(mon / "train" / "labels" / "t.png", gt)
    write_image(root / "eval" / "pseudo_masks" / "masks" / "t.png", ((gt > 0) * 255).astype(np.uint8))
    write_csv(root / "eval" / "seg_labels" / "points" / "t.csv", [{"row": 11, "col": 11}])
    out = tmp_path / "diag"
    r = diagnose_seg_points.main(["--monuseg", str(mon), "--runs", f"a={root}", "--min_distance", "8", "--out", str(out)])
    det, mask = r["runs"]["a"]["det"]["6"], r["runs"]["a"]["mask_md8"]["6"]
    assert det["n_points"] == 1 and det["precision"] == 1.0 and det["recall"] == 0.5
    assert mask["n_points"] == 2 and mask["f1"] == 1.0
    assert out.with_suffix(".md").read_text().count("| a |") == 2 and out.with_suffix(".json").is_file()
    # a root whose seg labels took mask points has no det points to score: a one-line refusal naming the file
    from bundle.io import write_json

    write_json(root / "eval" / "seg_labels" / "settings.json", {"point_source": "mask"})
    with pytest.raises(SystemExit, match="settings.json.*point_source mask"):
        diagnose_seg_points.main(["--monuseg", str(mon), "--runs", f"a={root}", "--out", str(out)])
