"""Segmentation metrics of the five papers: overlap, surface distances and probability measures, and
several raters' agreement and consensus (pairwise Dice, majority vote, STAPLE).

Conventions
-----------
* Masks are boolean (or 0/1) arrays of shape ``(z, y, x)`` or ``(y, x)``; any other value is a
  :class:`~npcrepro.errors.DataError`.
* ``spacing`` is the voxel size in mm in the array's axis order, ``(z, y, x)`` or ``(y, x)``; a
  scalar means isotropic, ``None`` means 1 mm.
* No function returns NaN. Cases where a ratio is 0/0 follow one rule, stated in every docstring:
  **both masks empty -> perfect score** (overlap 1, distances 0, NSD 1); **exactly one mask empty ->
  worst score** (overlap 0, NSD 0, distances = ``worst_distance``, by default the image diagonal in
  mm). :func:`evaluate_case` also returns the flags ``pred_empty`` and ``ref_empty`` so that a table
  mean can be checked for missed structures instead of silently dropping them (the NaN-and-nanmean
  trap of MONAI issue 9095).

Surfaces
--------
The surface of a mask is its set of boundary voxels: the mask minus its binary erosion with the
face-connectivity structuring element (6-neighbourhood in 3D, 4 in 2D), voxels beyond the array
edge counting as background. This is MONAI's ``get_mask_edges`` (default ``spacing=None``) and
medpy's ``connectivity=1`` border. Distances are exact Euclidean distances in mm between voxel
centres, from each boundary voxel of one mask to the nearest boundary voxel of the other (one
Euclidean distance transform per direction, computed on the joint bounding box of the two masks).
"""
from __future__ import annotations

from npcrepro.metrics.cases import evaluate_case, evaluate_labels
from npcrepro.metrics.consensus import Staple, majority_vote, pairwise_dice, staple
from npcrepro.metrics.overlap import (confusion, corresponding_ratio, dice, f1, jaccard, percent_match, precision,
                                      recall, volume)
from npcrepro.metrics.probability import (SOFT_DICE_NUMERATORS, auc, average_precision, soft_dice,
                                          soft_dice_from_sums, soft_dice_sums)
from npcrepro.metrics.surface import assd, hausdorff, surface_dice, surface_distances

__all__ = [
    "confusion",
    "dice",
    "jaccard",
    "precision",
    "recall",
    "f1",
    "percent_match",
    "corresponding_ratio",
    "volume",
    "surface_distances",
    "hausdorff",
    "assd",
    "surface_dice",
    "auc",
    "average_precision",
    "soft_dice",
    "soft_dice_sums",
    "soft_dice_from_sums",
    "evaluate_case",
    "evaluate_labels",
    "pairwise_dice",
    "majority_vote",
    "staple",
    "Staple",
    "SOFT_DICE_NUMERATORS",
]
