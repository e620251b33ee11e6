# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Seconds per 1000 x 1000 tile of the shipped nuclei network on the CPU, per engine (``inference.json --backend``:
PyTorch eager, frozen TorchScript, ONNX Runtime, OpenVINO, those installed), window size (``--roi_size`` 512: the
0.12 default, 9 overlapping windows per tile; 1024: the tile in one pass) and flip TTA on / off; each one's largest
|probability - PyTorch's at the same window size|, and the scores (AJI, PQ, pixel F1) of the instances made from
its probabilities (``inference.json``'s post-processing, ``--mpp 0.25``); the classical baseline's seconds on the same
tiles for reference.

    python -m scripts.benchmark_cpu_inference --data ../shared/data/monuseg/test --out docs/results/cpu_inference

Everything runs in this one process with ``--threads`` torch / engine threads; each setting first runs one tile to
warm up (not timed). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scripts import write_results

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("pytorch", 512), ("pytorch", 1024), ("torchscript", 1024), ("onnxruntime", 1024), ("openvino", 512),
            ("openvino", 1024)]


def runner(backend: str, roi: int, tta: bool, out: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(out), "output_dir": str(out), "mpp": 0.25,
                   "roi_size": roi, "tta": tta, "backend": backend, "device": torch.device("cpu")})
    return parser.get_parsed_content("runner").prepare()


def main(argv=None):
    from bundle.annotations import read_instance_label
    from bundle.backends import available
    from bundle.io import list_images, read_rgb
    from bundle.metrics import instance_scores
    from bundle.nuclei.postprocess import classical_nuclei

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with images/ and labels/ (MoNuSeg test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpu_inference_benchmark"))
    ap.add_argument("--machine", default="the project's 2-core CPU machine")
    ap.add_argument("--out", default="docs/results/cpu_inference")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    paths = [Path(p) for p in list_images(a.data / "images")]
    paths = paths[:a.limit] if a.limit else paths
    rgbs = [read_rgb(p) for p in paths]
    labels = [read_instance_label(next((a.data / "labels").glob(p.stem + ".*"))) for p in paths]

    rows, reference = [], {}
    for tta in (True, False):
        for backend, roi in SETTINGS:
            if not available(backend):
                print(f"skip {backend}: not installed")
                continue
            r = runner(backend, roi, tta, a.work)
            r.predictor(r.network, rgbs[0], r.device)  # warm-up (and the engine's first-call setup)
            net_s, post_s, diff, scores = [], [], 0.0, []
            for i, (rgb, lab) in enumerate(zip(rgbs, labels)):
                t0 = time.perf_counter()
                prob = r.predictor(r.network, rgb, r.device)
                t1 = time.perf_counter()
                inst, _ = r.postprocess(prob, rgb)
                post_s.append(time.perf_counter() - t1)
                net_s.append(t1 - t0)
                key = (tta, roi, i)
                if backend == "pytorch":
                    reference[key] = prob
                elif key in reference:
                    diff = max(diff, float(np.abs(prob - reference[key]).max()))
                scores.append(instance_scores(inst, lab))
            row = {"backend": backend, "roi_size": roi, "tta": tta, "network_s": float(np.mean(net_s)),
                   "postprocess_s": float(np.mean(post_s)), "max_abs_prob_difference": diff}
            row.update({k: float(np.mean([s[k] for s in scores])) for k in ("aji", "pq", "pixel_f1")})
            rows.append(row)
            print(json.dumps(row))

    params = json.loads((ROOT / "docs" / "results" / "classical_baseline.json").read_text())["selected"]
    kw = {k: v for k, v in params.items() if k in ("min_distance", "sigma", "min_size", "threshold_scale")}
    classical_nuclei(rgbs[0], **kw)
    t0 = time.perf_counter()
    cl_scores = [instance_scores(classical_nuclei(rgb, **kw), lab) for rgb, lab in zip(rgbs, labels)]
    classical_s = (time.perf_counter() - t0) / len(rgbs)  # includes scoring, as small as the post-processing's
    classical = {"seconds": classical_s, **{k: float(np.mean([s[k] for s in cl_scores])) for k in ("aji", "pq")}}

    base = {tta: next(r["network_s"] for r in rows if r["backend"] == "pytorch" and r["roi_size"] == 512
                      and r["tta"] == tta) for tta in (True, False)}
    cmd = "python -m scripts.benchmark_cpu_inference " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": cmd, "machine": f"{a.machine} ({platform.machine()}), {a.threads} threads",
              "date": datetime.date.today().isoformat(), "torch": torch.__version__, "images": len(rgbs),
              "rows": rows, "classical": classical,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    lines = [
        "# CPU inference engines (shipped nuclei network)", "",
        f"`{cmd}` on {result['machine']}, {result['date']}, torch {torch.__version__}; {len(rgbs)} MoNuSeg test "
        "tiles (1000 x 1000 px). *network s*: seconds per tile of the probabilities (what `--backend`, `--roi_size` "
        "and `--tta` change); *post s*: the instance step after it; *max |dp|*: largest probability difference from "
        "PyTorch at the same window size; scores of the instances made from each engine's probabilities "
        "(`--mpp 0.25`). Peak RSS of the whole script "
        f"{result['peak_rss_gb']:.2f} GB.", "",
        "| engine | roi_size | TTA | network s | speed-up vs 0.12 default | post s | max \\|dp\\| | AJI | PQ "
        "| pixel F1 |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['roi_size']} | {'on' if r['tta'] else 'off'} | {r['network_s']:.3f} | "
                     f"{base[r['tta']] / r['network_s']:.2f}x | {r['postprocess_s']:.3f} | "
                     f"{r['max_abs_prob_difference']:.1e} | {r['aji']:.4f} | {r['pq']:.4f} | {r['pixel_f1']:.4f} |")
    lines += ["", f"Classical baseline (haematoxylin Otsu + watershed, whole method): {classical_s:.3f} s per tile, "
              f"AJI {classical['aji']:.4f}, PQ {classical['pq']:.4f}.", ""]
    write_results(a.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
