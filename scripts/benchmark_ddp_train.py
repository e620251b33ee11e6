# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""DDP training (issue 30): the det stage (``train.json`` + ``det_train.json``, defaults but the schedule) on one
process against ``torchrun --nproc_per_node N`` with ``configs/multi_gpu_train.json``, the user's commands, on the
same tiles and pseudo masks: training steps per second and images per second (the trainer's own run time, start-up
and label writing excluded), for the same global batch (N x 1 image vs 1 x N images) and for N x the batch.

    python -m scripts.benchmark_ddp_train --images ../shared/data/monuseg/train/images --nproc 2 \
        --out docs/results/ddp_train

Pseudo masks are the classical haematoxylin masks (:func:`bundle.nuclei.postprocess.classical_foreground`), made
here, so no earlier stage is needed. On a CPU machine each process gets ``cores / N`` threads; on a GPU machine the
same command uses one GPU per process (NCCL). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts import write_results

ROOT = Path(__file__).resolve().parents[1]


def pseudo_masks(images: Path, root: Path) -> None:
    from bundle.io import list_images, read_rgb, write_image
    from bundle.nuclei.postprocess import classical_foreground

    for f in list_images(images):
        m = classical_foreground(read_rgb(f))
        write_image(root / "eval" / "pseudo_masks" / "masks" / (Path(f).stem + ".png"), (m > 0).astype("uint8") * 255)


def train(images: Path, root: Path, run: str, nproc: int, batch: int, epochs: int, steps: int) -> float:
    """Seconds the trainer ran (ignite's "Engine run finished" of the SupervisedTrainer)."""
    from bundle.label_free import child_env

    configs = [str(ROOT / "configs" / c) for c in ("train.json", "det_train.json", "multi_gpu_train.json")]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--meta_file", str(ROOT / "configs" / "metadata.json"), "--bundle_root", str(root),
           "--dataset_dir", str(images), "--epochs", str(epochs), "--steps_per_epoch", str(steps),
           "--images_per_batch", str(batch), "--val_interval", str(epochs + 1), "--resume", "False",
           "--ckpt_dir", str(root / "models" / run), "--output_dir", str(root / "eval" / run)]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(OMP_NUM_THREADS=threads), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{run} failed: {(r.stderr or r.stdout).strip().splitlines()[-3:]}")
    done = r"SupervisedTrainer - INFO - Engine run finished. Time taken: (\d+):(\d+):([\d.]+)"
    t = re.findall(done, r.stderr + r.stdout)
    h, m, s = t[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="a folder of tiles (e.g. MoNuSeg train images)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="steps per epoch")
    ap.add_argument("--out", default="docs/results/ddp_train")
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    images, n = Path(a.images), int(a.nproc)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pseudo_masks(images, root)
        train(images, root, "warmup", 1, 1, 1, 1)  # writes the detection labels once (reused by every run)
        runs = [("1 process, batch of N", 1, n), (f"{n} processes, batch 1 each (same global batch)", n, 1),
                (f"{n} processes, batch N each (N x the global batch)", n, n)]
        rows = []
        for name, procs, batch in runs:
            sec = train(images, root, f"p{procs}b{batch}", procs, batch, a.epochs, a.steps)
            steps = a.epochs * a.steps
            rows.append({"run": name, "processes": procs, "images_per_batch": batch, "seconds": round(sec, 1),
                         "steps_per_s": round(steps / sec, 3), "images_per_s": round(steps * procs * batch / sec, 2)})
            print(rows[-1], flush=True)
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_ddp_train " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "epochs": a.epochs, "steps_per_epoch": a.steps, "runs": rows}
    md = [f"# DDP training: one process vs {n} ({r['date']})", "",
          f"`{r['command']}` on {r['machine']}: det stage (`train.json` + `det_train.json`, 256 px crops x 4 per "
          f"image), {a.epochs} epochs x {a.steps} steps, trainer run time (start-up and labels excluded); crops per "
          "image count as one image.", "",
          "| run | processes | images per batch (each) | seconds | steps/s | images/s |", "|---|---|---|---|---|---|"]
    md += [f"| {x['run']} | {x['processes']} | {x['images_per_batch']} | {x['seconds']} | {x['steps_per_s']} | "
           f"{x['images_per_s']} |" for x in rows]
    write_results(a.out, r, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
