# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Stage times and pseudo-mask scores of finished ``python -m bundle.label_free`` runs, as one table.

Reads, for every ``--runs NAME=BUNDLE_ROOT``: ``stages/<stage>.json`` (seconds and command, written by the
pipeline when a stage finishes) and ``eval/pseudo_masks/summary.json`` (pseudo-mask scores, present when the PSM
stage was given a datalist whose items carry ``label`` instance maps; labels only score).

    python -m scripts.pipeline_report --runs gpu_default=runs/gpu/default --note "1x H100" \
        --out docs/results/pipeline_gpu_h100

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bundle.io import write_json
from bundle.label_free import STAGES

SCORES = ("pixel_f1", "object_dice", "aji", "pq", "foreground_fraction", "psm_s", "scm_s")


def read_run(root: Path) -> dict:
    """``{"stages": {stage: {seconds, command, finished, machine}}, "pseudo_masks": {score: mean} | None}``."""
    stages = {}
    for st in STAGES:
        p = root / "stages" / f"{st}.json"
        if p.is_file():
            d = json.loads(p.read_text())
            stages[st] = {k: d.get(k) for k in ("seconds", "command", "finished", "machine")}
    summary = root / "eval" / "pseudo_masks" / "summary.json"
    pm = None
    if summary.is_file():
        s = json.loads(summary.read_text())
        pm = {k: s[k] for k in SCORES if k in s} | {"n_images": s.get("n_images")}
    return {"stages": stages, "pseudo_masks": pm}


def render_md(out: dict) -> str:
    lines = ["# Label-free pipeline runs: stage times and pseudo-mask scores", "",
             f"Command: `{out['command']}`. Machine: {out['note'] or 'not stated'}.", "",
             "| run | " + " | ".join(f"{s} s" for s in STAGES) + " | total min | pseudo-mask train pixel F1 | "
             "object Dice | AJI | PQ |", "|---|" + "---|" * (len(STAGES) + 5)]
    for name, r in out["runs"].items():
        secs = [r["stages"].get(s, {}).get("seconds") for s in STAGES]
        total = sum(v for v in secs if v) / 60
        pm = r["pseudo_masks"] or {}
        cells = [f"{v:.0f}" if v else "-" for v in secs]
        sc = [f"{pm[k]:.3f}" if k in pm else "-" for k in ("pixel_f1", "object_dice", "aji", "pq")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total:.1f} | " + " | ".join(sc) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="NAME=BUNDLE_ROOT pairs")
    ap.add_argument("--note", default="", help="where the runs ran (machine, what shared it)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    runs = {}
    for spec in a.runs:
        name, root = spec.split("=", 1)
        if not Path(root).is_dir():
            raise SystemExit(f"{root}: bundle root not found")
        runs[name] = read_run(Path(root))
    command = ["python", "-m", "scripts.pipeline_report", *sys.argv[1:]]
    out = {"command": " ".join(shlex.quote(x) for x in command), "note": a.note, "runs": runs}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), out)
    a.out.with_suffix(".md").write_text(render_md(out))
    print(render_md(out))


if __name__ == "__main__":
    main()
