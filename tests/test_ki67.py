# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 (IHC positive / negative) label-free detection: pseudo labels on synthetic DAB + haematoxylin tiles, the
no-DAB (H&E) rule, per-class peaks, and the ki67_train -> ki67_infer bundle run end to end (tiny)."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.ki67 import (IGNORE, NEGATIVE, POSITIVE, Ki67PseudoLabeler, Ki67Runner, NoDABWarning, dab_fraction,
                         ki67_points, point_label, synthetic_ihc_tile)
from bundle.cells import read_point_table
from bundle.io import ImageError
from bundle.label_free import child_env
from bundle.metrics import multiclass_point_scores


@pytest.fixture(scope="module")
def ihc_tiles():
    return [synthetic_ihc_tile(160, n_positive=5, n_negative=7, radius=7, seed=s) for s in range(3)]


@pytest.fixture(scope="module")
def ihc_dir(tmp_path_factory, ihc_tiles):
    from bundle.io import write_image

    d = tmp_path_factory.mktemp("ihc")
    for i, (rgb, _, _) in enumerate(ihc_tiles):
        write_image(d / f"tile_{i}.png", rgb)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


def test_pseudo_labels_classes_on_synthetic_blobs(ihc_tiles):
    lab = Ki67PseudoLabeler(nucleus_diameter=14).fit([t[0] for t in ihc_tiles])
    for rgb, pts, cls in ihc_tiles:
        p, c = lab.points(rgb)
        s = multiclass_point_scores(p, c, pts, cls, 5, [POSITIVE, NEGATIVE])
        assert s[POSITIVE]["f1"] >= 0.9 and s[NEGATIVE]["f1"] >= 0.9, s


def test_min_thickness_drops_thin_streaks():
    from bundle.ki67 import _blob_points

    mask = np.zeros((64, 96), bool)
    yy, xx = np.mgrid[:64, :96]
    mask |= (yy - 32) ** 2 + (xx - 20) ** 2 <= 10 ** 2  # round nucleus, radius 10
    mask[30:34, 45:90] = True  # spindle streak, 4 px wide and 45 px long
    both = _blob_points(mask, 5, 30)
    assert len(both) >= 2 and (both[:, 1] > 40).any()
    kept = _blob_points(mask, 5, 30, min_thickness=5)
    assert len(kept) == 1 and abs(kept[0, 0] - 32) <= 1 and abs(kept[0, 1] - 20) <= 1


def test_tile_negative_threshold_finds_pale_tile_negatives(ihc_tiles):
    """negative_threshold='tile': a pale tile among darker ones keeps its negatives (the folder-wide haematoxylin
    threshold, set by the dark tiles, loses most of them)."""
    rgb, pts, cls = ihc_tiles[0]
    pale = (255 * (rgb / 255.0) ** 0.5).astype(np.uint8)  # half the optical density
    imgs = [t[0] for t in ihc_tiles] + [pale]
    recall = {}
    for mode in ("folder", "tile"):
        lab = Ki67PseudoLabeler(nucleus_diameter=14, negative_threshold=mode).fit(imgs)
        p, c = lab.points(pale)
        recall[mode] = multiclass_point_scores(p, c, pts, cls, 5, [POSITIVE, NEGATIVE])[NEGATIVE]["recall"]
        p, c = lab.points(rgb)
        assert multiclass_point_scores(p, c, pts, cls, 5, [POSITIVE, NEGATIVE])[NEGATIVE]["f1"] >= 0.9
    assert recall["folder"] < 0.6 and recall["tile"] >= 0.9, recall
    with pytest.raises(ValueError, match="negative_threshold"):
        Ki67PseudoLabeler(negative_threshold="slide")


def test_point_label_disks_and_ignore_ring():
    lab = point_label(np.array([[20, 20], [20, 50]]), np.array([POSITIVE, NEGATIVE]), (64, 80), 3, 6)
    assert lab[20, 20] == POSITIVE and lab[20, 50] == NEGATIVE
    assert lab[20, 25] == IGNORE and lab[0, 0] == 0
    assert set(np.unique(lab)) == {0, POSITIVE, NEGATIVE, IGNORE}
    assert (lab == POSITIVE).sum() == (lab == NEGATIVE).sum() == 29  # disk(3)


