# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ignite handlers used by the bundle's trainers.

* :class:`CheckpointResume` — atomic per-epoch checkpoint of network/optimiser/engine state and resume from it.
* :class:`PSMImageHandler` — TensorBoard image grid of a fixed tile, its PSM and its pseudo mask, per epoch.
* :func:`load_network_weights` — load a ``model.pt`` state dict with a one-line error naming the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events

from .io import atomic_path, read_state_dict

logger = logging.getLogger(__name__)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through :func:`bundle.io.atomic_path`: a kill never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, map_location="cpu") -> torch.nn.Module:
    """Load a state dict into ``network`` (strict).

    Raises:
        FileNotFoundError / ValueError: one line naming the file: missing, unreadable, or not matching the network.
    """
    sd = read_state_dict(path, "checkpoint", map_location, hint=" (train first, or pass --ckpt_path)")
    try:
        network.load_state_dict(sd, strict=True)
    except Exception as e:
        first = str(e).replace("\n", " ")[:300]
        raise ValueError(f"{os.fspath(path)}: checkpoint does not match the configured network ({first})") from None
    return network


class CheckpointResume:
    """Save ``{name: obj.state_dict()}`` to ``<ckpt_dir>/<last_name>`` every ``interval`` epochs (atomically) and the
    bare network weights to ``<ckpt_dir>/<model_name>``; on start, resume from ``last_name`` if it exists.

    Args:
        ckpt_dir: folder for checkpoints.  save_dict: e.g. ``{"network": net, "optimizer": opt, "trainer": engine}``;
            the engine itself is added as ``trainer`` on attach, so a rerun continues at the saved epoch.
        model_key: which entry of ``save_dict`` is written alone as ``model_name``.
        resume: set False to start from scratch even if a checkpoint exists.
    """

    def __init__(self, ckpt_dir, save_dict: dict, model_key: str = "network", model_name: str = "model.pt",
                 last_name: str = "last_checkpoint.pt", interval: int = 1, resume: bool = True):
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict, self.model_key = save_dict, model_key
        self.model_name, self.last_name = model_name, last_name
        self.interval, self.resume = max(1, int(interval)), resume

    def attach(self, engine) -> None:
        self.save_dict = {**self.save_dict, "trainer": engine}  # epoch/iteration, so a rerun continues
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine) -> None:
        path = self.ckpt_dir / self.last_name
        if not (self.resume and path.is_file()):
            return
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"{path}: cannot read checkpoint to resume from ({e}); delete it to start over") from None
        max_epochs = engine.state.max_epochs
        if "trainer" in obj:  # ignite stores iteration + epoch_length; allow a larger max_epochs on rerun
            t = obj["trainer"]
            done = t.get("iteration", 0) // max(1, t.get("epoch_length") or 1)
            t["max_epochs"] = max(max_epochs, done)
        for k, v in self.save_dict.items():
            if k not in obj:
                raise ValueError(f"{path}: checkpoint has no '{k}' entry; delete it to start over")
            try:
                v.load_state_dict(obj[k])
            except Exception as e:
                raise ValueError(f"{path}: '{k}' does not match the configuration ({str(e)[:200]}); "
                                 "delete it to start over") from None
        engine.state.max_epochs = max_epochs
        logger.info(f"resumed from {path} at epoch {engine.state.epoch} / {max_epochs}")

    def save(self, engine) -> None:
        atomic_torch_save({k: v.state_dict() for k, v in self.save_dict.items()}, self.ckpt_dir / self.last_name)
        atomic_torch_save(self.save_dict[self.model_key].state_dict(), self.ckpt_dir / self.model_name)


class PSMImageHandler:
    """Every ``interval`` epochs, log [tile | PSM (JET) | pseudo mask] for fixed tiles to TensorBoard.

    Args:
        summary_writer: a ``SummaryWriter`` (or ``log_dir`` to make one).  images: list of image paths.
        network, inferer (:class:`bundle.psm.PSMInferer`), scm (:class:`bundle.clustering.SCM`).
        max_size: tiles are centre-cropped to at most this side to keep it cheap.
    """

    def __init__(self, network, inferer, scm, images, summary_writer=None, log_dir: str = "./runs",
                 interval: int = 1, max_size: int = 384, tag: str = "psm"):
        from torch.utils.tensorboard import SummaryWriter

        from .io import read_rgb

        self.writer = summary_writer if summary_writer is not None else SummaryWriter(log_dir=log_dir)
        self.network, self.inferer, self.scm = network, inferer, scm
        self.interval, self.tag = max(1, int(interval)), tag
        self.tiles = []
        for p in list(images)[:4]:
            img = read_rgb(p)
            h, w = img.shape[:2]
            t, l = max(0, (h - max_size) // 2), max(0, (w - max_size) // 2)
            self.tiles.append(img[t : t + max_size, l : l + max_size])

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine) -> None:
        from .clustering import jet
        from .psm import psm_for_image

        device = next(self.network.parameters()).device
        for i, rgb in enumerate(self.tiles):
            psm = psm_for_image(rgb, self.network, self.inferer, device)
            mask = self.scm(rgb, psm)
            panel = np.concatenate([rgb / 255.0, jet(psm), np.repeat(mask[..., None], 3, -1).astype(np.float32)], 1)
            self.writer.add_image(f"{self.tag}/{i}", panel.astype(np.float32), engine.state.epoch, dataformats="HWC")
        self.writer.flush()
