# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Big plain tiles (issue 33 item 11): ``inference.json`` (shipped nuclei network, defaults, no TTA) on one PNG
mosaic of MoNuSeg test tiles, read whole (``--big_tile_px`` above its size, the 0.11.0 behaviour) and in windows
(the default for tiles over 2048 x 2048 px): accuracy of both against the mosaic of the ground-truth label maps,
their agreement, time and peak RSS; then peak RSS and time of the default run on bigger mosaics.

    python -m scripts.benchmark_big_tiles --data ../shared/data/monuseg/test --out docs/results/big_tiles

Each run is its own ``python -m monai.bundle run`` process (peak RSS = its maximum resident set). Mosaics are built
from the test images in name order, repeated as needed (``--grid``: tiles per side of the scored mosaic;
``--sizes``: sides of the memory runs). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts import write_results

ROOT = Path(__file__).resolve().parents[1]


def mosaic(data: Path, side: int, labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(side, side, 3) uint8 mosaic of the folder's 1000 x 1000 images in name order (repeated), and with
    ``labels`` the matching instance map (ids made unique across tiles)."""
    from bundle.annotations import read_instance_label
    from bundle.io import read_rgb

    imgs = sorted((data / "images").glob("*.png"))
    k = -(-side // 1000)
    rgb = np.zeros((k * 1000, k * 1000, 3), np.uint8)
    lab = np.zeros((k * 1000, k * 1000), np.int32) if labels else None
    for i in range(k * k):
        r, c = divmod(i, k)
        f = imgs[i % len(imgs)]
        rgb[r * 1000:(r + 1) * 1000, c * 1000:(c + 1) * 1000] = read_rgb(f)[:1000, :1000]
        if labels:
            gt = read_instance_label(data / "labels" / f.name).astype(np.int32)[:1000, :1000]
            lab[r * 1000:(r + 1) * 1000, c * 1000:(c + 1) * 1000] = np.where(gt > 0, gt + lab.max(), 0)
    return rgb[:side, :side], (lab[:side, :side] if labels else None)


def run(images: Path, out: Path, big_tile_px: int | None = None) -> dict:
    """One inference process: wall seconds, peak RSS (GB) and its summary row."""
    import csv

    from bundle.label_free import child_env

    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(ROOT / "configs" / "inference.json"), "--meta_file", str(ROOT / "configs" / "metadata.json"),
           "--logging_file", str(ROOT / "configs" / "logging.conf"), "--bundle_root", str(ROOT),
           "--dataset_dir", str(images), "--output_dir", str(out), "--tta", "False"]
    if big_tile_px is not None:
        cmd += ["--big_tile_px", str(big_tile_px)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"inference failed: {r.stderr.strip().splitlines()[-1:]}")
    kb = [int(ln.split()[1]) for ln in r.stdout.splitlines() if ln.startswith("RSS ")]
    with open(out / "summary.csv") as f:
        row = next(csv.DictReader(f))
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(kb[0] / 1024 ** 2, 2), "n_nuclei": int(row["n_nuclei"])}


def label_map(out: Path) -> np.ndarray:
    from bundle.annotations import read_instance_label

    f = next(p for p in (out / "labels").iterdir() if p.suffix in (".png", ".tif"))
    return read_instance_label(f).astype(np.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MoNuSeg test folder (images/, labels/)")
    ap.add_argument("--grid", type=int, default=3, help="tiles per side of the scored mosaic (3: 3000 x 3000 px)")
    ap.add_argument("--sizes", default="8192,16384", help="mosaic sides of the memory runs (windows only)")
    ap.add_argument("--out", default="docs/results/big_tiles")
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    from bundle.io import write_image
    from bundle.metrics import instance_scores

    data, side = Path(a.data), 1000 * a.grid
    res = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
           "command": "python -m scripts.benchmark_big_tiles " + shlex.join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rgb, gt = mosaic(data, side, labels=True)
        write_image(tmp / "in" / "mosaic.png", rgb)
        del rgb
        scored = {}
        for name, px in (("whole", 10 ** 12), ("windows", None)):
            r = run(tmp / "in", tmp / name, px)
            r.update({k: round(v, 4) for k, v in instance_scores(label_map(tmp / name), gt).items()
                      if k in ("aji", "pq", "pixel_f1", "object_dice")})
            scored[name] = r
            print(name, r, flush=True)
        agree = instance_scores(label_map(tmp / "windows"), label_map(tmp / "whole"))
        res.update({"side": side, "true_nuclei": int(len(np.unique(gt)) - 1), "scored": scored,
                    "windows_vs_whole": {k: round(v, 4) for k, v in agree.items() if k in ("aji", "pixel_f1", "pq")}})
        memory = {}
        for s in (int(x) for x in a.sizes.split(",") if x):
            write_image(tmp / f"in{s}" / "mosaic.png", mosaic(data, s)[0])
            memory[s] = run(tmp / f"in{s}", tmp / f"out{s}")
            print(s, memory[s], flush=True)
        res["memory"] = memory
    w, s = scored["whole"], scored["windows"]
    md = [f"# Big plain tiles: read whole vs in windows ({res['date']})", "",
          f"`{res['command']}` on {res['machine']}. Shipped nuclei network, `inference.json` defaults (scale measured "
          "per tile), no TTA; each run one process.", "",
          f"One {side} x {side} PNG mosaic of {a.grid * a.grid} MoNuSeg test tiles ({res['true_nuclei']} true "
          "nuclei), scored against the mosaic of their label maps (one tile of nine differently stained images, read "
          "with one haematoxylin threshold: lower scores than the tiles one by one, the same for both reads):", "",
          "| read | AJI | PQ | pixel F1 | object Dice | nuclei | seconds | peak RSS (GB) |",
          "|---|---|---|---|---|---|---|---|"]
    for name, r in (("whole (`--big_tile_px` above its size; 0.11.0)", w), ("in 1024 px windows (default)", s)):
        md.append(f"| {name} | {r['aji']:.4f} | {r['pq']:.4f} | {r['pixel_f1']:.4f} | {r['object_dice']:.4f} | "
                  f"{r['n_nuclei']} | {r['seconds']} | {r['peak_rss_gb']} |")
    ag = res["windows_vs_whole"]
    md += ["", f"Windows against whole, as if whole were the truth: AJI {ag['aji']:.4f}, PQ {ag['pq']:.4f}, pixel F1 "
           f"{ag['pixel_f1']:.4f}. Not bit-identical: the network's own 512 px sliding window falls at other places "
           "in a 1152 px window than in the whole tile, which moves a few boundary pixels everywhere (with a per-pixel "
           "network the two give the same instances: `tests/nuclei/test_runner.py`). The haematoxylin threshold is "
           "the whole tile's, exactly (pooled over every window).", "",
           "Default run (windows) on bigger mosaics of the same tiles:", "",
           "| tile | nuclei | seconds | peak RSS (GB) |", "|---|---|---|---|"]
    md += [f"| {k} x {k} | {v['n_nuclei']} | {v['seconds']} | {v['peak_rss_gb']} |" for k, v in memory.items()]
    md += ["", "Read whole, the same defaults peaked at 1.46 / 3.92 / 13.69 GB on 2048 / 4096 / 8192 px synthetic "
           "tiles (0.11.0, [bad_input.md](bad_input.md) of that version, in git history).", ""]
    write_results(a.out, res, "\n".join(md))


if __name__ == "__main__":
    main()