def test_ki67_points_per_class():
    prob = np.zeros((3, 64, 96), np.float32)
    yy, xx = np.mgrid[:64, :96]
    b1 = np.exp(-((yy - 30) ** 2 + (xx - 20) ** 2) / 20.0)
    b2 = np.exp(-((yy - 30) ** 2 + (xx - 70) ** 2) / 20.0)
    prob[1], prob[2] = b1, b2
    prob[0] = 1 - prob[1] - prob[2]
    pts, cls, score = ki67_points(prob, 0.3, nucleus_diameter=10, sigma=1)
    order = np.argsort(pts[:, 1])
    assert pts[order].tolist() == [[30, 20], [30, 70]] and cls[order].tolist() == [POSITIVE, NEGATIVE]
    assert np.all(score > 0.3)


def test_he_input_in_ihc_mode_gives_zero_positives_and_warning(ihc_tiles, tmp_path, caplog):
    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile

    he, _ = synthetic_he_tile(160, seed=3)
    assert dab_fraction(he) < 0.002 < dab_fraction(ihc_tiles[0][0])
    lab = Ki67PseudoLabeler(nucleus_diameter=14).fit([t[0] for t in ihc_tiles])
    with pytest.warns(NoDABWarning, match="he.png: no DAB"):
        p, c = lab.points(he, "he.png")
    assert len(p) > 0 and (c == POSITIVE).sum() == 0
    # runner, network mode: even an (untrained) network's positives are dropped on an H&E tile
    write_image(tmp_path / "in" / "he.png", he)
    torch.manual_seed(0)
    from bundle.networks import ResUNet34

    net = ResUNet34(out_channels=3, base_channels=8)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([-2.0, 1.0, 0.0]))  # predicts 'positive' everywhere
    logging.getLogger("bundle.ki67").disabled = False  # a bundle run's logging.conf may have disabled it
    with caplog.at_level(logging.WARNING, logger="bundle.ki67"):
        s = Ki67Runner(net, str(tmp_path / "in"), tmp_path / "out", tta=False, nucleus_diameter=14,
                       threshold=0.3).run()
    assert s["n_positive"] == 0 and s["ki67_index"] == 0.0
    assert any("he.png: no DAB (brown) signal" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)


def test_ensemble_teacher_averages_probabilities(ihc_dir, tmp_path):
    """Self-training labels from a list of teachers: the same checkpoint twice must give exactly the single teacher's
    labels (a mean, not a sum); a comma-separated string is the same list; a missing teacher is a one-line error."""
    from bundle.handlers import atomic_torch_save
    from bundle.ki67 import prepare_ki67_labels, teacher_list
    from bundle.networks import ResUNet34

    torch.manual_seed(0)
    net = ResUNet34(out_channels=3, base_channels=8)
    with torch.no_grad():  # a head that makes the untrained teacher detect peaks of its own noise on the tiles
        net.head.bias.copy_(torch.tensor([-0.5, 0.0, 0.2]))
    ck = tmp_path / "t.pt"
    atomic_torch_save(net.state_dict(), ck)
    assert teacher_list(None) == [] and teacher_list(f"{ck}, {ck}") == [str(ck), str(ck)]
    kw = dict(nucleus_diameter=14, base_channels=8, threshold=0.3, val_fraction=0.0)
    one = prepare_ki67_labels(str(ihc_dir), tmp_path / "one", teacher_ckpt=str(ck), **kw)
    two = prepare_ki67_labels(str(ihc_dir), tmp_path / "two", teacher_ckpt=f"{ck},{ck}", **kw)
    assert len(one["training"]) == len(two["training"]) == 3
    found = set()
    for a, b in zip(one["training"], two["training"]):
        np.testing.assert_array_equal(np.load(a["label"]), np.load(b["label"]))
        found |= set(np.unique(np.load(a["label"])).tolist())
    assert found & {POSITIVE, NEGATIVE}  # the comparison is not between empty labels
    with pytest.raises(Exception, match="nope.pt"):
        prepare_ki67_labels(str(ihc_dir), tmp_path / "bad", teacher_ckpt=[str(ck), str(tmp_path / "nope.pt")], **kw)
    # a teacher with the haematoxylin input channel (ki67_train --hematoxylin_input True) is read as such
    net4 = ResUNet34(in_channels=4, out_channels=3, base_channels=8)
    atomic_torch_save(net4.state_dict(), tmp_path / "t4.pt")
    four = prepare_ki67_labels(str(ihc_dir), tmp_path / "four", teacher_ckpt=str(tmp_path / "t4.pt"), **kw)
    assert len(four["training"]) == 3


