# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.detection: targets, mask points, instances from probabilities, the haematoxylin prior."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from bundle.losses import IGNORE
from bundle.nuclei.detection import detection_target, mask_points, nuclei_from_probability, segmentation_targets
from bundle.nuclei.labels import instance_target
from bundle.nuclei.postprocess import instances_from_three_class


def two_touching_disks(shape=(64, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = (yy - 32) ** 2 + (xx - 22) ** 2 <= 81
    b = (yy - 32) ** 2 + (xx - 40) ** 2 <= 81
    return a | b


def test_detection_target_binary_three_and_ignore_band():
    m = two_touching_disks()
    b = detection_target(m, "binary")
    assert b.dtype == np.uint8 and set(np.unique(b)) == {0, 1} and (b.astype(bool) == m).all()
    t = detection_target(m, "three")
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[~m] == 0).all()
    assert t[32, 31] == 2  # the two disks are split: a boundary runs between them
    band = detection_target(m, "binary", ignore_band=2)
    assert (band == IGNORE).sum() > 0 and (band[m] == 1).all()
    with pytest.raises(ValueError, match="unknown detection target"):
        detection_target(m, "four")


def test_segmentation_targets_channels():
    m = two_touching_disks()
    pts = np.array([[32, 22], [32, 40]])
    lab = segmentation_targets(m, pts, keep_foreground=False)
    assert lab.shape == (2, 64, 64) and lab.dtype == np.uint8
    assert (lab[0][m] == IGNORE).all() and (lab[0][~m] == 0).all()
    assert lab[1][32, 22] == 1 and lab[1][32, 31] == 0  # disk at the point, Voronoi edge between the points
    assert (lab[1] == IGNORE).any()
    kept = segmentation_targets(m, pts, keep_foreground=True)
    assert (kept[0][m] == 1).all()


def test_nuclei_from_probability_modes_split_touching():
    m = two_touching_disks()
    prob = np.stack([1.0 - m, m.astype(float)]).astype(np.float32)
    assert nuclei_from_probability(prob, "cc", min_size=5).max() == 1
    assert nuclei_from_probability(prob, "watershed", min_size=5).max() == 2
    seeded = nuclei_from_probability(prob, "watershed", min_size=5, points=np.array([[32, 22], [32, 40]]))
    assert seeded.max() == 2
    t = instance_target(nuclei_from_probability(prob, "watershed", min_size=5))
    three = np.stack([(t == 0), (t == 1), (t == 2)]).astype(np.float32)
    assert instances_from_three_class(three, min_size=5).max() == 2
    assert nuclei_from_probability(three, "auto", min_size=5).max() == 2
    with pytest.raises(ValueError, match="unknown instance mode"):
        nuclei_from_probability(prob, "blobs")


def test_mask_points_one_centre_per_touching_nucleus():
    m = two_touching_disks()
    pts = mask_points(m)
    assert len(pts) == 2
    lab = ndi.label(m)[0]
    assert np.all(lab[tuple(np.round(pts).astype(int).T)] == 1)  # inside the mask
    assert abs(pts[:, 1].max() - pts[:, 1].min()) > 10  # one on each disk, not both on the neck
    assert len(mask_points(np.zeros((40, 40), bool))) == 0
    small = np.zeros((40, 40), bool)
    small[10:13, 10:13] = True  # 9 px: under min_size (20 px at 40x, 5 px at 20x)
    assert len(mask_points(small)) == 0 and len(mask_points(small, size_scale=0.5)) == 1


def test_nuclei_from_probability_grow_keeps_instances_apart():
    m = two_touching_disks()
    prob = np.stack([1.0 - m, m.astype(float)]).astype(np.float32)
    base = nuclei_from_probability(prob, "watershed", min_size=5)
    grown = nuclei_from_probability(prob, "watershed", min_size=5, grow=2)
    assert grown.max() == base.max() == 2
    assert (grown > 0).sum() > (base > 0).sum()
    assert np.array_equal(grown[base > 0], base[base > 0])  # growth only claims background
    ring = (grown > 0) & (base == 0)
    assert not (ring & ~ndi.binary_dilation(base > 0, iterations=2)).any()  # at most 2 px (4-connected steps)


def test_nuclei_from_probability_min_score_drops_faint_instances():
    yy, xx = np.mgrid[:60, :90]
    fg = np.zeros((60, 90), np.float32)
    for c, p in ((15, 0.95), (45, 0.55), (75, 0.9)):  # three separate disks, the middle one faint
        fg[(yy - 30) ** 2 + (xx - c) ** 2 <= 64] = p
    prob = np.stack([1 - fg, fg])
    assert nuclei_from_probability(prob, "cc", min_size=5).max() == 3
    kept = nuclei_from_probability(prob, "cc", min_size=5, min_score=0.6)
    assert kept.max() == 2 and set(np.unique(kept)) == {0, 1, 2}  # renumbered 1..N
    assert kept[30, 45] == 0 and kept[30, 15] > 0 and kept[30, 75] > 0


def test_blend_hematoxylin_prior(nuclei_runner):
    """The image's own haematoxylin evidence blended into P(nucleus): sums stay 1, nuclei go up and background down
    from an undecided map, weight 0 is the identity, and 3-channel maps keep their foreground shares."""
    from bundle.nuclei.detection import blend_hematoxylin
    from bundle.stain import hematoxylin_evidence
    from bundle.synthetic import synthetic_he_tile

    rgb, inst = synthetic_he_tile(96, seed=0)
    e = hematoxylin_evidence(rgb)
    assert e.min() >= 0 and e.max() <= 1 and e[inst > 0].mean() > 0.5 > e[inst == 0].mean()
    assert np.all(hematoxylin_evidence(np.full((16, 16, 3), 200, np.uint8)) < 0.01)  # flat image: no evidence
    flat = np.full((2, 96, 96), 0.5, np.float32)
    assert np.array_equal(blend_hematoxylin(flat, rgb, 0.0), flat)
    b = blend_hematoxylin(flat, rgb, 0.35)
    assert b.shape == flat.shape and np.allclose(b.sum(0), 1, atol=1e-6)
    assert b[1][inst > 0].mean() > 0.5 > b[1][inst == 0].mean()
    assert np.allclose(b[1], 0.65 * 0.5 + 0.35 * e, atol=1e-6)
    three = np.stack([np.full((96, 96), 0.4), np.full((96, 96), 0.45), np.full((96, 96), 0.15)]).astype(np.float32)
    t = blend_hematoxylin(three, rgb, 0.5)
    assert np.allclose(t.sum(0), 1, atol=1e-6) and np.allclose(t[1] / t[2], 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="weight"):
        blend_hematoxylin(flat, rgb, 1.5)
    with pytest.raises(ValueError, match="does not fit"):
        blend_hematoxylin(flat[:, :50], rgb, 0.35)
    with pytest.raises(ValueError, match="hematoxylin_prior must be in"):  # fails at once, not per image
        nuclei_runner([], "unused_out", hematoxylin_prior=-0.1)


def test_instance_settings_scale_the_fixed_pixel_sizes():
    import inspect

    from bundle.nuclei.detection import instance_settings

    defaults = inspect.signature(nuclei_from_probability).parameters
    assert instance_settings(1.0) == {k: defaults[k].default for k in ("hole_size", "sigma", "min_seed_size")}
    assert instance_settings(0.5) == {"hole_size": 16, "sigma": 0.5, "min_seed_size": 2}  # 20x tiles
    # a 2x2 interior seed is noise at 40x but a nucleus' seed at 20x
    m = two_touching_disks()
    seeds = np.zeros_like(m, dtype=bool)
    seeds[31:34, 21:24] = True  # 9 px
    seeds[32:34, 40:42] = True  # 4 px
    three = np.stack([1.0 - m, seeds & m, m & ~seeds]).astype(np.float32)
    assert nuclei_from_probability(three, "three", min_size=5).max() == 1
    assert nuclei_from_probability(three, "three", min_size=5, **instance_settings(0.5)).max() == 2
