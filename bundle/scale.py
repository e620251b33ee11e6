# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Pixel size and the sizes derived from it: every px size in the bundle was set at 40x (:data:`REFERENCE_MPP`
0.25 um/px); :func:`size_scale` and :func:`scaled` carry them to another pixel size, :func:`resample_factor` gives
the resize that shows a network tiles at the pixel size it was trained at."""

from __future__ import annotations

__all__ = ["REFERENCE_MPP", "REFERENCE_DIAMETER", "IHC_REFERENCE_DIAMETER", "size_scale", "resample_factor", "scaled",
           "scale_from_diameter", "DEAD_ZONE", "NUCLEI_DEAD_ZONE",
           "estimate_nucleus_diameter", "folder_nucleus_diameter", "tile_mpp", "working_scale_copy"]

REFERENCE_MPP = 0.25
"""um per pixel at which the H&E size defaults were tuned (MoNuSeg, 40x)."""

DEAD_ZONE = (0.8, 1.25)
"""Ratios of a tile's estimated nucleus size to the network's (or :data:`REFERENCE_DIAMETER`) that count as the same
magnification: the default of :func:`tile_mpp`, the training copies (:func:`working_scale_copy`) and Ki-67 inference."""

NUCLEI_DEAD_ZONE = (0.95, 1.5)
"""The dead zone of H&E nuclei inference (``inference.json`` ``scale_dead_zone``), chosen on MoNuSeg **train** at 1x,
0.75x and 0.5x (``python -m scripts.benchmark_train_choices --choice dead_zone``): tiles whose nuclei look smaller than
the network's by more than 5 % are enlarged; ones up to 1.5x larger are run as they are."""


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


REFERENCE_DIAMETER = 17.891
"""Characteristic nucleus diameter (px) that :func:`estimate_nucleus_diameter` finds at 40x: the median over the 30
MoNuSeg **train** images (:func:`folder_nucleus_diameter`; ``python -m scripts.benchmark_scale``). A network without a
recorded training diameter is assumed to have learnt nuclei of this size at 40x."""


