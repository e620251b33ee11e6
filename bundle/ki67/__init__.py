# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The Ki-67 IHC workflow: colour pseudo labels, training labels, positive / negative points, the runner.

Submodules: ``pseudo_labels``, ``points``, ``labels``, ``data``, ``runner``; their public names are re-exported here."""

from .pseudo_labels import (BACKGROUND, POSITIVE, NEGATIVE, IGNORE, CLASS_NAMES, CLASS_COLOURS, NoDABWarning, dab_fraction, blob_points,
    Ki67PseudoLabeler)
from .points import Ki67Cells, POINT_MODES, check_point_mode, ki67_points, region_centroids, overlay_points
from .labels import point_label, run_name, round_checkpoints, teacher_list, label_radii, label_settings, prepare_ki67_labels
from .data import synthetic_ihc_tile, read_bcdata_item
from .runner import Ki67Runner, Ki67ImageHandler, stain_runner
