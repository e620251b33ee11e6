# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.fseg.features: the ResNet-50 and ViT feature extractors."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from bundle import fseg


def test_resnet50_local_weights(tmp_path):
    from monai.networks.nets import resnet50

    torch.manual_seed(3)
    net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, bias_downsample=False,
                   num_classes=1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r50.pth")
    ex = fseg.build_extractor("resnet50", str(tmp_path / "r50.pth"))
    assert ex.signature()["weights_sha256"] == fseg.state_dict_fingerprint(
        {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
    f = ex(np.zeros((70, 100, 3), np.uint8))
    assert f.shape == (1, 1024, 5, 7) and (f >= 0).all()
    torch.save(fseg.build_extractor("res2net", "random", base_channels=8).module.state_dict(), tmp_path / "r2.pt")
    with pytest.raises(ValueError) as e:
        fseg.build_extractor("resnet50", str(tmp_path / "r2.pt"))
    assert str(tmp_path / "r2.pt") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        fseg.build_extractor("resnet50", str(tmp_path / "missing.pth"))


class _FakeViT(nn.Module):
    """timm-like ViT: patch_embed.patch_size, blocks, num_prefix_tokens, forward_features -> tokens."""

    def __init__(self, dim=12, p=16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, p, p)
        self.patch_embed.patch_size = (p, p)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim)])
        self.norm = nn.LayerNorm(dim)
        self.num_prefix_tokens, self.embed_dim = 1, dim

    def forward_features(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        return self.norm(t)


def test_vit_extractor_drops_prefix_and_relus(tmp_path):
    torch.manual_seed(0)
    model = _FakeViT()
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    ex = fseg.TimmViTFeatures("fake", str(tmp_path / "vit.pt"), model=model)
    f = ex(np.full((40, 70, 3), 128, np.uint8))  # padded to 48 x 80 -> 3 x 5 grid
    assert f.shape == (1, 12, 3, 5) and (f >= 0).all()
    x = fseg.pad_to_multiple(ex.normalise(fseg.to_batch(np.full((40, 70, 3), 128, np.uint8))), 16)
    with torch.no_grad():
        t = model.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([model.cls.expand(1, -1, -1), t], 1)
        t = model.blocks[1](model.blocks[0](t))  # last block output, before the final norm
    ref = torch.relu(t[:, 1:].reshape(1, 3, 5, 12).permute(0, 3, 1, 2))
    torch.testing.assert_close(f, ref)


def test_timm_vit_if_installed():
    pytest.importorskip("timm")
    ex = fseg.build_extractor("timm", "random", model_name="vit_tiny_patch16_224")
    f = ex(np.zeros((50, 64, 3), np.uint8))
    assert f.shape[-2:] == (4, 4) and (f >= 0).all()
