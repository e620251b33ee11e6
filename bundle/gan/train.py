# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Cell-level WGAN-GP + InfoGAN training on Ignite, unsupervised cell categories and image classification.

Training (``configs/gan_train.json``):

* :class:`CellDataset` -- ``cells.npy`` written by ``configs/cells_extract.json`` -> ``{"image": (3, 32, 32) in
  [-1, 1]}`` items.
* :class:`InfoGANIteration` -- the ``iteration_update`` of MONAI's ``SupervisedTrainer``. Every engine iteration is
  one critic step on one real batch (``loss = D(G(z,c)) - D(x) + gp_weight * GP``, optimiser = the trainer's
  ``optimizer`` over the critic's parameters; with ``mi_in_critic_step`` (default, as in the original InfoGAN where
  L_I enters the D/Q update) ``mi_weight * NLL(Q(G(z,c)), c)`` on the same fakes is added, so trunk + Q head learn
  at every critic step; ``False`` gives the nu_gan schedule where Q learns only in the generator step); every
  ``critic_steps``-th iteration it also takes one generator step, as the reference code: ``g_optimizer`` (over G)
  steps on ``-D(G(z,c))`` and ``q_optimizer`` (over G + trunk + Q head) on ``mi_weight * NLL(Q(G(z,c)), c)``,
  i.e. ``min_{G,Q} max_D V(D,G) - lambda L_I(G,Q)`` of the paper. Real cells get random up-down / left-right
  flips (the paper's augmentation). Under ``torchrun`` (``configs/multi_gpu_gan_train.json``) every optimiser
  step averages the gradients over the processes and every random draw is made for the global batch, so N
  processes train as one process with an N-times larger batch (the generator's BatchNorm aside on CPUs).
* :func:`gradient_penalty` -- WGAN-GP penalty ``E[(||grad_x^ D(x^)||_2 - 1)^2]`` on random interpolates.
* :class:`InfoGANImageHandler` -- per epoch: mean losses to TensorBoard, a grid of generated cells per category
  (fixed noise, one row per category), ``gan_history.json`` with per-epoch seconds and losses.
* :class:`SaveModule` -- atomic ``generator.pt`` per epoch (the critic goes to ``model.pt`` through
  :class:`bundle.handlers.CheckpointResume`, which also saves both optimisers and the generator for resume).

Use (``configs/gan_classify.json``):

* :func:`assign_categories` -- argmax Q per cell; :func:`trunk_features` -- the critic's 128-d (``channels``) feature.
* :func:`category_proportions` -- per-image histogram of categories, normalised to sum 1.
* :func:`classify_images` -- K-Means on the proportions (unsupervised) and, when image labels are given,
  leave-one-out linear SVM; :func:`cluster_accuracy` maps clusters to classes one-to-one (Hungarian).
* :func:`plot_proportions` -- stacked bars of the proportions per image, grouped (PIL only).
* :class:`ClassifyRunner` -- the whole step on a cells folder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from bundle.distributed import average_gradients, global_batch_draw
from bundle.io import write_image, write_json
from bundle.networks.infogan import sample_latent

logger = logging.getLogger(__name__)

__all__ = [
    "cells_to_tensor", "CellDataset", "random_flips", "gradient_penalty", "InfoGANIteration", "generated_grid",
    "InfoGANImageHandler", "SaveModule"
]


def cells_to_tensor(cells: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in [-1, 1] (x / 127.5 - 1, as the reference code)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(cells).transpose(0, 3, 1, 2))).float() / 127.5 - 1.0


class CellDataset(torch.utils.data.Dataset):
    """Cell crops from ``cells.npy`` (a file or the folder ``cells_extract`` wrote) as ``{"image", "index"}``.

    Args:
        path: ``cells.npy`` or its folder.  max_cells: use a random (seeded) subset of at most this many (0 = all).
    Raises:
        ImageError: one line naming the file when it is missing, unreadable, of the wrong shape or empty.
    """

    def __init__(self, path, max_cells: int = 0, seed: int = 0):
        from bundle.gan.cells import load_cells

        cells, _ = load_cells(path)
        idx = np.arange(len(cells))
        if max_cells and len(cells) > max_cells:
            idx = np.sort(np.random.default_rng(seed).choice(len(cells), int(max_cells), replace=False))
        self.indices = idx
        self.cells = torch.from_numpy(np.ascontiguousarray(cells[idx].transpose(0, 3, 1, 2)))  # uint8, compact

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i):
        return {"image": self.cells[i].float() / 127.5 - 1.0, "index": int(self.indices[i])}


def random_flips(x: torch.Tensor) -> torch.Tensor:
    """Independent random up-down and left-right flips of each image of a (B, C, H, W) batch (under several
    processes: this rank's rows of the flips drawn for the global batch,
    :func:`bundle.distributed.global_batch_draw`)."""
    b = x.shape[0]
    ud, lr = global_batch_draw(lambda n: (torch.rand(n, device=x.device), torch.rand(n, device=x.device)), b)
    ud, lr = (ud < 0.5).view(b, 1, 1, 1), (lr < 0.5).view(b, 1, 1, 1)
    x = torch.where(ud, x.flip(-2), x)
    return torch.where(lr, x.flip(-1), x)


