# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.fseg.segmentation: variants A and B give consistent concept ids."""

import numpy as np
import torch

from bundle import fseg


def test_consistent_ids_variant_a_and_b(extractor, feats_and_centres, tissue_tile):
    rgb, f, X, H = feats_and_centres(extractor, 5)
    rgb2, _ = tissue_tile((100, 90), seed=3)
    for v in ("A", "B"):
        a = fseg.segment(f, H, rgb.shape[:2], extractor, v, n_components=4)
        b = fseg.segment(extractor(rgb)[0], H, rgb.shape[:2], extractor, v, n_components=4)
        assert torch.equal(a["labels"], b["labels"])  # deterministic
        assert a["labels"].shape == rgb.shape[:2] and int(a["labels"].max()) < 5
        c = fseg.segment(extractor(rgb2)[0], H, rgb2.shape[:2], extractor, v, n_components=4)
        assert c["labels"].shape == (100, 90) and int(c["labels"].min()) >= 0 and int(c["labels"].max()) < 5
    a = fseg.variant_a(f, H, rgb.shape[:2], extractor, n_components=4)
    assert torch.equal(a["labels"], fseg.relabel(a["components"], a["mapping"]))
    assert torch.equal(a["mapping"], fseg.cosine_assign(a["concepts"], torch.from_numpy(H)))
    # the same bank gives the same ids in two images: identical content -> identical labels
    twin = fseg.segment(extractor(np.concatenate([rgb, rgb], 0))[0], H, (256, 160), extractor, "B")["labels"]
    assert (twin[:128] == fseg.segment(f, H, rgb.shape[:2], extractor, "B")["labels"]).float().mean() > 0.9
    fr = fseg.area_fractions(a["labels"].numpy(), 5)
    assert fr.shape == (5,) and abs(fr.sum() - 1) < 1e-9
