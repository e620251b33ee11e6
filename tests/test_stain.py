# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.stain: stain vectors and finding the haematoxylin column (as the GAN's nucleus finder uses them)."""

import numpy as np
import pytest

from bundle.gan.cells import find_nuclei
from bundle.stain import REF_DAB, REF_EOSIN, REF_HEMATOXYLIN, hematoxylin_index, stain_matrix
from bundle.synthetic import synthetic_he_tile

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stain_identification_and_nuclei_finder(SMALL):
    # the haematoxylin column is found whatever the column order
    v = np.stack([REF_EOSIN, REF_HEMATOXYLIN], 1)
    assert hematoxylin_index(v) == 1 and hematoxylin_index(v[:, ::-1]) == 0
    assert hematoxylin_index(np.stack([REF_DAB, REF_HEMATOXYLIN], 1)) == 1
    rgb, inst = synthetic_he_tile(192, seed=3)
    W, src = stain_matrix(rgb)
    assert W.shape == (3, 3) and float(W[:, 0] @ (REF_HEMATOXYLIN / np.linalg.norm(REF_HEMATOXYLIN))) > 0.85
    found = find_nuclei(rgb, stain_method="ruifrok", **SMALL)  # fixed vectors: Macenko on these synthetic colours
    assert found.shape == inst.shape and found.dtype == np.int32
    assert 0.6 * inst.max() <= found.max() <= 1.4 * inst.max()
    # most found objects lie on true nuclei
    on = [np.mean(inst[found == i] > 0) for i in range(1, found.max() + 1)]
    assert np.mean(np.asarray(on) > 0.5) > 0.9
    with pytest.raises(ValueError, match="RGB"):
        find_nuclei(rgb[..., 0])
