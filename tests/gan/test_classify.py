# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.gan.classify: category proportions and image classification."""

import numpy as np
import pytest

from bundle.gan.classify import category_proportions, classify_images, cluster_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_proportions_sum_to_one_and_errors():
    labels = [0, 1, 1, 2, 0, 0, 3]
    imgs = ["b", "a", "b", "a", "a", "c", "b"]
    names, props, n = category_proportions(labels, imgs, 4)
    assert names == ["a", "b", "c"] and n.tolist() == [3, 3, 1]
    assert np.allclose(props.sum(1), 1.0)
    assert np.allclose(props[0], [1 / 3, 1 / 3, 1 / 3, 0]) and np.allclose(props[2], [1, 0, 0, 0])
    with pytest.raises(ValueError, match="0..3"):
        category_proportions([4], ["a"], 4)
    with pytest.raises(ValueError, match="lengths"):
        category_proportions([0, 1], ["a"], 4)


def test_classify_images_and_cluster_accuracy():
    assert cluster_accuracy([1, 1, 0, 0, 2], ["x", "x", "y", "y", "y"]) == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    a = rng.dirichlet([20, 2, 2], 6)
    b = rng.dirichlet([2, 2, 20], 6)
    res = classify_images(np.vstack([a, b]), ["A"] * 6 + ["B"] * 6, seed=0)
    assert res["n_clusters"] == 2 and res["kmeans_accuracy"] == 1.0 and res["svm_loo_accuracy"] == 1.0
    assert res["chance_majority"] == 0.5 and res["chance_uniform"] == 0.5
    assert len(classify_images(np.vstack([a, b]))["kmeans"]) == 12  # unsupervised only
