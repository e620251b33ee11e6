# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Data preparation, figures and benchmarks; run from the repository root as ``python -m scripts.<name>``."""

import json
from pathlib import Path


def write_results(out: str, result: dict, md: str) -> None:
    """A benchmark's ``<out>.json`` (``result``) and ``<out>.md`` (``md``), and ``md`` printed."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(result, indent=1))
    Path(out + ".md").write_text(md)
    print(md)
