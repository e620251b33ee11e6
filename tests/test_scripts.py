# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The scripts/ package (``python -m scripts.<name>``): every module imports, none edits ``sys.path`` or imports a
private bundle name, and the benchmarks' helpers work on tiny synthetic inputs (the scripts themselves read
MoNuSeg / BCData / WSSS4LUAD, which tests never need). Plain imports: a broken import must fail, not skip."""

import ast
import importlib
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from scripts import (
    benchmark_bad_input,
    benchmark_classical,
    benchmark_fseg,
    benchmark_gan,
    benchmark_gradcam,
    benchmark_ki67,
    benchmark_ki67_low,
    benchmark_ki67_wsi,
    benchmark_nuclei,
    benchmark_psm,
    benchmark_speed,
    benchmark_wsi,
    make_figures,
    make_lowres,
    pipeline_report,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MODULES = sorted(p.stem for p in SCRIPTS.glob("*.py") if p.stem != "__init__")
PRIVATE_ALLOWED = set()  # (script, module, name) of private bundle names a script may import: none


@pytest.mark.parametrize("name", MODULES)
def test_script_imports_as_a_module_without_sys_path_edits_or_private_names(name):
    src = (SCRIPTS / f"{name}.py").read_text()
    assert "sys.path" not in src
    tree = ast.parse(src)
    doc = ast.get_docstring(tree)
    assert doc and doc.splitlines()[0].strip() and f"python -m scripts.{name}" in doc  # summary line + command
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("bundle", "scripts"):
            for alias in node.names:
                assert not alias.name.startswith("_") or (name, node.module, alias.name) in PRIVATE_ALLOWED, \
                    f"{name}: private import {node.module}.{alias.name}"
    mod = importlib.import_module(f"scripts.{name}")
    assert callable(mod.main)


# --------------------------------------------------------------------------------------------- data preparation
def test_make_lowres_bcdata_halves_images_and_points(tmp_path):
    import h5py

    from bundle.io import read_rgb, write_image
    from bundle.ki67.data import read_bcdata_item

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


def test_make_lowres_monuseg_subsamples_instance_labels(tmp_path):
    from bundle.annotations import read_instance_label, write_instance_label
    from bundle.io import read_rgb, write_image

    lab = np.zeros((41, 61), np.int32)  # odd sizes: the last row / column has no 2 x 2 box and is dropped
    lab[4:12, 4:12], lab[20:30, 30:50] = 1, 300  # ids above 255 survive (uint16)
    write_image(tmp_path / "m" / "test" / "images" / "a.png", np.full((41, 61, 3), 90, np.uint8))
    write_instance_label(tmp_path / "m" / "test" / "labels" / "a.png", lab)
    assert make_lowres.main(["--monuseg", str(tmp_path / "m"), "--out", str(tmp_path / "m20")]) == 0
    assert read_rgb(tmp_path / "m20" / "test" / "images" / "a.png").shape == (20, 30, 3)
    assert np.array_equal(read_instance_label(tmp_path / "m20" / "test" / "labels" / "a.png"), lab[:40:2, :60:2])
    assert not (tmp_path / "m20" / "train").exists()
    assert make_lowres.main(["--monuseg", str(tmp_path / "m"), "--restore", "--out", str(tmp_path / "up")]) == 0
    assert read_rgb(tmp_path / "up" / "test" / "images" / "a.png").shape == (40, 60, 3)
    assert np.array_equal(read_instance_label(tmp_path / "up" / "test" / "labels" / "a.png"), lab[:40, :60])


# --------------------------------------------------------------------------------------------- figures, reports
def test_make_figures_labelled_draws_a_caption_box():
    img = np.full((40, 80, 3), 128, np.uint8)
    out = make_figures.labelled(img, "ab")
    assert out.shape == img.shape and out[1, 1].tolist() == [0, 0, 0] and out[30, 70].tolist() == [128] * 3


def test_pipeline_report_reads_stage_markers_and_pseudo_mask_scores(tmp_path):
    root = tmp_path / "run"
    (root / "stages").mkdir(parents=True)
    (root / "eval" / "pseudo_masks").mkdir(parents=True)
    for st, sec in (("ssl", 120.0), ("psm", 30.0)):
        (root / "stages" / f"{st}.json").write_text(json.dumps({"stage": st, "seconds": sec, "command": ["x"]}))
    (root / "eval" / "pseudo_masks" / "summary.json").write_text(json.dumps({"pixel_f1": 0.7, "aji": 0.2,
                                                                             "n_images": 3}))
    pipeline_report.main(["--runs", f"r={root}", "--note", "toy", "--out", str(tmp_path / "rep")])
    out = json.loads((tmp_path / "rep.json").read_text())
    assert out["command"].startswith("python -m scripts.pipeline_report")
    r = out["runs"]["r"]
    assert set(r["stages"]) == {"ssl", "psm"} and r["pseudo_masks"]["aji"] == 0.2
    assert "| r | 120 | 30 | - | - | - | 2.5 | 0.700 | - | 0.200 | - |" in (tmp_path / "rep.md").read_text()


# --------------------------------------------------------------------------------------------- nuclei benchmarks
def _nuclei_tile(size=64):
    """(rgb, instance labels): two dark purple discs on a pale background."""
    yy, xx = np.mgrid[:size, :size]
    gt = np.zeros((size, size), np.int32)
    rgb = np.full((size, size, 3), (235, 225, 235), np.uint8)
    for i, (r, c) in enumerate(((18, 18), (42, 44)), 1):
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= 64
        gt[disc], rgb[disc] = i, (70, 40, 130)
    return rgb, gt


def test_classical_benchmark_grid_on_train_then_test(tmp_path):
    from bundle.annotations import write_instance_label
    from bundle.io import write_image

    rgb, gt = _nuclei_tile()
    for split in ("train", "test"):
        write_image(tmp_path / "m" / split / "images" / "a.png", rgb)
        write_instance_label(tmp_path / "m" / split / "labels" / "a.png", gt)
    assert benchmark_classical.centre_crop(np.zeros((10, 12)), 4).shape == (4, 4)
    assert benchmark_classical.floats("0.5,1,") == [0.5, 1.0] and benchmark_classical.ints("6,10") == [6, 10]
    res = benchmark_classical.main(["--monuseg", str(tmp_path / "m"), "--out", str(tmp_path / "cl"),
                                    "--threshold_scales", "1", "--min_distances", "6", "--sigmas", "1",
                                    "--min_size", "10", "--crop", "32"])
    assert len(res["grid"]) == 1 and res["command"].split()[1:3] == ["-m", "scripts.benchmark_classical"]
    assert res["test_mean"]["full"]["aji"] > 0.8 and set(res["test_mean"]) == set(benchmark_classical.PROTOCOLS)
    assert (tmp_path / "cl.md").read_text().startswith("# Classical nuclei baseline")


def test_nuclei_benchmark_instance_modes_and_scores():
    rgb, gt = _nuclei_tile()
    fg = (gt > 0).astype(np.float32)
    prob = np.stack([1 - fg, fg]) * 0.9 + 0.05
    for mode in ("cc", "watershed", "points", "watershed@0.4/8", "cc+1"):
        inst = benchmark_nuclei.instances(prob, mode, min_size=10, rgb=rgb)
        assert inst.shape == gt.shape and len(np.unique(inst)) - 1 == 2, mode
    s = benchmark_nuclei.score(gt, gt, 32)
    assert set(s) == {"full", "crop512", "crop512_cc"} and s["full"]["aji"] == pytest.approx(1.0)


def test_nuclei_benchmark_ensemble_and_scale_tta_average_probabilities():
    import torch

    from bundle.inferers import predict_probability
    from bundle.networks import ResUNet34

    rgb = np.random.default_rng(0).integers(0, 255, (48, 56, 3), dtype=np.uint8)
    torch.manual_seed(0)
    a, b = (ResUNet34(out_channels=2, base_channels=8).eval() for _ in range(2))
    pa, pb = (predict_probability(n, rgb, tta=False) for n in (a, b))
    assert np.allclose(benchmark_nuclei.predict_ensemble([a], rgb, False), pa, atol=1e-6)
    assert np.allclose(benchmark_nuclei.predict_ensemble([a, b], rgb, False), (pa + pb) / 2, atol=1e-6)
    ms = benchmark_nuclei.predict_ensemble([a], rgb, False, scales=(0.5, 1.0))
    assert ms.shape == pa.shape and np.allclose(ms.sum(0), 1, atol=1e-5) and not np.allclose(ms, pa, atol=1e-4)


def test_psm_benchmark_markdown_pairs_train_and_test_rows(tmp_path):
    row = {"method": "H-OD Otsu", "network": "-", "stage": "-", "pixel_f1": 0.7, "aji": 0.3, "pixel_precision": 0.8,
           "pixel_recall": 0.6, "object_dice": 0.65, "s_per_img": 0.5}
    meta = {"cmd": "python -m scripts.benchmark_psm", "peak_rss_gb": 1.0, "torch_threads": 1,
            "psm_s_per_img": {"random": 2.0}}
    benchmark_psm.write_md([{**row, "split": "train"}, {**row, "split": "test", "aji": 0.4}], meta, tmp_path / "p.md")
    md = (tmp_path / "p.md").read_text()
    assert "| H-OD Otsu | - | - | - | 0.700 | 0.300 | 0.700 | 0.80 / 0.60 | 0.650 | 0.400 | 0.50 |" in md
    assert "- random: 2.000" in md


def test_speed_benchmark_nchw_bypasses_channels_last_in_every_network_module():
    import bundle.networks.res2net
    import bundle.nuclei.psm

    saved = bundle.nuclei.psm.cpu_channels_last
    with benchmark_speed.nchw():
        x = object()
        assert bundle.nuclei.psm.cpu_channels_last(x) is x and bundle.networks.res2net.cpu_channels_last(x) is x
    assert bundle.nuclei.psm.cpu_channels_last is saved
    calls = []
    assert benchmark_speed.timeit(lambda: calls.append(1), repeats=2) >= 0 and len(calls) == 3  # one warm-up


def test_speed_benchmark_throughput_mode_writes_rows_per_batch(tmp_path):
    """``--throughput 1,2``: the seg network's images / s per batch size, and nothing else, in the result file."""
    res = benchmark_speed.main(["--throughput", "1,2", "--crop", "64", "--repeats", "1", "--out",
                                str(tmp_path / "tp")])
    rows = json.loads((tmp_path / "tp.json").read_text())["resunet_throughput"]
    assert list(rows) == ["batch 1, fp32", "batch 2, fp32"] and res["resunet_throughput"] == rows
    assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in rows.values())
    assert "ssl_step_s" not in res


