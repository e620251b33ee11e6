# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Six synthetic 256x256 H&E tiles with instance labels and a datalist."""
    from bundle.synthetic import write_synthetic_folder

    d = tmp_path_factory.mktemp("synthetic")
    write_synthetic_folder(d, n_tiles=6, size=256, seed=0)
    return d
