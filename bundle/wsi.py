# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Whole-slide images: open with tifffile (+ zarr, tile-wise decoding) or MONAI's ``WSIReader`` (``openslide`` /
``cucim`` backends), pick a level by index or
microns per pixel, find tissue on a thumbnail, and stream overlapping tiles so memory stays bounded.

* :func:`is_wsi` -- does a path look like a slide (SVS/NDPI/MRXS/SCN..., or a pyramidal TIFF larger than a tile)?
* :func:`tissue_mask` -- (h, w) bool tissue mask of a thumbnail (saturation Otsu, cleaned).
* :class:`SlideTiles` -- iterate ``(row0, col0, rgb_tile)`` over tissue at the chosen level, with a margin, and
  report the level's downsample factor so outputs can be written in level-0 pixel coordinates.
* :func:`write_pyramid_tiff` -- write an RGB array as a tiled pyramidal TIFF (tests, benchmarks, demos).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "SLIDE_SUFFIXES", "THUMBNAIL_STRIP_BYTES", "is_wsi", "slide_mpp", "write_pyramid_tiff", "tissue_mask",
    "SlideTiles"
]

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


THUMBNAIL_STRIP_BYTES = 64e6  # the thumbnail is read in strips of at most this many bytes


def is_wsi(path, min_side: int = 8192) -> bool:
    """True for slide formats, and for TIFFs with several pyramid levels or a side >= ``min_side`` px."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff"):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            s = tf.series[0]
            shape = s.levels[0].shape
            return len(s.levels) > 1 or len(tf.pages) > 1 or max(shape[:2]) >= min_side
    except Exception:  # noqa: BLE001 - unreadable files are reported by the image reader
        return False


def slide_mpp(data, level: int | None = 0, mpp: float | None = None, backend: str = "tifffile",
              datalist_key: str = "testing") -> float | None:
    """Microns per pixel of the level :class:`SlideTiles` reads (``level``, or the one nearest ``mpp``) of the slide
    ``data``, or of every slide in the folder or datalist JSON (``datalist_key``, else ``training``) ``data`` when
    they agree within 10 %; None for tiles, for slides without pixel-size metadata, for unreadable ones (their error
    comes when they are read), for a folder of slides at different pixel sizes, and for slides mixed with plain
    tiles, whose pixel size is unknown (one-line warnings: run them separately, or pass --mpp; each slide is then
    checked on its own by :meth:`SlideTiles.check_mpp`). The inference configs take it as their ``mpp``, so a 20x
    slide gets 20x sizes without ``--mpp``."""
    from bundle.io import IMAGE_SUFFIXES, ImageError, load_datalist

    p = Path(str(data)) if data is not None else None
    if p is None or not p.exists():
        return None
    if p.is_file() and p.suffix.lower() == ".json":
        try:
            files = [Path(it["image"]) for it in load_datalist(p, datalist_key, fallback="training")]
        except ImageError:
            return None
    elif p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in SLIDE_SUFFIXES + IMAGE_SUFFIXES)
    found, tiles = [], 0
    for f in files:
        if not f.is_file():  # a missing datalist entry: its error comes when it is read
            continue
        if not is_wsi(f):
            tiles += 1
            continue
        try:
            slide = SlideTiles(f, backend=backend, level=level, mpp=mpp)
        except (ValueError, FileNotFoundError):
            continue
        try:
            found.append(slide.level_mpp(slide.level))
        finally:
            slide.close()
    found = [m for m in found if m]
    if not found:
        return None
    if tiles:
        logger.warning(f"{p}: slides at {min(found):.3g} um/px mixed with {tiles} tile(s) of unknown pixel size; sizes "
                       "stay at the configured mpp (run slides and tiles separately, or pass --mpp)")
        return None
    if max(found) > 1.1 * min(found):
        logger.warning(f"{p}: slides at {min(found):.3g} to {max(found):.3g} um/px; sizes stay at the configured "
                       "mpp (run slides of one magnification together, or pass --mpp)")
        return None
    return float(np.median(found))


def write_pyramid_tiff(path, img: np.ndarray, mpp: float = 0.25, levels: int = 2, tile: int = 128) -> None:
    """Write an (H, W, 3) uint8 image as a tiled pyramidal TIFF: level 0 plus ``levels - 1`` sub-resolution
    levels (each half the previous, stored as SubIFDs), level 0's resolution set to ``mpp`` microns per pixel."""
    import tifffile

    with tifffile.TiffWriter(os.fspath(path), bigtiff=img.size > 2**31) as tw:
        tw.write(img, tile=(tile, tile), photometric="rgb", subifds=levels - 1,
                 resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
        for k in range(1, levels):
            f = 2 ** k
            tw.write(np.ascontiguousarray(img[::f, ::f]), tile=(tile, tile), photometric="rgb", subfiletype=1)


def tissue_mask(rgb: np.ndarray, min_size: int = 16, method: str = "saturation") -> np.ndarray:
    """(h, w) bool tissue mask of an (h, w, 3) uint8 thumbnail, cleaned of specks and small holes.

    ``method="saturation"`` (H&E: pink and purple tissue on grey glass): HSV saturation > Otsu (and > 0.05).
    ``method="density"`` (IHC: pale, hardly saturated tissue with brown and blue nuclei): darkness ``1 - mean(RGB) /
    255`` above its Otsu threshold clipped to [0.08, 0.12], i.e. anything clearly darker than glass (about 235-250),
    and below 0.85, so black padding, label edges and dark pen marks are not tissue.
    A blank (flat) thumbnail gives an all-False mask.
    """
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    rgb = np.asarray(rgb)[..., :3]
    if method == "saturation":
        v, floor, cap = rgb2hsv(rgb)[..., 1], 0.05, np.inf
    elif method == "density":
        v, floor, cap = 1.0 - rgb.astype(np.float32).mean(-1) / 255.0, 0.08, 0.12
    else:
        raise ValueError(f"unknown tissue method {method!r} (use 'saturation' or 'density')")
    if float(v.max()) - float(v.min()) < 0.02:
        return np.zeros(v.shape, bool)
    m = v > min(cap, max(floor, float(threshold_otsu(v))))
    if method == "density":
        m &= v < 0.85
    m = remove_small_objects(m, max_size=min_size - 1)
    return remove_small_holes(m, max_size=min_size * 4)


class SlideTiles:
    """Stream tiles of a whole-slide image over tissue.

    Args:
        path: slide file.  backend: ``"tifffile"`` (default: tifffile + zarr read only the TIFF tiles a region
            touches; MONAI's own tifffile backend decodes a whole level per read and counts pages, not pyramid
            levels, so it is not used) or ``"openslide"`` / ``"cucim"`` through MONAI's ``WSIReader``.
        level: pyramid level to analyse (0 = full resolution); ignored when ``mpp`` is given.
        mpp: target microns per pixel; the nearest level is used (MONAI ``WSIReader`` semantics).
        tile_size: tile side at the analysis level.  margin: context added on each side (px).
        tissue_level: level for the tissue mask (default: the lowest-resolution level).
        min_tissue: minimum tissue fraction for a tile to be processed.
        tissue: :func:`tissue_mask` method, ``"saturation"`` (H&E) or ``"density"`` (IHC).

    Iterating yields ``(row0, col0, rgb)`` where ``(row0, col0)`` is the top-left of the *core* tile at the
    analysis level and ``rgb`` is the (h, w, 3) uint8 tile including the margin (clipped at slide borders;
    ``self.last_offset`` gives the margin actually added on the top/left).
    """

    def __init__(self, path, backend: str = "tifffile", level: int | None = 0, mpp: float | None = None,
                 tile_size: int = 1024, margin: int = 64, tissue_level: int | None = None, min_tissue: float = 0.05,
                 tissue: str = "saturation"):
        self.path = os.fspath(path)
        if tissue not in ("saturation", "density"):
            raise ValueError(f"unknown tissue method {tissue!r} (use 'saturation' or 'density')")
        self.tissue = tissue
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: slide not found")
        self.backend = backend
        try:
            if backend == "tifffile":
                self._open_tifffile()
            else:
                from monai.data import WSIReader

                self.reader = WSIReader(backend=backend)
                self.wsi = self.reader.read(self.path)
                self.level_sizes = [tuple(int(v) for v in self.reader.get_size(self.wsi, lv))
                                    for lv in range(self.reader.get_level_count(self.wsi))]
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{self.path}: cannot open slide with the {backend} backend ({str(e)[:200]})") from None
        n_levels = len(self.level_sizes)
        if mpp is not None:
            level = self._level_for_mpp(mpp)
        self.level = int(level or 0)
        if not 0 <= self.level < n_levels:
            raise ValueError(f"{self.path}: level {self.level} does not exist (slide has {n_levels} levels)")
        self.size = self.level_sizes[self.level]  # (rows, cols)
        self.downsample = self.level_sizes[0][0] / self.size[0]
        self.tile_size, self.margin, self.min_tissue = int(tile_size), int(margin), float(min_tissue)
        self.tissue_level = n_levels - 1 if tissue_level is None else int(tissue_level)
        self.last_offset = (0, 0)
        self._mask = None
        self._core = None
        self._thumb = None

    def _open_tifffile(self) -> None:
        """tifffile + zarr: pyramid levels from the TIFF series (SubIFD/OME/SVS pyramids); region reads decode only
        the TIFF tiles they touch, so memory stays bounded by the tile size."""
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(self.path)
        series = self._tif.series[0]
        self._levels = [zarr.open(series.aszarr(level=lv), mode="r") for lv in range(len(series.levels))]
        self.level_sizes = [tuple(int(v) for v in z.shape[:2]) for z in self._levels]
        self._mpp0 = None
        try:
            tags = series.levels[0].pages[0].tags
            xres = tags["XResolution"].value
            unit = tags["ResolutionUnit"].value
            if unit == 3 and xres[0]:  # centimetre
                self._mpp0 = 1e4 * xres[1] / xres[0]
        except Exception:  # noqa: BLE001 - no resolution metadata
            self._mpp0 = None
        desc = series.levels[0].pages[0].description or ""
        if self._mpp0 is None and "MPP = " in desc:  # Aperio SVS
            try:
                self._mpp0 = float(desc.split("MPP = ")[1].split("|")[0])
            except ValueError:
                pass

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (None when the file does not say)."""
        if self.backend != "tifffile":
            try:
                return float(np.mean(self.reader.get_mpp(self.wsi, level)))
            except Exception:  # noqa: BLE001
                return None
        if self._mpp0 is None:
            return None
        return self._mpp0 * self.level_sizes[0][0] / self.level_sizes[level][0]

    def check_mpp(self, mpp: float) -> bool:
        """Warn (one line) when the analysis level's microns per pixel, if the file states it, differs by more than
        10 % from ``mpp``, the pixel size the pixel-size settings were scaled for (``--mpp``; a pyramid need not have
        a level at the ``wsi_mpp`` asked for: the nearest one is read, not resampled). Returns True when they agree
        or the file does not say."""
        actual = self.level_mpp(self.level)
        if actual is None or abs(actual - float(mpp)) <= 0.1 * float(mpp):
            return True
        logger.warning(f"{self.path}: level {self.level} is read at {actual:.3g} um/px but the pixel sizes are set "
                       f"for {float(mpp):.3g} um/px; pass --mpp {actual:.3g}")
        return False

    def _level_for_mpp(self, mpp: float) -> int:
        mpps = [self.level_mpp(lv) for lv in range(len(self.level_sizes))]
        if mpps[0] is None:
            logger.warning(f"{self.path}: no microns-per-pixel metadata; using level 0")
            return 0
        return int(np.argmin([abs(m - mpp) for m in mpps]))

    def read(self, row: int, col: int, h: int, w: int, level: int | None = None) -> np.ndarray:
        """(h, w, 3) uint8 region at ``level`` (default the analysis level), top-left (row, col) in that level."""
        level = self.level if level is None else level
        if self.backend == "tifffile":
            arr = np.asarray(self._levels[level][row: row + h, col: col + w])
        else:
            ds = self.level_sizes[0][0] / self.level_sizes[level][0]
            loc = (int(round(row * ds)), int(round(col * ds)))  # MONAI expects level-0 (row, col)
            arr, _ = self.reader.get_data(self.wsi, location=loc, size=(int(h), int(w)), level=level)
        from bundle.io import to_uint8_rgb

        # grey, alpha, 16-bit and MONAI's channel-first regions, as a tile's reader converts them
        return to_uint8_rgb(np.asarray(arr), self.path)

    def thumbnail(self, max_side: int = 2048) -> np.ndarray:
        """The slide at ``tissue_level`` (h, w, 3) uint8, subsampled to at most ``max_side`` px per side. The default
        size is read once per slide and cached (read-only: copy it before drawing on it)."""
        if max_side == 2048 and self._thumb is not None:
            return self._thumb
        h, w = self.level_sizes[self.tissue_level]
        step = max(1, int(np.ceil(max(h, w) / max_side)))
        # strips of at most THUMBNAIL_STRIP_BYTES (a multiple of ``step`` rows), so a large level -- even an
        # unpyramided slide -- is never held whole
        strip = step * max(1, int(THUMBNAIL_STRIP_BYTES // (3 * w * step)))
        rows = []
        for r in range(0, h, strip):
            rows.append(self.read(r, 0, min(strip, h - r), w, level=self.tissue_level)[::step, ::step])
        thumb = np.concatenate(rows, 0)
        if max_side == 2048:
            thumb.setflags(write=False)
            self._thumb = thumb
        return thumb

    def close(self) -> None:
        if self.backend == "tifffile":
            self._tif.close()

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = tissue_mask(self.thumbnail(), method=self.tissue)
        return self._mask

    def tissue_fraction(self, row: int, col: int, h: int, w: int) -> float:
        m = self.mask
        sr, sc = m.shape[0] / self.size[0], m.shape[1] / self.size[1]
        r0, c0 = int(row * sr), int(col * sc)
        r1, c1 = max(r0 + 1, int(np.ceil((row + h) * sr))), max(c0 + 1, int(np.ceil((col + w) * sc)))
        sub = m[r0:r1, c0:c1]
        return float(sub.mean()) if sub.size else 0.0

    def core_tiles(self) -> list:
        """Top-left corners (row, col) of the core tiles that contain enough tissue (computed once per slide)."""
        if self._core is None:
            H, W, t = self.size[0], self.size[1], self.tile_size
            self._core = [(r, c) for r in range(0, H, t) for c in range(0, W, t)
                          if self.tissue_fraction(r, c, min(t, H - r), min(t, W - c)) >= self.min_tissue]
        return list(self._core)

    def hematoxylin_threshold(self, max_tiles: int | None = 16) -> float:
        """One haematoxylin OD threshold for the whole slide (:func:`bundle.stain.hematoxylin_threshold` pooled
        over up to ``max_tiles`` core tiles spread evenly over the tissue, preferring tiles at least half tissue), so
        every tile's haematoxylin input channel has the same scale; 0.0 without tissue. ``max_tiles=None``: over
        every core tile, exactly (:func:`bundle.stain.otsu_of_chunks`; each core's OD computed with its margin, so
        the value equals that of the whole image read at once: a big tile split into windows)."""
        from bundle.stain import hematoxylin_od, hematoxylin_threshold, otsu_of_chunks

        tiles = self.core_tiles()
        H, W, t = self.size[0], self.size[1], self.tile_size
        if max_tiles is None:
            def cores():
                for r, c in tiles:
                    r0, c0 = max(0, r - self.margin), max(0, c - self.margin)
                    rgb = self.read(r0, c0, min(H, r + t + self.margin) - r0, min(W, c + t + self.margin) - c0)
                    yield hematoxylin_od(rgb, 1.0)[r - r0: r - r0 + t, c - c0: c - c0 + t]

            return otsu_of_chunks(cores)
        full = [(r, c) for r, c in tiles if self.tissue_fraction(r, c, min(t, H - r), min(t, W - c)) >= 0.5]
        tiles = full or tiles
        if not tiles:
            return 0.0
        pick = np.unique(np.linspace(0, len(tiles) - 1, min(max_tiles, len(tiles))).round().astype(int))
        return hematoxylin_threshold([self.read(r, c, min(t, H - r), min(t, W - c)) for r, c in
                                      (tiles[i] for i in pick)])

    def nucleus_diameter(self, n: int = 4, stain: str = "he") -> float | None:
        """Median :func:`bundle.scale.estimate_nucleus_diameter` (``stain``'s estimator) of up to ``n`` core tiles
        spread evenly over the tissue: the slide's nucleus size when its file gives no pixel size; None when none
        gives one."""
        from bundle.scale import estimate_nucleus_diameter

        tiles, (H, W), t = self.core_tiles(), self.size, self.tile_size
        pick = np.unique(np.linspace(0, len(tiles) - 1, min(n, len(tiles))).round().astype(int)) if tiles else []
        ds = [estimate_nucleus_diameter(self.read(r, c, min(t, H - r), min(t, W - c)), stain=stain)
              for r, c in (tiles[i] for i in pick)]
        ds = [d for d in ds if d is not None]
        return float(np.median(ds)) if ds else None

    def __iter__(self):
        H, W, t, m = self.size[0], self.size[1], self.tile_size, self.margin
        for r, c in self.core_tiles():
            r0, c0 = max(0, r - m), max(0, c - m)
            r1, c1 = min(H, r + t + m), min(W, c + t + m)
            self.last_offset = (r - r0, c - c0)
            yield r, c, self.read(r0, c0, r1 - r0, c1 - c0)


@dataclass
class SlideOptions:
    """How a runner reads a whole slide (the ``wsi`` group of the inference configs, ``--wsi#mpp 0.5`` on the command
    line): ``level`` or ``mpp`` (microns per pixel; wins over ``level``), the core ``tile`` side in px, the reader
    ``backend`` (``"tifffile"`` or ``"openslide"``) and ``min_tissue``, the least fraction of tissue a tile needs to be
    processed (:class:`SlideTiles`)."""

    level: int | None = 0
    mpp: float | None = None
    tile: int = 1024
    backend: str = "tifffile"
    min_tissue: float = 0.001

    def __post_init__(self):
        self.tile, self.min_tissue = int(self.tile), float(self.min_tissue)
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"wsi min_tissue must be in [0, 1], got {self.min_tissue}")

    def open(self, path, margin: int = 64, tissue: str = "saturation") -> "SlideTiles":
        """:class:`SlideTiles` of ``path`` with these options, ``margin`` px of context around each core tile."""
        return SlideTiles(path, backend=self.backend, level=self.level, mpp=self.mpp, tile_size=self.tile,
                          margin=margin, min_tissue=self.min_tissue, tissue=tissue)


def input_items(data, datalist_key: str = "testing") -> list:
    """A runner's inputs as ``[{"image": path, ...}]``: a list (of paths or dicts), one image or slide file, a datalist
    JSON (its ``datalist_key`` items, else ``training``), or a folder (its images plus any slide files).

    Raises:
        ImageError: one line naming ``data`` when it does not exist or holds no images or slides.
    """
    from bundle.io import ImageError, datalist_items, load_datalist, with_names

    if isinstance(data, (list, tuple)):
        return datalist_items(data)
    p = Path(data)
    if p.is_file() and p.suffix.lower() == ".json":
        return load_datalist(p, datalist_key, fallback="training")
    if p.is_file():
        return with_names([{"image": str(p)}])
    if not p.is_dir():
        raise ImageError(f"{p}: no such file or folder")
    items = [{"image": str(f)} for f in sorted(p.iterdir()) if f.suffix.lower() in SLIDE_SUFFIXES]
    try:
        items = load_datalist(p) + items
    except ImageError:
        pass
    if not items:
        raise ImageError(f"{p}: folder has no images or slides")
    return with_names([{k: v for k, v in it.items() if k != "name"} for it in items])
