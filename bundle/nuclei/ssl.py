# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Self-supervised pretext tasks for the activation network, as Ignite iteration functions.

Every pretext takes a batch of RGB crops (B, 3, H, W) in [0, 255] and returns a scalar loss:

* ``similarity`` (PSM reference): |f(x) - f(rot180 x)|.
* ``triplet``: max(0, |f(a) - f(p)| - |f(a) - f(n)| + margin), p = rot180(a), n = another crop of the batch.
* ``rotation``: regress k from f(rot90^k x), |f - k|.
* ``mean_pixel``: regress the crop's mean intensity in [0, 1].
* ``simsiam``: two augmented views, negative cosine of predictor(z1) vs stop-grad(z2), symmetrised.
* ``contrastive``: SimCLR NT-Xent on projector outputs of two augmented views (temperature ``tau``).

:class:`PretextIteration` is passed as ``iteration_update`` to MONAI's ``SupervisedTrainer``; its output dict has
``loss`` (float) and ``image`` (the batch) for handlers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents

from bundle.transforms import normalize_rgb

__all__ = ["PRETEXTS", "augment", "nt_xent", "pretext_loss", "PretextIteration"]

PRETEXTS = ("similarity", "triplet", "rotation", "mean_pixel", "simsiam", "contrastive")


def augment(x: torch.Tensor, min_scale: float = 0.6, jitter: float = 0.2) -> torch.Tensor:
    """Random view of each crop (B, 3, H, W) in [0, 255]: resized crop, flips, rot90, colour jitter. Same shape."""
    B, _, H, W = x.shape
    out = []
    for i in range(B):
        s = float(torch.empty(1).uniform_(min_scale, 1.0))
        h, w = max(8, int(H * s)), max(8, int(W * s))
        t = int(torch.randint(0, H - h + 1, (1,)))
        l = int(torch.randint(0, W - w + 1, (1,)))
        v = x[i : i + 1, :, t : t + h, l : l + w]
        if (h, w) != (H, W):
            v = F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False)
        if torch.rand(1) < 0.5:
            v = v.flip(-1)
        v = torch.rot90(v, int(torch.randint(0, 4, (1,))), (-2, -1))
        # drawn on the CPU generator (same stream on every device), then moved to the crop's device
        b = float(1 + jitter * (2 * torch.rand(1) - 1))
        c = float(1 + jitter * (2 * torch.rand(1) - 1))
        sat = float(1 + 1.5 * jitter * (2 * torch.rand(1) - 1))
        gain = (1 + 0.25 * jitter * (2 * torch.rand(1, 3, 1, 1) - 1)).to(v)
        grey = v.mean(1, keepdim=True)
        v = grey + sat * (v - grey)
        m = v.mean()
        v = (m + c * (v - m)) * b * gain
        out.append(v.clamp(0, 255))
    return torch.cat(out)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """SimCLR loss of two (B, D) projections; positives are the same index in the other view."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / tau
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """(B, D) -> the (world x B, D) rows of every process in rank order, differentiable (:class:`_GatherRows`), so
    that NT-Xent under DDP takes its negatives from the global batch, as one process with that batch does; ``z``
    itself without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _GatherRows.apply(z)


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-sized (B, D) blocks; backward sums every process's gradient of the whole (world x B, D)
    and keeps this rank's block (all_reduce + slice: gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, z):
        import torch.distributed as dist

        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), z.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def pretext_loss(name: str, network, x: torch.Tensor, margin: float = 10.0, tau: float = 0.2) -> torch.Tensor:
    """Loss of pretext ``name`` for crops ``x`` (B, 3, H, W) in [0, 255]."""
    f = lambda v: network(normalize_rgb(v))[:, 0]  # noqa: E731
    if name == "similarity":
        return (f(x) - f(torch.rot90(x, 2, (-2, -1)))).abs().mean()
    if name == "triplet":
        if x.shape[0] < 2:
            raise ValueError("the triplet pretext needs batch_size >= 2 (negatives come from other crops)")
        a, p, n = f(x), f(torch.rot90(x, 2, (-2, -1))), f(torch.roll(x, 1, 0))
        return F.relu((a - p).abs() - (a - n).abs() + margin).mean()
    if name == "rotation":
        k = torch.randint(0, 4, (x.shape[0],))
        xr = torch.stack([torch.rot90(x[i], int(k[i]), (-2, -1)) for i in range(x.shape[0])])
        return (f(xr) - k.to(x.device).float()).abs().mean()
    if name == "mean_pixel":
        return (f(x) - x.mean(dim=(1, 2, 3)) / 255.0).abs().mean()
    if name in ("simsiam", "contrastive"):
        if x.shape[0] < 2:
            raise ValueError(f"the {name} pretext needs batch_size >= 2")
        v1, v2 = augment(x), augment(x)
        if name == "contrastive":
            z1, z2 = network(normalize_rgb(v1), "projection"), network(normalize_rgb(v2), "projection")
            return nt_xent(gather_with_grad(z1), gather_with_grad(z2), tau)
        z1, p1 = network(normalize_rgb(v1), "prediction").chunk(2, dim=1)
        z2, p2 = network(normalize_rgb(v2), "prediction").chunk(2, dim=1)
        cos = lambda p, z: F.cosine_similarity(p, z.detach(), dim=1).mean()  # noqa: E731
        return -0.5 * (cos(p1, z2) + cos(p2, z1))
    raise ValueError(f"unknown pretext {name!r}; choose one of {PRETEXTS}")


class PretextIteration:
    """Ignite iteration function: one optimiser step of a pretext task.

    Args:
        pretext: one of :data:`PRETEXTS`.  margin: triplet margin.  tau: NT-Xent temperature.
        image_key: key of the (B, 3, H, W) [0, 255] crops in the batch dict.
    """

    def __init__(self, pretext: str = "contrastive", margin: float = 10.0, tau: float = 0.2, image_key: str = "image"):
        if pretext not in PRETEXTS:
            raise ValueError(f"unknown pretext {pretext!r}; choose one of {PRETEXTS}")
        self.pretext, self.margin, self.tau, self.image_key = pretext, margin, tau, image_key

    def __call__(self, engine, batchdata):
        x = batchdata[self.image_key].to(engine.state.device if hasattr(engine.state, "device") else engine.device)
        x = x.float()
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        loss = pretext_loss(self.pretext, engine.network, x, self.margin, self.tau)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretext loss became {loss.item()} at iteration {engine.state.iteration}")
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {"image": x.detach(), "loss": float(loss.detach())}
