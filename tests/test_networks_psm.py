# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
import numpy as np
import pytest
import torch

from bundle.clustering import hematoxylin_otsu, jet, semantic_clustering
from bundle.metrics import pixel_scores
from bundle.networks import Res2Net, res2net_layers
from bundle.psm import PSMInferer
from bundle.ssl import PRETEXTS
from bundle.synthetic import synthetic_he_tile


def small_net(seed=0):
    torch.manual_seed(seed)
    return Res2Net("cpu", base_channels=16).eval()


def test_res2net_depths_and_shapes():
    assert res2net_layers(101) == (3, 4, 23, 3) and res2net_layers(50) == (3, 4, 6, 3)
    with pytest.raises(ValueError):
        res2net_layers(7)
    net = small_net()
    for hw in [(64, 64), (100, 77)]:
        assert net(torch.randn(2, 3, *hw)).shape == (2, 1)
    assert net.embed(torch.randn(2, 3, 64, 64)).shape == (2, net.feature_dim)


def test_res2net_torchscript_any_size():
    ts = torch.jit.script(small_net())
    assert ts(torch.randn(1, 3, 96, 128)).shape == (1, 1)


@pytest.mark.parametrize("hw", [(64, 64), (100, 77), (257, 190)])
def test_psm_shape_range_any_size(hw):
    x = torch.rand(2, 3, *hw) * 255
    psm = PSMInferer(stage=1, sign="none")(x, small_net())
    assert psm.shape == (2, 1, *hw)
    assert float(psm.min()) >= 0 and float(psm.max()) <= 1 + 1e-6
    assert float(psm.amax(dim=(2, 3)).min()) > 0.99  # min-max normalised per image


def test_psm_batched_equals_single():
    net = small_net()
    x = torch.rand(3, 3, 64, 96) * 255
    inf = PSMInferer(sign="none")
    full = inf(x, net)
    for i in range(3):
        assert torch.allclose(full[i : i + 1], inf(x[i : i + 1], net), atol=1e-5)


def test_psm_sign_rule():
    """Negating the scalar head flips the raw map to 1 - map; the haematoxylin rule undoes it."""
    rgb, _ = synthetic_he_tile(128, seed=3)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].float()
    net = small_net()
    neg = small_net()
    with torch.no_grad():
        neg.fc.weight.mul_(-1)
        neg.fc.bias.mul_(-1)
    a = PSMInferer(sign="none")(x, net)
    b = PSMInferer(sign="none")(x, neg)
    assert not torch.allclose(a, b, atol=1e-3)
    oa, ob = PSMInferer(sign="hematoxylin")(x, net), PSMInferer(sign="hematoxylin")(x, neg)
    h = torch.from_numpy(__import__("bundle.transforms", fromlist=["x"]).hematoxylin_od(rgb)).ravel()
    assert np.corrcoef(oa.ravel().numpy(), h.numpy())[0, 1] >= 0
    assert np.corrcoef(ob.ravel().numpy(), h.numpy())[0, 1] >= 0


def test_psm_errors_and_weights_untouched():
    net = small_net()
    with pytest.raises(ValueError, match="too small"):
        PSMInferer()(torch.rand(1, 3, 16, 64) * 255, net)
    with pytest.raises(ValueError):
        PSMInferer(stage=5)
    PSMInferer()(torch.rand(1, 3, 64, 64) * 255, net)
    assert all(p.requires_grad and p.grad is None for p in net.parameters())


def test_jet_endpoints():
    j = jet(np.array([[0.0, 0.5, 1.0]]))
    assert np.allclose(j[0, 0], [0, 0, 0.5]) and np.allclose(j[0, 1], [0.5, 1, 0.5]) and np.allclose(j[0, 2], [0.5, 0, 0])


def test_scm_finds_synthetic_nuclei():
    rgb, inst = synthetic_he_tile(256, seed=1)
    gt = inst > 0
    oracle_psm = gt.astype(np.float32)  # a perfect activation map
    colour = semantic_clustering(rgb, None, k=2, beta=float("inf"), min_size=20, hole_size=10)
    paper = semantic_clustering(rgb, oracle_psm, k=2, beta=1.0, fusion="jet", min_size=20, hole_size=10)
    stack = semantic_clustering(rgb, oracle_psm, k=2, fusion="stack", beta=0, h_weight=1, min_size=20, hole_size=10)
    otsu = hematoxylin_otsu(rgb, min_size=20, hole_size=10)
    for m in (colour, paper, stack, otsu):
        assert pixel_scores(m, gt)["f1"] > 0.8
    # with the PSM as the only feature, an inverted map selects the background: the rule follows the map
    wrong = semantic_clustering(rgb, 1 - oracle_psm, k=2, fusion="stack", beta=0, h_weight=0, min_size=20, hole_size=10)
    assert pixel_scores(wrong, gt)["f1"] < 0.3
    # K=3 with one-cluster foreground splits nuclei of two tones and keeps only the darker: precise, low recall
    k3 = pixel_scores(semantic_clustering(rgb, None, k=3, beta=float("inf"), min_size=20, hole_size=10), gt)
    assert k3["precision"] > 0.95 and k3["recall"] < k3["precision"]


def test_scm_deterministic_and_validates():
    rgb, _ = synthetic_he_tile(128, seed=2)
    psm = np.random.default_rng(0).random(rgb.shape[:2]).astype(np.float32)
    a = semantic_clustering(rgb, psm, seed=3)
    b = semantic_clustering(rgb, psm, seed=3)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="does not match"):
        semantic_clustering(rgb, psm[:10])
    with pytest.raises(ValueError):
        semantic_clustering(rgb, psm, fusion="nope")


@pytest.mark.parametrize("pretext", PRETEXTS)
def test_pretext_losses_keep_every_tensor_on_the_crops_device(pretext):
    """On the 'meta' device any tensor made on the CPU inside a loss raises, as it would on CUDA (found on an H100:
    the contrastive views' colour jitter was drawn as CPU tensors)."""
    from bundle.ssl import pretext_loss

    net = Res2Net("cpu", base_channels=8).to("meta")
    loss = pretext_loss(pretext, net, torch.empty(2, 3, 64, 64, device="meta"))
    assert loss.device.type == "meta" and loss.dim() == 0
