# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG (issue 5): solvers against scikit-learn, concept bank, backbones, evaluation, end-to-end bundle runs.

Synthetic data only (a fresh clone has no ../shared).
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.decomposition import non_negative_factorization

from bundle import fseg
from bundle.io import ImageError, write_image
from bundle.label_free import child_env
from bundle.metrics import confusion_counts, match_clusters, matching_scores, semantic_scores
from bundle.wsi import write_pyramid_tiff

torch.set_num_threads(1)


def tissue_tile(size=(96, 128), seed=0):
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


@pytest.fixture(scope="module")
def extractor():
    return fseg.build_extractor("res2net", "random", base_channels=8, seed=0)


def feats_and_centres(extractor, k, seed=0):
    from sklearn.cluster import KMeans

    rgb, _ = tissue_tile((128, 160), seed)
    f = extractor(rgb)[0]
    X = f.reshape(f.shape[0], -1).T.contiguous()
    H = KMeans(k, n_init=2, random_state=0).fit(X.numpy()).cluster_centers_.astype(np.float32).clip(0)
    return rgb, f, X, H


# ---------------------------------------------------------------- solvers
@pytest.mark.parametrize("method", ["cd", "bpp"])
def test_nnls_labels_equal_sklearn_random_problem(method):
    rng = np.random.default_rng(0)
    X = rng.random((400, 24)).astype(np.float32)
    H = rng.random((7, 24)).astype(np.float32)
    Ws, _, _ = non_negative_factorization(X, H=H.copy(), n_components=7, update_H=False, max_iter=10000,
                                          random_state=0)
    W = fseg.nnls(torch.from_numpy(X), torch.from_numpy(H), method=method).numpy()
    assert (W >= 0).all()
    np.testing.assert_array_equal(W.argmax(1), Ws.argmax(1))
    assert np.abs(W - Ws).max() < 1e-2


def test_nnls_labels_equal_sklearn_network_features(extractor):
    """Variant B on real (random-network) features and K-Means centres: same label map as scikit-learn."""
    rgb, f, X, H = feats_and_centres(extractor, 6)
    Ws, _, _ = non_negative_factorization(X.numpy(), H=H.copy(), n_components=6, update_H=False, max_iter=10000,
                                          random_state=0)
    h, w = f.shape[1:]
    ref = fseg.bilinear_argmax(torch.from_numpy(Ws).T.reshape(-1, h, w), rgb.shape[:2])
    for method in ("cd", "bpp"):
        W = fseg.nnls(X, torch.from_numpy(H), method=method)
        assert (W.argmax(1).numpy() == Ws.argmax(1)).all(), method
        lab = fseg.bilinear_argmax(W.T.reshape(-1, h, w), rgb.shape[:2])
        if method == "cd":  # the same iterates as scikit-learn: the same upsampled label map
            assert torch.equal(lab, ref)
        else:  # exact optimum vs scikit-learn's tol-1e-4 stop: same cell labels, upsampled maps differ only
            agree = float((lab == ref).float().mean())  # where two interpolated coefficients nearly tie
            print("bpp upsampled agreement", agree)
            assert agree > 0.995, agree
    out = fseg.variant_b(f, H, rgb.shape[:2], extractor, method="cd")
    assert torch.equal(out["labels"], ref)


def test_nnls_bpp_is_optimal():
    """KKT conditions of the exact solver: W >= 0, gradient >= 0, complementary slackness."""
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.random((300, 40)))
    H = torch.from_numpy(rng.random((12, 40)))
    W = fseg.nnls(X, H, method="bpp")
    grad = W @ (H @ H.T) - X @ H.T
    assert (W >= 0).all() and grad.min() > -1e-8
    assert (W * grad).abs().max() < 1e-8


