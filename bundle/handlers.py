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

from .io import atomic_path, read_state_dict, write_json

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


def resunet_checkpoint_dims(path: str | os.PathLike) -> tuple[int, int]:
    """``(out_channels, base_channels)`` of a saved :class:`bundle.networks.ResUNet34`, read from its 1x1 head
    (weight shape (out_channels, base_channels, 1, 1)). One-line errors as :func:`load_network_weights`."""
    sd = read_state_dict(path, "checkpoint")
    if "head.weight" not in sd:
        raise ValueError(f"{os.fspath(path)}: not a ResUNet-34 checkpoint (no 'head.weight')")
    out_ch, width = sd["head.weight"].shape[:2]
    return int(out_ch), int(width)


def resunet_input_channels(path: str | os.PathLike, default: int = 3) -> int:
    """Input channels of a saved :class:`bundle.networks.ResUNet34` (3 = RGB, 4 = RGB + haematoxylin channel), from
    its stem convolution; ``default`` when the file does not exist yet (the runner then reports it missing)."""
    if not os.path.exists(path):
        return default
    sd = read_state_dict(path, "checkpoint")
    w = sd.get("encoder.conv1.weight")
    return int(w.shape[1]) if w is not None else default


class CheckpointResume:
    """Save ``{name: obj.state_dict()}`` to ``<ckpt_dir>/<last_name>`` every ``interval`` epochs (atomically) and the
    bare network weights to ``<ckpt_dir>/<model_name>``; on start, resume from ``last_name`` if it exists.

    Args:
        ckpt_dir: folder for checkpoints.  save_dict: e.g. ``{"network": net, "optimizer": opt, "trainer": engine}``;
            the engine itself is added as ``trainer`` on attach, so a rerun continues at the saved epoch.
        model_key: which entry of ``save_dict`` is written alone as ``model_name``.
        resume: set False to start from scratch even if a checkpoint exists.
        settings: written beside the weights as ``<ckpt_dir>/settings.json`` (e.g. ``{"mpp": 0.25}``, the pixel
            size the network was trained at, read back by :func:`trained_mpp`); ``None`` writes nothing.
    """

    def __init__(self, ckpt_dir, save_dict: dict, model_key: str = "network", model_name: str = "model.pt",
                 last_name: str = "last_checkpoint.pt", interval: int = 1, resume: bool = True,
                 settings: dict | None = None):
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict, self.model_key = save_dict, model_key
        self.model_name, self.last_name = model_name, last_name
        self.interval, self.resume = max(1, int(interval)), resume
        self.settings = dict(settings) if settings else None

    def attach(self, engine) -> None:
        self.save_dict = {**self.save_dict, "trainer": engine}  # epoch/iteration, so a rerun continues
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine) -> None:
        path = self.ckpt_dir / self.last_name
        if not (self.resume and path.is_file()):
            return
        if self.settings is not None:
            self._check_settings(path)
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

    def _check_settings(self, path) -> None:
        """Resuming continues the training the saved settings describe: a different setting (e.g. another ``mpp``)
        is a one-line error; a checkpoint saved without settings (bundle < 0.8.0) gets none written, as they are
        unknown."""
        saved = training_settings(self.ckpt_dir)
        if saved is None:
            logger.warning(f"{path}: resuming a checkpoint saved without {SETTINGS_NAME}; its training settings "
                           f"({', '.join(self.settings)}) stay unrecorded")
            self.settings = None
            return
        diff = {k: (saved.get(k), v) for k, v in self.settings.items() if k in saved and saved[k] != v}
        if diff:
            k, (old, new) = next(iter(diff.items()))
            raise ValueError(f"{path}: trained with {k} {old}, the configuration says {new}; use another bundle_root "
                             "or --resume False to start over")

    def save(self, engine) -> None:
        atomic_torch_save({k: v.state_dict() for k, v in self.save_dict.items()}, self.ckpt_dir / self.last_name)
        atomic_torch_save(self.save_dict[self.model_key].state_dict(), self.ckpt_dir / self.model_name)
        if self.settings is not None:
            write_json(self.ckpt_dir / SETTINGS_NAME, self.settings)


SETTINGS_NAME = "settings.json"


def training_settings(ckpt_dir) -> dict | None:
    """The ``settings.json`` that :class:`CheckpointResume` writes into ``ckpt_dir``, or None when there is none
    (checkpoints written before bundle 0.8.0). An unreadable file is a one-line error."""
    import json

    path = Path(ckpt_dir) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: cannot read the training settings ({e})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: cannot read the training settings (not a JSON object)")
    return saved


