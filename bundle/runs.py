# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Run bookkeeping shared by the workflows: per-image summaries (``summary.csv`` / ``summary.json``), train /
validation splits, and whether a label folder is stale or was made with other settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from bundle.io import (
    ImageError,
    write_csv,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = ["POINT_FIELDS", "write_summary", "split_items", "is_stale", "settings_changed", "run_items"]

POINT_FIELDS = ("image", "x", "y", "class", "score")  # columns of every points CSV


def write_summary(output_dir, rows: list, skipped: list, data, csv_name: str = "summary.csv") -> dict:
    """Per-image ``rows`` -> ``<output_dir>/<csv_name>`` and ``summary.json`` (means of the numeric columns,
    counts, skipped files), atomically. Raises ``ImageError`` naming ``data`` when no image was processed."""
    if not rows:
        raise ImageError(f"{data}: no image could be processed ({len(skipped)} skipped"
                         + (f": {skipped[0]})" if skipped else ")"))
    output_dir = Path(output_dir)
    write_csv(output_dir / csv_name, rows)
    numeric = [k for k in rows[0] if k != "image" and isinstance(rows[0][k], (int, float, np.floating, np.integer))]
    summary = {k: float(np.mean([r[k] for r in rows if k in r])) for k in numeric}
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
