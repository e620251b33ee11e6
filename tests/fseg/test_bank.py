# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.fseg.bank: the K-Means concept bank (round trip, backbone mismatch, bad files)."""

import numpy as np
import pytest
import torch

from bundle import fseg


def test_bank_round_trip_and_missing_k(extractor, tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.random((40, extractor.channels)).astype(np.float32)
    centres = fseg.fit_kmeans_bank(vecs, [2, 4], seed=0)
    bank = fseg.ConceptBank(centres, {**extractor.signature(), "n_images": 3})
    bank.save(tmp_path / "bank.pt")
    back = fseg.ConceptBank.load(tmp_path / "bank.pt")
    assert back.ks == [2, 4] and back.meta == bank.meta
    for k in (2, 4):
        np.testing.assert_array_equal(back.get(k), centres[k])
    back.check(extractor.signature())  # same backbone: no error
    with pytest.raises(ValueError, match="not 3") as e:
        back.get(3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="only 40 tile features for k=64"):
        fseg.fit_kmeans_bank(vecs, [64])


def test_bank_mismatch_is_one_line(extractor, tmp_path):
    bank = fseg.ConceptBank({2: np.ones((2, extractor.channels), np.float32)}, extractor.signature())
    bank.save(tmp_path / "bank.pt")
    loaded = fseg.ConceptBank.load(tmp_path / "bank.pt")
    other_weights = fseg.build_extractor("res2net", "random", base_channels=8, seed=1)
    with pytest.raises(fseg.BankMismatchError) as e:
        loaded.check(other_weights.signature())
    msg = str(e.value)
    assert "\n" not in msg and "weights_sha256" in msg and str(tmp_path / "bank.pt") in msg
    other_layer = fseg.build_extractor("res2net", "random", base_channels=8, seed=0, layer="layer2")
    with pytest.raises(fseg.BankMismatchError, match="layer='layer3' vs 'layer2'"):
        loaded.check(other_layer.signature())
    # through the runner: the configured extractor is checked before any image is read
    runner = fseg.FSegRunner(other_weights, tmp_path / "bank.pt", tmp_path, tmp_path / "out", k=2)
    with pytest.raises(fseg.BankMismatchError):
        runner.run()


def test_bank_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="concept bank not found"):
        fseg.ConceptBank.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError) as e:
        fseg.ConceptBank.load(junk)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
    torch.save({"a": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not an F-SEG concept bank"):
        fseg.ConceptBank.load(tmp_path / "sd.pt")
