# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.gan.cells: cell crops and one-line errors for bad cell files and images."""

import numpy as np
import pytest

from bundle.annotations import read_points
from bundle.gan.cells import CellExtractor, NucleusFinder, crop_at_points, crop_cells, load_cells
from bundle.gan.classify import read_image_labels
from bundle.gan.train import CellDataset
from bundle.io import ImageError, write_image
from bundle.synthetic import synthetic_he_tile

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crops_are_white_padded():
    rgb, inst = synthetic_he_tile(128, seed=1)
    crops, rows = crop_cells(rgb, inst)
    assert crops.shape == (inst.max(), 32, 32, 3) and crops.dtype == np.uint8 and len(rows) == len(crops)
    assert np.all(crops[:, 0, 0] == 255) and np.all(crops[:, -1, -1] == 255)  # corners are background
    big = np.zeros((128, 128), np.int32)
    big[10:70, 20:50] = 1  # 60 x 30 object -> shrunk to fit 32
    c, r = crop_cells(rgb, big)
    assert c.shape == (1, 32, 32, 3) and r[0]["area"] == 1800
    pts = np.array([[64, 64], [5, 5], [200, 10], [-1, 3]])
    c, r = crop_at_points(rgb, pts, window=32, mask_mode="disc")
    assert c.shape == (2, 32, 32, 3) and np.all(c[:, 0, 0] == 255)  # outside points dropped
    c2, _ = crop_at_points(rgb, pts[:1], window=48, mask_mode="stain")
    assert c2.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="mask_mode"):
        crop_at_points(rgb, pts, mask_mode="box")


def test_bad_inputs_one_line_errors(tmp_path, SMALL, write_points):
    missing = tmp_path / "nowhere" / "cells.npy"
    for call in (lambda: load_cells(missing), lambda: CellDataset(missing)):
        with pytest.raises(ImageError) as e:
            call()
        assert str(missing) in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "cells.npy"
    np.save(bad, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ImageError, match="expected"):
        load_cells(bad)
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageError) as e:
        load_cells(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    p = tmp_path / "pts.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError) as e:
        read_points(p)
    assert str(p) in str(e.value)
    assert read_points(write_points(tmp_path)).shape == (2, 2)
    lab = tmp_path / "labels.csv"
    lab.write_text("name,organ\nx,y\n")
    with pytest.raises(ValueError, match="labels.csv.*'image'"):
        read_image_labels(lab)
    # a folder with one good and one corrupt image: the corrupt one is skipped and named in the summary
    d = tmp_path / "imgs"
    d.mkdir()
    write_image(d / "good.png", synthetic_he_tile(128, seed=2)[0])
    (d / "broken.png").write_bytes(b"not a png")
    s = CellExtractor(finder=NucleusFinder(**SMALL)).run(str(d), tmp_path / "out")
    assert s["n_images"] == 1 and s["n_skipped"] == 1 and "broken.png" in s["skipped"][0]
    (d / "good.png").unlink()
    with pytest.raises(ImageError, match="no image could be processed"):
        CellExtractor(finder=NucleusFinder(**SMALL)).run(str(d), tmp_path / "out2")
