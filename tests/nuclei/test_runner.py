# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.runner: the NucleiRunner on tiles and slides, and the inference run end to end."""

import json

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from bundle.wsi import SlideOptions, write_pyramid_tiff


def test_nuclei_runner_outputs_and_bad_file(synthetic_dir, tmp_path, nuclei_runner):
    from bundle.annotations import read_instance_label

    data = tmp_path / "tiles"
    data.mkdir()
    for f in sorted((synthetic_dir / "images").glob("tile_0[01].png")):
        (data / f.name).write_bytes(f.read_bytes())
    (data / "broken.png").write_bytes(b"not a png")
    from PIL import Image  # the same stem as a JPEG (issue 33, item 4): its own outputs, not tile_00's overwritten

    Image.open(data / "tile_00.png").convert("RGB").save(data / "tile_00.jpg", quality=95)
    out = tmp_path / "out"
    (out / "points").mkdir(parents=True)
    (out / "points" / ".tile_00.csv.abc.part.csv").write_text("killed")  # a killed earlier run's temporary
    summary = nuclei_runner(data, out, mode="watershed", write_masks=True).run()
    assert summary["n_images"] == 3 and summary["n_skipped"] == 1 and "broken.png" in summary["skipped"][0]
    assert sorted(p.stem for p in (out / "points").glob("*.csv")) == ["tile_00_jpg", "tile_00_png", "tile_01"]
    (data / "tile_00.jpg").unlink()
    summary = nuclei_runner(data, out, mode="watershed", write_masks=True).run()
    assert summary["n_images"] == 2
    lab = read_instance_label(out / "labels" / "tile_00.png")
    assert lab.dtype == np.uint16 and lab.shape == (256, 256)
    header = (out / "points" / "tile_00.csv").read_text().splitlines()[0]
    assert header == "image,x,y,class,score"
    gj = json.loads((out / "geojson" / "tile_00.geojson").read_text())
    n_rows = len((out / "points" / "tile_00.csv").read_text().splitlines()) - 1
    assert len(gj["features"]) == n_rows == int(lab.max())
    assert (out / "overlays" / "tile_00.png").is_file() and (out / "summary.csv").is_file()
    from bundle.io import read_rgb

    mask = read_rgb(out / "masks" / "tile_00.png")[..., 0]  # pseudo-mask format for a self-training round
    assert set(np.unique(mask)) <= {0, 255} and ((mask > 0) == (lab > 0)).all()
    assert not list(out.rglob("*.part*"))  # nothing half-written


def test_blank_tiles_give_no_nuclei(tmp_path, nuclei_runner):
    """Issue 33, item 10: white, black and uniform grey tiles gave 4-10 'nuclei'; now none, with one line each."""
    from bundle.io import write_image

    for name, grey in (("white", 255), ("black", 0), ("grey", 200)):
        rgb = np.full((96, 96, 3), grey, np.uint8)
        rgb[::7, ::5] = np.clip(grey + 3, 0, 255)  # sensor noise is not tissue
        write_image(tmp_path / "in" / f"{name}.png", rgb)
    s = nuclei_runner(tmp_path / "in", tmp_path / "out").run()
    assert s["n_images"] == 3 and s["n_nuclei"] == 0
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert all(r.endswith(",blank") for r in rows[1:])