def estimate_nucleus_diameter(rgb, crop: int = 512, sigmas: int = 16, low: float = 1.2, high: float | None = None,
                              percentile: float = 99.5, stain: str = "he", workers: int | None = None) -> float | None:
    """The characteristic nucleus diameter (px) of an (H, W, 3) uint8 H&E or IHC tile, label-free: the scale of the
    strongest blob response of its haematoxylin optical density (scale-normalised Laplacian of Gaussian, the
    ``percentile`` of ``-sigma^2 LoG`` over the central ``crop`` px, for ``sigmas`` sigmas from ``low`` to ``high``,
    refined by a parabola in log-sigma; diameter ``2 sqrt(2) sigma``). None for a blank tile
    (:func:`bundle.stain.blank_reason`) or one whose response has no maximum inside the range.

    MoNuSeg train, the same images box-resized to 0.75 / 0.5 / 0.33: median estimated ratios 0.754 / 0.507 / 0.333
    (docs/results/scale_estimate.md).

    ``stain="ihc"`` (Ki-67 tiles): the blobs of haematoxylin + DAB optical density (a positive nucleus is brown,
    with little haematoxylin: on haematoxylin alone some BCData tiles gave 6-10 px, their stroma's grain) over
    ``sigmas`` + 4 sigmas up to ``high`` = 24 (BCData's nuclei, about 35 px at 40x, lay at the top of the H&E range,
    14); ``high`` None = the stain's default. The sigmas are filtered on ``workers`` threads (None: up to 4, one
    per CPU), with the same result as one."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from scipy import ndimage as ndi

    from bundle.stain import blank_reason, dab_od, hematoxylin_od

    if stain not in ("he", "ihc"):
        raise ValueError(f"unknown stain {stain!r} (use 'he' or 'ihc')")
    high = (14.0 if stain == "he" else 24.0) if high is None else float(high)
    sigmas = int(sigmas) + (4 if stain == "ihc" else 0)
    rgb = np.asarray(rgb)
    if blank_reason(rgb):
        return None
    rows, cols = rgb.shape[:2]
    r0, c0 = max(0, (rows - crop) // 2), max(0, (cols - crop) // 2)
    # the crop's own OD (a constant offset from the whole tile's, which the Laplacian ignores): no whole-tile copy
    sub = np.ascontiguousarray(rgb[r0:r0 + crop, c0:c0 + crop])
    h = hematoxylin_od(sub, 0.0) + (dab_od(sub) if stain == "ihc" else 0.0)
    sig = np.geomspace(low, high, int(sigmas))
    def response(s):
        return np.percentile(-ndi.gaussian_laplace(h, s) * s * s, percentile)

    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers > 1:  # the filters release the GIL: the same numbers, sooner
        with ThreadPoolExecutor(min(int(workers), len(sig))) as pool:
            resp = np.array(list(pool.map(response, sig)))
    else:
        resp = np.array([response(s) for s in sig])
    k = int(np.argmax(resp))
    if not 0 < k < len(sig) - 1 or not resp[k] > 0:
        return None
    y0, y1, y2 = resp[k - 1:k + 2]
    den = y0 - 2 * y1 + y2
    off = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5)) if den != 0 else 0.0
    step = float(np.log(sig[1]) - np.log(sig[0]))
    return float(np.exp(np.log(sig[k]) + off * step) * 2 * np.sqrt(2))


def folder_nucleus_diameter(data, max_images: int = 32, datalist_key: str = "training",
                            stain: str = "he", cache: str | None = None, workers: int | None = None) -> float | None:
    """Median :func:`estimate_nucleus_diameter` over up to ``max_images`` tiles spread over a folder / datalist /
    list (unreadable or blank tiles left out); None when no tile gives one. Recorded with a trained network
    (``settings.json`` ``nucleus_diameter``): the nucleus size it learnt at, which :func:`tile_mpp` compares tiles
    to.

    The tiles are estimated on ``workers`` threads (None: up to 8, one per CPU; the filters release the GIL), with
    the same result as one thread. ``cache``: a JSON file of earlier answers keyed by the stain, ``max_images`` and
    each chosen tile's path, size and modification time (and the bundle's version), so the training stages of one
    run (det, seg, each Ki-67 round) estimate a folder once; a changed tile changes the key. An unreadable cache is
    ignored and rewritten; one that cannot be written is left with a one-line warning."""
    import json
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from bundle.io import ImageError, atomic_path, datalist_items, read_rgb

    try:
        items = datalist_items(data, datalist_key)
    except (ImageError, ValueError, FileNotFoundError):
        return None
    if len(items) > max_images:
        items = [items[i] for i in np.linspace(0, len(items) - 1, max_images).round().astype(int)]
    paths = [str(it["image"]) for it in items]
    key = None
    if cache:
        stats = [(os.path.abspath(p), *((st.st_size, st.st_mtime_ns) if (st := _stat(p)) else (None, None)))
                 for p in paths]
        from bundle import __version__  # another release may estimate differently: its own answers

        key = json.dumps([__version__, stain, int(max_images), stats])
        known = _read_cache(cache)
        if key in known:
            return known[key]

    def one(path):
        try:
            return estimate_nucleus_diameter(read_rgb(path, min_size=32), stain=stain, workers=1)
        except (ImageError, ValueError, FileNotFoundError):
            return None

    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(min(workers, max(1, len(paths)))) as pool:
        ds = [d for d in pool.map(one, paths) if d is not None]
    result = round(float(np.median(ds)), 3) if ds else None
    if key is not None:
        known = _read_cache(cache)
        known[key] = result
        try:
            with atomic_path(cache) as tmp, open(tmp, "w") as f:
                f.write(json.dumps(known))
        except OSError as e:  # a read-only bundle folder: the answer stands, the next stage estimates again
            import logging

            logging.getLogger(__name__).warning(f"{cache}: nucleus-size cache not written ({e})")
    return result


def _stat(path):
    import os

    try:
        return os.stat(path)
    except OSError:
        return None


def _read_cache(path) -> dict:
    """The answers in a :func:`folder_nucleus_diameter` cache file; {} when it is missing or not a JSON object of
    numbers (a damaged cache is recomputed, never trusted)."""
    import json

    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if v is None or isinstance(v, (int, float))}


def tile_mpp(diameter: float | None, network_mpp: float | None, trained_diameter: float | None = None,
             dead_zone=DEAD_ZONE) -> float | None:
    """The um/px a tile of unknown magnification is treated as: the network's training pixel size scaled by how much
    smaller the tile's nuclei look than those it learnt on, ``network_mpp * trained_diameter / diameter``
    (``network_mpp`` None = 40x; ``trained_diameter`` None = :data:`REFERENCE_DIAMETER` at 40x, carried to
    ``network_mpp``). A ratio inside ``dead_zone`` counts as the same magnification; clipped to 0.2x-2.5x. None when
    ``diameter`` is None (no nuclei found)."""
    if diameter is None:
        return None
    net = REFERENCE_MPP if network_mpp is None else float(network_mpp)
    ref = REFERENCE_DIAMETER * REFERENCE_MPP / net if trained_diameter is None else float(trained_diameter)
    ratio = min(2.5, max(0.2, float(diameter) / ref))
    if dead_zone[0] <= ratio <= dead_zone[1]:
        ratio = 1.0
    return net / ratio


def scale_from_diameter(diameter: float | None, fallback: float, network_mpp: float | None,
                        trained_diameter: float | None = None, dead_zone=DEAD_ZONE, path: str = "image") -> float:
    """The size scale (1 = 40x, :func:`size_scale`) a tile of unknown magnification is run at, from its estimated
    nucleus ``diameter`` (:func:`estimate_nucleus_diameter`) by :func:`tile_mpp`; ``fallback`` (the folder's), with a
    one-line warning naming ``path``, when no nucleus size was found. What the nuclei and Ki-67 runners share."""
    import logging

    if diameter is None:
        logging.getLogger(__name__).warning(f"{path}: no nucleus size found (no haematoxylin blobs); using the "
                                            "folder's pixel size")
        return float(fallback)
    return size_scale(tile_mpp(diameter, network_mpp, trained_diameter, dead_zone))


IHC_REFERENCE_DIAMETER = 35.69
"""What :func:`estimate_nucleus_diameter` with ``stain="ihc"`` finds at 40x: :func:`folder_nucleus_diameter` of the
BCData sample (``stain="ihc"``), the shipped Ki-67 network's training tiles. A Ki-67 network without a diameter
recorded by that estimator is assumed to have learnt nuclei of this size at 40x."""


def working_scale_copy(dataset_dir, output_dir, dead_zone=DEAD_ZONE, stain: str = "he") -> list[dict]:
    """Copies of a folder's tiles at the common working scale (40x, :data:`REFERENCE_MPP`), for training on a folder of
    unknown or mixed magnification (``python -m bundle.label_free --mpp auto``): each tile's nucleus diameter is
    estimated (:func:`estimate_nucleus_diameter`), the tile resized by 1 / its size scale (:func:`tile_mpp` against
    :data:`REFERENCE_DIAMETER`; ratios inside ``dead_zone`` count as 40x; a tile without an estimate takes the folder's
    median scale, with a one-line warning naming it) and written as ``output_dir/images/<stem>.png``;
    ``output_dir/scales.csv`` lists image, nucleus_diameter_px, scale_factor (1 = 40x, 0.5 = 20x) and resize.
    Unreadable files are skipped with a one-line warning, as the training configs skip them. Returns the rows.
    """
    import csv
    import logging
    from pathlib import Path

    from bundle.io import ImageError, atomic_path, datalist_items, read_rgb, write_image
    from bundle.transforms import resize_rgb

    import numpy as np

    log = logging.getLogger(__name__)
    out = Path(output_dir)
    def write(path, rgb, d, s):
        stem = Path(path).name.rsplit(".", 1)[0]
        write_image(out / "images" / f"{stem}.png", resize_rgb(rgb, 1.0 / s) if s != 1.0 else rgb)
        return {"image": str(path), "nucleus_diameter_px": "" if d is None else round(d, 2),
                "scale_factor": round(s, 4), "resize": round(1.0 / s, 4)}

    rows, unknown = {}, []  # tiles with an estimate are written at once; the others wait for the folder's median
    for i, it in enumerate(datalist_items(str(dataset_dir), "training")):
        try:
            rgb = read_rgb(it["image"], min_size=32)
        except (ImageError, ValueError, FileNotFoundError) as e:
            log.warning(f"{it['image']}: skipped ({e})")
            continue
        d = estimate_nucleus_diameter(rgb, stain=stain)
        if d is None:
            unknown.append((i, it["image"]))
        else:
            rows[i] = write(it["image"], rgb, d, size_scale(tile_mpp(d, REFERENCE_MPP, None, dead_zone)))
    median = float(np.median([r["scale_factor"] for r in rows.values()])) if rows else 1.0
    for i, path in unknown:
        log.warning(f"{path}: no nucleus size found (no haematoxylin blobs); taken at the folder's median scale "
                    f"{median:.3f}")
        rows[i] = write(path, read_rgb(path, min_size=32), None, median)
    rows = [rows[i] for i in sorted(rows)]
    with atomic_path(out / "scales.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "nucleus_diameter_px", "scale_factor", "resize"])
        w.writeheader()
        w.writerows(rows)
    if not rows:
        raise ValueError(f"{dataset_dir}: no readable image to bring to the working scale")
    return rows


if __name__ == "__main__":  # the label_free "scale" stage: python -m bundle.scale DATASET_DIR OUTPUT_DIR
    import fire

    fire.Fire(lambda dataset_dir, output_dir: len(working_scale_copy(dataset_dir, output_dir)) and None)
