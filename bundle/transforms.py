# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Transforms shared by training and inference, so both see identically normalised inputs.

* :func:`normalize_rgb` — the one input normalisation of the activation network: (rgb/255 - 0.5) / 0.25.
* :func:`hematoxylin_od` — haematoxylin optical density by colour deconvolution (Ruifrok & Johnston).
* :class:`LoadTiled` — MONAI dictionary transform reading a tile with :func:`bundle.io.read_rgb` to (3, H, W) float.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from bundle.io import read_rgb
from bundle.stain import hematoxylin_channel

__all__ = [
    "MEAN", "STD", "normalize_rgb", "resize_rgb", "resampled_tiles", "add_hematoxylin_channel", "network_input",
    "LoadTiled", "LoadLabeld", "NormalizeRGBd", "RandStainJitterd"
]

MEAN, STD = 0.5, 0.25


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) RGB in [0, 255] -> network input, (x/255 - 0.5)/0.25."""
    return (x / 255.0 - MEAN) / STD


def resize_rgb(rgb: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 -> (round(H * scale), round(W * scale), 3) uint8: bilinear, anti-aliased when shrinking
    (``scale`` 2 shows a 20x tile to a network trained at 40x)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if scale == 1:
        return np.asarray(rgb)
    from skimage.transform import resize

    h, w = rgb.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize(rgb, size, order=1, preserve_range=True, anti_aliasing=scale < 1).round().astype(np.uint8)


def resampled_tiles(data, scale: float, out_dir, datalist_key: str = "training"):
    """The tiles of ``data`` (folder or datalist JSON) resized by ``scale`` (:func:`resize_rgb`), written once to
    ``out_dir`` as PNG (atomically) and returned as a datalist ``[{"image": path}, ...]``; ``scale`` 1 returns
    ``data`` unchanged. ``out_dir/settings.json`` records the scale and each copy's source (path, size, mtime): a
    copy is reused only while all of them match, so another folder, an edited tile or another scale rewrites it.
    Copies are named ``<stem>.png``, or ``<stem>_<hash of the source path>.png`` when two sources share a stem. A
    training config uses it to train at another pixel size than the tiles' (``ki67_train.json`` ``train_mpp``).
    Unreadable tiles are skipped with one line each (:func:`bundle.io.read_rgb_or_skip`)."""
    import hashlib
    import json
    from collections import Counter
    from pathlib import Path

    from bundle.io import load_datalist, read_rgb_or_skip, write_image, write_json

    scale = float(scale)
    if abs(scale - 1.0) < 1e-6:
        return data
    out_dir = Path(out_dir)
    record = out_dir / "settings.json"
    try:
        old = json.loads(record.read_text()) if record.is_file() else {}
        old = old.get("files", {}) if old.get("scale") == scale else {}
    except (ValueError, AttributeError):  # a damaged record: rewrite the copies
        old = {}
    sources = [Path(it["image"]) for it in load_datalist(data, datalist_key)]
    stems = Counter(p.stem for p in sources)
    items, skipped, files = [], [], {}
    for src in sources:
        name = src.stem
        if stems[src.stem] > 1:  # two folders of a datalist, or 0.png and 0.jpg
            name += "_" + hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]
        dst = out_dir / f"{name}.png"
        try:
            st = src.stat()
            key = [str(src.resolve()), st.st_size, st.st_mtime_ns]
        except OSError:
            key = None
        if key is None or old.get(dst.name) != key or not dst.is_file():
            rgb = read_rgb_or_skip(src, skipped)
            if rgb is None:
                continue
            write_image(dst, resize_rgb(rgb, scale))
        files[dst.name] = key
        items.append({"image": str(dst)})
    write_json(record, {"scale": scale, "source": str(data), "files": files})
    return items


def add_hematoxylin_channel(x: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """(3, H, W) RGB tensor in [0, 255] -> (4, H, W): :func:`hematoxylin_channel` of the whole given image appended
    (its own Otsu threshold, or ``threshold``)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"add_hematoxylin_channel expects a (3, H, W) RGB tensor, got {tuple(x.shape)}")
    rgb = x.detach().cpu().numpy().transpose(1, 2, 0).clip(0, 255).round().astype(np.uint8)
    h = torch.from_numpy(hematoxylin_channel(rgb, threshold)).to(x.device, x.dtype)
    return torch.cat([x, h[None]], 0)


