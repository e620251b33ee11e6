# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.overrides: option typos and non-boolean values stop a bundle run in one line (issue 33, item 12)."""

import subprocess
import sys

import pytest

from bundle.label_free import child_env
from bundle.overrides import check_cli, check_overrides, cli_overrides


def test_cli_pairs_and_unknown_or_non_boolean_overrides(root):
    argv = ["--config_file", "configs/inference.json", "--wsi#mpp=0.5", "--tta", "False", "--flag"]
    assert cli_overrides(argv) == [("config_file", "configs/inference.json"), ("wsi#mpp", "0.5"), ("tta", "False"),
                                   ("flag", "")]
    inf = root / "configs" / "inference.json"
    check_overrides([("dataset_dir", "/x"), ("wsi#mpp", "0.5"), ("tta", "False"), ("meta_file", "m.json")], inf)
    with pytest.raises(ValueError, match="--dataset_dri: no such setting in inference.json; did you mean --dataset_dir"):
        check_overrides([("dataset_dri", "/x")], inf)
    with pytest.raises(ValueError, match="--tta 'Flase': not a boolean"):
        check_overrides([("tta", "Flase")], inf)
    with pytest.raises(ValueError, match="not a boolean"):
        check_overrides([("tta", "false")], inf)  # Fire reads lowercase 'false' as a (true) string
    # an overlay's keys count, and so do the base's
    files = [root / "configs" / "train.json", root / "configs" / "ki67_train.json"]
    check_overrides([("dab_threshold", "0.4"), ("epochs", "3"), ("network_def#out_channels", "3")], files)
    assert not check_cli(["pytest", "run"])  # only `python -m monai.bundle run` is checked


def test_a_typo_stops_the_bundle_run_in_one_line(root, tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dri",
           str(tmp_path), "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    r = subprocess.run(cmd, cwd=root, env=child_env(), capture_output=True, text=True, timeout=300)
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert r.returncode != 0 and last == "ERROR: ValueError: --dataset_dri: no such setting in inference.json; did " \
                                         "you mean --dataset_dir?"
