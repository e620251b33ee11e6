# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""MONAI Deploy operators of the nuclei workflow: :class:`TileLoaderOperator` -> :class:`NucleiInferenceOperator` ->
:class:`NucleiWriterOperator`. The data passed between them is a list of ``{"name": stem, "image": (H, W, 3) uint8}``
tiles, then the same dicts with ``"instances"`` (H, W) int32 and ``"probabilities"`` (C, H, W) float32 added."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from bundle.io import ImageError, list_images, read_rgb, to_uint8_rgb, write_json

logger = logging.getLogger(__name__)

__all__ = ["TileLoaderOperator", "NucleiInferenceOperator", "NucleiWriterOperator", "bundle_runner"]


def as_tiles(source) -> list:
    """A folder or file path, one (H, W, 3) array, or a list of paths / arrays / ``(name, array)`` pairs -> tiles
    ``[{"name", "image"}]`` (RGB uint8; grey and RGBA are converted as :func:`bundle.io.read_rgb` does)."""
    if isinstance(source, np.ndarray):
        source = [source]
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise ImageError(f"{p}: no such file or folder")
        source = list_images(p) if p.is_dir() else [p]
    tiles = []
    for i, item in enumerate(source):
        name, item = item if isinstance(item, tuple) else (None, item)
        if isinstance(item, np.ndarray):
            tiles.append({"name": name or f"tile_{i:04d}", "image": to_uint8_rgb(item, f"array {i}")})
        else:
            tiles.append({"name": name or Path(item).stem, "image": read_rgb(item, min_size=32)})
    if not tiles:
        raise ImageError(f"{source}: no image to process")
    return tiles


def bundle_runner(bundle_root, output_dir, device: str = "cpu", **overrides):
    """The :class:`bundle.nuclei.runner.NucleiRunner` of ``<bundle_root>/configs/inference.json`` (its network with
    the shipped weights, predictor and post-processing; ``overrides`` as on the command line), weights loaded."""
    from monai.bundle import ConfigParser

    root = Path(bundle_root)
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"bundle_root": str(root), "output_dir": str(output_dir), "device": f"$torch.device('{device}')",
              **overrides})
    return p.get_parsed_content("runner").prepare()


class TileLoaderOperator(Operator):
    """Emits the tiles of ``input_path`` (a folder or an image file) or of ``images`` (arrays, paths or
    ``(name, array)`` pairs), once, on its ``tiles`` port."""

    def __init__(self, fragment: Fragment, *args, input_path=None, images=None, **kwargs):
        self.input_path, self.images = input_path, images
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("tiles")

    def compute(self, op_input, op_output, context):
        tiles = as_tiles(self.images if self.images is not None else self.input_path)
        logger.info(f"loaded {len(tiles)} tile(s)")
        op_output.emit(tiles, "tiles")


class NucleiInferenceOperator(Operator):
    """Adds ``instances`` and ``probabilities`` to each tile with the bundle's nuclei network and post-processing
    (``runner``: :func:`bundle_runner`), exactly as ``configs/inference.json`` makes them."""

    def __init__(self, fragment: Fragment, *args, runner=None, **kwargs):
        self.runner = runner
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("tiles")
        spec.output("results").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context):
        tiles = op_input.receive("tiles")
        for t in tiles:
            t0 = time.perf_counter()
            t["instances"], t["probabilities"], t["info"] = self.runner.infer_tile(t["image"], t["name"])
            t["seconds"] = time.perf_counter() - t0
        op_output.emit(tiles, "results")


class NucleiWriterOperator(Operator):
    """Writes the bundle's outputs of each tile (``runner.write_outputs``: ``labels/``, ``points/``, ``geojson/``,
    ``overlays/``) and ``summary.json`` into the runner's output folder."""

    def __init__(self, fragment: Fragment, *args, runner=None, **kwargs):
        self.runner = runner
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    def compute(self, op_input, op_output, context):
        rows = [self.runner.write_outputs(t["name"], t["image"], t["instances"], t["probabilities"], t["seconds"],
                                          mpp=t["info"]["mpp"])
                for t in op_input.receive("results")]
        write_json(Path(self.runner.output_dir) / "summary.json",
                   {"n_images": len(rows), "n_nuclei": sum(r["n_nuclei"] for r in rows), "images": rows})
        logger.info(f"wrote nuclei of {len(rows)} tile(s) to {self.runner.output_dir}")
