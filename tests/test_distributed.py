# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.distributed: inference sharded over two torchrun processes (gloo, CPU) gives the files of one
process, and a summary with every image once."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bundle.label_free import child_env


def _infer(root, data, out, extra_configs=(), launcher=(), config="inference.json"):
    configs = [str(root / "configs" / config), *(str(root / "configs" / c) for c in extra_configs)]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--bundle_root", str(root),
           "--dataset_dir", str(data), "--output_dir", str(out), "--tta", "False", "--mpp", "0.25"]
    env = child_env(OMP_NUM_THREADS=1)
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f)), r


def _torchrun() -> list:
    """torchrun on 2 local processes; ``--standalone`` takes a free port (tests may run side by side)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_two_process_sharded_inference_equals_one_process(root, tmp_path):
    import torch.distributed as dist

    from bundle.annotations import read_instance_label
    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    for s in range(5):
        write_image(tmp_path / "in" / f"t{s}.png", synthetic_he_tile(160, seed=s)[0])
    one, _ = _infer(root, tmp_path / "in", tmp_path / "one", launcher=[sys.executable])
    two, r = _infer(root, tmp_path / "in", tmp_path / "two", ["multi_gpu_inference.json"],
                    launcher=_torchrun())
    assert [x["image"] for x in two] == [x["image"] for x in one] == [f"t{s}" for s in range(5)]  # each once
    assert [x["n_nuclei"] for x in two] == [x["n_nuclei"] for x in one]
    for s in range(5):
        a, b = (read_instance_label(tmp_path / d / "labels" / f"t{s}.png") for d in ("one", "two"))
        assert np.array_equal(a, b)
        assert (tmp_path / "two" / "points" / f"t{s}.csv").read_text() == \
            (tmp_path / "one" / "points" / f"t{s}.csv").read_text()
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["n_images"] == 5
    assert (tmp_path / "two" / "report.html").is_file() and not (tmp_path / "two" / ".lock").exists()
    assert "rank" not in "".join(p.name for p in (tmp_path / "two").iterdir())  # no per-rank leftovers


def test_two_process_ki67_inference_merges_counts_and_index(root, tmp_path):
    """ki67_infer.json on two ranks: the same points per tile, the same per-tile rows and the same folder index as one
    process (rank 0 merges every rank's rows and DAB histogram)."""
    from bundle.io import write_image
    from bundle.ki67.data import synthetic_ihc_tile

    for s in range(3):
        write_image(tmp_path / "in" / f"k{s}.png",
                    synthetic_ihc_tile(160, n_positive=5, n_negative=7, radius=7, seed=s)[0])
    one, _ = _infer(root, tmp_path / "in", tmp_path / "one", launcher=[sys.executable], config="ki67_infer.json")
    two, _ = _infer(root, tmp_path / "in", tmp_path / "two", ["multi_gpu_inference.json"], launcher=_torchrun(),
                    config="ki67_infer.json")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in two] == \
        [{k: v for k, v in r.items() if k not in drop} for r in one]
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert a["n_cells"] == b["n_cells"] > 0 and a["ki67_index"] == b["ki67_index"]
    for s in range(3):
        assert (tmp_path / "two" / "points" / f"k{s}.csv").read_text() == \
            (tmp_path / "one" / "points" / f"k{s}.csv").read_text()


