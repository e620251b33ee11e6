# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ship label-free runs' networks as the bundle's own weights: the nuclei segmentation network as ``models/model.pt``
(+ ``settings.json``, the pixel size it was trained at) and its TorchScript export ``models/model.ts``; optionally a
Ki-67 run's network as ``models/ki67/model.pt`` (+ ``settings.json``, ``model.ts``); with ``--onnx`` also each
network's ONNX export ``model.onnx`` (``inference.json --backend onnxruntime / openvino``; ``--onnx`` alone exports
the networks already shipped); ``large_files.yml`` lists each with its sha256.

    python -m scripts.ship_weights --run runs/ship --data ../shared/data/monuseg/train/images \
        --command "python -m bundle.label_free --dataset_dir ../shared/data/monuseg/train/images --bundle_root runs/ship" \
        --ki67_run runs/ship_ki67r --ki67_model ki67_r2 --ki67_data ../shared/data/bcdata_sample/images \
        --ki67_command "python -m bundle.label_free --dataset_dir ../shared/data/bcdata_sample/images --bundle_root runs/ship_ki67r --stain ihc --seeds 4 --rounds 2 --jobs 2"

``--run`` is a ``python -m bundle.label_free`` bundle root (its seg network, :func:`bundle.checkpoints.stage_checkpoint`);
without it (or without ``--ki67_run``) the network already shipped stays, with the provenance ``large_files.yml``
recorded for it.
The export is MONAI's ``ckpt_export`` of ``configs/inference.json``'s ``network_def``; the script checks that the
TorchScript output equals the eager network's (1e-5) at two input sizes before it writes anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bundle.checkpoints import (
    SETTINGS_NAME,
    load_network_weights,
    resunet_checkpoint_dims,
    resunet_input_channels,
    stage_checkpoint,
)
from bundle.io import atomic_path
from bundle.networks import ResUNet34

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((1, 4, 256, 256), (1, 4, 200, 328))  # two input sizes (B, C, H, W; C from the checkpoint) for the check


def sha256(path: Path) -> str:
    from bundle.backends import file_sha256

    return file_sha256(path)


def eager_network(ckpt: Path) -> torch.nn.Module:
    out_ch, width = resunet_checkpoint_dims(ckpt)
    net = ResUNet34(in_channels=resunet_input_channels(ckpt), out_channels=out_ch, base_channels=width)
    load_network_weights(net, ckpt)
    return net.eval()


def largest_difference(exported, ckpt: Path) -> float:
    """Largest |exported - eager network of ``ckpt``| over :data:`SIZES` (seeded random inputs)."""
    net, channels, worst = eager_network(ckpt), resunet_input_channels(ckpt), 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        for b, _, h, w in SIZES:
            x = torch.randn(b, channels, h, w)
            worst = max(worst, float((exported(x) - net(x)).abs().max()))
    return worst


def check_export(ts_path: Path, ckpt: Path, atol: float = 1e-5) -> float:
    """Largest |TorchScript - eager| over :data:`SIZES`; raises when above ``atol``."""
    worst = largest_difference(torch.jit.load(str(ts_path)).eval(), ckpt)
    if worst > atol:
        raise SystemExit(f"{ts_path}: TorchScript output differs from the eager network by {worst:.2e} > {atol}")
    return worst


def export_onnx_checked(folder: Path, atol: float = 1e-4) -> float:
    """``folder/model.pt`` -> ``folder/model.onnx`` (:func:`bundle.backends.export_onnx`, recording the checkpoint's
    sha256); returns the largest |ONNX Runtime - eager| over :data:`SIZES` and raises (removing the file) above
    ``atol``."""
    from bundle.backends import OnnxNetwork, export_onnx, file_sha256

    ckpt = folder / "model.pt"
    path = export_onnx(eager_network(ckpt), folder / "model.onnx", file_sha256(ckpt))
    worst = largest_difference(OnnxNetwork(path, "onnxruntime"), ckpt)
    if worst > atol:
        path.unlink()
        raise SystemExit(f"{path}: ONNX Runtime output differs from the eager network by {worst:.2e} > {atol}")
    return worst


