# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Detection / segmentation stage: labels, loss, prediction, instances, polygons, GeoJSON, slides, evaluation."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from bundle.detection import (IGNORE, PartialCrossEntropy, detection_target, input_channels, mask_points,
                              nuclei_from_probability, predict_probability, segmentation_targets)
from bundle.labels import instance_target
from bundle.postprocess import instance_polygons, instances_from_three_class
from bundle.wsi import write_pyramid_tiff


def two_touching_disks(shape=(64, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = (yy - 32) ** 2 + (xx - 22) ** 2 <= 81
    b = (yy - 32) ** 2 + (xx - 40) ** 2 <= 81
    return a | b


def test_instance_target_marks_shared_boundary():
    inst = np.zeros((20, 20), int)
    inst[5:15, 2:10] = 1
    inst[5:15, 10:18] = 2
    t = instance_target(inst)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[inst == 0] == 0).all()
    assert t[10, 9] == 2 and t[10, 10] == 2  # both sides of the shared border
    assert t[10, 5] == 1 and t[10, 14] == 1
    assert (instance_target(inst, boundary_width=2)[10, 8]) == 2


def test_detection_target_binary_three_and_ignore_band():
    m = two_touching_disks()
    b = detection_target(m, "binary")
    assert b.dtype == np.uint8 and set(np.unique(b)) == {0, 1} and (b.astype(bool) == m).all()
    t = detection_target(m, "three")
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[~m] == 0).all()
    assert t[32, 31] == 2  # the two disks are split: a boundary runs between them
    band = detection_target(m, "binary", ignore_band=2)
    assert (band == IGNORE).sum() > 0 and (band[m] == 1).all()
    with pytest.raises(ValueError, match="unknown detection target"):
        detection_target(m, "four")


def test_segmentation_targets_channels():
    m = two_touching_disks()
    pts = np.array([[32, 22], [32, 40]])
    lab = segmentation_targets(m, pts, keep_foreground=False)
    assert lab.shape == (2, 64, 64) and lab.dtype == np.uint8
    assert (lab[0][m] == IGNORE).all() and (lab[0][~m] == 0).all()
    assert lab[1][32, 22] == 1 and lab[1][32, 31] == 0  # disk at the point, Voronoi edge between the points
    assert (lab[1] == IGNORE).any()
    kept = segmentation_targets(m, pts, keep_foreground=True)
    assert (kept[0][m] == 1).all()


def test_partial_cross_entropy_ignores_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    y = torch.randint(0, 2, (2, 8, 8))
    full = torch.nn.functional.cross_entropy(logits, y)
    lab = y[:, None].float()
    assert torch.allclose(PartialCrossEntropy()(logits, lab), full)
    ignored = lab.clone()
    ignored[:, :, :4] = IGNORE  # the loss must equal CE on the other half only
    half = torch.nn.functional.cross_entropy(logits[:, :, 4:], y[:, 4:])
    assert torch.allclose(PartialCrossEntropy()(logits, ignored), half)
    two = torch.cat([lab, ignored], 1)
    assert torch.allclose(PartialCrossEntropy((1.0, 1.5))(logits, two), full + 1.5 * half)
    assert float(PartialCrossEntropy()(logits, torch.full_like(lab, IGNORE))) == 0.0
    with pytest.raises(ValueError, match="channels"):
        PartialCrossEntropy((1.0, 1.5))(logits, lab)


def test_partial_cross_entropy_dice_term():
    """dice_weight adds 1 - soft Dice of the foreground on label channel 0's labelled pixels: about 0 for a confident
    correct prediction, about 1 for a confident wrong one, blind to ignored pixels."""
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    good = torch.cat([(1 - y) * 20 - 10, y * 20 - 10], 1)  # logits: background where y == 0, nucleus where 1
    ce_only = PartialCrossEntropy()(good, y)
    assert float(PartialCrossEntropy(dice_weight=1.0)(good, y) - ce_only) < 0.01
    bad = good.flip(1)
    assert float(PartialCrossEntropy(dice_weight=1.0)(bad, y) - PartialCrossEntropy()(bad, y)) > 0.95
    hidden = y.clone()
    hidden[..., :, 4:] = IGNORE  # a wrong prediction only where labels are ignored costs nothing
    half_bad = good.clone()
    half_bad[..., :, 4:] = bad[..., :, 4:]
    assert float(PartialCrossEntropy(dice_weight=1.0)(half_bad, hidden) - PartialCrossEntropy()(half_bad, hidden)) < 0.01


