# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""F-SEG: unsupervised tissue segmentation by non-negative factorisation of frozen network features.

Submodules: ``features``, ``solvers``, ``bank``, ``segmentation``, ``runner``, ``evaluate``; their public names are re-exported here."""

from .features import (IMAGENET_MEAN, IMAGENET_STD, state_dict_fingerprint, to_batch, pad_to_multiple, FeatureExtractor,
    Res2NetFeatures, ResNet50Features, TimmViTFeatures, build_extractor, window_gap_features)
from .solvers import nnls, nmf
from .bank import BANK_FORMAT, BANK_VERSION, SIGNATURE_KEYS, BankMismatchError, fit_kmeans_bank, ConceptBank, ConceptBankBuilder
from .segmentation import (Factorisation, VARIANTS, bilinear_argmax, cosine_assign, relabel, variant_b, variant_a, segment, area_fractions, palette,
    colour_overlay)
from .runner import FSegRunner
from .evaluate import read_class_mask, probe_samples, linear_probe, label_items, FSegEvaluator
