# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.losses: the partial cross-entropy (ignore label, class weights, Dice term, bootstrapping)."""

import pytest
import torch

from bundle.losses import IGNORE, PartialCrossEntropy


def test_partial_cross_entropy_ignores_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    y = torch.randint(0, 2, (2, 8, 8))
    full = torch.nn.functional.cross_entropy(logits, y)
    lab = y[:, None].float()
    assert torch.allclose(PartialCrossEntropy()(logits, lab), full)
    ignored = lab.clone()
    ignored[:, :, :4] = IGNORE  # the loss must equal CE on the other half only
    half = torch.nn.functional.cross_entropy(logits[:, :, 4:], y[:, 4:])
    assert torch.allclose(PartialCrossEntropy()(logits, ignored), half)
    two = torch.cat([lab, ignored], 1)
    assert torch.allclose(PartialCrossEntropy((1.0, 1.5))(logits, two), full + 1.5 * half)
    assert float(PartialCrossEntropy()(logits, torch.full_like(lab, IGNORE))) == 0.0
    with pytest.raises(ValueError, match="channels"):
        PartialCrossEntropy((1.0, 1.5))(logits, lab)


def test_partial_cross_entropy_dice_term():
    """dice_weight adds 1 - soft Dice of the foreground on label channel 0's labelled pixels: about 0 for a confident
    correct prediction, about 1 for a confident wrong one, blind to ignored pixels."""
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    good = torch.cat([(1 - y) * 20 - 10, y * 20 - 10], 1)  # logits: background where y == 0, nucleus where 1
    ce_only = PartialCrossEntropy()(good, y)
    assert float(PartialCrossEntropy(dice_weight=1.0)(good, y) - ce_only) < 0.01
    bad = good.flip(1)
    assert float(PartialCrossEntropy(dice_weight=1.0)(bad, y) - PartialCrossEntropy()(bad, y)) > 0.95
    hidden = y.clone()
    hidden[..., :, 4:] = IGNORE  # a wrong prediction only where labels are ignored costs nothing
    half_bad = good.clone()
    half_bad[..., :, 4:] = bad[..., :, 4:]
    assert float(PartialCrossEntropy(dice_weight=1.0)(half_bad, hidden) - PartialCrossEntropy()(half_bad, hidden)) < 0.01


def test_partial_cross_entropy_bootstrap():
    """bootstrap < 1 mixes label channel 0's cross-entropy with the prediction's entropy (Reed et al.): a confident
    prediction that disagrees with a noisy label costs less than with plain cross-entropy, an unsure one does not gain;
    channel 1 and ignored pixels are untouched; 1 is plain cross-entropy."""
    y = torch.zeros(1, 2, 8, 8)
    y[:, 0, 2:6, 2:6] = 1
    y[:, 1] = IGNORE
    confident_wrong = torch.cat([(y[:, :1] * 20 - 10), (1 - y[:, :1]) * 20 - 10], 1)
    unsure = torch.zeros(1, 2, 8, 8)
    plain, boot = PartialCrossEntropy((1.0, 1.5)), PartialCrossEntropy((1.0, 1.5), bootstrap=0.8)
    assert float(PartialCrossEntropy((1.0, 1.5), bootstrap=1.0)(confident_wrong, y)) == float(plain(confident_wrong, y))
    assert float(boot(confident_wrong, y)) == pytest.approx(0.8 * float(plain(confident_wrong, y)), rel=1e-3)
    assert float(boot(unsure, y)) == pytest.approx(float(plain(unsure, y)), rel=1e-5)  # entropy log 2 = CE log 2
    only_ch1 = y.clone()
    only_ch1[:, 0], only_ch1[:, 1] = IGNORE, 1
    assert float(boot(confident_wrong, only_ch1)) == float(plain(confident_wrong, only_ch1))
    with pytest.raises(ValueError, match="bootstrap"):
        PartialCrossEntropy(bootstrap=0.0)