def test_teacher_point_mode_is_recorded_only_when_not_the_default():
    """Round-2 label folders written before ``teacher_point_mode`` existed keep a valid record (not rebuilt); a
    centroid teacher's labels get their own record (rebuilt when the mode changes)."""
    from bundle.ki67 import label_settings

    old = {"nucleus_diameter": 20.0, "min_thickness": 0.0, "disk_radius": None, "negative_threshold": None,
           "label_seed": None, "ignore_radius": None, "threshold": 0.5}
    assert label_settings(20, teachers=["t.pt"]) == old
    assert label_settings(20, teachers=["t.pt"], teacher_point_mode="centroid") == {**old,
                                                                                   "teacher_point_mode": "centroid"}
    assert "teacher_point_mode" not in label_settings(20, teacher_point_mode="centroid")  # round 1: no teacher


def test_run_names_and_round_teachers(tmp_path):
    from bundle.ki67 import round_checkpoints, run_name

    assert [run_name(1), run_name(2), run_name(1, 3), run_name(2, 1)] == ["ki67", "ki67_r2", "ki67_seed3",
                                                                          "ki67_r2_seed1"]
    assert run_name(2, 1, "ki67_train") == "ki67_train_r2_seed1"
    for name in ("ki67", "ki67_seed10", "ki67_seed2", "ki67_seedx", "ki67_r2"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "model.pt").write_bytes(b"")
    (tmp_path / "models" / "ki67_seed3").mkdir()  # no model.pt: left out
    assert [os.path.basename(os.path.dirname(p)) for p in round_checkpoints(tmp_path, 1)] == [
        "ki67", "ki67_seed2", "ki67_seed10"]
    with pytest.raises(FileNotFoundError, match="ki67_r3.*train round 3 first"):
        round_checkpoints(tmp_path, 3)


def test_ki67_points_centroid_mode_centres_the_point_on_its_region():
    """A large nucleus whose probability peaks off-centre (a brighter spot near its rim): 'peak' puts the point on
    the spot, 'centroid' (the default) on the nucleus' centre; the class and score come from the peak either way."""
    yy, xx = np.mgrid[:80, :100]
    disk = ((yy - 40) ** 2 + (xx - 50) ** 2 <= 14 ** 2).astype(np.float32)
    spot = np.exp(-((yy - 40) ** 2 + (xx - 60) ** 2) / 8.0)
    fg = np.clip(0.7 * disk + 0.3 * spot * disk, 0, 1)
    prob = np.stack([1 - fg, np.zeros_like(fg), fg])  # one negative cell
    peak, cls_p, score_p = ki67_points(prob, 0.5, nucleus_diameter=30, sigma=1, point_mode="peak")
    cen, cls_c, score_c = ki67_points(prob, 0.5, nucleus_diameter=30, sigma=1)
    assert len(peak) == len(cen) == 1 and cls_p.tolist() == cls_c.tolist() == [NEGATIVE]
    assert abs(peak[0, 1] - 60) <= 2 and abs(cen[0, 1] - 50) <= 1 and abs(cen[0, 0] - 40) <= 1
    np.testing.assert_allclose(score_p, score_c)
    with pytest.raises(ValueError, match="point_mode"):
        ki67_points(prob, point_mode="middle")


def test_runner_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown stain"):
        Ki67Runner(None, str(tmp_path), tmp_path, stain="pap")
    with pytest.raises(ValueError, match="unknown method"):
        Ki67Runner(None, str(tmp_path), tmp_path, method="magic")
    with pytest.raises(ValueError, match="unknown point_mode"):
        Ki67Runner(None, str(tmp_path), tmp_path, point_mode="middle")


