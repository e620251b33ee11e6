# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Data preparation, figures and benchmarks; run from the repository root as ``python -m scripts.<name>``."""
