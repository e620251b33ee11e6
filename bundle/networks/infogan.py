# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""WGAN-GP + InfoGAN networks for 32x32 cell crops (Hu, Tang et al., IEEE JBHI 2019; METHODS.md section 3).

* :class:`Generator` -- ``concat([one_hot(c), z])`` (K + noise_dim) -> Linear -> (C, 4, 4) -> three up-sampling
  residual blocks (4 -> 8 -> 16 -> 32) -> BN -> ReLU -> conv3x3 -> tanh: a (B, 3, 32, 32) image in [-1, 1].
* :class:`InfoGANCritic` -- shared trunk of residual blocks without BatchNorm (32 -> 16 -> 8, two identity blocks at
  8x8) -> ReLU -> global average pool -> C-d feature, and two heads: the WGAN critic ``d_head`` (-> 1) and the
  InfoGAN ``q_head`` (-> K, log-softmax).

``InfoGANCritic.forward`` returns only the Q log-probabilities (B, K): the network that ships (``network_def``,
exported with ``ckpt_export``, checked with ``verify_net_in_out``) has the single tensor output ``pred``, and
``argmax`` of it is the unsupervised cell category. ``q_norm=True`` (the CPU profile; ours) feeds the Q head the
L2-normalised trunk feature (times sqrt(C)): early in WGAN-GP training the critic drives the feature norm into the
hundreds, and Q then learnt nothing in our short CPU runs (q accuracy at chance after 3 epochs on BCData cells,
0.37 with it). Training uses :meth:`InfoGANCritic.critic_and_q`
(both heads, one trunk pass) and :meth:`InfoGANCritic.critic`; :meth:`InfoGANCritic.features` gives the trunk feature.

Initialisation follows the reference code (uniform, std sqrt(4 / (fan_in + fan_out)) for 3x3 convolutions and
sqrt(2 / (fan_in + fan_out)) otherwise; zero biases; BN weights N(1, 0.02)).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Generator", "InfoGANCritic", "sample_latent"]


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                gain = 4.0 if m.kernel_size[0] == 3 else 2.0
            else:
                fan_in, fan_out, gain = m.in_features, m.out_features, 2.0
            std = math.sqrt(gain / (fan_in + fan_out))
            bound = math.sqrt(3.0) * std  # uniform with this std
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class _UpBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> nearest x2 -> conv3x3, plus shortcut nearest x2 -> conv1x1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        h = self.conv2(F.interpolate(F.relu(self.bn2(h)), scale_factor=2.0, mode="nearest"))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    """G(z, c): (B, n_categories + noise_dim) latent -> (B, out_channels, 32, 32) in [-1, 1].

    Args:
        noise_dim: size of z (paper 32).  n_categories: K of the categorical code (paper 5).
        channels: width of all blocks (paper 128).  out_channels: 3 (RGB).
    """

    def __init__(self, noise_dim: int = 32, n_categories: int = 5, channels: int = 128, out_channels: int = 3):
        super().__init__()
        if noise_dim < 1 or n_categories < 1 or channels < 1:
            raise ValueError(f"noise_dim, n_categories and channels must be >= 1, got {noise_dim}, {n_categories}, "
                             f"{channels}")
        self.noise_dim, self.n_categories, self.channels = int(noise_dim), int(n_categories), int(channels)
        self.latent_dim = self.noise_dim + self.n_categories
        self.fc = nn.Linear(self.latent_dim, channels * 4 * 4)
        self.blocks = nn.Sequential(_UpBlock(channels, channels), _UpBlock(channels, channels),
                                    _UpBlock(channels, channels))
        self.bn, self.out = nn.BatchNorm2d(channels), nn.Conv2d(channels, out_channels, 3, padding=1)
        _init_weights(self)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"Generator expects a (B, {self.latent_dim}) latent [one_hot(c), z], "
                             f"got {tuple(latent.shape)}")
        h = self.fc(latent).view(-1, self.channels, 4, 4)
        return torch.tanh(self.out(F.relu(self.bn(self.blocks(h)))))


