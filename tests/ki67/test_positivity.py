# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.ki67.positivity: the absolute DAB rule, stain estimate, Wilson interval, and that a folder without
positive nuclei gets (almost) none, whatever the network or the colour clusters say (issue 34)."""

import json
import logging

import numpy as np
import pytest
import torch

from bundle.inferers import TilePredictor
from bundle.ki67.data import synthetic_ihc_tile
from bundle.ki67.points import Ki67Cells
from bundle.ki67.positivity import (
    DAB_THRESHOLD,
    DABHistogram,
    cell_dab,
    classify_by_dab,
    dab_density,
    ihc_stain_matrix,
    wilson_interval,
)
from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE, Ki67PseudoLabeler
from bundle.ki67.runner import Ki67Runner


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson_interval(0, 20)  # zero positives still gets an upper bound, not a zero-width interval
    assert lo == 0.0 and round(hi, 4) == 0.1611
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_cell_dab_is_the_disk_mean_and_classify_uses_the_threshold():
    dab = np.zeros((20, 20), np.float32)
    dab[5:8, 5:8] = 1.0
    v = cell_dab(dab, np.array([[6, 6], [15, 15], [0, 0]]), radius=1)
    assert v[0] == pytest.approx(1.0) and v[1] == 0 and v[2] == 0  # the corner point's disk is clipped, not wrapped
    assert classify_by_dab(v, 0.5).tolist() == [POSITIVE, NEGATIVE, NEGATIVE]


def test_stain_estimate_on_real_ihc_and_fallback_on_he(caplog):
    from skimage.data import immunohistochemistry

    from bundle.stain import REF_DAB, REF_HEMATOXYLIN
    from bundle.synthetic import synthetic_he_tile

    m, src = ihc_stain_matrix([immunohistochemistry()])
    assert src == "macenko"
    unit = lambda v: np.asarray(v) / np.linalg.norm(v)  # noqa: E731
    assert m[:, 0] @ unit(REF_HEMATOXYLIN) > 0.9 and m[:, 1] @ unit(REF_DAB) > 0.9
    he, _ = synthetic_he_tile(160, seed=3)
    with caplog.at_level(logging.WARNING, logger="bundle.ki67"):
        m2, src2 = ihc_stain_matrix([he], name="he_folder")
    assert src2 == "reference" and any(r.getMessage().startswith("he_folder: ") and "\n" not in r.getMessage()
                                       for r in caplog.records)
    # brown nuclei have a high DAB density, blue ones a low one, in OD units
    rgb, pts, cls = synthetic_ihc_tile(160, n_positive=5, n_negative=7, radius=7, seed=0)
    v = cell_dab(dab_density(rgb, m2), pts, 3)
    assert v[cls == POSITIVE].min() > DAB_THRESHOLD > v[cls == NEGATIVE].max()


def _positive_net():
    """A fixed 1x1-conv 'network' that finds every stained nucleus (background logit from the brightness) and calls
    it positive, brown or blue: the worst case of a positive class learnt relative to the folder."""
    net = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[2 / 3, 2 / 3, 2 / 3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])[..., None, None])
        net.bias.copy_(torch.tensor([-1.0, 0.0, -0.5]))
    return net.eval()


def test_a_folder_without_positive_nuclei_gets_none(tmp_path):
    """The bug of issue 34: positives were relative to the folder. A network that says 'positive' everywhere and
    the colour clusters fitted on a folder with no brown nuclei must not produce positives under the DAB rule."""
    from bundle.io import write_image

    for s in range(3):
        rgb, _, _ = synthetic_ihc_tile(160, n_positive=0, n_negative=10, radius=7, seed=10 + s)
        write_image(tmp_path / "neg" / f"t{s}.png", rgb)
    rgb, pts, cls = synthetic_ihc_tile(160, n_positive=6, n_negative=6, radius=7, seed=20)
    write_image(tmp_path / "mixed" / "m.png", rgb)
    kw = dict(predictor=TilePredictor(tta=False))
    cells = dict(nucleus_diameter=14, threshold=0.3)
    old = Ki67Runner(_positive_net(), str(tmp_path / "neg"), tmp_path / "o1",
                     cells=Ki67Cells(**cells, positivity="network"), **kw).run()
    assert old["n_positive"] > 0  # the network's own class: positives on a folder without any
    new = Ki67Runner(_positive_net(), str(tmp_path / "neg"), tmp_path / "o2", cells=Ki67Cells(**cells), **kw).run()
    assert new["n_positive"] == 0 and new["n_negative"] > 0
    assert new["ki67_index"] == 0.0 and 0.0 < new["ki67_index_ci_high"] < 0.15  # 0 of ~30 cells: upper bound ~0.1
    # the classical labeller fitted on the same folder: no positives either
    cl = Ki67Runner(None, str(tmp_path / "neg"), tmp_path / "o3", method="classical", cells=Ki67Cells(**cells),
                    **kw).run()
    assert cl["n_positive"] == 0 and cl["n_negative"] >= 20
    # a tile with brown nuclei: the same network's cells are positive exactly where the DAB is
    mix = Ki67Runner(_positive_net(), str(tmp_path / "mixed"), tmp_path / "o4", cells=Ki67Cells(**cells), **kw).run()
    assert 4 <= mix["n_positive"] <= 8
    import csv

    with open(tmp_path / "o4" / "points" / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all((float(r["dab_od"]) >= DAB_THRESHOLD) == (r["class"] == "Positive") for r in rows)
    gj = json.loads((tmp_path / "o4" / "geojson" / "m.geojson").read_text())
    assert all("DAB OD mean" in f["properties"]["measurements"] for f in gj["features"])
    assert (tmp_path / "o4" / "dab_histogram.png").is_file()
    # a user threshold above every nucleus: no positives; the summary records it
    hi = Ki67Runner(_positive_net(), str(tmp_path / "mixed"), tmp_path / "o5",
                    cells=Ki67Cells(**cells, dab_threshold=5.0), **kw).run()
    assert hi["n_positive"] == 0 and hi["dab_threshold"] == 5.0


def test_pseudo_labeller_dab_rule_keeps_brown_nuclei_only(ihc_tiles):
    lab = Ki67PseudoLabeler(nucleus_diameter=14).fit([t[0] for t in ihc_tiles])
    from bundle.metrics import multiclass_point_scores

    for rgb, pts, cls in ihc_tiles:
        p, c = lab.points(rgb)
        s = multiclass_point_scores(p[:, ::-1], c, pts[:, ::-1], cls, 5, [POSITIVE, NEGATIVE])
        assert s[POSITIVE]["f1"] >= 0.9, s


def test_settings_are_checked_and_histogram_counts():
    with pytest.raises(ValueError, match="dab_threshold"):
        Ki67Cells(dab_threshold=0)
    with pytest.raises(ValueError, match="unknown positivity"):
        Ki67Cells(positivity="folder")
    h = DABHistogram(top=2.0, bins=20)
    h.add([0.05, 0.05, 0.5, 9.0])  # values past the top land in the last bin
    assert h.counts.sum() == 4 and h.counts[0] == 2 and h.counts[-1] == 1
    img = h.figure(0.3)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
