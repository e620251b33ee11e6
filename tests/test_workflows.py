# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""End-to-end runs of the bundle configs on synthetic tiles (small crops, one or two epochs)."""
import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.errors import root_cause  # MONAI wraps errors raised inside ``$@runner.run()`` in RuntimeError
from bundle.ssl import PRETEXTS, pretext_loss
from bundle.networks import Res2Net

FAST = {"epochs": 1, "crop_size": 64, "images_per_batch": 2, "crops_per_image": 2, "base_channels": 16}


def ssl_workflow(root, data, out, **kw):
    wf = ConfigWorkflow(config_file=str(root / "configs" / "ssl_train.json"), workflow_type="train",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(out), dataset_dir=str(data), **{**FAST, **kw})
    wf.initialize()
    return wf


def infer_workflow(root, data, out, ckpt, **kw):
    wf = ConfigWorkflow(config_file=str(root / "configs" / "psm_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(out), dataset_dir=str(data), ckpt_path=str(ckpt),
                        base_channels=16, **kw)
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


def test_ssl_train_resume_and_psm_infer(root, synthetic_dir, tmp_path):
    out = tmp_path / "run"
    wf = ssl_workflow(root, synthetic_dir / "datalist.json", out)
    assert wf.check_properties() in ([], None)
    wf.run()
    wf.finalize()
    def saved_epoch():
        t = torch.load(out / "models" / "last_checkpoint.pt", weights_only=False)["trainer"]
        return t["iteration"] // t["epoch_length"]

    assert saved_epoch() == 1 and (out / "models" / "model.pt").is_file()
    assert list((out / "eval").glob("events.out.tfevents.*"))
    # a rerun with more epochs continues from the checkpoint rather than starting over: plant a marker weight
    ck = torch.load(out / "models" / "last_checkpoint.pt", weights_only=False)
    ck["network"]["fc.bias"].fill_(123.0)
    torch.save(ck, out / "models" / "last_checkpoint.pt")
    wf = ssl_workflow(root, synthetic_dir / "datalist.json", out, epochs=2)
    wf.run()
    wf.finalize()
    assert saved_epoch() == 2
    bias = torch.load(out / "models" / "model.pt", weights_only=True)["fc.bias"]
    assert abs(float(bias) - 123.0) < 1.0  # one more epoch from the marker, not a fresh init (|bias| << 1)

    res = tmp_path / "pseudo"
    wf = infer_workflow(root, synthetic_dir / "datalist.json", out, out / "models" / "model.pt",
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


def test_psm_infer_skips_bad_files_and_reports(root, synthetic_dir, tmp_path):
    import shutil

    folder = tmp_path / "tiles"
    folder.mkdir()
    for p in sorted((synthetic_dir / "images").glob("*.png"))[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "zero.png").write_bytes(b"")
    (folder / "tiny.png").write_bytes((synthetic_dir / "images" / "tile_00.png").read_bytes()[:100])
    net = Res2Net("cpu", base_channels=16)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    wf = infer_workflow(root, folder, tmp_path, tmp_path / "model.pt", output_dir=str(tmp_path / "o"))
    wf.run()
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n_images"] == 2 and s["n_skipped"] == 2
    assert any("zero.png" in m and "empty" in m for m in s["skipped"])
    assert not list((tmp_path / "o").rglob("*.part*"))


def test_missing_and_mismatched_checkpoint(root, synthetic_dir, tmp_path):
    wf = infer_workflow(root, synthetic_dir / "images", tmp_path, tmp_path / "nope.pt", output_dir=str(tmp_path / "o"))
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, FileNotFoundError) and "nope.pt: checkpoint not found" in str(err) and "\n" not in str(err)
    torch.save(Res2Net("cpu", base_channels=8).state_dict(), tmp_path / "other.pt")
    wf = infer_workflow(root, synthetic_dir / "images", tmp_path, tmp_path / "other.pt", output_dir=str(tmp_path / "o"))
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, ValueError) and "other.pt: checkpoint does not match" in str(err)
    assert not (tmp_path / "o").exists()


def test_same_seed_same_weights(root, synthetic_dir, tmp_path):
    sd = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        wf = ssl_workflow(root, synthetic_dir / "datalist.json", out, pretext="similarity", seed=7,
                          device="$torch.device('cpu')")  # the same-seed guarantee is a CPU one
        wf.run()
        wf.finalize()
        sd.append(torch.load(out / "models" / "model.pt", weights_only=True))
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])


def test_paper_profile_merges_on_both_configs(root):
    from monai.bundle import ConfigParser

    for cfg in ("ssl_train.json", "psm_infer.json"):
        p = ConfigParser()
        p.read_config([str(root / "configs" / cfg), str(root / "configs" / "profile_paper.json")])
        assert p["depth"] == 101 and p["base_channels"] == 64
        net = p.get_parsed_content("network_def")
        assert len(net.layer3) == 23 and net.stem[0].out_channels == 64
    p = ConfigParser()
    p.read_config([str(root / "configs" / "ssl_train.json"), str(root / "configs" / "profile_paper.json")])
    assert type(p.get_parsed_content("train#crop")).__name__ == "CenterSpatialCropd"
    # the paper profile's checkpoint (0.76 GB with Adam's state) is written every 5 epochs, not every epoch
    ckpt = next(h for h in p["train#handlers"] if "CheckpointResume" in str(h.get("_target_", "")))
    assert ckpt["interval"] == "@checkpoint_interval" and p["checkpoint_interval"] == 5


def test_export_torchscript_and_verify_shapes(root, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    cfg, meta = str(root / "configs" / "psm_infer.json"), str(root / "configs" / "metadata.json")
    torch.manual_seed(0)
    net = Res2Net("cpu", base_channels=16).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, n=2, base_channels=16,
                      **{"_meta_#network_data_format#outputs#pred#num_channels": 1,  # metadata describes the seg net
                         "_meta_#network_data_format#inputs#image#num_channels": 3})
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=meta, config_file=cfg, base_channels=16)
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(1, 3, 96, 160)  # a size other than any used before
    assert torch.allclose(ts(x), net(x), atol=1e-5)
