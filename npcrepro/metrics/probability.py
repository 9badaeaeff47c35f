"""Measures of a probability map against a binary reference: ROC AUC, average precision, soft Dice."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from npcrepro.errors import DataError, ParameterError
from npcrepro.metrics.inputs import as_prob

__all__ = ["auc", "average_precision", "soft_dice_sums", "soft_dice_from_sums", "soft_dice",
           "SOFT_DICE_NUMERATORS"]


def _binary_ref(ref: Any) -> np.ndarray:
    if hasattr(ref, "detach"):
        ref = ref.detach().cpu().numpy()
    arr = np.asarray(ref)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"ref must be a boolean or 0/1 numeric mask, got dtype {arr.dtype}")
    out = arr != 0
    if out.any() and not np.all(arr[out] == 1):
        raise DataError("ref is not a binary mask: it holds values other than 0 and 1")
    return out


def auc(prob: Any, ref: Any) -> float:
    r"""Area under the ROC curve by luo2020's rank formula (Eq. 5).

    .. math:: AUC = \frac{S_0 - n_0(n_0 + 1)/2}{n_0 n_1}

    :math:`n_0` voxels belong to the reference, :math:`n_1` do not, and :math:`S_0` is the sum
    of the ranks (1-based, ascending in ``prob``, tied values given their average rank) of the
    reference voxels. This is the Mann-Whitney statistic and equals ``sklearn.metrics.
    roc_auc_score``. Cost O(n log n) for n voxels.

    Parameters
    ----------
    prob : array_like of float, any shape
        Scores, e.g. foreground probabilities or logits (only their order matters). Finite.
    ref : array_like of bool or {0, 1}, same shape as ``prob``

    Returns
    -------
    float
        In [0, 1]. When ``ref`` has a single class (all background or all foreground) the AUC is
        undefined; 0.5 (chance) is returned and :func:`evaluate_case` sets ``auc_defined=False``.
    """
    r = _binary_ref(ref)
    s = as_prob(prob, r.shape).ravel()
    y = r.ravel()
    n0 = int(np.count_nonzero(y))
    n1 = y.size - n0
    if n0 == 0 or n1 == 0:
        return 0.5
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # group equal scores; each group's voxels share the average of the ranks it spans
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    counts = np.diff(np.r_[starts, s_sorted.size])
    avg_rank = starts + (counts + 1) / 2.0
    pos_per_group = np.add.reduceat(y_sorted.astype(np.int64), starts)
    s0 = float(np.dot(pos_per_group, avg_rank))
    return float((s0 - n0 * (n0 + 1) / 2.0) / (float(n0) * float(n1)))


def average_precision(prob: Any, ref: Any, *, empty_threshold: float = 0.5) -> float:
    r"""Average precision, chen2020's area under the precision-recall curve (its Eq. 15).

    Step-wise integral over the distinct score thresholds, in decreasing order,
    :math:`AP = \sum_n (R_n - R_{n-1}) P_n`, the definition of ``sklearn.metrics.
    average_precision_score`` (no interpolation).

    Parameters
    ----------
    prob : array_like of float, any shape
        Foreground scores (probabilities or logits). Finite.
    ref : array_like of bool or {0, 1}, same shape as ``prob``
    empty_threshold : float, default 0.5
        Used only when ``ref`` is empty; see Returns.

    Returns
    -------
    float
        In [0, 1]. An all-foreground ``ref`` gives 1.0 (precision is 1 everywhere). An empty
        ``ref`` makes recall 0/0 and AP undefined; following the hard-mask rule (both empty ->
        perfect, one empty -> worst) this returns 1.0 if no score reaches ``empty_threshold``
        (the thresholded prediction is empty too) and 0.0 otherwise. :func:`evaluate_case`
        sets ``ap_defined=False`` in that case.
    """
    r = _binary_ref(ref)
    s = as_prob(prob, r.shape).ravel()
    y = r.ravel()
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        return 0.0 if (s.size and s.max() >= empty_threshold) else 1.0
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores = one threshold
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(y_sorted, dtype=np.int64)[ends]
    n_pred = ends + 1
    prec = tp / n_pred
    rec = tp / n_pos
    d_rec = np.diff(np.r_[0.0, rec])
    return float(np.dot(d_rec, prec))


#: The two readings of luo2020's Eq. (4) numerator (see :func:`soft_dice`).
SOFT_DICE_NUMERATORS = ("printed", "dot")


def soft_dice_sums(prob: Any, ref: Any, axis: int | tuple[int, ...] | None = None) -> dict[str, Any]:
    r"""The additive sums of luo2020's soft Dice (Eq. 4) over ``axis`` (None: every element).

    Returns ``{"pg2": sum (p g)^2, "pg": sum p g, "p2": sum p^2, "g2": sum g^2}`` (floats, or arrays
    over the axes not summed). Sums of disjoint parts add up, so a soft Dice pooled over many slices
    or patients is :func:`soft_dice_from_sums` of the summed sums: what a run stores per patient
    instead of its probabilities.

    Parameters
    ----------
    prob : array_like of float in [0, 1], any shape (e.g. (z, y, x) probabilities of one structure)
    ref : array_like of bool or {0, 1}, same shape
    axis : int or tuple of int, optional
        Axes summed, e.g. ``(1, 2)`` on (z, y, x) for one value per axial slice.
    """
    r = _binary_ref(ref)
    p = as_prob(prob, r.shape)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise DataError("soft_dice needs probabilities in [0, 1]; apply a sigmoid/softmax first")
    g = r.astype(np.float64)
    pg = p * g
    out = {"pg2": np.sum(pg * pg, axis=axis), "pg": np.sum(pg, axis=axis), "p2": np.sum(p * p, axis=axis),
           "g2": np.sum(g, axis=axis)}  # g is 0/1: g^2 = g
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in out.items()}


def soft_dice_from_sums(sums: Mapping[str, Any], numerator: str = "printed") -> Any:
    r"""Soft Dice (Eq. 4) from :func:`soft_dice_sums` (summed over any set of voxels).

    ``numerator="printed"``: :math:`2\sum (p g)^2 / (\sum p^2 + \sum g^2)`; ``"dot"``:
    :math:`2\sum p g / (\sum p^2 + \sum g^2)`. A zero denominator (every p 0 and g empty) gives 1.
    Scalars in, float out; arrays in, float64 array out (element-wise, same rule).
    """
    if numerator not in SOFT_DICE_NUMERATORS:
        raise ParameterError(f"numerator must be one of {SOFT_DICE_NUMERATORS}, got {numerator!r}")
    num = 2.0 * np.asarray(sums["pg2" if numerator == "printed" else "pg"], np.float64)
    den = np.asarray(sums["p2"], np.float64) + np.asarray(sums["g2"], np.float64)
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return float(out) if out.ndim == 0 else out


def soft_dice(prob: Any, ref: Any, *, numerator: str = "dot") -> float:
    r"""luo2020's soft Dice (Eq. 4), the L2 form on probabilities, over every element of the arrays.

    The paper prints :math:`DSC = 2\|PG\|_2^2 / (\|P\|_2^2 + \|G\|_2^2)`, "where :math:`\|PG\|` is
    the element-wise product of the prediction (P) and the ground truth (G), and :math:`\|x\|_2` is
    the L2-norm". Two readings of the numerator:

    * ``numerator="printed"`` -- the squared L2 norm of the element-wise product, as printed:

      .. math:: DSC = \frac{2\sum_i (p_i g_i)^2}{\sum_i p_i^2 + \sum_i g_i^2}

    * ``numerator="dot"`` (default, the V-Net / "DSC for bit vectors" form the sentence paraphrases):

      .. math:: DSC = \frac{2\sum_i p_i g_i}{\sum_i p_i^2 + \sum_i g_i^2}

    Both equal the hard Dice for a 0/1 ``prob``; for probabilities both are in general lower than
    the Dice of the thresholded mask, the printed one more so (:math:`p^2 \le p`). The unit over which
    the sums run (a slice, a patient, a fold's test set) is the caller's: pool with
    :func:`soft_dice_sums` and :func:`soft_dice_from_sums`.

    Parameters
    ----------
    prob : array_like of float in [0, 1], any shape
    ref : array_like of bool or {0, 1}, same shape
    numerator : {"dot", "printed"}

    Returns
    -------
    float
        In [0, 1]. Both empty (all prob 0 and ref empty) -> 1.0; exactly one -> 0.0.
    """
    return float(soft_dice_from_sums(soft_dice_sums(prob, ref), numerator))
