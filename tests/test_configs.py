# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests the config files (configs/*.json): profiles and overlays, parsed keys, the evaluator, exported networks."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.label_free import config_files
from bundle.networks import Res2Net


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


def test_export_segmentation_network(root, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    from bundle.networks import ResUNet34

    cfg, meta = str(root / "configs" / "inference.json"), str(root / "configs" / "metadata.json")
    torch.manual_seed(0)
    net = ResUNet34(in_channels=4, out_channels=2, base_channels=8).eval()  # default: RGB + haematoxylin channel
    torch.save(net.state_dict(), tmp_path / "model.pt")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, n=2, base_channels=8)
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=meta, config_file=cfg, base_channels=8)
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(1, 4, 100, 70)  # not a multiple of 32, not the export size
    assert torch.allclose(ts(x), net(x), atol=1e-5)
    # an RGB-only checkpoint (seg_train --hematoxylin_input False) in a bundle root: channels read from it
    seg_dir = tmp_path / "rgb" / "models"
    seg_dir.mkdir(parents=True)
    torch.save(ResUNet34(out_channels=2, base_channels=8).state_dict(), seg_dir / "model.pt")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, n=2, base_channels=8,
                      bundle_root=str(tmp_path / "rgb"), **{"_meta_#network_data_format#inputs#image#num_channels": 3})


def test_inference_config_mpp(root):
    """``--mpp 0.5`` scales the inference defaults; ``--wsi#mpp`` sets ``mpp`` for slides; explicit values win; with
    no pixel size given each tile's scale is measured (``auto_scale``), and a given one switches that off."""
    from monai.bundle import ConfigParser

    def resolved(**over):
        p = ConfigParser()
        p.read_config(str(root / "configs" / "inference.json"))
        p.update(over)
        return {k: p.get_parsed_content(k) for k in ("mpp", "min_size", "min_distance", "size_scale", "auto_scale")}

    assert resolved() == {"mpp": None, "min_size": 60, "min_distance": 6, "size_scale": 1.0, "auto_scale": True}
    assert resolved(mpp=0.5) == {"mpp": 0.5, "min_size": 15, "min_distance": 3, "size_scale": 0.5,
                                 "auto_scale": False}
    assert resolved(mpp=0.25, auto_scale=True)["auto_scale"] is True
    assert resolved(**{"wsi#mpp": 0.5})["min_distance"] == 3
    assert resolved(mpp=0.5, min_distance=4)["min_distance"] == 4


