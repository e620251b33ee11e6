# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG: unsupervised tissue segmentation by factorising frozen network features (Gildenblat & Hadar 2024).

No labels and no training of the backbone:

1. A frozen backbone gives non-negative spatial features ``A`` (C, h, w) at stride ``s`` (16 for every backbone
   here); the input is padded (replicate, bottom/right) to a multiple of ``s``. Three backbone kinds share one
   interface (:class:`FeatureExtractor`): the project's own self-supervised :class:`bundle.networks.Res2Net`
   (:class:`Res2NetFeatures`), ResNet-50 ``layer3`` built with MONAI (:class:`ResNet50Features`) and a timm ViT
   (:class:`TimmViTFeatures`, last block, CLS/register tokens dropped, ReLU). Weights always come from a local file;
   nothing is downloaded.
2. A concept bank (:class:`ConceptBank`): K-Means on global-average-pooled features of many tiles, several k at
   once, stored with the backbone's signature (kind, layer, channels, stride, preprocessing, weights fingerprint) so
   that it cannot be used with another backbone (:class:`BankMismatchError`, one line).
3. Segmentation of one image (``X`` = A reshaped to (P = h*w, C)):

   * variant **A** (:func:`variant_a`): NMF ``X ~ W H`` with ``n`` components (:func:`nmf`), each row of H mapped
     to the most cosine-similar bank centre, pixel label = centre of the argmax of the bilinearly upsampled W;
   * variant **B** (:func:`variant_b`): H fixed to the bank centres (negatives clipped to 0), solve ``W >= 0``
     per pixel (:func:`nnls`, the same coordinate descent and stopping rule as scikit-learn's
     ``non_negative_factorization(update_H=False)``, batched over pixels in torch); label = argmax = centre id.

   Labels are bank centre ids, so they are consistent across images and tiles.
4. Evaluation with ground-truth masks (:class:`FSegEvaluator`): matching (each cluster -> the GT class with most
   pixels, or with the largest class-frequency-normalised share) and the paper's linear probe on concept features.

Runners for the bundle workflows: :class:`ConceptBankBuilder` (``configs/fseg_bank.json``), :class:`FSegRunner`
(``configs/fseg_infer.json``), :class:`FSegEvaluator` (``configs/fseg_evaluate.json``).
Whole-slide images in the data are read tile-wise through :class:`bundle.wsi.SlideTiles` (bank: random tissue tiles;
inference: streamed tissue tiles, label map at one pixel per feature cell).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .networks.memory import cpu_channels_last
from .io import ImageError, load_datalist, read_rgb, read_rgb_or_skip, write_csv, write_image, write_json

logger = logging.getLogger(__name__)

BANK_FORMAT = "fseg-concept-bank"
BANK_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VARIANTS = ("A", "B")
#: the signature fields a concept bank must share with the extractor it is used with
SIGNATURE_KEYS = ("backbone", "layer", "channels", "stride", "preprocessing", "weights_sha256")


class BankMismatchError(ValueError):
    """A concept bank used with a backbone other than the one it was fitted on (one-line message)."""


