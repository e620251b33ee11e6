# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Bad input and faults against the shipped bundle (issue 33): every case runs ``configs/inference.json`` (or
``ki67_infer.json`` / ``bundle.label_free``) as a user would, in a fresh process, on files made here from synthetic
tiles (no external data). Prints and writes a table: case, exit code, last line, outputs valid, files lost.

    python -m scripts.benchmark_bad_input --out docs/results/bad_input          # every case (~3 min on 2 cores)
    python -m scripts.benchmark_bad_input --cases zero_byte,same_stem --out ''  # a few (the CI test runs some)

"outputs valid": the case's own check of what was written (e.g. one output per readable input, no ``.part`` file,
a summary that lists what is on disk). "files lost": outputs of a previous complete run that are gone or changed
(only the kill and concurrency cases have a previous run). ``--rss`` adds peak RSS of inference on one big PNG tile
per size (``--rss_sizes 2048,4096,8192``; tiles over 2048 x 2048 px are processed in windows, never read whole;
``scripts.benchmark_big_tiles`` measures that on real tiles, against reading them whole).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _env():
    from bundle.label_free import child_env

    return child_env(OMP_NUM_THREADS=1)


def bundle_run(config, args, timeout=600):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / config),
           "--meta_file", str(ROOT / "configs" / "metadata.json"), "--logging_file",
           str(ROOT / "configs" / "logging.conf"), "--bundle_root", str(ROOT)] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def last_line(r) -> str:
    """The line a user reads last: of stderr when the run failed (the traceback's ``ERROR:`` line), else the log's
    last warning, or its last line (timestamps cut)."""
    import re

    text = r.stderr if r.returncode != 0 else r.stderr + "\n" + r.stdout
    lines = [ln for ln in text.splitlines() if ln.strip() and "it/s]" not in ln and "img/s]" not in ln
             and "warnings.warn" not in ln]
    warned = [ln for ln in lines if " - WARNING - " in ln]
    line = (warned or lines)[-1].strip() if lines else ""  # a successful run: its last warning (what it skipped)
    return re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ - ", "", line)[:160]


def tile(seed=0, size=128):
    from bundle.synthetic import synthetic_he_tile

    return synthetic_he_tile(size, seed=seed)[0]


def no_parts(out: Path) -> bool:
    return not list(Path(out).rglob("*.part*"))


def summary_rows(out: Path) -> list:
    import csv

    p = Path(out) / "summary.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------- cases
def case_files(work: Path, name: str, files: dict, expect_rows: int, expect_in_last: str = ""):
    """Write ``files`` (name -> bytes or array) to a folder, run inference; valid = exit 0, ``expect_rows`` summary
    rows, a points CSV per row, no temporaries."""
    from bundle.io import write_image

    d = work / name / "in"
    d.mkdir(parents=True, exist_ok=True)
    for fn, content in files.items():
        if isinstance(content, bytes):
            (d / fn).write_bytes(content)
        elif callable(content):
            content(d / fn)
        else:
            write_image(d / fn, content)
    out = work / name / "out"
    r = bundle_run("inference.json", ["--dataset_dir", d, "--output_dir", out])
    rows = summary_rows(out)
    pts = list((out / "points").glob("*.csv")) if (out / "points").is_dir() else []
    ok = r.returncode == 0 and len(rows) == expect_rows == len(pts) and no_parts(out)
    if expect_in_last:
        ok = ok and expect_in_last in (r.stderr + r.stdout)
    return r.returncode, last_line(r), ok, 0


def _png_bytes(rgb):
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(rgb).save(b, format="PNG")
    return b.getvalue()


def _cmyk(path):
    from PIL import Image

    Image.fromarray(tile(3)).convert("CMYK").save(path.with_suffix(".jpg"), quality=95)


def _rgba(path):
    from PIL import Image

    a = np.dstack([tile(4), np.full((128, 128), 255, np.uint8)])
    Image.fromarray(a, "RGBA").save(path)