def test_auto_scale_sees_a_half_size_copy_as_20x(tmp_path, nuclei_runner):
    """Issue 29: with no mpp, each tile's nucleus size sets its scale against the size the network learnt on."""
    import csv

    from PIL import Image

    from bundle.io import write_image
    from bundle.scale import estimate_nucleus_diameter
    from bundle.synthetic import synthetic_he_tile

    rgb, _ = synthetic_he_tile(384, seed=2)
    write_image(tmp_path / "in" / "full.png", rgb)
    write_image(tmp_path / "in" / "half.png", np.asarray(Image.fromarray(rgb).resize((192, 192), Image.BOX)))
    d = estimate_nucleus_diameter(rgb)
    nuclei_runner(tmp_path / "in", tmp_path / "out", auto_scale=True, trained_diameter=d).run()
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert float(rows["full"]["scale_factor"]) == 1.0  # the network's own nucleus size: left as it is
    assert 0.4 < float(rows["half"]["scale_factor"]) < 0.6 and float(rows["half"]["nucleus_diameter_px"]) < 0.6 * d
    with open(tmp_path / "out" / "measurements" / "half.csv") as f:  # micrometres follow the estimated pixel size
        r = next(csv.DictReader(f))
    assert float(r["area_um2"]) == pytest.approx(float(r["area"]) * (0.25 / float(rows["half"]["scale_factor"])) ** 2,
                                                 rel=0.01)
    pq = pytest.importorskip("pyarrow.parquet")  # the same table as Parquet when pyarrow is installed
    t = pq.read_table(tmp_path / "out" / "measurements" / "half.parquet").to_pylist()
    assert t[0]["id"] == int(r["id"]) and t[0]["area_um2"] == pytest.approx(float(r["area_um2"]))
    assert t[0]["class"] == r["class"] and len(t) == float(rows["half"]["n_nuclei"])


def test_nuclei_runner_slide_and_blank_slide(tmp_path, nuclei_runner):
    from bundle.synthetic import synthetic_he_tile

    img = np.full((400, 500, 3), 240, np.uint8)
    img[40:296, 50:306] = synthetic_he_tile(256, seed=2)[0]
    write_pyramid_tiff(tmp_path / "slide.tif", img)
    write_pyramid_tiff(tmp_path / "blank.tif", np.full((300, 300, 3), 245, np.uint8))
    out = tmp_path / "out"
    (out / "points").mkdir(parents=True)  # a temporary left by a killed earlier run of this slide
    (out / "points" / ".slide.csv.abc123.part.csv").write_text("half-written")
    summary = nuclei_runner(tmp_path / "slide.tif", out, wsi=SlideOptions(tile=128)).run()
    assert summary["n_images"] == 1 and summary["tiles"] >= 1
    assert sorted(p.name for p in (out / "points").iterdir()) == ["slide.csv"]
    pts = (out / "points" / "slide.csv").read_text().splitlines()
    assert pts[0] == "image,x,y,class,score"
    xs = [float(r.split(",")[1]) for r in pts[1:]]
    assert all(0 <= x < 500 for x in xs)
    strict = nuclei_runner(tmp_path / "slide.tif", tmp_path / "out3", wsi=SlideOptions(tile=128, min_tissue=0.99)).run()
    assert strict["tiles"] < summary["tiles"]  # edge tiles with a part of tissue are skipped at 0.99, kept at 0.05
    with pytest.raises(ValueError, match="min_tissue"):
        SlideOptions(min_tissue=5)
    empty = nuclei_runner(tmp_path / "blank.tif", tmp_path / "out2", wsi=SlideOptions(tile=128)).run()
    assert empty["n_nuclei"] == 0 and empty["tiles"] == 0
    assert json.loads((tmp_path / "out2" / "geojson" / "blank.geojson").read_text())["features"] == []