def test_pseudo_labels_do_not_depend_on_the_training_seed(ihc_dir, tmp_path, monkeypatch):
    """Training seeds sharing a bundle root share its round-1 labels: the K-Means seed is ``label_seed``, not the
    training ``seed`` (which draws the held-back split), so seeds started side by side write identical labels."""
    import bundle.ki67 as k

    seeds = []
    init = k.Ki67PseudoLabeler.__init__

    def spy(self, *args, **kw):
        seeds.append(kw.get("seed"))
        init(self, *args, **kw)

    monkeypatch.setattr(k.Ki67PseudoLabeler, "__init__", spy)
    a = k.prepare_ki67_labels(str(ihc_dir), tmp_path / "a", nucleus_diameter=14, seed=0, val_fraction=0.34)
    b = k.prepare_ki67_labels(str(ihc_dir), tmp_path / "b", nucleus_diameter=14, seed=5, val_fraction=0.34)
    assert seeds == [0, 0]
    for i in range(3):
        assert np.array_equal(np.load(tmp_path / "a" / f"tile_{i}.npy"), np.load(tmp_path / "b" / f"tile_{i}.npy"))
    assert len(a["training"]) + len(a["validation"]) == len(b["training"]) + len(b["validation"]) == 3
    k.prepare_ki67_labels(str(ihc_dir), tmp_path / "a", nucleus_diameter=14, seed=0, label_seed=3, val_fraction=0.34)
    assert seeds == [0, 0, 3]  # a changed label_seed rewrites the labels