def test_nmf_decreases_error_and_bilinear_argmax():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.random((200, 30)).astype(np.float32))
    W, H = fseg.nmf(X, 5, max_iter=200, seed=0)
    assert W.shape == (200, 5) and H.shape == (5, 30) and (W >= 0).all() and (H >= 0).all()
    from sklearn.decomposition import NMF

    sk = NMF(5, init="random", random_state=0, max_iter=200).fit(X.numpy())
    assert float(((X - W @ H) ** 2).sum()) ** 0.5 < 1.05 * sk.reconstruction_err_
    maps = torch.rand(4, 7, 9)
    ref = torch.nn.functional.interpolate(maps[None], size=(53, 70), mode="bilinear", align_corners=False)[0]
    assert torch.equal(fseg.bilinear_argmax(maps, (53, 70), max_elements=4 * 70 * 5), ref.argmax(0))
    assert torch.equal(fseg.bilinear_argmax(maps, (53, 70)), ref.argmax(0))


# ---------------------------------------------------------------- bank
def test_bank_round_trip_and_missing_k(extractor, tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.random((40, extractor.channels)).astype(np.float32)
    centres = fseg.fit_kmeans_bank(vecs, [2, 4], seed=0)
    bank = fseg.ConceptBank(centres, {**extractor.signature(), "n_images": 3})
    bank.save(tmp_path / "bank.pt")
    back = fseg.ConceptBank.load(tmp_path / "bank.pt")
    assert back.ks == [2, 4] and back.meta == bank.meta
    for k in (2, 4):
        np.testing.assert_array_equal(back.get(k), centres[k])
    back.check(extractor.signature())  # same backbone: no error
    with pytest.raises(ValueError, match="not 3") as e:
        back.get(3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="only 40 tile features for k=64"):
        fseg.fit_kmeans_bank(vecs, [64])


def test_bank_mismatch_is_one_line(extractor, tmp_path):
    bank = fseg.ConceptBank({2: np.ones((2, extractor.channels), np.float32)}, extractor.signature())
    bank.save(tmp_path / "bank.pt")
    loaded = fseg.ConceptBank.load(tmp_path / "bank.pt")
    other_weights = fseg.build_extractor("res2net", "random", base_channels=8, seed=1)
    with pytest.raises(fseg.BankMismatchError) as e:
        loaded.check(other_weights.signature())
    msg = str(e.value)
    assert "\n" not in msg and "weights_sha256" in msg and str(tmp_path / "bank.pt") in msg
    other_layer = fseg.build_extractor("res2net", "random", base_channels=8, seed=0, layer="layer2")
    with pytest.raises(fseg.BankMismatchError, match="layer='layer3' vs 'layer2'"):
        loaded.check(other_layer.signature())
    # through the runner: the configured extractor is checked before any image is read
    runner = fseg.FSegRunner(other_weights, tmp_path / "bank.pt", tmp_path, tmp_path / "out", k=2)
    with pytest.raises(fseg.BankMismatchError):
        runner.run()


def test_bank_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="concept bank not found"):
        fseg.ConceptBank.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError) as e:
        fseg.ConceptBank.load(junk)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
    torch.save({"a": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not an F-SEG concept bank"):
        fseg.ConceptBank.load(tmp_path / "sd.pt")


# ---------------------------------------------------------------- segmentation
def test_consistent_ids_variant_a_and_b(extractor):
    rgb, f, X, H = feats_and_centres(extractor, 5)
    rgb2, _ = tissue_tile((100, 90), seed=3)
    for v in ("A", "B"):
        a = fseg.segment(f, H, rgb.shape[:2], extractor, v, n_components=4)
        b = fseg.segment(extractor(rgb)[0], H, rgb.shape[:2], extractor, v, n_components=4)
        assert torch.equal(a["labels"], b["labels"])  # deterministic
        assert a["labels"].shape == rgb.shape[:2] and int(a["labels"].max()) < 5
        c = fseg.segment(extractor(rgb2)[0], H, rgb2.shape[:2], extractor, v, n_components=4)
        assert c["labels"].shape == (100, 90) and int(c["labels"].min()) >= 0 and int(c["labels"].max()) < 5
    a = fseg.variant_a(f, H, rgb.shape[:2], extractor, n_components=4)
    assert torch.equal(a["labels"], fseg.relabel(a["components"], a["mapping"]))
    assert torch.equal(a["mapping"], fseg.cosine_assign(a["concepts"], torch.from_numpy(H)))
    # the same bank gives the same ids in two images: identical content -> identical labels
    twin = fseg.segment(extractor(np.concatenate([rgb, rgb], 0))[0], H, (256, 160), extractor, "B")["labels"]
    assert (twin[:128] == fseg.segment(f, H, rgb.shape[:2], extractor, "B")["labels"]).float().mean() > 0.9
    fr = fseg.area_fractions(a["labels"].numpy(), 5)
    assert fr.shape == (5,) and abs(fr.sum() - 1) < 1e-9


def test_resnet50_local_weights(tmp_path):
    from monai.networks.nets import resnet50

    torch.manual_seed(3)
    net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, bias_downsample=False,
                   num_classes=1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r50.pth")
    ex = fseg.build_extractor("resnet50", str(tmp_path / "r50.pth"))
    assert ex.signature()["weights_sha256"] == fseg.state_dict_fingerprint(
        {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
    f = ex(np.zeros((70, 100, 3), np.uint8))
    assert f.shape == (1, 1024, 5, 7) and (f >= 0).all()
    torch.save(fseg.build_extractor("res2net", "random", base_channels=8).module.state_dict(), tmp_path / "r2.pt")
    with pytest.raises(ValueError) as e:
        fseg.build_extractor("resnet50", str(tmp_path / "r2.pt"))
    assert str(tmp_path / "r2.pt") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        fseg.build_extractor("resnet50", str(tmp_path / "missing.pth"))


class _FakeViT(nn.Module):
    """timm-like ViT: patch_embed.patch_size, blocks, num_prefix_tokens, forward_features -> tokens."""

    def __init__(self, dim=12, p=16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, p, p)
        self.patch_embed.patch_size = (p, p)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim)])
        self.norm = nn.LayerNorm(dim)
        self.num_prefix_tokens, self.embed_dim = 1, dim

    def forward_features(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        return self.norm(t)


def test_vit_extractor_drops_prefix_and_relus(tmp_path):
    torch.manual_seed(0)
    model = _FakeViT()
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    ex = fseg.TimmViTFeatures("fake", str(tmp_path / "vit.pt"), model=model)
    f = ex(np.full((40, 70, 3), 128, np.uint8))  # padded to 48 x 80 -> 3 x 5 grid
    assert f.shape == (1, 12, 3, 5) and (f >= 0).all()
    x = fseg.pad_to_multiple(ex.normalise(fseg.to_batch(np.full((40, 70, 3), 128, np.uint8))), 16)
    with torch.no_grad():
        t = model.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([model.cls.expand(1, -1, -1), t], 1)
        t = model.blocks[1](model.blocks[0](t))  # last block output, before the final norm
    ref = torch.relu(t[:, 1:].reshape(1, 3, 5, 12).permute(0, 3, 1, 2))
    torch.testing.assert_close(f, ref)


def test_timm_vit_if_installed():
    pytest.importorskip("timm")
    ex = fseg.build_extractor("timm", "random", model_name="vit_tiny_patch16_224")
    f = ex(np.zeros((50, 64, 3), np.uint8))
    assert f.shape[-2:] == (4, 4) and (f >= 0).all()


# ---------------------------------------------------------------- evaluation metrics
def test_matching_and_semantic_scores():
    counts = np.array([[90, 10, 0], [80, 0, 5], [0, 50, 0], [0, 0, 0]])  # 4 clusters x 3 classes
    np.testing.assert_array_equal(match_clusters(counts), [0, 0, 1, -1])
    np.testing.assert_array_equal(match_clusters(counts, normalize=True), [0, 2, 1, -1])  # rare class 2 wins
    s = matching_scores(counts, ["a", "b", "c"])
    assert s["mapping"] == [0, 0, 1, -1]
    assert s["iou"]["a"] == pytest.approx(170 / 185) and s["iou"]["c"] == 0.0
    assert s["f1"]["b"] == pytest.approx(2 * 50 / (2 * 50 + 10))
    s = semantic_scores(np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]]))
    assert np.isnan(s["iou"]["2"]) and s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    c = confusion_counts(np.array([[0, 1], [1, 1]]), np.array([[0, 255], [1, 0]]), 2, 2, ignore_index=255)
    np.testing.assert_array_equal(c, [[1, 0], [1, 1]])


