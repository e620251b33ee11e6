# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""``python -m bundle.deploy -i IN -o OUT [-m BUNDLE]``: run the MONAI Deploy application locally."""

from bundle.deploy.app import main

main()
