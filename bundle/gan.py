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
  flips (the paper's augmentation).
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
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from .io import ImageError, write_csv, write_image, write_json
from .networks.infogan import sample_latent

logger = logging.getLogger(__name__)

__all__ = ["CellDataset", "cells_to_tensor", "random_flips", "gradient_penalty", "InfoGANIteration",
           "InfoGANImageHandler", "SaveModule", "generated_grid", "assign_categories", "trunk_features",
           "category_proportions", "cluster_accuracy", "classify_images", "plot_proportions", "read_image_labels",
           "ClassifyRunner", "CATEGORY_COLOURS"]

CATEGORY_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


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
        from .cells import load_cells

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
    """Independent random up-down and left-right flips of each image of a (B, C, H, W) batch."""
    b = x.shape[0]
    ud = (torch.rand(b, device=x.device) < 0.5).view(b, 1, 1, 1)
    lr = (torch.rand(b, device=x.device) < 0.5).view(b, 1, 1, 1)
    x = torch.where(ud, x.flip(-2), x)
    return torch.where(lr, x.flip(-1), x)


def gradient_penalty(critic_fn, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None):
    """WGAN-GP (Gulrajani et al. 2017): mean over the batch of ``(||grad D(x^)||_2 - 1)^2`` with
    ``x^ = alpha * real + (1 - alpha) * fake``, ``alpha ~ U(0, 1)`` per sample (or given, shape (B,)).
    The result keeps the graph (``create_graph=True``) so it can be minimised."""
    b = real.shape[0]
    if alpha is None:
        alpha = torch.rand(b, device=real.device)
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

    def critic_step(self, critic, optimizer, real: torch.Tensor) -> dict:
        G = self.generator
        K, nz = G.n_categories, G.noise_dim
        with torch.no_grad():
            latent, c = sample_latent(real.shape[0], nz, K, device=real.device)
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
        optimizer.step()
        return {"loss": float(loss.detach()), "d_loss": float(loss.detach()), "gp": float(gp.detach()),
                "wasserstein": float((d_real.mean() - d_fake.mean()).detach())}

    def generator_step(self, critic, batch_size: int, device) -> dict:
        G = self.generator
        latent, c = sample_latent(batch_size, G.noise_dim, G.n_categories, device=device)
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
        self.g_optimizer.step()
        self.g_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(q_params, q_grads):
            p.grad = g
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
    from .cells import montage

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
        from .handlers import atomic_torch_save

        atomic_torch_save(self.module.state_dict(), self.path)


# ----------------------------------------------------------------------------------------------------------------
# use of the trained critic
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _batched(fn, cells: np.ndarray, batch_size: int, device) -> np.ndarray:
    outs = []
    for i in range(0, len(cells), batch_size):
        x = cells_to_tensor(cells[i : i + batch_size]).to(device)
        outs.append(fn(x).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,))


def assign_categories(critic, cells: np.ndarray, batch_size: int = 512, device="cpu"):
    """argmax Q per cell: (N, S, S, 3) uint8 -> (labels (N,) int64, probabilities (N, K) float32)."""
    critic = critic.to(device).eval()
    logq = _batched(critic, np.asarray(cells), batch_size, device)
    probs = np.exp(logq).astype(np.float32)
    return probs.argmax(1).astype(np.int64), probs


def trunk_features(critic, cells: np.ndarray, batch_size: int = 512, device="cpu") -> np.ndarray:
    """(N, C) critic-trunk features (ReLU + global average pool) of uint8 cells."""
    critic = critic.to(device).eval()
    return _batched(critic.features, np.asarray(cells), batch_size, device)


def category_proportions(labels: Sequence[int], groups: Sequence, n_categories: int):
    """Per-group (image) proportion of cells in each category.

    Returns (names: sorted distinct groups, proportions (M, K) float64 with rows summing to 1, counts (M,) int).
    Raises ValueError for an empty input, mismatched lengths or a label outside 0..K-1.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if len(labels) != len(groups):
        raise ValueError(f"labels and groups lengths differ: {len(labels)} vs {len(groups)}")
    if len(labels) == 0:
        raise ValueError("category_proportions needs at least one cell")
    if labels.min() < 0 or labels.max() >= n_categories:
        raise ValueError(f"category labels must be in 0..{n_categories - 1}, got {labels.min()}..{labels.max()}")
    names, inv = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(names), n_categories), np.int64)
    np.add.at(counts, (inv.reshape(-1), labels), 1)
    n = counts.sum(1)
    return [str(x) for x in names], counts / n[:, None], n


def cluster_accuracy(pred: Sequence, true: Sequence) -> float:
    """Accuracy after the best one-to-one mapping of clusters to classes (Hungarian); extra clusters count wrong."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(np.asarray(true), np.asarray(pred))
    r, c = linear_sum_assignment(-table)
    return float(table[r, c].sum() / table.sum())


