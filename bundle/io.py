# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Image folders in, files out: one reader for tiles, atomic writers.

Every reader error is an :class:`ImageError` whose message is one line naming the file and the problem,
so a folder runner can report it and go on with the other images.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES", "ImageError", "list_images", "read_rgb", "atomic_path", "remove_stale_parts",
    "write_image", "write_json", "write_npy", "write_csv", "spreadsheet_safe", "load_datalist", "read_mask",
    "read_rgb_or_skip", "usable_items", "streamed_outputs", "write_geojson", "overlay_mask", "datalist_items",
    "unique_names", "with_names", "item_name", "image_size", "tiled_tiff_copy", "streamed_csv", "MAX_TILE_PIXELS"
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageError(ValueError):
    """A one-line, user-facing problem with one input file."""


def list_images(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[str]:
    """Sorted image paths directly inside ``folder`` (not recursive).

    Raises:
        ImageError: the folder does not exist, is not a folder, or holds no image file.
    """
    p = Path(folder)
    if not p.exists():
        raise ImageError(f"{p}: folder does not exist")
    if p.is_file():
        return [str(p)]
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
    if not files:
        raise ImageError(f"{p}: no image files ({', '.join(suffixes)}) in this folder")
    return files


def to_uint8_rgb(arr: np.ndarray, path: str) -> np.ndarray:
    """Convert grayscale/RGBA/16-bit/float arrays to (H, W, 3) uint8."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported image shape {arr.shape} (need H x W with 1, 3 or 4 channels)")
    if arr.shape[-1] == 2:  # grey + alpha
        arr = arr[..., :1]
    if arr.shape[-1] == 4:  # drop alpha (histology tiles are opaque)
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            raise ImageError(f"{path}: image contains NaN or infinite values")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        out = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"{path}: unsupported pixel type {arr.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _check_file(path) -> str:
    """``path`` as a string when it names a non-empty file; else the one-line :class:`ImageError` saying why not."""
    path = str(path)
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a folder, not an image (list the images inside it, or give the folder as "
                         "--dataset_dir)")
    if not os.path.isfile(path):
        raise ImageError(f"{path}: file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    return path


def read_rgb(path: str | os.PathLike, min_size: int = 1) -> np.ndarray:
    """Read a tile as an (H, W, 3) uint8 RGB array.

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit, TIFFs are read with
    tifffile (first page / series), everything else with Pillow.

    Raises:
        ImageError: missing, empty, truncated or non-image file, unsupported layout, or a side < ``min_size``.
    """
    path = _check_file(path)
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            arr = tifffile.imread(path)
            if arr.ndim == 4:  # pages x H x W x C: take the first page
                arr = arr[0]
        else:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im).astype(np.uint16 if im.mode != "I" else np.int32)
                    if arr.dtype == np.int32:
                        arr = np.clip(arr, 0, 65535).astype(np.uint16)
                elif im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1", "LA", "PA"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
    except ImageError:
        raise
    except Exception as e:  # PIL/tifffile raise many types for corrupt data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{path}: cannot read image ({msg})") from None
    img = to_uint8_rgb(np.asarray(arr), path)
    h, w = img.shape[:2]
    if min(h, w) < min_size:
        raise ImageError(f"{path}: image is {h}x{w}, smaller than the {min_size}x{min_size} minimum this step needs")
    return img


MAX_TILE_PIXELS = 2 ** 31  # a larger plain image (about 46000 x 46000) is refused: give it as a pyramidal TIFF slide


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(rows, cols) of an image file from its header, without decoding the pixels (Pillow, or tifffile for TIFFs).

    Raises:
        ImageError: missing, empty or unreadable file.
    """
    path = _check_file(path)
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape
                axes = tf.series[0].axes
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # a header is no bomb: MAX_TILE_PIXELS decides
        try:
            with Image.open(path) as im:
                return int(im.height), int(im.width)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    except Exception as e:  # noqa: BLE001 - PIL/tifffile raise many types for corrupt data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{path}: cannot read image ({msg})") from None


def tiled_tiff_copy(path: str | os.PathLike, dst: str | os.PathLike, tile: int = 256) -> None:
    """Copy a PNG / JPEG / BMP tile into a tiled uint8 RGB TIFF at ``dst``, converted strip by strip as
    :func:`read_rgb` converts a whole tile (grey, alpha, 16-bit, palette, CMYK), so a big tile can then be read
    region by region (:class:`bundle.wsi.SlideTiles`) with memory bounded by the region, not the tile.

    With pyvips installed (the ``large`` extra) the image is decoded in strips too, so memory stays bounded
    whatever its size; without it Pillow decodes it whole first (4 bytes per pixel, and Pillow's own
    decompression-bomb limit, about 179 megapixels, applies).

    Raises:
        ImageError: unreadable file, or more than :data:`MAX_TILE_PIXELS` pixels.
    """
    import tifffile

    path = str(path)
    h, w = image_size(path)
    if h * w > MAX_TILE_PIXELS:
        raise ImageError(f"{path}: image is {h}x{w}, more than the {MAX_TILE_PIXELS} pixels a plain image may have "
                         "(give it as a tiled pyramidal TIFF, which is read as a slide)")
    try:
        import pyvips
    except (ImportError, OSError):  # OSError: pyvips without its libvips
        pyvips = None
    try:
        if pyvips is not None:
            im = pyvips.Image.new_from_file(path, access="sequential", fail_on="truncated")
            if im.interpretation == "cmyk":
                im = im.colourspace("srgb")

            def strip(r, n):
                return im.crop(0, r, w, n).numpy()
        else:
            pil = Image.open(path)
            pil.load()
            if pil.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1", "LA", "PA"):
                pil = pil.convert("RGB")

            def strip(r, n):
                return np.asarray(pil.crop((0, r, w, r + n)))

        def tiles():
            for r in range(0, h, tile):
                rows = to_uint8_rgb(np.asarray(strip(r, min(tile, h - r))), path)
                for c in range(0, w, tile):
                    yield rows[:, c: c + tile]

        with tifffile.TiffWriter(os.fspath(dst), bigtiff=h * w * 3 > 2 ** 31) as tw:
            tw.write(tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "; install pyvips (pip install 'pyvips[binary]') to read it in strips" if (
            pyvips is None and "decompression bomb" in msg) else ""
        raise ImageError(f"{path}: cannot read image ({msg[:200]}){hint}") from None


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Every writer of the bundle goes through this, so a killed run never leaves a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # data on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception as e:
        # a full disk can surface as another library's error (PIL: "'_idat' object has no attribute 'fileno'") raised
        # while it handles the OSError: report the OSError, naming the file
        from bundle.errors import exception_chain

        err = next((x for x in exception_chain(e) if isinstance(x, OSError) and x.errno), None)
        if err is not None and str(path) not in str(err):
            raise OSError(err.errno, f"{err.strerror or err}: cannot write {path}") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_parts(path: str | os.PathLike) -> None:
    """Delete temporaries that :func:`atomic_path` left beside ``path`` when a run writing it was killed."""
    path = Path(path)
    for part in path.parent.glob(f".{path.name}.*.part{path.suffix}"):
        part.unlink(missing_ok=True)


PNG_LEVEL = 1
"""zlib level of every PNG the bundle writes (images, masks, overlays, instance maps)."""


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array (PNG/JPEG/TIFF by suffix) atomically. PNGs use zlib level
    :data:`PNG_LEVEL` (OpenCV's default), about 4x faster than Pillow's level 6 for 13 % more bytes
    (docs/results/cpu_work.md; the pseudo-mask stage spent 27 of its 93 s on PNG encoding)."""
    path = Path(path)
    arr = np.asarray(array)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, arr)
        else:
            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
            Image.fromarray(arr).save(tmp, format=fmt, **({"compress_level": PNG_LEVEL} if fmt == "PNG" else {}))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a NumPy array (``.npy``, no pickle) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def spreadsheet_safe(row: dict) -> dict:
    """``row`` with every text value that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``,
    ``@``, tab or carriage return, e.g. a file named ``=HYPERLINK(...).png``) prefixed by ``'``, as OWASP advises for
    CSV exports; numbers are kept as they are."""
    return {k: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v for k, v in row.items()}


def write_csv(path: str | os.PathLike, rows: Iterable[dict], fieldnames: Sequence[str] = ()) -> None:
    """Write a list of dicts as CSV atomically (text cells made :func:`spreadsheet_safe`). Header: ``fieldnames``
    first, then the other keys of the rows in first-seen order (so an empty ``rows`` with ``fieldnames`` still gives a
    header line)."""
    import csv

    rows = list(rows)
    keys: list[str] = list(fieldnames)
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(spreadsheet_safe(r) for r in rows)


def write_parquet(path: str | os.PathLike, columns: dict) -> bool:
    """Write ``{name: (N,) values}`` as a Parquet table atomically when pyarrow is installed (the ``parquet`` extra);
    returns False, writing nothing, when it is not. Empty strings (a CSV's missing value) become nulls."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    table = pa.table({k: pa.array([None if isinstance(x, str) and x == "" else x for x in np.asarray(v).tolist()])
                      for k, v in columns.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return True


def load_datalist(path_or_folder: str | os.PathLike, key: str = "training",
                  fallback: str | None = None) -> list[dict]:
    """Items ``[{"image": path, "label"?: path}, ...]`` from a folder of tiles or a datalist JSON.

    A folder gives one item per image (no labels). A JSON file is read with ``key`` (MONAI datalist style), or with
    ``fallback`` when it has no ``key`` items (inference reads ``testing``, else ``training``); relative paths are
    resolved against the JSON's folder.
    """
    if fallback is not None and fallback != key:
        try:
            return load_datalist(path_or_folder, key)
        except ImageError:
            return load_datalist(path_or_folder, fallback)
    p = Path(path_or_folder)
    if p.is_file() and p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except Exception as e:
            raise ImageError(f"{p}: not a readable JSON datalist ({e})") from None
        items = data.get(key) if isinstance(data, dict) else data
        if not items:
            raise ImageError(f"{p}: datalist has no '{key}' items")
        if not isinstance(items, list):
            raise ImageError(f"{p}: '{key}' must be a list of items, got {type(items).__name__}")
        out, bad = [], 0
        for i, it in enumerate(items):
            it = {"image": it} if isinstance(it, str) else dict(it) if isinstance(it, dict) else None
            if it is None or not isinstance(it.get("image"), str) or not it["image"].strip():
                logging.getLogger(__name__).warning(
                    f"skipped {p}: '{key}' item {i} has no 'image' path ({json.dumps(items[i])[:120]})")
                bad += 1
                continue
            for k in ("image", "label", "mask", "points"):
                if isinstance(it.get(k), str) and not os.path.isabs(it[k]):
                    it[k] = str(p.parent / it[k])
            out.append(it)
        if not out:
            raise ImageError(f"{p}: none of the {len(items)} '{key}' items has an 'image' path")
        return with_names(out)
    return with_names([{"image": f} for f in list_images(p)])


def unique_names(paths: Sequence) -> list[str]:
    """Output names (no extension) for input files, distinct whatever the inputs, so two inputs never write one set
    of outputs: the file's stem; for a stem several inputs share (``dup.png`` and ``dup.jpg``) the stem and the
    extension (``dup_png``); where that is still shared (one name in two folders) also a hash of the full path
    (``dup_png_1a2b3c4d``); the same file listed twice gets ``_2``, ``_3`` ..."""
    import hashlib
    from collections import Counter

    ps = [Path(str(p)) for p in paths]
    stems = Counter(p.stem for p in ps)
    names = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in ps]
    counts = Counter(names)
    names = [n if counts[n] == 1 else f"{n}_{hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]}"
             for n, p in zip(names, ps)]
    seen, out = Counter(), []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    while len(set(out)) < len(out):  # a derived name equal to another input's own stem
        c = Counter(out)
        out = [n if c[n] == 1 or i == out.index(n) else f"{n}_{i}" for i, n in enumerate(out)]
    return out


def with_names(items: list[dict]) -> list[dict]:
    """``items`` (``{"image": path, ...}``) each with a ``name``: its own if it has one, else :func:`unique_names`."""
    names = unique_names([it["image"] for it in items])
    return [it if it.get("name") else {**it, "name": n} for it, n in zip(items, names)]


def item_name(item: dict) -> str:
    """The output name of an input item: its ``name`` (:func:`with_names`), else its file's stem."""
    return str(item.get("name") or Path(str(item["image"])).stem)


def datalist_items(data, key: str = "training") -> list:
    """``data`` (a folder, one image, a datalist JSON, or a list of paths / ``{"image": path}`` dicts) -> a list of
    ``{"image": path, ...}`` dicts (datalist JSON: the items under ``key``)."""
    if isinstance(data, (list, tuple)):
        return with_names([d if isinstance(d, dict) else {"image": d} for d in data])
    return load_datalist(data, key)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A binary mask written as an image (e.g. a pseudo mask PNG: 0 / 255) -> (H, W) bool, True where the first
    channel is above 127. Errors as :func:`read_rgb`."""
    return read_rgb(path)[..., 0] > 127


def read_rgb_or_skip(path: str | os.PathLike, skipped: list, min_size: int = 32):
    """:func:`read_rgb`, or None for an unusable file after logging ``skipped <reason>`` (one line) and appending the
    reason to ``skipped`` (the runners' list of skipped files)."""
    try:
        return read_rgb(path, min_size=min_size)
    except ImageError as e:
        import logging

        logging.getLogger(__name__).warning(f"skipped {e}")
        skipped.append(str(e))
        return None


def usable_items(items: list[dict], min_size: int = 32, key: str = "image") -> list[dict]:
    """Keep the items whose ``key`` image reads and is at least ``min_size`` per side; log one line per skipped file.

    Raises:
        ImageError: none is usable.
    """

    log = logging.getLogger(__name__)
    good, bad = [], []
    for it in items:
        try:
            read_rgb(it[key], min_size=min_size)
            good.append(it)
        except ImageError as e:
            log.warning(f"skipped {e}")
            bad.append(str(e))
    if not good:
        raise ImageError(f"no usable image among {len(items)} listed ({bad[0] if bad else 'empty list'})")
    if bad:
        log.warning(f"{len(bad)} of {len(items)} images skipped")
    return good


def _geojson_feature(k: int, poly, properties: dict | None, object_type: str) -> dict:
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if len(xy) and not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    p = {"objectType": object_type}
    if properties is not None:
        p.update(properties)
    return {"type": "Feature", "id": str(k + 1),
            "geometry": {"type": "Polygon", "coordinates": [np.round(xy, 2).tolist()]}, "properties": p}


@contextmanager
def streamed_csv(path: str | os.PathLike, fieldnames: Sequence[str]):
    """Write a CSV row by row (text cells made :func:`spreadsheet_safe`); the file appears atomically when the block
    ends without error. Yields ``add(rows)`` for lists of dicts with exactly ``fieldnames``."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames))
        w.writeheader()
        yield lambda rows: w.writerows(spreadsheet_safe(r) for r in rows)
        f.flush()


@contextmanager
def streamed_outputs(csv_path: str | os.PathLike, fieldnames: Sequence[str], geojson_path: str | os.PathLike,
                     object_type: str = "detection"):
    """Write a points CSV and a GeoJSON FeatureCollection row by row, so memory does not grow with the number of
    objects (whole slides); both files appear atomically when the block ends without error.

    Yields ``add(rows, polygons, properties)``: appends CSV rows (dicts with exactly ``fieldnames``) and polygon
    features, as :func:`write_csv` / :func:`write_geojson` would write them (same bytes for the same objects).
    """
    from contextlib import ExitStack

    with ExitStack() as stack:
        add_rows = stack.enter_context(streamed_csv(csv_path, fieldnames))
        tmp_geo = stack.enter_context(atomic_path(geojson_path))
        fg = stack.enter_context(open(tmp_geo, "w"))
        fg.write('{"type": "FeatureCollection", "features": [')
        count = [0]

        def add(rows, polygons, properties=None):
            add_rows(rows)
            props = list(properties) if properties is not None else None
            for i, poly in enumerate(polygons):
                feat = _geojson_feature(count[0], poly, props[i] if props is not None else None, object_type)
                fg.write((", " if count[0] else "") + json.dumps(feat))
                count[0] += 1

        yield add
        fg.write("]}")
        fg.flush()


def write_geojson(path: str | os.PathLike, polygons: Iterable, properties: Iterable[dict] | None = None,
                  object_type: str = "detection") -> None:
    """Write polygons as a GeoJSON FeatureCollection that QuPath imports (File > Import objects), atomically.

    Args:
        polygons: sequence of (K, 2) (x, y) vertex arrays (closed or not; closed here), in image pixels.
        properties: optional per-polygon dicts merged into each feature's ``properties`` (e.g. ``{"classification":
            {"name": "Nucleus"}, "measurements": {...}}``).
        object_type: QuPath object type, ``"detection"`` (many small objects) or ``"annotation"``.
    """
    props = list(properties) if properties is not None else None
    feats = [_geojson_feature(k, poly, props[k] if props is not None else None, object_type)
             for k, poly in enumerate(polygons)]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(json.dumps({"type": "FeatureCollection", "features": feats}))  # C encoder: 5x json.dump's speed


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """(H, W, 3) uint8 image with the boundaries of ``mask`` (bool or labels) drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    out[find_boundaries(mask, mode="inner")] = colour
    return out
