# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Sharded inference (issue 30): ``inference.json`` on one process against ``torchrun --nproc_per_node N`` with
``configs/multi_gpu_inference.json``, the user's commands, on the same folder; images per second (wall time of the
whole command, start-up included) and whether the outputs are identical.

    python -m scripts.benchmark_sharded --images ../shared/data/monuseg/test/images --nproc 2 \
        --out docs/results/sharded_inference

On a CPU machine each of the N processes gets ``cores / N`` threads (one process gets all of them); ``--tta False``
and ``--mpp 0.25`` for both. On a GPU machine the same command uses one GPU per process (NCCL). Run it on an
otherwise idle machine. Writes ``<out>.json`` and ``<out>.md``.
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
import tempfile
import time
from pathlib import Path

from scripts import write_results

ROOT = Path(__file__).resolve().parents[1]


def run(images: str, out: Path, nproc: int) -> float:
    from bundle.label_free import child_env

    configs = [str(ROOT / "configs" / "inference.json")]
    launcher = [sys.executable]
    if nproc > 1:
        configs.append(str(ROOT / "configs" / "multi_gpu_inference.json"))
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29613"]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--bundle_root", str(ROOT),
           "--dataset_dir", images, "--output_dir", str(out), "--tta", "False", "--mpp", "0.25"]
    env = child_env(OMP_NUM_THREADS=max(1, (os.cpu_count() or 1) // nproc))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", default="docs/results/sharded_inference")
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    from bundle.io import list_images

    n = len(list_images(a.images))
    with tempfile.TemporaryDirectory() as tmp:
        one = run(a.images, Path(tmp) / "one", 1)
        many = run(a.images, Path(tmp) / "many", a.nproc)
        same = all((Path(tmp) / "one" / "labels" / p.name).read_bytes() == p.read_bytes()
                   for p in (Path(tmp) / "many" / "labels").glob("*.png"))
        rows = [(Path(tmp) / d / "summary.csv").read_text().count("\n") - 1 for d in ("one", "many")]
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_sharded " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "n_images": n, "seconds_1": round(one, 1), f"seconds_{a.nproc}": round(many, 1),
         "images_per_s_1": round(n / one, 3), f"images_per_s_{a.nproc}": round(n / many, 3),
         "identical_label_maps": same, "summary_rows": rows}
    md = "\n".join([f"# Sharded inference ({r['date']})", "",
                    f"`{r['command']}` on {r['machine']}: {n} images, no TTA, whole command timed.", "",
                    "| processes | seconds | images / s |", "|---|---|---|",
                    f"| 1 | {one:.1f} | {n / one:.2f} |", f"| {a.nproc} | {many:.1f} | {n / many:.2f} |", "",
                    f"Label maps identical: {'yes' if same else 'NO'}; summary rows {rows[0]} / {rows[1]}.", ""])
    write_results(a.out, r, md)


if __name__ == "__main__":
    main()
