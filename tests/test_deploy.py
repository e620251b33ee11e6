# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""bundle.deploy: the MONAI Deploy application (optional extra ``[deploy]``; skipped when the SDK is not installed)."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("monai.deploy.core")


@pytest.mark.usefixtures("one_thread")
def test_deploy_app_writes_what_inference_json_writes(root, tmp_path):
    """``python -m bundle.deploy -i tiles -o out`` (loader -> inference -> writer operators, the shipped network) and
    ``inference.json`` on the same tiles give byte-identical instance maps, points CSVs and GeoJSON."""
    from bundle.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "data", n_tiles=2, size=192, seed=4)
    tiles = tmp_path / "data" / "images"
    app = subprocess.run([sys.executable, "-m", "bundle.deploy", "-i", str(tiles), "-o", str(tmp_path / "app")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert app.returncode == 0, app.stderr[-2000:]
    ref = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                          "--dataset_dir", str(tiles), "--output_dir", str(tmp_path / "ref")],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    for sub, pattern in (("labels", "*.png"), ("points", "*.csv"), ("geojson", "*.geojson")):
        files = sorted((tmp_path / "ref" / sub).glob(pattern))
        assert len(files) == 2
        for f in files:
            assert f.read_bytes() == (tmp_path / "app" / sub / f.name).read_bytes(), f"{sub}/{f.name}"


def test_loader_takes_arrays_paths_and_folders(tmp_path):
    from bundle.deploy.operators import as_tiles
    from bundle.io import ImageError, write_image

    rgb = np.full((40, 50, 3), 200, np.uint8)
    write_image(tmp_path / "a.png", rgb)
    grey = np.full((40, 50), 90, np.uint8)
    tiles = as_tiles([("x", rgb), grey, tmp_path / "a.png"])
    assert [t["name"] for t in tiles] == ["x", "tile_0001", "a"]
    assert all(t["image"].shape == (40, 50, 3) and t["image"].dtype == np.uint8 for t in tiles)
    assert [t["name"] for t in as_tiles(tmp_path)] == ["a"] and len(as_tiles(rgb)) == 1
    with pytest.raises(ImageError, match="no such file"):
        as_tiles(tmp_path / "missing")