def test_det_seg_infer_evaluate_end_to_end(root, synthetic_dir, pseudo_root, workflow, FAST):
    data = synthetic_dir / "datalist.json"
    det = workflow(root, "det_train.json", pseudo_root, data, **FAST)
    assert det.check_properties() in ([], None)
    det.run()
    det.finalize()
    d = pseudo_root / "models" / "det"
    assert (d / "model.pt").is_file() and (d / "last_checkpoint.pt").is_file() and (d / "best_model.pt").is_file()
    assert len(list((pseudo_root / "eval" / "det_labels").glob("*.npy"))) == 6
    assert list((pseudo_root / "eval" / "det").glob("events.out.tfevents.*"))  # TensorBoard scalars + images

    seg = workflow(root, "train.json", pseudo_root, data, **FAST)
    seg.run()
    seg.finalize()
    assert (pseudo_root / "models" / "model.pt").is_file()
    lab = np.load(sorted((pseudo_root / "eval" / "seg_labels").glob("*.npy"))[0])
    assert lab.shape[0] == 2 and set(np.unique(lab[0])) == {0, 1}  # pseudo foreground kept by default
    # the reference's choice (pseudo foreground ignored) rewrites the cached labels instead of reusing them
    workflow(root, "train.json", pseudo_root, data, **{**FAST, "keep_foreground": False}).run()
    lab = np.load(sorted((pseudo_root / "eval" / "seg_labels").glob("*.npy"))[0])
    assert set(np.unique(lab[0])) == {0, 255}
    assert (pseudo_root / "eval" / "seg_labels" / "points").is_dir()

    inf = workflow(root, "inference.json", pseudo_root, data, wtype="infer", base_channels=8, tta=False)
    assert inf.check_properties() in ([], None)
    summary = inf.run()[0]
    assert summary["n_images"] == 6 and "aji" in summary  # the datalist has labels, so it is scored
    out = pseudo_root / "eval" / "nuclei"
    ev = ConfigWorkflow(config_file=str(root / "configs" / "evaluate.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(pseudo_root), dataset_dir=str(synthetic_dir / "labels"))
    ev.initialize()
    res = ev.run()[0]
    assert res["n_images"] == 6
    assert res["mean"]["aji"] == pytest.approx(summary["aji"], abs=1e-6)
    assert json.loads((out / "evaluation" / "metrics.json").read_text())["n_images"] == 6


def test_rerun_keeps_finished_images_and_redoes_changed_ones(tmp_path, nuclei_runner):
    """A rerun into the same folder with the same weights file and settings keeps what an earlier (killed) run
    finished, processes the rest, and redoes everything when a setting changes; the summary has every image."""
    import csv

    import torch

    from bundle.io import write_image
    from bundle.networks import ResUNet34
    from bundle.synthetic import synthetic_he_tile

    for s in range(3):
        write_image(tmp_path / "in" / f"t{s}.png", synthetic_he_tile(128, seed=s)[0])
    torch.manual_seed(0)
    net = ResUNet34(out_channels=2, base_channels=8)
    (tmp_path / "ckpt").mkdir()
    torch.save(net.state_dict(), tmp_path / "ckpt" / "model.pt")

    def run(**kw):
        r = nuclei_runner(tmp_path / "in", tmp_path / "out", net=net, **kw)
        r.ckpt_path = str(tmp_path / "ckpt" / "model.pt")
        r.run()
        with open(tmp_path / "out" / "summary.csv") as f:
            rows = list(csv.DictReader(f))
        return rows, {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "labels").glob("*.png")}

    rows1, t1 = run()
    (tmp_path / "out" / ".done" / "t1.json").unlink()  # as if the run had been killed while writing t1
    rows2, t2 = run()
    assert [r["n_nuclei"] for r in rows2] == [r["n_nuclei"] for r in rows1] and len(rows2) == 3
    assert t2["t0.png"] == t1["t0.png"] and t2["t2.png"] == t1["t2.png"]  # kept
    assert t2["t1.png"] != t1["t1.png"]  # redone
    rows3, t3 = run(threshold=0.6)  # another setting: nothing is kept
    assert all(t3[k] != t2[k] for k in t2) and len(rows3) == 3


def _haematoxylin_net():
    """A per-pixel (1x1 conv) network: nucleus logit 4 x (haematoxylin ratio - 1), so its output at a pixel does not
    depend on where a sliding window or an image split falls, only on the image's haematoxylin threshold."""
    import torch

    net = torch.nn.Conv2d(4, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 3] = 4.0 * 0.25 / 0.25  # input channel 3 = (r - 1) after normalize_rgb's (x/255-0.5)/0.25
    return net


def test_big_tile_in_windows_matches_the_whole_tile(tmp_path, nuclei_runner):
    """Issue 33 item 11: a tile above ``big_tile_px`` is processed in windows (never read whole) and gives the nuclei
    of the whole-tile path: the same haematoxylin threshold (pooled over every window exactly), the same instances
    up to seam effects; ids agree across the tiled-TIFF label map, the measurements and the GeoJSON."""
    import csv
    import json

    from bundle.annotations import read_instance_label
    from bundle.io import write_image
    from bundle.metrics import instance_scores
    from bundle.synthetic import synthetic_he_tile
    from bundle.wsi import SlideOptions

    tiles = [synthetic_he_tile(300, seed=s)[0] for s in range(4)]
    write_image(tmp_path / "in" / "big.png", np.concatenate([np.concatenate(tiles[:2], 1),
                                                             np.concatenate(tiles[2:], 1)], 0))
    whole = nuclei_runner(tmp_path / "in", tmp_path / "whole", net=_haematoxylin_net(), mode="watershed",
                          hematoxylin_prior=0.0).run()
    split = nuclei_runner(tmp_path / "in", tmp_path / "split", net=_haematoxylin_net(), mode="watershed",
                          hematoxylin_prior=0.0, big_tile_px=100_000, wsi=SlideOptions(tile=256)).run()
    assert split["tiles"] == 9 and "tiles" not in whole
    a = read_instance_label(tmp_path / "whole" / "labels" / "big.png")
    b = read_instance_label(tmp_path / "split" / "labels" / "big.tif")
    assert a.shape == b.shape == (600, 600) and a.max() > 40
    # a per-pixel network gives the same instances (AJI 1.0 here); a real one differs a little because its sliding
    # window falls elsewhere (docs/results/big_tiles.md)
    assert abs(int(b.max()) - int(a.max())) <= 1 and instance_scores(b, a)["aji"] > 0.99
    with open(tmp_path / "split" / "measurements" / "big.csv") as f:
        rows = list(csv.DictReader(f))
    gj = json.loads((tmp_path / "split" / "geojson" / "big.geojson").read_text())
    assert len(rows) == len(gj["features"]) == int(b.max()) == split["n_nuclei"]
    from scipy import ndimage as ndi

    cen = ndi.center_of_mass(b > 0, b, np.arange(1, int(b.max()) + 1))
    near = [abs(float(r["y"]) - cy) < 1.5 and abs(float(r["x"]) - cx) < 1.5 for r, (cy, cx) in zip(rows, cen)]
    assert np.mean(near) > 0.97  # the id in the table is the label in the map (a seam can trim a nucleus there)
    assert [f["id"] for f in gj["features"]] == [r["id"] for r in rows]
    assert not list((tmp_path / "split").rglob("*.part*"))  # the tiled copy and the label canvas are gone


def test_slide_without_pixel_size_gets_its_scale_measured_and_measurements(tmp_path, nuclei_runner):
    """Issue 29 per slide: a slide whose file states no pixel size gets one scale from its tissue tiles' nuclei
    (a half-size slide is read as 20x); slides get the measurements table and GeoJSON measurements too (issue 31)."""
    import csv

    import tifffile
    from PIL import Image

    from bundle.scale import estimate_nucleus_diameter
    from bundle.synthetic import synthetic_he_tile

    rgb = synthetic_he_tile(384, seed=2)[0]
    half = np.asarray(Image.fromarray(rgb).resize((192, 192), Image.BOX))
    img = np.full((256, 384, 3), 240, np.uint8)
    img[32:224, 32:224] = half
    tifffile.imwrite(tmp_path / "slide.tif", img, tile=(128, 128), photometric="rgb")  # no resolution tags
    (tmp_path / "in").mkdir()
    (tmp_path / "slide.tif").rename(tmp_path / "in" / "slide.tif")
    out = tmp_path / "out"
    from bundle.wsi import is_wsi

    assert not is_wsi(tmp_path / "in" / "slide.tif")  # small: a plain TIFF tile, read whole; force the slide path
    r = nuclei_runner(tmp_path / "in", out, auto_scale=True, trained_diameter=estimate_nucleus_diameter(rgb),
                      wsi=SlideOptions(tile=128))
    row = r.run_slide({"image": str(tmp_path / "in" / "slide.tif")})
    assert 0.35 < float(row["scale_factor"]) < 0.65
    with open(out / "measurements" / "slide.csv") as f:
        rows = list(csv.DictReader(f))
    gj = json.loads((out / "geojson" / "slide.geojson").read_text())
    assert len(rows) == len(gj["features"]) == row["n_nuclei"] > 0
    assert "Area µm^2" in gj["features"][0]["properties"]["measurements"]
    assert [r["id"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