def test_linear_probe_on_separable_concepts():
    rng = np.random.default_rng(0)
    recs = []
    for i in range(6):
        comps = np.zeros((10, 10), np.int64)
        comps[:, 5:] = 1
        gt = comps.copy() if i % 2 == 0 else 1 - comps
        concepts = np.stack([rng.normal(2 * (gt[0, 0]), 0.1, 4), rng.normal(2 * (gt[0, 9]), 0.1, 4)])
        recs.append({"concepts": concepts, "components": comps, "gt": gt})
    conf = fseg.linear_probe(recs, 2, folds=3)
    assert semantic_scores(conf)["miou"] == 1.0


# ---------------------------------------------------------------- bad inputs
def test_bad_masks_and_folders(tmp_path):
    rgb_mask = tmp_path / "colour.png"
    write_image(rgb_mask, np.dstack([np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8) * 9,
                                     np.zeros((8, 8), np.uint8)]))
    with pytest.raises(ImageError, match="colour.png: mask is a colour image"):
        fseg.read_class_mask(rgb_mask)
    ok = tmp_path / "ok.png"
    write_image(ok, np.zeros((8, 9), np.uint8))
    with pytest.raises(ImageError, match="ok.png: mask is 8x9 but its image is 10x10"):
        fseg.read_class_mask(ok, (10, 10, 3))
    (tmp_path / "empty").mkdir()
    ex = fseg.build_extractor("res2net", "random", base_channels=8)
    with pytest.raises(ImageError, match="no image files"):
        fseg.ConceptBankBuilder(ex, tmp_path / "empty", tmp_path / "b.pt").run()


