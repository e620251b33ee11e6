# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.networks: Res2Net, ResUNet-34 (with the CPU memory layout) and the InfoGAN networks."""

import pytest
import torch

from bundle.networks import ResUNet34, res2net_layers
from bundle.networks.infogan import Generator, InfoGANCritic, sample_latent


def test_res2net_depths_and_shapes(small_res2net):
    assert res2net_layers(101) == (3, 4, 23, 3) and res2net_layers(50) == (3, 4, 6, 3)
    with pytest.raises(ValueError):
        res2net_layers(7)
    net = small_res2net()
    for hw in [(64, 64), (100, 77)]:
        assert net(torch.randn(2, 3, *hw)).shape == (2, 1)
    assert net.embed(torch.randn(2, 3, 64, 64)).shape == (2, net.feature_dim)


def test_res2net_torchscript_any_size(small_res2net):
    ts = torch.jit.script(small_res2net())
    assert ts(torch.randn(1, 3, 96, 128)).shape == (1, 1)


@pytest.fixture(scope="module")
def small_resunet():
    torch.manual_seed(0)
    return ResUNet34(base_channels=8, out_channels=2).eval()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("hw", [(1, 1), (17, 40), (64, 64), (95, 33)])
def test_resunet_output_shape_any_size(small_resunet, hw):
    with torch.no_grad():
        y = small_resunet(torch.randn(2, 3, *hw))
    assert y.shape == (2, 2, *hw) and y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.usefixtures("one_thread")
def test_resunet_scriptable_and_out_channels(small_resunet):
    scripted = torch.jit.script(small_resunet)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), small_resunet(x))
    assert ResUNet34(base_channels=8, out_channels=3).eval()(x).shape == (1, 3, 50, 70)


@pytest.mark.usefixtures("one_thread")
def test_cpu_channels_last_same_outputs_as_nchw(small_resunet, monkeypatch):
    """The CPU speed-up (channels-last inputs) changes the memory layout only, not the network's function, in
    training mode (loss and gradients) and in eval; CUDA-less tensors of other ranks are left as they are."""
    import bundle.networks.resunet as resunet
    from bundle.networks.memory import cpu_channels_last

    x = torch.randn(2, 3, 64, 96)
    assert cpu_channels_last(x).is_contiguous(memory_format=torch.channels_last)
    v = torch.randn(3, 5, 7)
    assert cpu_channels_last(v) is v

    def run():
        torch.manual_seed(0)
        net = ResUNet34(base_channels=8, out_channels=2, dropout=0.0)  # dropout masks follow the memory order
        y = net(x)
        y.square().mean().backward()
        with torch.no_grad():
            e = net.eval()(x)
        return y.detach(), net.encoder.conv1.weight.grad.clone(), e

    fast = run()
    assert fast[0].is_contiguous()  # callers may .view() the output
    monkeypatch.setattr(resunet, "cpu_channels_last", lambda t: t)
    slow = run()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.usefixtures("one_thread")
def test_resunet_encoder_weights(tmp_path, small_resunet):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ResUNet34(base_channels=8, encoder_weights=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        ResUNet34(base_channels=8, encoder_weights=str(bad))
    good = tmp_path / "enc.pt"  # torchvision-style keys + a classification head that must be ignored
    sd = dict(small_resunet.encoder.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 64), torch.zeros(10)
    torch.save({"state_dict": sd}, good)
    net = ResUNet34(base_channels=8, encoder_weights=str(good))
    torch.testing.assert_close(net.encoder.layer3[0].conv1.weight, small_resunet.encoder.layer3[0].conv1.weight)


@pytest.mark.usefixtures("one_thread")
def test_network_shapes_and_outputs():
    torch.manual_seed(0)
    G, D = Generator(noise_dim=32, n_categories=5, channels=8), InfoGANCritic(n_categories=5, channels=8)
    latent, c = sample_latent(6, 32, 5)
    assert latent.shape == (6, 37) and c.shape == (6,)
    assert torch.equal(latent[:, :5].argmax(1), c) and torch.all(latent[:, :5].sum(1) == 1)
    x = G(latent)
    assert x.shape == (6, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    logq = D(x)
    assert logq.shape == (6, 5)
    assert torch.allclose(logq.exp().sum(1), torch.ones(6), atol=1e-5)
    d, lq = D.critic_and_q(x)
    assert d.shape == (6,) and torch.allclose(lq, logq) and torch.allclose(d, D.critic(x))
    assert D.features(x).shape == (6, 8)
    assert D(torch.randn(2, 3, 48, 40)).shape == (2, 5)  # global pooling: other sizes work too
    Dn = InfoGANCritic(n_categories=5, channels=8, q_norm=True)
    f = Dn.features(x)
    assert torch.allclose(Dn(x), Dn(x * 1.0), atol=1e-6) and torch.allclose(Dn._q(3 * f), Dn._q(f), atol=1e-5)
    with pytest.raises(ValueError, match="latent"):
        G(torch.randn(2, 36))
    # the parameter split used by the two critic-side optimisers
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(D.d_parameters()) & ids(D.q_parameters()) == ids(D.trunk.parameters())
    assert not ids(D.d_head.parameters()) & ids(D.q_parameters())