def export(bundle: Path, config: str, folder: Path) -> float:
    """MONAI's ``ckpt_export`` of ``configs/<config>``'s ``network_def`` with ``folder/model.pt`` -> ``folder/model.ts``;
    returns the largest |TorchScript - eager| (:func:`check_export`)."""
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(folder / "model.ts"),
           "--ckpt_file", str(folder / "model.pt"), "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--config_file", str(bundle / "configs" / config), "--bundle_root", str(bundle),
           "--ckpt_path", str(folder / "model.pt")]
    subprocess.run(cmd, check=True, cwd=bundle)
    return check_export(folder / "model.ts", folder / "model.pt")


def large_files_yml(bundle: Path, provenance: dict) -> str:
    """``provenance``: {relative folder under models/ ("" or "ki67"): {key: value}} -> large_files.yml text."""
    lines = ["# The bundle's shipped weights (in the repository; each < 25 MB). Restore a damaged file with",
             "# `git checkout -- <path>`; check one with `sha256sum <path>`. How they were made:"]
    entries = []
    for sub, info in provenance.items():
        lines.append(f"#   models/{sub + '/' if sub else ''}:")
        lines += [f"#     {k}: {v}" for k, v in info.items()]
        names = ("model.pt", "model.ts", "model.onnx", SETTINGS_NAME)
        entries += [f"models/{sub + '/' if sub else ''}{n}" for n in names
                    if (bundle / "models" / sub / n).is_file()]
    lines.append("large_files:")
    for rel in entries:
        lines += [f'  - path: "{rel}"', '    url: ""', f'    hash_val: "{sha256(bundle / rel)}"', '    hash_type: "sha256"']
    return "\n".join(lines) + "\n"


def read_provenance(text: str) -> dict:
    """The ``{folder: {key: value}}`` header that :func:`large_files_yml` wrote (to keep a network not reshipped)."""
    prov, cur = {}, None
    for line in text.splitlines():
        if line.startswith("#   models/"):
            cur = line[len("#   models/"):].rstrip(":").rstrip("/")
            prov[cur] = {}
        elif cur is not None and line.startswith("#     ") and ": " in line:
            k, v = line[len("#     "):].split(": ", 1)
            prov[cur][k] = v
    return prov


def network_info(ckpt: Path) -> str:
    out_ch, width = resunet_checkpoint_dims(ckpt)
    return f"ResUNet-34, {resunet_input_channels(ckpt)} input channels, {out_ch} classes, base_channels {width}"