def test_cpu_work_benchmark_times_each_pair(tmp_path):
    """Without ``--run``: the folder size (threads, cache), tile size, PNG and GeoJSON pairs, each checked equal."""
    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile
    from scripts import benchmark_cpu_work

    for s in range(2):
        write_image(tmp_path / "in" / f"t{s}.png", synthetic_he_tile(160, seed=s)[0])
    benchmark_cpu_work.main(["--images", str(tmp_path / "in"), "--out", str(tmp_path / "cw")])
    r = json.loads((tmp_path / "cw.json").read_text())
    assert set(r["folder_diameter_s"]) == {"1 thread", "default threads", "from the cache", "diameter"}
    assert r["geojson_s"]["features"] > 0 and "seg_labels_s" not in r
    assert "| overlay PNG of one tile |" in (tmp_path / "cw.md").read_text()


def test_wsi_benchmark_checkerboard_slide_and_mode_agreement(tmp_path, monkeypatch):
    from bundle.io import write_csv
    from bundle.wsi import SlideTiles

    monkeypatch.setattr(benchmark_wsi, "CELL", 40)
    tiles = [np.full((40, 40, 3), 100, np.uint8), np.full((40, 40, 3), 160, np.uint8)]
    tissue, placed = benchmark_wsi.make_slide(tmp_path / "s.tif", tiles, 2)
    assert tissue == 0.5 and placed == [(0, 0, 0), (1, 40, 40)]
    s = SlideTiles(tmp_path / "s.tif", tile_size=64, margin=0)
    assert np.array_equal(s.read(40, 40, 40, 40), tiles[1]) and s.read(0, 40, 40, 40).min() == 242
    s.close()
    gt = np.zeros((40, 40), np.int32)
    gt[8:13, 8:13], gt[28:33, 28:33] = 1, 2  # centroids (10, 10) and (30, 30)
    # slide points (row, col) in slide pixels: tile 0 finds both cells, tile 1 one cell (+ one spurious point)
    write_csv(tmp_path / "slide.csv", [{"row": r, "col": c} for r, c in ((10, 10), (30, 30), (50, 50), (75, 75))])
    for name in ("a", "b"):  # tile mode: each tile finds its first cell only
        write_csv(tmp_path / "tiles" / "points" / f"{name}.csv", [{"row": 10, "col": 10}])
    c = benchmark_wsi.agreement(tmp_path / "slide.csv", tmp_path / "tiles", ["a", "b"], [gt, gt], placed)
    assert (c["slide"], c["tiles"], c["gt"], c["matched"]) == (4, 2, 4, 2)
    assert (c["tp_slide"], c["tp_tiles"]) == (3, 2) and c["f1_slide"] == pytest.approx(6 / 8)
    assert benchmark_wsi.peak_rss_gb("\tMaximum resident set size (kbytes): 1048576\n") == 1.0
    assert np.isnan(benchmark_wsi.peak_rss_gb("no time -v output"))


