# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.measure: per-nucleus measurements against a hand-made label map with known answers (issue 31)."""

import json

import numpy as np
import pytest

from bundle.measure import nucleus_measurements, qupath_measurements, stain_densities


def test_shape_and_position_of_known_objects():
    inst = np.zeros((40, 60), np.int32)
    inst[10:20, 10:30] = 1  # 10 x 20 rectangle: area 200, centroid (row 14.5, col 19.5)
    inst[30:33, 50:53] = 2  # 3 x 3 square: area 9, centroid (31, 51)
    t = nucleus_measurements(inst, mpp=0.5)
    assert t["id"].tolist() == [1, 2]
    assert t["area"].tolist() == [200, 9] and t["area_um2"].tolist() == [50.0, 2.25]
    assert t["x"].tolist() == [19.5, 51.0] and t["y"].tolist() == [14.5, 31.0]
    assert t["x_um"][0] == pytest.approx(9.75)
    assert t["equivalent_diameter"][0] == pytest.approx(np.sqrt(4 * 200 / np.pi))
    assert t["solidity"].tolist() == [1.0, 1.0] and t["eccentricity"][1] == pytest.approx(0.0)
    assert abs(t["orientation"][0]) == pytest.approx(np.pi / 2)  # the long axis is along the columns
    assert "x_um" not in nucleus_measurements(inst)  # no pixel size, no micrometres


def test_columns_equal_scikit_image_regionprops():
    """Every vectorised column equals ``regionprops_table`` on the same map (touching objects, image edges, one-pixel
    and line objects); solidity is the outline's (QuPath's), so it is checked on shapes with known answers."""
    from skimage.measure import label, regionprops_table
    from skimage.segmentation import watershed

    rng = np.random.default_rng(3)
    blobs = np.zeros((120, 150), bool)
    blobs[rng.integers(0, 120, 60), rng.integers(0, 150, 60)] = True
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(~blobs)
    inst = watershed(dist, label(blobs), mask=dist < 6).astype(np.int32)  # touching, edge-cut blobs
    inst[0, 0], inst[119, 75:90] = inst.max() + 1, inst.max() + 2  # a corner pixel and a line on the edge
    rgb = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    t = nucleus_measurements(inst, rgb)
    h = stain_densities(rgb)["hematoxylin"]
    ref = regionprops_table(inst, intensity_image=h, properties=["label", "centroid", "area", "perimeter",
                                                                 "eccentricity", "orientation", "intensity_mean"])
    assert t["id"].tolist() == ref["label"].tolist()
    for k, r in [("x", "centroid-1"), ("y", "centroid-0"), ("area", "area"), ("perimeter", "perimeter"),
                 ("eccentricity", "eccentricity"), ("orientation", "orientation"),
                 ("hematoxylin_od_mean", "intensity_mean")]:
        ok = t["eccentricity"] > 1e-6 if k == "orientation" else slice(None)  # a disc has no orientation (+-pi/4)
        np.testing.assert_allclose(t[k][ok], ref[r][ok], rtol=1e-5, atol=1e-9, err_msg=k)
    el = np.zeros((30, 30), np.int32)
    el[5:25, 5:10] = el[20:25, 5:25] = 1  # an L of 175 px whose convex hull covers 20 * 20 - 15 * 15 / 2 px
    assert nucleus_measurements(el)["solidity"][0] == pytest.approx(175 / 287.5, abs=0.02)


def test_stain_densities_match_a_direct_computation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(40, 250, (30, 30, 3), dtype=np.uint8)
    inst = np.zeros((30, 30), np.int32)
    inst[5:15, 5:15] = 1
    t = nucleus_measurements(inst, rgb)
    od = -np.log10((rgb.astype(float) + 1) / 256)
    h = np.array([0.650, 0.704, 0.286]) / np.linalg.norm([0.650, 0.704, 0.286])
    e = np.array([0.072, 0.990, 0.105]) / np.linalg.norm([0.072, 0.990, 0.105])
    r = np.cross(h, e)
    conc = np.maximum(od.reshape(-1, 3) @ np.linalg.pinv(np.stack([h, e, r / np.linalg.norm(r)], 1)).T, 0)
    direct = conc[:, 0].reshape(30, 30)[5:15, 5:15]
    assert t["hematoxylin_od_mean"][0] == pytest.approx(direct.mean(), rel=1e-5)
    assert t["hematoxylin_od_integrated"][0] == pytest.approx(direct.sum(), rel=1e-5)
    assert set(stain_densities(rgb, ("hematoxylin", "dab"))) == {"hematoxylin", "dab"}
    q = qupath_measurements(nucleus_measurements(inst, rgb, mpp=0.25), 0)
    assert q["Area px^2"] == 100 and q["Area µm^2"] == pytest.approx(6.25) and "Hematoxylin OD mean" in q


def test_runner_ids_agree_across_label_map_table_and_geojson(synthetic_dir, tmp_path, nuclei_runner):
    import csv

    from bundle.annotations import read_instance_label

    data = tmp_path / "in"
    data.mkdir()
    (data / "t.png").write_bytes((synthetic_dir / "images" / "tile_00.png").read_bytes())
    nuclei_runner(data, tmp_path / "out", mode="watershed").run()
    lab = read_instance_label(tmp_path / "out" / "labels" / "t.png")
    with open(tmp_path / "out" / "measurements" / "t.csv") as f:
        rows = list(csv.DictReader(f))
    gj = json.loads((tmp_path / "out" / "geojson" / "t.geojson").read_text())
    assert len(rows) == int(lab.max()) == len(gj["features"]) > 0
    for row, feat in zip(rows, gj["features"]):
        k = int(row["id"])
        assert feat["id"] == str(k) and int((lab == k).sum()) == int(float(row["area"]))
        assert feat["properties"]["measurements"]["Area px^2"] == float(row["area"])
        assert feat["properties"]["classification"]["color"] == [0, 200, 0]