def network_input(rgb: np.ndarray, scale: float = 1.0, hematoxylin: bool = False,
                  threshold: float | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (C, h, w) float32 network input: resized by ``scale`` (:func:`resize_rgb`), with
    :func:`hematoxylin_channel` of the resized image appended when ``hematoxylin`` (C = 4; relative to its own Otsu
    threshold or ``threshold``), then :func:`normalize_rgb`. What the runner and the Deploy evaluator at another
    pixel size both show a network."""
    rgb = resize_rgb(np.asarray(rgb), scale)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()
    if hematoxylin:
        x = add_hematoxylin_channel(x, threshold)
    return normalize_rgb(x)


class LoadTiled(MapTransform):
    """Read ``data[key]`` (a path) as a float32 tensor (3, H, W) in [0, 255]; keeps the path in ``<key>_path``.
    ``hematoxylin=True`` appends :func:`hematoxylin_channel` of the whole image: (4, H, W) (for networks trained
    with ``seg_train.json --hematoxylin_input True``; computed here, before any crop, so the threshold is the
    image's).

    Raises :class:`bundle.io.ImageError` (one line, names the file) for unreadable or too-small images.
    """

    def __init__(self, keys=("image",), min_size: int = 32, hematoxylin: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_size, self.hematoxylin = min_size, bool(hematoxylin)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            img = read_rgb(path, min_size=self.min_size)
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
            if self.hematoxylin:
                x = torch.cat([x, torch.from_numpy(hematoxylin_channel(img))[None]], 0)
            d[key] = x
            d[f"{key}_path"] = str(path)
        return d


class LoadLabeld(MapTransform):
    """Read a training label into a float32 tensor (L, H, W): ``.npy`` arrays (H, W) or (L, H, W), or a
    PNG/TIFF (H, W) (a 0/255 pseudo mask becomes 0/1 when ``binarize``). Keeps integer values (e.g. 255 = ignore).

    Raises ``ValueError`` naming the file when it cannot be read.
    """

    def __init__(self, keys=("label",), binarize: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.binarize = binarize

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            try:
                if path.endswith(".npy"):
                    arr = np.load(path, allow_pickle=False)
                else:
                    from bundle.annotations import read_instance_label

                    arr = read_instance_label(path)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{path}: cannot read label ({str(e).splitlines()[0] if str(e) else e})") from None
            arr = np.asarray(arr)
            if arr.ndim == 2:
                arr = arr[None]
            if self.binarize:
                arr = (arr > 0).astype(np.uint8)
            d[key] = torch.from_numpy(np.ascontiguousarray(arr)).float()
        return d


class NormalizeRGBd(MapTransform):
    """Dictionary version of :func:`normalize_rgb` ((3, H, W) in [0, 255] -> normalised float)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_rgb(torch.as_tensor(d[key]).float())
        return d


class RandStainJitterd(Randomizable, MapTransform):
    """Random H&E colour augmentation on a (3, H, W) [0, 255] image (channels after the third, e.g.
    ``LoadTiled(hematoxylin=True)``'s, are left unchanged): per-channel optical-density scale
    ``1 +- sigma`` and shift ``+- bias`` (OD units), with probability ``prob``; seeded like any MONAI randomizable
    transform (``set_determinism`` / ``Compose.set_random_state``)."""

    def __init__(self, keys=("image",), sigma: float = 0.05, bias: float = 0.02, prob: float = 0.8):
        MapTransform.__init__(self, keys)
        self.sigma, self.bias, self.prob = sigma, bias, prob

    def randomize(self, data=None):
        self._do = self.R.rand() < self.prob
        self._a = 1 + self.R.uniform(-self.sigma, self.sigma, 3)
        self._b = self.R.uniform(-self.bias, self.bias, 3)

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        a = torch.as_tensor(self._a, dtype=torch.float32)[:, None, None]
        b = torch.as_tensor(self._b, dtype=torch.float32)[:, None, None]
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()
            od = -torch.log((x[:3] + 1) / 256)
            rgb = (256 * torch.exp(-(od * a + b)) - 1).clamp(0, 255)
            d[key] = torch.cat([rgb, x[3:]], 0) if x.shape[0] > 3 else rgb  # extra channels (e.g. haematoxylin) kept
        return d
