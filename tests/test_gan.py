# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Cell-level InfoGAN (issue 6): networks, WGAN-GP + InfoGAN iteration, cell finder and crops, proportions and
image classification, and an end-to-end run of cells_extract -> gan_train (+ resume) -> gan_classify -> export.
Synthetic data only."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out
from monai.bundle import run as bundle_run

from bundle.cells import (CellExtractor, crop_at_points, crop_cells, find_nuclei, hematoxylin_index, load_cells,
                          read_point_table, read_points, stain_matrix, REF_DAB, REF_EOSIN, REF_HEMATOXYLIN)
from bundle.gan import (InfoGANIteration, category_proportions, classify_images, cluster_accuracy, generated_grid,
                        gradient_penalty, random_flips, read_image_labels, CellDataset)
from bundle.io import ImageError, write_image
from bundle.label_free import child_env
from bundle.networks.infogan import Generator, InfoGANCritic, sample_latent
from bundle.synthetic import synthetic_he_tile

SMALL = {"min_radius": 3, "max_radius": 8, "min_area": 20, "max_area": 400}  # synthetic nuclei are small


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny networks run fastest on one thread; on a loaded 2-core machine 2 threads were ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_network_shapes_and_outputs():
    torch.manual_seed(0)
    G, D = Generator(noise_dim=32, n_categories=5, channels=8), InfoGANCritic(n_categories=5, channels=8)
    latent, c = sample_latent(6, 32, 5)
    assert latent.shape == (6, 37) and c.shape == (6,)
    assert torch.equal(latent[:, :5].argmax(1), c) and torch.all(latent[:, :5].sum(1) == 1)
    x = G(latent)
    assert x.shape == (6, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    logq = D(x)
    assert logq.shape == (6, 5)
    assert torch.allclose(logq.exp().sum(1), torch.ones(6), atol=1e-5)
    d, lq = D.critic_and_q(x)
    assert d.shape == (6,) and torch.allclose(lq, logq) and torch.allclose(d, D.critic(x))
    assert D.features(x).shape == (6, 8)
    assert D(torch.randn(2, 3, 48, 40)).shape == (2, 5)  # global pooling: other sizes work too
    Dn = InfoGANCritic(n_categories=5, channels=8, q_norm=True)
    f = Dn.features(x)
    assert torch.allclose(Dn(x), Dn(x * 1.0), atol=1e-6) and torch.allclose(Dn._q(3 * f), Dn._q(f), atol=1e-5)
    with pytest.raises(ValueError, match="latent"):
        G(torch.randn(2, 36))
    # the parameter split used by the two critic-side optimisers
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(D.d_parameters()) & ids(D.q_parameters()) == ids(D.trunk.parameters())
    assert not ids(D.d_head.parameters()) & ids(D.q_parameters())


def test_gradient_penalty_known_case():
    w = torch.zeros(1, 3, 4, 4)
    w[0, 0, 0, 0], w[0, 1, 2, 3] = 3.0, 4.0  # ||w|| = 5 -> gradient norm 5 everywhere -> GP = (5 - 1)^2 = 16
    critic = lambda x: (x * w).sum(dim=(1, 2, 3))  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert float(gradient_penalty(critic, real, fake)) == pytest.approx(16.0, rel=1e-5)
    assert float(gradient_penalty(lambda x: (x * w / 5).sum(dim=(1, 2, 3)), real, fake)) == pytest.approx(0, abs=1e-6)
    # quadratic critic D(x) = 0.5 ||x||^2: grad = x^, with alpha = 1 that is `real`
    real = torch.zeros(2, 1, 1, 2)
    real[0, 0, 0, 0], real[1, 0, 0, 1] = 2.0, 3.0  # norms 2 and 3 -> ((2-1)^2 + (3-1)^2) / 2 = 2.5
    gp = gradient_penalty(lambda x: 0.5 * (x ** 2).sum(dim=(1, 2, 3)), real, torch.zeros_like(real),
                          alpha=torch.ones(2))
    assert float(gp.detach()) == pytest.approx(2.5)


def _params(m):
    return torch.cat([p.detach().flatten().clone() for p in m.parameters()])


def _nets(lr=1e-3, ch=8, k=4):
    torch.manual_seed(0)
    G, D = Generator(noise_dim=8, n_categories=k, channels=ch), InfoGANCritic(n_categories=k, channels=ch)
    opt_d = torch.optim.Adam(D.d_parameters(), lr=lr, betas=(0.5, 0.9))
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_q = torch.optim.Adam(list(G.parameters()) + D.q_parameters(), lr=lr, betas=(0.5, 0.9))
    return G, D, opt_d, opt_g, opt_q


def test_iteration_steps_update_the_right_parts_and_mi_loss_decreases():
    G, D, opt_d, opt_g, opt_q = _nets()
    it = InfoGANIteration(G, opt_g, opt_q, critic_steps=5)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    before = {n: _params(m) for n, m in [("G", G), ("trunk", D.trunk), ("d", D.d_head), ("q", D.q_head)]}
    out = it.critic_step(D, opt_d, real)
    assert np.isfinite(out["loss"]) and out["gp"] >= 0
    assert not torch.equal(before["trunk"], _params(D.trunk)) and not torch.equal(before["d"], _params(D.d_head))
    assert torch.equal(before["q"], _params(D.q_head)) and torch.equal(before["G"], _params(G))
    mid = {n: _params(m) for n, m in [("G", G), ("d", D.d_head), ("q", D.q_head)]}
    it.generator_step(D, 8, "cpu")
    assert not torch.equal(mid["G"], _params(G)) and not torch.equal(mid["q"], _params(D.q_head))
    assert torch.equal(mid["d"], _params(D.d_head))  # the generator loss does not train the critic head
    # the mutual-information term is learnt: Q recovers c from G(z, c) after some generator steps
    G, D, opt_d, opt_g, opt_q = _nets(ch=16)
    it = InfoGANIteration(G, opt_g, opt_q, critic_steps=5)
    q = [it.generator_step(D, 32, "cpu")["q_loss"] for _ in range(60)]
    assert np.mean(q[:5]) > 0.9 * np.log(4) and np.mean(q[-5:]) < 0.6 * np.log(4), q


@pytest.mark.parametrize("mi_in_critic_step", [True, False])
def test_critic_step_mi_term_is_switchable(mi_in_critic_step):
    G, D, _, opt_g, opt_q = _nets()
    opt_all = torch.optim.Adam(D.parameters(), lr=1e-3)
    it = InfoGANIteration(G, opt_g, opt_q, mi_in_critic_step=mi_in_critic_step)
    q0 = _params(D.q_head)
    it.critic_step(D, opt_all, torch.rand(8, 3, 32, 32) * 2 - 1)
    assert torch.equal(q0, _params(D.q_head)) != mi_in_critic_step


def test_paper_profile_merges(root):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([str(root / "configs" / "gan_train.json"), str(root / "configs" / "gan_profile_paper.json")])
    p.parse()
    assert p.get_parsed_content("network_def").channels == 128
    assert p.get_parsed_content("generator_def").channels == 128
    assert p["batch_size"] == 10 and p["learning_rate"] == 1e-4 and p["critic_steps"] == 5
    assert p["gp_weight"] == 10 and p["mi_weight"] == 1 and p["noise_dim"] == 32 and p["n_categories"] == 5
    assert not p.get_parsed_content("network_def").q_norm and not p["mi_in_critic_step"]


class _Engine:  # the parts of an Ignite engine the iteration function uses
    def __init__(self, net, opt):
        self.network, self.optimizer, self.device = net, opt, torch.device("cpu")
        self.state = type("S", (), {"iteration": 0, "device": torch.device("cpu")})()
        self.events = []

    def fire_event(self, e):
        self.events.append(e)


def test_iteration_schedule_five_critic_steps_per_generator_step():
    G, D, opt_d, opt_g, opt_q = _nets()
    it = InfoGANIteration(G, opt_g, opt_q, critic_steps=5)
    eng = _Engine(D, opt_d)
    g0 = _params(G)
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1}
    for i in range(1, 5):
        eng.state.iteration = i
        out = it(eng, batch)
        assert np.isnan(out["g_loss"]) and torch.equal(g0, _params(G))
    eng.state.iteration = 5
    out = it(eng, batch)
    assert np.isfinite(out["g_loss"]) and not torch.equal(g0, _params(G))
    with pytest.raises(ValueError):
        InfoGANIteration(G, opt_g, opt_q, critic_steps=0)


