# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""A lower-magnification (20x-like) copy of a prepared MoNuSeg folder or a BCData folder.

To measure the pipelines on 20x-like tiles: MoNuSeg and BCData are scanned at 40x (about 0.25 um/px), and
``--factor 2`` writes a 20x-like copy (0.5 um/px): every image box-averaged over 2 x 2 pixels (``PIL.Image.BOX``).
- MoNuSeg (``--monuseg``): every instance label map subsampled (``label[::2, ::2]``, so instances keep their ids and
  never blend). Layout in and out: ``<split>/images/*.png`` and ``<split>/labels/*.png`` (uint16) for each split
  found (``train``, ``test``).
- BCData (``--bcdata``): ``images/*.png`` and the point annotations ``annotations/{positive,negative}/*.h5``
  (``coordinates``, (x, y)) divided by the factor (the reader rounds them to whole pixels of the small image).

Used by docs/README.md, "Magnification", and docs/ki67.md:

    python -m scripts.make_lowres --monuseg ../shared/data/monuseg --factor 2 --out /tmp/m20/monuseg
    python -m scripts.make_lowres --bcdata ../shared/data/bcdata_sample --factor 2 --out /tmp/b20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bundle.io import write_image


def _downscale_images(src: Path, dst: Path, factor: int, restore: bool = False) -> list:
    """Box-average every ``src/images/*.png`` by ``factor`` into ``dst/images`` (``restore``: then resized back up
    by ``factor``, bilinear); returns [(path, written PIL image)]."""
    images = sorted((src / "images").glob("*.png"))
    if not images:
        raise FileNotFoundError(f"{src / 'images'}: no PNG images")
    out = []
    for p in images:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            small = rgb.resize((rgb.width // factor, rgb.height // factor), Image.BOX)
            if restore:
                small = small.resize((small.width * factor, small.height * factor), Image.BILINEAR)
        write_image(dst / "images" / p.name, np.asarray(small))
        out.append((p, small))
    return out


def downscale_bcdata(src: Path, dst: Path, factor: int, restore: bool = False) -> int:
    """Write the ``factor``-times smaller copy of a BCData folder (images and point annotations) into ``dst``
    (``restore``: images resized back to the source's pixel grid, points as in the source); returns the number of
    images."""
    import h5py

    from bundle.annotations import read_bcdata_points
    from bundle.io import atomic_path

    images = _downscale_images(src, dst, factor, restore)
    for p, _ in images:
        for cls in ("positive", "negative"):
            ann = src / "annotations" / cls / f"{p.stem}.h5"
            if not ann.is_file():
                continue
            pts = read_bcdata_points(ann).astype(np.float64) / (1 if restore else factor)
            out = dst / "annotations" / cls / ann.name
            with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("coordinates", data=pts.reshape(-1, 2))
    return len(images)


def downscale_split(src: Path, dst: Path, factor: int, restore: bool = False) -> int:
    """Write the ``factor``-times smaller copy of ``src/images`` and ``src/labels`` into ``dst`` (``restore``: see
    :func:`downscale_bcdata`); returns the number of images."""
    images = _downscale_images(src, dst, factor, restore)
    step = 1 if restore else factor
    for p, small in images:
        lab_path = src / "labels" / p.name
        if lab_path.is_file():
            with Image.open(lab_path) as im:
                lab = np.asarray(im)
            h, w = small.height * step, small.width * step  # the source pixels the written image covers
            write_image(dst / "labels" / p.name, lab[:h:step, :w:step].astype(np.uint16))
    return len(images)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--monuseg", type=Path, help="prepared MoNuSeg folder (train/, test/)")
    src.add_argument("--bcdata", type=Path, help="BCData folder (images/, annotations/{positive,negative}/)")
    ap.add_argument("--factor", type=int, default=2, help="integer downsampling factor (2: 40x -> 20x)")
    ap.add_argument("--restore", action="store_true",
                    help="resize the images back up by the factor (bilinear): 20x detail on the 40x pixel grid, "
                         "what a 20x tile resized x2 for a 40x network looks like; labels as in the source")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.factor < 1:
        ap.error("--factor must be >= 1")
    if a.bcdata:
        if not (a.bcdata / "images").is_dir():
            print(f"make_lowres: error: {a.bcdata}: no images folder", file=sys.stderr)
            return 2
        n = downscale_bcdata(a.bcdata, a.out, a.factor, a.restore)
        print(f"bcdata: {n} images -> {a.out}")
        return 0
    splits = [s for s in ("train", "test") if (a.monuseg / s / "images").is_dir()]
    if not splits:
        print(f"make_lowres: error: {a.monuseg}: no train/images or test/images folder", file=sys.stderr)
        return 2
    for s in splits:
        n = downscale_split(a.monuseg / s, a.out / s, a.factor, a.restore)
        print(f"{s}: {n} images -> {a.out / s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
