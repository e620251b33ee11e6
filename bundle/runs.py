# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Run bookkeeping shared by the workflows: per-image summaries (``summary.csv`` / ``summary.json``), train /
validation splits, and whether a label folder is stale or was made with other settings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np

from bundle.io import (
    ImageError,
    write_csv,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "POINT_FIELDS", "write_summary", "split_items", "is_stale", "settings_changed", "run_items", "FolderBusy",
    "FolderLock", "output_run"
]

POINT_FIELDS = ("image", "x", "y", "class", "score")  # columns of every points CSV


def write_summary(output_dir, rows: list, skipped: list, data, csv_name: str = "summary.csv") -> dict:
    """Per-image ``rows`` -> ``<output_dir>/<csv_name>`` and ``summary.json`` (means of the numeric columns,
    counts, skipped files), atomically. Raises ``ImageError`` naming ``data`` when no image was processed."""
    if not rows:
        raise ImageError(f"{data}: no image could be processed ({len(skipped)} skipped"
                         + (f": {skipped[0]})" if skipped else ")"))
    output_dir = Path(output_dir)
    write_csv(output_dir / csv_name, rows)
    num = (int, float, np.floating, np.integer)
    keys = dict.fromkeys(k for r in rows for k in r if k != "image")
    numeric = [k for k in keys if any(isinstance(r.get(k), num) and not isinstance(r.get(k), bool) for r in rows)]
    summary = {k: float(np.mean([r[k] for r in rows if isinstance(r.get(k), num)])) for k in numeric}
    summary.update({"n_images": len(rows), "n_skipped": len(skipped), "skipped": skipped})
    write_json(output_dir / "summary.json", summary)
    if skipped:
        logger.warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped))
    return summary


def split_items(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train / held-back split of a list (at least one of each when there are >= 2 items)."""
    if val_fraction <= 0 or len(items) < 2:
        return items, items[:1] if val_fraction > 0 else []
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = min(len(items) - 1, max(1, int(round(val_fraction * len(items)))))
    val = sorted(order[:n_val].tolist())
    return [items[i] for i in range(len(items)) if i not in set(val)], [items[i] for i in val]


def is_stale(out: Path, *inputs) -> bool:
    """True when ``out`` is missing or older than any existing input path."""
    if not out.is_file():
        return True
    t = out.stat().st_mtime
    return any(Path(p).is_file() and Path(p).stat().st_mtime > t for p in inputs if p)


def settings_changed(label_dir: Path, settings: dict) -> bool:
    """Record the label settings in ``label_dir/settings.json``; True when they differ from the recorded ones
    (then every label is rewritten, so a changed option never reuses stale labels)."""
    path = Path(label_dir) / "settings.json"
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
    if old != settings:
        write_json(path, settings)
        return old is not None
    return False


def run_items(items, run_one, desc: str, skipped: list | None = None) -> tuple[list, list]:
    """``run_one(item)`` for every item with a progress bar; an item whose file is bad (``ImageError``,
    ``ValueError``, ``FileNotFoundError``) is skipped with its one-line message logged and added to ``skipped``.
    Returns ``(rows, skipped)``."""
    from tqdm import tqdm

    rows, skipped = [], [] if skipped is None else skipped
    for it in tqdm(items, desc=desc, unit="img"):
        try:
            rows.append(run_one(it))
        except (ImageError, ValueError, FileNotFoundError) as e:
            logger.warning(f"skipped {e}")
            skipped.append(str(e))
    return rows, skipped


# ------------------------------------------------------------------------------------------------ one run per folder
class FolderBusy(RuntimeError):
    """Another live run holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or a number we cannot check: assume it is alive
    return True


class FolderLock:
    """Make ``folder`` exclusive to this process while the block runs: ``<folder>/.lock`` (JSON: pid, host, started,
    command) is created atomically; a second run stops with one line naming the holder and what to do (or waits up
    to ``wait`` seconds for it). A lock left by a process that is gone (same host, PID not running, or an unreadable
    lock file) is stale and taken over with a one-line note. Reentrant within one process (a runner inside
    ``label_free`` locks other folders; the same folder twice is allowed)."""

    NAME = ".lock"
    _held: set = set()

    def __init__(self, folder, wait: float = 0.0, what: str = "run"):
        self.folder, self.wait, self.what = Path(folder), float(wait), what
        self.path = self.folder / self.NAME
        self.mine = False

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, h: dict | None) -> bool:
        if not isinstance(h, dict) or "pid" not in h:
            return True
        return h.get("host") == socket.gethostname() and not _alive(h["pid"])

    def acquire(self) -> "FolderLock":
        key = str(self.path.resolve())
        if key in FolderLock._held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        import sys

        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)[:300]}
        deadline = time.time() + self.wait
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                FolderLock._held.add(key)
                self.mine = True
                return self
            except FileExistsError:
                h = self.holder()
                if self._stale(h):
                    why = "unreadable" if h is None else f"PID {h.get('pid')} on {h.get('host')} is gone"
                    logger.warning(f"{self.folder}: taking over a stale lock ({self.path}: {why})")
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                if time.time() >= deadline:
                    raise FolderBusy(f"{self.folder}: in use by another {self.what} (PID {h.get('pid')} on "
                                     f"{h.get('host')} since {h.get('started')}); wait for it to finish, use another "
                                     f"folder, or delete {self.path} if that run is gone") from None
                time.sleep(min(2.0, max(0.1, deadline - time.time())))

    def release(self) -> None:
        if self.mine:
            FolderLock._held.discard(str(self.path.resolve()))
            with contextlib.suppress(FileNotFoundError):
                if (self.holder() or {}).get("pid") == os.getpid():
                    self.path.unlink()
            self.mine = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


@contextlib.contextmanager
def output_run(output_dir, summaries=("summary.csv", "summary.json"), what: str = "run"):
    """The start of a runner's run over ``output_dir``: take its :class:`FolderLock`, delete the temporaries a killed
    earlier run left anywhere in it (``.*.part*``, see :func:`bundle.io.atomic_path`) and its old ``summaries`` (they
    are rewritten at the end from this run's outputs, so a killed run never leaves the previous summary beside new
    outputs). The lock is released when the block ends. Under ``torchrun`` (:mod:`bundle.distributed`) rank 0 locks
    and cleans the folder before any rank starts and releases it after every rank has finished."""
    from bundle.distributed import barrier, rank_world

    out = Path(output_dir)
    if rank_world()[0] != 0:  # another rank of a torchrun group: rank 0 holds the folder for all of them
        barrier()
        yield out
        barrier()
        return
    with FolderLock(out, what=what):
        n = 0
        for part in out.rglob(".*.part*"):
            if part.is_file():
                part.unlink(missing_ok=True)
                n += 1
        if n:
            logger.info(f"{out}: removed {n} temporary file(s) left by a killed earlier run")
        for name in summaries:
            (out / name).unlink(missing_ok=True)
        barrier()
        yield out
        barrier()
