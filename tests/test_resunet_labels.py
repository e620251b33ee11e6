# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""ResUNet-34, point / Voronoi labels, instance post-processing and the classical baseline (all small and fast)."""

import numpy as np
import pytest
import torch

from bundle.labels import points_from_probability, voronoi_label
from bundle.metrics import aji
from bundle.networks import ResUNet34
from bundle.postprocess import classical_nuclei, instances_by_watershed, instances_from_foreground


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny convolutions: thread start-up dominates and stalls badly on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return ResUNet34(base_channels=8, out_channels=2).eval()


@pytest.mark.parametrize("hw", [(1, 1), (17, 40), (64, 64), (95, 33)])
def test_resunet_output_shape_any_size(small_net, hw):
    with torch.no_grad():
        y = small_net(torch.randn(2, 3, *hw))
    assert y.shape == (2, 2, *hw) and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_resunet_scriptable_and_out_channels(small_net):
    scripted = torch.jit.script(small_net)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), small_net(x))
    assert ResUNet34(base_channels=8, out_channels=3).eval()(x).shape == (1, 3, 50, 70)


def test_cpu_channels_last_same_outputs_as_nchw(small_net, monkeypatch):
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


def test_resunet_encoder_weights(tmp_path, small_net):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ResUNet34(base_channels=8, encoder_weights=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        ResUNet34(base_channels=8, encoder_weights=str(bad))
    good = tmp_path / "enc.pt"  # torchvision-style keys + a classification head that must be ignored
    sd = dict(small_net.encoder.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 64), torch.zeros(10)
    torch.save({"state_dict": sd}, good)
    net = ResUNet34(base_channels=8, encoder_weights=str(good))
    torch.testing.assert_close(net.encoder.layer3[0].conv1.weight, small_net.encoder.layer3[0].conv1.weight)


def test_points_from_probability_finds_blob_centres():
    yy, xx = np.mgrid[:120, :120]
    centres = [(30, 30), (30, 90), (85, 55), (100, 10)]
    prob = sum(np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 5.0**2)) for r, c in centres)
    pts = points_from_probability(np.clip(prob, 0, 1) * 0.95, threshold=0.3)
    assert pts.dtype == np.int64 and pts.shape == (4, 2)
    for r, c in centres:
        assert np.abs(pts - [r, c]).sum(1).min() <= 1
    # two peaks 10 px apart (L1) merge into one, the higher kept
    two = np.exp(-((yy - 60) ** 2 + (xx - 55) ** 2) / 8.0) + 0.9 * np.exp(-((yy - 60) ** 2 + (xx - 65) ** 2) / 8.0)
    assert len(points_from_probability(two, blur="none", threshold=0.3, min_distance=3, merge_distance=0)) == 2
    merged = points_from_probability(two, blur="none", threshold=0.3, min_distance=3)
    assert merged.tolist() == [[60, 55]]
    assert points_from_probability(np.zeros((20, 20))).shape == (0, 2)


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


def test_watershed_splits_touching_disks():
    yy, xx = np.mgrid[:60, :80]
    a = (yy - 30) ** 2 + (xx - 28) ** 2 <= 12**2
    b = (yy - 30) ** 2 + (xx - 50) ** 2 <= 12**2
    mask = a | b
    assert instances_from_foreground(mask).max() == 1
    assert instances_from_foreground(mask.astype(np.float32) * 0.9, threshold=0.5).max() == 1
    ws = instances_by_watershed(mask, min_distance=5)
    assert ws.dtype == np.int32 and ws.max() == 2 and ws[30, 28] != ws[30, 50]
    assert np.array_equal(ws > 0, mask)
    ws_pts = instances_by_watershed(mask, markers_points=np.array([[30, 28], [30, 50]]))
    assert ws_pts.max() == 2 and ws_pts[30, 20] != ws_pts[30, 58]


def test_classical_nuclei_on_synthetic_tile():
    from bundle.synthetic import synthetic_he_tile

    rgb, inst = synthetic_he_tile(256, seed=1)
    pred = classical_nuclei(rgb)
    assert pred.dtype == np.int32 and pred.shape == inst.shape
    assert aji(pred, inst) > 0.5


def test_resunet_checkpoint_dims_reads_head(tmp_path):
    from bundle.handlers import resunet_checkpoint_dims

    path = tmp_path / "m.pt"
    torch.save(ResUNet34(out_channels=3, base_channels=8).state_dict(), path)
    assert resunet_checkpoint_dims(path) == (3, 8)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a ResUNet-34"):
        resunet_checkpoint_dims(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resunet_checkpoint_dims(tmp_path / "missing.pt")
