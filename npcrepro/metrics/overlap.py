"""Overlap measures of binary masks (confusion counts, Dice, Jaccard, precision, recall, ...) and volume."""
from __future__ import annotations

from typing import Any

import numpy as np

from npcrepro.metrics.inputs import as_mask, as_spacing, mask_pair, safe_ratio

__all__ = ["confusion", "dice", "jaccard", "precision", "recall", "f1", "percent_match", "corresponding_ratio",
           "volume"]


def confusion(pred: Any, ref: Any) -> tuple[int, int, int, int]:
    """Voxel counts of the confusion matrix of two masks.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
        Predicted and reference masks, same shape.

    Returns
    -------
    tp, fp, fn, tn : int
        True positives (pred and ref), false positives (pred, not ref), false negatives (ref,
        not pred) and true negatives, in voxels.

    Raises
    ------
    DataError
        Different shapes (the message names both), non-binary values, or not 2D/3D.
    """
    p, r = mask_pair(pred, ref)
    n_p = int(np.count_nonzero(p))
    n_r = int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r)) if n_p and n_r else 0
    fp = n_p - tp
    fn = n_r - tp
    tn = p.size - tp - fp - fn
    return tp, fp, fn, tn


def _overlap(tp: int, fp: int, fn: int) -> dict[str, float]:
    both_empty = tp + fp + fn == 0
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "jaccard": safe_ratio(tp, tp + fp + fn, both_empty),
        "precision": safe_ratio(tp, tp + fp, both_empty),
        "recall": safe_ratio(tp, tp + fn, both_empty),
        "f1": safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "percent_match": safe_ratio(tp, tp + fn, both_empty),
        "corresponding_ratio": safe_ratio(tp - 0.5 * fp, tp + fn, both_empty),
    }


def dice(pred: Any, ref: Any) -> float:
    r"""Dice similarity coefficient, :math:`2TP / (2TP + FP + FN)` (all five papers).

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
        Predicted and reference masks, same shape.

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["dice"]


def jaccard(pred: Any, ref: Any) -> float:
    r"""Jaccard index (li2018 JSC, xue2020 JI, luo2020 JSC), :math:`TP / (TP + FP + FN)`.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["jaccard"]


def precision(pred: Any, ref: Any) -> float:
    r"""Precision (positive predictive value), :math:`TP / (TP + FP)`.

    li2018 prints this formula as "recall" (its Eq. 1); its "recall" column is this quantity.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0 (an empty prediction of a
        present structure scores 0, not 0/0).
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["precision"]


def recall(pred: Any, ref: Any) -> float:
    r"""Recall = sensitivity, :math:`TP / (TP + FN)`.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0 (a prediction on an empty
        reference scores 0, not 0/0).
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["recall"]


def f1(pred: Any, ref: Any) -> float:
    r"""F1 score, the harmonic mean of precision and recall, :math:`2TP / (2TP + FP + FN)`.

    For hard masks this is identical to :func:`dice` (luo2020 and guo2021 report both).

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["f1"]


def percent_match(pred: Any, ref: Any) -> float:
    r"""li2018's percent match, :math:`PM = TP / (TP + FN)` (numerically the recall).

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["percent_match"]


def corresponding_ratio(pred: Any, ref: Any) -> float:
    r"""li2018's corresponding ratio, :math:`CR = (TP - 0.5\,FP) / (TP + FN)`.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)

    Returns
    -------
    float
        At most 1; negative when false positives outweigh twice the true positives. Both masks
        empty -> 1.0; exactly one empty -> 0.0 (for an empty reference the formula is -inf;
        0.0 is this project's choice).
    """
    tp, fp, fn, _ = confusion(pred, ref)
    return _overlap(tp, fp, fn)["corresponding_ratio"]


def volume(mask: Any, spacing: Any) -> float:
    """Volume of a 3D mask in cm3 (area in cm2 for a 2D mask).

    Parameters
    ----------
    mask : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
    spacing : sequence of float, (z, y, x) or (y, x), mm
        Voxel size in the array's axis order.

    Returns
    -------
    float
        ``count * prod(spacing)`` converted from mm3 to cm3 (/1000), or from mm2 to cm2 (/100)
        for 2D masks. An empty mask has volume 0.
    """
    m = as_mask(mask, "mask")
    sp = as_spacing(spacing, m.ndim)
    scale = 1000.0 if m.ndim == 3 else 100.0
    return float(np.count_nonzero(m)) * float(np.prod(sp)) / scale
