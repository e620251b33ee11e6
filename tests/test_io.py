# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.io: reading images and datalists, atomic and streamed writers."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from bundle.io import ImageError, list_images, load_datalist, read_rgb, usable_items, write_image


def test_read_variants(tmp_path):
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "j.jpg")
    tifffile.imwrite(tmp_path / "t16.tif", rgb.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(rgb, -1, 0))
    assert np.array_equal(read_rgb(tmp_path / "a.png"), rgb)
    assert np.array_equal(read_rgb(tmp_path / "rgba.png"), rgb)
    g = read_rgb(tmp_path / "grey.png")
    assert g.shape == (40, 50, 3) and np.array_equal(g[..., 1], rgb[..., 0])
    assert read_rgb(tmp_path / "j.jpg").shape == (40, 50, 3)
    assert np.array_equal(read_rgb(tmp_path / "t16.tif"), rgb)
    assert np.array_equal(read_rgb(tmp_path / "chw.tif"), rgb)


@pytest.mark.parametrize("content,msg", [(b"", "empty"), (b"not an image at all", "cannot read"),
                                         (None, "does not exist")])
def test_bad_files_one_line_error(tmp_path, content, msg):
    p = tmp_path / "bad.png"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        read_rgb(p)
    assert msg in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_truncated_png_and_too_small(tmp_path):
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="trunc.png"):
        read_rgb(tmp_path / "trunc.png")
    with pytest.raises(ImageError, match="smaller than"):
        read_rgb(tmp_path / "full.png", min_size=100)


def test_wrong_channels(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(ImageError, match="unsupported image shape"):
        read_rgb(tmp_path / "five.tif")


def test_folder_listing_and_usable(tmp_path):
    with pytest.raises(ImageError, match="no image files"):
        list_images(tmp_path)
    with pytest.raises(ImageError, match="does not exist"):
        list_images(tmp_path / "nope")
    write_image(tmp_path / "ok.png", np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"xx")
    (tmp_path / "notes.txt").write_text("ignored")
    items = load_datalist(tmp_path)
    assert [p["image"].rsplit("/", 1)[-1] for p in items] == ["broken.png", "ok.png"]
    good = usable_items(items, min_size=32)
    assert len(good) == 1 and good[0]["image"].endswith("ok.png")
    with pytest.raises(ImageError, match="no usable image"):
        usable_items(items[:1])


def test_atomic_write_leaves_no_partial(tmp_path):
    write_image(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    with pytest.raises(Exception):
        write_image(tmp_path / "y.png", np.zeros((8, 8, 7), np.float64))  # PIL refuses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_streamed_outputs_match_the_one_shot_writers_and_are_atomic(tmp_path):
    from bundle.io import streamed_outputs, write_csv, write_geojson

    rows = [{"image": "s", "x": 1.5, "y": 2.0, "class": "Nucleus", "score": 0.9},
            {"image": "s", "x": 10.0, "y": 3.25, "class": "Nucleus", "score": 0.7}]
    polys = [np.array([[0, 0], [4, 0], [4, 4]]), np.array([[9, 2], [12, 2], [12, 5], [9, 2]])]
    props = [{"measurements": {"score": r["score"]}} for r in rows]
    fields = ("image", "x", "y", "class", "score")
    write_csv(tmp_path / "a.csv", rows, fieldnames=fields)
    write_geojson(tmp_path / "a.geojson", polys, props)
    with streamed_outputs(tmp_path / "b.csv", fields, tmp_path / "b.geojson") as add:
        add(rows[:1], polys[:1], props[:1])  # two "tiles"
        add(rows[1:], polys[1:], props[1:])
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "b.geojson").read_bytes()
    with streamed_outputs(tmp_path / "e.csv", fields, tmp_path / "e.geojson") as add:
        pass  # no objects: still valid files
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []
    with pytest.raises(RuntimeError):
        with streamed_outputs(tmp_path / "c.csv", fields, tmp_path / "c.geojson") as add:
            add(rows, polys, props)
            raise RuntimeError("killed mid-slide")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.geojson", "b.csv", "b.geojson", "e.csv",
                                                          "e.geojson"]


def test_write_geojson_feature_collection(tmp_path):
    from bundle.io import write_geojson

    write_geojson(tmp_path / "a.geojson", [np.array([[0, 0], [4, 0], [4, 4], [0, 4]])],
                  [{"classification": {"name": "Nucleus"}}])
    gj = json.loads((tmp_path / "a.geojson").read_text())
    f = gj["features"][0]
    assert gj["type"] == "FeatureCollection" and f["geometry"]["type"] == "Polygon"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert f["properties"]["objectType"] == "detection" and f["properties"]["classification"]["name"] == "Nucleus"


