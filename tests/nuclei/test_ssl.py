# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.ssl: the pretext losses and the ssl_train run (resume, same seed, then psm_infer)."""

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.networks import Res2Net
from bundle.nuclei.ssl import PRETEXTS, pretext_loss

SSL_FAST = {"epochs": 1, "crop_size": 64, "images_per_batch": 2, "crops_per_image": 2, "base_channels": 16}


def ssl_workflow(root, data, out, **kw):
    wf = ConfigWorkflow(config_file=str(root / "configs" / "ssl_train.json"), workflow_type="train",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(out), dataset_dir=str(data), **{**SSL_FAST, **kw})
    wf.initialize()
    return wf


@pytest.mark.parametrize("name", PRETEXTS)
def test_each_pretext_trains(name):
    torch.manual_seed(0)
    net = Res2Net("cpu", base_channels=8)
    x = torch.rand(4, 3, 64, 64) * 255
    loss = pretext_loss(name, net, x)
    assert torch.isfinite(loss)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("pretext", PRETEXTS)
def test_pretext_losses_keep_every_tensor_on_the_crops_device(pretext):
    """On the 'meta' device any tensor made on the CPU inside a loss raises, as it would on CUDA (found on an H100:
    the contrastive views' colour jitter was drawn as CPU tensors)."""
    from bundle.nuclei.ssl import pretext_loss

    net = Res2Net("cpu", base_channels=8).to("meta")
    loss = pretext_loss(pretext, net, torch.empty(2, 3, 64, 64, device="meta"))
    assert loss.device.type == "meta" and loss.dim() == 0


def test_ssl_train_resume_and_psm_infer(root, synthetic_dir, tmp_path, infer_workflow):
    out = tmp_path / "run"
    wf = ssl_workflow(root, synthetic_dir / "datalist.json", out)
    assert wf.check_properties() in ([], None)
    wf.run()
    wf.finalize()
    def saved_epoch():
        t = torch.load(out / "models" / "ssl" / "last_checkpoint.pt", weights_only=False)["trainer"]
        return t["iteration"] // t["epoch_length"]

    assert saved_epoch() == 1 and (out / "models" / "ssl" / "model.pt").is_file()
    assert list((out / "eval").glob("events.out.tfevents.*"))
    # a rerun with more epochs continues from the checkpoint rather than starting over: plant a marker weight
    ck = torch.load(out / "models" / "ssl" / "last_checkpoint.pt", weights_only=False)
    ck["network"]["fc.bias"].fill_(123.0)
    torch.save(ck, out / "models" / "ssl" / "last_checkpoint.pt")
    wf = ssl_workflow(root, synthetic_dir / "datalist.json", out, epochs=2)
    wf.run()
    wf.finalize()
    assert saved_epoch() == 2
    bias = torch.load(out / "models" / "ssl" / "model.pt", weights_only=True)["fc.bias"]
    assert abs(float(bias) - 123.0) < 1.0  # one more epoch from the marker, not a fresh init (|bias| << 1)

    res = tmp_path / "pseudo"
    wf = infer_workflow(root, synthetic_dir / "datalist.json", out, out / "models" / "ssl" / "model.pt",
                        output_dir=str(res))
    wf.run()
    wf.finalize()
    stems = sorted(p.stem for p in (synthetic_dir / "images").glob("*.png"))
    for sub in ("psm", "masks", "overlays"):
        assert sorted(p.stem for p in (res / sub).glob("*.png")) == stems
    s = json.loads((res / "summary.json").read_text())
    assert s["n_images"] == 6 and 0 <= s["pixel_f1"] <= 1
    mask = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(res / "masks" / f"{stems[0]}.png"))
    assert set(np.unique(mask)) <= {0, 255}


def test_same_seed_same_weights(root, synthetic_dir, tmp_path):
    sd = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        wf = ssl_workflow(root, synthetic_dir / "datalist.json", out, pretext="similarity", seed=7,
                          device="$torch.device('cpu')")  # the same-seed guarantee is a CPU one
        wf.run()
        wf.finalize()
        sd.append(torch.load(out / "models" / "ssl" / "model.pt", weights_only=True))
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