def trained_mpp(ckpt_path, mpp: float | None = None,
                hint: str = "pass --network_mpp 0.25 if it was trained at 40x") -> float | None:
    """The pixel size (um/px) the network at ``ckpt_path`` was trained at: ``mpp`` of the :func:`training_settings`
    beside it. None when there is no such file (checkpoints written before bundle 0.8.0): the runners then do not
    resize, as before, and when the tiles' ``mpp`` is not 40x (beyond the 10 % that resizing ignores,
    :func:`bundle.postprocess.resample_factor`) a one-line warning ends with ``hint``, what the caller's user can
    do about it (the inference configs' ``--network_mpp`` by default)."""
    from .postprocess import REFERENCE_MPP, resample_factor, size_scale

    if not ckpt_path:
        return None
    saved = training_settings(Path(ckpt_path).parent)
    if saved is None:
        if mpp is not None and resample_factor(size_scale(mpp), REFERENCE_MPP) != 1.0:
            logger.warning(f"{ckpt_path}: no {SETTINGS_NAME} beside it, so the pixel size it was trained at is unknown "
                           f"and tiles at {float(mpp):.3g} um/px are not resized; {hint}")
        return None
    path = Path(ckpt_path).parent / SETTINGS_NAME
    try:
        value = saved.get("mpp")
        value = None if value is None else float(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the training settings ({e})") from None
    if value is not None and not value > 0:
        raise ValueError(f"{path}: mpp must be > 0, got {value}")
    return value


def centre_tiles(images, labels=None, max_size: int = 384, limit: int = 4) -> list:
    """``[(rgb, label)]`` centre crops (at most ``max_size`` a side) of the first ``limit`` images, for TensorBoard
    image handlers. ``label`` is the first channel of the matching label file (``.npy`` or image, read with
    :class:`bundle.transforms.LoadLabeld`) as an int64 array, or None."""
    from .io import read_rgb
    from .transforms import LoadLabeld

    labels = list(labels) if labels is not None else [None] * len(images)
    out = []
    for p, lp in list(zip(images, labels))[:limit]:
        img = read_rgb(p)
        h, w = img.shape[:2]
        t, l = max(0, (h - max_size) // 2), max(0, (w - max_size) // 2)
        lab = None
        if lp is not None:
            lab = LoadLabeld("label")({"label": lp})["label"][0].numpy().astype(np.int64)[t: t + max_size,
                                                                                       l: l + max_size]
        out.append((img[t: t + max_size, l: l + max_size], lab))
    return out


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

        self.writer = summary_writer if summary_writer is not None else SummaryWriter(log_dir=log_dir)
        self.network, self.inferer, self.scm = network, inferer, scm
        self.interval, self.tag = max(1, int(interval)), tag
        self.tiles = [rgb for rgb, _ in centre_tiles(images, None, max_size)]

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


class PseudoAgreement:
    """Ignite metric: pixel F1 between a network's predicted foreground (argmax > 0) and a pseudo mask, summed
    over the images of an evaluation run. Used to select checkpoints on held-back *unlabelled* images: it measures
    agreement with the pseudo labels, never ground truth.

    ``output_transform(engine.state.output)`` must give ``(preds, labels)``: sequences (or batched tensors) of
    (C, H, W) logits/probabilities and (1, H, W) masks (> 0 = foreground; 255 = ignore).
    """

    def __new__(cls, output_transform=None):
        from ignite.metrics import Metric
        from ignite.metrics.metric import reinit__is_reduced

        class _PseudoAgreement(Metric):
            def reset(self):
                self._tp = self._np = self._ng = 0

            @reinit__is_reduced
            def update(self, output):
                preds, labels = output
                for p, y in zip(preds, labels):
                    p, y = torch.as_tensor(p), torch.as_tensor(y)
                    valid = y[0] != 255
                    fg_p = (p.argmax(0) > 0) & valid
                    fg_y = (y[0] > 0) & valid
                    self._tp += int((fg_p & fg_y).sum())
                    self._np += int(fg_p.sum())
                    self._ng += int(fg_y.sum())

            def compute(self):
                den = self._np + self._ng
                return 2.0 * self._tp / den if den else 1.0

        ot = output_transform if output_transform is not None else (
            lambda out: ([o["pred"] for o in out], [o["label"] for o in out]) if isinstance(out, list)
            else (out["pred"], out["label"]))
        return _PseudoAgreement(output_transform=ot)


class NucleiImageHandler:
    """Every ``interval`` epochs, log [tile | training label | P(nucleus) | instances] to TensorBoard for up to 4
    fixed tiles (centre crops of at most ``max_size``), using the network being trained.

    Args:
        network: per-pixel classifier.  images: list of image paths.  labels: matching label files (or None).
        mode: instance mode of :func:`bundle.detection.nuclei_from_probability`.
    """

    def __init__(self, network, images, labels=None, summary_writer=None, log_dir: str = "./runs",
                 interval: int = 1, max_size: int = 384, tag: str = "nuclei", mode: str = "auto"):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = summary_writer if summary_writer is not None else SummaryWriter(log_dir=log_dir)
        self.network, self.interval, self.tag, self.mode = network, max(1, int(interval)), tag, mode
        self.tiles = centre_tiles(images, labels, max_size)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def panel(self, rgb: np.ndarray, lab, prob: np.ndarray) -> np.ndarray:
        """(h, 4w, 3) float [tile | label | P(nucleus) | instance outlines]; subclasses draw other panels."""
        from skimage.segmentation import find_boundaries

        from .detection import nuclei_from_probability

        inst = nuclei_from_probability(prob, self.mode)
        over = rgb.copy()
        over[find_boundaries(inst, mode="inner")] = (0, 255, 0)
        if lab is None:
            lab_img = np.zeros(rgb.shape[:2], np.float32)
        else:
            lab_img = np.where(lab == 255, 0.5, lab / max(1, lab[lab != 255].max(initial=1)))
        fg = 1.0 - prob[0]
        return np.concatenate([rgb / 255.0, np.repeat(lab_img[..., None], 3, -1), np.repeat(fg[..., None], 3, -1),
                               over / 255.0], 1)

    def __call__(self, engine) -> None:
        from .detection import predict_probability

        device = next(self.network.parameters()).device
        was_training = self.network.training
        for i, (rgb, lab) in enumerate(self.tiles):
            prob = predict_probability(self.network, rgb, device, tta=False)
            panel = self.panel(rgb, lab, prob)
            self.writer.add_image(f"{self.tag}/{i}", panel.astype(np.float32), engine.state.epoch, dataformats="HWC")
        self.writer.flush()
        self.network.train(was_training)