# ----------------------------------------------------------------------------------------------
# feature extractors
# ----------------------------------------------------------------------------------------------
def state_dict_fingerprint(sd: Dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of the SHA-256 of a state dict's names, shapes and values (order-independent)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        h.update(k.encode())
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def to_batch(rgb) -> torch.Tensor:
    """(H, W, 3) uint8 array, (3, H, W) or (B, 3, H, W) tensor in [0, 255] -> (B, 3, H, W) float32 in [0, 255]."""
    if isinstance(rgb, np.ndarray):
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
        rgb = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    x = rgb.float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB, got shape {tuple(x.shape)}")
    return x


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``m`` (as the F-SEG reference)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


class FeatureExtractor:
    """Frozen backbone -> non-negative spatial features; the one interface every backbone kind implements.

    Call with a tile ((H, W, 3) uint8 array) or a batch ((B, 3, H, W) float in [0, 255]); returns
    (B, C, ceil(H'/stride), ceil(W'/stride)) float32 >= 0 on :attr:`device`, where H' = round(H * input_scale).
    The input is resized by ``input_scale`` (e.g. 0.5: 20x -> 10x), normalised, padded to a multiple of
    ``stride`` (replicate) and passed through the network up to :attr:`layer`.

    Attributes:
        backbone, layer, channels, stride, preprocessing (str), weights_sha256: the :meth:`signature` stored in
        a concept bank.
    """

    backbone = "base"
    preprocessing = "imagenet"
    #: inputs larger than this (px, after scaling and padding) are processed in tiles with ``tile_margin`` context
    max_tile = 2048
    tile_margin = 256

    def __init__(self, module: torch.nn.Module, layer: str, channels: int, stride: int, weights_sha256: str,
                 device="cpu", input_scale: float = 1.0):
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.layer, self.channels, self.stride = layer, int(channels), int(stride)
        self.weights_sha256 = weights_sha256
        self.input_scale = float(input_scale)
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be > 0, got {input_scale}")
        self.device = torch.device("cpu")
        self.to(device)

    def to(self, device) -> "FeatureExtractor":
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def signature(self) -> dict:
        """Identity of the features: backbone, layer, channels, stride, preprocessing, weights fingerprint."""
        return {"backbone": self.backbone, "layer": self.layer, "channels": self.channels, "stride": self.stride,
                "preprocessing": self.preprocessing, "weights_sha256": self.weights_sha256,
                "input_scale": self.input_scale}

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 255] -> network input (ImageNet mean/std on [0, 1] unless overridden)."""
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scaled_size(self, h: int, w: int) -> tuple:
        """Size (H', W') of an (h, w) image after ``input_scale``."""
        if self.input_scale == 1.0:
            return h, w
        return max(1, int(round(h * self.input_scale))), max(1, int(round(w * self.input_scale)))

    @torch.no_grad()
    def __call__(self, rgb) -> torch.Tensor:
        x = to_batch(rgb).to(self.device)
        hs, ws = self.scaled_size(*x.shape[-2:])
        if (hs, ws) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
        x = pad_to_multiple(self.normalise(x), self.stride)
        if max(x.shape[-2:]) <= self.max_tile:
            feats = self.forward_features(cpu_channels_last(x)).float()
        else:
            feats = self._tiled(x)
        return torch.nan_to_num(feats).clamp_min_(0.0)

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a large padded input in tiles of ``max_tile`` px, each computed with ``tile_margin`` px of
        context on every side and only its central cells kept (memory bounded by the tile size)."""
        s = self.stride
        T = max(s, self.max_tile // s * s)
        M = self.tile_margin // s * s
        b, _, H, W = x.shape
        out = None
        for y in range(0, H, T):
            for x0 in range(0, W, T):
                y0, y1 = max(0, y - M), min(H, y + T + M)
                xa, xb = max(0, x0 - M), min(W, x0 + T + M)
                f = self.forward_features(cpu_channels_last(x[:, :, y0:y1, xa:xb])).float()
                if out is None:
                    out = f.new_zeros((b, f.shape[1], H // s, W // s))
                th, tw = min(T, H - y) // s, min(T, W - x0) // s
                oy, ox = (y - y0) // s, (x0 - xa) // s
                out[:, :, y // s:y // s + th, x0 // s:x0 // s + tw] = f[:, :, oy:oy + th, ox:ox + tw]
        return out


def _load_into(module: torch.nn.Module, weights, what: str, map_location="cpu", ignore_prefixes=()) -> str:
    """Load a local state-dict file into ``module`` (strict, except keys starting with ``ignore_prefixes``) and
    return the fingerprint of the loaded weights. ``weights`` None/'random' keeps the (seeded) random init.

    Raises:
        FileNotFoundError / ValueError: one line naming the file.
    """
    if weights is None or str(weights).lower() in ("", "random", "none"):
        logger.warning(f"{what}: no weights file given, using a random-init network (a floor, not a model)")
        return "random-" + state_dict_fingerprint(module.state_dict())
    from .io import read_state_dict

    sd = read_state_dict(weights, f"{what} weights", map_location,
                         hint=" (train the own network with configs/ssl_train.json, or pass --weights_path FILE or "
                              "random)")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    own = {k for k in module.state_dict() if not any(k.startswith(p) for p in ignore_prefixes)}
    missing, unexpected = sorted(own - set(sd)), sorted(set(sd) - own)
    if missing or unexpected:
        raise ValueError(f"{os.fspath(weights)}: {what} weights do not match the network "
                         f"({len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. "
                         f"{unexpected[:3]})")
    try:
        module.load_state_dict(sd, strict=False)
    except Exception as e:
        raise ValueError(f"{os.fspath(weights)}: {what} weights do not match the network "
                         f"({str(e).replace(chr(10), ' ')[:300]})") from None
    return state_dict_fingerprint({k: v for k, v in module.state_dict().items()
                                   if not any(k.startswith(p) for p in ignore_prefixes)})


class Res2NetFeatures(FeatureExtractor):
    """The project's own self-supervised :class:`bundle.networks.Res2Net` (trained by ``configs/ssl_train.json``).

    Args:
        weights: its ``models/model.pt`` (the projection/scalar heads are ignored), or ``"random"`` for a seeded
            random-init network (the floor of the benchmark).
        layer: ``layer1``..``layer4`` (stride 4, 8, 16, 32); default ``layer3`` (stride 16, post-ReLU, as F-SEG).
        depth, base_channels: must match the training config (CPU profile: ``"cpu"``, 32).
    Input normalisation is the one used in training: (rgb/255 - 0.5)/0.25.
    """

    backbone = "res2net"
    preprocessing = "(rgb/255-0.5)/0.25"

    def __init__(self, weights="random", layer: str = "layer3", depth="cpu", base_channels: int = 32,
                 device="cpu", seed: int = 0, input_scale: float = 1.0):
        from .networks import Res2Net

        stages = ("layer1", "layer2", "layer3", "layer4")
        if layer not in stages:
            raise ValueError(f"res2net layer must be one of {stages}, got {layer!r}")
        torch.manual_seed(int(seed))
        net = Res2Net(depth, base_channels=int(base_channels))
        sha = _load_into(net, weights, "res2net", ignore_prefixes=("fc.", "projector.", "predictor."))
        self.n_stages = stages.index(layer) + 1
        channels = int(base_channels) * (2 ** (self.n_stages - 1)) * 4
        super().__init__(net, layer, channels, 2 ** (self.n_stages + 1), sha, device, input_scale)
        self.backbone = f"res2net-{depth}-{base_channels}"

    def normalise(self, x):
        from .transforms import normalize_rgb

        return normalize_rgb(x)

    def forward_features(self, x):
        x = self.module.stem(x)
        for s in self.module.stages()[: self.n_stages]:
            x = s(x)
        return x


class ResNet50Features(FeatureExtractor):
    """ResNet-50 built with MONAI (``monai.networks.nets.resnet50``, 2-D, torchvision layout: 7x7/2 stem, no bias
    in the shortcut convs), features of ``layer3`` (1024 channels, stride 16, post-ReLU) as in F-SEG.

    Args:
        weights: a local state dict with torchvision or MONAI key names (e.g. torchvision's
            ``resnet50-*.pth``; ``fc.*`` is ignored), or ``"random"``. Input normalised with ImageNet mean/std.
        layer: ``layer1``..``layer4`` (256/512/1024/2048 channels, stride 4/8/16/32).
    """

    backbone = "resnet50"

    def __init__(self, weights="random", layer: str = "layer3", device="cpu", seed: int = 0,
                 input_scale: float = 1.0):
        from monai.networks.nets import resnet50

        stages = ("layer1", "layer2", "layer3", "layer4")
        if layer not in stages:
            raise ValueError(f"resnet50 layer must be one of {stages}, got {layer!r}")
        torch.manual_seed(int(seed))
        net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, bias_downsample=False,
                       num_classes=1000)
        sha = _load_into(net, weights, "resnet50", ignore_prefixes=("fc.",))
        self.n_stages = stages.index(layer) + 1
        super().__init__(net, layer, 256 * 2 ** (self.n_stages - 1), 2 ** (self.n_stages + 1), sha, device,
                         input_scale)

    def forward_features(self, x):
        m = self.module
        x = m.maxpool(m.act(m.bn1(m.conv1(x)))) if hasattr(m, "act") else m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for s in (m.layer1, m.layer2, m.layer3, m.layer4)[: self.n_stages]:
            x = s(x)
        return x


class TimmViTFeatures(FeatureExtractor):
    """A timm Vision Transformer (e.g. UNI: ``vit_large_patch16_224`` with ``init_values=1e-5``) with local weights.

    Features: output of the last block (before the final norm), prefix (CLS/register) tokens dropped, reshaped to
    (C, H/p, W/p), then ReLU, as in F-SEG. ImageNet normalisation. Needs the optional ``timm`` package.

    Args:
        model_name: timm architecture name.  weights: local state dict file (``"random"`` for a random init).
        model: an already built timm-like model (``patch_embed.patch_size``, ``blocks``, ``num_prefix_tokens``,
            ``forward_features``-style token output), used instead of ``model_name`` (tests, custom models).
        model_kwargs: extra ``timm.create_model`` arguments (``dynamic_img_size=True`` is always set).
    """

    backbone = "timm"

    def __init__(self, model_name: str = "vit_large_patch16_224", weights="random", model=None, device="cpu",
                 seed: int = 0, input_scale: float = 1.0, model_kwargs: Optional[dict] = None):
        torch.manual_seed(int(seed))
        if model is None:
            try:
                import timm
            except ImportError:
                raise ImportError("backbone 'timm' needs the optional package timm (pip install timm); "
                                  "nothing is downloaded at run time, weights come from --weights_path") from None
            kw = {"pretrained": False, "num_classes": 0, "dynamic_img_size": True, **(model_kwargs or {})}
            model = timm.create_model(model_name, **kw)
        sha = _load_into(model, weights, f"timm {model_name}", ignore_prefixes=("head.",))
        p = model.patch_embed.patch_size
        p = int(p[0] if isinstance(p, (tuple, list)) else p)
        channels = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        super().__init__(model, "blocks[-1]", channels, p, sha, device, input_scale)
        self.backbone = f"timm:{model_name}"
        self._out = None
        self.module.blocks[-1].register_forward_hook(self._hook)

    def _hook(self, module, inp, out):
        self._out = out

    def forward_features(self, x):
        b, _, h, w = x.shape
        self._out = None
        self.module.forward_features(x)
        tokens = self._out
        n_prefix = int(getattr(self.module, "num_prefix_tokens", 1))
        gh, gw = h // self.stride, w // self.stride
        if tokens.ndim == 4:  # some timm models keep NHWC grids
            grid = tokens
        else:
            tokens = tokens[:, n_prefix:]
            if tokens.shape[1] != gh * gw:
                raise ValueError(f"ViT returned {tokens.shape[1]} patch tokens for a {gh}x{gw} grid")
            grid = tokens.reshape(b, gh, gw, -1)
        return torch.relu(grid.permute(0, 3, 1, 2).contiguous())


def build_extractor(backbone: str = "res2net", weights="random", layer: Optional[str] = None, depth="cpu",
                    base_channels: int = 32, model_name: str = "vit_large_patch16_224", device="cpu", seed: int = 0,
                    input_scale: float = 1.0, model_kwargs: Optional[dict] = None) -> FeatureExtractor:
    """One entry point for the three backbone kinds: ``"res2net"`` (own SSL network), ``"resnet50"``, ``"timm"``."""
    kind = str(backbone).lower()
    if kind == "res2net":
        return Res2NetFeatures(weights, layer or "layer3", depth, base_channels, device, seed, input_scale)
    if kind == "resnet50":
        return ResNet50Features(weights, layer or "layer3", device, seed, input_scale)
    if kind in ("timm", "vit"):
        return TimmViTFeatures(model_name, weights, None, device, seed, input_scale, model_kwargs)
    raise ValueError(f"unknown backbone {backbone!r}; use 'res2net', 'resnet50' or 'timm'")


# ----------------------------------------------------------------------------------------------
# concept bank
# ----------------------------------------------------------------------------------------------
def window_gap_features(feats: torch.Tensor, window: int, n_windows: int, rng: np.random.Generator,
                        valid_hw: Optional[tuple] = None) -> torch.Tensor:
    """Global-average-pooled features of ``n_windows`` random ``window`` x ``window`` cell windows of a feature map.

    Args:
        feats: (C, h, w) >= 0.  window: side in feature cells (tile px / stride); a map smaller than the window
            gives its full-map average once.  valid_hw: (h, w) cells that cover the image (excludes padding).
    Returns:
        (n, C) float32, n <= n_windows (1 when the map is smaller than the window).
    """
    c, h, w = feats.shape
    if valid_hw is not None:
        h, w = min(h, valid_hw[0]), min(w, valid_hw[1])
        feats = feats[:, :h, :w]
    if h <= window or w <= window:
        return feats.mean(dim=(1, 2))[None]
    ys = rng.integers(0, h - window + 1, size=n_windows)
    xs = rng.integers(0, w - window + 1, size=n_windows)
    return torch.stack([feats[:, y:y + window, x:x + window].mean(dim=(1, 2)) for y, x in zip(ys, xs)])


def fit_kmeans_bank(vectors: np.ndarray, ks: Sequence[int], seed: int = 0, n_init: int = 4) -> Dict[int, np.ndarray]:
    """K-Means (scikit-learn, Euclidean, no normalisation, as F-SEG) on (N, C) GAP features for every k.

    Returns ``{k: (k, C) float32 centres}``. Raises ValueError (one line) when N < k.
    """
    from sklearn.cluster import KMeans

    vectors = np.asarray(vectors, np.float32)
    out = {}
    for k in sorted({int(k) for k in ks}):
        if k < 1:
            raise ValueError(f"concept bank k must be >= 1, got {k}")
        if len(vectors) < k:
            raise ValueError(f"only {len(vectors)} tile features for k={k}; add tiles, raise windows_per_image, "
                             f"or drop k={k}")
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(vectors)
        out[k] = km.cluster_centers_.astype(np.float32)
    return out


class ConceptBank:
    """K-Means centres for several k, plus the signature of the features they were fitted on.

    Args:
        centres: ``{k: (k, C) array}``.  meta: at least the keys of :data:`SIGNATURE_KEYS`, plus free-form
            provenance (number of tiles, window, seed, ...).
    File format (:meth:`save`): a torch file readable with ``weights_only=True``:
    ``{"format": "fseg-concept-bank", "version": 1, "meta": {...}, "centres": {"8": tensor (8, C), ...}}``.
    """

    def __init__(self, centres: Dict[int, np.ndarray], meta: dict):
        self.centres = {int(k): np.asarray(v, np.float32) for k, v in centres.items()}
        self.meta = dict(meta)
        self.path = None

    @property
    def ks(self) -> List[int]:
        return sorted(self.centres)

    def save(self, path) -> None:
        from .handlers import atomic_torch_save

        obj = {"format": BANK_FORMAT, "version": BANK_VERSION, "meta": self.meta,
               "centres": {str(k): torch.from_numpy(v) for k, v in self.centres.items()}}
        atomic_torch_save(obj, path)
        self.path = str(path)

    @classmethod
    def load(cls, path) -> "ConceptBank":
        """Raises FileNotFoundError / ValueError with one line naming the file."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: concept bank not found (fit it first with configs/fseg_bank.json)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: cannot read concept bank ({msg[:200]})") from None
        if not isinstance(obj, dict) or obj.get("format") != BANK_FORMAT or "centres" not in obj:
            raise ValueError(f"{path}: not an F-SEG concept bank (fit one with configs/fseg_bank.json)")
        bank = cls({int(k): v.numpy() for k, v in obj["centres"].items()}, obj.get("meta", {}))
        bank.path = path
        return bank

    def check(self, signature: dict) -> None:
        """Raise :class:`BankMismatchError` (one line) when ``signature`` differs from the bank's in any of
        :data:`SIGNATURE_KEYS` (``input_scale`` differing only logs a warning)."""
        diff = [k for k in SIGNATURE_KEYS if str(self.meta.get(k)) != str(signature.get(k))]
        if diff:
            what = ", ".join(f"{k}={self.meta.get(k)!r} vs {signature.get(k)!r}" for k in diff)
            raise BankMismatchError(f"{self.path or 'concept bank'}: fitted on other features than the configured "
                                    f"backbone ({what}); refit the bank with configs/fseg_bank.json for this "
                                    "backbone/weights")
        if "input_scale" in self.meta and float(self.meta["input_scale"]) != float(signature.get("input_scale", 1)):
            logger.warning(f"{self.path}: bank fitted at input_scale {self.meta['input_scale']}, "
                           f"used at {signature.get('input_scale')}")

    def get(self, k: int) -> np.ndarray:
        """(k, C) centres for one k. Raises ValueError (one line) if the bank has no such k."""
        if int(k) not in self.centres:
            raise ValueError(f"{self.path or 'concept bank'}: has k in {self.ks}, not {k}")
        return self.centres[int(k)]


# ----------------------------------------------------------------------------------------------
# factorisation (torch, batched over pixels)
# ----------------------------------------------------------------------------------------------
def _cd_sweep(WT: torch.Tensor, G: torch.Tensor, negBT: torch.Tensor, GR: torch.Tensor) -> torch.Tensor:
    """One coordinate-descent sweep for min_{W>=0} ||X - W H||^2, all rows of W at once, components 0..k-1.

    Transposed storage so that every step touches contiguous rows: ``WT`` = W^T (k, P) is updated in place,
    ``G`` = H H^T (k, k), ``negBT`` = -(X H^T)^T (k, P), ``GR`` (k, P) a work buffer that receives the gradients.
    Returns the summed projected-gradient violation, exactly as scikit-learn's ``_update_cdnmf_fast``
    (``shuffle=False``): the gradient of coordinate t is taken after coordinates < t were updated.
    """
    w_old = WT.clone()
    WTt = WT.T
    cols, diag = G.unbind(1), G.diagonal().tolist()
    for t, (w, g, nb) in enumerate(zip(WT.unbind(0), GR.unbind(0), negBT.unbind(0))):
        torch.addmv(nb, WTt, cols[t], out=g)  # grad_t = W @ G[:, t] - B[:, t]
        if diag[t] != 0:
            w.sub_(g, alpha=1.0 / diag[t]).clamp_(min=0)
    return torch.where(w_old == 0, GR.clamp(max=0), GR).abs().sum()


def _cd_solve(WT: torch.Tensor, G: torch.Tensor, negBT: torch.Tensor, tol: float, max_iter: int) -> int:
    """Sweeps of :func:`_cd_sweep` until violation <= tol * first violation (scikit-learn's rule); -> sweeps."""
    GR = torch.empty_like(WT)
    v0 = None
    for it in range(1, max_iter + 1):
        v = float(_cd_sweep(WT, G, negBT, GR))
        if v0 is None:
            v0 = v
        if v0 == 0 or v / v0 <= tol:
            return it
    return max_iter


def _passive_solve(G: torch.Tensor, B: torch.Tensor, Fs: torch.Tensor, ridge: float, group: int = 256) -> torch.Tensor:
    """Rows of X (r, k) with X_F = G_FF^{-1} b_F on each row's passive set F (bool (r, k)) and 0 elsewhere.

    Rows are sorted by passive-set size and solved in groups of ``group``: each group's passive indices are
    gathered into compact (g, s, s) systems (s = the group's largest set, padded with identity rows) and solved by
    batched Cholesky (least squares where a system is numerically singular).
    """
    r, k = B.shape
    X = torch.zeros_like(B)
    size = Fs.sum(1)
    order = torch.argsort(size)
    for a in range(0, r, group):
        rows = order[a:a + group]
        sz = size[rows]
        s = int(sz.max())
        if s == 0:
            continue
        idx = torch.argsort((~Fs[rows]).to(torch.int8), dim=1, stable=True)[:, :s]  # passive indices first
        vm = (torch.arange(s, device=B.device)[None] < sz[:, None]).to(G.dtype)
        A = G[idx[:, :, None], idx[:, None, :]] * (vm[:, :, None] * vm[:, None, :])
        A = A + torch.diag_embed(1.0 - vm + ridge)
        rhs = (B[rows].gather(1, idx) * vm)[..., None]
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            x = torch.linalg.lstsq(A, rhs).solution[..., 0]
        else:
            x = torch.cholesky_solve(rhs, L)[..., 0]
        X[rows] = torch.zeros_like(B[rows]).scatter_(1, idx, x * vm)
    return X


def _bpp_block(G: torch.Tensor, B: torch.Tensor, max_iter: int, F0: Optional[torch.Tensor] = None) -> tuple:
    """Exact NNLS for many right-hand sides by block principal pivoting (Kim & Park, SIAM J. Sci. Comput. 2011).

    Solves min_{x >= 0} x^T G x / 2 - b^T x for every row b of ``B`` (p, k) with G = H H^T (k, k), all rows at
    once: each round re-solves only the infeasible rows (:func:`_passive_solve`). ``F0`` (p, k) bool: initial
    passive sets (e.g. the support of a few coordinate-descent sweeps); the result does not depend on it.
    Returns (X (p, k), number of rows not converged within ``max_iter`` rounds).
    """
    p, k = B.shape
    scale = float(G.diagonal().max()) if k else 1.0
    ridge = 1e-12 * scale
    eps = 1e-12 * max(1.0, float(B.abs().max()) if B.numel() else 1.0)
    if F0 is None:
        Fs = torch.zeros((p, k), dtype=torch.bool, device=B.device)
        X = torch.zeros_like(B)
    else:
        Fs = F0.clone()
        X = _passive_solve(G, B, Fs, ridge)
    Y = (X @ G - B).masked_fill_(Fs, 0.0)
    alpha = torch.full((p,), 3, dtype=torch.long, device=B.device)
    beta = torch.full((p,), k + 1, dtype=torch.long, device=B.device)
    for _ in range(max_iter):
        V = (Fs & (X < -eps)) | (~Fs & (Y < -eps))
        nv = V.sum(1)
        rows = torch.nonzero(nv > 0).flatten()
        if rows.numel() == 0:
            return X, 0
        v, n, a, b_ = V[rows], nv[rows], alpha[rows], beta[rows]
        full = n < b_
        b_ = torch.where(full, n, b_)
        a = torch.where(full, torch.full_like(a, 3), a)
        keep = ~full & (a >= 1)
        a = torch.where(keep, a - 1, a)
        backup = ~full & ~keep
        flip = v.clone()
        if backup.any():  # flip only the largest infeasible index
            last = k - 1 - torch.flip(v[backup].long(), dims=[1]).argmax(1)
            fb = torch.zeros_like(v[backup])
            fb[torch.arange(fb.shape[0], device=fb.device), last] = True
            flip[backup] = fb
        alpha[rows], beta[rows] = a, b_
        F_r = Fs[rows] ^ flip
        Fs[rows] = F_r
        x = _passive_solve(G, B[rows], F_r, ridge)
        y = (x @ G - B[rows]).masked_fill_(F_r, 0.0)
        X[rows], Y[rows] = x, y
    V = (Fs & (X < -eps)) | (~Fs & (Y < -eps))
    return X.clamp(min=0), int(V.any(1).sum())


def nnls(X: torch.Tensor, H: torch.Tensor, tol: float = 1e-4, max_iter: int = 10000, method: str = "bpp",
         chunk: int = 4096, warm_sweeps: int = 10) -> torch.Tensor:
    """Per-row non-negative least squares ``W = argmin_{W >= 0} ||X - W H||_F^2`` (F-SEG variant B), in torch on
    X's device, batched over rows.

    ``method="bpp"`` (default): exact solution by block principal pivoting (:func:`_bpp_block`, float64, rows in
    blocks of ``chunk``, started from the support of ``warm_sweeps`` coordinate-descent sweeps; ``max_iter``
    caps the pivoting rounds at min(max_iter, 50 + 5k)).
    ``method="cd"``: the algorithm and stopping rule of scikit-learn's ``non_negative_factorization(X, H=H,
    update_H=False, solver='cd', tol, max_iter)``: W = 0 start, cyclic coordinate descent, stop when the summed
    projected-gradient violation is <= ``tol`` times the first sweep's (same iterates, vectorised over rows).
    Both give scikit-learn's labels on converged problems (tests/test_fseg.py); bpp is the fast one.

    Args:
        X: (P, C) >= 0 pixel features.  H: (k, C) >= 0 (negatives are clipped, not in place).
    Returns:
        W (P, k) >= 0, X's dtype, on X's device.
    """
    if method == "cd":
        Hc = H.to(X.device, X.dtype).clamp(min=0)
        negBT = -(Hc @ X.T)  # (k, P)
        WT = torch.zeros_like(negBT)
        _cd_solve(WT, Hc @ Hc.T, negBT, tol, max_iter)
        return WT.T
    if method != "bpp":
        raise ValueError(f"unknown NNLS method {method!r}; use 'bpp' or 'cd'")
    Hc = H.to(X.device, torch.float64).clamp(min=0)
    G = Hc @ Hc.T
    k = Hc.shape[0]
    rounds = min(int(max_iter), 50 + 5 * k)
    out, bad = [], 0
    for s in range(0, X.shape[0], chunk):
        B = X[s:s + chunk].to(torch.float64) @ Hc.T
        F0 = None
        if warm_sweeps > 0:  # a few CD sweeps give a good first passive set (fewer, smaller pivoting rounds)
            WT = torch.zeros_like(B.T)
            _cd_solve(WT, G, -B.T.contiguous(), 0.0, warm_sweeps)
            F0 = WT.T > 0
        Wb, nb = _bpp_block(G, B, rounds, F0)
        out.append(Wb)
        bad += nb
    if bad:
        logger.warning(f"NNLS: {bad} of {X.shape[0]} pixels did not converge in {rounds} pivoting rounds")
    return torch.cat(out).to(X.dtype) if out else X.new_zeros((0, k))


def nmf(X: torch.Tensor, n_components: int, max_iter: int = 200, tol: float = 1e-4, seed: int = 0):
    """NMF ``X ~ W H`` (Frobenius) by alternating coordinate descent (HALS), as scikit-learn's ``NMF(solver='cd',
    init='random')``: random init |N(0,1)| * sqrt(mean(X)/n), same violation-based stop; on X's device.

    Args:
        X: (P, C) >= 0.  n_components: n (clipped to min(P, C)).
    Returns:
        W (P, n) >= 0 and H (n, C) >= 0.
    """
    P, C = X.shape
    n = max(1, min(int(n_components), P, C))
    g = torch.Generator().manual_seed(int(seed))
    avg = math.sqrt(max(float(X.mean()), 0.0) / n)
    WT = (torch.randn(P, n, generator=g).abs() * avg).T.contiguous().to(X.device, X.dtype)  # (n, P)
    H = (torch.randn(n, C, generator=g).abs() * avg).to(X.device, X.dtype)  # (n, C)
    GW, GH = torch.empty_like(WT), torch.empty_like(H)
    v0 = None
    for _ in range(max_iter):
        v = _cd_sweep(WT, H @ H.T, -(H @ X.T), GW)
        v = v + _cd_sweep(H, WT @ WT.T, -(WT @ X), GH)
        v = float(v)
        if v0 is None:
            v0 = v
        if v0 == 0 or v / v0 <= tol:
            break
    return WT.T.contiguous(), H


def bilinear_argmax(maps: torch.Tensor, out_hw: tuple, max_elements: int = 1 << 24) -> torch.Tensor:
    """argmax over the first axis of ``maps`` (n, h, w) bilinearly upsampled to ``out_hw`` (align_corners=False,
    the same values as ``F.interpolate``), computed in bands of output rows so that at most about
    ``max_elements`` floats are held at once (large images and whole-slide levels stay bounded in memory).

    Returns (H, W) int64 on maps' device.
    """
    n, h, w = maps.shape
    H, W = int(out_hw[0]), int(out_hw[1])
    band = max(1, min(H, max_elements // max(1, n * W)))
    y = (torch.arange(H, device=maps.device, dtype=torch.float64) + 0.5) * (h / H) - 0.5
    y = y.clamp(min=0)
    y0 = y.floor().long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    ly = (y - y0).to(maps.dtype)
    out = torch.empty((H, W), dtype=torch.long, device=maps.device)
    for s in range(0, H, band):
        e = min(H, s + band)
        lo, hi = int(y0[s]), int(y1[e - 1]) + 1  # input rows this band needs
        rows = F.interpolate(maps[None, :, lo:hi], size=(hi - lo, W), mode="bilinear", align_corners=False)[0]
        a, b, l = rows[:, y0[s:e] - lo], rows[:, y1[s:e] - lo], ly[s:e].view(1, -1, 1)
        out[s:e] = (a * (1 - l) + b * l).argmax(0)
    return out


def _grid_to_native(maps: torch.Tensor, image_hw: tuple, extractor: FeatureExtractor) -> torch.Tensor:
    """argmax label grid of (n, h, w) coefficient maps at the native image size (crop of the padded extent)."""
    H, W = image_hw
    n, h, w = maps.shape
    s = extractor.stride / extractor.input_scale  # native px per feature cell
    full = (max(H, int(round(h * s))), max(W, int(round(w * s))))
    return bilinear_argmax(maps, full)[:H, :W]


def cosine_assign(concepts: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(n, C) concept vectors -> (n,) index of the most cosine-similar of the (k, C) centres."""
    a = F.normalize(concepts.float(), dim=1, eps=1e-12)
    b = F.normalize(centres.to(concepts.device).float(), dim=1, eps=1e-12)
    return (a @ b.T).argmax(1)


def relabel(component_map: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Map per-image component ids (H, W) to global ids with ``mapping`` (n,): ``mapping[component_map]``."""
    return mapping.to(component_map.device)[component_map]


def variant_b(feats: torch.Tensor, centres, image_hw: tuple, extractor: FeatureExtractor, tol: float = 1e-4,
              max_iter: int = 10000, method: str = "bpp") -> dict:
    """F-SEG variant B for one image: H fixed to the bank centres, per-pixel NNLS, label = argmax = centre id.

    Args:
        feats: (C, h, w) >= 0 from ``extractor``.  centres: (k, C) bank centres.  image_hw: native (H, W).
    Returns:
        {"labels": (H, W) int64 centre ids, "coef": (k, h, w) W maps, "concepts": (k, C) centres (clipped),
        "components": (H, W) component ids (= labels)}.
    """
    C, h, w = feats.shape
    Hc = torch.as_tensor(np.asarray(centres), dtype=torch.float32, device=feats.device).clamp(min=0)
    Wm = nnls(feats.reshape(C, -1).T.contiguous(), Hc, tol=tol, max_iter=max_iter, method=method)
    coef = Wm.T.reshape(-1, h, w)
    labels = _grid_to_native(coef, image_hw, extractor)
    return {"labels": labels, "coef": coef, "concepts": Hc, "components": labels}


def variant_a(feats: torch.Tensor, centres, image_hw: tuple, extractor: FeatureExtractor, n_components: int = 20,
              max_iter: int = 200, tol: float = 1e-4, seed: int = 0) -> dict:
    """F-SEG variant A for one image: NMF into ``n_components``, each component's H row -> most cosine-similar
    bank centre, label = centre of the argmax component.

    Returns:
        {"labels": (H, W) int64 centre ids, "components": (H, W) component ids, "concepts": (n, C) H rows,
        "mapping": (n,) centre id per component, "coef": (n, h, w)}.
    """
    C, h, w = feats.shape
    Wm, Hm = nmf(feats.reshape(C, -1).T.contiguous(), n_components, max_iter, tol, seed)
    cen = torch.as_tensor(np.asarray(centres), dtype=torch.float32, device=feats.device)
    mapping = cosine_assign(Hm, cen)
    coef = Wm.T.reshape(-1, h, w)
    comp = _grid_to_native(coef, image_hw, extractor)
    return {"labels": relabel(comp, mapping), "components": comp, "concepts": Hm, "mapping": mapping, "coef": coef}


def segment(feats: torch.Tensor, centres, image_hw: tuple, extractor: FeatureExtractor, variant: str = "B",
            n_components: int = 20, seed: int = 0, nmf_iter: int = 200, tol: float = 1e-4,
            nnls_method: str = "bpp") -> dict:
    """Dispatch to :func:`variant_a` / :func:`variant_b` (``variant`` "A" or "B"; ``nnls_method`` for B)."""
    v = str(variant).upper()
    if v == "B":
        return variant_b(feats, centres, image_hw, extractor, tol=tol, method=nnls_method)
    if v == "A":
        return variant_a(feats, centres, image_hw, extractor, n_components, nmf_iter, tol, seed)
    raise ValueError(f"unknown F-SEG variant {variant!r}; use 'A' (per-image NMF) or 'B' (fixed H)")


def area_fractions(labels: np.ndarray, k: int) -> np.ndarray:
    """(k,) fraction of the pixels of an (H, W) label map in each concept id 0..k-1 (sums to 1)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=k)[:k].astype(np.float64)
    return counts / max(1.0, counts.sum())


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 distinct, deterministic colours (golden-ratio hues, alternating value/saturation)."""
    import colorsys

    cols = []
    for i in range(k):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.95) if i % 2 == 0 else (0.6, 0.75)
        cols.append([int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return np.asarray(cols, np.uint8).reshape(-1, 3)


def colour_overlay(rgb: np.ndarray, labels: np.ndarray, k: int, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: tile blended with the concept colours, region boundaries drawn in black."""
    from skimage.segmentation import find_boundaries

    col = palette(k)[labels]
    out = (rgb.astype(np.float32) * (1 - alpha) + col.astype(np.float32) * alpha).round().astype(np.uint8)
    out[find_boundaries(labels, mode="inner")] = 0
    return out


def read_class_mask(path, shape: Optional[tuple] = None) -> np.ndarray:
    """Read a semantic mask (class index per pixel: palette 'P', 8/16-bit grey, or RGB with equal channels).

    Returns (H, W) int64. Raises :class:`ImageError` (one line naming the file) for unreadable files, colour masks
    and a size differing from ``shape``.
    """
    from PIL import Image

    path = str(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: mask file does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{path}: cannot read mask ({msg})") from None
    if arr.ndim == 3:
        if arr.shape[-1] >= 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            arr = arr[..., 0]
        else:
            raise ImageError(f"{path}: mask is a colour image {arr.shape}; need one class index per pixel")
    if arr.ndim != 2:
        raise ImageError(f"{path}: mask has unsupported shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        raise ImageError(f"{path}: mask is {arr.shape[0]}x{arr.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return arr.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def probe_samples(concepts: np.ndarray, components: np.ndarray, gt: np.ndarray, n_classes: int,
                  threshold: float = 0.5, ignore_index: Optional[int] = None):
    """Training pairs of the paper's linear probe for one image: concept m gets class n when more than
    ``threshold`` of its pixels are GT class n.

    Args:
        concepts: (n, C) concept features.  components: (H, W) component ids in 0..n-1.  gt: (H, W) class ids.
    Returns:
        (X (m, C), y (m,)) for the concepts that pass the threshold.
    """
    comp = components.ravel()
    g = gt.ravel()
    keep = (g >= 0) & (g < n_classes)
    if ignore_index is not None:
        keep &= g != ignore_index
    n = concepts.shape[0]
    counts = np.bincount(comp[keep] * n_classes + g[keep], minlength=n * n_classes).reshape(n, n_classes)
    tot = counts.sum(1)
    frac = counts / np.maximum(tot, 1)[:, None]
    ok = (tot > 0) & (frac.max(1) > threshold)
    return concepts[ok], frac.argmax(1)[ok]


def linear_probe(records: Sequence[dict], n_classes: int, folds: int = 5, threshold: float = 0.5, seed: int = 0,
                 ignore_index: Optional[int] = None) -> np.ndarray:
    """The paper's linear probing with image-level cross-validation.

    For each fold, a logistic regression (standardised inputs) is trained on the concept features of the other
    images' concepts that pass :func:`probe_samples`; each held-out image's concepts are classified, and every
    pixel gets the class of its component.

    Args:
        records: per image ``{"concepts": (n, C), "components": (H, W), "gt": (H, W)}`` (numpy).
    Returns:
        (n_classes, n_classes) pixel confusion counts, rows = predicted class, columns = GT class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .metrics import confusion_counts

    n = len(records)
    folds = max(2, min(int(folds), n))
    order = np.random.default_rng(seed).permutation(n)
    fold_of = np.empty(n, int)
    fold_of[order] = np.arange(n) % folds
    samples = [probe_samples(r["concepts"], r["components"], r["gt"], n_classes, threshold, ignore_index)
               for r in records]
    conf = np.zeros((n_classes, n_classes), np.int64)
    for f in range(folds):
        tr = [i for i in range(n) if fold_of[i] != f]
        Xtr = np.concatenate([samples[i][0] for i in tr]) if tr else np.zeros((0, 1))
        ytr = np.concatenate([samples[i][1] for i in tr]) if tr else np.zeros(0, int)
        clf = None
        if len(np.unique(ytr)) >= 2:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
            clf.fit(Xtr, ytr)
        const = int(np.bincount(ytr, minlength=n_classes).argmax()) if len(ytr) else 0
        for i in (i for i in range(n) if fold_of[i] == f):
            r = records[i]
            cls = clf.predict(r["concepts"]) if clf is not None else np.full(len(r["concepts"]), const)
            pred = np.asarray(cls, np.int64)[r["components"]]
            conf += confusion_counts(pred, r["gt"], n_classes, n_classes, ignore_index)
    return conf


# ----------------------------------------------------------------------------------------------
# runners
# ----------------------------------------------------------------------------------------------
def _items(data, key: str = "training") -> list:
    if isinstance(data, (list, tuple)):
        return [d if isinstance(d, dict) else {"image": d} for d in data]
    return load_datalist(data, key)


def _features(extractor: FeatureExtractor, rgb: np.ndarray) -> torch.Tensor:
    return extractor(rgb)[0]


class ConceptBankBuilder:
    """Fit a concept bank over a folder / datalist of tiles (``configs/fseg_bank.json``).

    Every image is passed through the extractor once; ``windows_per_image`` random windows of ``window`` px
    (``window / stride`` feature cells; tiles cut from the feature map, so each tile sees its neighbourhood as
    context) are global-average-pooled, plus the image's full-map average; K-Means for each k in ``ks``.

    Args:
        extractor: a :class:`FeatureExtractor`.  data: folder, datalist JSON or list of paths.
        bank_path: output ``.pt``; a JSON summary (``<bank_path>.json``) is written beside it.
        max_images: use at most this many images (random subset, ``seed``).
        tiles_per_slide, wsi_backend, wsi_level, wsi_mpp: a whole-slide image in the data
            (:func:`bundle.wsi.is_wsi`) contributes the GAP features of ``tiles_per_slide`` random ``window``-px
            tiles over tissue at the chosen level (:class:`bundle.wsi.SlideTiles`), as the reference's tile bank.
    """

    def __init__(self, extractor: FeatureExtractor, data, bank_path, ks: Sequence[int] = (8, 16, 32, 64),
                 window: int = 256, windows_per_image: int = 8, seed: int = 0, min_size: int = 32,
                 max_images: Optional[int] = None, n_init: int = 4, datalist_key: str = "training",
                 tiles_per_slide: int = 64, wsi_backend: str = "tifffile", wsi_level: int = 0,
                 wsi_mpp: Optional[float] = None):
        self.extractor, self.data, self.bank_path = extractor, data, Path(bank_path)
        self.tiles_per_slide, self.wsi = int(tiles_per_slide), {"backend": wsi_backend, "level": wsi_level,
                                                                 "mpp": wsi_mpp}
        self.ks, self.window, self.windows_per_image = [int(k) for k in ks], int(window), int(windows_per_image)
        self.seed, self.min_size, self.max_images, self.n_init = int(seed), int(min_size), max_images, int(n_init)
        self.datalist_key = datalist_key

    def collect(self) -> tuple:
        """-> ((N, C) GAP vectors, n_images used, skipped messages)."""
        from tqdm import tqdm

        items = _items(self.data, self.datalist_key)
        rng = np.random.default_rng(self.seed)
        if self.max_images and len(items) > self.max_images:
            items = [items[i] for i in sorted(rng.choice(len(items), int(self.max_images), replace=False))]
        cells = max(1, int(round(self.window * self.extractor.input_scale / self.extractor.stride)))
        vecs, skipped, used = [], [], 0
        from .wsi import is_wsi

        for it in tqdm(items, desc="F-SEG bank features", unit="img"):
            if is_wsi(it["image"]):
                try:
                    v = self.slide_vectors(it["image"], rng)
                except (ValueError, FileNotFoundError) as e:
                    logger.warning(f"skipped {e}")
                    skipped.append(str(e))
                    continue
                if len(v):
                    vecs.append(v)
                    used += 1
                continue
            rgb = read_rgb_or_skip(it["image"], skipped, self.min_size)
            if rgb is None:
                continue
            f = _features(self.extractor, rgb)
            hs, ws = self.extractor.scaled_size(*rgb.shape[:2])
            valid = (math.ceil(hs / self.extractor.stride), math.ceil(ws / self.extractor.stride))
            v = [f[:, :valid[0], :valid[1]].mean(dim=(1, 2))[None]]
            if self.windows_per_image > 0:
                v.append(window_gap_features(f, cells, self.windows_per_image, rng, valid))
            vecs.append(torch.cat(v).cpu().numpy())
            used += 1
        if not vecs:
            raise ImageError(f"{self.data}: no image could be read for the concept bank ({len(skipped)} skipped)")
        return np.concatenate(vecs), used, skipped

    def slide_vectors(self, path, rng: np.random.Generator) -> np.ndarray:
        """(n, C) GAP features of up to ``tiles_per_slide`` random tissue tiles of ``window`` px of one slide."""
        from .wsi import SlideTiles

        slide = SlideTiles(path, tile_size=self.window, margin=0, min_tissue=0.5, **self.wsi)
        try:
            corners = slide.core_tiles()
            if not corners:
                logger.warning(f"{path}: no tissue tile found for the concept bank")
                return np.zeros((0, self.extractor.channels), np.float32)
            pick = rng.choice(len(corners), min(self.tiles_per_slide, len(corners)), replace=False)
            out = []
            for i in sorted(pick):
                r, c = corners[i]
                h, w = min(self.window, slide.size[0] - r), min(self.window, slide.size[1] - c)
                rgb = slide.read(r, c, h, w)
                f = _features(self.extractor, rgb)
                hs, ws = self.extractor.scaled_size(h, w)
                valid = (math.ceil(hs / self.extractor.stride), math.ceil(ws / self.extractor.stride))
                out.append(f[:, :valid[0], :valid[1]].mean(dim=(1, 2)).cpu().numpy())
            return np.stack(out)
        finally:
            slide.close()

    def run(self) -> ConceptBank:
        t0 = time.perf_counter()
        vecs, used, skipped = self.collect()
        centres = fit_kmeans_bank(vecs, self.ks, self.seed, self.n_init)
        meta = {**self.extractor.signature(), "ks": sorted(centres), "n_images": used, "n_vectors": int(len(vecs)),
                "window": self.window, "windows_per_image": self.windows_per_image, "seed": self.seed,
                "gap": "global average pool of the (padded-crop) feature map", "kmeans": "sklearn KMeans, Euclidean",
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        bank = ConceptBank(centres, meta)
        bank.save(self.bank_path)
        write_json(str(self.bank_path) + ".json", {**meta, "skipped": skipped, "seconds": time.perf_counter() - t0})
        logger.info(f"concept bank k={bank.ks} from {len(vecs)} tile features of {used} images -> {self.bank_path}")
        return bank


class FSegRunner:
    """Segment a folder / datalist of tiles with a concept bank (``configs/fseg_infer.json``).

    Writes into ``output_dir``: ``labels/<tile>.png`` (centre id per pixel, uint8, or uint16 for k > 255; ids are
    consistent across images), ``overlays/<tile>.png`` (colour overlay), ``area_fractions.csv`` (one row per
    image: fraction of pixels per concept), ``palette.json`` (concept id -> RGB) and ``summary.json``.

    Args:
        extractor: :class:`FeatureExtractor` matching the bank (checked).  bank_path: concept bank file.
        k: which of the bank's k to use.  variant: "A" or "B".  n_components: NMF components of variant A.
        nnls_method: variant B's solver, ``"bpp"`` (exact, fast) or ``"cd"`` (scikit-learn's iterations).
        wsi_*: a whole-slide image in the data (:func:`bundle.wsi.is_wsi`) is streamed in ``wsi_tile``-px tiles
            over tissue (``wsi_margin`` px of context, :class:`bundle.wsi.SlideTiles`) at ``wsi_level`` (or the
            level nearest ``wsi_mpp``); its label map is written at one pixel per feature cell (255 = no tissue,
            not analysed) and its area fractions are over the analysed tissue tiles.
    """

    def __init__(self, extractor: FeatureExtractor, bank_path, data, output_dir, k: int = 16, variant: str = "B",
                 n_components: int = 20, nmf_iter: int = 200, tol: float = 1e-4, seed: int = 0, min_size: int = 32,
                 write_overlays: bool = True, overlay_alpha: float = 0.45, datalist_key: str = "training",
                 nnls_method: str = "bpp", wsi_backend: str = "tifffile", wsi_level: int = 0,
                 wsi_mpp: Optional[float] = None, wsi_tile: int = 2048, wsi_margin: int = 128,
                 wsi_min_tissue: float = 0.05):
        self.extractor, self.bank_path, self.data, self.output_dir = extractor, bank_path, data, Path(output_dir)
        self.k, self.variant, self.n_components = int(k), str(variant).upper(), int(n_components)
        self.nnls_method = nnls_method
        self.wsi = {"backend": wsi_backend, "level": wsi_level, "mpp": wsi_mpp, "min_tissue": float(wsi_min_tissue)}
        self.wsi_tile, self.wsi_margin = int(wsi_tile), int(wsi_margin)
        self.nmf_iter, self.tol, self.seed, self.min_size = int(nmf_iter), float(tol), int(seed), int(min_size)
        self.write_overlays, self.overlay_alpha, self.datalist_key = write_overlays, overlay_alpha, datalist_key
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown F-SEG variant {variant!r}; use 'A' or 'B'")

    def load_bank(self) -> np.ndarray:
        bank = ConceptBank.load(self.bank_path)
        bank.check(self.extractor.signature())
        return bank.get(self.k)

    def segment_rgb(self, rgb: np.ndarray, centres: np.ndarray) -> dict:
        """One (H, W, 3) uint8 tile -> :func:`segment` result plus timings."""
        t0 = time.perf_counter()
        f = _features(self.extractor, rgb)
        t1 = time.perf_counter()
        res = segment(f, centres, rgb.shape[:2], self.extractor, self.variant, self.n_components, self.seed,
                      self.nmf_iter, self.tol, self.nnls_method)
        res["feature_s"], res["factor_s"] = t1 - t0, time.perf_counter() - t1
        return res

    def run_slide(self, path, centres: np.ndarray) -> dict:
        """Segment a whole-slide image tile by tile; writes its downsampled label map and overlay, returns its row."""
        from .wsi import SlideTiles

        k = len(centres)
        f = max(1, int(round(self.extractor.stride / self.extractor.input_scale)))  # px per feature cell
        tile = max(f, self.wsi_tile // f * f)
        slide = SlideTiles(path, tile_size=tile, margin=self.wsi_margin // f * f, **self.wsi)
        t0 = time.perf_counter()
        try:
            H, W = slide.size
            hd, wd = -(-H // f), -(-W // f)
            none = 255 if k < 255 else 65535
            lab_ds = np.full((hd, wd), none, np.uint8 if k < 255 else np.uint16)
            thumb = np.full((hd, wd, 3), 255, np.uint8)
            counts = np.zeros(k, np.int64)
            n_tiles = 0
            for r, c, rgb in slide:
                oy, ox = slide.last_offset
                th, tw = min(tile, H - r), min(tile, W - c)
                lab = self.segment_rgb(rgb, centres)["labels"].cpu().numpy()[oy:oy + th, ox:ox + tw]
                counts += np.bincount(lab.ravel(), minlength=k)[:k]
                sub = lab[::f, ::f]
                lab_ds[r // f:r // f + sub.shape[0], c // f:c // f + sub.shape[1]] = sub
                thumb[r // f:r // f + sub.shape[0], c // f:c // f + sub.shape[1]] = rgb[oy:oy + th:f, ox:ox + tw:f]
                n_tiles += 1
            level, downsample = slide.level, slide.downsample
        finally:
            slide.close()
        stem = Path(path).stem
        write_image(self.output_dir / "labels" / f"{stem}.png", lab_ds)
        if self.write_overlays:
            tissue = lab_ds != none
            ov = thumb.copy()
            if tissue.any():
                ov = colour_overlay(thumb, np.where(tissue, lab_ds, 0).astype(np.int64), k, self.overlay_alpha)
                ov[~tissue] = thumb[~tissue]
            write_image(self.output_dir / "overlays" / f"{stem}.png", ov)
        fr = counts / max(1, counts.sum())
        row = {"image": stem, "height": H, "width": W, "feature_s": 0.0,
               "factor_s": round(time.perf_counter() - t0, 4), "wsi_level": level, "wsi_downsample": downsample,
               "tiles": n_tiles, "label_px": f}
        row.update({f"concept_{j:03d}": round(float(fr[j]), 6) for j in range(k)})
        if not n_tiles:
            logger.warning(f"{path}: no tissue tile found; empty label map written")
        return row

    def run(self) -> dict:
        from tqdm import tqdm

        centres = self.load_bank()  # a wrong bank stops before any image is read
        items = _items(self.data, self.datalist_key)
        k = len(centres)
        rows, skipped = [], []
        from .wsi import is_wsi

        for it in tqdm(items, desc=f"F-SEG variant {self.variant}", unit="img"):
            path = it["image"]
            if is_wsi(path):
                try:
                    rows.append(self.run_slide(path, centres))
                except (ValueError, FileNotFoundError) as e:
                    logger.warning(f"skipped {e}")
                    skipped.append(str(e))
                continue
            rgb = read_rgb_or_skip(path, skipped, self.min_size)
            if rgb is None:
                continue
            stem = Path(path).stem
            res = self.segment_rgb(rgb, centres)
            labels = res["labels"].cpu().numpy()
            write_image(self.output_dir / "labels" / f"{stem}.png", labels.astype(np.uint8 if k <= 256 else np.uint16))
            if self.write_overlays:
                write_image(self.output_dir / "overlays" / f"{stem}.png",
                            colour_overlay(rgb, labels, k, self.overlay_alpha))
            fr = area_fractions(labels, k)
            row = {"image": stem, "height": rgb.shape[0], "width": rgb.shape[1],
                   "feature_s": round(res["feature_s"], 4), "factor_s": round(res["factor_s"], 4)}
            row.update({f"concept_{j:03d}": round(float(fr[j]), 6) for j in range(k)})
            rows.append(row)
        if not rows:
            raise ImageError(f"{self.data}: no image could be segmented ({len(skipped)} skipped)")
        write_csv(self.output_dir / "area_fractions.csv", rows)
        write_json(self.output_dir / "palette.json", {str(j): c.tolist() for j, c in enumerate(palette(k))})
        summary = {"n_images": len(rows), "n_skipped": len(skipped), "skipped": skipped, "k": k,
                   "variant": self.variant, "bank": str(self.bank_path), **self.extractor.signature(),
                   "feature_s": float(np.mean([r["feature_s"] for r in rows])),
                   "factor_s": float(np.mean([r["factor_s"] for r in rows]))}
        write_json(self.output_dir / "summary.json", summary)
        if skipped:
            logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
        logger.info(f"F-SEG {self.variant} k={k}: {len(rows)} label maps -> {self.output_dir}")
        return summary


def label_items(data, label_dir=None, key: str = "training") -> list:
    """Items with a ``label`` mask path: from the datalist, or ``label_dir/<image stem>.*`` when given."""
    items = _items(data, key)
    if label_dir:
        masks = {}
        for p in sorted(Path(label_dir).iterdir()) if Path(label_dir).is_dir() else []:
            masks.setdefault(p.stem, str(p))
        if not masks:
            raise ImageError(f"{label_dir}: label folder does not exist or is empty")
        items = [{**it, "label": masks.get(Path(it["image"]).stem)} for it in items]
    return items


class FSegEvaluator:
    """Score F-SEG against ground-truth masks (``configs/fseg_evaluate.json``); labels are used only for scoring.

    Every image is passed through the extractor once; for each ``variant`` x ``k`` the label maps are pooled into
    one (k x n_classes) contingency table over all images, then

    * matching (``match``): each concept -> the GT class with the most pixels in it;
    * normalised matching (``match_norm``): the same after dividing each class's counts by its total pixels;
    * linear probe (``probe``): :func:`linear_probe` with ``probe_folds``-fold cross-validation over images.

    Writes ``evaluation.json`` (all scores, concept -> class maps) and ``per_class.csv`` into ``output_dir``.

    Args:
        label_dir: folder of masks named like the images (or give ``label`` entries in a datalist).
        class_names: names of GT classes 0..n-1; other values (e.g. 255) are ignored.
    """

    def __init__(self, extractor: FeatureExtractor, bank_path, data, output_dir, label_dir=None,
                 ks: Sequence[int] = (16,), variants: Sequence[str] = ("A", "B"),
                 class_names: Sequence[str] = ("tumour", "stroma", "normal", "background"), n_components: int = 20,
                 nmf_iter: int = 200, tol: float = 1e-4, probe_folds: int = 5, probe_threshold: float = 0.5,
                 seed: int = 0, min_size: int = 32, datalist_key: str = "training", nnls_method: str = "bpp"):
        self.extractor, self.bank_path, self.data, self.output_dir = extractor, bank_path, data, Path(output_dir)
        self.label_dir, self.ks = label_dir, [int(k) for k in ks]
        self.nnls_method = nnls_method
        self.variants = [str(v).upper() for v in variants]
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown F-SEG variant {v!r}; use 'A' or 'B'")
        self.class_names = list(class_names)
        self.n_components, self.nmf_iter, self.tol = int(n_components), int(nmf_iter), float(tol)
        self.probe_folds, self.probe_threshold, self.seed = int(probe_folds), float(probe_threshold), int(seed)
        self.min_size, self.datalist_key = int(min_size), datalist_key

    def load(self) -> tuple:
        """-> (list of (stem, rgb, gt) for the usable pairs, skipped messages)."""
        pairs, skipped = [], []
        for it in label_items(self.data, self.label_dir, self.datalist_key):
            try:
                if not it.get("label"):
                    raise ImageError(f"{it['image']}: no ground-truth mask for this image")
                rgb = read_rgb(it["image"], min_size=self.min_size)
                gt = read_class_mask(it["label"], rgb.shape)
            except ImageError as e:
                logger.warning(f"skipped {e}")
                skipped.append(str(e))
                continue
            pairs.append((Path(it["image"]).stem, rgb, gt))
        if not pairs:
            raise ImageError(f"{self.data}: no image with a usable mask ({skipped[0] if skipped else 'empty'})")
        return pairs, skipped

    def evaluate_pairs(self, pairs, banks: Dict[int, np.ndarray], variants=None, features=None) -> dict:
        """Scores for every variant x k on (stem, rgb, gt) ``pairs`` given ``{k: centres}``.

        ``features``: optional precomputed list of (C, h, w) tensors (one per pair) to reuse across calls.
        Returns ``{"B_k16": {"match": {...}, "match_norm": {...}, "probe": {...}, "seconds": ...}, ...}``.
        """
        from .metrics import confusion_counts, matching_scores, semantic_scores

        nc = len(self.class_names)
        variants = variants or self.variants
        feats = features if features is not None else [_features(self.extractor, rgb) for _, rgb, _ in pairs]
        out = {}
        for v in variants:
            for k, centres in banks.items():
                t0 = time.perf_counter()
                counts = np.zeros((k, nc), np.int64)
                records = []
                for (stem, rgb, gt), f in zip(pairs, feats):
                    res = segment(f, centres, rgb.shape[:2], self.extractor, v, self.n_components, self.seed,
                                  self.nmf_iter, self.tol, self.nnls_method)
                    lab = res["labels"].cpu().numpy()
                    counts += confusion_counts(lab, gt, k, nc)
                    records.append({"concepts": res["concepts"].cpu().numpy(),
                                    "components": res["components"].cpu().numpy(), "gt": gt})
                probe_conf = linear_probe(records, nc, self.probe_folds, self.probe_threshold, self.seed)
                out[f"{v}_k{k}"] = {
                    "variant": v, "k": k,
                    "match": matching_scores(counts, self.class_names, normalize=False),
                    "match_norm": matching_scores(counts, self.class_names, normalize=True),
                    "probe": semantic_scores(probe_conf, self.class_names),
                    "seconds": time.perf_counter() - t0,
                }
        return out

    def run(self) -> dict:
        bank = ConceptBank.load(self.bank_path)
        bank.check(self.extractor.signature())
        banks = {k: bank.get(k) for k in self.ks}
        pairs, skipped = self.load()
        res = self.evaluate_pairs(pairs, banks)
        rows = []
        for name, r in res.items():
            for mode in ("match", "match_norm", "probe"):
                s = r[mode]
                row = {"setting": name, "variant": r["variant"], "k": r["k"], "evaluation": mode,
                       "miou": s["miou"], "mean_f1": s["mean_f1"], "pixel_accuracy": s["pixel_accuracy"]}
                for c in self.class_names:
                    row[f"iou_{c}"] = s["iou"][c]
                    row[f"f1_{c}"] = s["f1"][c]
                rows.append(row)
        write_csv(self.output_dir / "per_class.csv", rows)
        summary = {"n_images": len(pairs), "n_skipped": len(skipped), "skipped": skipped,
                   "class_names": self.class_names, "bank": str(self.bank_path), **self.extractor.signature(),
                   "results": res}
        write_json(self.output_dir / "evaluation.json", summary)
        for name, r in res.items():
            logger.info(f"{name}: mIoU match {r['match']['miou']:.3f}, normalised {r['match_norm']['miou']:.3f}, "
                        f"probe {r['probe']['miou']:.3f}")
        return summary
