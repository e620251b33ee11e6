# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Frozen feature extractors of F-SEG: the bundle's own self-supervised Res2Net, a ResNet-50 or a timm ViT, with a
signature (backbone, layer, stride, preprocessing, weights hash) that a concept bank is checked against."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from bundle.networks.memory import cpu_channels_last

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "state_dict_fingerprint", "to_batch", "pad_to_multiple",
    "FeatureExtractor", "Res2NetFeatures", "ResNet50Features", "TimmViTFeatures", "build_extractor",
    "window_gap_features"
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# feature extractors
# ----------------------------------------------------------------------------------------------
def state_dict_fingerprint(sd: Dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of the SHA-256 of a state dict's names, shapes and values (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        h.update(k.encode())
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def to_batch(rgb) -> torch.Tensor:
    """(H, W, 3) uint8 array, (3, H, W) or (B, 3, H, W) tensor in [0, 255] -> (B, 3, H, W) float32 in [0, 255]."""
    if isinstance(rgb, np.ndarray):
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
        rgb = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    x = rgb.float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB, got shape {tuple(x.shape)}")
    return x


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``m`` (as the F-SEG reference)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class FeatureExtractor:
    """Frozen backbone -> non-negative spatial features; the one interface every backbone kind implements.

    Call with a tile ((H, W, 3) uint8 array) or a batch ((B, 3, H, W) float in [0, 255]); returns
    (B, C, ceil(H'/stride), ceil(W'/stride)) float32 >= 0 on :attr:`device`, where H' = round(H * input_scale).
    The input is resized by ``input_scale`` (e.g. 0.5: 20x -> 10x), normalised, padded to a multiple of
    ``stride`` (replicate) and passed through the network up to :attr:`layer`.

    Attributes:
        backbone, layer, channels, stride, preprocessing (str), weights_sha256: the :meth:`signature` stored in
        a concept bank.
    """

    backbone = "base"
    preprocessing = "imagenet"
    #: inputs larger than this (px, after scaling and padding) are processed in tiles with ``tile_margin`` context
    max_tile = 2048
    tile_margin = 256

    def __init__(self, module: torch.nn.Module, layer: str, channels: int, stride: int, weights_sha256: str,
                 device="cpu", input_scale: float = 1.0):
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.layer, self.channels, self.stride = layer, int(channels), int(stride)
        self.weights_sha256 = weights_sha256
        self.input_scale = float(input_scale)
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be > 0, got {input_scale}")
        self.device = torch.device("cpu")
        self.to(device)

    def to(self, device) -> "FeatureExtractor":
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def signature(self) -> dict:
        """Identity of the features: backbone, layer, channels, stride, preprocessing, weights fingerprint."""
        return {"backbone": self.backbone, "layer": self.layer, "channels": self.channels, "stride": self.stride,
                "preprocessing": self.preprocessing, "weights_sha256": self.weights_sha256,
                "input_scale": self.input_scale}

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 255] -> network input (ImageNet mean/std on [0, 1] unless overridden)."""
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scaled_size(self, h: int, w: int) -> tuple:
        """Size (H', W') of an (h, w) image after ``input_scale``."""
        if self.input_scale == 1.0:
            return h, w
        return max(1, int(round(h * self.input_scale))), max(1, int(round(w * self.input_scale)))

    @torch.no_grad()
    def __call__(self, rgb) -> torch.Tensor:
        x = to_batch(rgb).to(self.device)
        hs, ws = self.scaled_size(*x.shape[-2:])
        if (hs, ws) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
        x = pad_to_multiple(self.normalise(x), self.stride)
        if max(x.shape[-2:]) <= self.max_tile:
            feats = self.forward_features(cpu_channels_last(x)).float()
        else:
            feats = self._tiled(x)
        return torch.nan_to_num(feats).clamp_min_(0.0)

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a large padded input in tiles of ``max_tile`` px, each computed with ``tile_margin`` px of
        context on every side and only its central cells kept (memory bounded by the tile size)."""
        s = self.stride
        T = max(s, self.max_tile // s * s)
        M = self.tile_margin // s * s
        b, _, H, W = x.shape
        out = None
        for y in range(0, H, T):
            for x0 in range(0, W, T):
                y0, y1 = max(0, y - M), min(H, y + T + M)
                xa, xb = max(0, x0 - M), min(W, x0 + T + M)
                f = self.forward_features(cpu_channels_last(x[:, :, y0:y1, xa:xb])).float()
                if out is None:
                    out = f.new_zeros((b, f.shape[1], H // s, W // s))
                th, tw = min(T, H - y) // s, min(T, W - x0) // s
                oy, ox = (y - y0) // s, (x0 - xa) // s
                out[:, :, y // s:y // s + th, x0 // s:x0 // s + tw] = f[:, :, oy:oy + th, ox:ox + tw]
        return out


def _load_into(module: torch.nn.Module, weights, what: str, map_location="cpu", ignore_prefixes=()) -> str:
    """Load a local state-dict file into ``module`` (strict, except keys starting with ``ignore_prefixes``) and
    return the fingerprint of the loaded weights. ``weights`` None/'random' keeps the (seeded) random init.

    Raises:
        FileNotFoundError / ValueError: one line naming the file.
    """
    if weights is None or str(weights).lower() in ("", "random", "none"):
        logger.warning(f"{what}: no weights file given, using a random-init network (a floor, not a model)")
        return "random-" + state_dict_fingerprint(module.state_dict())
    from bundle.checkpoints import read_state_dict

    sd = read_state_dict(weights, f"{what} weights", map_location,
                         hint=" (train the own network with configs/ssl_train.json, or pass --weights_path FILE or "
                              "random)")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    own = {k for k in module.state_dict() if not any(k.startswith(p) for p in ignore_prefixes)}
    missing, unexpected = sorted(own - set(sd)), sorted(set(sd) - own)
    if missing or unexpected:
        raise ValueError(f"{os.fspath(weights)}: {what} weights do not match the network "
                         f"({len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. "
                         f"{unexpected[:3]})")
    try:
        module.load_state_dict(sd, strict=False)
    except Exception as e:
        raise ValueError(f"{os.fspath(weights)}: {what} weights do not match the network "
                         f"({str(e).replace(chr(10), ' ')[:300]})") from None
    return state_dict_fingerprint({k: v for k, v in module.state_dict().items()
                                   if not any(k.startswith(p) for p in ignore_prefixes)})


class Res2NetFeatures(FeatureExtractor):
    """The project's own self-supervised :class:`bundle.networks.Res2Net` (trained by ``configs/ssl_train.json``).

    Args:
        weights: its ``models/ssl/model.pt`` (the projection/scalar heads are ignored), or ``"random"`` for a seeded
            random-init network (the floor of the benchmark).
        layer: ``layer1``..``layer4`` (stride 4, 8, 16, 32); default ``layer3`` (stride 16, post-ReLU, as F-SEG).
        depth, base_channels: must match the training config (CPU profile: ``"cpu"``, 32).
    Input normalisation is the one used in training: (rgb/255 - 0.5)/0.25.
    """

    backbone = "res2net"
    preprocessing = "(rgb/255-0.5)/0.25"

    def __init__(self, weights="random", layer: str = "layer3", depth="cpu", base_channels: int = 32,
                 device="cpu", seed: int = 0, input_scale: float = 1.0):
        from bundle.networks import Res2Net

        stages = ("layer1", "layer2", "layer3", "layer4")
        if layer not in stages:
            raise ValueError(f"res2net layer must be one of {stages}, got {layer!r}")
        torch.manual_seed(int(seed))
        net = Res2Net(depth, base_channels=int(base_channels))
        sha = _load_into(net, weights, "res2net", ignore_prefixes=("fc.", "projector.", "predictor."))
        self.n_stages = stages.index(layer) + 1
        channels = int(base_channels) * (2 ** (self.n_stages - 1)) * 4
        super().__init__(net, layer, channels, 2 ** (self.n_stages + 1), sha, device, input_scale)
        self.backbone = f"res2net-{depth}-{base_channels}"

    def normalise(self, x):
        from bundle.transforms import normalize_rgb

        return normalize_rgb(x)

    def forward_features(self, x):
        x = self.module.stem(x)
        for s in self.module.stages()[: self.n_stages]:
            x = s(x)
        return x


class ResNet50Features(FeatureExtractor):
    """ResNet-50 built with MONAI (``monai.networks.nets.resnet50``, 2-D, torchvision layout: 7x7/2 stem, no bias
    in the shortcut convs), features of ``layer3`` (1024 channels, stride 16, post-ReLU) as in F-SEG.

    Args:
        weights: a local state dict with torchvision or MONAI key names (e.g. torchvision's
            ``resnet50-*.pth``; ``fc.*`` is ignored), or ``"random"``. Input normalised with ImageNet mean/std.
        layer: ``layer1``..``layer4`` (256/512/1024/2048 channels, stride 4/8/16/32).
    """

    backbone = "resnet50"

    def __init__(self, weights="random", layer: str = "layer3", device="cpu", seed: int = 0,
                 input_scale: float = 1.0):
        from monai.networks.nets import resnet50

        stages = ("layer1", "layer2", "layer3", "layer4")
        if layer not in stages:
            raise ValueError(f"resnet50 layer must be one of {stages}, got {layer!r}")
        torch.manual_seed(int(seed))
        net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, bias_downsample=False,
                       num_classes=1000)
        sha = _load_into(net, weights, "resnet50", ignore_prefixes=("fc.",))
        self.n_stages = stages.index(layer) + 1
        super().__init__(net, layer, 256 * 2 ** (self.n_stages - 1), 2 ** (self.n_stages + 1), sha, device,
                         input_scale)

    def forward_features(self, x):
        m = self.module
        x = m.maxpool(m.act(m.bn1(m.conv1(x)))) if hasattr(m, "act") else m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for s in (m.layer1, m.layer2, m.layer3, m.layer4)[: self.n_stages]:
            x = s(x)
        return x


class TimmViTFeatures(FeatureExtractor):
    """A timm Vision Transformer (e.g. UNI: ``vit_large_patch16_224`` with ``init_values=1e-5``) with local weights.

    Features: output of the last block (before the final norm), prefix (CLS/register) tokens dropped, reshaped to
    (C, H/p, W/p), then ReLU, as in F-SEG. ImageNet normalisation. Needs the optional ``timm`` package.

    Args:
        model_name: timm architecture name.  weights: local state dict file (``"random"`` for a random init).
        model: an already built timm-like model (``patch_embed.patch_size``, ``blocks``, ``num_prefix_tokens``,
            ``forward_features``-style token output), used instead of ``model_name`` (tests, custom models).
        model_kwargs: extra ``timm.create_model`` arguments (``dynamic_img_size=True`` is always set).
    """

    backbone = "timm"

    def __init__(self, model_name: str = "vit_large_patch16_224", weights="random", model=None, device="cpu",
                 seed: int = 0, input_scale: float = 1.0, model_kwargs: Optional[dict] = None):
        torch.manual_seed(int(seed))
        if model is None:
            try:
                import timm
            except ImportError:
                raise ImportError("backbone 'timm' needs the optional package timm (pip install timm); "
                                  "nothing is downloaded at run time, weights come from --weights_path") from None
            kw = {"pretrained": False, "num_classes": 0, "dynamic_img_size": True, **(model_kwargs or {})}
            model = timm.create_model(model_name, **kw)
        sha = _load_into(model, weights, f"timm {model_name}", ignore_prefixes=("head.",))
        p = model.patch_embed.patch_size
        p = int(p[0] if isinstance(p, (tuple, list)) else p)
        channels = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        super().__init__(model, "blocks[-1]", channels, p, sha, device, input_scale)
        self.backbone = f"timm:{model_name}"
        self._out = None
        self.module.blocks[-1].register_forward_hook(self._hook)

    def _hook(self, module, inp, out):
        self._out = out

    def forward_features(self, x):
        b, _, h, w = x.shape
        self._out = None
        self.module.forward_features(x)
        tokens = self._out
        n_prefix = int(getattr(self.module, "num_prefix_tokens", 1))
        gh, gw = h // self.stride, w // self.stride
        if tokens.ndim == 4:  # some timm models keep NHWC grids
            grid = tokens
        else:
            tokens = tokens[:, n_prefix:]
            if tokens.shape[1] != gh * gw:
                raise ValueError(f"ViT returned {tokens.shape[1]} patch tokens for a {gh}x{gw} grid")
            grid = tokens.reshape(b, gh, gw, -1)
        return torch.relu(grid.permute(0, 3, 1, 2).contiguous())


def build_extractor(backbone: str = "res2net", weights="random", layer: Optional[str] = None, depth="cpu",
                    base_channels: int = 32, model_name: str = "vit_large_patch16_224", device="cpu", seed: int = 0,
                    input_scale: float = 1.0, model_kwargs: Optional[dict] = None) -> FeatureExtractor:
    """One entry point for the three backbone kinds: ``"res2net"`` (own SSL network), ``"resnet50"``, ``"timm"``."""
    kind = str(backbone).lower()
    if kind == "res2net":
        return Res2NetFeatures(weights, layer or "layer3", depth, base_channels, device, seed, input_scale)
    if kind == "resnet50":
        return ResNet50Features(weights, layer or "layer3", device, seed, input_scale)
    if kind in ("timm", "vit"):
        return TimmViTFeatures(model_name, weights, None, device, seed, input_scale, model_kwargs)
    raise ValueError(f"unknown backbone {backbone!r}; use 'res2net', 'resnet50' or 'timm'")


# ----------------------------------------------------------------------------------------------
# concept bank
# ----------------------------------------------------------------------------------------------
def window_gap_features(feats: torch.Tensor, window: int, n_windows: int, rng: np.random.Generator,
                        valid_hw: Optional[tuple] = None) -> torch.Tensor:
    """Global-average-pooled features of ``n_windows`` random ``window`` x ``window`` cell windows of a feature map.

    Args:
        feats: (C, h, w) >= 0.  window: side in feature cells (tile px / stride); a map smaller than the window
            gives its full-map average once.  valid_hw: (h, w) cells that cover the image (excludes padding).
    Returns:
        (n, C) float32, n <= n_windows (1 when the map is smaller than the window).
    """
    c, h, w = feats.shape
    if valid_hw is not None:
        h, w = min(h, valid_hw[0]), min(w, valid_hw[1])
        feats = feats[:, :h, :w]
    if h <= window or w <= window:
        return feats.mean(dim=(1, 2))[None]
    ys = rng.integers(0, h - window + 1, size=n_windows)
    xs = rng.integers(0, w - window + 1, size=n_windows)
    return torch.stack([feats[:, y:y + window, x:x + window].mean(dim=(1, 2)) for y, x in zip(ys, xs)])
