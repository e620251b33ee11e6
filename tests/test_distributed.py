# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.distributed: inference sharded over two torchrun processes (gloo, CPU) gives the files of one
process, and a summary with every image once."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bundle.label_free import child_env


def _infer(root, data, out, extra_configs=(), launcher=(), config="inference.json"):
    configs = [str(root / "configs" / config), *(str(root / "configs" / c) for c in extra_configs)]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs), "--bundle_root", str(root),
           "--dataset_dir", str(data), "--output_dir", str(out), "--tta", "False", "--mpp", "0.25"]
    env = child_env(OMP_NUM_THREADS=1)
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f)), r


def _torchrun(k: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(29500 + (os.getpid() * 2 + k) % 1000)]


def test_two_process_sharded_inference_equals_one_process(root, tmp_path):
    import torch.distributed as dist

    from bundle.annotations import read_instance_label
    from bundle.io import write_image
    from bundle.synthetic import synthetic_he_tile

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    for s in range(5):
        write_image(tmp_path / "in" / f"t{s}.png", synthetic_he_tile(160, seed=s)[0])
    one, _ = _infer(root, tmp_path / "in", tmp_path / "one", launcher=[sys.executable])
    two, r = _infer(root, tmp_path / "in", tmp_path / "two", ["multi_gpu_inference.json"],
                    launcher=_torchrun(0))
    assert [x["image"] for x in two] == [x["image"] for x in one] == [f"t{s}" for s in range(5)]  # each once
    assert [x["n_nuclei"] for x in two] == [x["n_nuclei"] for x in one]
    for s in range(5):
        a, b = (read_instance_label(tmp_path / d / "labels" / f"t{s}.png") for d in ("one", "two"))
        assert np.array_equal(a, b)
        assert (tmp_path / "two" / "points" / f"t{s}.csv").read_text() == \
            (tmp_path / "one" / "points" / f"t{s}.csv").read_text()
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["n_images"] == 5
    assert (tmp_path / "two" / "report.html").is_file() and not (tmp_path / "two" / ".lock").exists()
    assert "rank" not in "".join(p.name for p in (tmp_path / "two").iterdir())  # no per-rank leftovers


def test_two_process_ki67_inference_merges_counts_and_index(root, tmp_path):
    """ki67_infer.json on two ranks: the same points per tile, the same per-tile rows and the same folder index as one
    process (rank 0 merges every rank's rows and DAB histogram)."""
    from bundle.io import write_image
    from bundle.ki67.data import synthetic_ihc_tile

    for s in range(3):
        write_image(tmp_path / "in" / f"k{s}.png",
                    synthetic_ihc_tile(160, n_positive=5, n_negative=7, radius=7, seed=s)[0])
    one, _ = _infer(root, tmp_path / "in", tmp_path / "one", launcher=[sys.executable], config="ki67_infer.json")
    two, _ = _infer(root, tmp_path / "in", tmp_path / "two", ["multi_gpu_inference.json"], launcher=_torchrun(1),
                    config="ki67_infer.json")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in two] == \
        [{k: v for k, v in r.items() if k not in drop} for r in one]
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert a["n_cells"] == b["n_cells"] > 0 and a["ki67_index"] == b["ki67_index"]
    for s in range(3):
        assert (tmp_path / "two" / "points" / f"k{s}.csv").read_text() == \
            (tmp_path / "one" / "points" / f"k{s}.csv").read_text()
