# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Res2Net (Gao et al., TPAMI 2021), 26w x 4s bottle2neck blocks, with a scalar head: the PSM activation network.

Written from the paper's description (no torchvision/timm dependency). Stem conv7x7/2 + maxpool/2, so stage 1
(``layer1``) runs at 1/4 resolution, stage k at 1/2^(k+1). ``forward`` returns the scalar output ``pred`` (B, 1)
that the pretext tasks train and Grad-CAM differentiates; :meth:`Res2Net.embed` returns the pooled feature
(B, C) used by contrastive / SimSiam pretexts through :attr:`Res2Net.projector`.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from .memory import cpu_channels_last

_DEPTHS = {"cpu": (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def res2net_layers(depth) -> tuple:
    """Blocks per stage for a named depth: 50 -> (3,4,6,3), 101 -> (3,4,23,3), 26 -> (2,2,2,2), 'cpu' -> (1,1,1,1)."""
    if isinstance(depth, (list, tuple)):
        return tuple(int(d) for d in depth)
    key = depth if depth == "cpu" else int(depth)
    if key not in _DEPTHS:
        raise ValueError(f"unknown Res2Net depth {depth!r}; use one of {sorted(map(str, _DEPTHS))} or a list of 4 ints")
    return _DEPTHS[key]


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1x1 -> ``scale`` groups of 3x3 with hierarchical residual sums -> 1x1 (x4 channels)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, base_width: int = 26, scale: int = 4,
                 first: bool = False):
        super().__init__()
        width = int(planes * base_width / 64.0)
        self.width, self.scale, self.first = width, scale, first
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        n = max(1, scale - 1)
        self.convs = nn.ModuleList([nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(n)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(n)])
        self.pool = nn.AvgPool2d(3, stride, 1) if first else nn.Identity()
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity(),
                nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        outs: List[torch.Tensor] = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = spx[i] if (i == 0 or self.first) else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            outs.append(sp)
        if self.scale > 1:
            outs.append(self.pool(spx[self.scale - 1]))
        out = self.bn3(self.conv3(torch.cat(outs, 1)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Res2Net(nn.Module):
    """Res2Net with a scalar output.

    Args:
        depth: 50, 101 (paper), 26, 18, ``"cpu"`` (one block per stage) or a list of 4 block counts.
        base_width, scale: 26 and 4 give the 26w x 4s variant.
        base_channels: planes of stage 1 (64 in the paper; the CPU profile uses fewer).
        in_channels: 3 for RGB.
        proj_dim: output size of the projection head used by contrastive/SimSiam pretexts.

    Input: (B, in_channels, H, W) float, normalised with :func:`bundle.transforms.normalize_rgb`; any H, W >= 32.
    Output: (B, 1) float, the scalar activation.
    """

    def __init__(self, depth=101, base_width: int = 26, scale: int = 4, base_channels: int = 64,
                 in_channels: int = 3, proj_dim: int = 128):
        super().__init__()
        layers = res2net_layers(depth)
        c = base_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.inplanes = c
        self.layer1 = self._make_layer(c, layers[0], 1, base_width, scale)
        self.layer2 = self._make_layer(c * 2, layers[1], 2, base_width, scale)
        self.layer3 = self._make_layer(c * 4, layers[2], 2, base_width, scale)
        self.layer4 = self._make_layer(c * 8, layers[3], 2, base_width, scale)
        self.feature_dim = c * 8 * Bottle2neck.expansion
        self.fc = nn.Linear(self.feature_dim, 1)
        self.projector = nn.Sequential(
            nn.Linear(self.feature_dim, self.feature_dim), nn.BatchNorm1d(self.feature_dim), nn.ReLU(inplace=True),
            nn.Linear(self.feature_dim, proj_dim),
        )
        self.predictor = nn.Sequential(  # SimSiam predictor (unused by the other pretexts)
            nn.Linear(proj_dim, proj_dim // 2), nn.BatchNorm1d(proj_dim // 2), nn.ReLU(inplace=True),
            nn.Linear(proj_dim // 2, proj_dim),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, base_width: int, scale: int) -> nn.Sequential:
        mods = [Bottle2neck(self.inplanes, planes, stride, base_width, scale, first=True)]
        self.inplanes = planes * Bottle2neck.expansion
        mods += [Bottle2neck(self.inplanes, planes, 1, base_width, scale) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stages(self) -> Sequence[nn.Sequential]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled last-stage feature (B, feature_dim)."""
        x = self.stem(cpu_channels_last(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor, head: str = "scalar") -> torch.Tensor:
        """``head``: ``"scalar"`` (B, 1) activation; ``"projection"`` (B, proj_dim) projector output of the
        contrastive / SimSiam pretexts; ``"prediction"`` (B, 2 * proj_dim): the projection and the SimSiam predictor's
        output side by side. Every pretext goes through ``forward``, so a ``DistributedDataParallel`` wrapper sees
        (and synchronises) every head."""
        f = self.embed(x)
        if head == "scalar":
            return self.fc(f)
        z = self.projector(f)
        if head == "projection":
            return z
        if head == "prediction":
            return torch.cat([z, self.predictor(z)], 1)
        raise ValueError("unknown head " + head + " (scalar, projection or prediction)")
