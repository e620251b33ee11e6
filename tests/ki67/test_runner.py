# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.ki67.runner: the Ki67Runner on tiles and slides, stain delegation, ki67_train -> ki67_infer runs."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from bundle.annotations import read_point_table
from bundle.inferers import TilePredictor
from bundle.io import ImageError
from bundle.ki67.data import synthetic_ihc_tile
from bundle.ki67.points import Ki67Cells
from bundle.ki67.pseudo_labels import IGNORE, NEGATIVE, POSITIVE
from bundle.ki67.runner import Ki67Runner
from bundle.label_free import child_env, config_arg
from bundle.wsi import SlideOptions


def test_runner_rejects_bad_settings(tmp_path):
    from bundle.ki67.runner import stain_runner

    with pytest.raises(ValueError, match="unknown stain"):
        stain_runner("pap", None, None)
    with pytest.raises(ValueError, match="unknown method"):
        Ki67Runner(None, str(tmp_path), tmp_path, method="magic")
    with pytest.raises(ValueError, match="unknown point_mode"):
        Ki67Cells(point_mode="middle")


def _bundle_run(root, config, args):
    env = child_env(OMP_NUM_THREADS=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg(config, root / "configs"),
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
    assert (out / "points" / "tile_0.csv").read_text().splitlines()[0] == "image,x,y,class,score,dab_od"
    gj = json.loads((out / "geojson" / "tile_0.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    assert all(f["properties"]["classification"]["name"] in ("Positive", "Negative") for f in gj["features"])
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_images"] == 3 and summ["n_skipped"] == 1 and "broken.png" in summ["skipped"][0]
    assert 0.0 <= summ["ki67_index_ci_low"] <= summ["ki67_index"] <= summ["ki67_index_ci_high"] <= 1.0
    assert summ["positivity"] == "dab" and summ["dab_threshold"] == 0.3 and (out / "dab_histogram.png").is_file()
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"image", "n_positive", "n_negative", "ki67_index"} <= set(header)
    msg = [ln for ln in (inf.stdout + inf.stderr).splitlines() if "skipped" in ln and "broken.png" in ln]
    assert msg and "cannot read image" in msg[0]
    assert not list(out.rglob("*.part*"))  # atomic writers leave no temporary files


def test_ki67_classical_method_finds_the_synthetic_cells(root, ihc_dir, tmp_path):
    """The classical method (pseudo labels alone, no network) on the end-to-end test's folder."""
    common = ["--dataset_dir", ihc_dir, "--bundle_root", tmp_path / "b", "--base_channels", 8, "--nucleus_diameter", 14]
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
    (tmp_path / "b" / "models").mkdir(parents=True)
    torch.save(ResUNet34(out_channels=2, base_channels=8).state_dict(), tmp_path / "b" / "models" / "model.pt")
    wf = ConfigWorkflow(config_file=str(root / "configs" / "ki67_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), bundle_root=str(tmp_path / "b"),
                        dataset_dir=str(tmp_path / "he"), stain="he", base_channels=8, tta=False)
    wf.initialize()
    summ = wf.run()[0]
    assert summ["n_images"] == 2 and "n_nuclei" in summ
    assert (tmp_path / "b" / "eval" / "nuclei" / "summary.csv").is_file()


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
    kw = dict(predictor=TilePredictor(tta=False), cells=Ki67Cells(nucleus_diameter=14), hotspot_min_cells=3)
    ref = Ki67Runner(_colour_net(), str(tmp_path / "tiles"), tmp_path / "out_t", **kw).run()
    Ki67Runner(_colour_net(), str(tmp_path / "slides"), tmp_path / "out_s", wsi=SlideOptions(tile=128), **kw).run()
    assert ref["n_positive"] > 0 and ref["n_negative"] > 0
    t_pts, s_pts = (read_point_table(tmp_path / d / "points" / f"{n}.csv") for d, n in (("out_t", "t"), ("out_s", "s")))
    moved = s_pts["points"] - np.array([130, 200])  # slide level-0 pixels back to the tile's
    mi, mj = match_points(moved[:, ::-1], t_pts["points"][:, ::-1], 3)
    assert len(mi) >= 0.9 * max(len(moved), len(t_pts["points"]))  # tile seams may move a point, not the count
    assert (s_pts["class"][mi] == t_pts["class"][mj]).mean() >= 0.9
    assert np.sort(np.linalg.norm(moved[:, None] - moved[None], axis=-1), 1)[:, 1].min() > 3  # no seam doubles
    rows = (tmp_path / "out_s" / "tiles" / "s.csv").read_text().splitlines()
    assert rows[0] == "x,y,n_positive,n_negative,n_cells,ki67_index,ki67_index_ci_low,ki67_index_ci_high"
    assert sum(int(r.split(",")[4]) for r in rows[1:]) == len(moved)  # per-tile counts add up to the points CSV
    # level 1 (half resolution): points still come out in level-0 pixels, on the same cells
    Ki67Runner(_colour_net(), str(tmp_path / "slides"), tmp_path / "out_l1", wsi=SlideOptions(tile=128, level=1),
               **kw).run()
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
    bx = Ki67Runner(_colour_net(), str(tmp_path / "biopsy"), tmp_path / "out_bx", wsi=SlideOptions(tile=256),
                    **kw).run()
    assert bx["n_positive"] > 0
    with pytest.raises(ValueError, match="min_tissue"):
        SlideOptions(min_tissue=5)
    # the classical labeller is fitted on tiles: a slide alone is reported in one line
    with pytest.raises(ImageError, match="whole slides need method 'network'"):
        Ki67Runner(None, str(tmp_path / "slides"), tmp_path / "out_c", method="classical", **kw).run()


def test_ihc_auto_scale_sees_a_half_size_copy_as_20x(tmp_path):
    """Issue 29 for Ki-67: with no mpp each IHC tile's nucleus size (haematoxylin + DAB blobs) sets its scale
    against the network's training size: the full tile stays at 1, its half-size copy is run at about 0.5 and finds
    about the same cells."""
    from PIL import Image

    from bundle.io import write_image
    from bundle.scale import estimate_nucleus_diameter

    tile, pts, _ = synthetic_ihc_tile(384, n_positive=10, n_negative=14, radius=10, seed=6)
    write_image(tmp_path / "in" / "full.png", tile)
    write_image(tmp_path / "in" / "half.png", np.asarray(Image.fromarray(tile).resize((192, 192), Image.BOX)))
    d = estimate_nucleus_diameter(tile, stain="ihc")
    Ki67Runner(_colour_net(), str(tmp_path / "in"), tmp_path / "out", auto_scale=True, trained_diameter=d,
               predictor=TilePredictor(tta=False, network_mpp=0.25), cells=Ki67Cells(nucleus_diameter=20),
               write_report=False).run()
    import csv

    with open(tmp_path / "out" / "summary.csv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert float(rows["full"]["scale_factor"]) == 1.0
    assert 0.4 < float(rows["half"]["scale_factor"]) < 0.6
    n_full = len(read_point_table(tmp_path / "out" / "points" / "full.csv")["points"])
    n_half = len(read_point_table(tmp_path / "out" / "points" / "half.csv")["points"])
    assert n_full > 10 and abs(n_half - n_full) <= 0.2 * n_full


def test_ihc_slide_without_pixel_size_gets_its_scale_measured(tmp_path):
    """A Ki-67 slide whose file gives no pixel size, with no mpp: one scale from its tissue tiles (half-size nuclei
    -> about 0.5)."""
    import tifffile
    from PIL import Image

    from bundle.scale import estimate_nucleus_diameter
    from bundle.wsi import SlideOptions

    tile, _, _ = synthetic_ihc_tile(384, n_positive=10, n_negative=14, radius=10, seed=6)
    half = (np.asarray(Image.fromarray(tile).resize((192, 192), Image.BOX)) * 0.88).astype(np.uint8)
    canvas = np.full((256, 384, 3), 242, np.uint8)
    canvas[32:224, 96:288] = half
    tifffile.imwrite(tmp_path / "s.tif", canvas, tile=(128, 128), photometric="rgb")  # no resolution tags
    r = Ki67Runner(_colour_net(), str(tmp_path), tmp_path / "out", auto_scale=True,
                   trained_diameter=estimate_nucleus_diameter(tile, stain="ihc"),
                   predictor=TilePredictor(tta=False, network_mpp=0.25), cells=Ki67Cells(nucleus_diameter=20),
                   wsi=SlideOptions(tile=128), write_report=False)
    row = r.run_slide({"image": str(tmp_path / "s.tif")})
    assert 0.4 < float(row["scale_factor"]) < 0.7 and row["n_cells"] > 10  # 1.0 without the measure