def _16bit(path):
    import tifffile

    tifffile.imwrite(path.with_suffix(".tif"), tile(5).astype(np.uint16) * 257)


CASES = {}


def case(fn):
    CASES[fn.__name__.replace("c_", "", 1)] = fn
    return fn


@case
def c_zero_byte(w):
    return case_files(w, "zero_byte", {"ok.png": tile(), "zero.png": b""}, 1, "zero.png: file is empty")


@case
def c_truncated(w):
    return case_files(w, "truncated", {"ok.png": tile(), "cut.png": _png_bytes(tile(1))[:200]}, 1, "cut.png")


@case
def c_text_as_png(w):
    return case_files(w, "text_as_png", {"ok.png": tile(), "notes.png": b"hello, I am text"}, 1, "notes.png")


@case
def c_tiny_and_thin(w):
    return case_files(w, "tiny_and_thin", {"ok.png": tile(), "dot.png": np.zeros((1, 1, 3), np.uint8),
                                           "strip.png": np.full((20, 5000, 3), 200, np.uint8)}, 1)


@case
def c_odd_formats(w):
    return case_files(w, "odd_formats", {"cmyk.jpg": _cmyk, "rgba.png": _rgba, "deep.tif": _16bit,
                                         "naïve 核.png": tile(6)}, 4)


@case
def c_blank_tiles(w):
    code, line, ok, lost = case_files(w, "blank_tiles", {"white.png": np.full((128, 128, 3), 255, np.uint8),
                                                         "black.png": np.zeros((128, 128, 3), np.uint8),
                                                         "grey.png": np.full((128, 128, 3), 200, np.uint8)}, 3)
    rows = summary_rows(w / "blank_tiles" / "out")
    return code, line, ok and all(int(r["n_nuclei"]) == 0 for r in rows), lost


@case
def c_same_stem(w):
    code, line, ok, lost = case_files(w, "same_stem", {"dup.png": tile(7), "dup.jpg": tile(8)}, 2)
    names = sorted(p.stem for p in (w / "same_stem" / "out" / "points").glob("*.csv"))
    return code, line, ok and names == ["dup_jpg", "dup_png"], lost


@case
def c_formula_name(w):
    code, line, ok, lost = case_files(w, "formula_name", {"=HYPERLINK(1).png": tile(9)}, 1)
    text = (w / "formula_name" / "out" / "summary.csv").read_text() if ok else ""
    return code, line, ok and "'=HYPERLINK" in text, lost


@case
def c_bad_datalist(w):
    d = w / "bad_datalist"
    from bundle.io import write_image

    write_image(d / "a.png", tile())
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "dl.json").write_text(json.dumps({"testing": [{"img": "a.png"}, {"image": None}, {"image": "sub"},
                                                       {"image": "a.png"}]}))
    out = d / "out"
    r = bundle_run("inference.json", ["--dataset_dir", d / "dl.json", "--output_dir", out])
    text = r.stderr + r.stdout
    ok = r.returncode == 0 and len(summary_rows(out)) == 1 and "item 0 has no 'image'" in text and \
        "is a folder, not an image" in text
    return r.returncode, last_line(r), ok, 0


@case
def c_option_typo(w):
    r = bundle_run("inference.json", ["--dataset_dri", w, "--output_dir", w / "typo"])
    return r.returncode, last_line(r), r.returncode != 0 and "did you mean --dataset_dir" in last_line(r), 0


@case
def c_boolean_typo(w):
    r = bundle_run("inference.json", ["--dataset_dir", w, "--tta", "Flase", "--output_dir", w / "typo"])
    return r.returncode, last_line(r), r.returncode != 0 and "not a boolean" in last_line(r), 0