def _train(root, bundle_root, data, launcher, images_per_batch, *extra):
    """det_train.json + multi_gpu_train.json, one epoch of two steps, every random augmentation off and whole-tile
    crops (so two runs can see the same global batches), a per-pixel network without batch statistics, plain SGD."""
    configs = [str(root / "configs" / c) for c in ("train.json", "det_train.json", "multi_gpu_train.json")]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--meta_file", str(root / "configs" / "metadata.json"), "--bundle_root", str(bundle_root),
           "--dataset_dir", str(data), "--epochs", "1", "--steps_per_epoch", "2", "--crop_size", "128",
           "--crops_per_image", "1", "--images_per_batch", str(images_per_batch), "--val_interval", "1",
           "--learning_rate", "0.05", "--optimizer#_target_", "torch.optim.SGD",
           "--network_def", "{'_target_': 'torch.nn.Conv2d', 'in_channels': 3, 'out_channels': 2, 'kernel_size': 3, "
           "'padding': 1}", *(a for i in (4, 5, 6) for a in (f"--train#preprocessing#transforms#{i}#prob", "0")),
           *extra]
    r = subprocess.run(cmd, cwd=root, env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    return torch_load(bundle_root / "models" / "det" / "model.pt"), r


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_two_process_ddp_training_equals_one_process_with_the_global_batch(root, tmp_path):
    """Issue 30: ``torchrun`` x 2 (gloo) with multi_gpu_train.json: only rank 0 writes, the checkpoint is the plain
    network's, and the weights after one epoch equal (1e-5) those of one process whose batch is both ranks' batches;
    a rerun resumes under DDP. A single process with a one-image batch (other batches) ends elsewhere."""
    from bundle.annotations import read_instance_label
    from bundle.io import load_datalist, write_image
    from bundle.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "data", n_tiles=6, size=128, seed=0)
    roots = {k: tmp_path / k for k in ("ddp", "one", "small")}
    for it in load_datalist(tmp_path / "data" / "datalist.json"):
        m = (read_instance_label(it["label"]) > 0).astype(np.uint8) * 255
        name = os.path.basename(it["image"]).rsplit(".", 1)[0] + ".png"
        for r in roots.values():
            write_image(r / "eval" / "pseudo_masks" / "masks" / name, m)
    data = tmp_path / "data" / "images"
    ddp, r = _train(root, roots["ddp"], data, _torchrun(), 1)
    one, _ = _train(root, roots["one"], data, [sys.executable], 2)
    small, _ = _train(root, roots["small"], data, [sys.executable], 1)
    assert set(ddp) == {"weight", "bias"}  # no "module." prefix: loads into the plain network
    assert all(float((ddp[k] - one[k]).abs().max()) < 1e-5 for k in ddp)
    assert max(float((small[k] - one[k]).abs().max()) for k in one) > 1e-4  # the test can tell batches apart
    pids = lambda d: {p.name.split(".")[-2] for p in (d / "eval" / "det").glob("events.out.tfevents.*")}  # noqa: E731
    assert len(pids(roots["ddp"])) == 1  # TensorBoard files of one process (rank 0)
    assert not list((roots["ddp"] / "models" / "det").glob("*.part*"))
    _, r2 = _train(root, roots["ddp"], data, _torchrun(), 1, "--epochs", "2")
    assert "resumed from" in r2.stdout + r2.stderr
    last = torch_load(roots["ddp"] / "models" / "det" / "last_checkpoint.pt")
    assert last["trainer"]["iteration"] == 4  # two epochs of two steps


SSL_WORKER = '''
import itertools, sys
import torch, torch.nn as nn
from bundle.distributed import ddp, init_from_env, rank_world
from bundle.nuclei import ssl

class Tiny(nn.Module):  # the ssl Res2Net's heads (scalar / projection / prediction) without batch statistics
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc, self.projector, self.predictor = nn.Linear(8, 1), nn.Linear(8, 6), nn.Linear(6, 6)
    def forward(self, x, head="scalar"):
        f = self.body(x)
        if head == "scalar":
            return self.fc(f)
        z = self.projector(f)
        return z if head == "projection" else torch.cat([z, self.predictor(z)], 1)

views = itertools.cycle([lambda x: x.flip(-1), lambda x: x.flip(-2)])
ssl.augment = lambda x, *a, **k: next(views)(x)  # the same two views in every process
gather = ssl.gather_with_grad
init_from_env("gloo")
rank, world = rank_world()
torch.manual_seed(1)
x = torch.rand(4, 3, 32, 32) * 255
out = {}
for mode in sys.argv[2].split(","):
    ssl.gather_with_grad = gather if mode == "gather" else (lambda z: z)  # local: NT-Xent over the rank's own crops
    for pretext in ("contrastive", "simsiam"):
        net = Tiny()
        model = ddp(net, find_unused_parameters=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(2):
            loss = ssl.pretext_loss(pretext, model, x.chunk(world)[rank])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[mode, pretext] = {k: v.detach().clone() for k, v in net.state_dict().items()}
if rank == 0:
    torch.save(out, sys.argv[1])
'''


