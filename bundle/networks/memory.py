# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Memory layout of network inputs.

On CPU, PyTorch's oneDNN convolutions run faster on channels-last (NHWC) tensors than on the default NCHW layout:
for the CPU profile's ResUNet-34 (16 base channels) an optimiser step on 8 crops of 256x256 takes 0.47 s instead of
0.63 s and a 1000x1000 image 0.19 s instead of 0.27 s (2 threads; ``scripts/benchmark_speed.py``, its "(NCHW)"
rows). Outputs are the same up to float rounding; dropout masks follow the memory order, so training runs are not
bit-identical to NCHW ones. CUDA tensors are left alone (the GPU profile was tuned and measured without it).
"""

from __future__ import annotations

import torch

__all__ = ["cpu_channels_last"]


def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float -> the same values, channels-last in memory when ``x`` is on the CPU; else ``x`` as is.

    TorchScript-compatible, so networks call it at the top of ``forward`` and keep their exported form.
    """
    if x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x
