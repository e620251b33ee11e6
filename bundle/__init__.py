# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Label-free cell recognition for histology: components referenced by the MONAI bundle configs.

The shared layer (knows no workflow): ``io`` (image folders, datalists, atomic writes), ``annotations`` (label
formats), ``errors`` (uncaught errors end with one line naming the cause; installed on import), ``wsi`` (slides),
``metrics``, ``stain`` (optical density, colour deconvolution), ``scale`` (pixel size and the sizes derived from it),
``checkpoints`` (weights and training settings), ``runs`` (stage bookkeeping, summaries), ``transforms``,
``inferers``, ``losses``, ``points``, ``handlers`` (Ignite handlers), ``networks``, ``synthetic`` (demo data),
``overrides`` (command-line overrides checked before a config runs).

One subpackage per workflow: ``nuclei`` (the PSM pipeline), ``ki67``, ``fseg``, ``gan``; ``label_free`` is the
one-command CLI over the configs.
"""

from .errors import install_excepthook as _install_excepthook

__version__ = "0.14.1"

_install_excepthook()

_SUBMODULES = {"io", "annotations", "errors", "wsi", "metrics", "stain", "scale", "checkpoints", "runs", "transforms",
               "inferers", "losses", "points", "handlers", "networks", "synthetic", "nuclei", "ki67", "fseg", "gan",
               "label_free", "overrides", "distributed", "measure", "report", "backends"}


def __getattr__(name):
    """Import submodules on first access, so configs can write ``$import bundle`` then ``bundle.io.f(...)``."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
