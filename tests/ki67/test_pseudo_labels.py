# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.ki67.pseudo_labels: colour pseudo labels on synthetic IHC tiles and the no-DAB (H&E) rule."""

import logging

import numpy as np
import pytest
import torch

from bundle.inferers import TilePredictor
from bundle.ki67.points import Ki67Cells
from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE, Ki67PseudoLabeler, NoDABWarning, dab_fraction
from bundle.ki67.runner import Ki67Runner
from bundle.metrics import multiclass_point_scores


def test_pseudo_labels_classes_on_synthetic_blobs(ihc_tiles):
    lab = Ki67PseudoLabeler(nucleus_diameter=14).fit([t[0] for t in ihc_tiles])
    for rgb, pts, cls in ihc_tiles:
        p, c = lab.points(rgb)
        s = multiclass_point_scores(p, c, pts, cls, 5, [POSITIVE, NEGATIVE])
        assert s[POSITIVE]["f1"] >= 0.9 and s[NEGATIVE]["f1"] >= 0.9, s


def test_min_thickness_drops_thin_streaks():
    from bundle.ki67.pseudo_labels import blob_points

    mask = np.zeros((64, 96), bool)
    yy, xx = np.mgrid[:64, :96]
    mask |= (yy - 32) ** 2 + (xx - 20) ** 2 <= 10 ** 2  # round nucleus, radius 10
    mask[30:34, 45:90] = True  # spindle streak, 4 px wide and 45 px long
    both = blob_points(mask, 5, 30)
    assert len(both) >= 2 and (both[:, 1] > 40).any()
    kept = blob_points(mask, 5, 30, min_thickness=5)
    assert len(kept) == 1 and abs(kept[0, 0] - 32) <= 1 and abs(kept[0, 1] - 20) <= 1


def test_tile_negative_threshold_finds_pale_tile_negatives(ihc_tiles):
    """negative_threshold='tile': a pale tile among darker ones keeps its negatives (the folder-wide haematoxylin
    threshold, set by the dark tiles, loses most of them)."""
    rgb, pts, cls = ihc_tiles[0]
    pale = (255 * (rgb / 255.0) ** 0.5).astype(np.uint8)  # half the optical density
    imgs = [t[0] for t in ihc_tiles] + [pale]
    recall = {}
    for mode in ("folder", "tile"):
        lab = Ki67PseudoLabeler(nucleus_diameter=14, negative_threshold=mode).fit(imgs)
        p, c = lab.points(pale)
        recall[mode] = multiclass_point_scores(p, c, pts, cls, 5, [POSITIVE, NEGATIVE])[NEGATIVE]["recall"]
        p, c = lab.points(rgb)
        assert multiclass_point_scores(p, c, pts, cls, 5, [POSITIVE, NEGATIVE])[NEGATIVE]["f1"] >= 0.9
    assert recall["folder"] < 0.6 and recall["tile"] >= 0.9, recall
    with pytest.raises(ValueError, match="negative_threshold"):
        Ki67PseudoLabeler(negative_threshold="slide")


def test_he_input_in_ihc_mode_gives_zero_positives_and_warning(ihc_tiles, tmp_path, caplog):
    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile

    he, _ = synthetic_he_tile(160, seed=3)
    assert dab_fraction(he) < 0.002 < dab_fraction(ihc_tiles[0][0])
    lab = Ki67PseudoLabeler(nucleus_diameter=14).fit([t[0] for t in ihc_tiles])
    with pytest.warns(NoDABWarning, match="he.png: no DAB"):
        p, c = lab.points(he, "he.png")
    assert len(p) > 0 and (c == POSITIVE).sum() == 0
    # runner, network mode: even an (untrained) network's positives are dropped on an H&E tile
    write_image(tmp_path / "in" / "he.png", he)
    torch.manual_seed(0)
    from bundle.networks import ResUNet34

    net = ResUNet34(out_channels=3, base_channels=8)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([-2.0, 1.0, 0.0]))  # predicts 'positive' everywhere
    logging.getLogger("bundle.ki67").disabled = False  # a bundle run's logging.conf may have disabled it
    with caplog.at_level(logging.WARNING, logger="bundle.ki67"):
        s = Ki67Runner(net, str(tmp_path / "in"), tmp_path / "out", predictor=TilePredictor(tta=False),
                       cells=Ki67Cells(nucleus_diameter=14, threshold=0.3)).run()
    assert s["n_positive"] == 0 and s["ki67_index"] == "" and s["n_images_without_index"] == 1  # no index as if valid
    row = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    vals = dict(zip(row[0].split(","), row[1].split(",")))
    assert vals["ki67_index"] == "" and vals["note"] == "H&E: no DAB signal"
    assert any("he.png: no DAB (brown) signal" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)
