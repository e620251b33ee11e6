# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The MONAI Deploy application: loader -> nuclei inference -> writer (:mod:`bundle.deploy.operators`).

``-i`` a folder of tiles or one tile, ``-o`` the output folder, ``-m`` the bundle folder (default: this bundle; its
``configs/inference.json`` and ``models/model.pt``). Also reads the SDK's environment (``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``) as a MAP container sets it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from bundle.deploy.operators import NucleiInferenceOperator, NucleiWriterOperator, TileLoaderOperator, bundle_runner

BUNDLE = Path(__file__).resolve().parents[2]

__all__ = ["NucleiApp", "main"]


class NucleiApp(Application):
    """Label-free nuclei instances, points and QuPath GeoJSON for H&E tiles, from the bundle's shipped network."""

    name = "labelfree_nuclei"
    description = "Nuclei instance maps, points and GeoJSON of H&E tiles (label-free cell recognition bundle)."
    version = "0.14.1"

    def __init__(self, *args, images=None, **kwargs):
        self.images = images  # arrays instead of -i (tests, notebooks)
        super().__init__(*args, **kwargs)

    def compose(self):
        ctx = Application.init_app_context(self.argv)
        bundle = Path(ctx.model_path) if ctx.model_path and Path(ctx.model_path, "configs").is_dir() else BUNDLE
        runner = bundle_runner(bundle, Path(ctx.output_path))
        loader = TileLoaderOperator(self, CountCondition(self, 1), input_path=Path(ctx.input_path), images=self.images,
                                    name="tile_loader")
        infer = NucleiInferenceOperator(self, runner=runner, name="nuclei_inference")
        writer = NucleiWriterOperator(self, runner=runner, name="nuclei_writer")
        self.add_flow(loader, infer, {("tiles", "tiles")})
        self.add_flow(infer, writer, {("results", "results")})


def main():
    logging.basicConfig(level=logging.INFO)
    NucleiApp().run()