def test_partial_cross_entropy_bootstrap():
    """bootstrap < 1 mixes label channel 0's cross-entropy with the prediction's entropy (Reed et al.): a confident
    prediction that disagrees with a noisy label costs less than with plain cross-entropy, an unsure one does not gain;
    channel 1 and ignored pixels are untouched; 1 is plain cross-entropy."""
    y = torch.zeros(1, 2, 8, 8)
    y[:, 0, 2:6, 2:6] = 1
    y[:, 1] = IGNORE
    confident_wrong = torch.cat([(y[:, :1] * 20 - 10), (1 - y[:, :1]) * 20 - 10], 1)
    unsure = torch.zeros(1, 2, 8, 8)
    plain, boot = PartialCrossEntropy((1.0, 1.5)), PartialCrossEntropy((1.0, 1.5), bootstrap=0.8)
    assert float(PartialCrossEntropy((1.0, 1.5), bootstrap=1.0)(confident_wrong, y)) == float(plain(confident_wrong, y))
    assert float(boot(confident_wrong, y)) == pytest.approx(0.8 * float(plain(confident_wrong, y)), rel=1e-3)
    assert float(boot(unsure, y)) == pytest.approx(float(plain(unsure, y)), rel=1e-5)  # entropy log 2 = CE log 2
    only_ch1 = y.clone()
    only_ch1[:, 0], only_ch1[:, 1] = IGNORE, 1
    assert float(boot(confident_wrong, only_ch1)) == float(plain(confident_wrong, only_ch1))
    with pytest.raises(ValueError, match="bootstrap"):
        PartialCrossEntropy(bootstrap=0.0)


class _PixelNet(torch.nn.Module):
    """A 1x1 convolution: the sliding-window and whole-image paths must agree exactly for it."""

    def __init__(self, c=2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, c, 1)

    def forward(self, x):
        return self.conv(x)


def test_predict_probability_sliding_window_and_tta():
    rgb = (np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8)
    net = _PixelNet()
    whole = predict_probability(net, rgb, roi_size=512, tta=False)
    tiled = predict_probability(net, rgb, roi_size=64, overlap=0.25, tta=False)
    assert whole.shape == (2, 150, 200)
    assert np.allclose(whole.sum(0), 1, atol=1e-5)
    assert np.allclose(whole, tiled, atol=1e-5)
    assert np.allclose(predict_probability(net, rgb, roi_size=64, tta=True), whole, atol=1e-5)
    with pytest.raises(ValueError, match="RGB"):
        predict_probability(net, rgb[..., 0])


def test_predict_probability_scale_resamples_input_and_output():
    """scale=2 shows the network the image at twice its size (a 20x tile to a 40x network) and returns the
    probabilities at the input's size; on a smooth image a per-pixel network gives nearly the same map."""
    yy, xx = np.mgrid[0:60, 0:80]
    rgb = np.stack([2 * yy + 40, 2 * xx + 20, yy + xx + 30], -1).astype(np.uint8)
    net, seen = _PixelNet(), []
    net.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    base = predict_probability(net, rgb, tta=False)
    up = predict_probability(net, rgb, tta=False, scale=2.0)
    down = predict_probability(net, rgb, tta=False, scale=0.5)
    assert seen == [(60, 80), (120, 160), (30, 40)]
    assert up.shape == down.shape == (2, 60, 80)
    assert np.allclose(up.sum(0), 1, atol=1e-5)
    assert np.abs(up - base)[:, 2:-2, 2:-2].max() < 0.02
    with pytest.raises(ValueError, match="scale"):
        predict_probability(net, rgb, scale=0)


def test_nuclei_from_probability_modes_split_touching():
    m = two_touching_disks()
    prob = np.stack([1.0 - m, m.astype(float)]).astype(np.float32)
    assert nuclei_from_probability(prob, "cc", min_size=5).max() == 1
    assert nuclei_from_probability(prob, "watershed", min_size=5).max() == 2
    seeded = nuclei_from_probability(prob, "watershed", min_size=5, points=np.array([[32, 22], [32, 40]]))
    assert seeded.max() == 2
    t = instance_target(nuclei_from_probability(prob, "watershed", min_size=5))
    three = np.stack([(t == 0), (t == 1), (t == 2)]).astype(np.float32)
    assert instances_from_three_class(three, min_size=5).max() == 2
    assert nuclei_from_probability(three, "auto", min_size=5).max() == 2
    with pytest.raises(ValueError, match="unknown instance mode"):
        nuclei_from_probability(prob, "blobs")


