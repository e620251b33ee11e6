# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""What the pathologist-facing outputs cost (issue 31): the shipped nuclei network (``configs/inference.json``, no
flip TTA, ``--mpp 0.25``) on a folder of tiles, in this process: without per-nucleus measurements and report (twice,
the faster counts; the first is also the warm-up), with measurements (+ their GeoJSON measurements), and the HTML
report of the folder alone.

    python -m scripts.benchmark_outputs --images ../shared/data/monuseg/test/images --out docs/results/outputs_cost

Reports seconds per image of inference without measurements, the seconds the measurements add per image
(measurements CSV + GeoJSON measurements), the seconds of ``report.html`` for the folder and its size, and the
share of each in the inference time. Run it on an otherwise idle machine. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts import write_results

ROOT = Path(__file__).resolve().parents[1]


def runner(images: str, out: Path):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(ROOT / "configs" / "inference.json"))
    p.update({"bundle_root": str(ROOT), "dataset_dir": images, "output_dir": str(out), "tta": False, "mpp": 0.25})
    return p.get_parsed_content("runner")


def timed_run(images: str, out: Path, measurements: bool) -> tuple[float, int]:
    r = runner(images, out)
    r.write_measurements, r.write_report = measurements, False
    r.prepare()  # loads the weights: not part of the per-image cost
    t0 = time.perf_counter()
    n = r.run()["n_images"]
    return time.perf_counter() - t0, n


def polygon_seconds(label_dir: Path) -> tuple[float, float, int, int]:
    """Mean seconds per instance map of :func:`bundle.nuclei.postprocess.instance_polygons` (contours + one shapely
    simplify) and of the per-object ``skimage.measure.approximate_polygon`` it replaced (0.10.0), with their total
    vertex counts."""
    from scipy import ndimage as ndi
    from skimage.measure import approximate_polygon, find_contours

    from bundle.annotations import read_instance_label
    from bundle.nuclei.postprocess import instance_polygons

    def old(inst):
        out = {}
        for i, sl in enumerate(ndi.find_objects(inst), start=1):
            if sl is not None:
                cs = find_contours(np.pad(inst[sl] == i, 1).astype(np.float32), 0.5)
                if cs:
                    out[i] = approximate_polygon(max(cs, key=len), 0.5)
        return out

    maps = [read_instance_label(p) for p in sorted(label_dir.glob("*.png"))]
    t = []
    for f in (instance_polygons, old):
        t0 = time.perf_counter()
        polys = [f(m) for m in maps]
        t.append(((time.perf_counter() - t0) / len(maps), sum(len(v) for p in polys for v in p.values())))
    return t[0][0], t[1][0], t[0][1], t[1][1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="a folder of tiles (e.g. MoNuSeg test images, 1000x1000)")
    ap.add_argument("--out", default="docs/results/outputs_cost")
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    from bundle.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        base, n = timed_run(a.images, Path(tmp) / "plain", False)  # also the warm-up
        meas, _ = timed_run(a.images, Path(tmp) / "measured", True)
        base = min(base, timed_run(a.images, Path(tmp) / "plain2", False)[0])
        poly_new, poly_old, v_new, v_old = polygon_seconds(Path(tmp) / "plain" / "labels")
        t0 = time.perf_counter()
        html = write_report(Path(tmp) / "measured")
        rep = time.perf_counter() - t0
        size = html.stat().st_size
    per, added = base / n, (meas - base) / n
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_outputs " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "n_images": n, "inference_s_per_image": round(per, 3), "measurements_s_per_image": round(added, 3),
         "measurements_share": round(added / per, 4), "report_s_per_folder": round(rep, 3),
         "report_share_of_folder_inference": round(rep / base, 4), "report_bytes": size,
         "polygons_s_per_image": round(poly_new, 3), "polygons_old_s_per_image": round(poly_old, 3),
         "polygon_vertices": v_new, "polygon_vertices_old": v_old}
    md = "\n".join([
        f"# Cost of measurements and the HTML report ({r['date']})", "",
        f"`{r['command']}` on {r['machine']}: shipped nuclei network, no TTA, {n} images.", "",
        "| what | seconds | share of inference |", "|---|---|---|",
        f"| inference per image (no measurements) | {per:.2f} | - |",
        f"| measurements CSV + GeoJSON measurements, added per image | {added:.2f} | {100 * added / per:.1f} % |",
        f"| `report.html` per folder ({size / 1e6:.1f} MB) | {rep:.2f} | {100 * rep / base:.1f} % of the folder |", "",
        f"GeoJSON outlines per image (part of inference): {poly_new:.2f} s with one shapely simplify of all outlines "
        f"({v_new} vertices in all), {poly_old:.2f} s with the per-object `approximate_polygon` of 0.10.0 "
        f"({v_old} vertices).", ""])
    write_results(a.out, r, md)


if __name__ == "__main__":
    main()
