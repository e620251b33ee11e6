# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.fseg.solvers: NNLS and NMF against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import non_negative_factorization

from bundle import fseg


@pytest.mark.parametrize("method", ["cd", "bpp"])
def test_nnls_labels_equal_sklearn_random_problem(method):
    rng = np.random.default_rng(0)
    X = rng.random((400, 24)).astype(np.float32)
    H = rng.random((7, 24)).astype(np.float32)
    Ws, _, _ = non_negative_factorization(X, H=H.copy(), n_components=7, update_H=False, max_iter=10000,
                                          random_state=0)
    W = fseg.nnls(torch.from_numpy(X), torch.from_numpy(H), method=method).numpy()
    assert (W >= 0).all()
    np.testing.assert_array_equal(W.argmax(1), Ws.argmax(1))
    assert np.abs(W - Ws).max() < 1e-2


def test_nnls_labels_equal_sklearn_network_features(extractor, feats_and_centres):
    """Variant B on real (random-network) features and K-Means centres: same label map as scikit-learn."""
    rgb, f, X, H = feats_and_centres(extractor, 6)
    Ws, _, _ = non_negative_factorization(X.numpy(), H=H.copy(), n_components=6, update_H=False, max_iter=10000,
                                          random_state=0)
    h, w = f.shape[1:]
    ref = fseg.bilinear_argmax(torch.from_numpy(Ws).T.reshape(-1, h, w), rgb.shape[:2])
    for method in ("cd", "bpp"):
        W = fseg.nnls(X, torch.from_numpy(H), method=method)
        assert (W.argmax(1).numpy() == Ws.argmax(1)).all(), method
        lab = fseg.bilinear_argmax(W.T.reshape(-1, h, w), rgb.shape[:2])
        if method == "cd":  # the same iterates as scikit-learn: the same upsampled label map
            assert torch.equal(lab, ref)
        else:  # exact optimum vs scikit-learn's tol-1e-4 stop: same cell labels, upsampled maps differ only
            agree = float((lab == ref).float().mean())  # where two interpolated coefficients nearly tie
            print("bpp upsampled agreement", agree)
            assert agree > 0.995, agree
    out = fseg.variant_b(f, H, rgb.shape[:2], extractor, method="cd")
    assert torch.equal(out["labels"], ref)


def test_nnls_bpp_is_optimal():
    """KKT conditions of the exact solver: W >= 0, gradient >= 0, complementary slackness."""
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.random((300, 40)))
    H = torch.from_numpy(rng.random((12, 40)))
    W = fseg.nnls(X, H, method="bpp")
    grad = W @ (H @ H.T) - X @ H.T
    assert (W >= 0).all() and grad.min() > -1e-8
    assert (W * grad).abs().max() < 1e-8


def test_nmf_decreases_error_and_bilinear_argmax():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.random((200, 30)).astype(np.float32))
    W, H = fseg.nmf(X, 5, max_iter=200, seed=0)
    assert W.shape == (200, 5) and H.shape == (5, 30) and (W >= 0).all() and (H >= 0).all()
    from sklearn.decomposition import NMF

    sk = NMF(5, init="random", random_state=0, max_iter=200).fit(X.numpy())
    assert float(((X - W @ H) ** 2).sum()) ** 0.5 < 1.05 * sk.reconstruction_err_
    maps = torch.rand(4, 7, 9)
    ref = torch.nn.functional.interpolate(maps[None], size=(53, 70), mode="bilinear", align_corners=False)[0]
    assert torch.equal(fseg.bilinear_argmax(maps, (53, 70), max_elements=4 * 70 * 5), ref.argmax(0))
    assert torch.equal(fseg.bilinear_argmax(maps, (53, 70)), ref.argmax(0))