def test_ssl_pretexts_under_ddp_equal_one_process_with_the_global_batch(tmp_path):
    """Issue 30, ssl: every pretext head goes through the network's forward (DDP synchronises it), and NT-Xent takes
    its negatives from all ranks (a differentiable gather): 2 gloo processes end with the weights (1e-5) of one process
    with both ranks' crops; without the gather the contrastive run ends elsewhere."""
    worker = tmp_path / "worker.py"
    worker.write_text(SSL_WORKER)
    runs = {}
    for name, launcher, modes in (("ddp", _torchrun(), "gather,local"), ("one", [sys.executable], "gather")):
        r = subprocess.run([*launcher, str(worker), str(tmp_path / f"{name}.pt"), modes], env=child_env(
            OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = torch_load(tmp_path / f"{name}.pt")
    diff = lambda a, b: max(float((a[k] - b[k]).abs().max()) for k in a)  # noqa: E731
    one = lambda pretext: runs["one"]["gather", pretext]  # noqa: E731
    for pretext in ("contrastive", "simsiam"):
        assert diff(runs["ddp"]["gather", pretext], one(pretext)) < 1e-5, pretext
    assert diff(runs["ddp"]["local", "contrastive"], one("contrastive")) > 1e-4  # the test can tell the two apart


def test_ssl_train_config_under_torchrun(root, tmp_path):
    """ssl_train.json + multi_gpu_ssl_train.json on 2 gloo processes: the run finishes, one process writes TensorBoard,
    and the checkpoint loads into the plain Res2Net."""
    import torch

    from bundle.networks import Res2Net
    from bundle.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "data", n_tiles=4, size=96, seed=0)
    configs = [str(root / "configs" / c) for c in ("ssl_train.json", "multi_gpu_ssl_train.json")]
    cmd = [*_torchrun(), "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--meta_file", str(root / "configs" / "metadata.json"), "--bundle_root", str(tmp_path / "b"),
           "--dataset_dir", str(tmp_path / "data" / "images"), "--epochs", "1", "--crop_size", "64",
           "--crops_per_image", "2"]
    r = subprocess.run(cmd, cwd=root, env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    sd = torch_load(tmp_path / "b" / "models" / "ssl" / "model.pt")
    Res2Net(depth="cpu", base_channels=32).load_state_dict(sd)  # plain keys, strict
    assert len({p.name.split(".")[-2] for p in (tmp_path / "b" / "eval").glob("events.out.tfevents.*")}) == 1
    assert torch.isfinite(torch.stack([v.float().sum() for v in sd.values()])).all()


GAN_WORKER = '''
import sys
import numpy as np, torch, torch.nn as nn
from monai.engines import SupervisedTrainer
import bundle.gan.train as gt
from bundle.distributed import init_from_env, rank_world, sampler
from bundle.networks.infogan import Generator, InfoGANCritic

average = gt.average_gradients
init_from_env("gloo")
rank, world = rank_world()
out = {}
for mode in sys.argv[2].split(","):
    gt.average_gradients = average if mode == "average" else (lambda params: None)  # no_average: own gradients
    torch.manual_seed(0)
    G, D = Generator(noise_dim=8, n_categories=3, channels=8), InfoGANCritic(n_categories=3, channels=8)
    for name, m in list(G.named_modules()):  # a generator without batch statistics (they differ per rank on CPUs)
        for child, sub in list(m.named_children()):
            if isinstance(sub, nn.BatchNorm2d):
                setattr(m, child, nn.Identity())
    adam = lambda params: torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.9))
    opt_d, opt_g, opt_q = adam(D.parameters()), adam(G.parameters()), adam(list(G.parameters()) + D.q_parameters())
    ds = gt.CellDataset(sys.argv[3])
    loader = torch.utils.data.DataLoader(ds, batch_size=8 // world, sampler=sampler(ds, seed=0), drop_last=True)
    it = gt.InfoGANIteration(G, opt_g, opt_q, critic_steps=2)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=D,
                                optimizer=opt_d, loss_function=None, iteration_update=it, decollate=False)
    trainer.run()
    out[mode] = {"critic": D.state_dict(), "generator": G.state_dict()}
if rank == 0:
    torch.save(out, sys.argv[1])
if world > 1:
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
'''


def test_gan_under_two_processes_equals_one_process_with_the_global_batch(tmp_path):
    """Issue 30, InfoGAN: WGAN-GP's penalty is a double backward (no DistributedDataParallel wrapper), so every step
    averages its gradients over the ranks and the random codes / flips / interpolates are drawn for the global batch:
    2 gloo processes with batch 4 end with the weights (1e-5) of one process with batch 8 (critic and generator, two
    generator steps); without the averaging they end elsewhere."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cells.npy", rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    worker = tmp_path / "worker.py"
    worker.write_text(GAN_WORKER)
    runs = {}
    for name, launcher, modes in (("ddp", _torchrun(), "average,no_average"), ("one", [sys.executable], "average")):
        r = subprocess.run([*launcher, str(worker), str(tmp_path / f"{name}.pt"), modes, str(tmp_path / "cells.npy")],
                           env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = torch_load(tmp_path / f"{name}.pt")
    diff = lambda a, b: max(float((a[k].float() - b[k].float()).abs().max()) for k in a)  # noqa: E731
    for net in ("critic", "generator"):
        assert diff(runs["ddp"]["average"][net], runs["one"]["average"][net]) < 1e-5, net
        assert diff(runs["ddp"]["no_average"][net], runs["one"]["average"][net]) > 1e-4, net  # tells them apart


def test_gan_train_config_under_torchrun(root, tmp_path):
    """gan_train.json + multi_gpu_gan_train.json on 2 gloo processes: the run finishes, one process writes
    TensorBoard, the history and the generated grid, and the checkpoints load into the plain networks (resume under
    torchrun: the same CheckpointResume handler as in test_two_process_ddp_training_equals_one_process...)."""
    from bundle.networks.infogan import Generator, InfoGANCritic

    rng = np.random.default_rng(0)
    (tmp_path / "b" / "cells").mkdir(parents=True)
    np.save(tmp_path / "b" / "cells" / "cells.npy", rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8))
    configs = [str(root / "configs" / c) for c in ("gan_train.json", "multi_gpu_gan_train.json")]
    cmd = [*_torchrun(), "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--meta_file", str(root / "configs" / "gan_metadata.json"), "--bundle_root", str(tmp_path / "b"),
           "--epochs", "2", "--batch_size", "8", "--channels", "8", "--n_categories", "3"]
    r = subprocess.run(cmd, cwd=root, env=child_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    ckpt = tmp_path / "b" / "models" / "gan"
    InfoGANCritic(n_categories=3, channels=8).load_state_dict(torch_load(ckpt / "model.pt"))  # plain keys, strict
    Generator(noise_dim=32, n_categories=3, channels=8).load_state_dict(torch_load(ckpt / "generator.pt"))
    out = tmp_path / "b" / "eval" / "gan"
    assert [h["epoch"] for h in json.loads((out / "gan_history.json").read_text())] == [1, 2]
    assert (out / "generated_latest.png").is_file()
    assert len({p.name.split(".")[-2] for p in out.glob("events.out.tfevents.*")}) == 1  # rank 0's process only
