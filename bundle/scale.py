# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Pixel size and the sizes derived from it: every px size in the bundle was set at 40x (:data:`REFERENCE_MPP`
0.25 um/px); :func:`size_scale` and :func:`scaled` carry them to another pixel size, :func:`resample_factor` gives
the resize that shows a network tiles at the pixel size it was trained at."""

from __future__ import annotations

__all__ = ["REFERENCE_MPP", "size_scale", "resample_factor", "scaled"]

REFERENCE_MPP = 0.25
"""um per pixel at which the H&E size defaults were tuned (MoNuSeg, 40x)."""


def size_scale(mpp: float | None, reference_mpp: float = REFERENCE_MPP) -> float:
    """Length factor from the reference pixel size to tiles of ``mpp`` um/px: ``reference_mpp / mpp``
    (0.5 for 20x tiles at 0.5 um/px; 1.0 for ``mpp`` None, i.e. the reference)."""
    if mpp is None:
        return 1.0
    mpp = float(mpp)
    if not 0.01 <= mpp <= 20.0:
        raise ValueError(f"mpp must be the tiles' micrometres per pixel (e.g. 0.25 at 40x, 0.5 at 20x), got {mpp}")
    return float(reference_mpp) / mpp


def resample_factor(scale: float, network_mpp: float | None, reference_mpp: float = REFERENCE_MPP) -> float:
    """Factor to resize tiles of pixel density ``scale`` (:func:`size_scale` of their mpp) by before a network
    trained at ``network_mpp`` um/px: their mpp over the network's (2.0 for 20x tiles and a 40x network; 1.0 when
    ``network_mpp`` is None). Within 10 % of 1 it is 1: scanners state 0.2527 um/px for "40x" (Aperio), and a 1 %
    resize would only cost time and sharpness."""
    if network_mpp is None:
        return 1.0
    if not float(network_mpp) > 0:
        raise ValueError(f"network_mpp must be > 0, got {network_mpp}")
    f = float(reference_mpp) / float(scale) / float(network_mpp)
    return 1.0 if abs(f - 1.0) < 0.1 else f


def scaled(value: float, scale: float, area: bool = False, integer: bool = True, minimum: float = 1):
    """A size tuned at the reference pixel size, carried to another one: ``value * scale`` (``scale ** 2`` for an
    ``area``), rounded to an int (``integer``) and at least ``minimum``. ``value`` 0 stays 0 (a switched-off
    setting stays off)."""
    if value == 0:
        return 0 if integer else 0.0
    v = float(value) * float(scale) ** (2 if area else 1)
    v = max(float(minimum), v)
    return int(round(v)) if integer else v