# --------------------------------------------------------------------------------------------- Ki-67 benchmarks
def test_ki67_benchmark_halves_and_run_groups():
    stems = [str(i) for i in range(5)]
    halves = benchmark_ki67.split_stems(stems)
    assert halves == {"dev": [0, 2, 4], "test": [1, 3]}
    # one GT positive per image at (x=10, y=10); the prediction hits it on dev images only
    gts = [(np.array([[10.0, 10.0]]), np.array([1])) for _ in stems]
    hit, miss = (np.array([[10, 10]]), np.array([1], np.uint8)), (np.array([[40, 40]]), np.array([1], np.uint8))
    preds = [hit if i % 2 == 0 else miss for i in range(5)]
    res = benchmark_ki67.score_split(preds, gts, halves)
    assert res["split"]["dev"]["r10"]["overall"]["f1"] == 1.0
    assert res["split"]["test"]["r10"]["overall"]["f1"] == 0.0
    assert res["r10"]["overall"]["tp"] == 3 and res["r10"]["overall"]["fp"] == 2
    all_hit = benchmark_ki67.score_split([hit] * 5, gts, halves)
    groups = benchmark_ki67.group_summary({"a@s0 (TTA)": res, "a@s1 (TTA)": all_hit, "a@s1 (no TTA)": res,
                                           "single@s0 (TTA)": res})
    assert list(groups) == ["a"] and groups["a"]["n_runs"] == 2  # no-TTA rows and one-run groups are left out
    assert groups["a"]["test_r10"]["values"] == [0.0, 1.0] and groups["a"]["test_r10"]["mean"] == 0.5


