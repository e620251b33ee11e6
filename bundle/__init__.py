# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Label-free cell recognition for histology: components referenced by the MONAI bundle configs.

Modules (one idea each): ``io`` (image folders, atomic writes), ``annotations`` (label formats),
``transforms`` (normalisation, dictionary transforms), ``networks`` (Res2Net activation network),
``ssl`` (pretext tasks for Ignite), ``psm`` (Grad-CAM self-activation maps), ``clustering`` (SCM),
``metrics``, ``handlers`` (TensorBoard images, resume), ``pipeline`` (folder runners), ``synthetic`` (demo data),
``errors`` (uncaught errors end with one line naming the file and the problem; installed on import).
"""

from .errors import install_excepthook as _install_excepthook

__version__ = "0.1.0"

_install_excepthook()

_SUBMODULES = {"io", "annotations", "transforms", "networks", "ssl", "psm", "clustering", "metrics", "handlers",
               "pipeline", "synthetic", "postprocess", "labels", "detection", "wsi", "fseg", "cells", "gan"}


def __getattr__(name):
    """Import submodules on first access, so configs can write ``$import bundle`` then ``bundle.io.f(...)``."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
