# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.postprocess: instances by watershed, polygons, the classical baseline."""

import numpy as np
import pytest

from bundle.metrics import aji
from bundle.nuclei.postprocess import (
    classical_nuclei,
    instance_polygons,
    instances_by_watershed,
    instances_from_foreground,
)


def test_instance_polygons_outline_area():
    from skimage.draw import polygon as fill

    inst = np.zeros((40, 50), np.int32)
    inst[10:20, 5:25] = 1
    inst[25:35, 30:45] = 3
    polys = instance_polygons(inst)
    assert sorted(polys) == [1, 3]
    for i, xy in polys.items():
        assert np.array_equal(xy[0], xy[-1])
        rr, cc = fill(xy[:, 1], xy[:, 0], inst.shape)
        area = (inst == i).sum()
        assert abs(len(rr) - area) <= 0.25 * area  # outline encloses the object


def _self_intersects(xy: np.ndarray) -> bool:
    """True when two non-adjacent edges of the closed ring ``xy`` (first == last) cross or touch."""
    e = list(zip(xy[:-1], xy[1:]))

    def orient(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    for i in range(len(e)):
        for j in range(i + 2, len(e)):
            if i == 0 and j == len(e) - 1:
                continue  # the ring's first and last edges share its start vertex
            (p, q), (r, s) = e[i], e[j]
            if orient(p, q, r) * orient(p, q, s) < 0 and orient(r, s, p) * orient(r, s, q) < 0:
                return True
    return False


def test_instance_polygons_are_simple_rings_on_real_shapes():
    """QuPath imports only valid polygons: closed rings that do not cross themselves, for every object of a
    classical segmentation of a synthetic tile (irregular, touching, tiny and border objects)."""
    from bundle.synthetic import synthetic_he_tile

    rgb, _ = synthetic_he_tile(256, seed=3)
    inst = classical_nuclei(rgb)
    polys = instance_polygons(inst)
    assert len(polys) == len(np.unique(inst[inst > 0])) > 10
    for xy in polys.values():
        assert np.array_equal(xy[0], xy[-1]) and len(xy) >= 4
        assert not _self_intersects(xy)
    bowtie = np.array([[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]], float)
    assert _self_intersects(bowtie)  # the check itself sees a crossing ring


@pytest.mark.usefixtures("one_thread")
def test_watershed_splits_touching_disks():
    yy, xx = np.mgrid[:60, :80]
    a = (yy - 30) ** 2 + (xx - 28) ** 2 <= 12**2
    b = (yy - 30) ** 2 + (xx - 50) ** 2 <= 12**2
    mask = a | b
    assert instances_from_foreground(mask).max() == 1
    assert instances_from_foreground(mask.astype(np.float32) * 0.9, threshold=0.5).max() == 1
    ws = instances_by_watershed(mask, min_distance=5)
    assert ws.dtype == np.int32 and ws.max() == 2 and ws[30, 28] != ws[30, 50]
    assert np.array_equal(ws > 0, mask)
    ws_pts = instances_by_watershed(mask, markers_points=np.array([[30, 28], [30, 50]]))
    assert ws_pts.max() == 2 and ws_pts[30, 20] != ws_pts[30, 58]


@pytest.mark.usefixtures("one_thread")
def test_classical_nuclei_on_synthetic_tile():
    from bundle.synthetic import synthetic_he_tile

    rgb, inst = synthetic_he_tile(256, seed=1)
    pred = classical_nuclei(rgb)
    assert pred.dtype == np.int32 and pred.shape == inst.shape
    assert aji(pred, inst) > 0.5