def _bundle_run(root, config, args):
    env = child_env(OMP_NUM_THREADS=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / config),
           "--meta_file", str(root / "configs" / "metadata.json"),
           "--logging_file", str(root / "configs" / "logging.conf")] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_ki67_train_then_infer_end_to_end(root, ihc_dir, tmp_path):
    broot = tmp_path / "b"
    common = ["--dataset_dir", ihc_dir, "--bundle_root", broot, "--base_channels", 8, "--nucleus_diameter", 14]
    tr = _bundle_run(root, "ki67_train.json", common + ["--epochs", 1, "--crop_size", 64, "--steps_per_epoch", 2,
                                                         "--val_interval", 1, "--crops_per_image", 2])
    assert tr.returncode == 0, tr.stderr[-2000:]
    ckpts = broot / "models" / "ki67"
    assert (ckpts / "model.pt").is_file() and (ckpts / "best_model.pt").is_file()
    lab = np.load(broot / "eval" / "ki67_labels" / "tile_0.npy")
    assert lab.shape == (1, 160, 160) and set(np.unique(lab)) <= {0, POSITIVE, NEGATIVE, IGNORE}
    assert {POSITIVE, NEGATIVE} <= set(np.unique(lab))
    bad = [ln for ln in (tr.stdout + tr.stderr).splitlines() if "broken.png" in ln]
    assert bad and "skipped" in bad[0]
    # a second round-1 seed, then round 2 taught by both (averaged): the robust recipe of docs/ki67.md
    short = ["--epochs", 1, "--crop_size", 64, "--steps_per_epoch", 1, "--val_interval", 1, "--crops_per_image", 1]
    s1 = _bundle_run(root, "ki67_train.json", common + short + ["--seed", 1])
    assert s1.returncode == 0, s1.stderr[-2000:]
    assert (broot / "models" / "ki67_seed1" / "model.pt").is_file()
    r2 = _bundle_run(root, "ki67_train.json", common + short + ["--round", 2])
    assert r2.returncode == 0, r2.stderr[-2000:]
    taught = [ln for ln in (r2.stdout + r2.stderr).splitlines() if "teachers (averaged)" in ln]
    assert taught and "ki67_seed1" in taught[0] and str(ckpts / "model.pt") in taught[0]
    assert (broot / "models" / "ki67_r2" / "model.pt").is_file()

    inf = _bundle_run(root, "ki67_infer.json", common + ["--tta", False, "--threshold", 0.2])
    assert inf.returncode == 0, inf.stderr[-2000:]
    out = broot / "eval" / "ki67"
    for sub, ext in (("points", "csv"), ("geojson", "geojson"), ("overlays", "png")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"tile_{i}.{ext}" for i in range(3)]
    assert (out / "points" / "tile_0.csv").read_text().splitlines()[0] == "image,x,y,class,score"
    gj = json.loads((out / "geojson" / "tile_0.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    assert all(f["properties"]["classification"]["name"] in ("Positive", "Negative") for f in gj["features"])
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_images"] == 3 and summ["n_skipped"] == 1 and "broken.png" in summ["skipped"][0]
    assert 0.0 <= summ["ki67_index"] <= 1.0
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"image", "n_positive", "n_negative", "ki67_index"} <= set(header)
    msg = [ln for ln in (inf.stdout + inf.stderr).splitlines() if "skipped" in ln and "broken.png" in ln]
    assert msg and "cannot read image" in msg[0]
    assert not list(out.rglob("*.part*"))  # atomic writers leave no temporary files

    # the classical method (pseudo labels alone, no network) on the same folder finds the synthetic cells
    cl = _bundle_run(root, "ki67_infer.json", common + ["--method", "classical", "--output_dir", tmp_path / "cl"])
    assert cl.returncode == 0, cl.stderr[-2000:]
    s = json.loads((tmp_path / "cl" / "summary.json").read_text())
    assert s["n_positive"] == 15 and s["n_negative"] == 21 and s["ki67_index"] == pytest.approx(15 / 36)


def test_stain_he_delegates_to_nuclei_workflow(root, tmp_path):
    from monai.bundle import ConfigWorkflow

    from bundle.io import write_image
    from bundle.networks import ResUNet34
    from bundle.synthetic import synthetic_he_tile

    for i in range(2):
        write_image(tmp_path / "he" / f"h{i}.png", synthetic_he_tile(96, seed=i)[0])
    (tmp_path / "b" / "models" / "seg").mkdir(parents=True)
    torch.save(ResUNet34(out_channels=2, base_channels=8).state_dict(), tmp_path / "b" / "models" / "seg" / "model.pt")
    wf = ConfigWorkflow(config_file=str(root / "configs" / "ki67_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), bundle_root=str(tmp_path / "b"),
                        dataset_dir=str(tmp_path / "he"), stain="he", base_channels=8, tta=False)
    wf.initialize()
    summ = wf.run()[0]
    assert summ["n_images"] == 2 and "n_nuclei" in summ
    assert (tmp_path / "b" / "eval" / "nuclei" / "summary.csv").is_file()


def test_changed_label_settings_rewrite_labels(ihc_dir, tmp_path):
    """A rerun with another min_thickness (or diameter) in the same bundle root must not reuse the old labels."""
    from bundle.ki67 import prepare_ki67_labels

    first = prepare_ki67_labels(str(ihc_dir), tmp_path / "lab", nucleus_diameter=14, val_fraction=0.0)
    lab = first["training"][0]["label"]
    assert set(np.unique(np.load(lab)).tolist()) & {POSITIVE, NEGATIVE}
    prepare_ki67_labels(str(ihc_dir), tmp_path / "lab", nucleus_diameter=14, val_fraction=0.0, min_thickness=100)
    assert not set(np.unique(np.load(lab)).tolist()) & {POSITIVE, NEGATIVE}  # every blob is thinner than 100 px


def _colour_net():
    """A fixed 1x1-conv 'network' (bg / positive / negative logits from the normalised RGB): white -> background,
    brown -> positive, blue -> negative. Lets slide tests compare against tile mode without training."""
    net = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[2 / 3, 2 / 3, 2 / 3], [3.0, 0.0, -3.0], [-3.0, 0.0, 3.0]])[..., None, None])
        net.bias.copy_(torch.tensor([-1.0, 0.0, 0.0]))
    return net.eval()