# ---------------------------------------------------------------- end to end
def test_bundle_runs_bank_infer_evaluate(tmp_path, root):
    data, masks = tmp_path / "tiles", tmp_path / "masks"
    for i in range(4):
        rgb, gt = tissue_tile((96 + 8 * i, 128), seed=i)
        write_image(data / f"t{i}.png", rgb)
        write_image(masks / f"t{i}.png", gt)
    (data / "broken.png").write_bytes(b"")  # bad input: reported in one line naming the file, then skipped
    out = tmp_path / "bundle"
    common = ["--bundle_root", str(out), "--dataset_dir", str(data), "--weights_path", "random",
              "--base_channels", "8"]
    env = child_env(OMP_NUM_THREADS=1)

    def run(config, *extra):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / config),
               *common, *extra]
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        return p.stdout + p.stderr

    log = run("fseg_bank.json", "--bank_ks", "[2,3]", "--window", "64", "--windows_per_image", "2")
    assert "broken.png: file is empty" in log
    meta = json.loads((out / "models" / "fseg_bank.pt.json").read_text())
    assert meta["ks"] == [2, 3] and meta["n_images"] == 4 and meta["backbone"] == "res2net-cpu-8"
    run("fseg_infer.json", "--k", "3", "--variant", "B")
    res = out / "eval" / "fseg"
    stems = [f"t{i}" for i in range(4)]
    assert sorted(p.stem for p in (res / "labels").glob("*.png")) == stems
    assert sorted(p.stem for p in (res / "overlays").glob("*.png")) == stems
    from PIL import Image

    lab = np.asarray(Image.open(res / "labels" / "t1.png"))
    assert lab.shape == (104, 128) and lab.max() < 3
    import csv

    rows = list(csv.DictReader(open(res / "area_fractions.csv")))
    assert [r["image"] for r in rows] == stems
    assert abs(sum(float(rows[0][f"concept_{j:03d}"]) for j in range(3)) - 1) < 1e-4
    s = json.loads((res / "summary.json").read_text())
    assert s["n_skipped"] == 1 and "broken.png" in s["skipped"][0]
    run("fseg_evaluate.json", "--label_dir", str(masks), "--eval_ks", "[2,3]", "--class_names", "['blob','stroma']",
        "--probe_folds", "2", "--n_components", "3")
    ev = json.loads((out / "eval" / "fseg_evaluation" / "evaluation.json").read_text())
    assert set(ev["results"]) == {"A_k2", "A_k3", "B_k2", "B_k3"} and ev["n_images"] == 4
    for r in ev["results"].values():
        for mode in ("match", "match_norm", "probe"):
            assert 0 <= r[mode]["miou"] <= 1
    assert ev["results"]["B_k3"]["match"]["miou"] > 0.5  # colour-separable tissues are found
    assert (out / "eval" / "fseg_evaluation" / "per_class.csv").is_file()
    # wrong backbone for the saved bank (here: another width): the workflow stops with the one-line error
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(root / "configs" / "fseg_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), bundle_root=str(out),
                        dataset_dir=str(data), weights_path="random", base_channels=16,
                        output_dir=str(tmp_path / "x"))
    wf.initialize()
    with pytest.raises(Exception) as e:  # MONAI wraps it in "Failed to evaluate ConfigExpression"
        wf.run()
    err = e.value
    while not isinstance(err, fseg.BankMismatchError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, fseg.BankMismatchError) and "\n" not in str(err)
    assert "backbone='res2net-cpu-8' vs 'res2net-cpu-16'" in str(err)




