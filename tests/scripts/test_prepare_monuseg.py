# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests scripts/prepare_monuseg.py: a MoNuSeg folder to a datalist with instance labels."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from bundle.annotations import read_instance_label, write_instance_label

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_monuseg.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_monuseg", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def _rgb(h=40, w=70):
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def test_prepare_original_layout_cli(tmp_path, write_xml, BOX_A, BOX_B):
    src = tmp_path / "MoNuSegTestData"
    src.mkdir()
    tifffile.imwrite(src / "img1.tif", _rgb(), photometric="rgb")
    write_xml(src / "img1.xml", [BOX_A, BOX_B])
    tifffile.imwrite(src / "img2.tif", _rgb(), photometric="rgb")  # no annotation
    out = tmp_path / "out"
    res = _run_script("--input", src, "--output", out, "--split_key", "validation")
    assert res.returncode == 0, res.stderr
    assert "2 images" in res.stdout
    dl = json.loads((out / "datalist.json").read_text())
    assert list(dl) == ["validation"]
    e1, e2 = dl["validation"]
    assert e1["image"] == str(src / "img1.tif") and os.path.isabs(e1["image"])
    assert e1["label"] == str(out / "labels" / "img1.png")
    assert "label" not in e2
    lab = read_instance_label(e1["label"])
    assert lab.dtype == np.uint16 and lab.shape == (40, 70)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 2]
    assert not (out / "img1.tif").exists() and not (out / "images").exists()  # never copied


def test_prepare_tissue_images_subfolders(tmp_path, write_xml, BOX_A):
    src = tmp_path / "MoNuSeg 2018 Training Data"
    (src / "Tissue Images").mkdir(parents=True)
    (src / "Annotations").mkdir()
    tifffile.imwrite(src / "Tissue Images" / "t.tif", _rgb(30, 35), photometric="rgb")
    write_xml(src / "Annotations" / "t.xml", [BOX_A])
    out = tmp_path / "out"
    assert _load_script().main(["--input", str(src), "--output", str(out)]) == 0
    (entry,) = json.loads((out / "datalist.json").read_text())["training"]
    lab = read_instance_label(entry["label"])
    assert lab.shape == (30, 35) and sorted(np.unique(lab).tolist()) == [0, 1]


def test_prepare_png_layout(tmp_path, write_xml, BOX_A, BOX_B):
    src = tmp_path / "test"
    for d in ("images", "labels", "xml"):
        (src / d).mkdir(parents=True)
    for stem in ("a", "b", "c"):
        Image.fromarray(_rgb()).save(src / "images" / f"{stem}.png")
    given = np.zeros((40, 70), dtype=np.uint16)
    given[1:5, 1:5] = 400
    write_instance_label(src / "labels" / "a.png", given)  # provided label: referenced in place
    write_xml(src / "xml" / "a.xml", [BOX_B])  # ignored because a label exists
    write_xml(src / "xml" / "b.xml", [BOX_A, BOX_B])  # rasterised
    out = tmp_path / "prep"
    assert _load_script().main(["--input", str(src), "--output", str(out)]) == 0
    ea, eb, ec = json.loads((out / "datalist.json").read_text())["training"]
    assert ea == {"image": str(src / "images" / "a.png"), "label": str(src / "labels" / "a.png")}
    assert eb["label"] == str(out / "labels" / "b.png")
    assert sorted(np.unique(read_instance_label(eb["label"])).tolist()) == [0, 1, 2]
    assert "label" not in ec
    assert sorted(os.listdir(out / "labels")) == ["b.png"]


def test_prepare_empty_folder_errors(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    res = _run_script("--input", empty, "--output", tmp_path / "o")
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "nothing_here" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "datalist.json").exists()
    assert _load_script().main(["--input", str(tmp_path / "absent"), "--output", str(tmp_path / "o")]) == 2


def test_prepare_help():
    res = _run_script("--help")
    assert res.returncode == 0 and "--split_key" in res.stdout