def test_ki67_benchmark_radius_curve_and_error_anatomy():
    # GT cells (x, y): A (100, 100), B (300, 300), C (500, 100). Predictions (row, col): 12 px right of A (a near
    # miss), exactly on B, one at (row 5, col 320) far from every cell and at the tile edge; C is missed entirely.
    gts = [(np.array([[100.0, 100.0], [300.0, 300.0], [500.0, 100.0]]), np.array([1, 2, 2]))]
    preds = [(np.array([[100, 112], [300, 300], [5, 320]]), np.array([1, 2, 2], np.uint8))]
    curve = benchmark_ki67.radius_curve(preds, gts, radii=(10, 15))
    assert curve["10"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2), abs=1e-4)  # only B matches at 10 px
    assert curve["15"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1), abs=1e-4)  # A's near miss counts at 15 px
    e = benchmark_ki67.error_anatomy(preds, gts, 10, shapes=[(640, 640)])
    assert (e["fp"], e["fp_near"], e["fp_mid"], e["fp_far"], e["fp_far_edge"]) == (2, 1, 0, 1, 1)
    assert (e["fp_positive"], e["fp_negative"]) == (1, 1)
    assert (e["fn"], e["fn_near"], e["fn_far"]) == (2, 1, 1)


def _ihc_tile():
    """A pale 96x96 tile with a brown (DAB) nucleus at (row 24, col 24) and a blue (haematoxylin) one at (70, 64)."""
    yy, xx = np.mgrid[:96, :96]
    rgb = np.full((96, 96, 3), (235, 232, 228), np.uint8)
    rgb[(yy - 24) ** 2 + (xx - 24) ** 2 <= 81] = (140, 85, 45)
    rgb[(yy - 70) ** 2 + (xx - 64) ** 2 <= 81] = (90, 95, 160)
    return rgb


