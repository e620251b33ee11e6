# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.points: points from a probability map."""

import numpy as np
import pytest

from bundle.points import points_from_probability

pytestmark = pytest.mark.usefixtures("one_thread")


def test_points_from_probability_finds_blob_centres():
    yy, xx = np.mgrid[:120, :120]
    centres = [(30, 30), (30, 90), (85, 55), (100, 10)]
    prob = sum(np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 5.0**2)) for r, c in centres)
    pts = points_from_probability(np.clip(prob, 0, 1) * 0.95, threshold=0.3)
    assert pts.dtype == np.int64 and pts.shape == (4, 2)
    for r, c in centres:
        assert np.abs(pts - [r, c]).sum(1).min() <= 1
    # two peaks 10 px apart (L1) merge into one, the higher kept
    two = np.exp(-((yy - 60) ** 2 + (xx - 55) ** 2) / 8.0) + 0.9 * np.exp(-((yy - 60) ** 2 + (xx - 65) ** 2) / 8.0)
    assert len(points_from_probability(two, blur="none", threshold=0.3, min_distance=3, merge_distance=0)) == 2
    merged = points_from_probability(two, blur="none", threshold=0.3, min_distance=3)
    assert merged.tolist() == [[60, 55]]
    assert points_from_probability(np.zeros((20, 20))).shape == (0, 2)