def test_whole_slide_bank_and_segmentation(tmp_path, extractor):
    import csv

    from PIL import Image

    slide = np.full((400, 520, 3), 242, np.uint8)  # glass, with two tissue pieces
    slide[16:240, 32:288] = tissue_tile((224, 256), seed=1)[0]
    slide[200:392, 300:492] = tissue_tile((192, 192), seed=2)[0]
    write_pyramid_tiff(tmp_path / "slide.tif", slide, mpp=0.5)
    b = fseg.ConceptBankBuilder(extractor, tmp_path / "slide.tif", tmp_path / "bank.pt", ks=[2, 3], window=64,
                                tiles_per_slide=12, seed=0).run()
    assert b.meta["n_vectors"] == 12 and b.meta["n_images"] == 1
    s = fseg.FSegRunner(extractor, tmp_path / "bank.pt", tmp_path / "slide.tif", tmp_path / "out", k=3,
                        wsi_tile=128, wsi_margin=32).run()
    assert s["n_images"] == 1
    lab = np.asarray(Image.open(tmp_path / "out" / "labels" / "slide.png"))
    assert lab.shape == (25, 33)  # one pixel per 16-px feature cell of level 0
    assert (lab == 255).any() and (lab < 3).any() and set(np.unique(lab)) <= {0, 1, 2, 255}
    assert lab[2, 4] < 3 and lab[24, 0] == 255  # tissue analysed, blank glass tile skipped
    row = next(csv.DictReader(open(tmp_path / "out" / "area_fractions.csv")))
    assert int(row["tiles"]) >= 2 and abs(sum(float(row[f"concept_{j:03d}"]) for j in range(3)) - 1) < 1e-4
    assert (tmp_path / "out" / "overlays" / "slide.png").is_file()