def gradient_penalty(critic_fn, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None):
    """WGAN-GP (Gulrajani et al. 2017): mean over the batch of ``(||grad D(x^)||_2 - 1)^2`` with
    ``x^ = alpha * real + (1 - alpha) * fake``, ``alpha ~ U(0, 1)`` per sample (or given, shape (B,)).
    The result keeps the graph (``create_graph=True``) so it can be minimised."""
    b = real.shape[0]
    if alpha is None:
        alpha = global_batch_draw(lambda n: torch.rand(n, device=real.device), b)
    a = alpha.view(b, *([1] * (real.dim() - 1))).to(real)
    x = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    d = critic_fn(x)
    (g,) = torch.autograd.grad(d.sum(), x, create_graph=True)
    return ((g.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


class InfoGANIteration:
    """Ignite iteration function for WGAN-GP + InfoGAN (see the module docstring for the schedule).

    Args:
        generator: :class:`bundle.networks.infogan.Generator`.  g_optimizer: over the generator's parameters.
        q_optimizer: over the generator's parameters + ``critic.q_parameters()`` (trunk + Q head).
            The critic optimiser is the trainer's ``optimizer`` (over ``critic.parameters()``;
            ``critic.d_parameters()`` if ``mi_in_critic_step`` is False) and the critic is the trainer's ``network``.
        mi_in_critic_step: add the MI loss on the critic step's fakes to the critic update (see module docstring).
        critic_steps: critic steps per generator step (5).  gp_weight: lambda_GP (10).  mi_weight: lambda_MI (1).
        flips: random flips of real cells.  image_key: key of the (B, 3, 32, 32) [-1, 1] cells in the batch.
    """

    def __init__(self, generator, g_optimizer, q_optimizer, critic_steps: int = 5, gp_weight: float = 10.0,
                 mi_weight: float = 1.0, flips: bool = True, image_key: str = "image", mi_in_critic_step: bool = True):
        if critic_steps < 1:
            raise ValueError(f"critic_steps must be >= 1, got {critic_steps}")
        self.generator, self.g_optimizer, self.q_optimizer = generator, g_optimizer, q_optimizer
        self.critic_steps, self.gp_weight, self.mi_weight = int(critic_steps), float(gp_weight), float(mi_weight)
        self.flips, self.image_key, self.mi_in_critic_step = flips, image_key, bool(mi_in_critic_step)
        self.last_g = {"g_loss": float("nan"), "q_loss": float("nan"), "q_acc": float("nan")}

    def sample(self, batch_size: int, device):
        """``(latent, c)`` for ``batch_size`` fakes: this rank's rows of the codes drawn for the global batch."""
        G = self.generator
        return global_batch_draw(lambda n: sample_latent(n, G.noise_dim, G.n_categories, device=device), batch_size)

    def critic_step(self, critic, optimizer, real: torch.Tensor) -> dict:
        G = self.generator
        with torch.no_grad():
            latent, c = self.sample(real.shape[0], real.device)
            fake = G(latent)
        optimizer.zero_grad(set_to_none=True)
        d_real = critic.critic(real)
        d_fake, logq = critic.critic_and_q(fake)
        gp = gradient_penalty(critic.critic, real, fake)
        loss = d_fake.mean() - d_real.mean() + self.gp_weight * gp
        if not torch.isfinite(loss):
            raise FloatingPointError(f"critic loss became {float(loss)}")
        total = loss + self.mi_weight * F.nll_loss(logq, c) if self.mi_in_critic_step else loss
        total.backward()
        average_gradients(p for g in optimizer.param_groups for p in g["params"])
        optimizer.step()
        return {"loss": float(loss.detach()), "d_loss": float(loss.detach()), "gp": float(gp.detach()),
                "wasserstein": float((d_real.mean() - d_fake.mean()).detach())}

    def generator_step(self, critic, batch_size: int, device) -> dict:
        G = self.generator
        latent, c = self.sample(batch_size, device)
        fake = G(latent)
        d, logq = critic.critic_and_q(fake)
        g_loss = -d.mean()
        q_loss = self.mi_weight * F.nll_loss(logq, c)
        g_params = [p for g in self.g_optimizer.param_groups for p in g["params"]]
        q_params = [p for g in self.q_optimizer.param_groups for p in g["params"]]
        # both gradients at the same parameters, then two separate Adam steps (as the reference code: G follows
        # -D with optimizerG and the MI loss with optimizerQ, each normalised by its own Adam state)
        g_grads = torch.autograd.grad(g_loss, g_params, retain_graph=True, allow_unused=True)
        q_grads = torch.autograd.grad(q_loss, q_params, allow_unused=True)
        for p, g in zip(g_params, g_grads):
            p.grad = g
        average_gradients(g_params)
        self.g_optimizer.step()
        self.g_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(q_params, q_grads):
            p.grad = g
        average_gradients(q_params)
        self.q_optimizer.step()
        self.q_optimizer.zero_grad(set_to_none=True)
        return {"g_loss": float(g_loss.detach()), "q_loss": float(q_loss.detach()),
                "q_acc": float((logq.argmax(1) == c).float().mean())}

    def __call__(self, engine, batchdata):
        device = engine.state.device if getattr(engine.state, "device", None) is not None else engine.device
        real = batchdata[self.image_key].to(device).float()
        if self.flips:
            real = random_flips(real)
        critic = engine.network
        critic.train()
        self.generator.train()
        out = self.critic_step(critic, engine.optimizer, real)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if engine.state.iteration % self.critic_steps == 0:
            self.last_g = self.generator_step(critic, real.shape[0], device)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {**out, **self.last_g, "image": real.detach()}


@torch.no_grad()
def generated_grid(generator, n_per_category: int = 8, seed: int = 0, pad: int = 2) -> np.ndarray:
    """(K rows x n columns) uint8 RGB grid of generated cells, row k = category k, same noise in every row."""
    from bundle.gan.cells import montage

    K, nz = generator.n_categories, generator.noise_dim
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n_per_category, nz, generator=g)
    c = torch.arange(K).repeat_interleave(n_per_category)
    latent = torch.cat([F.one_hot(c, K).float(), z.repeat(K, 1)], 1)
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    x = generator(latent.to(device)).cpu()
    generator.train(was_training)
    imgs = ((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return montage(imgs, ncol=n_per_category, pad=pad)


class InfoGANImageHandler:
    """Per epoch: epoch means of the iteration outputs (``loss``, ``wasserstein``, ``gp``, ``g_loss``, ``q_loss``,
    ``q_acc``) as TensorBoard scalars ``gan/<name>``, the generated grid per category (``generated/all`` and
    ``generated/category_<k>``), and ``<output_dir>/gan_history.json`` (epoch, seconds, means) plus
    ``generated_latest.png``."""

    KEYS = ("loss", "wasserstein", "gp", "g_loss", "q_loss", "q_acc")

    def __init__(self, generator, log_dir: str = "./runs", summary_writer=None, n_per_category: int = 8,
                 interval: int = 1, seed: int = 0, output_dir: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.generator = generator
        self.writer = summary_writer if summary_writer is not None else SummaryWriter(log_dir=log_dir)
        self.n, self.interval, self.seed = int(n_per_category), max(1, int(interval)), seed
        self.output_dir = Path(output_dir if output_dir is not None else log_dir)
        self.sums: dict = {}
        self.history: list = []
        self.t0 = 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._load_history)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _load_history(self, engine) -> None:
        p = self.output_dir / "gan_history.json"
        if p.is_file() and engine.state.epoch > 0:  # resumed: keep the epochs already logged
            try:
                self.history = [h for h in json.loads(p.read_text()) if h["epoch"] <= engine.state.epoch]
            except Exception:
                self.history = []

    def _start(self, engine) -> None:
        self.sums, self.t0 = {}, time.perf_counter()

    def _accumulate(self, engine) -> None:
        out = engine.state.output or {}
        for k in self.KEYS:
            v = out.get(k) if isinstance(out, dict) else None
            if v is not None and np.isfinite(v):
                s = self.sums.setdefault(k, [0.0, 0])
                s[0] += float(v)
                s[1] += 1

    def _epoch(self, engine) -> None:
        e = engine.state.epoch
        means = {k: s[0] / s[1] for k, s in self.sums.items() if s[1]}
        rec = {"epoch": e, "seconds": round(time.perf_counter() - self.t0, 3),
               "iterations": engine.state.epoch_length, **{k: round(v, 5) for k, v in means.items()}}
        self.history.append(rec)
        for k, v in means.items():
            self.writer.add_scalar(f"gan/{k}", v, e)
        self.writer.add_scalar("gan/epoch_seconds", rec["seconds"], e)
        if e % self.interval == 0 or e == engine.state.max_epochs:
            grid = generated_grid(self.generator, self.n, self.seed)
            self.writer.add_image("generated/all", grid, e, dataformats="HWC")
            rows = np.array_split(grid[2:], self.generator.n_categories, axis=0)
            for k, r in enumerate(rows):
                self.writer.add_image(f"generated/category_{k}", r, e, dataformats="HWC")
            write_image(self.output_dir / "generated_latest.png", grid)
        self.writer.flush()
        write_json(self.output_dir / "gan_history.json", self.history)
        logger.info(f"epoch {e}: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()) + f", {rec['seconds']} s")


class SaveModule:
    """Save ``module.state_dict()`` atomically to ``path`` after every epoch (e.g. ``models/generator.pt``)."""

    def __init__(self, module, path):
        self.module, self.path = module, Path(path)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        from bundle.checkpoints import atomic_torch_save

        atomic_torch_save(self.module.state_dict(), self.path)