def test_mask_points_one_centre_per_touching_nucleus():
    m = two_touching_disks()
    pts = mask_points(m)
    assert len(pts) == 2
    lab = ndi.label(m)[0]
    assert np.all(lab[tuple(np.round(pts).astype(int).T)] == 1)  # inside the mask
    assert abs(pts[:, 1].max() - pts[:, 1].min()) > 10  # one on each disk, not both on the neck
    assert len(mask_points(np.zeros((40, 40), bool))) == 0
    small = np.zeros((40, 40), bool)
    small[10:13, 10:13] = True  # 9 px: under min_size (20 px at 40x, 5 px at 20x)
    assert len(mask_points(small)) == 0 and len(mask_points(small, size_scale=0.5)) == 1


def test_nuclei_from_probability_grow_keeps_instances_apart():
    m = two_touching_disks()
    prob = np.stack([1.0 - m, m.astype(float)]).astype(np.float32)
    base = nuclei_from_probability(prob, "watershed", min_size=5)
    grown = nuclei_from_probability(prob, "watershed", min_size=5, grow=2)
    assert grown.max() == base.max() == 2
    assert (grown > 0).sum() > (base > 0).sum()
    assert np.array_equal(grown[base > 0], base[base > 0])  # growth only claims background
    ring = (grown > 0) & (base == 0)
    assert not (ring & ~ndi.binary_dilation(base > 0, iterations=2)).any()  # at most 2 px (4-connected steps)


def test_nuclei_from_probability_min_score_drops_faint_instances():
    yy, xx = np.mgrid[:60, :90]
    fg = np.zeros((60, 90), np.float32)
    for c, p in ((15, 0.95), (45, 0.55), (75, 0.9)):  # three separate disks, the middle one faint
        fg[(yy - 30) ** 2 + (xx - c) ** 2 <= 64] = p
    prob = np.stack([1 - fg, fg])
    assert nuclei_from_probability(prob, "cc", min_size=5).max() == 3
    kept = nuclei_from_probability(prob, "cc", min_size=5, min_score=0.6)
    assert kept.max() == 2 and set(np.unique(kept)) == {0, 1, 2}  # renumbered 1..N
    assert kept[30, 45] == 0 and kept[30, 15] > 0 and kept[30, 75] > 0


def test_instance_polygons_outline_area():
    from skimage.draw import polygon as fill

    inst = np.zeros((40, 50), np.int32)
    inst[10:20, 5:25] = 1
    inst[25:35, 30:45] = 3
    polys = instance_polygons(inst)
    assert sorted(polys) == [1, 3]
    for i, xy in polys.items():
        assert np.array_equal(xy[0], xy[-1])
        rr, cc = fill(xy[:, 1], xy[:, 0], inst.shape)
        area = (inst == i).sum()
        assert abs(len(rr) - area) <= 0.25 * area  # outline encloses the object


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


def _runner(data, out, net=None, **kw):
    from bundle.networks import ResUNet34
    from bundle.pipeline import NucleiRunner

    torch.manual_seed(0)
    net = net or ResUNet34(out_channels=2, base_channels=8)
    return NucleiRunner(net, data, out, tta=False, **kw)


