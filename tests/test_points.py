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


def test_spaced_maxima_equals_scikit_image():
    """bundle.points.spaced_maxima gives peak_local_max's peaks in its order, on noise, on flat plateaus (a blurred
    clipped map: many equal maxima) and on a constant map (no peak)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from bundle.points import spaced_maxima

    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = rng.integers(1, 50, 2)
        a = rng.random((h, w)).astype(np.float32)
        if t % 3 == 0:
            a = np.round(a * 3) / 3
        if t % 3 == 1:
            a = ndi.uniform_filter(np.clip(a * 2, 0, 1), 5)
        for md in (1, 2, 6):
            for th in (0.1, 0.5):
                ref = peak_local_max(a, min_distance=md, threshold_abs=th, exclude_border=False)
                assert np.array_equal(spaced_maxima(a, md, th), ref), (t, md, th)
    assert spaced_maxima(np.ones((9, 9), np.float32), 2, 0.5).shape == (0, 2)