def test_ki67_benchmark_classical_methods_find_and_class_the_two_nuclei(tmp_path):
    from bundle.io import write_image

    rgb = _ihc_tile()
    for method in (benchmark_ki67.otsu_rule, benchmark_ki67.classical_log_per_stain):
        pts, cls = method([rgb], 20.0)[0]
        order = np.argsort(pts[:, 0])
        assert len(pts) == 2 and np.abs(pts[order] - [[24, 24], [70, 64]]).max() <= 3, method.__name__
        assert cls[order].tolist() == [benchmark_ki67.POSITIVE, benchmark_ki67.NEGATIVE], method.__name__

    class Labeler:  # the blob finder on the labeler's positive mask, as alt_kmeans_only uses it
        min_distance, min_area = 5, 20

        def masks(self, img):
            return np.all(img == (140, 85, 45), -1), np.all(img == (90, 95, 160), -1)

    pts, cls = benchmark_ki67.alt_kmeans_only([rgb], 20.0, Labeler())[0]
    assert pts.tolist() == [[24, 24]] and cls.tolist() == [benchmark_ki67.POSITIVE]
    for s in ("10", "2", "1"):
        write_image(tmp_path / f"{s}.png", rgb[:8, :8])
    assert benchmark_ki67.tile_stems(tmp_path) == ["1", "2", "10"]


def test_ki67_wsi_benchmark_mosaic_offsets_and_scores(tmp_path):
    from bundle.wsi import SlideTiles

    tiles = [np.full((40, 50, 3), 200 - 10 * k, np.uint8) for k in range(5)]
    offsets = benchmark_ki67_wsi.make_mosaic(tmp_path / "m.tif", tiles, cols=2, gap=8)
    s = SlideTiles(tmp_path / "m.tif", tile_size=64, margin=0)
    for t, (r, c) in zip(tiles, offsets):
        assert np.array_equal(s.read(r, c, 40, 50), t)
    border = benchmark_ki67_wsi.BORDER
    assert offsets[1] == (border, border + 58) and offsets[2] == (border + 48, border)
    s.close()
    # two tiles, one GT cell each; a prediction on each (one right class, one wrong), one far off (FP)
    gts = [(np.array([[10.0, 20.0]]), np.array([1])), (np.array([[30.0, 5.0]]), np.array([2]))]
    boxes = [(0, 0, 40, 50), (0, 60, 40, 110)]
    pred = {"points": np.array([[21.0, 11.0], [5.0, 92.0], [35.0, 45.0]]),
            "class": np.array(["Positive", "Positive", "Negative"])}
    sc = benchmark_ki67_wsi.score(pred, gts, boxes)
    assert (sc["overall"]["tp"], sc["overall"]["fp"], sc["overall"]["fn"]) == (2, 1, 0)
    assert sc["positive"]["tp"] == 1 and sc["negative"]["fn"] == 1
    inner = benchmark_ki67_wsi.score(pred, gts, boxes, inner=8)  # the GT at x = 5 and the point at (35, 45): edge band
    assert (inner["overall"]["tp"], inner["overall"]["fp"], inner["overall"]["fn"]) == (1, 0, 0)


