# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Inference engines for the per-pixel networks: PyTorch (default), a frozen TorchScript graph, or an ONNX export run by
ONNX Runtime or OpenVINO (the optional extras ``[onnx]`` / ``[openvino]``).

:func:`inference_network` turns a loaded network into a module of the same contract for the chosen ``backend``:
(B, C, H, W) float32 -> (B, K, H, W) logits. Measured on MoNuSeg tiles: ``docs/results/cpu_inference.md``. The ONNX
file is the checkpoint's: ``<checkpoint stem>.onnx`` beside it (shipped for ``models/``), exported once with
:func:`export_onnx` when missing or made from other weights (its ``checkpoint_sha256`` metadata tells), into
``cache_dir`` when the checkpoint's folder is read-only. An ONNX file is read as data (a graph and its weights), never
run as Python.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from bundle.inferers import input_channels
from bundle.networks.resunet import pad_to_multiple

__all__ = ["BACKENDS", "MULTIPLE", "available", "inference_network", "export_onnx", "onnx_file", "OnnxNetwork",
           "file_sha256"]

BACKENDS = ("pytorch", "torchscript", "onnxruntime", "openvino")
MULTIPLE = 32  # the ResUNet-34's total stride: inputs padded to a multiple of it give size-independent exports
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
_NEEDS = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
log = logging.getLogger(__name__)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def available(backend: str) -> bool:
    """Whether the packages ``backend`` needs to run an ONNX file are installed (always for pytorch / torchscript)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in _NEEDS.get(backend, ()))


def export_onnx(network: torch.nn.Module, path, checkpoint_sha256: str = "") -> Path:
    """Write ``network`` (eval mode, CPU) as ONNX with dynamic batch, height and width (``torch.onnx.export``'s
    ``torch.export`` path; input ``image`` (B, C, H, W), output ``pred`` (B, K, H, W) logits; H, W multiples of
    :data:`MULTIPLE`). ``checkpoint_sha256`` is stored in the file's metadata to tell later runs which weights it holds.
    Written atomically; about 40 s on 2 CPU cores for the shipped networks."""
    import onnx

    from bundle.io import atomic_path

    path = Path(path)
    net = network.cpu().eval()
    x = torch.zeros(1, input_channels(net), 2 * MULTIPLE * 4, 2 * MULTIPLE * 4)
    dyn = torch.export.Dim.DYNAMIC
    with atomic_path(path) as tmp:
        prog = torch.onnx.export(net, (x,), input_names=["image"], output_names=["pred"], dynamo=True,
                                 dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},), verbose=False)
        model = prog.model_proto
        if checkpoint_sha256:
            entry = model.metadata_props.add()
            entry.key, entry.value = "checkpoint_sha256", checkpoint_sha256
        onnx.save_model(model, tmp)
    return path


def _recorded_sha256(path: Path) -> str | None:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # unreadable / truncated: treated as absent and exported again
        return None
    return next((p.value for p in model.metadata_props if p.key == "checkpoint_sha256"), None)


def onnx_file(network: torch.nn.Module, ckpt_path, cache_dir=None) -> Path:
    """The ONNX export of ``network`` with the weights of ``ckpt_path``: ``<stem>.onnx`` beside the checkpoint when it
    records the checkpoint's sha256, else exported (:func:`export_onnx`) there, or into ``cache_dir`` when that folder
    cannot be written."""
    ckpt = Path(ckpt_path)
    digest = file_sha256(ckpt)
    candidates = [ckpt.with_suffix(".onnx")]
    if cache_dir is not None:
        candidates.append(Path(cache_dir) / f"{ckpt.stem}-{digest[:12]}.onnx")
    for p in candidates:
        if p.is_file() and _recorded_sha256(p) == digest:
            return p
    for p in candidates:
        if os.access(p.parent if p.parent.exists() else p.parent.parent, os.W_OK):
            log.info("exporting %s to ONNX (%s; once, about a minute)", ckpt, p)
            return export_onnx(network, p, digest)
    raise PermissionError(f"{ckpt}: no ONNX export beside it and its folder is read-only; give a writable cache_dir")


class OnnxNetwork(torch.nn.Module):
    """An ONNX file run by ONNX Runtime (``engine="onnxruntime"``) or OpenVINO (``"openvino"``) on the CPU, as a module:
    (B, C, H, W) float32 -> (B, K, H, W) float32 logits on the input's device. H, W are padded to :data:`MULTIPLE`
    and cropped back exactly as :class:`bundle.networks.ResUNet34` pads inside its forward (the export, traced at a
    multiple of 32, leaves that padding out), so any size gives the PyTorch network's output. ``threads``: intra-op
    threads (None: torch's). ``in_channels``: C, for :func:`bundle.inferers.input_channels`."""

    def __init__(self, path, engine: str = "onnxruntime", threads: int | None = None, in_channels: int | None = None):
        super().__init__()
        self.path, self.engine = str(path), engine
        threads = int(threads or torch.get_num_threads())
        if engine == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
            self.in_channels = in_channels or int(sess.get_inputs()[0].shape[1])
            self._run = lambda a: sess.run(None, {"image": a})[0]
        elif engine == "openvino":
            import openvino as ov

            core = ov.Core()
            model = core.read_model(self.path)
            self.in_channels = in_channels or int(model.inputs[0].get_partial_shape()[1].get_length())
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                        "INFERENCE_PRECISION_HINT": "f32"})
            self._run = lambda a: compiled(a)[0]
        else:
            raise ValueError(f"OnnxNetwork: engine must be 'onnxruntime' or 'openvino', got {engine!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        y = self._run(pad_to_multiple(x, MULTIPLE).detach().float().cpu().contiguous().numpy())
        return torch.from_numpy(y[..., :h, :w].copy()).to(x.device)


class _Frozen(torch.nn.Module):
    """A frozen TorchScript graph with the caller's ``in_channels``."""

    def __init__(self, scripted, in_channels: int):
        super().__init__()
        self.graph, self.in_channels = scripted, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def inference_network(network: torch.nn.Module, backend: str = "pytorch", ckpt_path=None, cache_dir=None,
                      device="cpu") -> torch.nn.Module:
    """``network`` (weights loaded) for inference with ``backend`` (:data:`BACKENDS`): itself ("pytorch"), frozen
    TorchScript ("torchscript"), or its ONNX export (:func:`onnx_file`; needs ``ckpt_path``) in ONNX Runtime or
    OpenVINO (CPU only). One-line errors for an unknown backend, a missing extra or a GPU device."""
    backend = str(backend or "pytorch").lower()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    network.eval()
    if backend == "pytorch":
        return network
    channels = input_channels(network)
    if backend == "torchscript":
        with torch.no_grad():
            return _Frozen(torch.jit.freeze(torch.jit.script(network)), channels)
    if torch.device(device).type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU; use backend 'pytorch' (or 'torchscript') on {device}")
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise ValueError(f"backend {backend!r} exports the checkpoint to ONNX: give ckpt_path (got {ckpt_path!r})")
    if not available(backend):
        raise ImportError(f"backend {backend!r} needs the optional extra: pip install -e \".[{_EXTRA[backend]}]\" "
                          f"({' and '.join(_NEEDS[backend])})")
    path = onnx_file(network, ckpt_path, cache_dir)
    return OnnxNetwork(path, backend, in_channels=channels)
