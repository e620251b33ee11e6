# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Losses: partial cross-entropy over labelled pixels (255 = ignored), with optional class weights, Dice term and
soft bootstrapping."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["IGNORE", "PartialCrossEntropy"]

IGNORE = 255


class PartialCrossEntropy(torch.nn.Module):
    """Sum of weighted cross-entropies, one per label channel, each ignoring ``ignore_index``.

    ``forward(logits, label)``: logits (B, C, H, W) float; label (B, L, H, W) or (B, H, W) integer-valued
    (float or int tensors accepted), L = ``len(weights)``. Returns a scalar. A channel with no labelled pixel in
    the batch contributes 0.

    Args:
        weights: one weight per label channel (reference segmentation loss: ``(1.0, 1.5)``).
        class_weights: optional per-class weights of the cross-entropy (e.g. ``(1, 1, 2)`` for boundary pixels).
        dice_weight: weight of a soft Dice loss of the foreground ``1 - P(background)`` against label channel 0's
            foreground (its labelled pixels only, summed over the batch); 0 = off (the default).
        bootstrap: soft bootstrapping of label channel 0 (Reed et al. 2015, for noisy labels such as pseudo masks):
            its cross-entropy becomes ``bootstrap * CE + (1 - bootstrap) * H(softmax)`` over its labelled pixels,
            so the network may keep confident predictions that disagree with the label; 1 = off (the default).
    """

    def __init__(self, weights: Sequence[float] = (1.0,), class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE, dice_weight: float = 0.0, bootstrap: float = 1.0):
        super().__init__()
        self.weights = [float(w) for w in weights]
        self.dice_weight = float(dice_weight)
        self.bootstrap = float(bootstrap)
        if not 0.0 < self.bootstrap <= 1.0:
            raise ValueError(f"bootstrap must be in (0, 1], got {bootstrap}")
        self.ignore_index = int(ignore_index)
        cw = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.ndim == logits.ndim - 1:
            label = label[:, None]
        if label.shape[1] != len(self.weights):
            raise ValueError(f"label has {label.shape[1]} channels but {len(self.weights)} loss weights are set")
        label = label.long()
        cw = None if self.class_weights is None else self.class_weights.to(logits.device)
        total = logits.new_zeros(())
        for i, w in enumerate(self.weights):
            y = label[:, i]
            if w == 0 or not bool((y != self.ignore_index).any()):
                continue
            ce = F.cross_entropy(logits, y, weight=cw, ignore_index=self.ignore_index)
            if i == 0 and self.bootstrap < 1.0:
                known = (y != self.ignore_index).float()
                logp = torch.log_softmax(logits.float(), 1)
                entropy = -(logp.exp() * logp).sum(1)
                ce = self.bootstrap * ce + (1.0 - self.bootstrap) * (entropy * known).sum() / known.sum()
            total = total + w * ce
        if self.dice_weight > 0:
            y = label[:, 0]
            known = (y != self.ignore_index).float()
            if bool(known.any()):
                fg = 1.0 - torch.softmax(logits.float(), 1)[:, 0]
                target = (y > 0).float() * known
                inter = (fg * target).sum()
                total = total + self.dice_weight * (1.0 - (2 * inter + 1.0) / ((fg * known).sum() + target.sum() + 1.0))
        return total
