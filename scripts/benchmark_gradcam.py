# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Cross-check our Grad-CAM (``bundle.nuclei.psm.PSMInferer``) against the PyPI library ``grad-cam`` (pytorch-grad-cam).

Both run on the SAME seeded, randomly initialised Res2Net (eval mode) and the SAME inputs in one process:

* ours:    ``PSMInferer(stage=s, target="head", sign="none", relu_before_norm=True)(x, net)``, x (1,3,H,W) in [0,255]
* library: ``GradCAM(net, target_layers=list(net.stages()[s-1]))(input_tensor=normalize_rgb(x),
  targets=[ClassifierOutputTarget(0)])`` -> (1,H,W) numpy

``relu_before_norm=True`` is the library's convention (per-layer CAM -> ReLU -> min-max -> resize to the input ->
max(.,0) -> mean over layers -> min-max).  The one remaining algorithmic difference is the resize: the library uses
``cv2.resize`` (INTER_LINEAR, half-pixel centres), ours ``F.interpolate(bilinear, align_corners=False)``; for
upsampling these are the same formula, so the difference is float rounding.  The script also reports:

* the per-block CAMs BEFORE any normalisation / resize (ours: ``PSMInferer.raw_cams``; the library's:
  its own ``get_cam_image`` on the activations/gradients its hooks captured), to show the gradients and channel
  weights agree;
* a decomposition: ``resize_only`` = the library's post-processing (``scale_cam_image`` with cv2) applied to OUR raw
  CAMs vs ours, i.e. the part of the end-to-end difference due to resize/eps alone.

Degenerate case: with a random head, a stage's block CAMs are often of ONE sign over the whole image.  If they are
<= 0 everywhere, the ReLU zeroes them and both methods return an all-zero map, which "agrees" trivially (max abs
diff 0) while comparing nothing.  ``--flip_head auto`` (default) detects this on the first input (with our raw CAMs)
and negates the scalar head (``fc`` weight and bias, i.e. y -> -y, equally valid since the sign of y is arbitrary)
for BOTH methods, so that the maps are non-trivial; ``yes``/``no`` force it.  Each row records the fraction of raw
CAM pixels > 0 (1.0: ReLU inactive; in between: the ReLU path is exercised) and a ``degenerate`` flag (a constant
map).

Sizes should be multiples of 32 (ours reflect-pads otherwise, the library does not); images whose size is not are
cropped (top-left) to the largest multiple of 32, and the JSON records both sizes.

Timings: ``torch.set_num_threads(1)`` and ``cv2.setNumThreads(1)``; one warm-up call of each, then ``--repeats``
alternating timed calls (ours, library, ours, ...); the median is reported.  The library's hooks are registered
only while it is being timed (``with GradCAM(...) as cam``), so they never slow down our calls.  Only the CAM call
itself is timed (hook registration is not).

Needs torchvision (grad-cam imports it), so it runs in a separate venv, e.g.::

    python3 -m venv /work/venv-gc
    /work/venv-gc/bin/pip install torch==2.14.1 torchvision==0.29.1 grad-cam monai==1.6.1 scikit-image scipy ...
    /work/venv-gc/bin/pip install --no-deps -e .
    nice -n 10 /work/venv-gc/bin/python -m scripts.benchmark_gradcam --out docs/results/gradcam_comparison.json
    nice -n 10 /work/venv-gc/bin/python -m scripts.benchmark_gradcam --depth 101 --base_channels 64 --n_synthetic 1 \
        --out docs/results/gradcam_comparison.json --append
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bundle.networks import Res2Net
from bundle.nuclei.psm import PSMInferer
from bundle.transforms import normalize_rgb

MONUSEG_TEST = Path("/work/shared/data/monuseg/test/images")


def _depth(s: str):
    return s if s == "cpu" else int(s)


def load_inputs(args) -> list:
    """-> list of (name, rgb uint8 (H, W, 3), original (H, W))."""
    items = []
    if args.images:
        from bundle.io import read_rgb

        items = [(Path(p).stem, read_rgb(p)) for p in args.images]
    elif args.monuseg:
        root = Path(args.monuseg_dir)
        if not root.is_dir():
            raise SystemExit(f"--monuseg given but {root} does not exist")
        from bundle.io import read_rgb

        items = [(p.stem, read_rgb(p)) for p in sorted(root.glob("*.png"))[: args.n_images]]
    else:
        from bundle.synthetic import synthetic_he_tile

        items = [(f"synthetic_{args.size}_seed{i}", synthetic_he_tile(args.size, seed=i)[0])
                 for i in range(args.n_synthetic)]
    out = []
    for name, rgb in items:
        H, W = rgb.shape[:2]
        h, w = H - H % 32, W - W % 32
        out.append((name, np.ascontiguousarray(rgb[:h, :w]), (H, W)))
    return out


