# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
from .res2net import Res2Net, res2net_layers

__all__ = ["Res2Net", "res2net_layers"]
from .resunet import ResUNet34  # noqa: E402

__all__ += ["ResUNet34"]
