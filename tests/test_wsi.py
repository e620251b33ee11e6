# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.wsi: pyramid slides (levels, pixel size, tissue masks, thumbnails, the slide haematoxylin scale)."""

import numpy as np
import pytest
import torch

from bundle.wsi import SlideOptions, write_pyramid_tiff


def test_slide_tiles_levels_mpp_tissue(tmp_path):
    from bundle.synthetic import synthetic_he_tile
    from bundle.wsi import SlideTiles, is_wsi

    img = np.full((600, 700, 3), 240, np.uint8)
    img[50:306, 60:316] = synthetic_he_tile(256, seed=1)[0]
    write_pyramid_tiff(tmp_path / "s.tif", img)
    assert is_wsi(tmp_path / "s.tif")
    s = SlideTiles(tmp_path / "s.tif", mpp=0.5, tile_size=128, margin=16)
    assert s.level == 1 and s.size == (300, 350) and s.downsample == 2.0
    assert np.array_equal(s.read(10, 20, 30, 40), img[::2, ::2][10:40, 20:60])
    # sizes scaled for the level actually read agree; scaled for another pixel size: a warning naming --mpp
    assert s.check_mpp(0.5) and not s.check_mpp(0.25)
    assert SlideTiles(tmp_path / "s.tif", mpp=0.6).check_mpp(0.6) is False  # the nearest level (0.5) is read
    tiles = list(s)
    assert 0 < len(tiles) < 9  # blank areas are skipped
    r, c, t = tiles[0]
    assert t.shape[0] <= 128 + 32 and t.dtype == np.uint8
    with pytest.raises(ValueError, match="level 5 does not exist"):
        SlideTiles(tmp_path / "s.tif", level=5)
    with pytest.raises(FileNotFoundError, match="slide not found"):
        SlideTiles(tmp_path / "missing.tif")


def test_slide_hematoxylin_threshold(tmp_path, nuclei_runner):
    """A slide gives all its tiles one haematoxylin scale: a nuclei-free (stroma-only) tile is not rescaled by its
    own Otsu threshold, which would call its darkest stroma nuclei; a 4-channel network runs on the slide."""
    from bundle.networks import ResUNet34
    from bundle.stain import hematoxylin_channel, hematoxylin_threshold
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import normalize_rgb
    from bundle.wsi import SlideTiles

    rng = np.random.default_rng(0)
    stroma = np.clip(rng.normal((225, 170, 200), 12, (128, 128, 3)), 0, 255).astype(np.uint8)  # pink, no nuclei
    img = np.full((384, 512, 3), 240, np.uint8)  # glass around 2x2 tiles of nuclei and 2 tiles of stroma
    img[:256, :256] = synthetic_he_tile(256, seed=3)[0]
    img[:128, 256:384] = stroma
    img[128:256, 256:384] = stroma
    write_pyramid_tiff(tmp_path / "slide.tif", img)
    s = SlideTiles(tmp_path / "slide.tif", tile_size=128, margin=0)
    t = s.hematoxylin_threshold()
    assert t == pytest.approx(hematoxylin_threshold([img[:128, :128], img[:128, 128:256], img[128:256, :128],
                                                     img[128:256, 128:256], img[:128, 256:384], img[128:256, 256:384]]))
    own = normalize_rgb(torch.from_numpy(hematoxylin_channel(stroma))).numpy()
    slide = normalize_rgb(torch.from_numpy(hematoxylin_channel(stroma, threshold=t))).numpy()
    assert (own > 0).mean() > 0.2 and (slide > 0).mean() < 0.02  # own Otsu: a fifth of the stroma looks nuclear
    torch.manual_seed(0)
    summary = nuclei_runner(tmp_path / "slide.tif", tmp_path / "out", net=ResUNet34(in_channels=4, out_channels=2,
                                                                               base_channels=8), wsi=SlideOptions(tile=128)).run()
    assert summary["n_images"] == 1 and summary["tiles"] == 6


