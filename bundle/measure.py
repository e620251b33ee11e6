# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Per-object measurements of an instance label map (issue 31): shape by ``skimage.measure.regionprops_table`` and
stain optical densities by colour deconvolution, in pixels and, given the pixel size, micrometres. Plain functions
on arrays; the object id is the label value, the id the points CSV and the GeoJSON features carry too."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SHAPE_PROPERTIES", "stain_densities", "nucleus_measurements", "qupath_measurements"]

SHAPE_PROPERTIES = ("label", "centroid", "area", "perimeter", "equivalent_diameter_area", "eccentricity",
                    "solidity", "orientation")


def stain_densities(rgb: np.ndarray, stains: Sequence[str] = ("hematoxylin", "eosin")) -> dict:
    """``{stain: (H, W) float32 decadic optical density}`` of an (H, W, 3) uint8 RGB tile by colour deconvolution
    with unit reference vectors (Ruifrok & Johnston): ``hematoxylin``, ``eosin`` (H&E) or ``dab`` (IHC, with the
    haematoxylin-DAB matrix)."""
    from bundle.stain import REF_DAB, REF_EOSIN, od_lookup, reference_stain_matrix

    inv = np.linalg.pinv(reference_stain_matrix(REF_DAB if "dab" in stains else REF_EOSIN))  # row k: OD -> stain k
    rgb = np.asarray(rgb, np.uint8)
    lut = od_lookup()
    od = [lut[rgb[..., c]] for c in range(3)]  # per-channel OD by lookup: no (H, W, 3) float64 image
    idx = {"hematoxylin": 0, "eosin": 1, "dab": 1}
    return {s: np.maximum(od[0] * inv[idx[s], 0] + od[1] * inv[idx[s], 1] + od[2] * inv[idx[s], 2], 0)
            .astype(np.float32) for s in stains}


def nucleus_measurements(inst: np.ndarray, rgb: np.ndarray | None = None, mpp: float | None = None,
                         stains: Sequence[str] = ("hematoxylin", "eosin")) -> dict:
    """Column -> (N,) array for the N objects of an (H, W) integer instance map (0 = background), in label order.

    Columns: ``id`` (the label value), ``x``, ``y`` (centroid column / row, px), ``area`` (px^2), ``perimeter``
    (px), ``equivalent_diameter`` (px), ``eccentricity``, ``solidity``, ``orientation`` (radians, scikit-image's
    convention); with ``mpp`` (um/px) also ``x_um``, ``y_um``, ``area_um2``, ``perimeter_um``,
    ``equivalent_diameter_um``; with ``rgb`` for each stain ``<stain>_od_mean`` and ``<stain>_od_integrated`` (the
    sum over the object's pixels) of :func:`stain_densities`.
    """
    from skimage.measure import regionprops_table

    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"nucleus_measurements expects an (H, W) instance map, got shape {inst.shape}")
    inst = inst.astype(np.int64, copy=False)
    intensity = None
    if rgb is not None:
        dens = stain_densities(rgb, stains)
        intensity = np.stack([dens[s] for s in stains], -1)
    props = list(SHAPE_PROPERTIES) + (["intensity_mean"] if intensity is not None else [])
    t = regionprops_table(inst, intensity_image=intensity, properties=props)
    out = {"id": t["label"].astype(np.int64), "x": t["centroid-1"], "y": t["centroid-0"], "area": t["area"],
           "perimeter": t["perimeter"], "equivalent_diameter": t["equivalent_diameter_area"],
           "eccentricity": t["eccentricity"], "solidity": t["solidity"], "orientation": t["orientation"]}
    if mpp:
        mpp = float(mpp)
        out.update({"x_um": out["x"] * mpp, "y_um": out["y"] * mpp, "area_um2": out["area"] * mpp ** 2,
                    "perimeter_um": out["perimeter"] * mpp, "equivalent_diameter_um": out["equivalent_diameter"] * mpp})
    if intensity is not None:
        for i, s in enumerate(stains):
            mean = t[f"intensity_mean-{i}"]
            out[f"{s}_od_mean"] = mean
            out[f"{s}_od_integrated"] = mean * out["area"]
    return out


QUPATH_NAMES = {"area": "Area px^2", "perimeter": "Perimeter px", "equivalent_diameter": "Diameter px",
                "eccentricity": "Eccentricity", "solidity": "Solidity", "orientation": "Orientation rad",
                "area_um2": "Area µm^2", "perimeter_um": "Perimeter µm", "equivalent_diameter_um": "Diameter µm",
                "hematoxylin_od_mean": "Hematoxylin OD mean", "hematoxylin_od_integrated": "Hematoxylin OD sum",
                "eosin_od_mean": "Eosin OD mean", "eosin_od_integrated": "Eosin OD sum",
                "dab_od_mean": "DAB OD mean", "dab_od_integrated": "DAB OD sum"}


def qupath_measurements(table: dict, i: int, digits: int = 4) -> dict:
    """The ``measurements`` of object ``i`` of a :func:`nucleus_measurements` table as QuPath names them."""
    return {name: round(float(table[k][i]), digits) for k, name in QUPATH_NAMES.items() if k in table}
