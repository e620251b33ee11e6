# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Readers and writers for the label formats used by the bundle (one reader per format).

Formats:

* Aperio ImageScope XML polygon annotations (MoNuSeg) -> :func:`read_aperio_xml`
* BCData HDF5 point annotations (dataset ``coordinates``) -> :func:`read_bcdata_points`
* PNG / TIFF instance maps (8- or 16-bit) -> :func:`read_instance_label` / :func:`write_instance_label`; maps too
  big for memory are built on disk window by window and written as tiled TIFFs (:class:`LabelCanvas`)

All instance maps follow the same convention: a 2-D integer array of shape (H, W),
0 = background, 1..N = one id per object.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from bundle.io import PNG_LEVEL, atomic_path

__all__ = [
    "PathLike", "read_aperio_xml", "read_bcdata_points", "read_point_table", "read_points",
    "read_instance_label", "write_instance_label", "LabelCanvas"
]

PathLike = Union[str, os.PathLike]


_TIFF_SUFFIXES = (".tif", ".tiff")


_MAX_UINT16 = np.iinfo(np.uint16).max


def _aperio_polygons(path: PathLike) -> list:
    """Parse an Aperio XML file into a list of (K, 2) float arrays of (x, y) vertices."""
    try:
        root = ET.parse(os.fspath(path)).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"cannot parse Aperio XML annotation file {os.fspath(path)!r}: {e}") from None
    polygons = []
    # root is normally <Annotations>; iter() also copes with a bare <Annotation>/<Regions> root.
    for region in root.iter("Region"):
        pts = []
        for vertex in region.iter("Vertex"):
            try:
                pts.append((float(vertex.attrib["X"]), float(vertex.attrib["Y"])))
            except (KeyError, ValueError) as e:
                raise ValueError(
                    f"invalid Vertex in Aperio XML annotation file {os.fspath(path)!r}: {e!r}"
                ) from None
        if pts:
            polygons.append(np.asarray(pts, dtype=np.float64))
    return polygons


def read_aperio_xml(path: PathLike, shape: Sequence[int]) -> np.ndarray:
    """Rasterise an Aperio ImageScope XML polygon annotation into an instance map.

    The XML layout is the one used by MoNuSeg:
    ``Annotations/Annotation/Regions/Region/Vertices/Vertex`` with float ``X`` (column)
    and ``Y`` (row) attributes in pixel coordinates.

    Each ``Region`` with at least one vertex becomes one instance, numbered 1..N in file
    order; polygons are filled with :func:`skimage.draw.polygon` and clipped to ``shape``.
    **When polygons overlap, later regions overwrite earlier ones**, so an id can end up
    with fewer pixels than its polygon (or none at all if completely covered, or if the
    polygon lies outside the image / is degenerate). Ids are not re-numbered afterwards.

    Args:
        path: the ``.xml`` file.
        shape: image shape; only the first two entries (H, W) are used, so an RGB
            image shape ``(H, W, 3)`` is accepted.

    Returns:
        np.ndarray of shape (H, W): dtype uint16 when N <= 65535, otherwise int32;
        0 = background, 1..N = one id per polygon. A file without regions gives an
        all-zero map.

    Raises:
        ValueError: the file cannot be read or is not well-formed XML, or a Vertex lacks
            valid numeric X/Y attributes.
    """
    from skimage.draw import polygon as draw_polygon

    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 entries (H, W), got {tuple(shape)!r}")
    h, w = int(shape[0]), int(shape[1])
    polygons = _aperio_polygons(path)
    dtype = np.uint16 if len(polygons) <= _MAX_UINT16 else np.int32
    inst = np.zeros((h, w), dtype=dtype)
    for idx, pts in enumerate(polygons, start=1):
        rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape=(h, w))
        inst[rr, cc] = idx
    return inst


