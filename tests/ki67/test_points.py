# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.ki67.points: positive / negative points from a 3-class probability map."""

import numpy as np
import pytest

from bundle.ki67.points import ki67_points
from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE


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
