# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.psm: the PSM inferer (any size, batching, sign rule, errors)."""

import numpy as np
import pytest
import torch

from bundle.nuclei.psm import PSMInferer
from bundle.synthetic import synthetic_he_tile


@pytest.mark.parametrize("hw", [(64, 64), (100, 77), (257, 190)])
def test_psm_shape_range_any_size(hw, small_res2net):
    x = torch.rand(2, 3, *hw) * 255
    psm = PSMInferer(stage=1, sign="none")(x, small_res2net())
    assert psm.shape == (2, 1, *hw)
    assert float(psm.min()) >= 0 and float(psm.max()) <= 1 + 1e-6
    assert float(psm.amax(dim=(2, 3)).min()) > 0.99  # min-max normalised per image


def test_psm_batched_equals_single(small_res2net):
    net = small_res2net()
    x = torch.rand(3, 3, 64, 96) * 255
    inf = PSMInferer(sign="none")
    full = inf(x, net)
    for i in range(3):
        assert torch.allclose(full[i : i + 1], inf(x[i : i + 1], net), atol=1e-5)


def test_psm_sign_rule(small_res2net):
    """Negating the scalar head flips the raw map to 1 - map; the haematoxylin rule undoes it."""
    rgb, _ = synthetic_he_tile(128, seed=3)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].float()
    net = small_res2net()
    neg = small_res2net()
    with torch.no_grad():
        neg.fc.weight.mul_(-1)
        neg.fc.bias.mul_(-1)
    a = PSMInferer(sign="none")(x, net)
    b = PSMInferer(sign="none")(x, neg)
    assert not torch.allclose(a, b, atol=1e-3)
    oa, ob = PSMInferer(sign="hematoxylin")(x, net), PSMInferer(sign="hematoxylin")(x, neg)
    h = torch.from_numpy(__import__("bundle.stain", fromlist=["x"]).hematoxylin_od(rgb)).ravel()
    assert np.corrcoef(oa.ravel().numpy(), h.numpy())[0, 1] >= 0
    assert np.corrcoef(ob.ravel().numpy(), h.numpy())[0, 1] >= 0


def test_psm_errors_and_weights_untouched(small_res2net):
    net = small_res2net()
    with pytest.raises(ValueError, match="too small"):
        PSMInferer()(torch.rand(1, 3, 16, 64) * 255, net)
    with pytest.raises(ValueError):
        PSMInferer(stage=5)
    PSMInferer()(torch.rand(1, 3, 64, 64) * 255, net)
    assert all(p.requires_grad and p.grad is None for p in net.parameters())