def test_nuclei_runner_outputs_and_bad_file(synthetic_dir, tmp_path):
    from bundle.annotations import read_instance_label

    data = tmp_path / "tiles"
    data.mkdir()
    for f in sorted((synthetic_dir / "images").glob("tile_0[01].png")):
        (data / f.name).write_bytes(f.read_bytes())
    (data / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    summary = _runner(data, out, mode="watershed", write_masks=True).run()
    assert summary["n_images"] == 2 and summary["n_skipped"] == 1 and "broken.png" in summary["skipped"][0]
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


def test_nuclei_runner_slide_and_blank_slide(tmp_path):
    from bundle.synthetic import synthetic_he_tile

    img = np.full((400, 500, 3), 240, np.uint8)
    img[40:296, 50:306] = synthetic_he_tile(256, seed=2)[0]
    write_pyramid_tiff(tmp_path / "slide.tif", img)
    write_pyramid_tiff(tmp_path / "blank.tif", np.full((300, 300, 3), 245, np.uint8))
    out = tmp_path / "out"
    (out / "points").mkdir(parents=True)  # a temporary left by a killed earlier run of this slide
    (out / "points" / ".slide.csv.abc123.part.csv").write_text("half-written")
    summary = _runner(tmp_path / "slide.tif", out, wsi_tile=128).run()
    assert summary["n_images"] == 1 and summary["tiles"] >= 1
    assert sorted(p.name for p in (out / "points").iterdir()) == ["slide.csv"]
    pts = (out / "points" / "slide.csv").read_text().splitlines()
    assert pts[0] == "image,x,y,class,score"
    xs = [float(r.split(",")[1]) for r in pts[1:]]
    assert all(0 <= x < 500 for x in xs)
    strict = _runner(tmp_path / "slide.tif", tmp_path / "out3", wsi_tile=128, wsi_min_tissue=0.99).run()
    assert strict["tiles"] < summary["tiles"]  # edge tiles with a part of tissue are skipped at 0.99, kept at 0.05
    with pytest.raises(ValueError, match="wsi_min_tissue"):
        _runner(tmp_path / "slide.tif", tmp_path / "out4", wsi_min_tissue=5)
    empty = _runner(tmp_path / "blank.tif", tmp_path / "out2", wsi_tile=128).run()
    assert empty["n_nuclei"] == 0 and empty["tiles"] == 0
    assert json.loads((tmp_path / "out2" / "geojson" / "blank.geojson").read_text())["features"] == []


def test_slide_hematoxylin_threshold(tmp_path):
    """A slide gives all its tiles one haematoxylin scale: a nuclei-free (stroma-only) tile is not rescaled by its
    own Otsu threshold, which would call its darkest stroma nuclei; a 4-channel network runs on the slide."""
    from bundle.networks import ResUNet34
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import hematoxylin_channel, hematoxylin_threshold, normalize_rgb
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
    summary = _runner(tmp_path / "slide.tif", tmp_path / "out", net=ResUNet34(in_channels=4, out_channels=2,
                                                                               base_channels=8), wsi_tile=128).run()
    assert summary["n_images"] == 1 and summary["tiles"] == 6


def test_evaluate_runner_perfect_and_errors(tmp_path):
    from bundle.annotations import write_instance_label
    from bundle.pipeline import EvaluateRunner

    gt = np.zeros((64, 64), np.int32)
    gt[5:15, 5:15], gt[30:40, 20:35] = 1, 2
    for d in ("pred", "gt"):
        write_instance_label(tmp_path / d / "a.png", gt)
    write_instance_label(tmp_path / "gt" / "b.png", gt)
    res = EvaluateRunner(tmp_path / "pred", tmp_path / "gt", tmp_path / "ev").run()
    assert res["mean"]["aji"] == pytest.approx(1.0) and res["missing_predictions"] == ["b"]
    assert (tmp_path / "ev" / "metrics.csv").is_file()
    with pytest.raises(FileNotFoundError, match="prediction folder not found"):
        EvaluateRunner(tmp_path / "nope", tmp_path / "gt", tmp_path / "ev").run()


def test_hematoxylin_channel_input(tmp_path):
    """The optional 4th input channel: per-image haematoxylin relative to its Otsu threshold, added on load, kept by
    the stain jitter, and computed by predict_probability for a 4-channel network (auto-detected)."""
    from bundle.handlers import resunet_input_channels
    from bundle.io import write_image
    from bundle.networks import ResUNet34
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import LoadTiled, RandStainJitterd, hematoxylin_channel, normalize_rgb

    rgb, inst = synthetic_he_tile(96, seed=0)
    hc = normalize_rgb(torch.from_numpy(hematoxylin_channel(rgb))).numpy()  # = h / otsu - 1
    assert hc[inst > 0].mean() > 0 > hc[inst == 0].mean()
    assert np.all(hematoxylin_channel(np.full((32, 32, 3), 200, np.uint8)) == 63.75)  # flat image: r = 0
    write_image(tmp_path / "t.png", rgb)
    x = LoadTiled(keys="image", hematoxylin=True)({"image": str(tmp_path / "t.png")})["image"]
    assert x.shape == (4, 96, 96) and torch.equal(x[:3], torch.from_numpy(rgb.transpose(2, 0, 1)).float())
    jit = RandStainJitterd(keys="image", sigma=0.3, bias=0.05, prob=1.0)
    jit.set_random_state(0)
    y = jit({"image": x})["image"]
    assert y.shape == (4, 96, 96) and torch.equal(y[3], x[3]) and not torch.equal(y[:3], x[:3])
    torch.manual_seed(0)
    net4 = ResUNet34(in_channels=4, out_channels=2, base_channels=8)
    assert input_channels(net4) == 4 and input_channels(_PixelNet()) == 3
    prob = predict_probability(net4, rgb, roi_size=64, tta=False)
    assert prob.shape == (2, 96, 96) and np.allclose(prob.sum(0), 1, atol=1e-5)
    torch.save(net4.state_dict(), tmp_path / "m.pt")
    assert resunet_input_channels(tmp_path / "m.pt") == 4 and resunet_input_channels(tmp_path / "none.pt") == 3


def test_blend_hematoxylin_prior():
    """The image's own haematoxylin evidence blended into P(nucleus): sums stay 1, nuclei go up and background down
    from an undecided map, weight 0 is the identity, and 3-channel maps keep their foreground shares."""
    from bundle.detection import blend_hematoxylin
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import hematoxylin_evidence

    rgb, inst = synthetic_he_tile(96, seed=0)
    e = hematoxylin_evidence(rgb)
    assert e.min() >= 0 and e.max() <= 1 and e[inst > 0].mean() > 0.5 > e[inst == 0].mean()
    assert np.all(hematoxylin_evidence(np.full((16, 16, 3), 200, np.uint8)) < 0.01)  # flat image: no evidence
    flat = np.full((2, 96, 96), 0.5, np.float32)
    assert np.array_equal(blend_hematoxylin(flat, rgb, 0.0), flat)
    b = blend_hematoxylin(flat, rgb, 0.35)
    assert b.shape == flat.shape and np.allclose(b.sum(0), 1, atol=1e-6)
    assert b[1][inst > 0].mean() > 0.5 > b[1][inst == 0].mean()
    assert np.allclose(b[1], 0.65 * 0.5 + 0.35 * e, atol=1e-6)
    three = np.stack([np.full((96, 96), 0.4), np.full((96, 96), 0.45), np.full((96, 96), 0.15)]).astype(np.float32)
    t = blend_hematoxylin(three, rgb, 0.5)
    assert np.allclose(t.sum(0), 1, atol=1e-6) and np.allclose(t[1] / t[2], 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="weight"):
        blend_hematoxylin(flat, rgb, 1.5)
    with pytest.raises(ValueError, match="does not fit"):
        blend_hematoxylin(flat[:, :50], rgb, 0.35)
    with pytest.raises(ValueError, match="hematoxylin_prior must be in"):  # fails at once, not per image
        _runner([], "unused_out", hematoxylin_prior=-0.1)


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


def test_sizes_follow_mpp():
    """Sizes tuned at 40x (0.25 um/px) are carried to 20x tiles; 20x nuclei 10 px apart stay apart only then."""
    from bundle.labels import point_settings, points_from_probability
    from bundle.postprocess import scaled, size_scale

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


def test_inference_config_mpp(root):
    """``--mpp 0.5`` scales the inference defaults; ``--wsi_mpp`` sets ``mpp`` for slides; explicit values win."""
    from monai.bundle import ConfigParser

    def resolved(**over):
        p = ConfigParser()
        p.read_config(str(root / "configs" / "inference.json"))
        p.update(over)
        return {k: p.get_parsed_content(k) for k in ("mpp", "min_size", "min_distance", "size_scale")}

    assert resolved() == {"mpp": 0.25, "min_size": 20, "min_distance": 6, "size_scale": 1.0}
    assert resolved(mpp=0.5) == {"mpp": 0.5, "min_size": 5, "min_distance": 3, "size_scale": 0.5}
    assert resolved(wsi_mpp=0.5)["min_distance"] == 3
    assert resolved(mpp=0.5, min_distance=4)["min_distance"] == 4


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


def test_network_mpp_from_training_settings(root, tmp_path, caplog):
    """Training writes the pixel size beside the weights; inference resizes tiles of another pixel size to it."""
    import json

    from monai.bundle import ConfigParser

    from bundle.handlers import CheckpointResume, trained_mpp
    from bundle.pipeline import NucleiRunner

    net = torch.nn.Conv2d(3, 2, 1)
    CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.5}).save(None)
    assert json.loads((tmp_path / "m" / "settings.json").read_text()) == {"mpp": 0.5}
    assert trained_mpp(tmp_path / "m" / "model.pt") == 0.5
    with caplog.at_level("WARNING"):
        assert trained_mpp(tmp_path / "old" / "model.pt", 0.5) is None  # written before the option: not resized
        assert trained_mpp(tmp_path / "old" / "model.pt", 0.5, hint="copy its settings") is None
    warned = [r.getMessage() for r in caplog.records if "no settings.json" in r.getMessage()]
    assert len(warned) == 2 and warned[0].endswith("pass --network_mpp 0.25 if it was trained at 40x")
    assert warned[1].endswith("not resized; copy its settings")  # the caller's hint (a Ki-67 teacher's)
    assert trained_mpp(None) is None
    # resuming checks the recorded settings: another mpp is an error, a checkpoint without them gets none written
    with pytest.raises(ValueError, match="trained with mpp 0.5"):
        CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.25}).load(None)
    CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.5})._check_settings(tmp_path / "m")
    old = CheckpointResume(tmp_path / "old", {"network": net})
    old.save(None)
    old = CheckpointResume(tmp_path / "old", {"network": net}, settings={"mpp": 0.25})
    old._check_settings(tmp_path / "old" / "last_checkpoint.pt")
    old.save(None)
    assert old.settings is None and not (tmp_path / "old" / "settings.json").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "settings.json").write_text("{not json")
    with pytest.raises(ValueError, match="settings.json"):
        trained_mpp(tmp_path / "bad" / "model.pt")

    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt")})
    assert p.get_parsed_content("network_mpp") == 0.5
    # 20x tiles (size_scale 0.5) and a network trained at 40x: tiles are shown to it twice as large
    assert NucleiRunner(net, [], tmp_path, size_scale=0.5, network_mpp=0.25).resample == 2.0
    assert NucleiRunner(net, [], tmp_path, size_scale=0.5, network_mpp=0.5).resample == 1.0
    assert NucleiRunner(net, [], tmp_path).resample == 1.0
    assert NucleiRunner(net, [], tmp_path, size_scale=0.25 / 0.2527, network_mpp=0.25).resample == 1.0  # Aperio 40x
    from bundle.ki67 import Ki67Runner

    assert Ki67Runner(net, [], tmp_path, size_scale=0.5, network_mpp=0.25).resample == 2.0
    assert Ki67Runner(net, [], tmp_path, stain="he", size_scale=0.5, network_mpp=0.25)._nuclei_runner().resample == 2.0
    p = ConfigParser()
    p.read_config(str(root / "configs" / "ki67_infer.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.25})
    assert p.get_parsed_content("network_mpp") == 0.5 and p.get_parsed_content("runner").resample == 0.5
    with pytest.raises(ValueError, match="network_mpp"):
        NucleiRunner(net, [], tmp_path, network_mpp=0)


def test_evaluator_inferer_runs_at_network_mpp(root, tmp_path):
    """The Deploy-style evaluator of inference.json resizes its input to the network's pixel size and its `pred`
    back: same size as the input, close to the runner's predict_probability(scale=2)."""
    from monai.bundle import ConfigParser
    from monai.inferers import SimpleInferer

    from bundle.detection import ScaledInferer, predict_probability
    from bundle.handlers import CheckpointResume
    from bundle.transforms import normalize_rgb

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 5, padding=2), torch.nn.AvgPool2d(3, 1, 1)).eval()
    CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.25}).save(None)
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.5, "roi_size": 64})
    inferer = p.get_parsed_content("inferer")
    assert isinstance(inferer, ScaledInferer) and inferer.scale == 2.0
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    x = normalize_rgb(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None])
    with torch.no_grad():
        pred = torch.softmax(inferer(x, net), 1)[0].numpy()
    assert pred.shape == (2, 40, 50)
    ref = predict_probability(net, rgb, tta=False, scale=2.0)
    assert np.abs(pred - ref).mean() < 0.02
    assert ScaledInferer(SimpleInferer(), 1.0)(x, net).shape == (1, 2, 40, 50)
    with pytest.raises(ValueError, match="scale"):
        ScaledInferer(SimpleInferer(), 0)