# --------------------------------------------------------------------------------------------- F-SEG, GAN, Grad-CAM
def test_fseg_benchmark_colour_kmeans_matches_colour_classes():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8], rgb[:, 8:] = (200, 30, 40), (245, 245, 245)
    gt = np.zeros((16, 16), np.int64)
    gt[:, 8:] = 3  # tumour | background
    scores, maps = benchmark_fseg.colour_kmeans([("p", rgb, gt)], [2], seed=0, n_sample=256)
    m = scores["colour_k2"]["match"]
    assert m["f1"]["tumour"] == pytest.approx(1.0) and m["f1"]["background"] == pytest.approx(1.0)
    coloured = benchmark_fseg.class_map(maps[2][0], m["mapping"])
    assert np.array_equal(coloured, benchmark_fseg.CLASS_COLOURS[gt])


def test_gan_benchmark_chance_accuracy_and_labelled_grid():
    y = np.array([0, 1] * 20)
    acc = benchmark_gan.chance_matched_accuracy(y, 2, n=50)
    assert 0.5 <= acc < 0.7  # matched accuracy of random labels: at least the majority share
    rows = [np.zeros((4, 6, 3), np.uint8), np.full((4, 3, 3), 255, np.uint8)]
    grid = benchmark_gan.labelled_grid(rows, ["a", "b\nc"], scale=2, label_w=10)
    assert grid.shape == (16, 22, 3) and grid[0, 10].tolist() == [0, 0, 0]
    assert benchmark_gan.raw_pixels(np.full((2, 4, 4, 3), 255, np.uint8)).shape == (2, 48)


def test_gradcam_benchmark_synthetic_inputs_are_cropped_to_multiples_of_32():
    args = Namespace(images=None, monuseg=False, size=70, n_synthetic=1)
    [(name, rgb, orig)] = benchmark_gradcam.load_inputs(args)
    assert name == "synthetic_70_seed0" and rgb.shape == (64, 64, 3) and orig == (70, 70)
    assert rgb.flags["C_CONTIGUOUS"]


def test_bad_input_corpus_cases_hold(tmp_path):
    """One case of the bad-input corpus (issue 33) as a user runs it, through the benchmark's harness; the rest run in
    the benchmark (same stems: tests/nuclei/test_runner.py, datalists: tests/test_io.py, typos:
    tests/test_overrides.py)."""
    assert benchmark_bad_input.main(["--cases", "zero_byte", "--work", str(tmp_path), "--out",
                                     str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["outputs_valid"] for c in report["cases"]] == [True]


def test_low_proliferation_folders_and_scores():
    """benchmark_ki67_low's folder maker and scorer on hand-made crops: cells near the edge are not scored."""
    pos, neg = 1, 2
    crops = [{"name": "a", "size": 100, "gt": np.array([[50, 50], [20, 30], [2, 50]]),
              "cls": np.array([pos, neg, pos])},
             {"name": "b", "size": 100, "gt": np.array([[40, 40]]), "cls": np.array([neg])}]
    assert benchmark_ki67_low._index(crops) == pytest.approx(1 / 3)  # the edge cell (x=2) is left out
    preds = [(np.array([[50, 50], [30, 20]]), np.array([pos, neg])), (np.array([[40, 40]]), np.array([pos]))]
    s = benchmark_ki67_low.score_folder(preds, crops)
    assert s["pos_precision"] == 0.5 and s["pos_recall"] == 1.0 and s["pos_on_none_crops"] == 1
    assert s["index_mae"] == pytest.approx(0.5) and s["index_worst"] == pytest.approx(1.0)