def _ckpt_case(w, name, write):
    from bundle.io import write_image

    d = w / name
    write_image(d / "in" / "a.png", tile())
    ck = d / "model.pt"
    write(ck)
    r = bundle_run("inference.json", ["--dataset_dir", d / "in", "--output_dir", d / "out", "--ckpt_path", ck])
    ok = r.returncode != 0 and str(ck) in last_line(r) and not (d / "out" / "summary.csv").exists()
    return r.returncode, last_line(r), ok, 0


@case
def c_ckpt_truncated(w):
    return _ckpt_case(w, "ckpt_truncated", lambda p: p.write_bytes((ROOT / "models" / "model.pt").read_bytes()[:5000]))


@case
def c_ckpt_other_network(w):
    return _ckpt_case(w, "ckpt_other_network",
                      lambda p: p.write_bytes((ROOT / "models" / "ki67" / "model.pt").read_bytes()))


@case
def c_ckpt_det_as_seg(w):
    import shutil

    def write(p):
        shutil.copy(ROOT / "models" / "model.pt", p)
        (p.parent / "settings.json").write_text(json.dumps({"mpp": 0.25, "network": "det"}))

    return _ckpt_case(w, "ckpt_det_as_seg", write)


@case
def c_pickle_resume(w):
    """A crafted resume checkpoint must not run code (it would create ``pwned``)."""
    import pickle

    d = w / "pickle_resume"
    (d / "models").mkdir(parents=True, exist_ok=True)
    marker = d / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(d / "models" / "last_checkpoint.pt", "wb") as f:
        pickle.dump({"network": Evil()}, f)
    from bundle.io import write_image

    for i in range(2):
        write_image(d / "in" / f"t{i}.png", tile(i, 128))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/ssl_train.json", "--dataset_dir",
           str(d / "in"), "--bundle_root", str(d), "--ckpt_dir", str(d / "models"), "--epochs", "1",
           "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    ok = r.returncode != 0 and not marker.exists() and "last_checkpoint.pt" in last_line(r)
    return r.returncode, last_line(r), ok, 0


@case
def c_concurrent_runs(w):
    """Two runs into one output folder: the second stops in one line; the first's outputs are complete."""
    from bundle.io import write_image

    d = w / "concurrent_runs"
    for i in range(16):  # long enough (TTA, 512 px) that the second run starts while the first holds the folder
        write_image(d / "in" / f"t{i}.png", tile(i, 512))
    out = d / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.json"),
           "--dataset_dir", str(d / "in"), "--output_dir", str(out), "--bundle_root", str(ROOT),
           "--meta_file", str(ROOT / "configs" / "metadata.json"), "--logging_file", str(ROOT / "configs/logging.conf")]
    first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (out / ".lock").exists():
            break
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    first.communicate(timeout=600)
    ok = second.returncode != 0 and "in use by another run" in last_line(second) and len(summary_rows(out)) == 16 \
        and no_parts(out)
    return second.returncode, last_line(second), ok, 16 - len(summary_rows(out))


@case
def c_kill_and_rerun(w):
    """kill -9 in the middle of a run, then rerun: no temporaries, no stale summary beside new outputs."""
    from bundle.io import write_image

    d = w / "kill_and_rerun"
    for i in range(8):
        write_image(d / "in" / f"t{i}.png", tile(i, 384))
    out = d / "out"
    args = ["--dataset_dir", d / "in", "--output_dir", out]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.json"),
           "--meta_file", str(ROOT / "configs" / "metadata.json"), "--logging_file",
           str(ROOT / "configs" / "logging.conf"), "--bundle_root", str(ROOT)] + [str(a) for a in args]
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        if (out / "points").is_dir() and len(list((out / "points").glob("*.csv"))) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    stale_summary = (out / "summary.csv").exists()
    r = bundle_run("inference.json", args)
    ok = r.returncode == 0 and no_parts(out) and len(summary_rows(out)) == 8 and not stale_summary
    return r.returncode, last_line(r), ok, 0


