# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.inferers: sliding-window probabilities, TTA, input channels and resizing to the network's pixel size."""

import numpy as np
import pytest
import torch

from bundle.inferers import input_channels, predict_probability


class _PixelNet(torch.nn.Module):
    """A 1x1 convolution: the sliding-window and whole-image paths must agree exactly for it."""

    def __init__(self, c=2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, c, 1)

    def forward(self, x):
        return self.conv(x)


def test_predict_probability_sliding_window_and_tta():
    rgb = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    net = _PixelNet()
    whole = predict_probability(net, rgb, roi_size=512, tta=False)
    tiled = predict_probability(net, rgb, roi_size=64, overlap=0.25, tta=False)
    assert whole.shape == (2, 150, 200)
    assert np.allclose(whole.sum(0), 1, atol=1e-5)
    assert np.allclose(whole, tiled, atol=1e-5)
    assert np.allclose(predict_probability(net, rgb, roi_size=64, tta=True), whole, atol=1e-5)
    with pytest.raises(ValueError, match="RGB"):
        predict_probability(net, rgb[..., 0])


def test_predict_probability_scale_resamples_input_and_output():
    """scale=2 shows the network the image at twice its size (a 20x tile to a 40x network) and returns the
    probabilities at the input's size; on a smooth image a per-pixel network gives nearly the same map."""
    yy, xx = np.mgrid[0:60, 0:80]
    rgb = np.stack([2 * yy + 40, 2 * xx + 20, yy + xx + 30], -1).astype(np.uint8)
    net, seen = _PixelNet(), []
    net.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    base = predict_probability(net, rgb, tta=False)
    up = predict_probability(net, rgb, tta=False, scale=2.0)
    down = predict_probability(net, rgb, tta=False, scale=0.5)
    assert seen == [(60, 80), (120, 160), (30, 40)]
    assert up.shape == down.shape == (2, 60, 80)
    assert np.allclose(up.sum(0), 1, atol=1e-5)
    assert np.abs(up - base)[:, 2:-2, 2:-2].max() < 0.02
    with pytest.raises(ValueError, match="scale"):
        predict_probability(net, rgb, scale=0)


def test_hematoxylin_channel_input(tmp_path):
    """The optional 4th input channel: per-image haematoxylin relative to its Otsu threshold, added on load, kept by
    the stain jitter, and computed by predict_probability for a 4-channel network (auto-detected)."""
    from bundle.checkpoints import resunet_input_channels
    from bundle.io import write_image
    from bundle.networks import ResUNet34
    from bundle.stain import hematoxylin_channel
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import LoadTiled, RandStainJitterd, normalize_rgb

    rgb, inst = synthetic_he_tile(96, seed=0)
    hc = normalize_rgb(torch.from_numpy(hematoxylin_channel(rgb))).numpy()  # = h / otsu - 1
    assert hc[inst > 0].mean() > 0 > hc[inst == 0].mean()
    assert np.all(hematoxylin_channel(np.full((32, 32, 3), 200, np.uint8)) == 63.75)  # flat image: r = 0
    write_image(tmp_path / "t.png", rgb)
    x = LoadTiled(keys="image", hematoxylin=True)({"image": str(tmp_path / "t.png")})["image"]
    assert x.shape == (4, 96, 96) and torch.equal(x[:3], torch.from_numpy(rgb.transpose(2, 0, 1)).float())
    jit = RandStainJitterd(keys="image", sigma=0.3, bias=0.05, prob=1.0)
    jit.set_random_state(0)
    y = jit({"image": x})["image"]
    assert y.shape == (4, 96, 96) and torch.equal(y[3], x[3]) and not torch.equal(y[:3], x[:3])
    torch.manual_seed(0)
    net4 = ResUNet34(in_channels=4, out_channels=2, base_channels=8)
    assert input_channels(net4) == 4 and input_channels(_PixelNet()) == 3
    prob = predict_probability(net4, rgb, roi_size=64, tta=False)
    assert prob.shape == (2, 96, 96) and np.allclose(prob.sum(0), 1, atol=1e-5)
    torch.save(net4.state_dict(), tmp_path / "m.pt")
    assert resunet_input_channels(tmp_path / "m.pt") == 4 and resunet_input_channels(tmp_path / "none.pt") == 3


def test_evaluator_inferer_runs_at_network_mpp(root, tmp_path):
    """The Deploy-style evaluator of inference.json resizes its input to the network's pixel size and its `pred`
    back: same size as the input, close to the runner's predict_probability(scale=2)."""
    from monai.bundle import ConfigParser
    from monai.inferers import SimpleInferer

    from bundle.handlers import CheckpointResume
    from bundle.inferers import ScaledInferer, predict_probability
    from bundle.transforms import normalize_rgb

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 5, padding=2), torch.nn.AvgPool2d(3, 1, 1)).eval()
    CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.25}).save(None)
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.5, "roi_size": 64})
    inferer = p.get_parsed_content("inferer")
    assert isinstance(inferer, ScaledInferer) and inferer.scale == 2.0
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    x = normalize_rgb(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None])
    with torch.no_grad():
        pred = torch.softmax(inferer(x, net), 1)[0].numpy()
    assert pred.shape == (2, 40, 50)
    ref = predict_probability(net, rgb, tta=False, scale=2.0)
    assert np.abs(pred - ref).mean() < 0.02
    assert ScaledInferer(SimpleInferer(), 1.0)(x, net).shape == (1, 2, 40, 50)
    with pytest.raises(ValueError, match="scale"):
        ScaledInferer(SimpleInferer(), 0)


def test_scaled_inferer_recomputes_the_hematoxylin_channel(root, tmp_path):
    """A 4-channel network behind the evaluator's ScaledInferer sees exactly what the runner shows it: the RGB
    resized as uint8 and the haematoxylin channel computed on the resized image (not the normalised channels
    resized in float)."""
    from monai.bundle import ConfigParser
    from monai.inferers import SimpleInferer

    from bundle.handlers import CheckpointResume
    from bundle.inferers import ScaledInferer, predict_probability
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import add_hematoxylin_channel, normalize_rgb

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.seen = torch.nn.Conv2d(4, 2, 1), []

        def forward(self, z):
            self.seen.append(z.clone())
            return self.conv(z)

    net = Recorder().eval()
    CheckpointResume(tmp_path / "m", {"network": net.conv}, settings={"mpp": 0.25}).save(None)
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.5, "roi_size": 192})  # one window
    inferer = p.get_parsed_content("inferer")
    assert inferer.hematoxylin and inferer.scale == 2.0
    rgb = synthetic_he_tile(96, seed=2)[0]
    x = normalize_rgb(add_hematoxylin_channel(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float())[None])
    with torch.no_grad():
        predict_probability(net, rgb, tta=False, scale=2.0, roi_size=512)
        assert inferer(x, net).shape == (1, 2, 96, 96)
        ScaledInferer(SimpleInferer(), 2.0)(x, net)  # the float resize of before
    runner, evaluator, plain = net.seen
    assert runner.shape == evaluator.shape == (1, 4, 192, 192)
    from monai.data import MetaTensor

    with torch.no_grad():  # a Deploy app keeps the image's meta data
        out = inferer(MetaTensor(x, meta={"filename_or_obj": "tile.png"}), net)
    assert out.meta["filename_or_obj"] == "tile.png"
    assert torch.equal(runner, evaluator)
    assert (runner[:, 3] - plain[:, 3]).abs().max() > 0.1
