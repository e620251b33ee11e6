# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Fixtures shared by the F-SEG tests: synthetic two-tissue tiles and a small random-init extractor."""
import numpy as np
import pytest
import torch

from bundle import fseg

torch.set_num_threads(1)


def _tissue_tile(size=(96, 128), seed=0):
    """Two synthetic 'tissues': a purple, nucleus-dense blob (class 0) on pink stroma (class 1)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    h, w = size
    blob = gaussian_filter(rng.normal(size=(h, w)), 12) > 0
    pink = np.array([230, 160, 200], np.float32)
    purple = np.array([120, 70, 160], np.float32)
    rgb = np.where(blob[..., None], purple, pink) + rng.normal(0, 12, (h, w, 3))
    dots = gaussian_filter((rng.random((h, w)) > 0.97).astype(float), 1.0) * 400
    rgb[blob] -= dots[blob][:, None]
    return np.clip(rgb, 0, 255).astype(np.uint8), (~blob).astype(np.uint8)


@pytest.fixture
def tissue_tile():
    """``tissue_tile(size=(96, 128), seed=0)`` -> (rgb, class mask): a purple blob (0) on pink stroma (1)."""
    return _tissue_tile


@pytest.fixture(scope="session")
def extractor():
    return fseg.build_extractor("res2net", "random", base_channels=8, seed=0)


def _feats_and_centres(extractor, k, seed=0):
    from sklearn.cluster import KMeans

    rgb, _ = _tissue_tile((128, 160), seed)
    f = extractor(rgb)[0]
    X = f.reshape(f.shape[0], -1).T.contiguous()
    H = KMeans(k, n_init=2, random_state=0).fit(X.numpy()).cluster_centers_.astype(np.float32).clip(0)
    return rgb, f, X, H


@pytest.fixture
def feats_and_centres():
    """``feats_and_centres(extractor, k, seed=0)`` -> (rgb, features, feature rows, K-Means centres) of a tissue tile."""
    return _feats_and_centres