def test_whole_slide_ihc_matches_tile_mode_and_reports_hotspot(tmp_path, caplog):
    from bundle.io import read_rgb, write_image
    from bundle.metrics import match_points
    from bundle.wsi import write_pyramid_tiff

    tile, _, _ = synthetic_ihc_tile(256, n_positive=8, n_negative=12, radius=7, seed=4)
    tile = (tile * 0.88).astype(np.uint8)  # tissue darker than glass (BCData's tissue: grey 190-215)
    write_image(tmp_path / "tiles" / "t.png", tile)
    for d in ("slides", "blank"):
        (tmp_path / d).mkdir()
    canvas = np.full((520, 640, 3), 242, np.uint8)
    canvas[130:386, 200:456] = tile
    write_pyramid_tiff(tmp_path / "slides" / "s.tif", canvas)
    write_pyramid_tiff(tmp_path / "blank" / "b.tif", np.full((300, 300, 3), 245, np.uint8))
    kw = dict(tta=False, nucleus_diameter=14, hotspot_min_cells=3)
    ref = Ki67Runner(_colour_net(), str(tmp_path / "tiles"), tmp_path / "out_t", **kw).run()
    Ki67Runner(_colour_net(), str(tmp_path / "slides"), tmp_path / "out_s", wsi_tile=128, **kw).run()
    assert ref["n_positive"] > 0 and ref["n_negative"] > 0
    t_pts, s_pts = (read_point_table(tmp_path / d / "points" / f"{n}.csv") for d, n in (("out_t", "t"), ("out_s", "s")))
    moved = s_pts["points"] - np.array([130, 200])  # slide level-0 pixels back to the tile's
    mi, mj = match_points(moved[:, ::-1], t_pts["points"][:, ::-1], 3)
    assert len(mi) >= 0.9 * max(len(moved), len(t_pts["points"]))  # tile seams may move a point, not the count
    assert (s_pts["class"][mi] == t_pts["class"][mj]).mean() >= 0.9
    assert np.sort(np.linalg.norm(moved[:, None] - moved[None], axis=-1), 1)[:, 1].min() > 3  # no seam doubles
    rows = (tmp_path / "out_s" / "tiles" / "s.csv").read_text().splitlines()
    assert rows[0] == "x,y,n_positive,n_negative,n_cells,ki67_index"
    assert sum(int(r.split(",")[4]) for r in rows[1:]) == len(moved)  # per-tile counts add up to the points CSV
    # level 1 (half resolution): points still come out in level-0 pixels, on the same cells
    Ki67Runner(_colour_net(), str(tmp_path / "slides"), tmp_path / "out_l1", wsi_tile=128, wsi_level=1, **kw).run()
    l1 = read_point_table(tmp_path / "out_l1" / "points" / "s.csv")["points"]
    mi, _ = match_points(l1[:, ::-1], s_pts["points"][:, ::-1], 4)
    assert len(l1) and len(mi) >= 0.8 * max(len(l1), len(moved))
    row = (tmp_path / "out_s" / "summary.csv").read_text().splitlines()
    head = row[0].split(",")
    vals = dict(zip(head, row[1].split(",")))
    assert int(vals["n_cells"]) == len(moved) and int(vals["tiles"]) == len(rows) - 1 > 1
    hot = float(vals["hotspot_ki67_index"])
    assert 0 <= hot <= 1 and hot >= float(vals["ki67_index"])
    ov = read_rgb(tmp_path / "out_s" / "overlays" / "s.png")  # the slide's thumbnail with red / blue cells
    assert ov.shape[:2] == (260, 320) and ((ov == (255, 0, 0)).all(-1).any() and (ov == (0, 0, 255)).all(-1).any())
    gj = json.loads((tmp_path / "out_s" / "geojson" / "s.geojson").read_text())
    assert len(gj["features"]) == len(moved)
    # a slide without tissue: empty outputs and a warning, not a crash
    logging.getLogger("bundle.ki67").disabled = False
    with caplog.at_level(logging.WARNING, logger="bundle.ki67"):
        b = Ki67Runner(_colour_net(), str(tmp_path / "blank"), tmp_path / "out_b", **kw).run()
    assert b["n_cells"] == 0 and any("no tissue" in r.getMessage() for r in caplog.records)
    # a biopsy-sized piece of tissue on a large glass slide keeps its positives (the DAB fraction is of the tissue)
    small = np.full((1200, 1200, 3), 242, np.uint8)
    small[100:356, 100:356] = tile
    (tmp_path / "biopsy").mkdir()
    write_pyramid_tiff(tmp_path / "biopsy" / "bx.tif", small)
    bx = Ki67Runner(_colour_net(), str(tmp_path / "biopsy"), tmp_path / "out_bx", wsi_tile=256, **kw).run()
    assert bx["n_positive"] > 0
    with pytest.raises(ValueError, match="wsi_min_tissue"):
        Ki67Runner(_colour_net(), str(tmp_path / "slides"), tmp_path / "out_x", wsi_min_tissue=5)
    # the classical labeller is fitted on tiles: a slide alone is reported in one line
    with pytest.raises(ImageError, match="whole slides need method 'network'"):
        Ki67Runner(None, str(tmp_path / "slides"), tmp_path / "out_c", method="classical", **kw).run()


