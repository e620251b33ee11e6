# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ignite handlers used by the bundle's trainers.

* :class:`CheckpointResume` — atomic per-epoch checkpoint of network/optimiser/engine state and resume from it.
* :class:`PSMImageHandler` — TensorBoard image grid of a fixed tile, its PSM and its pseudo mask, per epoch.
* :func:`load_network_weights` — load a ``model.pt`` state dict with a one-line error naming the file.
* :class:`TimeProfile` — where a training run's time goes (data loading vs the step vs handlers), ``profile.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events

from bundle.checkpoints import SETTINGS_NAME, atomic_torch_save, training_settings
from bundle.distributed import rank_world, unwrap
from bundle.io import write_json

logger = logging.getLogger(__name__)

__all__ = ["CheckpointResume", "centre_tiles", "PseudoAgreement", "TimeProfile"]


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
        try:  # weights_only: a received checkpoint is data, never code (trainer / optimiser states are plain)
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: cannot read checkpoint to resume from as plain data ({msg[:200]}); delete it "
                             "to start over, or pass --resume False") from None
        max_epochs = engine.state.max_epochs
        if "trainer" in obj:  # ignite stores iteration + epoch_length; allow a larger max_epochs on rerun
            t = obj["trainer"]
            done = t.get("iteration", 0) // max(1, t.get("epoch_length") or 1)
            t["max_epochs"] = max(max_epochs, done)
        for k, v in self.save_dict.items():
            if k not in obj:
                raise ValueError(f"{path}: checkpoint has no '{k}' entry; delete it to start over")
            try:
                unwrap(v).load_state_dict(obj[k])
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
        """Rank 0 writes (every rank holds the same weights under DDP); the plain network's keys (no ``module.``)."""
        if rank_world()[0] != 0:
            return
        state = {k: unwrap(v).state_dict() for k, v in self.save_dict.items()}
        atomic_torch_save(state, self.ckpt_dir / self.last_name)
        atomic_torch_save(unwrap(self.save_dict[self.model_key]).state_dict(), self.ckpt_dir / self.model_name)
        if self.settings is not None:
            write_json(self.ckpt_dir / SETTINGS_NAME, self.settings)


def centre_tiles(images, labels=None, max_size: int = 384, limit: int = 4) -> list:
    """``[(rgb, label)]`` centre crops (at most ``max_size`` a side) of the first ``limit`` images, for TensorBoard
    image handlers. ``label`` is the first channel of the matching label file (``.npy`` or image, read with
    :class:`bundle.transforms.LoadLabeld`) as an int64 array, or None."""
    from bundle.io import read_rgb
    from bundle.transforms import LoadLabeld

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


class TimeProfile:
    """Where a training run's time goes: Ignite's :class:`ignite.handlers.BasicTimeProfiler` on the trainer, written
    at the end (rank 0 only) to ``<log_dir>/<name>`` as seconds: ``dataflow`` (waiting for the next batch: loading
    and random transforms), ``processing`` (the iteration: forward, loss, backward, optimiser step), ``handlers``
    (checkpoints, validation, TensorBoard, images), each as ``total`` and ``per_iteration``, with the fractions of
    their sum; one line of it is logged. ``enabled=False`` attaches nothing (the configs' ``profile`` key).

    On a GPU the iteration's kernels run asynchronously: time the step does not wait for shows up in whichever later
    call waits (usually a handler reading the loss), so read ``processing + handlers`` together there.
    """

    def __init__(self, log_dir, enabled: bool = True, name: str = "profile.json"):
        self.path, self.enabled = Path(log_dir) / name, bool(enabled)

    def attach(self, engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import BasicTimeProfiler

        class _Profiler(BasicTimeProfiler):
            # Ignite 0.5 sizes its arrays by len(dataloader); the bundle's trainers run a fixed epoch_length instead
            def _as_first_started(self, engine):
                super()._as_first_started(engine)
                n = engine.state.epoch_length
                if n is not None and self.max_epochs * n != self.total_num_iters:
                    self.total_num_iters = self.max_epochs * n
                    self._reset(self.max_epochs, self.total_num_iters)

        self.profiler = _Profiler()
        self.profiler.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def summary(self) -> dict:
        """Seconds and fractions from the attached profiler (see the class docstring)."""
        r = self.profiler.get_results()
        n = max(1, int((self.profiler.processing_times > 0).sum()))  # the iterations run (fewer after a resume)

        def total(stats) -> float:
            t = stats["total"] if isinstance(stats, dict) else stats
            return float(t.item() if hasattr(t, "item") else t)

        parts = {"dataflow": total(r["dataflow_stats"]), "processing": total(r["processing_stats"]),
                 "handlers": total(r["event_handlers_stats"]["total_time"])}
        whole = sum(parts.values()) or 1.0
        return {"iterations": n, **{k: {"total": round(v, 3), "per_iteration": round(v / n, 4),
                                        "fraction": round(v / whole, 3)} for k, v in parts.items()}}

    def write(self, engine) -> None:
        if rank_world()[0] != 0:
            return
        s = self.summary()
        write_json(self.path, s)
        logger.info(f"time profile ({s['iterations']} iterations): " + ", ".join(
            f"{k} {s[k]['per_iteration']:.3f} s/it ({100 * s[k]['fraction']:.0f} %)"
            for k in ("dataflow", "processing", "handlers")) + f"; {self.path}")
