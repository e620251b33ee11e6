# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Uncaught errors end with one line naming the file and the problem (bundle.errors), also through
``python -m monai.bundle run`` (which wraps them in RuntimeError) and ``python -m bundle.label_free``."""

import subprocess
import sys

from bundle.errors import error_line, root_cause
from bundle.io import ImageError, list_images
from bundle.label_free import child_env


def _wrapped(fn):
    """What MONAI's config evaluation does: re-raise any error as the cause of a RuntimeError."""
    try:
        try:
            fn()
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@runner.run()") from e
    except RuntimeError as e:
        return e
    raise AssertionError("no error raised")


def test_error_line_names_the_cause_raised_by_the_bundle(tmp_path):
    err = _wrapped(lambda: list_images(tmp_path))
    assert isinstance(root_cause(err), ImageError)
    line = error_line(err)
    assert line.startswith(f"ImageError: {tmp_path}: no image files") and line.endswith("in this folder")
    assert "\n" not in line


def test_error_line_falls_back_to_the_innermost_error():
    def fail():
        raise ValueError("bad override value\nsecond line")

    err = _wrapped(fail)
    assert error_line(err) == "ValueError: bad override value"  # first line only
    assert error_line(RuntimeError()) == "RuntimeError"


def test_failed_stage_ends_with_its_cause(tmp_path, root):
    """An empty folder: the stage (a ``monai.bundle run``) ends its traceback with the one-line cause, and
    ``bundle.label_free`` repeats it in its own last line."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "bundle.label_free", "--dataset_dir", str(empty), "--bundle_root",
                        str(tmp_path / "out"), "--stages", "ssl"], cwd=root, env=child_env(OMP_NUM_THREADS=1),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    cause = f"ImageError: {empty}: no image files"
    assert any(ln.startswith(f"ERROR: {cause}") for ln in lines), r.stderr[-2000:]
    assert "stage ssl failed (exit 1): " + cause in lines[-1]
