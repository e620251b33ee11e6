# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The label-free nuclei workflow (PSM): self-supervised activation network, PSM pseudo masks, detection and
segmentation training labels, post-processing, the folder runner and its evaluation.

Submodules: ``ssl``, ``psm``, ``scm``, ``pseudo_masks``, ``labels``, ``detection``, ``postprocess``, ``handlers``, ``runner``, ``evaluate``; their public names are re-exported here."""

from .ssl import PRETEXTS, augment, nt_xent, pretext_loss, PretextIteration
from .psm import PSMInferer, orient_by_hematoxylin, psm_for_image, PSMImageHandler
from .scm import jet, scaled_hematoxylin, scm_features, kmeans_labels, clean_mask, semantic_clustering, hematoxylin_otsu, SCM
from .pseudo_masks import score_pseudo_mask, PseudoMaskRunner
from .labels import (BACKGROUND, FOREGROUND, IGNORE, voronoi_cells, voronoi_label, instance_target, prepare_detection_labels,
    prepare_segmentation_labels)
from .detection import (NucleiPostprocess, detection_target, segmentation_targets, blend_hematoxylin, instance_points, mask_points,
    nuclei_from_probability, instance_settings, instance_mode, detection_points)
from .postprocess import (instances_from_foreground, instances_by_watershed, classical_foreground, classical_nuclei,
    instances_from_three_class, instance_polygons)
from .handlers import NucleiImageHandler
from .runner import NucleiRunner
from .evaluate import EvaluateRunner
