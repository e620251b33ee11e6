# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Uncaught errors end with one line that names the file and the problem.

``python -m monai.bundle run`` wraps every error raised while a config expression is evaluated in
``RuntimeError: Failed to evaluate ConfigExpression ...``, so the last line of its traceback hides the message the
bundle's components give (e.g. ``/data/tiles: no image files (...) in this folder``). :func:`install_excepthook`
(run when :mod:`bundle` is imported, which every config does) keeps the usual traceback and adds that message as a
final line, ``ERROR: <type>: <message>``. When the environment variable ``BUNDLE_ERROR_FILE`` names a file, the same
line is also written there: ``python -m bundle.label_free`` sets it for each stage it starts and repeats the line in
its own error, so a failed stage says why in the last line of the whole run.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

__all__ = ["ERROR_FILE_ENV", "exception_chain", "root_cause", "error_line", "install_excepthook"]

ERROR_FILE_ENV = "BUNDLE_ERROR_FILE"


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def exception_chain(exc: BaseException) -> list:
    """``exc`` and the exceptions it was raised from (``__cause__``, or ``__context__`` unless suppressed),
    outermost first."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return chain


def _raised_in_package(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIR + os.sep)


_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}


def root_cause(exc: BaseException) -> BaseException:
    """The exception a user should read: a full disk, read-only or failing file system anywhere in the chain (the
    outermost such OSError: the one that names the file), else the innermost one raised by this package's code (its
    messages name the file and the problem), else the innermost of all (e.g. a typo in a config override)."""
    chain = exception_chain(exc)
    disk = [e for e in chain if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS]
    if disk:
        return disk[0]
    ours = [e for e in chain if _raised_in_package(e)]
    return (ours or chain)[-1]


def error_line(exc: BaseException) -> str:
    """``"<type>: <first line of the message>"`` of :func:`root_cause`."""
    root = root_cause(exc)
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__


def _excepthook(etype, value, tb) -> None:
    sys.__excepthook__(etype, value, tb)
    if value is None or isinstance(value, (KeyboardInterrupt, SystemExit)):
        return
    line = error_line(value)
    print(f"ERROR: {line}", file=sys.stderr)
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            Path(path).write_text(line + "\n")
        except OSError:
            pass


def install_excepthook() -> None:
    """Make uncaught errors end with :func:`error_line` (only over Python's default hook, never over another one)."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
