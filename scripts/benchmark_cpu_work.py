# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The CPU work that a GPU does not shrink (issue 30), each before / after the 0.14.1 change, same outputs checked:

- the training nucleus size of a folder (``bundle.scale.folder_nucleus_diameter``): 1 thread, the default threads,
  and a second call answered from its cache;
- one tile's nucleus-size estimate (LoG over 16 sigmas): 1 thread vs the default;
- PNG encoding of a tile's overlay at Pillow's default zlib level 6 vs ``bundle.io.PNG_LEVEL``;
- GeoJSON text: ``json.dump`` vs ``json.dumps`` (C encoder) of one tile's nuclei;
- with ``--run`` (a label-free run folder with ``models/det/model.pt`` and ``eval/pseudo_masks/masks``): the
  segmentation labels of its tiles with scikit-image's ``peak_local_max`` vs ``bundle.points.spaced_maxima``
  (identical files required).

    python -m scripts.benchmark_cpu_work --images <run>/eval/working_scale/images --run <run> \
        --out docs/results/cpu_work

(``<run>``: ``python -m bundle.label_free --dataset_dir ../shared/data/monuseg/train/images --mpp auto``'s folder,
whose tiles ``--images`` are; without ``--run`` any folder of tiles.)

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def seg_labels(images: str, run: Path, out: Path, peaks: str) -> float:
    import bundle.points as points
    from bundle.networks import ResUNet34
    from bundle.nuclei.labels import prepare_segmentation_labels

    saved = points.spaced_maxima
    if peaks == "skimage":
        from skimage.feature import peak_local_max

        points.spaced_maxima = lambda img, md, th: peak_local_max(img, min_distance=md, threshold_abs=th,
                                                                  exclude_border=False)
    try:
        net = ResUNet34(in_channels=3, out_channels=2, base_channels=16)
        _, s = _time(lambda: prepare_segmentation_labels(images, run / "eval" / "pseudo_masks" / "masks", out, net,
                                                         run / "models" / "det" / "model.pt", keep_foreground=True))
    finally:
        points.spaced_maxima = saved
    return s


def main(argv=None):
    from PIL import Image

    from bundle.io import PNG_LEVEL, list_images, overlay_mask, read_rgb
    from bundle.measure import instance_polygons
    from bundle.nuclei.postprocess import classical_nuclei
    from bundle.scale import estimate_nucleus_diameter, folder_nucleus_diameter
    from scripts import write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="a folder of tiles (MoNuSeg train images)")
    ap.add_argument("--run", type=Path, default=None, help="a label-free run (det network + pseudo masks)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    t0 = time.time()
    res = {}
    work = Path(tempfile.mkdtemp(prefix="cpu_work_"))
    try:
        one, t1 = _time(lambda: folder_nucleus_diameter(a.images, workers=1))
        many, tn = _time(lambda: folder_nucleus_diameter(a.images))
        cache = work / "nucleus_diameter.json"
        folder_nucleus_diameter(a.images, cache=str(cache))
        hit, th = _time(lambda: folder_nucleus_diameter(a.images, cache=str(cache)))
        assert one == many == hit, (one, many, hit)
        res["folder_diameter_s"] = {"1 thread": t1, "default threads": tn, "from the cache": th, "diameter": one}

        tiles = [read_rgb(p) for p in list_images(a.images)[:6]]
        d1, s1 = _time(lambda: [estimate_nucleus_diameter(t, workers=1) for t in tiles])
        dn, sn = _time(lambda: [estimate_nucleus_diameter(t) for t in tiles])
        assert d1 == dn
        res["tile_diameter_s_per_tile"] = {"1 thread": round(s1 / len(tiles), 3),
                                           "default threads": round(sn / len(tiles), 3)}

        inst = classical_nuclei(tiles[0])
        ov = overlay_mask(tiles[0], inst)
        png = {}
        for level in (6, PNG_LEVEL):
            buf = io.BytesIO()
            _, s = _time(lambda: Image.fromarray(ov).save(buf, format="PNG", compress_level=level))
            png[f"level {level}"] = {"s": s, "kb": buf.tell() // 1024}
        res["overlay_png"] = png

        polys = instance_polygons(inst)
        gj = {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [np.asarray(p).tolist()]},
             "properties": {"id": int(k)}} for k, p in polys.items()]}
        _, sd = _time(lambda: json.dump(gj, io.StringIO()))
        _, ss = _time(lambda: json.dumps(gj))
        res["geojson_s"] = {"json.dump": sd, "json.dumps": ss, "features": len(polys)}

        if a.run is not None:
            before = seg_labels(a.images, a.run, work / "skimage", "skimage")
            after = seg_labels(a.images, a.run, work / "ours", "ours")
            cmp = filecmp.dircmp(work / "skimage", work / "ours")
            same = not (cmp.diff_files or cmp.left_only or cmp.right_only or any(
                not filecmp.cmp(work / "skimage" / "points" / f, work / "ours" / "points" / f, shallow=False)
                for f in os.listdir(work / "skimage" / "points")))
            res["seg_labels_s"] = {"peak_local_max": before, "spaced_maxima": after, "identical_files": same}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "cpus": os.cpu_count(), "command": "python -m scripts.benchmark_cpu_work " + " ".join(
             argv if argv is not None else sys.argv[1:]), **res, "seconds": round(time.time() - t0, 1)}
    f, t, o, g = res["folder_diameter_s"], res["tile_diameter_s_per_tile"], res["overlay_png"], res["geojson_s"]
    L = [f"# CPU work a GPU does not shrink ({r['date']})", "", f"`{r['command']}` on {r['machine']}, "
         f"{r['cpus']} CPUs; {r['seconds'] / 60:.1f} min. Each pair gives the same output (checked).", "",
         "| work | before | after |", "|---|---|---|",
         f"| training nucleus size of the folder (diameter {f['diameter']}) | {f['1 thread']} s (1 thread) | "
         f"{f['default threads']} s (threads); {f['from the cache']} s from the cache |",
         f"| one tile's nucleus-size estimate | {t['1 thread']} s | {t['default threads']} s |",
         f"| overlay PNG of one tile | {o['level 6']['s']} s, {o['level 6']['kb']} KB (zlib 6) | "
         f"{o[f'level {PNG_LEVEL}']['s']} s, {o[f'level {PNG_LEVEL}']['kb']} KB (zlib {PNG_LEVEL}) |",
         f"| GeoJSON text of {g['features']} nuclei | {g['json.dump']} s (`json.dump`) | {g['json.dumps']} s "
         "(`json.dumps`) |"]
    if "seg_labels_s" in res:
        sl = res["seg_labels_s"]
        L.append(f"| segmentation labels of the folder | {sl['peak_local_max']} s (`peak_local_max`) | "
                 f"{sl['spaced_maxima']} s (`spaced_maxima`; identical files: {sl['identical_files']}) |")
    write_results(a.out, r, "\n".join(L) + "\n")


if __name__ == "__main__":
    main()