def peak_rss(size: int, work: Path) -> tuple[float, str]:
    """(GB of peak RSS, the tile's measured ``scale_factor``) of an inference run with the defaults on one ``size`` x
    ``size`` PNG tile (no ``--mpp``: the tile's scale is measured and it is resized to the network's)."""
    from bundle.io import write_image

    d = work / f"rss_{size}"
    rgb = np.tile(tile(11, 512), (size // 512 + 1, size // 512 + 1, 1))[:size, :size]
    write_image(d / "in" / "big.png", rgb)
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(ROOT / "configs" / "inference.json"), "--dataset_dir", str(d / "in"), "--output_dir", str(d / "out"),
           "--bundle_root", str(ROOT), "--tta", "False", "--meta_file", str(ROOT / "configs" / "metadata.json"),
           "--logging_file", str(ROOT / "configs" / "logging.conf")]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    kb = [int(ln.split()[1]) for ln in r.stdout.splitlines() if ln.startswith("RSS ")]
    rows = summary_rows(d / "out")
    return (kb[0] / 1024 ** 2 if kb else float("nan")), (rows[0].get("scale_factor", "") if rows else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all): " + ", ".join(CASES))
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default="docs/results/bad_input", help="<out>.md / .json ('' = print only)")
    ap.add_argument("--rss", action="store_true", help="also peak RSS vs tile size")
    ap.add_argument("--rss_sizes", default="2048,4096,8192")
    args = ap.parse_args(argv)
    names = [c for c in args.cases.split(",") if c] or list(CASES)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; use {', '.join(CASES)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bad_input_"))
    t0, rows = time.time(), []
    for name in names:
        t = time.time()
        code, line, ok, lost = CASES[name](work)
        rows.append({"case": name, "exit": code, "last_line": line, "outputs_valid": bool(ok), "files_lost": lost,
                     "seconds": round(time.time() - t, 1)})
        print(f"{name:20s} exit {code:3d}  valid {str(bool(ok)):5s}  lost {lost}  {line}", flush=True)
    rss = {}
    if args.rss:
        for s in (int(x) for x in args.rss_sizes.split(",")):
            gb, factor = peak_rss(s, work)
            rss[s] = {"peak_rss_gb": round(gb, 2), "scale_factor": factor}
            print(f"peak RSS, one {s}x{s} PNG tile: {rss[s]}", flush=True)
    if args.out:
        import platform

        md = ["# Bad input and faults (synthetic files, shipped weights)", "",
              f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}; "
              f"{time.time() - t0:.0f} s. Command: `python -m scripts.benchmark_bad_input "
              + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
              "| case | exit | outputs valid | files lost | last line |", "|---|---|---|---|---|"]
        md += [f"| {r['case']} | {r['exit']} | {'yes' if r['outputs_valid'] else '**no**'} | {r['files_lost']} | "
               f"`{r['last_line'].replace('|', '/')}` |" for r in rows]
        if rss:
            md += ["", "Peak RSS of `inference.json` (no TTA, no `--mpp`: the tile's scale is measured, and a tile "
                   "whose nuclei look small is enlarged to the network's pixel size) on one synthetic PNG tile "
                   "(tiles over 2048 x 2048 px are processed in 1024 px windows; 0.11.0 read them whole: 1.46 / 3.92 / "
                   "13.69 GB at 2048 / 4096 / 8192; real tiles, whole vs windows: [big_tiles.md](big_tiles.md)):", "",
                   "| tile | peak RSS (GB) | measured scale factor (1 = 40x) |", "|---|---|---|"]
            md += [f"| {s} x {s} | {v['peak_rss_gb']} | {v['scale_factor']} |" for s, v in rss.items()]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".md").write_text("\n".join(md) + "\n")
        Path(args.out + ".json").write_text(json.dumps({"cases": rows, "peak_rss_gb": rss}, indent=1))
    bad = [r["case"] for r in rows if not r["outputs_valid"]]
    if bad:
        print("cases not handled as they should be: " + ", ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
