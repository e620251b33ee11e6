# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests for bundle/annotations.py and scripts/prepare_monuseg.py on tiny synthetic data."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bundle.annotations import (  # noqa: E402
    read_aperio_xml,
    read_bcdata_points,
    read_instance_label,
    write_instance_label,
)

SCRIPT = REPO_ROOT / "scripts" / "prepare_monuseg.py"

# (x0, y0, x1, y1) squares/rectangles, in pixel coordinates
BOX_A = (10, 10, 30, 30)  # 20 x 20
BOX_B = (50, 5, 60, 25)  # 10 x 20


def _region(box, rid):
    x0, y0, x1, y1 = box
    verts = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    return f'<Region Id="{rid}" Type="0"><Attributes/><Vertices>{verts}</Vertices></Region>'


def _aperio_xml(boxes) -> str:
    regions = "".join(_region(b, i + 1) for i, b in enumerate(boxes))
    return (
        '<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.25">'
        '<Annotation Id="1" Type="4"><Attributes/><Regions>'
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>'
        f"{regions}</Regions><Plots/></Annotation></Annotations>\n"
    )


def _write_xml(path, boxes):
    Path(path).write_text(_aperio_xml(boxes))
    return path


def _assert_area(inst, idx, box):
    x0, y0, x1, y1 = box
    nominal = (x1 - x0) * (y1 - y0)
    perimeter = 2 * ((x1 - x0) + (y1 - y0))
    assert abs(int((inst == idx).sum()) - nominal) <= perimeter


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_monuseg", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------------------- Aperio XML


def test_read_aperio_xml_two_squares(tmp_path):
    xml = _write_xml(tmp_path / "a.xml", [BOX_A, BOX_B])
    inst = read_aperio_xml(xml, (40, 70))
    assert inst.shape == (40, 70)
    assert inst.dtype == np.uint16
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    _assert_area(inst, 1, BOX_A)
    _assert_area(inst, 2, BOX_B)
    assert inst[20, 20] == 1 and inst[15, 55] == 2 and inst[0, 0] == 0
    # X is the column, Y the row: BOX_B spans columns 50..60 and rows 5..25
    assert inst[7, 55] == 2 and inst[28, 55] == 0 and inst[55 - 50, 7] == 0


def test_read_aperio_xml_rgb_shape_clipping_and_overlap(tmp_path):
    # second polygon overlaps the first (later overwrites) and runs past the image border
    xml = _write_xml(tmp_path / "b.xml", [BOX_A, (20, 20, 100, 100)])
    inst = read_aperio_xml(xml, (40, 50, 3))
    assert inst.shape == (40, 50)
    assert inst[25, 25] == 2  # overlap -> later polygon wins
    assert inst[12, 12] == 1
    assert inst[39, 49] == 2  # clipped, not an error


def test_read_aperio_xml_no_regions_gives_zeros(tmp_path):
    xml = _write_xml(tmp_path / "empty.xml", [])
    inst = read_aperio_xml(xml, (8, 9))
    assert inst.shape == (8, 9) and not inst.any()


def test_read_aperio_xml_invalid(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<Annotations><Annotation>")
    with pytest.raises(ValueError, match="broken.xml"):
        read_aperio_xml(bad, (10, 10))
    with pytest.raises(ValueError, match="missing.xml"):
        read_aperio_xml(tmp_path / "missing.xml", (10, 10))


# ----------------------------------------------------------------------------- BCData HDF5


@pytest.mark.parametrize(
    "coords",
    [np.array([[1, 2], [30, 40], [5, 0]], dtype=np.int64), np.zeros((0,)), np.zeros((0, 2))],
    ids=["points", "empty_1d", "empty_2d"],
)
def test_bcdata_points_round_trip(tmp_path, coords):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("coordinates", data=coords)
    pts = read_bcdata_points(path)
    assert pts.ndim == 2 and pts.shape[1] == 2
    assert np.issubdtype(pts.dtype, np.integer)
    np.testing.assert_array_equal(pts, coords.reshape(-1, 2))


def test_bcdata_points_missing_dataset(tmp_path):
    path = tmp_path / "nocoords.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("other", data=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="nocoords.h5"):
        read_bcdata_points(path)


# ----------------------------------------------------------------------------- instance maps


@pytest.mark.parametrize("name", ["lab.png", "lab.tif", "lab.TIFF"])
def test_instance_label_round_trip(tmp_path, name):
    inst = np.zeros((13, 17), dtype=np.int64)
    inst[2:5, 3:9] = 300
    inst[8:12, 1:4] = 65535
    inst[0, 16] = 7
    path = tmp_path / name
    write_instance_label(path, inst)
    back = read_instance_label(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, inst)
    assert sorted(os.listdir(tmp_path)) == [name]  # atomic write left no temp file


def test_write_instance_label_atomic_replace_and_limits(tmp_path):
    path = tmp_path / "sub" / "x.png"
    write_instance_label(path, np.ones((4, 4), dtype=np.uint8))
    write_instance_label(path, np.full((4, 4), 1000, dtype=np.int32))  # overwrite in place
    np.testing.assert_array_equal(read_instance_label(path), 1000)
    too_many = np.arange(70000, dtype=np.int64).reshape(100, 700)
    with pytest.raises(ValueError, match="65535"):
        write_instance_label(path, too_many)
    np.testing.assert_array_equal(read_instance_label(path), 1000)  # old file untouched
    assert os.listdir(path.parent) == ["x.png"]


def test_read_instance_label_rejects_rgb(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="2-D"):
        read_instance_label(path)


# ----------------------------------------------------------------------------- prepare script


def _rgb(h=40, w=70):
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def test_prepare_original_layout_cli(tmp_path):
    src = tmp_path / "MoNuSegTestData"
    src.mkdir()
    tifffile.imwrite(src / "img1.tif", _rgb(), photometric="rgb")
    _write_xml(src / "img1.xml", [BOX_A, BOX_B])
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


def test_prepare_tissue_images_subfolders(tmp_path):
    src = tmp_path / "MoNuSeg 2018 Training Data"
    (src / "Tissue Images").mkdir(parents=True)
    (src / "Annotations").mkdir()
    tifffile.imwrite(src / "Tissue Images" / "t.tif", _rgb(30, 35), photometric="rgb")
    _write_xml(src / "Annotations" / "t.xml", [BOX_A])
    out = tmp_path / "out"
    assert _load_script().main(["--input", str(src), "--output", str(out)]) == 0
    (entry,) = json.loads((out / "datalist.json").read_text())["training"]
    lab = read_instance_label(entry["label"])
    assert lab.shape == (30, 35) and sorted(np.unique(lab).tolist()) == [0, 1]


def test_prepare_png_layout(tmp_path):
    src = tmp_path / "test"
    for d in ("images", "labels", "xml"):
        (src / d).mkdir(parents=True)
    for stem in ("a", "b", "c"):
        Image.fromarray(_rgb()).save(src / "images" / f"{stem}.png")
    given = np.zeros((40, 70), dtype=np.uint16)
    given[1:5, 1:5] = 400
    write_instance_label(src / "labels" / "a.png", given)  # provided label: referenced in place
    _write_xml(src / "xml" / "a.xml", [BOX_B])  # ignored because a label exists
    _write_xml(src / "xml" / "b.xml", [BOX_A, BOX_B])  # rasterised
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
