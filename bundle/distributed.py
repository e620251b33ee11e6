# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Several processes over one input folder (issue 30): PyTorch's own ``torch.distributed``, started by ``torchrun``.

Without an initialised process group every function here is the single-process identity, so a runner calls them
unconditionally. With one (``configs/multi_gpu_inference.json`` initialises it: NCCL on GPUs, gloo on CPUs), each
rank takes a disjoint share of the inputs in a stable order (:func:`shard`: by output name, so a rerun takes the same
share), writes its own files, and rank 0 gathers every rank's summary rows (:func:`gather_rows`) and writes the
folder's summary and report once.

Training (``configs/multi_gpu_train.json`` on top of a training config): :func:`ddp` wraps the network in
``DistributedDataParallel``, :func:`sampler` gives each rank its share of every epoch, :func:`unwrap` gives the plain
network to checkpoints and validation, and :func:`rank_zero_first` lets rank 0 write shared files (training labels)
before the others read them. The InfoGAN (``configs/multi_gpu_gan_train.json``) is not wrapped: WGAN-GP's gradient
penalty is a second backward through the critic, which ``DistributedDataParallel`` does not support, so its iteration
averages the gradients itself (:func:`average_gradients`) and draws its random numbers for the global batch
(:func:`global_batch_draw`); :func:`sync_batchnorm` gives the generator global batch statistics on GPUs."""

from __future__ import annotations

from contextlib import ContextDecorator

__all__ = ["rank_world", "shard", "barrier", "gather", "gather_rows", "broadcast", "init_from_env", "ddp", "unwrap",
           "sampler", "rank_zero_first", "average_gradients", "global_batch_draw", "sync_batchnorm"]


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    ...) when it names more than one process and none is initialised yet; ``backend`` None = NCCL when CUDA is
    available, else gloo. Returns True when a group of more than one process is running."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_world_size() > 1


def shard(items: list, names: list[str]) -> list:
    """This rank's share of ``items``: every ``world``-th item, starting at ``rank``, in the order of ``names`` (the
    items' unique output names), so the shares are disjoint, cover every item and do not depend on listing order."""
    rank, world = rank_world()
    if world == 1:
        return list(items)
    order = sorted(range(len(items)), key=lambda i: names[i])
    return [items[i] for i in sorted(order[rank::world])]


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if rank_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def gather(obj) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (rank order), None on the other ranks; ``[obj]`` in one process."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    got = [None] * world if rank == 0 else None
    dist.gather_object(obj, got, dst=0)
    return got


def gather_rows(rows: list, skipped: list, order: list[str] | None = None) -> tuple[list, list]:
    """Every rank's summary ``rows`` and ``skipped`` messages on rank 0 (other ranks get empty lists); rows sorted
    by the position of their ``image`` in ``order`` (the single-process order), so the merged summary equals a
    single process's."""
    if rank_world()[1] == 1:
        return rows, skipped
    got = gather((rows, skipped))
    if got is None:
        return [], []
    all_rows = [r for rs, _ in got for r in rs]
    all_skipped = [s for _, ss in got for s in ss]
    if order is not None:
        pos = {n: i for i, n in enumerate(order)}
        all_rows.sort(key=lambda r: pos.get(str(r.get("image")), len(pos)))
    return all_rows, all_skipped


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (the object itself in one process)."""
    rank, world = rank_world()
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ddp(module, device=None, find_unused_parameters: bool = False):
    """``module`` in ``torch.nn.parallel.DistributedDataParallel`` when a process group of more than one process runs
    (``device_ids`` = its CUDA device), else ``module`` itself: the same config trains on one process or many.
    ``find_unused_parameters``: for networks whose heads are not all used by every step (the ssl Res2Net's scalar,
    projection and predictor heads)."""
    if rank_world()[1] == 1:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device) if device is not None else next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[dev] if dev.type == "cuda" else None,
                                   find_unused_parameters=bool(find_unused_parameters))


def unwrap(module):
    """The plain network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or ``module`` itself): what
    checkpoints save (no ``module.`` prefix, so any later stage or ``inference.json`` loads them) and what rank 0
    validates with (a wrapped forward on one rank alone would wait for the others)."""
    return getattr(module, "module", module)


def sampler(dataset, seed: int = 0, shuffle: bool = True):
    """``torch.utils.data.distributed.DistributedSampler`` over this run's processes (one process: the whole dataset,
    in the same seeded order a two-process run splits between its ranks), so one process with an N-times larger batch
    sees the same global batches as N processes. The MONAI trainers call its ``set_epoch`` every epoch."""
    from torch.utils.data.distributed import DistributedSampler

    rank, world = rank_world()
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=int(seed))


class rank_zero_first(ContextDecorator):
    """``with rank_zero_first(): ...`` (or ``@rank_zero_first()`` on a function): rank 0 runs the block first, the
    other ranks after it (a barrier between), so files that rank 0 writes there (e.g. training labels, written once
    and reused when up to date) exist when the others look for them. No-op in one process. If rank 0 fails inside,
    it skips the barrier and exits; torchrun then stops the others."""

    def __enter__(self):
        if rank_world()[0] > 0:
            barrier()
        return self

    def __exit__(self, *exc):
        if rank_world()[0] == 0 and exc[0] is None:
            barrier()
        return False


def average_gradients(params) -> None:
    """All-reduce the ``.grad`` of ``params`` (an iterable of parameters; those without a gradient are left out, the
    same ones on every rank) and divide by the number of processes, in place: what ``DistributedDataParallel`` does
    in its backward, for training steps it cannot wrap (a double backward, several optimisers over methods other than
    ``forward``). With losses that are means over each rank's batch, the result is the gradient of the mean over the
    global batch. No-op in one process."""
    rank, world = rank_world()
    if world == 1:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def global_batch_draw(draw, n_local: int):
    """This rank's rows of random numbers drawn for the whole global batch: ``draw(n)`` (a tensor or a tuple of
    tensors with ``n`` rows) is called with ``n = n_local x world`` on every rank (same seed, so the same numbers),
    and rank ``r`` keeps rows ``r::world`` -- the rows of the global batch that :func:`sampler` gives it. So latent
    codes, flips or interpolation weights paired with samples are those of one process with the global batch, and
    every rank's generator draws different codes. One process: ``draw(n_local)``."""
    rank, world = rank_world()
    out = draw(int(n_local) * world)
    if world == 1:
        return out
    return tuple(t[rank::world] for t in out) if isinstance(out, tuple) else out[rank::world]


def sync_batchnorm(module):
    """``module`` with its BatchNorm layers as ``torch.nn.SyncBatchNorm`` (batch statistics over every rank's batch)
    when a process group of more than one process runs on CUDA devices; else ``module`` itself. PyTorch's
    SyncBatchNorm runs on GPUs only, so on CPU (gloo) each rank normalises with its own batch. The state dict keys are
    those of the plain module."""
    if rank_world()[1] == 1:
        return module
    import torch

    if next(module.parameters()).device.type != "cuda":
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
