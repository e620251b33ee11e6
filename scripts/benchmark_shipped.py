# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The shipped nuclei network (models/model.pt) on MoNuSeg test with no training, the way a user runs it.

    python -m scripts.benchmark_shipped --monuseg ../shared/data/monuseg --out docs/results/shipped_nuclei

Each measurement is the user's command line in its own process: ``configs/inference.json`` (bundle_root = this
bundle, default settings, flip TTA) on a folder, then ``configs/evaluate.json`` against the true instance maps:
- the 14 test images at 40x, with ``--mpp 0.25`` (the pixel size known) and without (the default: each tile's scale
  measured from its nuclei);
- a 20x copy of them (:mod:`scripts.make_lowres`, 2 x 2 box average, labels subsampled) taken as 40x (``--mpp 0.25``),
  with its scale measured (no ``--mpp``) and with ``--mpp 0.5`` (the network then sees the tiles resized to the pixel
  size it was trained at);
plus the classical baseline (haematoxylin Otsu + watershed, parameters chosen on train:
``docs/results/classical_baseline.json``) on the same 40x images, and the seconds from starting the inference command
to its first written instance map. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bundle.annotations import read_instance_label
from bundle.io import read_rgb, write_json
from bundle.label_free import child_env
from bundle.metrics import instance_scores
from bundle.nuclei.postprocess import classical_nuclei

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("pixel_f1", "object_dice", "aji", "aji_plus", "pq")


def run_bundle(args: list, env: dict, watch: Path | None = None) -> dict:
    """``python -m monai.bundle run`` with ``args`` from the bundle folder; wall seconds, and the seconds until the
    first file appeared in ``watch`` (a labels folder)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *map(str, args)]
    first = {}

    def poll(t0):
        while "done" not in first:
            if watch is not None and watch.is_dir() and any(p.suffix == ".png" for p in watch.iterdir()):
                first.setdefault("seconds", time.perf_counter() - t0)
                return
            time.sleep(0.05)

    t0 = time.perf_counter()
    th = threading.Thread(target=poll, args=(t0,), daemon=True)
    th.start()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    first["done"] = True
    if r.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{r.stderr[-3000:]}")
    return {"wall_s": time.perf_counter() - t0, "first_map_s": first.get("seconds"), "command": shlex.join(cmd)}


def infer_and_score(images: Path, labels: Path, out: Path, env: dict, extra=()) -> dict:
    inf = run_bundle(["--config_file", "configs/inference.json", "--dataset_dir", images, "--output_dir", out,
                      *extra], env, watch=out / "labels")
    ev = run_bundle(["--config_file", "configs/evaluate.json", "--dataset_dir", labels, "--pred_dir",
                     out / "labels", "--output_dir", out / "evaluation"], env)
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {"mean": {k: metrics["mean"][k] for k in KEYS}, "n_images": metrics["n_images"],
            "predicted_nuclei": int(round(summary["n_nuclei"] * summary["n_images"])),
            "true_nuclei": int(sum(read_instance_label(p).max() for p in sorted(labels.glob("*.png")))),
            "seconds_per_image": summary["seconds"], "wall_s": inf["wall_s"], "first_map_s": inf["first_map_s"],
            "commands": [inf["command"], ev["command"]]}


def classical(images: Path, labels: Path, params: dict) -> dict:
    rows = [instance_scores(classical_nuclei(read_rgb(p), **params), read_instance_label(labels / p.name))
            for p in sorted(images.glob("*.png"))]
    return {"mean": {k: float(np.mean([r[k] for r in rows])) for k in KEYS}, "n_images": len(rows), "params": params}


def render_md(r: dict) -> str:
    lines = [f"# Shipped nuclei network on MoNuSeg test, no training ({r['date']})", "",
             f"`{r['command']}` on {r['machine']} ({r['threads']} threads). Network: {r['network']}.", "",
             "| images | method | pixel F1 | object Dice | AJI | AJI+ | PQ | nuclei (true) | s / image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, res in r["results"].items():
        m = res["mean"]
        count = f"{res.get('predicted_nuclei', '-')} ({res.get('true_nuclei', '-')})"
        sec = f"{res['seconds_per_image']:.2f}" if "seconds_per_image" in res else "-"
        lines.append(f"| {res['images']} | {res['method']} | {m['pixel_f1']:.3f} | {m['object_dice']:.3f} | "
                     f"{m['aji']:.3f} | {m['aji_plus']:.3f} | {m['pq']:.3f} | {count} | {sec} |")
    first = r["results"]["shipped_40x"]["first_map_s"]
    lines += ["", f"Seconds from starting `inference.json` to its first written instance map (40x, 1000x1000, flip "
              f"TTA, a process start included): {first:.1f}.", "", "Commands:", ""]
    for res in r["results"].values():
        lines += [f"    {c}" for c in res.get("commands", [])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True, help="prepared MoNuSeg folder (test/images, test/labels)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/shipped_benchmark"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--machine", default="the project's 2-core CPU machine")
    ap.add_argument("--out", type=Path, default=Path("docs/results/shipped_nuclei"))
    a = ap.parse_args(argv)
    env = child_env(OMP_NUM_THREADS=a.threads)
    test = a.monuseg / "test"
    low = a.work / "m20"
    if not (low / "test" / "images").is_dir():
        subprocess.run([sys.executable, "-m", "scripts.make_lowres", "--monuseg", str(a.monuseg), "--factor", "2",
                        "--out", str(low)], cwd=ROOT, env=env, check=True)
    params = json.loads((ROOT / "docs" / "results" / "classical_baseline.json").read_text())["selected"]
    results = {
        "shipped_40x": {"images": "40x", "method": "shipped network, --mpp 0.25",
                        **infer_and_score(test / "images", test / "labels", a.work / "40x", env, ("--mpp", "0.25"))},
        "shipped_40x_auto": {"images": "40x", "method": "shipped network, no --mpp (each tile's scale measured)",
                             **infer_and_score(test / "images", test / "labels", a.work / "40x_auto", env)},
        "classical_40x": {"images": "40x", "method": "classical baseline",
                          **classical(test / "images", test / "labels", params)},
        "shipped_20x_no_mpp": {"images": "20x copy", "method": "shipped network, --mpp 0.25 (taken as 40x)",
                               **infer_and_score(low / "test" / "images", low / "test" / "labels", a.work / "20x",
                                                 env, ("--mpp", "0.25"))},
        "shipped_20x_auto": {"images": "20x copy", "method": "shipped network, no --mpp (each tile's scale measured)",
                             **infer_and_score(low / "test" / "images", low / "test" / "labels", a.work / "20x_auto",
                                               env)},
        "shipped_20x_mpp": {"images": "20x copy", "method": "shipped network, --mpp 0.5",
                            **infer_and_score(low / "test" / "images", low / "test" / "labels", a.work / "20x_mpp",
                                              env, ("--mpp", "0.5"))},
    }
    settings = json.loads((ROOT / "models" / "settings.json").read_text())
    report = {"date": datetime.date.today().isoformat(), "machine": a.machine, "platform": platform.platform(),
              "threads": a.threads, "network": f"models/model.pt (trained at {settings.get('mpp')} um/px)",
              "command": "python -m scripts.benchmark_shipped " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "results": results}
    write_json(a.out.with_suffix(".json"), report)
    a.out.with_suffix(".md").write_text(render_md(report))
    print(render_md(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