def library_pipeline(raw_cams, size_hw):
    """pytorch-grad-cam's post-processing (BaseCAM.compute_cam_per_layer + aggregate_multi_layers) on raw CAMs."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    H, W = size_hw
    per_layer = [scale_cam_image(np.maximum(c, 0), (W, H))[:, None] for c in raw_cams]
    agg = np.maximum(np.concatenate(per_layer, axis=1), 0).mean(axis=1)
    return scale_cam_image(agg)


def library_call(net, target_layers, x_norm, want_raw: bool):
    """One grad-cam call; optionally also the library's raw per-layer CAMs (its own get_cam_image)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=net, target_layers=target_layers) as cam:
        t0 = time.perf_counter()
        out = cam(input_tensor=x_norm, targets=[ClassifierOutputTarget(0)])
        dt = time.perf_counter() - t0
        raw = None
        if want_raw:
            acts = [a.numpy() for a in cam.activations_and_grads.activations]
            grads = [g.numpy() for g in cam.activations_and_grads.gradients]
            raw = [cam.get_cam_image(x_norm, layer, None, a, g) for layer, a, g in zip(target_layers, acts, grads)]
    return out, dt, raw


def ours_call(inferer, net, x):
    t0 = time.perf_counter()
    psm = inferer(x, net)
    return psm[:, 0].numpy(), time.perf_counter() - t0


