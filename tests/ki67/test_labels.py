# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.ki67.labels: point labels, run names, teachers and the label folder's settings."""

import os

import numpy as np
import pytest
import torch

from bundle.ki67.labels import point_label
from bundle.ki67.pseudo_labels import IGNORE, NEGATIVE, POSITIVE


def test_point_label_disks_and_ignore_ring():
    lab = point_label(np.array([[20, 20], [20, 50]]), np.array([POSITIVE, NEGATIVE]), (64, 80), 3, 6)
    assert lab[20, 20] == POSITIVE and lab[20, 50] == NEGATIVE
    assert lab[20, 25] == IGNORE and lab[0, 0] == 0
    assert set(np.unique(lab)) == {0, POSITIVE, NEGATIVE, IGNORE}
    assert (lab == POSITIVE).sum() == (lab == NEGATIVE).sum() == 29  # disk(3)


def test_ensemble_teacher_averages_probabilities(ihc_dir, tmp_path):
    """Self-training labels from a list of teachers: the same checkpoint twice must give exactly the single teacher's
    labels (a mean, not a sum); a comma-separated string is the same list; a missing teacher is a one-line error."""
    from bundle.checkpoints import atomic_torch_save
    from bundle.ki67.labels import prepare_ki67_labels, teacher_list
    from bundle.networks import ResUNet34

    torch.manual_seed(0)
    net = ResUNet34(out_channels=3, base_channels=8)
    with torch.no_grad():  # a head that makes the untrained teacher detect peaks of its own noise on the tiles
        net.head.bias.copy_(torch.tensor([-0.5, 0.0, 0.2]))
    ck = tmp_path / "t.pt"
    atomic_torch_save(net.state_dict(), ck)
    assert teacher_list(None) == [] and teacher_list(f"{ck}, {ck}") == [str(ck), str(ck)]
    kw = dict(nucleus_diameter=14, base_channels=8, threshold=0.3, val_fraction=0.0)
    one = prepare_ki67_labels(str(ihc_dir), tmp_path / "one", teacher_ckpt=str(ck), **kw)
    two = prepare_ki67_labels(str(ihc_dir), tmp_path / "two", teacher_ckpt=f"{ck},{ck}", **kw)
    assert len(one["training"]) == len(two["training"]) == 3
    found = set()
    for a, b in zip(one["training"], two["training"]):
        np.testing.assert_array_equal(np.load(a["label"]), np.load(b["label"]))
        found |= set(np.unique(np.load(a["label"])).tolist())
    assert found & {POSITIVE, NEGATIVE}  # the comparison is not between empty labels
    with pytest.raises(Exception, match="nope.pt"):
        prepare_ki67_labels(str(ihc_dir), tmp_path / "bad", teacher_ckpt=[str(ck), str(tmp_path / "nope.pt")], **kw)
    # a teacher with the haematoxylin input channel (ki67_train --hematoxylin_input True) is read as such
    net4 = ResUNet34(in_channels=4, out_channels=3, base_channels=8)
    atomic_torch_save(net4.state_dict(), tmp_path / "t4.pt")
    four = prepare_ki67_labels(str(ihc_dir), tmp_path / "four", teacher_ckpt=str(tmp_path / "t4.pt"), **kw)
    assert len(four["training"]) == 3


def test_teacher_point_mode_is_recorded_only_when_not_the_default():
    """Round-2 label folders written before ``teacher_point_mode`` existed keep a valid record (not rebuilt); a
    centroid teacher's labels get their own record (rebuilt when the mode changes)."""
    from bundle.ki67.labels import label_settings

    old = {"nucleus_diameter": 20.0, "min_thickness": 0.0, "disk_radius": None, "negative_threshold": None,
           "label_seed": None, "ignore_radius": None, "threshold": 0.5}
    assert label_settings(20, teachers=["t.pt"]) == old
    assert label_settings(20, teachers=["t.pt"], teacher_point_mode="centroid") == {**old,
                                                                                   "teacher_point_mode": "centroid"}
    assert "teacher_point_mode" not in label_settings(20, teacher_point_mode="centroid")  # round 1: no teacher