def test_ki67_train_resizes_tiles_to_train_mpp(root, ihc_dir, tmp_path):
    """20x tiles (--mpp 0.5) are trained on at 40x (train_mpp 0.25, default): resized x2 once, sizes at 40x,
    and the pixel size trained at is what the checkpoint's settings.json will say."""
    from monai.bundle import ConfigParser

    from bundle.io import read_rgb
    from bundle.transforms import resampled_tiles

    def parsed(**over):
        p = ConfigParser()
        p.read_config(str(root / "configs" / "ki67_train.json"))
        p.update({"dataset_dir": str(ihc_dir), "bundle_root": str(tmp_path / "b"), **over})
        return p

    p = parsed(mpp=0.5)
    items = p.get_parsed_content("train_data")
    assert [read_rgb(it["image"]).shape for it in items] == [(320, 320, 3)] * 3  # broken.png skipped
    assert p.get_parsed_content("nucleus_diameter") == 20
    ckpt = next(h for h in p["train#handlers"] if "CheckpointResume" in str(h.get("_target_", "")))
    assert ckpt["settings"] == {"mpp": "@train_mpp"} and p.get_parsed_content("train_mpp") == 0.25
    mtime = Path(items[0]["image"]).stat().st_mtime_ns
    assert resampled_tiles(str(ihc_dir), 2.0, tmp_path / "b" / "eval" / "ki67_tiles") == items
    assert Path(items[0]["image"]).stat().st_mtime_ns == mtime  # written once, reused
    # another folder with the same stems into the same cache: rewritten, not reused; shared stems kept apart
    from bundle.io import write_image

    other = tmp_path / "other"
    write_image(other / "tile_0.png", np.zeros((40, 50, 3), np.uint8))
    write_image(other / "sub" / "tile_0.png", np.full((40, 50, 3), 255, np.uint8))
    import json as _json

    dl = tmp_path / "dl.json"
    dl.write_text(_json.dumps({"training": [{"image": "other/tile_0.png"}, {"image": "other/sub/tile_0.png"}]}))
    got = resampled_tiles(str(dl), 2.0, tmp_path / "b" / "eval" / "ki67_tiles")
    assert len({g["image"] for g in got}) == 2
    assert [read_rgb(g["image"]).shape for g in got] == [(80, 100, 3)] * 2
    assert read_rgb(got[0]["image"]).max() == 0 and read_rgb(got[1]["image"]).min() == 255
    # the tiles' own pixel size (the behaviour before train_mpp): no copy, sizes scaled to 20x
    p = parsed(mpp=0.5, train_mpp=0.5)
    assert p.get_parsed_content("train_data") == str(ihc_dir) and p.get_parsed_content("nucleus_diameter") == 10
    assert parsed().get_parsed_content("train_data") == str(ihc_dir)


def test_teacher_sees_tiles_at_its_training_mpp(ihc_dir, tmp_path, monkeypatch):
    """A self-training teacher trained at another pixel size (its settings.json) gets the tiles resized to it; one
    without settings.json (before 0.8.0) or at the tiles' own pixel size gets them as they are."""
    import json

    import bundle.detection
    from bundle.handlers import SETTINGS_NAME, atomic_torch_save
    from bundle.ki67 import prepare_ki67_labels
    from bundle.networks import ResUNet34

    net = ResUNet34(out_channels=3, base_channels=8)
    for sub, mpp in (("t20x", 0.5), ("t40x", 0.25), ("old", None)):
        (tmp_path / sub).mkdir()
        atomic_torch_save(net.state_dict(), tmp_path / sub / "model.pt")
        if mpp is not None:
            (tmp_path / sub / SETTINGS_NAME).write_text(json.dumps({"mpp": mpp}))
    seen = []
    real = bundle.detection.predict_probability

    def spy(*args, scale=1.0, **kwargs):
        seen.append(scale)
        return real(*args, scale=scale, **kwargs)

    monkeypatch.setattr(bundle.detection, "predict_probability", spy)
    teachers = ",".join(str(tmp_path / s / "model.pt") for s in ("t20x", "t40x", "old"))
    prepare_ki67_labels(str(ihc_dir), tmp_path / "labels", teacher_ckpt=teachers, nucleus_diameter=14,
                        base_channels=8, val_fraction=0.0, mpp=0.25)
    assert seen[:3] == [0.5, 1.0, 1.0] and len(seen) == 9  # 3 tiles x 3 teachers