def read_bcdata_points(path: PathLike) -> np.ndarray:
    """Read BCData point annotations from an HDF5 file.

    The file must contain a dataset ``coordinates`` with one (x, y) row per cell.
    Empty datasets (shape ``(0,)`` or ``(0, 2)``) are allowed.

    Args:
        path: the ``.h5`` file.

    Returns:
        np.ndarray of shape (N, 2), dtype int64, columns (x, y) = (column, row);
        float coordinates are rounded to the nearest integer.

    Raises:
        ValueError: the file cannot be opened as HDF5, the ``coordinates`` dataset is
            missing, or it does not have shape (N, 2).
    """
    import h5py

    p = os.fspath(path)
    try:
        with h5py.File(p, "r") as f:
            if "coordinates" not in f:
                raise ValueError(
                    f"HDF5 file {p!r} has no 'coordinates' dataset (found: {sorted(f.keys())})"
                )
            data = np.asarray(f["coordinates"][()])
    except OSError as e:
        raise ValueError(f"cannot read HDF5 point file {p!r}: {e}") from None
    if data.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"'coordinates' in {p!r} must have shape (N, 2), got {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    return data.astype(np.int64)


def read_instance_label(path: PathLike) -> np.ndarray:
    """Read an 8- or 16-bit PNG / TIFF instance map.

    ``.tif`` / ``.tiff`` files are read with tifffile, everything else with PIL. 16-bit
    values are kept (no rescaling or conversion to 8 bit).

    Args:
        path: the label image.

    Returns:
        np.ndarray of shape (H, W) with the stored integer dtype (typically uint8 or
        uint16; PIL 32-bit integer images come back as int32).

    Raises:
        ValueError: the file cannot be read or the image is not 2-D (e.g. RGB).
    """
    p = os.fspath(path)
    try:
        if Path(p).suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            arr = np.asarray(tifffile.imread(p))
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.array(im)
    except Exception as e:  # noqa: BLE001 - report any decoder failure uniformly
        raise ValueError(f"cannot read instance label {p!r}: {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"instance label {p!r} must be 2-D (H, W), got shape {arr.shape}")
    return arr


def write_instance_label(path: PathLike, inst: np.ndarray) -> None:
    """Atomically write an instance map as a uint16 PNG (or TIFF for ``.tif``/``.tiff``).

    The data are first written to a temporary file in the destination directory and then
    moved into place with :func:`os.replace`, so readers never see a partial file; the
    temporary file is removed on failure. Parent directories are created if needed.

    Args:
        path: destination; TIFF (tifffile) if the suffix is ``.tif``/``.tiff``, else PNG.
        inst: integer (or integral-valued) array of shape (H, W), 0 = background.

    Raises:
        ValueError: ``inst`` is not 2-D, not integral, has negative values, or has ids > 65535
            (more than 65535 instances do not fit in uint16).
    """
    p = Path(os.fspath(path))
    arr = np.asarray(inst)
    if arr.ndim != 2:
        raise ValueError(f"instance map for {str(p)!r} must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"instance map for {str(p)!r} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.size and not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"instance map for {str(p)!r} has non-integer values")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise ValueError(f"instance map for {str(p)!r} has negative ids (min {lo})")
        if hi > _MAX_UINT16:
            raise ValueError(
                f"instance map for {str(p)!r} has ids up to {hi}: more than 65535 instances "
                "do not fit in a uint16 label file"
            )
    arr = arr.astype(np.uint16, copy=False)
    is_tiff = p.suffix.lower() in _TIFF_SUFFIXES

    with atomic_path(p) as tmp:
        if is_tiff:
            import tifffile

            tifffile.imwrite(tmp, arr)
        else:
            from PIL import Image

            Image.fromarray(arr).save(tmp, format="PNG", compress_level=PNG_LEVEL)


class LabelCanvas:
    """An (H, W) instance map kept in a temporary file beside its destination instead of in memory, painted window by
    window and written as a tiled, zlib-compressed TIFF (uint16, or uint32 past 65535 objects): the label map of an
    image too big to hold whole. Memory is bounded by one window (rows are read and written with ``pread`` /
    ``pwrite``). Use as a context manager; the temporary (``.labels.*.part.raw``, cleared by the runners'
    stale-temporary sweep if a run is killed) is removed on exit.

    Args:
        shape: (H, W) of the map.  directory: where the temporary file goes (the output folder: same disk).
    """

    def __init__(self, shape: Sequence[int], directory: PathLike):
        import tempfile

        self.h, self.w = (int(v) for v in shape)
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._fd, self._path = tempfile.mkstemp(prefix=".labels.", suffix=".part.raw", dir=os.fspath(directory))
        os.ftruncate(self._fd, self.h * self.w * 4)  # sparse: zeros until painted
        self.max_id = 0

    def __enter__(self) -> "LabelCanvas":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)
        Path(self._path).unlink(missing_ok=True)

    def read(self, row: int, col: int, h: int, w: int) -> np.ndarray:
        """(h, w) int32 region with top-left (row, col)."""
        out = np.empty((h, w), np.int32)
        for i in range(h):
            out[i] = np.frombuffer(os.pread(self._fd, w * 4, ((row + i) * self.w + col) * 4), np.int32)
        return out

    def paint(self, row: int, col: int, labels: np.ndarray) -> None:
        """Write the non-zero ids of ``labels`` ((h, w) int) at (row, col) where the map is still 0 (an object painted
        by an earlier window keeps its pixels)."""
        labels = np.asarray(labels)
        rows, cols = np.flatnonzero(labels.any(1)), np.flatnonzero(labels.any(0))
        if not len(rows):
            return
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        sub = labels[r0:r1, c0:c1].astype(np.int32)
        cur = self.read(row + r0, col + c0, r1 - r0, c1 - c0)
        new = np.where((cur == 0) & (sub > 0), sub, cur)
        for i in range(len(new)):
            os.pwrite(self._fd, new[i].tobytes(), ((row + r0 + i) * self.w + col + c0) * 4)
        self.max_id = max(self.max_id, int(sub.max()))

    def write(self, path: PathLike, tile: int = 256) -> None:
        """The map as a tiled TIFF at ``path``, atomically, one row of TIFF tiles in memory at a time."""
        import tifffile

        dtype = np.uint16 if self.max_id <= _MAX_UINT16 else np.uint32

        def tiles():
            for r in range(0, self.h, tile):
                strip = self.read(r, 0, min(tile, self.h - r), self.w).astype(dtype)
                for c in range(0, self.w, tile):
                    yield strip[:, c: c + tile]

        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=self.h * self.w * 4 > 2 ** 31) as tw:
            tw.write(tiles(), shape=(self.h, self.w), dtype=dtype, tile=(tile, tile), compression="zlib")