def classify_images(props: np.ndarray, labels: Sequence | None = None, n_clusters: int | None = None,
                    seed: int = 0, svm_c: float = 1.0) -> dict:
    """Image classification from cell-category proportions (rows of ``props``).

    Unsupervised: K-Means with ``n_clusters`` (default: number of label classes, else 2), 10 inits. With
    ``labels``: its accuracy after one-to-one cluster-to-class mapping, NMI and purity, and a leave-one-out
    ``LinearSVC`` (standardised features) accuracy; plus chance levels (majority-class rate; uniform 1 / classes).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    X = np.asarray(props, np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"need an (M >= 2, K) proportion matrix, got shape {X.shape}")
    y = None if labels is None else np.asarray([str(v) for v in labels])
    if n_clusters is None:
        n_clusters = len(set(y)) if y is not None else 2
    n_clusters = int(min(max(1, n_clusters), len(X)))
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(X)
    res = {"n_images": len(X), "n_clusters": n_clusters, "kmeans": km.labels_.astype(int).tolist()}
    if y is None:
        return res
    from .metrics import clustering_scores

    classes, counts = np.unique(y, return_counts=True)
    res.update({"classes": classes.tolist(), "chance_majority": float(counts.max() / len(y)),
                "chance_uniform": float(1.0 / len(classes)), "kmeans_accuracy": cluster_accuracy(km.labels_, y),
                "kmeans_nmi": float(normalized_mutual_info_score(y, km.labels_)),
                "kmeans_purity": clustering_scores(km.labels_, y)["purity"]})
    if len(classes) >= 2:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        pred = []
        for i in range(len(X)):
            tr = np.arange(len(X)) != i
            if len(set(y[tr])) < 2:
                pred.append(y[tr][0])
                continue
            clf = make_pipeline(StandardScaler(), LinearSVC(C=svm_c, max_iter=20000, random_state=seed))
            clf.fit(X[tr], y[tr])
            pred.append(clf.predict(X[i : i + 1])[0])
        res["svm_loo_pred"] = [str(p) for p in pred]
        res["svm_loo_accuracy"] = float(np.mean(np.asarray(pred) == y))
    return res


def plot_proportions(props: np.ndarray, names: Sequence[str], groups: Sequence[str] | None, path,
                     title: str = "cell-category proportions per image", bar: int = 16) -> np.ndarray:
    """Stacked bars (one per image, categories coloured) grouped by ``groups``, with a legend; written as PNG.
    Returns the uint8 image."""
    from PIL import Image, ImageDraw

    props = np.asarray(props, np.float64)
    M, K = props.shape
    groups = [str(g) for g in (groups if groups is not None else ["all"] * M)]
    order = sorted(range(M), key=lambda i: (groups[i], names[i]))
    ug = list(dict.fromkeys(groups[i] for i in order))
    gap, H, top, left = bar, 220, 30, 40
    W = left + M * (bar + 2) + (len(ug) - 1) * gap + 150
    img = Image.new("RGB", (max(W, 360), top + H + 60), "white")
    dr = ImageDraw.Draw(img)
    dr.text((left, 8), title, fill="black")
    for t in (0.0, 0.5, 1.0):
        yv = top + H - t * H
        dr.line([(left - 4, yv), (left + M * (bar + 2) + (len(ug) - 1) * gap, yv)], fill=(220, 220, 220))
        dr.text((4, yv - 6), f"{t:.1f}", fill="black")
    x = left
    prev = None
    starts = {}
    for i in order:
        if prev is not None and groups[i] != prev:
            x += gap
        starts.setdefault(groups[i], [x, x])
        y0 = top + H
        for k in range(K):
            h = props[i, k] * H
            dr.rectangle([x, y0 - h, x + bar, y0], fill=CATEGORY_COLOURS[k % len(CATEGORY_COLOURS)])
            y0 -= h
        starts[groups[i]][1] = x + bar
        prev = groups[i]
        x += bar + 2
    for gname, (a, b) in starts.items():
        dr.line([(a, top + H + 4), (b, top + H + 4)], fill="black")
        dr.text((a, top + H + 8 + 12 * (ug.index(gname) % 2)), gname[:14], fill="black")
    lx = x + 20
    for k in range(K):
        dr.rectangle([lx, top + 14 * k, lx + 10, top + 14 * k + 10], fill=CATEGORY_COLOURS[k % len(CATEGORY_COLOURS)])
        dr.text((lx + 14, top + 14 * k - 1), f"category {k}", fill="black")
    arr = np.asarray(img)
    write_image(path, arr)
    return arr


def read_image_labels(path, image_column: str = "image", label_column: str | None = None) -> dict:
    """``{image stem: label}`` from a CSV (e.g. MoNuSeg ``organs.csv``: ``image,organ``). The label column defaults
    to the first column other than ``image_column``. Raises ValueError naming the file."""
    import csv

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"{p}: image label file does not exist")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{p}: image label file has no rows")
    cols = list(rows[0])
    if image_column not in cols:
        raise ValueError(f"{p}: no '{image_column}' column (found {cols})")
    label_column = label_column or next((c for c in cols if c != image_column), None)
    if label_column not in cols:
        raise ValueError(f"{p}: no label column '{label_column}' (found {cols})")
    return {Path(r[image_column]).stem: r[label_column] for r in rows}


class ClassifyRunner:
    """Assign every cell its category (argmax Q), write per-image proportions, classify the images.

    Args:
        network: the :class:`bundle.networks.infogan.InfoGANCritic`.  data: the ``cells_extract`` folder
            (``cells.npy`` + ``cells.csv``).  ckpt_path: critic weights (``models/model.pt``).
        labels_csv: optional ``image,label`` CSV; enables the leave-one-out SVM and the accuracies.
        n_clusters: K-Means clusters (default: number of label classes, else 2).

    Writes to ``output_dir``: ``cell_categories.csv`` (per cell: source image, position, category, max prob),
    ``proportions.csv`` (per image: n_cells, p_0..p_K-1, label), ``image_classes.csv`` (K-Means cluster, SVM
    prediction), ``summary.json`` and ``proportions.png``.
    """

    def __init__(self, network, data, output_dir, ckpt_path=None, device="cpu", labels_csv: str | None = None,
                 label_column: str | None = None, n_clusters: int | None = None, seed: int = 0,
                 batch_size: int = 512, min_cells: int = 1):
        self.network, self.data, self.output_dir = network, data, Path(output_dir)
        self.ckpt_path, self.device, self.labels_csv, self.label_column = ckpt_path, device, labels_csv, label_column
        self.n_clusters, self.seed, self.batch_size, self.min_cells = n_clusters, seed, batch_size, int(min_cells)

    def run(self) -> dict:
        from .cells import load_cells
        from .handlers import load_network_weights

        cells, table = load_cells(self.data)
        if not table:
            raise ImageError(f"{self.data}: cells.csv is missing; it names each cell's source image")
        if self.ckpt_path:
            load_network_weights(self.network, self.ckpt_path, map_location=self.device)
        K = self.network.n_categories
        cats, probs = assign_categories(self.network, cells, self.batch_size, self.device)
        rows = [{"index": r.get("index", i), "image_name": r["image_name"], "row": r.get("row"), "col": r.get("col"),
                 "category": int(c), "probability": round(float(p.max()), 4)}
                for i, (r, c, p) in enumerate(zip(table, cats, probs))]
        write_csv(self.output_dir / "cell_categories.csv", rows)
        names, props, counts = category_proportions(cats, [r["image_name"] for r in table], K)
        keep = counts >= self.min_cells
        labels = read_image_labels(self.labels_csv, label_column=self.label_column) if self.labels_csv else {}
        prow = []
        for n, p, c in zip(names, props, counts):
            d = {"image": n, "n_cells": int(c), **{f"p_{k}": round(float(p[k]), 5) for k in range(K)}}
            if labels:
                d["label"] = labels.get(n, "")
            prow.append(d)
        write_csv(self.output_dir / "proportions.csv", prow)
        summary = {"n_cells": int(len(cells)), "n_images": len(names), "n_categories": K,
                   "cells_per_category": np.bincount(cats, minlength=K).tolist()}
        sel = [i for i in range(len(names)) if keep[i] and (not labels or names[i] in labels)]
        if labels and len(sel) < len(names):
            logger.warning(f"{len(names) - len(sel)} image(s) have no label in {self.labels_csv}: not classified")
        y = [labels[names[i]] for i in sel] if labels else None
        if len(sel) >= 2:
            res = classify_images(props[sel], y, self.n_clusters, self.seed)
            crow = []
            for j, i in enumerate(sel):
                d = {"image": names[i], "kmeans_cluster": res["kmeans"][j]}
                if labels:
                    d["label"] = y[j]
                    if "svm_loo_pred" in res:
                        d["svm_loo_pred"] = res["svm_loo_pred"][j]
                crow.append(d)
            write_csv(self.output_dir / "image_classes.csv", crow)
            summary.update({k: v for k, v in res.items() if k not in ("kmeans", "svm_loo_pred")})
        else:
            logger.warning("fewer than 2 images: no image-level classification")
        groups = [labels.get(n, "unlabelled") for n in names] if labels else None
        plot_proportions(props, names, groups, self.output_dir / "proportions.png")
        write_json(self.output_dir / "summary.json", summary)
        logger.info(f"{len(cells)} cells of {len(names)} images -> {self.output_dir}: " +
                    ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if isinstance(v, float)))
        return summary
