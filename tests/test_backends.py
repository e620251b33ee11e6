# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.backends: every inference engine gives the PyTorch network's probabilities (1e-4) at two input
sizes, the ONNX export is made once per checkpoint and made again for other weights, and a run with another engine
writes the same instances; one-line errors for an unknown engine or a missing extra."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.backends import BACKENDS, inference_network, onnx_file
from bundle.networks import ResUNet34

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((1, 4, 64, 96), (2, 4, 100, 72))  # one multiple of 32, one not (padded and cropped back)


def has(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    net = ResUNet34(in_channels=4, out_channels=2, base_channels=4).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(net.state_dict(), folder / "model.pt")
    return net, folder / "model.pt"


def _worst(a, b):
    """Largest softmax-probability difference of two networks over :data:`SIZES`."""
    worst = 0.0
    torch.manual_seed(1)
    with torch.no_grad():
        for shape in SIZES:
            x = torch.randn(*shape)
            worst = max(worst, float((torch.softmax(a(x), 1) - torch.softmax(b(x), 1)).abs().max()))
    return worst


def test_torchscript_engine_equals_pytorch(tiny):
    net, ckpt = tiny
    ts = inference_network(net, "torchscript", ckpt)
    assert ts.in_channels == 4
    assert _worst(ts, net) < 1e-4


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_onnx_engines_equal_pytorch_on_the_shipped_network(engine):
    """The shipped models/model.onnx (it records models/model.pt's sha256: used as it is, not exported again) in
    each engine gives the eager network's probabilities (1e-4), sizes that are not multiples of 32 included."""
    if not has(engine, "onnx"):
        pytest.skip(f"{engine} extra not installed")
    from bundle.checkpoints import load_network_weights

    ckpt = ROOT / "models" / "model.pt"
    net = ResUNet34(in_channels=4, out_channels=2, base_channels=16)
    load_network_weights(net, ckpt)
    stamp = ckpt.with_suffix(".onnx").stat().st_mtime_ns
    engine_net = inference_network(net, engine, ckpt)
    assert engine_net.in_channels == 4 and ckpt.with_suffix(".onnx").stat().st_mtime_ns == stamp
    assert _worst(engine_net, net.eval()) < 1e-4


def test_onnx_export_once_and_again_for_other_weights(tmp_path):
    """A checkpoint without an ONNX file beside it is exported once (dynamic batch and size), reused while the
    weights are the same, exported again when the file holds other weights. (A small convolutional network: the
    export of a ResUNet-34 takes ~40 s; the shipped one is checked above and by scripts/ship_weights.py.)"""
    if not has("onnxruntime", "onnx", "onnxscript"):
        pytest.skip("onnx extra not installed")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3, padding=1)).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    first = inference_network(net, "onnxruntime", ckpt)
    stamp = ckpt.with_suffix(".onnx").stat().st_mtime_ns
    assert onnx_file(net, ckpt) == ckpt.with_suffix(".onnx") and ckpt.with_suffix(".onnx").stat().st_mtime_ns == stamp
    x = torch.randn(2, 3, 64, 96)
    p = lambda m: torch.softmax(m(x), 1)  # noqa: E731
    with torch.no_grad():
        assert float((p(first) - p(net)).abs().max()) < 1e-4
        for q in net.parameters():
            q.add_(0.2)
        torch.save(net.state_dict(), ckpt)  # new weights, same file name: the old export must not be used
        second = inference_network(net, "onnxruntime", ckpt)
        assert float((p(second) - p(net)).abs().max()) < 1e-4
        assert float((p(first) - p(net)).abs().max()) > 1e-3


def test_unknown_engine_and_missing_checkpoint_are_one_line_errors(tiny):
    net, _ = tiny
    with pytest.raises(ValueError, match="backend must be one of") as e:
        inference_network(net, "tensorrt")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="give ckpt_path"):
        inference_network(net, "onnxruntime", None)
    assert BACKENDS[0] == "pytorch" and inference_network(net, "pytorch") is net


@pytest.mark.skipif(not has("onnxruntime", "onnx"), reason="onnx extra not installed")
def test_shipped_network_gives_the_same_instances_with_onnx_runtime(tmp_path):
    """inference.json with --backend onnxruntime on the shipped network (its shipped models/model.onnx: no export)."""
    from monai.bundle import ConfigParser
    from PIL import Image

    from bundle.synthetic import synthetic_he_tile

    assert (ROOT / "models" / "model.onnx").is_file()
    data = tmp_path / "in"
    data.mkdir()
    rgb, _ = synthetic_he_tile(size=200, seed=3)
    Image.fromarray(rgb).save(data / "a.png")
    labels = {}
    for backend in ("pytorch", "onnxruntime"):
        parser = ConfigParser()
        parser.read_config(str(ROOT / "configs" / "inference.json"))
        parser.update({"bundle_root": str(ROOT), "dataset_dir": str(data), "output_dir": str(tmp_path / backend),
                       "mpp": 0.25, "tta": False, "backend": backend, "write_report": False,
                       "device": torch.device("cpu")})
        parser.get_parsed_content("runner").run()
        labels[backend] = np.asarray(Image.open(tmp_path / backend / "labels" / "a.png"))
    assert labels["pytorch"].max() > 0
    assert np.array_equal(labels["pytorch"], labels["onnxruntime"])