def test_random_flips_are_flips():
    torch.manual_seed(1)
    x = torch.randn(16, 3, 5, 7)
    y = random_flips(x)
    for a, b in zip(x, y):
        assert any(torch.equal(b, f) for f in (a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)))


def test_generated_grid_rows_are_categories():
    G = Generator(noise_dim=4, n_categories=3, channels=8)
    grid = generated_grid(G, n_per_category=5, pad=2)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 34 + 2, 5 * 34 + 2, 3)
    assert G.training  # restored


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


def test_stain_identification_and_nuclei_finder():
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


def test_crops_are_white_padded():
    rgb, inst = synthetic_he_tile(128, seed=1)
    crops, rows = crop_cells(rgb, inst)
    assert crops.shape == (inst.max(), 32, 32, 3) and crops.dtype == np.uint8 and len(rows) == len(crops)
    assert np.all(crops[:, 0, 0] == 255) and np.all(crops[:, -1, -1] == 255)  # corners are background
    big = np.zeros((128, 128), np.int32)
    big[10:70, 20:50] = 1  # 60 x 30 object -> shrunk to fit 32
    c, r = crop_cells(rgb, big)
    assert c.shape == (1, 32, 32, 3) and r[0]["area"] == 1800
    pts = np.array([[64, 64], [5, 5], [200, 10], [-1, 3]])
    c, r = crop_at_points(rgb, pts, window=32, mask_mode="disc")
    assert c.shape == (2, 32, 32, 3) and np.all(c[:, 0, 0] == 255)  # outside points dropped
    c2, _ = crop_at_points(rgb, pts[:1], window=48, mask_mode="stain")
    assert c2.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="mask_mode"):
        crop_at_points(rgb, pts, mask_mode="box")