def test_inference_evaluator_loads_its_checkpoint(root, tmp_path):
    """`monai.bundle run evaluator` style use: the evaluator of inference.json loads ckpt_path itself
    (CheckpointLoader), so a Deploy app does not have to, and its `pred` is (1, 2, H, W) probabilities."""
    from monai.bundle import ConfigParser

    from bundle.handlers import CheckpointResume
    from bundle.io import write_image
    from bundle.networks import ResUNet34

    torch.manual_seed(1)
    trained = ResUNet34(in_channels=3, out_channels=2, base_channels=16)
    CheckpointResume(tmp_path / "m", {"network": trained}, settings={"mpp": 0.25}).save(None)
    (tmp_path / "tiles").mkdir()
    write_image(tmp_path / "tiles" / "a.png", (np.random.default_rng(0).random((48, 56, 3)) * 255).astype(np.uint8))
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "dataset_dir": str(tmp_path / "tiles"),
              "device": "$torch.device('cpu')", "roi_size": 64})
    evaluator = p.get_parsed_content("evaluator")
    net = p.get_parsed_content("network")
    with torch.no_grad():
        for w in net.parameters():
            w.zero_()  # whatever the network held before, the evaluator must load the checkpoint
    evaluator.run()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in net.state_dict().items())
    pred = evaluator.state.output[0]["pred"]
    assert tuple(pred.shape) == (2, 48, 56) and torch.allclose(pred.sum(0), torch.ones(48, 56), atol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_paper_profile_merges(root):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([str(root / "configs" / "gan_train.json"), str(root / "configs" / "gan_profile_paper.json")])
    p.parse()
    assert p.get_parsed_content("network_def").channels == 128
    assert p.get_parsed_content("generator_def").channels == 128
    assert p["batch_size"] == 10 and p["learning_rate"] == 1e-4 and p["critic_steps"] == 5
    assert p["gp_weight"] == 10 and p["mi_weight"] == 1 and p["noise_dim"] == 32 and p["n_categories"] == 5
    assert not p.get_parsed_content("network_def").q_norm and not p["mi_in_critic_step"]


@pytest.mark.usefixtures("one_thread")
def test_gan_and_ssl_checkpoints_do_not_collide(root):
    """Every network has its own checkpoint folder under one bundle_root, and models/model.pt is the network that
    inference.json loads (the Model Zoo's canonical path): the seg network. The GAN once wrote models/model.pt and
    models/last_checkpoint.pt, so it could resume from or overwrite the SSL network, which also lived there."""
    from monai.bundle import ConfigParser

    from bundle.label_free import config_files

    def paths(name, ids):
        p = ConfigParser()
        p.read_config(config_files(name, root / "configs"))
        p.update({"bundle_root": "/b"})
        return {os.path.normpath(p.get_parsed_content(i)) for i in ids}

    ssl = paths("ssl_train.json", ["ckpt_dir"]) | paths("psm_infer.json", ["ckpt_path"])
    gan = paths("gan_train.json", ["ckpt_dir"]) | paths("gan_classify.json", ["ckpt_dir", "ckpt_path"])
    assert ssl == {"/b/models/ssl", "/b/models/ssl/model.pt"} and gan == {"/b/models/gan", "/b/models/gan/model.pt"}
    assert paths("det_train.json", ["ckpt_dir"]) == {"/b/models/det"}
    assert paths("train.json", ["ckpt_dir", "det_ckpt"]) == {"/b/models", "/b/models/det/model.pt"}
    assert paths("inference.json", ["ckpt_path"]) == {"/b/models/model.pt"}
    assert paths("fseg_infer.json", ["weights_path"]) == {"/b/models/ssl/model.pt"}


def test_ki67_train_resizes_tiles_to_train_mpp(root, ihc_dir, tmp_path):
    """20x tiles (--mpp 0.5) are trained on at 40x (train_mpp 0.25, default): resized x2 once, sizes at 40x,
    and the pixel size trained at is what the checkpoint's settings.json will say."""
    from monai.bundle import ConfigParser

    from bundle.io import read_rgb
    from bundle.transforms import resampled_tiles

    def parsed(**over):
        p = ConfigParser()
        p.read_config(config_files("ki67_train.json", root / "configs"))
        p.update({"dataset_dir": str(ihc_dir), "bundle_root": str(tmp_path / "b"), **over})
        return p

    p = parsed(mpp=0.5)
    items = p.get_parsed_content("train_data")
    assert [read_rgb(it["image"]).shape for it in items] == [(320, 320, 3)] * 3  # broken.png skipped
    assert p.get_parsed_content("nucleus_diameter") == 20
    ckpt = next(h for h in p["train#handlers"] if "CheckpointResume" in str(h.get("_target_", "")))
    assert ckpt["settings"] == {"mpp": "@train_mpp", "network": "@network_kind", "nucleus_diameter": "@train_diameter",
                                "diameter_estimator": "ihc"}  # Ki-67 networks record the IHC estimator's diameter
    assert p.get_parsed_content("train_mpp") == 0.25 and p.get_parsed_content("network_kind") == "ki67"
    mtime = Path(items[0]["image"]).stat().st_mtime_ns
    assert resampled_tiles(str(ihc_dir), 2.0, tmp_path / "b" / "eval" / "ki67_tiles") == items
    assert Path(items[0]["image"]).stat().st_mtime_ns == mtime  # written once, reused
    # another folder with the same stems into the same cache: rewritten, not reused; shared stems kept apart
    from bundle.io import write_image

    other = tmp_path / "other"
    write_image(other / "tile_0.png", np.zeros((40, 50, 3), np.uint8))
    write_image(other / "sub" / "tile_0.png", np.full((40, 50, 3), 255, np.uint8))
    import json as _json

    dl = tmp_path / "dl.json"
    dl.write_text(_json.dumps({"training": [{"image": "other/tile_0.png"}, {"image": "other/sub/tile_0.png"}]}))
    got = resampled_tiles(str(dl), 2.0, tmp_path / "b" / "eval" / "ki67_tiles")
    assert len({g["image"] for g in got}) == 2
    assert [read_rgb(g["image"]).shape for g in got] == [(80, 100, 3)] * 2
    assert read_rgb(got[0]["image"]).max() == 0 and read_rgb(got[1]["image"]).min() == 255
    # the tiles' own pixel size (the behaviour before train_mpp): no copy, sizes scaled to 20x
    p = parsed(mpp=0.5, train_mpp=0.5)
    assert p.get_parsed_content("train_data") == str(ihc_dir) and p.get_parsed_content("nucleus_diameter") == 10
    assert parsed().get_parsed_content("train_data") == str(ihc_dir)
