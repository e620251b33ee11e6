# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""ResUNet-34: the detection / segmentation network of the PSM pipeline (METHODS.md 1.4-1.5).

Written from the description (no torchvision/timm dependency):

* Encoder = ResNet-34: stem conv7x7/2 + BN + ReLU (1/2 resolution), maxpool 3x3/2, BasicBlock stages [3, 4, 6, 3]
  with widths ``base_channels * [1, 2, 4, 8]`` at 1/4, 1/8, 1/16, 1/32 resolution.
  Module names follow torchvision's ResNet (``encoder.conv1``, ``encoder.bn1``, ``encoder.layer1.0.conv1``,
  ``...downsample.0/1``), so a locally stored torchvision ``resnet34`` state dict (its ``fc.*`` entries are
  ignored) loads into the encoder with ``encoder_weights=path``. Nothing is ever downloaded.
* Decoder: 4 up-blocks, each bilinear x2 upsampling, concatenation of the skip (layer3, layer2, layer1, stem),
  (conv3x3 - ReLU - BN) x 2 (the order METHODS.md states for the reference) and dropout; then a final bilinear x2
  upsampling to the input resolution and a 1x1 conv to ``out_channels`` logits.

Input (B, in_channels, H, W) float of ANY H, W >= 1: it is padded internally (reflect, or replicate when the image
is too small to reflect) to a multiple of 32 and the output is cropped back, so the output is (B, out_channels,
H, W) float logits (no softmax). Scriptable with ``torch.jit.script``.
"""

from __future__ import annotations

import os
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .memory import cpu_channels_last

__all__ = ["ResUNet34", "ResNet34Encoder", "BasicBlock"]

_STAGES = (3, 4, 6, 3)


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """(B, C, H, W) padded at the bottom / right to multiples of ``multiple`` (reflection, or edge copies when the image
    is too small to reflect): what :class:`ResUNet34` does to its input, and :class:`bundle.backends.OnnxNetwork` to
    the input of its export (which leaves this step out)."""
    h, w = int(x.shape[2]), int(x.shape[3])
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if ph > 0 or pw > 0:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, [0, pw, 0, ph], mode=mode)
    return x


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3(stride) - BN - ReLU - conv3x3 - BN, + identity (1x1 conv/stride + BN if needed).

    (B, inplanes, H, W) float -> (B, planes, ceil(H/stride), ceil(W/stride)) float (>= 0, after the final ReLU).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """ResNet-34 feature extractor returning the 5 skip features (no pooling / fc head).

    Input (B, in_channels, H, W) float with H, W multiples of 32. Output: list of 5 float tensors
    ``[stem (c, H/2), layer1 (c, H/4), layer2 (2c, H/8), layer3 (4c, H/16), layer4 (8c, H/32)]``, c = base_channels.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, layers=_STAGES):
        super().__init__()
        c = int(base_channels)
        self.conv1 = nn.Conv2d(in_channels, c, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.widths = [c, c, 2 * c, 4 * c, 8 * c]
        self.layer1 = self._make_layer(c, c, layers[0], 1)
        self.layer2 = self._make_layer(c, 2 * c, layers[1], 2)
        self.layer3 = self._make_layer(2 * c, 4 * c, layers[2], 2)
        self.layer4 = self._make_layer(4 * c, 8 * c, layers[3], 2)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        mods = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes, 1) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]


class UpBlock(nn.Module):
    """Bilinear upsampling to the skip's size, concat skip, (conv3x3 - ReLU - BN) x 2, dropout.

    (B, in_ch, h, w) and skip (B, skip_ch, H, W) float -> (B, out_ch, H, W) float.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, 1, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(out_ch),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=[int(skip.shape[2]), int(skip.shape[3])], mode="bilinear", align_corners=False)
        return self.dropout(self.conv(torch.cat([x, skip], 1)))


class ResUNet34(nn.Module):
    """U-Net with a ResNet-34 encoder; returns per-pixel class logits.

    Args:
        in_channels: input channels (3 for RGB normalised with :func:`bundle.transforms.normalize_rgb`).
        out_channels: classes (2 = background / nucleus for detection and segmentation; 3 for a Ki-67
            background / positive / negative head).
        dropout: dropout probability after each up-block (0.1 in the reference).
        base_channels: width of the stem and stage 1 (64 = ResNet-34; smaller values for CPU tests).
        encoder_weights: optional path of a local state dict for the encoder (raw, or under ``model`` /
            ``network`` / ``state_dict``; keys with or without an ``encoder.`` / ``module.`` prefix; a
            torchvision ``resnet34`` state dict works, its ``fc.*`` keys are ignored). Raises
            FileNotFoundError / ValueError with a one-line message naming the file when it is missing,
            unreadable or does not match the encoder.

    Input: (B, in_channels, H, W) float, any H, W >= 1.
    Output: (B, out_channels, H, W) float logits (apply softmax over dim 1 for probabilities).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, dropout: float = 0.1, base_channels: int = 64,
                 encoder_weights: Optional[str] = None):
        super().__init__()
        self.encoder = ResNet34Encoder(in_channels, base_channels)
        w = self.encoder.widths  # [c, c, 2c, 4c, 8c]
        self.up4 = UpBlock(w[4], w[3], w[3], dropout)
        self.up3 = UpBlock(w[3], w[2], w[2], dropout)
        self.up2 = UpBlock(w[2], w[1], w[1], dropout)
        self.up1 = UpBlock(w[1], w[0], w[0], dropout)
        self.head = nn.Conv2d(w[0], out_channels, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        x = pad_to_multiple(x)
        f = self.encoder(cpu_channels_last(x))
        y = self.up4(f[4], f[3])
        y = self.up3(y, f[2])
        y = self.up2(y, f[1])
        y = self.up1(y, f[0])
        y = F.interpolate(y, size=[int(x.shape[2]), int(x.shape[3])], mode="bilinear", align_corners=False)
        y = self.head(y)
        return y[:, :, :h, :w].contiguous()


def load_encoder_weights(encoder: nn.Module, path: str) -> nn.Module:
    """Load a local state dict into a :class:`ResNet34Encoder` (strict on the encoder's keys).

    Accepts a raw state dict or one nested under ``model`` / ``network`` / ``state_dict``; strips ``module.`` and
    ``encoder.`` prefixes; drops keys that belong to a classification head (``fc.*``) or to a ResUNet decoder
    (``up*.``/``head.``). Errors are one line naming the file.
    """
    from ..checkpoints import read_state_dict

    path = os.fspath(path)
    obj = read_state_dict(path, "encoder weights file")
    sd = {}
    for k, v in obj.items():
        for prefix in ("module.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith(("fc.", "up1.", "up2.", "up3.", "up4.", "head.")):
            continue
        sd[k] = v
    try:
        encoder.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).replace("\n", " ")[:300]
        raise ValueError(f"{path}: encoder weights do not match ResNet34Encoder ({first})") from None
    return encoder