def test_run_names_and_round_teachers(tmp_path):
    from bundle.ki67.labels import round_checkpoints, run_name

    assert [run_name(1), run_name(2), run_name(1, 3), run_name(2, 1)] == ["ki67", "ki67_r2", "ki67_seed3",
                                                                          "ki67_r2_seed1"]
    assert run_name(2, 1, "ki67_train") == "ki67_train_r2_seed1"
    for name in ("ki67", "ki67_seed10", "ki67_seed2", "ki67_seedx", "ki67_r2"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "model.pt").write_bytes(b"")
    (tmp_path / "models" / "ki67_seed3").mkdir()  # no model.pt: left out
    assert [os.path.basename(os.path.dirname(p)) for p in round_checkpoints(tmp_path, 1)] == [
        "ki67", "ki67_seed2", "ki67_seed10"]
    with pytest.raises(FileNotFoundError, match="ki67_r3.*train round 3 first"):
        round_checkpoints(tmp_path, 3)


def test_pseudo_labels_do_not_depend_on_the_training_seed(ihc_dir, tmp_path, monkeypatch):
    """Training seeds sharing a bundle root share its round-1 labels: the K-Means seed is ``label_seed``, not the
    training ``seed`` (which draws the held-back split), so seeds started side by side write identical labels."""
    import bundle.ki67 as k

    seeds = []
    init = k.Ki67PseudoLabeler.__init__

    def spy(self, *args, **kw):
        seeds.append(kw.get("seed"))
        init(self, *args, **kw)

    monkeypatch.setattr(k.Ki67PseudoLabeler, "__init__", spy)
    a = k.prepare_ki67_labels(str(ihc_dir), tmp_path / "a", nucleus_diameter=14, seed=0, val_fraction=0.34)
    b = k.prepare_ki67_labels(str(ihc_dir), tmp_path / "b", nucleus_diameter=14, seed=5, val_fraction=0.34)
    assert seeds == [0, 0]
    for i in range(3):
        assert np.array_equal(np.load(tmp_path / "a" / f"tile_{i}.npy"), np.load(tmp_path / "b" / f"tile_{i}.npy"))
    assert len(a["training"]) + len(a["validation"]) == len(b["training"]) + len(b["validation"]) == 3
    k.prepare_ki67_labels(str(ihc_dir), tmp_path / "a", nucleus_diameter=14, seed=0, label_seed=3, val_fraction=0.34)
    assert seeds == [0, 0, 3]  # a changed label_seed rewrites the labels


def test_changed_label_settings_rewrite_labels(ihc_dir, tmp_path):
    """A rerun with another min_thickness (or diameter) in the same bundle root must not reuse the old labels."""
    from bundle.ki67.labels import prepare_ki67_labels

    first = prepare_ki67_labels(str(ihc_dir), tmp_path / "lab", nucleus_diameter=14, val_fraction=0.0)
    lab = first["training"][0]["label"]
    assert set(np.unique(np.load(lab)).tolist()) & {POSITIVE, NEGATIVE}
    prepare_ki67_labels(str(ihc_dir), tmp_path / "lab", nucleus_diameter=14, val_fraction=0.0, min_thickness=100)
    assert not set(np.unique(np.load(lab)).tolist()) & {POSITIVE, NEGATIVE}  # every blob is thinner than 100 px


def test_teacher_sees_tiles_at_its_training_mpp(ihc_dir, tmp_path, monkeypatch):
    """A self-training teacher trained at another pixel size (its settings.json) gets the tiles resized to it; one
    without settings.json (before 0.8.0) or at the tiles' own pixel size gets them as they are."""
    import json

    import bundle.inferers
    from bundle.checkpoints import SETTINGS_NAME, atomic_torch_save
    from bundle.ki67.labels import prepare_ki67_labels
    from bundle.networks import ResUNet34

    net = ResUNet34(out_channels=3, base_channels=8)
    for sub, mpp in (("t20x", 0.5), ("t40x", 0.25), ("old", None)):
        (tmp_path / sub).mkdir()
        atomic_torch_save(net.state_dict(), tmp_path / sub / "model.pt")
        if mpp is not None:
            (tmp_path / sub / SETTINGS_NAME).write_text(json.dumps({"mpp": mpp}))
    seen = []
    real = bundle.inferers.predict_probability

    def spy(*args, scale=1.0, **kwargs):
        seen.append(scale)
        return real(*args, scale=scale, **kwargs)

    monkeypatch.setattr(bundle.inferers, "predict_probability", spy)
    teachers = ",".join(str(tmp_path / s / "model.pt") for s in ("t20x", "t40x", "old"))
    prepare_ki67_labels(str(ihc_dir), tmp_path / "labels", teacher_ckpt=teachers, nucleus_diameter=14,
                        base_channels=8, val_fraction=0.0, mpp=0.25)
    assert seen[:3] == [0.5, 1.0, 1.0] and len(seen) == 9  # 3 tiles x 3 teachers
