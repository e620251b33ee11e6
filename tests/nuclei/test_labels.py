# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.labels: instance and Voronoi targets, and the det_train / train runs that prepare labels."""

import json

import numpy as np
import pytest
import torch

from bundle.errors import root_cause
from bundle.nuclei.labels import instance_target, voronoi_label


def test_instance_target_marks_shared_boundary():
    inst = np.zeros((20, 20), int)
    inst[5:15, 2:10] = 1
    inst[5:15, 10:18] = 2
    t = instance_target(inst)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[inst == 0] == 0).all()
    assert t[10, 9] == 2 and t[10, 10] == 2  # both sides of the shared border
    assert t[10, 5] == 1 and t[10, 14] == 1
    assert (instance_target(inst, boundary_width=2)[10, 8]) == 2


@pytest.mark.usefixtures("one_thread")
def test_voronoi_label_points_edges_ignore():
    lab = voronoi_label(np.array([[20, 10], [20, 30]]), (40, 41), disk_radius=2)
    assert lab.dtype == np.uint8 and lab.shape == (40, 41) and set(np.unique(lab)) == {0, 1, 2}
    assert lab[20, 10] == 1 and lab[20, 30] == 1 and lab[22, 10] == 1 and lab[23, 10] != 1  # disk(2)
    edge_cols = np.unique(np.nonzero(lab == 0)[1])
    assert edge_cols.min() >= 19 and edge_cols.max() <= 21  # the bisector is column 20
    assert (lab[:, 20] == 0).all() or ((lab[:, 19] == 0) | (lab[:, 21] == 0)).all()
    assert (lab[:, :15] != 0).all() and lab[0, 0] == 2 and lab[39, 40] == 2
    assert (voronoi_label(np.zeros((0, 2)), (8, 8)) == 2).all()
    with pytest.raises(ValueError, match="outside"):
        voronoi_label(np.array([[50, 1]]), (40, 40))


def test_det_train_resumes(root, synthetic_dir, pseudo_root, tmp_path, workflow, FAST):
    import shutil

    broot = tmp_path / "r"
    shutil.copytree(pseudo_root / "eval" / "pseudo_masks", broot / "eval" / "pseudo_masks")
    data = synthetic_dir / "datalist.json"
    workflow(root, "det_train.json", broot, data, **FAST).run()
    ck = torch.load(broot / "models" / "det" / "last_checkpoint.pt", weights_only=False)
    ck["network"]["head.bias"].fill_(77.0)  # a marker: a resumed run starts from it, a fresh run would not
    torch.save(ck, broot / "models" / "det" / "last_checkpoint.pt")
    wf = workflow(root, "det_train.json", broot, data, **{**FAST, "epochs": 2, "learning_rate": 0.0})
    wf.run()
    t = torch.load(broot / "models" / "det" / "last_checkpoint.pt", weights_only=False)
    assert t["trainer"]["iteration"] // t["trainer"]["epoch_length"] == 2
    assert float(t["network"]["head.bias"][0]) == pytest.approx(77.0)


def test_seg_train_needs_detection_checkpoint(root, synthetic_dir, pseudo_root, tmp_path, workflow, FAST):
    import shutil

    broot = tmp_path / "r2"
    shutil.copytree(pseudo_root / "eval" / "pseudo_masks", broot / "eval" / "pseudo_masks")
    wf = workflow(root, "train.json", broot, synthetic_dir / "datalist.json", **FAST)
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, FileNotFoundError) and "det/model.pt: checkpoint not found" in str(err)
    assert "\n" not in str(err)
    # points from the pseudo masks themselves need no detection network
    workflow(root, "train.json", broot, synthetic_dir / "datalist.json", point_source="mask", **FAST).run()
    assert (broot / "models" / "model.pt").is_file() and not (broot / "models" / "det").exists()
    labels = broot / "eval" / "seg_labels"
    assert json.loads((labels / "settings.json").read_text())["point_source"] == "mask"
    assert all(len((labels / "points" / f"{p.stem}.csv").read_text().splitlines()) > 1 for p in labels.glob("*.npy"))
    # the CSV holds the label's points: the mask's centroids rounded (as the Voronoi disks are), not truncated
    from bundle.annotations import read_points
    from bundle.io import read_mask
    from bundle.nuclei.detection import mask_points

    stem = next(labels.glob("*.npy")).stem
    want = np.rint(mask_points(read_mask(broot / "eval" / "pseudo_masks" / "masks" / f"{stem}.png"), 1.0))
    np.testing.assert_array_equal(read_points(labels / "points" / f"{stem}.csv"), want)


def test_det_train_without_pseudo_masks_is_one_line_error(root, synthetic_dir, tmp_path, workflow, FAST):
    wf = workflow(root, "det_train.json", tmp_path / "empty", synthetic_dir / "datalist.json", **FAST)
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, FileNotFoundError) and "pseudo-mask folder not found (run psm_infer first)" in str(err)


def test_det_train_same_seed_same_weights(root, synthetic_dir, pseudo_root, tmp_path, workflow, FAST):
    import shutil

    weights = []
    for i in range(2):
        broot = tmp_path / f"s{i}"
        shutil.copytree(pseudo_root / "eval" / "pseudo_masks", broot / "eval" / "pseudo_masks")
        # the same-seed guarantee is a CPU one (cuDNN kernels are not bit-reproducible), so pin the device
        workflow(root, "det_train.json", broot, synthetic_dir / "datalist.json", device="$torch.device('cpu')",
                 **FAST).run()
        weights.append(torch.load(broot / "models" / "det" / "model.pt", weights_only=True))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
