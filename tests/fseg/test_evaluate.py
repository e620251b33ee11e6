# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.fseg.evaluate: the linear probe and class masks."""

import numpy as np
import pytest

from bundle import fseg
from bundle.io import ImageError, write_image
from bundle.metrics import semantic_scores


def test_linear_probe_on_separable_concepts():
    rng = np.random.default_rng(0)
    recs = []
    for i in range(6):
        comps = np.zeros((10, 10), np.int64)
        comps[:, 5:] = 1
        gt = comps.copy() if i % 2 == 0 else 1 - comps
        concepts = np.stack([rng.normal(2 * (gt[0, 0]), 0.1, 4), rng.normal(2 * (gt[0, 9]), 0.1, 4)])
        recs.append({"concepts": concepts, "components": comps, "gt": gt})
    conf = fseg.linear_probe(recs, 2, folds=3)
    assert semantic_scores(conf)["miou"] == 1.0


def test_bad_masks_and_folders(tmp_path):
    rgb_mask = tmp_path / "colour.png"
    write_image(rgb_mask, np.dstack([np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8) * 9,
                                     np.zeros((8, 8), np.uint8)]))
    with pytest.raises(ImageError, match="colour.png: mask is a colour image"):
        fseg.read_class_mask(rgb_mask)
    ok = tmp_path / "ok.png"
    write_image(ok, np.zeros((8, 9), np.uint8))
    with pytest.raises(ImageError, match="ok.png: mask is 8x9 but its image is 10x10"):
        fseg.read_class_mask(ok, (10, 10, 3))
    (tmp_path / "empty").mkdir()
    ex = fseg.build_extractor("res2net", "random", base_channels=8)
    with pytest.raises(ImageError, match="no image files"):
        fseg.ConceptBankBuilder(ex, tmp_path / "empty", tmp_path / "b.pt").run()
