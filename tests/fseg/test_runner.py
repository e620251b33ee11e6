# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.fseg.runner: the fseg_bank -> fseg_infer -> fseg_evaluate runs and whole-slide segmentation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bundle import fseg
from bundle.io import write_image
from bundle.label_free import child_env
from bundle.wsi import SlideOptions, write_pyramid_tiff


def test_bundle_runs_bank_infer_evaluate(tmp_path, root, tissue_tile):
    data, masks = tmp_path / "tiles", tmp_path / "masks"
    for i in range(4):
        rgb, gt = tissue_tile((96 + 8 * i, 128), seed=i)
        write_image(data / f"t{i}.png", rgb)
        write_image(masks / f"t{i}.png", gt)
    (data / "broken.png").write_bytes(b"")  # bad input: reported in one line naming the file, then skipped
    out = tmp_path / "bundle"
    common = ["--bundle_root", str(out), "--dataset_dir", str(data), "--weights_path", "random",
              "--base_channels", "8"]
    env = child_env(OMP_NUM_THREADS=1)

    def run(config, *extra):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / config),
               *common, *extra]
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        return p.stdout + p.stderr

    log = run("fseg_bank.json", "--bank_ks", "[2,3]", "--window", "64", "--windows_per_image", "2")
    assert "broken.png: file is empty" in log
    meta = json.loads((out / "models" / "fseg_bank.pt.json").read_text())
    assert meta["ks"] == [2, 3] and meta["n_images"] == 4 and meta["backbone"] == "res2net-cpu-8"
    run("fseg_infer.json", "--k", "3", "--variant", "B")
    res = out / "eval" / "fseg"
    stems = [f"t{i}" for i in range(4)]
    assert sorted(p.stem for p in (res / "labels").glob("*.png")) == stems
    assert sorted(p.stem for p in (res / "overlays").glob("*.png")) == stems
    from PIL import Image

    lab = np.asarray(Image.open(res / "labels" / "t1.png"))
    assert lab.shape == (104, 128) and lab.max() < 3
    import csv

    rows = list(csv.DictReader(open(res / "area_fractions.csv")))
    assert [r["image"] for r in rows] == stems
    assert abs(sum(float(rows[0][f"concept_{j:03d}"]) for j in range(3)) - 1) < 1e-4
    s = json.loads((res / "summary.json").read_text())
    assert s["n_skipped"] == 1 and "broken.png" in s["skipped"][0]
    run("fseg_evaluate.json", "--label_dir", str(masks), "--eval_ks", "[2,3]", "--class_names", "['blob','stroma']",
        "--probe_folds", "2", "--n_components", "3")
    ev = json.loads((out / "eval" / "fseg_evaluation" / "evaluation.json").read_text())
    assert set(ev["results"]) == {"A_k2", "A_k3", "B_k2", "B_k3"} and ev["n_images"] == 4
    for r in ev["results"].values():
        for mode in ("match", "match_norm", "probe"):
            assert 0 <= r[mode]["miou"] <= 1
    assert ev["results"]["B_k3"]["match"]["miou"] > 0.5  # colour-separable tissues are found
    assert (out / "eval" / "fseg_evaluation" / "per_class.csv").is_file()
    # wrong backbone for the saved bank (here: another width): the workflow stops with the one-line error
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(root / "configs" / "fseg_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), bundle_root=str(out),
                        dataset_dir=str(data), weights_path="random", base_channels=16,
                        output_dir=str(tmp_path / "x"))
    wf.initialize()
    with pytest.raises(Exception) as e:  # MONAI wraps it in "Failed to evaluate ConfigExpression"
        wf.run()
    err = e.value
    while not isinstance(err, fseg.BankMismatchError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, fseg.BankMismatchError) and "\n" not in str(err)
    assert "backbone='res2net-cpu-8' vs 'res2net-cpu-16'" in str(err)


def test_whole_slide_bank_and_segmentation(tmp_path, extractor, tissue_tile):
    import csv

    from PIL import Image

    slide = np.full((400, 520, 3), 242, np.uint8)  # glass, with two tissue pieces
    slide[16:240, 32:288] = tissue_tile((224, 256), seed=1)[0]
    slide[200:392, 300:492] = tissue_tile((192, 192), seed=2)[0]
    write_pyramid_tiff(tmp_path / "slide.tif", slide, mpp=0.5)
    b = fseg.ConceptBankBuilder(extractor, tmp_path / "slide.tif", tmp_path / "bank.pt", ks=[2, 3], window=64,
                                tiles_per_slide=12, seed=0).run()
    assert b.meta["n_vectors"] == 12 and b.meta["n_images"] == 1
    s = fseg.FSegRunner(extractor, tmp_path / "bank.pt", tmp_path / "slide.tif", tmp_path / "out", k=3,
                        wsi=SlideOptions(tile=128, min_tissue=0.05), wsi_margin=32).run()
    assert s["n_images"] == 1
    lab = np.asarray(Image.open(tmp_path / "out" / "labels" / "slide.png"))
    assert lab.shape == (25, 33)  # one pixel per 16-px feature cell of level 0
    assert (lab == 255).any() and (lab < 3).any() and set(np.unique(lab)) <= {0, 1, 2, 255}
    assert lab[2, 4] < 3 and lab[24, 0] == 255  # tissue analysed, blank glass tile skipped
    row = next(csv.DictReader(open(tmp_path / "out" / "area_fractions.csv")))
    assert int(row["tiles"]) >= 2 and abs(sum(float(row[f"concept_{j:03d}"]) for j in range(3)) - 1) < 1e-4
    assert (tmp_path / "out" / "overlays" / "slide.png").is_file()
