# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Network weights on disk: atomic saves, loading with one-line errors (``weights_only``), the input / width of a
ResUNet checkpoint, and the training settings (pixel size) recorded beside it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from bundle.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "stage_checkpoint", "init_from",
    "read_state_dict", "shipped_hint", "atomic_torch_save", "load_network_weights", "resunet_checkpoint_dims",
    "resunet_input_channels", "SETTINGS_NAME", "training_settings", "trained_mpp", "NETWORK_KINDS",
    "check_network_kind", "trained_diameter"
]


def shipped_hint(path: str | os.PathLike) -> str:
    """`` (a shipped file: ...)`` when ``path`` is one of the weights a bundle's ``large_files.yml`` lists, else ``""``:
    how to restore it."""
    p = Path(path).resolve()
    for root in p.parents[:3]:
        listing = root / "large_files.yml"
        if listing.is_file():
            rel = p.relative_to(root).as_posix()
            if f'"{rel}"' in listing.read_text():
                return f" (a shipped file of this bundle: restore it with `git checkout -- {rel}`; large_files.yml " \
                       "has its sha256)"
    return ""


def read_state_dict(path: str | os.PathLike, what: str = "checkpoint", map_location="cpu", hint: str = "") -> dict:
    """Read a torch state dict (raw, or nested under ``model``/``network``/``state_dict``) without unpickling code.

    Raises:
        FileNotFoundError / ValueError: one line naming the file and the problem.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} not found{shipped_hint(path) or hint}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: cannot read {what} ({msg}){shipped_hint(path)}") from None
    if isinstance(obj, dict):
        for k in ("model", "network", "state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: {what} is not a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through :func:`bundle.io.atomic_path`: a kill never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike, map_location="cpu") -> torch.nn.Module:
    """Load a state dict into ``network`` (strict).

    Raises:
        FileNotFoundError / ValueError: one line naming the file: missing, unreadable, or not matching the network.
    """
    sd = read_state_dict(path, "checkpoint", map_location, hint=" (train first, or pass --ckpt_path)")
    try:
        network.load_state_dict(sd, strict=True)
    except Exception as e:
        first = str(e).replace("\n", " ")[:300]
        raise ValueError(f"{os.fspath(path)}: checkpoint does not match the configured network ({first})"
                         f"{shipped_hint(path)}") from None
    return network


def resunet_checkpoint_dims(path: str | os.PathLike) -> tuple[int, int]:
    """``(out_channels, base_channels)`` of a saved :class:`bundle.networks.ResUNet34`, read from its 1x1 head
    (weight shape (out_channels, base_channels, 1, 1)). One-line errors as :func:`load_network_weights`."""
    sd = read_state_dict(path, "checkpoint")
    if "head.weight" not in sd:
        raise ValueError(f"{os.fspath(path)}: not a ResUNet-34 checkpoint (no 'head.weight')")
    out_ch, width = sd["head.weight"].shape[:2]
    return int(out_ch), int(width)


def resunet_input_channels(path: str | os.PathLike, default: int = 3) -> int:
    """Input channels of a saved :class:`bundle.networks.ResUNet34` (3 = RGB, 4 = RGB + haematoxylin channel), from
    its stem convolution; ``default`` when the file does not exist yet (the runner then reports it missing)."""
    if not os.path.exists(path):
        return default
    sd = read_state_dict(path, "checkpoint")
    w = sd.get("encoder.conv1.weight")
    return int(w.shape[1]) if w is not None else default


SETTINGS_NAME = "settings.json"


def training_settings(ckpt_dir) -> dict | None:
    """The ``settings.json`` that :class:`CheckpointResume` writes into ``ckpt_dir``, or None when there is none
    (checkpoints written before bundle 0.8.0). An unreadable file is a one-line error."""

    path = Path(ckpt_dir) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: cannot read the training settings ({e})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: cannot read the training settings (not a JSON object)")
    return saved


NETWORK_KINDS = {"seg": "the nuclei segmentation network (train.json)", "det": "the detection network "
                 "(det_train.json)", "ki67": "the Ki-67 network (ki67_train.json)"}


def check_network_kind(ckpt_path, expected: str) -> None:
    """One-line ValueError when the :func:`training_settings` beside ``ckpt_path`` record another network than
    ``expected`` (``seg``, ``det``, ``ki67``): the det and seg networks have the same shape, so loading one for the
    other used to succeed silently. Nothing is checked without a record (bundle < 0.11.0)."""
    if not ckpt_path:
        return
    saved = training_settings(Path(ckpt_path).parent) or {}
    kind = saved.get("network")
    if kind is not None and kind != expected:
        raise ValueError(f"{ckpt_path}: holds {NETWORK_KINDS.get(kind, repr(kind))}, but this config needs "
                         f"{NETWORK_KINDS.get(expected, repr(expected))}; point ckpt_path at that network's model.pt")


def trained_diameter(ckpt_path, stain: str = "he") -> float | None:
    """The nucleus diameter (px, :func:`bundle.scale.folder_nucleus_diameter` of its training tiles with ``stain``'s
    estimator) the network at ``ckpt_path`` learnt on, from the :func:`training_settings` beside it; None when not
    recorded (bundle < 0.11.0) or recorded by the other estimator (``diameter_estimator``, "he" when absent: Ki-67
    networks before 0.12.0 recorded the H&E one)."""
    if not ckpt_path:
        return None
    settings = training_settings(Path(ckpt_path).parent) or {}
    if settings.get("diameter_estimator", "he") != stain:
        return None
    v = settings.get("nucleus_diameter")
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{Path(ckpt_path).parent / SETTINGS_NAME}: nucleus_diameter must be a number, got {v!r}") \
            from None


def trained_mpp(ckpt_path, mpp: float | None = None,
                hint: str = "pass --network_mpp 0.25 if it was trained at 40x") -> float | None:
    """The pixel size (um/px) the network at ``ckpt_path`` was trained at: ``mpp`` of the :func:`training_settings`
    beside it. None when there is no such file (checkpoints written before bundle 0.8.0): the runners then do not
    resize, as before, and when the tiles' ``mpp`` is not 40x (beyond the 10 % that resizing ignores,
    :func:`bundle.scale.resample_factor`) a one-line warning ends with ``hint``, what the caller's user can
    do about it (the inference configs' ``--network_mpp`` by default)."""
    from bundle.scale import REFERENCE_MPP, resample_factor, size_scale

    if not ckpt_path:
        return None
    saved = training_settings(Path(ckpt_path).parent)
    if saved is None:
        if mpp is not None and resample_factor(size_scale(mpp), REFERENCE_MPP) != 1.0:
            logger.warning(f"{ckpt_path}: no {SETTINGS_NAME} beside it, so the pixel size it was trained at is unknown "
                           f"and tiles at {float(mpp):.3g} um/px are not resized; {hint}")
        return None
    path = Path(ckpt_path).parent / SETTINGS_NAME
    try:
        value = saved.get("mpp")
        value = None if value is None else float(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the training settings ({e})") from None
    if value is not None and not value > 0:
        raise ValueError(f"{path}: mpp must be > 0, got {value}")
    return value


def stage_checkpoint(bundle_root, stage: str) -> Path:
    """The weights the label-free pipeline's ``stage`` wrote under ``bundle_root``: ``seg`` -> ``models/model.pt`` (the
    bundle's main network, what ``configs/inference.json`` loads), ``ssl`` / ``det`` -> ``models/<stage>/model.pt``.
    Roots written before 0.9.0 kept the seg network in ``models/seg/`` and the SSL network in ``models/``; their
    files are found too."""
    models = Path(bundle_root) / "models"
    if stage == "seg":
        old = models / "seg" / "model.pt"
        return old if old.is_file() else models / "model.pt"
    new = models / stage / "model.pt"
    if stage == "ssl" and not new.is_file() and (models / "model.pt").is_file():
        return models / "model.pt"
    return new


def init_from(network: torch.nn.Module, path: str | os.PathLike | None) -> torch.nn.Module:
    """Start ``network`` from the weights of another network of the same family (``path``, e.g. the bundle's shipped
    ``models/model.pt``) instead of its random initialisation; ``path`` None returns it unchanged.

    Every tensor whose name and shape match is copied. A convolution whose input channels differ (an RGB detection
    network from the RGB + haematoxylin segmentation network) gets the channels both have; any other mismatch (a
    3-class head from a 2-class one) keeps its own initialisation. Logs how many tensors came over. A training run
    that resumes loads its own checkpoint afterwards, which wins.
    """
    if path is None or str(path) in ("", "None"):
        return network
    sd = read_state_dict(path, "initial weights", hint=" (--init_ckpt / label_free --init)")
    own = network.state_dict()
    copied = adapted = 0
    with torch.no_grad():
        for name, t in own.items():
            src = sd.get(name)
            if src is None or src.dtype != t.dtype:
                continue
            if src.shape == t.shape:
                t.copy_(src)
                copied += 1
            elif src.dim() == 4 and t.dim() == 4 and src.shape[0] == t.shape[0] and src.shape[2:] == t.shape[2:]:
                c = min(src.shape[1], t.shape[1])
                t[:, :c].copy_(src[:, :c])
                adapted += 1
    logger.info(f"{os.fspath(path)}: initial weights for {copied + adapted} of {len(own)} tensors "
                f"({adapted} with fewer input channels); the rest keep their random initialisation")
    return network