def read_point_table(path: str | os.PathLike) -> dict:
    """A points CSV with ``x,y`` or ``row,col`` columns and optional ``class`` / ``score`` columns (the bundle's own
    ``image,x,y,class,score`` files) -> ``{"points": (N, 2) float (row, col), "class": (N,) str ('' without that
    column), "score": (N,) float (nan without that column)}``.

    Raises:
        ValueError: one line naming the file.
    """
    import csv

    p = os.fspath(path)
    try:
        with open(p, newline="") as f:
            recs = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{p}: cannot read points ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    keys = set(recs[0]) if recs else set()
    try:
        if not recs:
            pts = np.zeros((0, 2))
        elif {"row", "col"} <= keys:
            pts = np.array([[float(r["row"]), float(r["col"])] for r in recs])
        elif {"x", "y"} <= keys:
            pts = np.array([[float(r["y"]), float(r["x"])] for r in recs])
        else:
            raise ValueError(f"columns {sorted(keys)} have neither row,col nor x,y")
        cls = np.array([r.get("class") or "" for r in recs], dtype=str)
        score = np.array([float(r["score"]) if r.get("score") not in (None, "") else np.nan for r in recs], float)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{p}: {e}") from None
    return {"points": pts.reshape(-1, 2), "class": cls, "score": score}


def read_points(path: str | os.PathLike) -> np.ndarray:
    """(N, 2) (row, col) points from a BCData ``.h5`` (``coordinates`` (x, y)), a ``.csv`` with ``x,y`` or
    ``row,col`` columns (:func:`read_point_table`), or a ``.npy`` (N, 2) (row, col) array.

    Raises:
        ValueError: one line naming the file.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"{p}: points file does not exist")
    suf = Path(p).suffix.lower()
    if suf == ".csv":
        return read_point_table(p)["points"]
    try:
        if suf in (".h5", ".hdf5"):
            return read_bcdata_points(p)[:, ::-1].astype(np.float64)
        if suf == ".npy":
            a = np.load(p, allow_pickle=False).astype(np.float64)
            return a.reshape(-1, 2)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(p) or p in msg else f"{p}: {msg}") from None
    except Exception as e:
        raise ValueError(f"{p}: cannot read points ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    raise ValueError(f"{p}: unsupported points format {suf!r} (use .h5, .csv or .npy)")
