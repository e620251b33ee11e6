# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""TensorBoard images of the nuclei networks during training: [tile | training label | P(nucleus) | instances] for a
few held-back tiles (:class:`NucleiImageHandler`)."""

from __future__ import annotations

import numpy as np
from ignite.engine import Events

from bundle.handlers import centre_tiles

__all__ = ["NucleiImageHandler"]


class NucleiImageHandler:
    """Every ``interval`` epochs, log [tile | training label | P(nucleus) | instances] to TensorBoard for up to 4
    fixed tiles (centre crops of at most ``max_size``), using the network being trained.

    Args:
        network: per-pixel classifier.  images: list of image paths.  labels: matching label files (or None).
        mode: instance mode of :func:`bundle.nuclei.detection.nuclei_from_probability`.
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

        from bundle.nuclei.detection import nuclei_from_probability

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
        from bundle.inferers import predict_probability

        device = next(self.network.parameters()).device
        was_training = self.network.training
        for i, (rgb, lab) in enumerate(self.tiles):
            prob = predict_probability(self.network, rgb, device, tta=False)
            panel = self.panel(rgb, lab, prob)
            self.writer.add_image(f"{self.tag}/{i}", panel.astype(np.float32), engine.state.epoch, dataformats="HWC")
        self.writer.flush()
        self.network.train(was_training)
