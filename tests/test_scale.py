# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.scale: sizes tuned at 40x carried to other pixel sizes."""

import numpy as np
import pytest


def test_sizes_follow_mpp():
    """Sizes tuned at 40x (0.25 um/px) are carried to 20x tiles; 20x nuclei 10 px apart stay apart only then."""
    from bundle.points import point_settings, points_from_probability
    from bundle.scale import scaled, size_scale

    assert size_scale(None) == 1.0 and size_scale(0.25) == 1.0 and size_scale(0.5) == 0.5
    assert scaled(20, 0.5, area=True) == 5 and scaled(6, 0.5) == 3 and scaled(0, 0.5) == 0
    assert scaled(64, 0.5, area=True) == 16 and scaled(1.0, 0.5, integer=False, minimum=0.5) == 0.5
    assert point_settings(1.0) == {"sigma_or_blur": 13, "min_distance": 6, "merge_distance": 20.0}
    with pytest.raises(ValueError, match="mpp"):
        size_scale(0.0)
    # a row of 20x-sized nuclei (radius 4 px) 10 px apart
    yy, xx = np.mgrid[:40, :80]
    centres = [(20, 10 + 10 * i) for i in range(7)]
    prob = np.zeros((40, 80))
    for r, c in centres:
        prob = np.maximum(prob, np.clip(1.0 - np.hypot(yy - r, xx - c) / 5.0, 0, 1))
    n_ref = len(points_from_probability(prob, threshold=0.3, **point_settings(1.0)))
    n_20x = len(points_from_probability(prob, threshold=0.3, **point_settings(0.5)))
    assert n_20x == 7 and n_ref < 5


def test_nucleus_diameter_follows_the_magnification():
    """Issue 29: the label-free size estimate halves when the tile is shown at half the magnification."""
    import numpy as np
    from PIL import Image

    from bundle.scale import estimate_nucleus_diameter
    from bundle.synthetic import synthetic_he_tile

    rgb, _ = synthetic_he_tile(512, seed=1)
    half = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BOX))
    d1, d2 = estimate_nucleus_diameter(rgb), estimate_nucleus_diameter(half)
    assert d1 and d2 and 0.4 < d2 / d1 < 0.6
    assert estimate_nucleus_diameter(np.full((128, 128, 3), 240, np.uint8)) is None  # blank: no estimate