def test_csv_cells_never_run_as_spreadsheet_formulas(tmp_path):
    """A file named like a formula (=HYPERLINK(...)) reaches every CSV writer prefixed by ', numbers stay numbers."""
    import csv

    import numpy as np

    from bundle.io import streamed_outputs, write_csv

    row = {"image": '=HYPERLINK("http://x","y")', "x": -3, "note": "@SUM(1)", "plain": "tile_1", "neg": "-1+2"}
    write_csv(tmp_path / "a.csv", [row])
    with streamed_outputs(tmp_path / "b.csv", list(row), tmp_path / "b.geojson") as add:
        add([row], [np.array([[0, 0], [0, 2], [2, 2], [2, 0]], float)])
    for name in ("a.csv", "b.csv"):
        with open(tmp_path / name, newline="") as f:
            got = next(csv.DictReader(f))
        assert got == {"image": "'" + row["image"], "x": "-3", "note": "'@SUM(1)", "plain": "tile_1", "neg": "'-1+2"}


def test_bad_datalist_items_are_skipped_with_one_line(tmp_path, caplog):
    """Issue 33, item 3: an item without an image path is skipped and named, not a KeyError while the config reads."""
    import json
    import logging

    from bundle.io import load_datalist, write_image

    write_image(tmp_path / "a.png", np.zeros((40, 40, 3), np.uint8))
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"testing": [{"img": "a.png"}, {"image": None}, "a.png", 7, {"image": "a.png"}]}))
    with caplog.at_level(logging.WARNING, logger="bundle.io"):
        items = load_datalist(dl, "testing")
    assert [it["image"] for it in items] == [str(tmp_path / "a.png")] * 2
    msgs = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(msgs) == 3 and all("\n" not in m and "dl.json" in m for m in msgs) and "item 0" in msgs[0]
    assert len({it["name"] for it in items}) == 2  # the same file listed twice still writes two sets of outputs
    dl.write_text(json.dumps({"testing": [{"img": "a.png"}]}))
    with pytest.raises(ImageError, match="none of the 1 'testing' items"):
        load_datalist(dl, "testing")


def test_two_inputs_never_share_an_output_name(tmp_path):
    """Issue 33, item 4: dup.png and dup.jpg, or one name in two folders, get distinct output names."""
    from bundle.io import unique_names
    from bundle.wsi import input_items

    assert unique_names(["x/a.png", "x/b.png"]) == ["a", "b"]  # unique stems stay as they were
    names = unique_names(["x/dup.png", "x/dup.jpg", "y/dup.png", "x/dup_png.png"])
    assert len(set(names)) == 4 and names[1] == "dup_jpg"
    from bundle.io import write_image

    for n in ("dup.png", "dup.jpg", "solo.png"):
        write_image(tmp_path / n, np.full((40, 40, 3), 200, np.uint8))
    got = sorted(it["name"] for it in input_items(str(tmp_path)))
    assert got == ["dup_jpg", "dup_png", "solo"]


def test_a_folder_given_as_an_image_says_so(tmp_path):
    (tmp_path / "sub").mkdir()
    from bundle.io import image_size

    with pytest.raises(ImageError, match="sub: is a folder, not an image"):
        read_rgb(tmp_path / "sub")
    with pytest.raises(ImageError, match="sub: is a folder, not an image"):  # the size check before reading
        image_size(tmp_path / "sub")


@pytest.mark.parametrize("decoder", ["pyvips", "pillow"])
def test_tiled_tiff_copy_equals_the_tile_reader(tmp_path, monkeypatch, decoder):
    """A big tile's tiled copy (strip by strip) holds the pixels read_rgb gives for the whole tile: RGB, RGBA,
    16-bit grey, palette and JPEG; with pyvips (decoded in strips) and without (Pillow)."""
    import sys

    import tifffile
    from PIL import Image

    from bundle.io import image_size, read_rgb, tiled_tiff_copy

    if decoder == "pyvips":
        pytest.importorskip("pyvips")
    else:
        monkeypatch.setitem(sys.modules, "pyvips", None)  # import fails as if not installed
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 270, 3), dtype=np.uint8)
    files = {"rgb.png": Image.fromarray(rgb), "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
             "grey16.png": Image.fromarray(rng.integers(0, 65536, (300, 270)).astype(np.uint16)),
             "palette.png": Image.fromarray(rgb).convert("P"), "photo.jpg": Image.fromarray(rgb)}
    for name, im in files.items():
        im.save(tmp_path / name)
        tiled_tiff_copy(tmp_path / name, tmp_path / f"{name}.tif", tile=64)
        assert image_size(tmp_path / name) == (300, 270)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{name}.tif"), read_rgb(tmp_path / name),
                                      err_msg=name)
    (tmp_path / "cut.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:2000])
    with pytest.raises(ImageError, match="cut.png: cannot read image"):
        tiled_tiff_copy(tmp_path / "cut.png", tmp_path / "cut.tif")
