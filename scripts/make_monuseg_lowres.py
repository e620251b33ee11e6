#!/usr/bin/env python
# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""A lower-magnification copy of a prepared MoNuSeg folder, to measure the pipeline on 20x-like tiles.

MoNuSeg is scanned at 40x (about 0.25 um/px). ``--factor 2`` writes a 20x-like copy (0.5 um/px): every image
box-averaged over 2 x 2 pixels (``PIL.Image.BOX``), every instance label map subsampled (``label[::2, ::2]``, so
instances keep their ids and never blend). Layout in and out: ``<split>/images/*.png`` and
``<split>/labels/*.png`` (uint16) for each split found (``train``, ``test``). Used by docs/README.md,
"Magnification":

    python scripts/make_monuseg_lowres.py --monuseg ../shared/data/monuseg --factor 2 --out /tmp/m20/monuseg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from bundle.io import write_image  # noqa: E402


def downscale_split(src: Path, dst: Path, factor: int) -> int:
    """Write the ``factor``-times smaller copy of ``src/images`` and ``src/labels`` into ``dst``; returns the
    number of images."""
    images = sorted((src / "images").glob("*.png"))
    if not images:
        raise FileNotFoundError(f"{src / 'images'}: no PNG images")
    for p in images:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            small = rgb.resize((rgb.width // factor, rgb.height // factor), Image.BOX)
        write_image(dst / "images" / p.name, np.asarray(small))
        lab_path = src / "labels" / p.name
        if lab_path.is_file():
            with Image.open(lab_path) as im:
                lab = np.asarray(im)
            h, w = small.height * factor, small.width * factor
            write_image(dst / "labels" / p.name, lab[:h:factor, :w:factor].astype(np.uint16))
    return len(images)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monuseg", type=Path, required=True, help="prepared MoNuSeg folder (train/, test/)")
    ap.add_argument("--factor", type=int, default=2, help="integer downsampling factor (2: 40x -> 20x)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.factor < 1:
        ap.error("--factor must be >= 1")
    splits = [s for s in ("train", "test") if (a.monuseg / s / "images").is_dir()]
    if not splits:
        print(f"make_monuseg_lowres: error: {a.monuseg}: no train/images or test/images folder", file=sys.stderr)
        return 2
    for s in splits:
        n = downscale_split(a.monuseg / s, a.out / s, a.factor)
        print(f"{s}: {n} images -> {a.out / s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