def test_bad_inputs_one_line_errors(tmp_path):
    missing = tmp_path / "nowhere" / "cells.npy"
    for call in (lambda: load_cells(missing), lambda: CellDataset(missing)):
        with pytest.raises(ImageError) as e:
            call()
        assert str(missing) in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "cells.npy"
    np.save(bad, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ImageError, match="expected"):
        load_cells(bad)
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageError) as e:
        load_cells(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    p = tmp_path / "pts.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError) as e:
        read_points(p)
    assert str(p) in str(e.value)
    assert read_points(_write_points(tmp_path)).shape == (2, 2)
    lab = tmp_path / "labels.csv"
    lab.write_text("name,organ\nx,y\n")
    with pytest.raises(ValueError, match="labels.csv.*'image'"):
        read_image_labels(lab)
    # a folder with one good and one corrupt image: the corrupt one is skipped and named in the summary
    d = tmp_path / "imgs"
    d.mkdir()
    write_image(d / "good.png", synthetic_he_tile(128, seed=2)[0])
    (d / "broken.png").write_bytes(b"not a png")
    s = CellExtractor(**SMALL).run(str(d), tmp_path / "out")
    assert s["n_images"] == 1 and s["n_skipped"] == 1 and "broken.png" in s["skipped"][0]
    (d / "good.png").unlink()
    with pytest.raises(ImageError, match="no image could be processed"):
        CellExtractor(**SMALL).run(str(d), tmp_path / "out2")


def _write_points(tmp_path):
    p = tmp_path / "pts_ok.csv"
    p.write_text("x,y\n3,4\n10,20\n")
    assert read_points(p).tolist() == [[4.0, 3.0], [20.0, 10.0]]
    return p


def test_read_point_table_classes_and_scores(tmp_path):
    """The bundle's own points CSV (image,x,y,class,score) reads back with classes and scores; missing columns give
    '' / nan; a bad score is a one-line error naming the file."""
    p = tmp_path / "tile.csv"
    p.write_text("image,x,y,class,score\ntile,3,4,Positive,0.9\ntile,10,20,Negative,0.25\n")
    t = read_point_table(p)
    assert t["points"].tolist() == [[4.0, 3.0], [20.0, 10.0]]
    assert t["class"].tolist() == ["Positive", "Negative"] and np.allclose(t["score"], [0.9, 0.25])
    t = read_point_table(_write_points(tmp_path))
    assert t["class"].tolist() == ["", ""] and np.isnan(t["score"]).all()
    p.write_text("image,x,y,class,score\n")
    assert read_point_table(p)["points"].shape == (0, 2)
    p.write_text("image,x,y,class,score\ntile,3,4,Positive,high\n")
    with pytest.raises(ValueError) as e:
        read_point_table(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def _run(root, name, **kw):
    return bundle_run(config_file=str(root / "configs" / name), meta_file=str(root / "configs" / "metadata.json"),
                      logging_file=str(root / "configs" / "logging.conf"), **kw)


TRAIN = {"batch_size": 8, "channels": 8, "noise_dim": 8, "n_categories": 3, "critic_steps": 2}
TRAIN_CPU = {**TRAIN, "device": "$torch.device('cpu')"}  # the same-seed guarantee is a CPU one (cuDNN is not bit-exact)


def test_end_to_end_extract_train_resume_classify_export(root, tmp_path):
    from bundle.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "data", n_tiles=4, size=128, seed=0, with_labels=False)
    out = tmp_path / "run"
    _run(root, "cells_extract.json", bundle_root=str(out), dataset_dir=str(tmp_path / "data" / "images"), **SMALL)
    cells, table = load_cells(out / "cells")
    assert cells.shape[1:] == (32, 32, 3) and len(table) == len(cells) > 40
    assert {"image", "image_name", "row", "col", "area", "bbox"} <= set(table[0])
    assert (out / "cells" / "cells_preview.png").is_file()

    _run(root, "gan_train.json", bundle_root=str(out), epochs=1, **TRAIN_CPU)
    models = out / "models"
    ck = torch.load(models / "last_checkpoint.pt", weights_only=False)
    saved_epoch = lambda c: c["trainer"]["iteration"] // c["trainer"]["epoch_length"]  # noqa: E731
    assert saved_epoch(ck) == 1
    assert {"network", "generator", "optimizer", "g_optimizer", "q_optimizer"} <= set(ck)
    assert (models / "model.pt").is_file() and (models / "generator.pt").is_file()
    hist = json.loads((out / "eval" / "gan" / "gan_history.json").read_text())
    assert len(hist) == 1 and hist[0]["seconds"] > 0 and np.isfinite(hist[0]["g_loss"])
    assert list((out / "eval" / "gan").glob("events.out.tfevents.*"))
    epoch1 = torch.load(models / "model.pt", weights_only=True)

    # same seed, same weights (CPU): a second run from scratch in another bundle root
    out2 = tmp_path / "run2"
    shutil.copytree(out / "cells", out2 / "cells")
    _run(root, "gan_train.json", bundle_root=str(out2), epochs=1, **TRAIN_CPU)
    again = torch.load(out2 / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(epoch1[k], again[k]) for k in epoch1)

    # resume: a rerun with epochs=2 continues from the saved epoch (marker weight survives, epoch 2 saved)
    ck["network"]["d_head.bias"].fill_(123.0)
    torch.save(ck, models / "last_checkpoint.pt")
    _run(root, "gan_train.json", bundle_root=str(out), epochs=2, **TRAIN_CPU)
    ck2 = torch.load(models / "last_checkpoint.pt", weights_only=False)
    assert saved_epoch(ck2) == 2 and abs(float(ck2["network"]["d_head.bias"]) - 123.0) < 1.0
    hist = json.loads((out / "eval" / "gan" / "gan_history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]

    # classification with image labels
    labels = tmp_path / "groups.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group"])
        for i in range(4):
            w.writerow([f"tile_{i:02d}", "even" if i % 2 == 0 else "odd"])
    _run(root, "gan_classify.json", bundle_root=str(out), channels=8, n_categories=3, labels_csv=str(labels))
    res = out / "eval" / "gan_classify"
    s = json.loads((res / "summary.json").read_text())
    assert s["n_cells"] == len(cells) and s["n_images"] == 4 and sum(s["cells_per_category"]) == len(cells)
    assert 0 <= s["kmeans_accuracy"] <= 1 and 0 <= s["svm_loo_accuracy"] <= 1 and s["chance_majority"] == 0.5
    with open(res / "proportions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(abs(sum(float(r[f"p_{k}"]) for k in range(3)) - 1) < 1e-3 for r in rows)
    with open(res / "cell_categories.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(cells)
    assert (res / "proportions.png").is_file() and (res / "image_classes.csv").is_file()

    # export the critic (single tensor output `pred`) and check its input / output against the meta file
    meta = root / "configs" / "gan_metadata.json"
    over = {"bundle_root": str(out), "channels": 8, "n_categories": 3,
            "_meta_#network_data_format#outputs#pred#num_channels": 3}
    ts = out / "models" / "critic.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(models / "model.pt"), meta_file=str(meta),
                config_file=str(root / "configs" / "gan_classify.json"), **over)
    net = torch.jit.load(str(ts))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = InfoGANCritic(n_categories=3, channels=8, q_norm=True)
    ref.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    assert torch.allclose(net(x), ref.eval()(x), atol=1e-5)
    verify_net_in_out(net_id="network_def", meta_file=str(meta),
                      config_file=str(root / "configs" / "gan_classify.json"), **over)

    # a checkpoint that does not match the configured network: one-line error naming the file
    with pytest.raises(Exception) as e:
        _run(root, "gan_classify.json", bundle_root=str(out), channels=16, n_categories=3)
    err = e.value
    while err.__cause__ is not None:  # MONAI wraps errors raised inside "$@runner.run()"
        err = err.__cause__
    assert "model.pt: checkpoint does not match" in str(err) and "\n" not in str(err)
    # training on a missing cell file: one line naming it
    with pytest.raises(Exception) as e:
        _run(root, "gan_train.json", bundle_root=str(tmp_path / "empty"), epochs=1, **TRAIN_CPU)
    err = e.value
    while err.__cause__ is not None:
        err = err.__cause__
    assert "cells.npy: cell file does not exist" in str(err) and "\n" not in str(err)


def test_cli_run_gan_train(root, tmp_path):
    """The documented command line (`python -m monai.bundle run ...`) with overrides, from another directory."""
    import subprocess
    import sys

    d = tmp_path / "imgs"
    write_image(d / "a.png", synthetic_he_tile(128, seed=5)[0])
    CellExtractor(normalize="none", **SMALL).run(str(d), tmp_path / "b" / "cells")
    env = child_env(OMP_NUM_THREADS=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "gan_train.json"),
           "--bundle_root", str(tmp_path / "b"), "--epochs", "1", "--batch_size", "8", "--channels", "8",
           "--n_categories", "3"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "b" / "models" / "model.pt").is_file()
    assert (tmp_path / "b" / "eval" / "gan" / "generated_latest.png").is_file()
