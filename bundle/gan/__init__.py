# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The cell-level InfoGAN workflow: cell crops, InfoGAN training, cell and image classification.

Submodules: ``cells``, ``train``, ``classify``; their public names are re-exported here."""

from .cells import (multiscale_log, find_nuclei, NucleusFinder, crop_cells, crop_at_points, montage,
    CellExtractor, load_cells)
from .train import (cells_to_tensor, CellDataset, random_flips, gradient_penalty, InfoGANIteration, generated_grid,
    InfoGANImageHandler, SaveModule)
from .classify import (CATEGORY_COLOURS, assign_categories, trunk_features, category_proportions, cluster_accuracy, classify_images,
    plot_proportions, read_image_labels, ClassifyRunner)