def run(args) -> dict:
    import cv2
    import pytorch_grad_cam

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(args.seed)
    depth = _depth(args.depth)
    net = Res2Net(depth, base_channels=args.base_channels).eval()
    target_layers = list(net.stages()[args.stage - 1])
    inferer = PSMInferer(stage=args.stage, target="head", sign="none", relu_before_norm=True)
    inputs = load_inputs(args)
    flip = args.flip_head == "yes"
    if args.flip_head == "auto":
        x0 = normalize_rgb(torch.from_numpy(inputs[0][1].transpose(2, 0, 1).copy())[None].float())
        flip = all(bool((c <= 0).all()) for c in inferer.raw_cams(x0, net))
    if flip:
        with torch.no_grad():
            net.fc.weight.neg_()
            net.fc.bias.neg_()
        print("flip_head: the stage's CAMs are <= 0 everywhere with this seed (all-zero maps for both methods); "
              "negated the scalar head (y -> -y) for both", flush=True)
    try:
        from importlib.metadata import version

        gc_version = version("grad-cam")
    except Exception:  # pragma: no cover
        gc_version = getattr(pytorch_grad_cam, "__version__", "unknown")

    rows = []
    for name, rgb, orig in inputs:
        H, W = rgb.shape[:2]
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].float()
        xn = normalize_rgb(x)

        # warm-up (and the outputs compared below: the maps are deterministic)
        ours, _ = ours_call(inferer, net, x)
        lib, _, lib_raw = library_call(net, target_layers, xn, want_raw=True)
        t_ours, t_lib = [], []
        for _ in range(args.repeats):
            t_ours.append(ours_call(inferer, net, x)[1])
            t_lib.append(library_call(net, target_layers, xn, want_raw=False)[1])

        # per-block raw CAMs (before ReLU / min-max / resize)
        net.eval()
        our_raw = [c.numpy() for c in inferer.raw_cams(xn, net)]
        raw_abs = max(float(np.abs(a - b).max()) for a, b in zip(our_raw, lib_raw))
        raw_rel = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12)) for a, b in zip(our_raw, lib_raw))
        # per-block CAMs after the library's ReLU + min-max, before resize
        mm = lambda c: (lambda r: (r - r.min()) / (r.max() - r.min() + 1e-7))(np.maximum(c, 0))  # noqa: E731
        norm_abs = max(float(np.abs(mm(a) - mm(b)).max()) for a, b in zip(our_raw, lib_raw))
        # the library's own post-processing (cv2 resize) applied to OUR raw CAMs: isolates the resize/eps effect
        ours_cv2 = library_pipeline(our_raw, (H, W))
        diff = np.abs(ours - lib)
        row = {
            "image": name, "size_hw": [H, W], "original_hw": list(orig),
            "raw_cam_positive_fraction": [float((c > 0).mean()) for c in our_raw],
            "degenerate": bool(np.ptp(lib) < 1e-6 or np.ptp(ours) < 1e-6),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "raw_cam_max_abs_diff": raw_abs, "raw_cam_max_rel_diff": raw_rel,
            "raw_cam_abs_max": max(float(np.abs(b).max()) for b in lib_raw),
            "normalised_block_cam_max_abs_diff": norm_abs,
            "resize_only_max_abs_diff": float(np.abs(ours - ours_cv2).max()),
            "ours_cv2_vs_library_max_abs_diff": float(np.abs(ours_cv2 - lib).max()),
            "time_ours_s": statistics.median(t_ours), "time_library_s": statistics.median(t_lib),
            "times_ours_s": t_ours, "times_library_s": t_lib,
        }
        row["speed_ratio_library_over_ours"] = row["time_library_s"] / row["time_ours_s"]
        rows.append(row)
        print(f"[{name}] {H}x{W}: max|d|={row['max_abs_diff']:.2e} ours={row['time_ours_s']:.3f}s "
              f"lib={row['time_library_s']:.3f}s ratio={row['speed_ratio_library_over_ours']:.2f}", flush=True)

    return {
        "config": {
            "depth": args.depth, "base_channels": args.base_channels, "stage": args.stage, "seed": args.seed,
            "n_target_layers": len(target_layers), "flip_head": flip, "repeats": args.repeats, "threads": args.threads,
            "inputs": "images" if args.images else ("monuseg" if args.monuseg else "synthetic"),
        },
        "versions": {
            "torch": torch.__version__, "grad-cam": gc_version, "opencv": cv2.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
        },
        "rows": rows,
        "summary": {
            "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "any_degenerate": any(r["degenerate"] for r in rows),
            "max_raw_cam_rel_diff": max(r["raw_cam_max_rel_diff"] for r in rows),
            "median_speed_ratio_library_over_ours": statistics.median(r["speed_ratio_library_over_ours"]
                                                                       for r in rows),
        },
    }


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [f"depth={c['depth']} base_channels={c['base_channels']} stage={c['stage']} "
             f"({c['n_target_layers']} target blocks), seed={c['seed']}, flip_head={c['flip_head']}, threads={c['threads']}, median of {c['repeats']}",
             "",
             "| image | H x W | max abs diff | mean abs diff | raw block CAM max rel diff | ours (s) | grad-cam (s) "
             "| ratio (grad-cam / ours) | raw CAM > 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['image']} | {r['size_hw'][0]} x {r['size_hw'][1]} | {r['max_abs_diff']:.2e} | "
                     f"{r['mean_abs_diff']:.2e} | {r['raw_cam_max_rel_diff']:.2e} | {r['time_ours_s']:.3f} | "
                     f"{r['time_library_s']:.3f} | {r['speed_ratio_library_over_ours']:.2f} | "
                     f"{min(r['raw_cam_positive_fraction']):.3f}-{max(r['raw_cam_positive_fraction']):.3f}"
                     + (" DEGENERATE |" if r["degenerate"] else " |"))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", default="cpu", help='"cpu" (1 block per stage), 18, 26, 50 or 101')
    ap.add_argument("--base_channels", type=int, default=32)
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", nargs="*", default=None, help="image paths (default: synthetic tiles)")
    ap.add_argument("--monuseg", action="store_true", help=f"use the first --n_images PNGs of {MONUSEG_TEST}")
    ap.add_argument("--monuseg_dir", default=str(MONUSEG_TEST))
    ap.add_argument("--n_images", type=int, default=3)
    ap.add_argument("--n_synthetic", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="synthetic tile size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flip_head", choices=("auto", "yes", "no"), default="auto",
                    help="negate the scalar head (y -> -y) for both methods; auto: iff the CAMs are all <= 0")
    ap.add_argument("--out", default=None, help="JSON to write (e.g. docs/results/gradcam_comparison.json)")
    ap.add_argument("--append", action="store_true", help="add this run to the runs already in --out")
    args = ap.parse_args(argv)

    result = run(args)
    md = markdown(result)
    print("\n" + md)
    s = result["summary"]
    print(f"\nmax abs diff {s['max_abs_diff']:.3e}; raw block CAM max rel diff {s['max_raw_cam_rel_diff']:.2e}; "
          f"median speed ratio (grad-cam / ours) {s['median_speed_ratio_library_over_ours']:.2f}")
    if s["any_degenerate"]:
        print("WARNING: some maps are constant (degenerate); their zero difference compares nothing")
    if args.out:
        out = Path(args.out)
        runs = []
        if args.append and out.exists():
            runs = json.loads(out.read_text()).get("runs", [])
        runs.append(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
