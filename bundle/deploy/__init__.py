# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""A MONAI Deploy application of the nuclei workflow (optional extra ``[deploy]``: monai-deploy-app-sdk >= 4.0).

    python -m bundle.deploy -i /path/to/tiles -o out [-m /path/to/bundle]

Operators (:mod:`bundle.deploy.operators`): a tile loader (a folder, one file, or arrays), the nuclei inference step
(this bundle's ``configs/inference.json`` network, predictor and post-processing on plain RGB tiles) and a writer of
the bundle's outputs (instance maps, points CSV, QuPath GeoJSON, overlays, summary). The SDK's
``MonaiBundleInferenceOperator`` is not used: it feeds the network the config's preprocessing output and returns its
raw ``pred``, while this workflow's result needs the instance step (haematoxylin blend, point-seeded watershed,
points, polygons) and a 4th, haematoxylin input channel computed from the whole tile before the sliding window.
"""
