# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The Ki-67 IHC workflow: colour pseudo labels, the absolute DAB positivity rule, training labels, positive /
negative points, the runner.

Submodules: ``positivity``, ``pseudo_labels``, ``points``, ``labels``, ``data``, ``runner``; their public names are
re-exported here."""

from .positivity import (DAB_THRESHOLD, CELL_RADIUS, ihc_stain_matrix, dab_density, cell_dab, classify_by_dab,
    wilson_interval, DABHistogram)
from .pseudo_labels import (BACKGROUND, POSITIVE, NEGATIVE, IGNORE, CLASS_NAMES, CLASS_COLOURS, NoDABWarning, dab_fraction,
    he_fraction, looks_like_he, blob_points, Ki67PseudoLabeler)
from .points import Ki67Cells, POINT_MODES, POSITIVITY_RULES, check_point_mode, ki67_points, region_centroids, overlay_points
from .labels import point_label, run_name, round_checkpoints, teacher_list, label_radii, label_settings, prepare_ki67_labels
from .data import synthetic_ihc_tile, read_bcdata_item
from .runner import Ki67Runner, Ki67ImageHandler, stain_runner, index_fields, INDEX_FIELDS, KI67_POINT_FIELDS