def copy_with_settings(src: Path, dst_dir: Path, kind: str) -> None:
    """Copy a run's ``model.pt`` and its training ``settings.json``, recording which network it is (``kind``:
    :data:`bundle.checkpoints.NETWORK_KINDS`; runs from before bundle 0.11.0 did not)."""
    settings = src.parent / SETTINGS_NAME
    for p in (src, settings):
        if not p.is_file():
            raise SystemExit(f"{p}: not found (a finished bundle.label_free run has it)")
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst_dir / "model.pt")
    record = json.loads(settings.read_text())
    record["network"] = kind
    (dst_dir / SETTINGS_NAME).write_text(json.dumps(record, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a bundle.label_free bundle root (none: keep the shipped "
                    "nuclei network)")
    ap.add_argument("--data", default="", help="the images it was trained on (recorded)")
    ap.add_argument("--command", default="", help="the command that trained it (recorded)")
    ap.add_argument("--ki67_run", type=Path, default=None, help="a bundle.label_free --stain ihc bundle root")
    ap.add_argument("--ki67_data", default="", help="the IHC images it was trained on (recorded)")
    ap.add_argument("--ki67_command", default="", help="the command that trained it (recorded)")
    ap.add_argument("--ki67_model", default="ki67", help="the run's network folder under models/: ki67 (round 1, "
                    "seed 0) or the last round of the robust recipe, ki67_r2")
    ap.add_argument("--bundle", type=Path, default=ROOT, help="the bundle folder to ship into")
    ap.add_argument("--onnx", action="store_true", help="also export each shipped network to ONNX (model.onnx, "
                    "for inference.json --backend onnxruntime / openvino; needs the [onnx] extra)")
    a = ap.parse_args(argv)
    models = a.bundle / "models"
    old = a.bundle / "large_files.yml"
    provenance = read_provenance(old.read_text()) if old.is_file() else {}
    if a.run is None and a.ki67_run is None:
        if not a.onnx:
            ap.error("nothing to ship: give --run and / or --ki67_run (or --onnx for the shipped networks)")
        for sub in provenance:
            w = export_onnx_checked(models / sub)
            provenance[sub]["onnx_max_abs_difference"] = f"{w:.1e}"
            print(f"models/{sub + '/' if sub else ''}model.onnx: ONNX Runtime vs eager max |difference| {w:.1e}")
        with atomic_path(a.bundle / "large_files.yml") as tmp:
            Path(tmp).write_text(large_files_yml(a.bundle, provenance))
        return
    staging = models / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    worst = None
    if a.run is not None:
        src = stage_checkpoint(a.run, "seg")
        copy_with_settings(src, staging, "seg")
        worst = export(a.bundle, "inference.json", staging)
        onnx_worst = export_onnx_checked(staging) if a.onnx else None
    ki67 = None
    if a.ki67_run is not None:
        ki67 = a.ki67_run / "models" / a.ki67_model / "model.pt"
        copy_with_settings(ki67, staging / "ki67", "ki67")
        ki67_worst = export(a.bundle, "ki67_infer.json", staging / "ki67")
        ki67_onnx = export_onnx_checked(staging / "ki67") if a.onnx else None
    if a.run is not None:
        for name in ("model.pt", "model.ts", SETTINGS_NAME) + (("model.onnx",) if a.onnx else ()):
            (staging / name).replace(models / name)
        provenance[""] = {"command": a.command, "data": a.data, "source": str(src), "seed": 0,
                          "mpp": json.loads((models / SETTINGS_NAME).read_text()).get("mpp"),
                          "network": network_info(models / "model.pt"),
                          "torchscript_max_abs_difference": f"{worst:.1e}"}
        if onnx_worst is not None:
            provenance[""]["onnx_max_abs_difference"] = f"{onnx_worst:.1e}"
    if ki67 is not None:
        (models / "ki67").mkdir(exist_ok=True)
        for name in ("model.pt", "model.ts", SETTINGS_NAME) + (("model.onnx",) if a.onnx else ()):
            (staging / "ki67" / name).replace(models / "ki67" / name)
        (staging / "ki67").rmdir()
        seeds = 0 if a.ki67_model == "ki67" else "the run's round-1 seeds teach the last round"
        provenance["ki67"] = {"command": a.ki67_command, "data": a.ki67_data, "source": str(ki67), "seed": seeds,
                              "mpp": json.loads((models / "ki67" / SETTINGS_NAME).read_text()).get("mpp"),
                              "network": network_info(models / "ki67" / "model.pt"),
                              "torchscript_max_abs_difference": f"{ki67_worst:.1e}"}
        if ki67_onnx is not None:
            provenance["ki67"]["onnx_max_abs_difference"] = f"{ki67_onnx:.1e}"
    staging.rmdir()
    with atomic_path(a.bundle / "large_files.yml") as tmp:
        Path(tmp).write_text(large_files_yml(a.bundle, provenance))
    shipped = (("model.pt", "model.ts") if a.run is not None else ()) + (
        ("ki67/model.pt", "ki67/model.ts") if ki67 is not None else ())
    for rel in shipped:
        p = models / rel
        print(f"models/{rel}: {p.stat().st_size / 1e6:.2f} MB, sha256 {sha256(p)}")
    for name, w in (("nuclei", worst), ("Ki-67", ki67_worst if ki67 is not None else None)):
        if w is not None:
            print(f"{name}: TorchScript vs eager: max |difference| {w:.1e} at {SIZES}")


if __name__ == "__main__":
    main()
