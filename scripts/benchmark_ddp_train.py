# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""DDP training (issue 30): the det stage (``train.json`` + ``det_train.json``, defaults but the schedule) on one
process against ``torchrun --nproc_per_node N`` with ``configs/multi_gpu_train.json``, the user's commands, on the
same tiles and pseudo masks: training steps per second and images per second (the trainer's own run time, start-up
and label writing excluded), for the same global batch (N x 1 image vs 1 x N images) and for N x the batch.
``--workflow gan``: the cell InfoGAN instead (``gan_train.json`` + ``multi_gpu_gan_train.json``, cells extracted from
the tiles with ``configs/cells_extract.json``), batches of ``--gan_batch`` cells.

    python -m scripts.benchmark_ddp_train --images ../shared/data/monuseg/train/images --nproc 2 \
        --out docs/results/ddp_train
    python -m scripts.benchmark_ddp_train --workflow gan --images ../shared/data/monuseg/train/images --nproc 2 \
        --out docs/results/ddp_train_gan

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


def extract_cells(images: Path, root: Path) -> None:
    """``configs/cells_extract.json`` on the tiles -> ``<root>/cells/cells.npy``."""
    from bundle.label_free import child_env

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "cells_extract.json"),
           "--bundle_root", str(root), "--dataset_dir", str(images)]
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cells_extract failed: {(r.stderr or r.stdout).strip().splitlines()[-3:]}")


def train(images: Path, root: Path, run: str, nproc: int, batch: int, epochs: int, steps: int,
          workflow: str = "det") -> float:
    """Seconds the trainer ran (ignite's "Engine run finished" of the SupervisedTrainer)."""
    from bundle.label_free import child_env

    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    if workflow == "gan":
        configs = [str(ROOT / "configs" / c) for c in ("gan_train.json", "multi_gpu_gan_train.json")]
        cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
               "--meta_file", str(ROOT / "configs" / "gan_metadata.json"), "--bundle_root", str(root),
               "--epochs", str(epochs), "--epoch_length", str(steps), "--batch_size", str(batch), "--resume", "False",
               "--ckpt_dir", str(root / "models" / run), "--output_dir", str(root / "eval" / run)]
    else:
        configs = [str(ROOT / "configs" / c) for c in ("train.json", "det_train.json", "multi_gpu_train.json")]
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
    ap.add_argument("--workflow", choices=("det", "gan"), default="det")
    ap.add_argument("--gan_batch", type=int, default=32, help="cells per batch and process (gan)")
    a = ap.parse_args(argv)
    images, n, gan = Path(a.images), int(a.nproc), a.workflow == "gan"
    b = int(a.gan_batch) if gan else 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if gan:
            extract_cells(images, root)
        else:
            pseudo_masks(images, root)
            train(images, root, "warmup", 1, 1, 1, 1)  # writes the detection labels once (reused by every run)
        runs = [("1 process, batch of N", 1, n * b), (f"{n} processes, batch 1 each (same global batch)", n, b),
                (f"{n} processes, batch N each (N x the global batch)", n, n * b)]
        rows = []
        for name, procs, batch in runs:
            sec = train(images, root, f"p{procs}b{batch}", procs, batch, a.epochs, a.steps, a.workflow)
            steps = a.epochs * a.steps
            rows.append({"run": name.replace("batch 1", f"batch {b}").replace("batch N", f"batch {n * b}")
                         .replace("batch of N", f"batch of {n * b}"), "processes": procs, "images_per_batch": batch,
                         "seconds": round(sec, 1), "steps_per_s": round(steps / sec, 3),
                         "images_per_s": round(steps * procs * batch / sec, 2)})
            print(rows[-1], flush=True)
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_ddp_train " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "workflow": a.workflow, "epochs": a.epochs, "steps_per_epoch": a.steps, "runs": rows}
    what = ("cell InfoGAN (`gan_train.json` + `multi_gpu_gan_train.json`, 32 px cells from `cells_extract.json`; one "
            "step = one critic step, a generator step every 5th)" if gan else
            "det stage (`train.json` + `det_train.json`, 256 px crops x 4 per image)")
    unit = "cells" if gan else "images"
    md = [f"# DDP training: one process vs {n} ({r['date']})", "",
          f"`{r['command']}` on {r['machine']}: {what}, {a.epochs} epochs x {a.steps} steps, trainer run time "
          f"(start-up{'' if gan else ' and labels'} excluded){'' if gan else '; crops per image count as one image'}.",
          "", f"| run | processes | {unit} per batch (each) | seconds | steps/s | {unit}/s |",
          "|---|---|---|---|---|---|"]
    md += [f"| {x['run']} | {x['processes']} | {x['images_per_batch']} | {x['seconds']} | {x['steps_per_s']} | "
           f"{x['images_per_s']} |" for x in rows]
    write_results(a.out, r, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
