# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Fixtures shared by the nuclei workflow's tests: config runs on the synthetic tiles."""
import os

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from bundle.label_free import config_files


@pytest.fixture(name="FAST")
def fast_training():
    """det_train / train overrides for tiny runs (small crops, one epoch of two steps)."""
    return {"epochs": 1, "crop_size": 64, "images_per_batch": 2, "crops_per_image": 2, "base_channels": 8,
            "steps_per_epoch": 2, "val_interval": 1}


@pytest.fixture(scope="session")
def pseudo_root(synthetic_dir, tmp_path_factory):
    """A bundle root whose eval/pseudo_masks/masks holds 0/255 masks for the synthetic tiles."""
    from bundle.annotations import read_instance_label
    from bundle.io import load_datalist, write_image

    root = tmp_path_factory.mktemp("nuclei_run")
    for it in load_datalist(synthetic_dir / "datalist.json"):
        m = read_instance_label(it["label"]) > 0
        name = os.path.basename(it["image"]).rsplit(".", 1)[0] + ".png"
        write_image(root / "eval" / "pseudo_masks" / "masks" / name, (m * 255).astype(np.uint8))
    return root


def _workflow(root, config, bundle_root, data, wtype="train", **kw):
    wf = ConfigWorkflow(config_file=config_files(config, root / "configs"), workflow_type=wtype,
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(bundle_root), dataset_dir=str(data), **kw)
    wf.initialize()
    return wf


@pytest.fixture
def workflow():
    """``workflow(root, config, bundle_root, data, wtype="train", **overrides)``: an initialised ConfigWorkflow of
    configs/<config> (an overlay such as det_train.json comes with train.json)."""
    return _workflow


def _infer_workflow(root, data, out, ckpt, **kw):
    wf = ConfigWorkflow(config_file=str(root / "configs" / "psm_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(out), dataset_dir=str(data), ckpt_path=str(ckpt),
                        base_channels=16, **kw)
    wf.initialize()
    return wf


@pytest.fixture
def infer_workflow():
    """``infer_workflow(root, data, out, ckpt, **overrides)``: an initialised psm_infer.json workflow (16 channels)."""
    return _infer_workflow
