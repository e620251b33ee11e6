# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Command-line overrides checked before a bundle config runs (issue 33, item 12).

``python -m monai.bundle run`` adds any ``--key value`` it is given to the config: a typo (``--dataset_dri X``)
becomes a new, unused key and the run goes on with the default folder, and ``--tta Flase`` is the string "Flase",
which is true. Every config of this bundle calls :func:`check_cli` first in its ``initialize`` list: an override of a
key that none of the run's config files defines, or a non-boolean value for a boolean setting, stops the run with one
line naming the option and the closest known key.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

__all__ = ["RUN_ARGS", "cli_overrides", "check_overrides", "check_cli"]

RUN_ARGS = frozenset({"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                      "args_file"})  # the arguments of monai.bundle.scripts.run itself


def cli_overrides(argv: list) -> list[tuple[str, str]]:
    """``[(key, value)]`` of the ``--key value`` / ``--key=value`` pairs of a command line (a bare flag gets "")."""
    out, i = [], 0
    while i < len(argv):
        a = str(argv[i])
        if a.startswith("--") and len(a) > 2:
            if "=" in a:
                k, v = a[2:].split("=", 1)
                out.append((k, v))
            elif i + 1 < len(argv) and not str(argv[i + 1]).startswith("--"):
                out.append((a[2:], str(argv[i + 1])))
                i += 1
            else:
                out.append((a[2:], ""))
        i += 1
    return out


def _config_keys(files) -> dict:
    """Top-level settings (``{key: value}``) of the config files, merged left to right; ``a#b`` keys of an overlay
    count for ``a``."""
    merged: dict = {}
    for f in files:
        try:
            data = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            continue  # MONAI reports an unreadable config itself
        if isinstance(data, dict):
            for k, v in data.items():
                top = str(k).replace("::", "#").split("#")[0]
                if top == k or top not in merged:
                    merged[top] = v if top == k else merged.get(top)
    return merged


def _default(merged: dict, key: str):
    node = merged
    for part in key.replace("::", "#").split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def check_overrides(overrides: list, config_files) -> None:
    """Raise a one-line ``ValueError`` for the first override whose top-level key no config file defines (with the
    closest key) or whose value is not a boolean where the config's value is one (``True`` / ``False``)."""
    from fire.parser import DefaultParseValue

    files = [config_files] if isinstance(config_files, (str, Path)) else list(config_files)
    merged = _config_keys(files)
    names = ", ".join(Path(f).name for f in files)
    for key, value in overrides:
        if key in RUN_ARGS or key.startswith("_meta_"):
            continue
        top = key.replace("::", "#").split("#")[0]
        if top not in merged:
            close = difflib.get_close_matches(top, list(merged) + sorted(RUN_ARGS), n=1, cutoff=0.6)
            raise ValueError(f"--{key}: no such setting in {names}" + (f"; did you mean --{close[0]}?" if close else
                                                                          " (see docs/README.md for the options)"))
        default = _default(merged, key)
        if isinstance(default, bool) and not isinstance(DefaultParseValue(value), bool):
            raise ValueError(f"--{key} {value!r}: not a boolean; use True or False")


def check_cli(argv: list | None = None) -> bool:
    """:func:`check_overrides` for this process's command line when it is ``python -m monai.bundle run ...``
    (nothing to check for an in-process workflow or another command). Returns whether a check was made."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or not str(argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py") or argv[1] != "run":
        return False
    from fire.parser import DefaultParseValue

    pairs = cli_overrides(argv[2:])
    cfg = next((v for k, v in pairs if k == "config_file"), None)
    if cfg is None:
        return False
    files = DefaultParseValue(cfg)
    check_overrides(pairs, [files] if isinstance(files, str) else list(files))
    return True
