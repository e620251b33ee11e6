# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.scm: semantic clustering of pixels into pseudo masks."""

import numpy as np
import pytest

from bundle.metrics import pixel_scores
from bundle.nuclei.scm import hematoxylin_otsu, jet, semantic_clustering
from bundle.synthetic import synthetic_he_tile


def test_jet_endpoints():
    j = jet(np.array([[0.0, 0.5, 1.0]]))
    assert np.allclose(j[0, 0], [0, 0, 0.5]) and np.allclose(j[0, 1], [0.5, 1, 0.5]) and np.allclose(j[0, 2], [0.5, 0, 0])


def test_scm_finds_synthetic_nuclei():
    rgb, inst = synthetic_he_tile(256, seed=1)
    gt = inst > 0
    oracle_psm = gt.astype(np.float32)  # a perfect activation map
    colour = semantic_clustering(rgb, None, k=2, beta=float("inf"), min_size=20, hole_size=10)
    paper = semantic_clustering(rgb, oracle_psm, k=2, beta=1.0, fusion="jet", min_size=20, hole_size=10)
    stack = semantic_clustering(rgb, oracle_psm, k=2, fusion="stack", beta=0, h_weight=1, min_size=20, hole_size=10)
    otsu = hematoxylin_otsu(rgb, min_size=20, hole_size=10)
    for m in (colour, paper, stack, otsu):
        assert pixel_scores(m, gt)["f1"] > 0.8
    # with the PSM as the only feature, an inverted map selects the background: the rule follows the map
    wrong = semantic_clustering(rgb, 1 - oracle_psm, k=2, fusion="stack", beta=0, h_weight=0, min_size=20, hole_size=10)
    assert pixel_scores(wrong, gt)["f1"] < 0.3
    # K=3 with one-cluster foreground splits nuclei of two tones and keeps only the darker: precise, low recall
    k3 = pixel_scores(semantic_clustering(rgb, None, k=3, beta=float("inf"), min_size=20, hole_size=10), gt)
    assert k3["precision"] > 0.95 and k3["recall"] < k3["precision"]


def test_scm_deterministic_and_validates():
    rgb, _ = synthetic_he_tile(128, seed=2)
    psm = np.random.default_rng(0).random(rgb.shape[:2]).astype(np.float32)
    a = semantic_clustering(rgb, psm, seed=3)
    b = semantic_clustering(rgb, psm, seed=3)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="does not match"):
        semantic_clustering(rgb, psm[:10])
    with pytest.raises(ValueError):
        semantic_clustering(rgb, psm, fusion="nope")
