# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.gan.train: WGAN-GP + InfoGAN steps, and the cells_extract -> gan_train -> gan_classify runs."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out
from monai.bundle import run as bundle_run

from bundle.gan.cells import CellExtractor, NucleusFinder, load_cells
from bundle.gan.train import InfoGANIteration, generated_grid, gradient_penalty, random_flips
from bundle.io import write_image
from bundle.label_free import child_env
from bundle.networks.infogan import Generator, InfoGANCritic
from bundle.synthetic import synthetic_he_tile

pytestmark = pytest.mark.usefixtures("one_thread")


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


def _run(root, name, **kw):
    return bundle_run(config_file=str(root / "configs" / name), meta_file=str(root / "configs" / "metadata.json"),
                      logging_file=str(root / "configs" / "logging.conf"), **kw)


TRAIN = {"batch_size": 8, "channels": 8, "noise_dim": 8, "n_categories": 3, "critic_steps": 2}


TRAIN_CPU = {**TRAIN, "device": "$torch.device('cpu')"}  # the same-seed guarantee is a CPU one (cuDNN is not bit-exact)


def test_end_to_end_extract_train_resume_classify_export(root, tmp_path, SMALL):
    from bundle.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "data", n_tiles=4, size=128, seed=0, with_labels=False)
    out = tmp_path / "run"
    _run(root, "cells_extract.json", bundle_root=str(out), dataset_dir=str(tmp_path / "data" / "images"), **SMALL)
    cells, table = load_cells(out / "cells")
    assert cells.shape[1:] == (32, 32, 3) and len(table) == len(cells) > 40
    assert {"image", "image_name", "row", "col", "area", "bbox"} <= set(table[0])
    assert (out / "cells" / "cells_preview.png").is_file()

    _run(root, "gan_train.json", bundle_root=str(out), epochs=1, **TRAIN_CPU)
    models = out / "models" / "gan"
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
    again = torch.load(out2 / "models" / "gan" / "model.pt", weights_only=True)
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
        cat_rows = list(csv.DictReader(f))
    assert len(cat_rows) == len(cells)
    feats = [ft for p in sorted((res / "geojson").glob("*.geojson")) for ft in json.loads(p.read_text())["features"]]
    assert len(feats) == len(cells) and len(list((res / "geojson").glob("*.geojson"))) == 4  # QuPath, per image
    names = {ft["properties"]["classification"]["name"]: tuple(ft["properties"]["classification"]["color"])
             for ft in feats}
    assert sorted(names) == sorted({f"Category {r['category']}" for r in cat_rows})
    assert len(set(names.values())) == len(names)  # one colour per category
    ring = feats[0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and feats[0]["properties"]["objectType"] == "detection"
    assert (res / "proportions.png").is_file() and (res / "image_classes.csv").is_file()

    # export the critic (single tensor output `pred`) and check its input / output against the meta file
    meta = root / "configs" / "gan_metadata.json"
    over = {"bundle_root": str(out), "channels": 8, "n_categories": 3,
            "_meta_#network_data_format#outputs#pred#num_channels": 3}
    ts = models / "critic.ts"
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


def test_cli_run_gan_train(root, tmp_path, SMALL):
    """The documented command line (`python -m monai.bundle run ...`) with overrides, from another directory."""
    import subprocess
    import sys

    d = tmp_path / "imgs"
    write_image(d / "a.png", synthetic_he_tile(128, seed=5)[0])
    CellExtractor(normalize="none", finder=NucleusFinder(**SMALL)).run(str(d), tmp_path / "b" / "cells")
    env = child_env(OMP_NUM_THREADS=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "gan_train.json"),
           "--bundle_root", str(tmp_path / "b"), "--epochs", "1", "--batch_size", "8", "--channels", "8",
           "--n_categories", "3"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "b" / "models" / "gan" / "model.pt").is_file()
    assert (tmp_path / "b" / "eval" / "gan" / "generated_latest.png").is_file()