def test_scaled_inferer_recomputes_the_hematoxylin_channel(root, tmp_path):
    """A 4-channel network behind the evaluator's ScaledInferer sees exactly what the runner shows it: the RGB
    resized as uint8 and the haematoxylin channel computed on the resized image (not the normalised channels
    resized in float)."""
    from monai.bundle import ConfigParser
    from monai.inferers import SimpleInferer

    from bundle.detection import ScaledInferer, predict_probability
    from bundle.handlers import CheckpointResume
    from bundle.synthetic import synthetic_he_tile
    from bundle.transforms import add_hematoxylin_channel, normalize_rgb

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.seen = torch.nn.Conv2d(4, 2, 1), []

        def forward(self, z):
            self.seen.append(z.clone())
            return self.conv(z)

    net = Recorder().eval()
    CheckpointResume(tmp_path / "m", {"network": net.conv}, settings={"mpp": 0.25}).save(None)
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.5, "roi_size": 192})  # one window
    inferer = p.get_parsed_content("inferer")
    assert inferer.hematoxylin and inferer.scale == 2.0
    rgb = synthetic_he_tile(96, seed=2)[0]
    x = normalize_rgb(add_hematoxylin_channel(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float())[None])
    with torch.no_grad():
        predict_probability(net, rgb, tta=False, scale=2.0, roi_size=512)
        assert inferer(x, net).shape == (1, 2, 96, 96)
        ScaledInferer(SimpleInferer(), 2.0)(x, net)  # the float resize of before
    runner, evaluator, plain = net.seen
    assert runner.shape == evaluator.shape == (1, 4, 192, 192)
    from monai.data import MetaTensor

    with torch.no_grad():  # a Deploy app keeps the image's meta data
        out = inferer(MetaTensor(x, meta={"filename_or_obj": "tile.png"}), net)
    assert out.meta["filename_or_obj"] == "tile.png"
    assert torch.equal(runner, evaluator)
    assert (runner[:, 3] - plain[:, 3]).abs().max() > 0.1


