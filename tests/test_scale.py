# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.scale: sizes tuned at 40x carried to other pixel sizes."""

import numpy as np
import pytest


def test_sizes_follow_mpp():
    """Sizes tuned at 40x (0.25 um/px) are carried to 20x tiles; 20x nuclei 10 px apart stay apart only then."""
    from bundle.points import point_settings, points_from_probability
    from bundle.scale import scaled, size_scale

    assert size_scale(None) == 1.0 and size_scale(0.25) == 1.0 and size_scale(0.5) == 0.5
    assert scaled(20, 0.5, area=True) == 5 and scaled(6, 0.5) == 3 and scaled(0, 0.5) == 0
    assert scaled(64, 0.5, area=True) == 16 and scaled(1.0, 0.5, integer=False, minimum=0.5) == 0.5
    assert point_settings(1.0) == {"sigma_or_blur": 13, "min_distance": 6, "merge_distance": 20.0}
    with pytest.raises(ValueError, match="mpp"):
        size_scale(0.0)
    # a row of 20x-sized nuclei (radius 4 px) 10 px apart
    yy, xx = np.mgrid[:40, :80]
    centres = [(20, 10 + 10 * i) for i in range(7)]
    prob = np.zeros((40, 80))
    for r, c in centres:
        prob = np.maximum(prob, np.clip(1.0 - np.hypot(yy - r, xx - c) / 5.0, 0, 1))
    n_ref = len(points_from_probability(prob, threshold=0.3, **point_settings(1.0)))
    n_20x = len(points_from_probability(prob, threshold=0.3, **point_settings(0.5)))
    assert n_20x == 7 and n_ref < 5


def test_nucleus_diameter_follows_the_magnification():
    """Issue 29: the label-free size estimate halves when the tile is shown at half the magnification."""
    import numpy as np
    from PIL import Image

    from bundle.scale import estimate_nucleus_diameter
    from bundle.synthetic import synthetic_he_tile

    rgb, _ = synthetic_he_tile(512, seed=1)
    half = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BOX))
    d1, d2 = estimate_nucleus_diameter(rgb), estimate_nucleus_diameter(half)
    assert d1 and d2 and 0.4 < d2 / d1 < 0.6
    assert estimate_nucleus_diameter(rgb, workers=1) == estimate_nucleus_diameter(rgb, workers=3) == d1
    assert estimate_nucleus_diameter(np.full((128, 128, 3), 240, np.uint8)) is None  # blank: no estimate


def test_working_scale_copy_brings_a_mixed_folder_to_one_scale(tmp_path, caplog):
    """Issue 29, training on a mixed folder (``label_free --mpp auto``): a half-magnification tile is enlarged back
    to about its full-magnification size, and its nuclei to the others' size; a blank tile (no estimate) takes the
    folder's median scale with a warning naming it; scales.csv lists every tile."""
    import csv

    from PIL import Image

    from bundle.io import read_rgb
    from bundle.scale import estimate_nucleus_diameter, working_scale_copy
    from bundle.synthetic import synthetic_he_tile

    rgb, _ = synthetic_he_tile(512, seed=1)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "a_full.png")
    Image.fromarray(rgb).resize((256, 256), Image.BOX).save(folder / "b_half.png")
    Image.fromarray(np.full((200, 200, 3), 240, np.uint8)).save(folder / "c_blank.png")
    rows = {r["image"].rsplit("/", 1)[-1]: r for r in working_scale_copy(folder, tmp_path / "ws")}
    s_full, s_half = float(rows["a_full.png"]["scale_factor"]), float(rows["b_half.png"]["scale_factor"])
    assert 0.4 < s_half / s_full < 0.6
    ws = tmp_path / "ws" / "images"
    full, half = read_rgb(ws / "a_full.png"), read_rgb(ws / "b_half.png")
    assert 0.8 < half.shape[0] / full.shape[0] < 1.25
    assert 0.8 < estimate_nucleus_diameter(half) / estimate_nucleus_diameter(full) < 1.25
    assert rows["c_blank.png"]["nucleus_diameter_px"] == ""
    assert float(rows["c_blank.png"]["scale_factor"]) == pytest.approx(float(np.median([s_full, s_half])), abs=1e-3)
    assert "c_blank.png: no nucleus size found" in caplog.text
    with open(tmp_path / "ws" / "scales.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_folder_diameter_threads_and_cache(tmp_path):
    """The threaded folder estimate equals one thread's; the cache answers a second stage without reading a tile,
    and an edited tile or a damaged cache file makes it estimate again."""
    import json
    import os

    from PIL import Image

    import bundle.scale as scale
    from bundle.synthetic import synthetic_he_tile

    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(3):
        rgb, _ = synthetic_he_tile(160 if i < 2 else 128, seed=i)
        Image.fromarray(rgb).save(folder / f"t{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    one = scale.folder_nucleus_diameter(str(folder), workers=1)
    assert one is not None and scale.folder_nucleus_diameter(str(folder), workers=3) == one

    cache = tmp_path / "eval" / "nucleus_diameter.json"
    calls = []
    real = scale.estimate_nucleus_diameter

    def counted(rgb, **kw):
        calls.append(rgb.shape)
        return real(rgb, **kw)

    scale.estimate_nucleus_diameter = counted
    try:
        assert scale.folder_nucleus_diameter(str(folder), cache=str(cache)) == one and len(calls) == 3
        assert scale.folder_nucleus_diameter(str(folder), cache=str(cache)) == one and len(calls) == 3
        # another stain is another answer
        scale.folder_nucleus_diameter(str(folder), cache=str(cache), stain="ihc")
        assert len(calls) == 6 and len(json.loads(cache.read_text())) == 2
        # an edited tile (new mtime) is estimated again
        rgb, _ = synthetic_he_tile(160, seed=7)
        Image.fromarray(rgb).save(folder / "t0.png")
        st = os.stat(folder / "t0.png")
        os.utime(folder / "t0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        scale.folder_nucleus_diameter(str(folder), cache=str(cache))
        assert len(calls) == 9
        cache.write_text("[1, 2")  # damaged: recomputed and rewritten, never an error
        scale.folder_nucleus_diameter(str(folder), cache=str(cache))
        assert len(calls) == 12 and isinstance(json.loads(cache.read_text()), dict)
        blocker = tmp_path / "a_file"
        blocker.write_text("")  # a cache under a file cannot be written: the answer stands
        assert scale.folder_nucleus_diameter(str(folder), cache=str(blocker / "c.json")) is not None
    finally:
        scale.estimate_nucleus_diameter = real