def test_slide_thumbnail_in_strips_equals_whole_read(tmp_path, monkeypatch):
    """A level too large to read at once is read in strips of a multiple of the subsampling step: same pixels."""
    import bundle.wsi as wsi

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (700, 530, 3), dtype=np.uint8)
    write_pyramid_tiff(tmp_path / "s.tif", img)
    slide = wsi.SlideTiles(tmp_path / "s.tif", tissue_level=0)
    whole = slide.thumbnail(max_side=200)
    monkeypatch.setattr(wsi, "THUMBNAIL_STRIP_BYTES", 3 * 530 * 10)  # ~10 rows per strip -> many strips
    strips = slide.thumbnail(max_side=200)
    slide.close()
    step = int(np.ceil(700 / 200))
    assert np.array_equal(whole, img[::step, ::step]) and np.array_equal(strips, whole)


def test_tissue_mask_density_finds_pale_ihc_tissue():
    """IHC tissue is pale and hardly saturated: the saturation mask (H&E) misses it, the density mask finds it."""
    from bundle.wsi import tissue_mask

    thumb = np.full((64, 80, 3), 244, np.uint8)  # glass
    thumb[10:50, 20:70] = (212, 206, 204)  # pale IHC tissue
    thumb[20:26, 30:36] = (120, 70, 40)  # a brown nucleus
    thumb[30:36, 50:56] = (130, 140, 190)  # a blue nucleus
    tissue = np.zeros((64, 80), bool)
    tissue[10:50, 20:70] = True
    assert tissue_mask(thumb)[tissue].mean() < 0.5
    m = tissue_mask(thumb, method="density")
    assert m[tissue].mean() > 0.95 and not m[~tissue].any()
    thumb[:, :8] = 0  # black padding / a label edge is not tissue
    assert not tissue_mask(thumb, method="density")[:, :8].any()
    assert not tissue_mask(np.full((32, 32, 3), 240, np.uint8), method="density").any()
    with pytest.raises(ValueError, match="unknown tissue method"):
        tissue_mask(thumb, method="otsu")


def test_slide_mpp_sets_the_inference_sizes(root, tmp_path):
    """A slide states its pixel size: the configs scale their sizes to the level read, without --mpp."""
    from monai.bundle import ConfigParser

    from bundle.wsi import slide_mpp, write_pyramid_tiff

    img = np.full((256, 256, 3), 200, np.uint8)
    write_pyramid_tiff(tmp_path / "s20x.tif", img, mpp=0.5, levels=2, tile=64)
    assert slide_mpp(tmp_path / "s20x.tif") == pytest.approx(0.5)
    assert slide_mpp(tmp_path / "s20x.tif", mpp=1.0) == pytest.approx(1.0)  # the nearest level is the one read
    assert slide_mpp(tmp_path) == pytest.approx(0.5)  # a folder of slides that agree
    assert slide_mpp(tmp_path / "missing.tif") is None and slide_mpp(None) is None
    import json

    from PIL import Image

    (tmp_path / "list.json").write_text(json.dumps({"testing": [{"image": "s20x.tif"}]}))
    assert slide_mpp(tmp_path / "list.json") == pytest.approx(0.5)  # a datalist of slides
    (tmp_path / "gone.json").write_text(json.dumps({"training": ["s20x.tif", "missing.tif"]}))
    assert slide_mpp(tmp_path / "gone.json") == pytest.approx(0.5)  # no "testing" key; a missing entry is no tile
    tiles = tmp_path / "mixed"
    tiles.mkdir()
    write_pyramid_tiff(tiles / "s20x.tif", img, mpp=0.5, levels=2, tile=64)
    Image.fromarray(img).save(tiles / "tile.png")
    assert slide_mpp(tiles) is None  # a tile of unknown pixel size beside the slide: not given the slide's
    (tmp_path / "mixed.json").write_text(json.dumps({"training": ["s20x.tif", "mixed/tile.png"]}))
    assert slide_mpp(tmp_path / "mixed.json") is None
    write_pyramid_tiff(tmp_path / "s40x.tif", img, mpp=0.25, levels=2, tile=64)
    assert slide_mpp(tmp_path) is None  # mixed magnifications: left to --mpp and the per-slide check
    for cfg in ("inference.json", "ki67_infer.json"):
        p = ConfigParser()
        p.read_config(str(root / "configs" / cfg))
        p.update({"dataset_dir": str(tmp_path / "s20x.tif")})
        assert p.get_parsed_content("mpp") == pytest.approx(0.5) and p.get_parsed_content("size_scale") == 0.5
        p.update({"mpp": 0.25})  # an explicit --mpp wins
        assert p.get_parsed_content("size_scale") == 1.0