def test_inference_evaluator_loads_its_checkpoint(root, tmp_path):
    """`monai.bundle run evaluator` style use: the evaluator of inference.json loads ckpt_path itself
    (CheckpointLoader), so a Deploy app does not have to, and its `pred` is (1, 2, H, W) probabilities."""
    from monai.bundle import ConfigParser

    from bundle.handlers import CheckpointResume
    from bundle.io import write_image
    from bundle.networks import ResUNet34

    torch.manual_seed(1)
    trained = ResUNet34(in_channels=3, out_channels=2, base_channels=16)
    CheckpointResume(tmp_path / "m", {"network": trained}, settings={"mpp": 0.25}).save(None)
    (tmp_path / "tiles").mkdir()
    write_image(tmp_path / "tiles" / "a.png", (np.random.default_rng(0).random((48, 56, 3)) * 255).astype(np.uint8))
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "dataset_dir": str(tmp_path / "tiles"),
              "device": "$torch.device('cpu')", "roi_size": 64})
    evaluator = p.get_parsed_content("evaluator")
    net = p.get_parsed_content("network")
    with torch.no_grad():
        for w in net.parameters():
            w.zero_()  # whatever the network held before, the evaluator must load the checkpoint
    evaluator.run()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in net.state_dict().items())
    pred = evaluator.state.output[0]["pred"]
    assert tuple(pred.shape) == (2, 48, 56) and torch.allclose(pred.sum(0), torch.ones(48, 56), atol=1e-4)


def test_instance_settings_scale_the_fixed_pixel_sizes():
    import inspect

    from bundle.detection import instance_settings

    defaults = inspect.signature(nuclei_from_probability).parameters
    assert instance_settings(1.0) == {k: defaults[k].default for k in ("hole_size", "sigma", "min_seed_size")}
    assert instance_settings(0.5) == {"hole_size": 16, "sigma": 0.5, "min_seed_size": 2}  # 20x tiles
    # a 2x2 interior seed is noise at 40x but a nucleus' seed at 20x
    m = two_touching_disks()
    seeds = np.zeros_like(m, dtype=bool)
    seeds[31:34, 21:24] = True  # 9 px
    seeds[32:34, 40:42] = True  # 4 px
    three = np.stack([1.0 - m, seeds & m, m & ~seeds]).astype(np.float32)
    assert nuclei_from_probability(three, "three", min_size=5).max() == 1
    assert nuclei_from_probability(three, "three", min_size=5, **instance_settings(0.5)).max() == 2
