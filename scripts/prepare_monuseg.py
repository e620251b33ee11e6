# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Build a MONAI datalist (and, where needed, instance-label PNGs) from a MoNuSeg folder.

Accepted input layouts:

(a) original MoNuSeg release: ``*.tif`` images with Aperio ``*.xml`` annotations side by
    side (e.g. ``MoNuSegTestData/``), or in ``Tissue Images/`` and ``Annotations/``
    subfolders (e.g. ``MoNuSeg 2018 Training Data/``);
(b) prepared layout: ``images/*.png`` with ``labels/*.png`` uint16 instance maps and an
    optional ``xml/`` folder of Aperio annotations.

For every image the label is, in order of preference: an existing ``labels/<stem>.png``
(layout b, referenced in place), or ``<output>/labels/<stem>.png`` rasterised from the
matching XML; images with neither are listed without a ``label`` key. Images are
referenced by absolute path and never copied.

Output: ``<output>/datalist.json`` = ``{"<split_key>": [{"image": ..., "label": ...}, ...]}``.

Example::

    python -m scripts.prepare_monuseg --input /data/monuseg/test --output /tmp/monuseg_prep
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bundle.annotations import read_aperio_xml, write_instance_label
from bundle.io import write_json

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")


class PrepareError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _files(folder: Path, suffixes) -> list:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def _subdir(folder: Path, name: str):
    """Case-insensitive lookup of a direct subfolder; None if absent."""
    for p in folder.iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def discover(input_dir: Path) -> dict:
    """Find images, provided label maps and XML annotations in either layout.

    Returns a dict with ``layout`` ("png" or "original"), ``images`` (list of Paths),
    ``labels`` ({stem: Path}) and ``xmls`` ({stem: Path}).
    """
    images_dir = _subdir(input_dir, "images")
    if images_dir is not None:  # layout (b)
        labels_dir = _subdir(input_dir, "labels")
        xml_dir = _subdir(input_dir, "xml") or _subdir(input_dir, "annotations")
        return {
            "layout": "png",
            "images": _files(images_dir, IMAGE_SUFFIXES),
            "labels": {p.stem: p for p in _files(labels_dir, (".png", ".tif", ".tiff"))} if labels_dir else {},
            "xmls": {p.stem: p for p in _files(xml_dir, (".xml",))} if xml_dir else {},
        }
    tissue_dir = _subdir(input_dir, "tissue images")
    if tissue_dir is not None:  # layout (a), training-data style
        ann_dir = _subdir(input_dir, "annotations") or input_dir
        return {
            "layout": "original",
            "images": _files(tissue_dir, TIFF_SUFFIXES),
            "labels": {},
            "xmls": {p.stem: p for p in _files(ann_dir, (".xml",))},
        }
    # layout (a), test-data style: tif + xml side by side
    return {
        "layout": "original",
        "images": _files(input_dir, TIFF_SUFFIXES),
        "labels": {},
        "xmls": {p.stem: p for p in _files(input_dir, (".xml",))},
    }


def image_hw(path: Path) -> tuple:
    """(H, W) of an image without decoding its pixels."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except Exception as e:  # noqa: BLE001
        raise PrepareError(f"cannot read image size of {str(path)!r}: {e}") from None


def prepare(input_dir, output_dir, split_key: str = "training") -> dict:
    """Write ``<output_dir>/datalist.json`` (and rasterised labels); return counts."""
    input_dir = Path(os.path.abspath(input_dir))
    output_dir = Path(os.path.abspath(output_dir))
    if not input_dir.is_dir():
        raise PrepareError(f"input folder {str(input_dir)!r} does not exist or is not a folder")
    found = discover(input_dir)
    if not found["images"]:
        raise PrepareError(
            f"no images found in folder {str(input_dir)!r} (expected images/*.png, *.tif, or 'Tissue Images/*.tif')"
        )

    entries, counts = [], {"images": 0, "labels_existing": 0, "labels_rasterised": 0, "unlabelled": 0}
    for img in found["images"]:
        stem = img.stem
        entry = {"image": os.path.abspath(img)}
        if stem in found["labels"]:
            entry["label"] = os.path.abspath(found["labels"][stem])
            counts["labels_existing"] += 1
        elif stem in found["xmls"]:
            inst = read_aperio_xml(found["xmls"][stem], image_hw(img))
            out = output_dir / "labels" / f"{stem}.png"
            write_instance_label(out, inst)
            entry["label"] = os.path.abspath(out)
            counts["labels_rasterised"] += 1
        else:
            counts["unlabelled"] += 1
        counts["images"] += 1
        entries.append(entry)

    image_stems = {p.stem for p in found["images"]}
    counts["orphan_xml"] = len(set(found["xmls"]) - image_stems)
    counts["orphan_labels"] = len(set(found["labels"]) - image_stems)
    counts["layout"] = found["layout"]
    write_json(output_dir / "datalist.json", {split_key: entries})
    counts["datalist"] = str(output_dir / "datalist.json")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Create datalist.json for a MoNuSeg folder (original tif+xml layout, or "
            "images/ + labels/ [+ xml/] png layout), rasterising Aperio XML to uint16 "
            "instance-label PNGs where no label map is provided. Images are referenced by "
            "absolute path, never copied."
        )
    )
    parser.add_argument("--input", required=True, help="MoNuSeg folder (either layout)")
    parser.add_argument("--output", required=True, help="output folder for datalist.json and labels/")
    parser.add_argument("--split_key", default="training", help="top-level datalist key (default: training)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = prepare(args.input, args.output, args.split_key)
    except (PrepareError, ValueError) as e:
        print(f"prepare_monuseg: error: {e}", file=sys.stderr)
        return 2
    print(
        f"prepare_monuseg: {counts['images']} images ({counts['layout']} layout): "
        f"{counts['labels_existing']} existing labels, {counts['labels_rasterised']} rasterised from XML, "
        f"{counts['unlabelled']} without label; ignored {counts['orphan_xml']} XML / "
        f"{counts['orphan_labels']} label files without image; wrote {counts['datalist']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
