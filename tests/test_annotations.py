# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.annotations: Aperio XML, BCData points, instance label maps and point tables."""

import os

import h5py
import numpy as np
import pytest
from PIL import Image

from bundle.annotations import (
    read_aperio_xml,
    read_bcdata_points,
    read_instance_label,
    read_point_table,
    write_instance_label,
)


def _assert_area(inst, idx, box):
    x0, y0, x1, y1 = box
    nominal = (x1 - x0) * (y1 - y0)
    perimeter = 2 * ((x1 - x0) + (y1 - y0))
    assert abs(int((inst == idx).sum()) - nominal) <= perimeter


def test_read_aperio_xml_two_squares(tmp_path, write_xml, BOX_A, BOX_B):
    xml = write_xml(tmp_path / "a.xml", [BOX_A, BOX_B])
    inst = read_aperio_xml(xml, (40, 70))
    assert inst.shape == (40, 70)
    assert inst.dtype == np.uint16
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    _assert_area(inst, 1, BOX_A)
    _assert_area(inst, 2, BOX_B)
    assert inst[20, 20] == 1 and inst[15, 55] == 2 and inst[0, 0] == 0
    # X is the column, Y the row: BOX_B spans columns 50..60 and rows 5..25
    assert inst[7, 55] == 2 and inst[28, 55] == 0 and inst[55 - 50, 7] == 0


def test_read_aperio_xml_rgb_shape_clipping_and_overlap(tmp_path, write_xml, BOX_A):
    # second polygon overlaps the first (later overwrites) and runs past the image border
    xml = write_xml(tmp_path / "b.xml", [BOX_A, (20, 20, 100, 100)])
    inst = read_aperio_xml(xml, (40, 50, 3))
    assert inst.shape == (40, 50)
    assert inst[25, 25] == 2  # overlap -> later polygon wins
    assert inst[12, 12] == 1
    assert inst[39, 49] == 2  # clipped, not an error


def test_read_aperio_xml_no_regions_gives_zeros(tmp_path, write_xml):
    xml = write_xml(tmp_path / "empty.xml", [])
    inst = read_aperio_xml(xml, (8, 9))
    assert inst.shape == (8, 9) and not inst.any()


def test_read_aperio_xml_invalid(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<Annotations><Annotation>")
    with pytest.raises(ValueError, match="broken.xml"):
        read_aperio_xml(bad, (10, 10))
    with pytest.raises(ValueError, match="missing.xml"):
        read_aperio_xml(tmp_path / "missing.xml", (10, 10))


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


@pytest.mark.usefixtures("one_thread")
def test_read_point_table_classes_and_scores(tmp_path, write_points):
    """The bundle's own points CSV (image,x,y,class,score) reads back with classes and scores; missing columns give
    '' / nan; a bad score is a one-line error naming the file."""
    p = tmp_path / "tile.csv"
    p.write_text("image,x,y,class,score\ntile,3,4,Positive,0.9\ntile,10,20,Negative,0.25\n")
    t = read_point_table(p)
    assert t["points"].tolist() == [[4.0, 3.0], [20.0, 10.0]]
    assert t["class"].tolist() == ["Positive", "Negative"] and np.allclose(t["score"], [0.9, 0.25])
    t = read_point_table(write_points(tmp_path))
    assert t["class"].tolist() == ["", ""] and np.isnan(t["score"]).all()
    p.write_text("image,x,y,class,score\n")
    assert read_point_table(p)["points"].shape == (0, 2)
    p.write_text("image,x,y,class,score\ntile,3,4,Positive,high\n")
    with pytest.raises(ValueError) as e:
        read_point_table(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
