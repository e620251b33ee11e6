# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Ki-67 on tiles of mixed magnification (issue 29): the BCData sample with every other image shrunk to half size
(a 20x copy, box filter; its points halved), run with ``ki67_infer.json`` (shipped network, no TTA) three ways:
no option (each tile's scale measured, the default), ``--mpp 0.25`` for all (every tile taken as 40x: the default
before 0.12.0) and the oracle (the 40x tiles with ``--mpp 0.25``, the 20x ones with ``--mpp 0.5``).

    python -m scripts.benchmark_ki67_scale --data ../shared/data/bcdata_sample --out docs/results/ki67_scale

Points are scored in 40x pixels (a 20x tile's points doubled), at 10 px, with :func:`scripts.benchmark_ki67.score`;
also the Ki-67 index error per image and the measured scale factor of each tile against its true one. Labels are
used only to score. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from scripts import write_results

ROOT = Path(__file__).resolve().parents[1]


def make_folders(data: Path, work: Path) -> dict:
    """``work/{mixed,one,half}/images``: the images (even positions at 1x, odd at 0.5x); returns stem -> factor."""
    from PIL import Image

    from bundle.io import read_rgb, write_image
    from scripts.benchmark_ki67 import tile_stems

    factors = {}
    for i, s in enumerate(tile_stems(data / "images")):
        f = 1.0 if i % 2 == 0 else 0.5
        rgb = read_rgb(data / "images" / f"{s}.png")
        if f != 1.0:
            h, w = rgb.shape[:2]
            rgb = np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.BOX))
        write_image(work / "mixed" / "images" / f"{s}.png", rgb)
        write_image(work / ("one" if f == 1.0 else "half") / "images" / f"{s}.png", rgb)
        factors[s] = f
    return factors


def run(images: Path, out: Path, mpp: float | None) -> dict:
    """ki67_infer.json on ``images`` (``mpp`` None = no option); -> stem -> summary row."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(ROOT / "configs" / "ki67_infer.json"))
    p.update({"bundle_root": str(ROOT), "dataset_dir": str(images), "output_dir": str(out), "tta": False})
    if mpp is not None:
        p["mpp"] = float(mpp)
    p.get_parsed_content("runner").run()
    with open(out / "summary.csv", newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def points(out: Path, stem: str, factor: float):
    """(points (N, 2) (row, col) in 40x px, classes) of one tile's points CSV."""
    from bundle.annotations import read_point_table
    from bundle.ki67.pseudo_labels import NEGATIVE, POSITIVE

    t = read_point_table(out / "points" / f"{stem}.csv")
    cls = np.where(t["class"] == "Positive", POSITIVE, NEGATIVE).astype(np.uint8)
    return np.asarray(t["points"], float).reshape(-1, 2) / factor, cls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="BCData-style folder (images/, annotations/{positive,negative}/)")
    ap.add_argument("--out", default="docs/results/ki67_scale")
    ap.add_argument("--machine", default="2-core CPU")
    a = ap.parse_args(argv)
    from bundle.ki67.data import read_bcdata_item
    from scripts.benchmark_ki67 import score

    data = Path(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        factors = make_folders(data, work)
        stems = list(factors)
        gts = [read_bcdata_item(data, s) for s in stems]
        auto = run(work / "mixed" / "images", work / "auto", None)
        run(work / "mixed" / "images", work / "as40x", 0.25)
        run(work / "one" / "images", work / "oracle", 0.25)
        run(work / "half" / "images", work / "oracle", 0.5)
        modes = {"no option (scale measured per tile; default)": "auto", "--mpp 0.25 for all (0.11.0 default)": "as40x",
                 "oracle: each tile's true --mpp": "oracle"}
        res = {}
        for name, d in modes.items():
            preds = [points(work / d, s, factors[s]) for s in stems]
            sc = score(preds, gts)
            res[name] = {"overall_f1_r10": sc["r10"]["overall"]["f1"], "positive_f1_r10": sc["r10"]["positive"]["f1"],
                         "negative_f1_r10": sc["r10"]["negative"]["f1"], "ki67_index_mae": sc["ki67_index_mae"]}
            for sub, f in (("1x", 1.0), ("0.5x", 0.5)):
                idx = [i for i, s in enumerate(stems) if factors[s] == f]
                res[name][f"overall_f1_r10_{sub}"] = score([preds[i] for i in idx], [gts[i] for i in idx])["r10"][
                    "overall"]["f1"]
            print(name, res[name], flush=True)
        est = {s: float(auto[s]["scale_factor"]) for s in stems if auto[s].get("scale_factor")}
        err = {s: abs(v - factors[s]) / factors[s] for s, v in est.items()}
    r = {"date": datetime.date.today().isoformat(), "machine": f"{a.machine} ({platform.machine()})",
         "command": "python -m scripts.benchmark_ki67_scale " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "n_images": len(stems), "modes": res, "scale_factor": {"measured": est, "true": factors},
         "scale_error_median": round(float(np.median(list(err.values()))), 3) if err else None,
         "scale_error_worst": round(float(max(err.values())), 3) if err else None}
    md = [f"# Ki-67 on a folder of mixed magnification ({r['date']})", "",
          f"`{r['command']}` on {r['machine']}: the {len(stems)} BCData sample images, every other one shrunk to 0.5x "
          "(20x); shipped Ki-67 network, `ki67_infer.json`, no TTA. F1 of positive + negative points at 10 px in 40x "
          "pixels (all images, then the 1x and 0.5x halves), Ki-67 index error per image.", "",
          "| run | overall F1 | 1x tiles | 0.5x tiles | positive F1 | negative F1 | index error |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {k} | {v['overall_f1_r10']:.3f} | {v['overall_f1_r10_1x']:.3f} | {v['overall_f1_r10_0.5x']:.3f} | "
           f"{v['positive_f1_r10']:.3f} | {v['negative_f1_r10']:.3f} | {v['ki67_index_mae']:.3f} |"
           for k, v in res.items()]
    md += ["", f"Measured scale factor against the true one (1 or 0.5): median relative error "
           f"{r['scale_error_median']}, worst {r['scale_error_worst']} ({len(est)} of {len(stems)} tiles measured; "
           "a tile without a measure keeps the folder's).", ""]
    write_results(a.out, r, "\n".join(md))


if __name__ == "__main__":
    main()
