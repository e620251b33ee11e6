# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.errors: an uncaught error ends with one line naming the file and the problem."""

from bundle.errors import error_line, root_cause
from bundle.io import ImageError, list_images


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


def test_a_full_disk_says_so_and_names_the_file(tmp_path, monkeypatch):
    """Issue 33, item 8: PIL turns ENOSPC into "'_idat' object has no attribute 'fileno'"; the last line must say
    "No space left on device" and the path."""
    import errno

    import numpy as np
    from PIL import Image

    from bundle.errors import error_line
    from bundle.io import write_image

    def full_disk_save(self, fp, *a, **kw):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise AttributeError("'_idat' object has no attribute 'fileno'")

    monkeypatch.setattr(Image.Image, "save", full_disk_save)
    target = tmp_path / "out" / "overlay.png"
    try:
        try:
            write_image(target, np.zeros((8, 8, 3), np.uint8))
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@runner.run()") from e  # as monai.bundle wraps it
    except RuntimeError as wrapped:
        line = error_line(wrapped)
    assert line.startswith("OSError: ") and "No space left on device" in line and str(target) in line
    assert not target.exists() and not list(target.parent.glob("*.part*"))  # nothing half-written
