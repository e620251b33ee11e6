# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.evaluate: the EvaluateRunner."""

import numpy as np
import pytest


def test_evaluate_runner_perfect_and_errors(tmp_path):
    from bundle.annotations import write_instance_label
    from bundle.nuclei.evaluate import EvaluateRunner

    gt = np.zeros((64, 64), np.int32)
    gt[5:15, 5:15], gt[30:40, 20:35] = 1, 2
    for d in ("pred", "gt"):
        write_instance_label(tmp_path / d / "a.png", gt)
    write_instance_label(tmp_path / "gt" / "b.png", gt)
    res = EvaluateRunner(tmp_path / "pred", tmp_path / "gt", tmp_path / "ev").run()
    assert res["mean"]["aji"] == pytest.approx(1.0) and res["missing_predictions"] == ["b"]
    assert (tmp_path / "ev" / "metrics.csv").is_file()
    with pytest.raises(FileNotFoundError, match="prediction folder not found"):
        EvaluateRunner(tmp_path / "nope", tmp_path / "gt", tmp_path / "ev").run()