class _DownBlock(nn.Module):
    """Critic residual block (no normalisation). ``first``: conv -> ReLU -> conv -> meanpool, shortcut meanpool ->
    conv1x1. ``down``: ReLU -> conv -> ReLU -> conv -> meanpool, shortcut conv1x1 -> meanpool. Otherwise identity
    shortcut at the same resolution."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if mode != "same" or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "first":
            h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
            return h + self.shortcut(F.avg_pool2d(x, 2))
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        if self.mode == "down":
            return F.avg_pool2d(h, 2) + F.avg_pool2d(self.shortcut(x), 2)
        return h + self.shortcut(x)


class InfoGANCritic(nn.Module):
    """Shared critic trunk with the WGAN critic head and the InfoGAN Q head.

    ``forward(x)`` -> (B, n_categories) log Q(c | x) (the bundle's ``pred``); input (B, in_channels, H, W) scaled to
    [-1, 1], H and W >= 4 (cells are 32x32; the global average pool accepts other sizes).
    """

    def __init__(self, n_categories: int = 5, channels: int = 128, in_channels: int = 3, q_norm: bool = False):
        super().__init__()
        if n_categories < 1 or channels < 1:
            raise ValueError(f"n_categories and channels must be >= 1, got {n_categories}, {channels}")
        self.n_categories, self.channels, self.q_norm = int(n_categories), int(channels), bool(q_norm)
        self.trunk = nn.Sequential(_DownBlock(in_channels, channels, "first"), _DownBlock(channels, channels, "down"),
                                   _DownBlock(channels, channels, "same"), _DownBlock(channels, channels, "same"))
        self.d_head = nn.Linear(channels, 1)
        self.q_head = nn.Linear(channels, n_categories)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) trunk feature: ReLU -> global average pool."""
        return F.relu(self.trunk(x)).mean(dim=(2, 3))

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) WGAN critic score."""
        return self.d_head(self.features(x)).squeeze(1)

    def _q(self, f: torch.Tensor) -> torch.Tensor:
        if self.q_norm:  # scale-free Q input: the WGAN critic drives the trunk feature norm into the hundreds
            f = f * (float(self.channels) ** 0.5) / ((f * f).sum(dim=1, keepdim=True).sqrt() + 1e-6)
        return F.log_softmax(self.q_head(f), dim=1)

    def critic_and_q(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One trunk pass -> ((B,) critic score, (B, K) log Q(c | x))."""
        f = self.features(x)
        return self.d_head(f).squeeze(1), self._q(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._q(self.features(x))

    def d_parameters(self):
        """Parameters updated by the critic (WGAN-GP) loss: trunk + critic head."""
        return list(self.trunk.parameters()) + list(self.d_head.parameters())

    def q_parameters(self):
        """Parameters of the critic side updated by the mutual-information loss: trunk + Q head."""
        return list(self.trunk.parameters()) + list(self.q_head.parameters())


def sample_latent(batch_size: int, noise_dim: int, n_categories: int, device=None,
                  categories: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """Draw ``(latent, c)``: c uniform in 0..K-1 (or the given ``categories``), z ~ N(0, 1) (noise_dim),
    latent = ``concat([one_hot(c), z])`` (the reference code's order). Returns ((B, K + noise_dim), (B,) long)."""
    if categories is None:
        c = torch.randint(0, n_categories, (batch_size,), generator=generator)
    else:
        c = torch.as_tensor(categories, dtype=torch.long).reshape(-1)
        batch_size = len(c)
    z = torch.randn(batch_size, noise_dim, generator=generator)
    latent = torch.cat([F.one_hot(c, n_categories).float(), z], dim=1)
    return latent.to(device) if device is not None else latent, c.to(device) if device is not None else c
