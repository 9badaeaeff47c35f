"""Segmentation metrics of the five papers: overlap, surface distances and probability measures.

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

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from npcrepro.errors import DataError, ParameterError

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
]

# --------------------------------------------------------------------------------------------
# validation helpers


def _as_mask(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a boolean array of 2 or 3 dimensions, or raise DataError."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim not in (2, 3):
        raise DataError(f"{name} must be a 2D (y, x) or 3D (z, y, x) mask, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise DataError(f"{name} must be a boolean or 0/1 numeric mask, got dtype {arr.dtype}")
    out = arr != 0
    # cheap binary check: only the (few) non-zero values need looking at; NaN fails it too
    if out.any() and not np.all(arr[out] == 1):
        raise DataError(f"{name} is not a binary mask: it holds values other than 0 and 1")
    return out


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    if p.shape != r.shape:
        raise DataError(f"pred and ref shapes differ: pred {p.shape} vs ref {r.shape}")
    return p, r


def _spacing(spacing: Any, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.ndim != 1:
        raise DataError(f"spacing must be a scalar or a sequence of {ndim} numbers, got {spacing!r}")
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise DataError(f"spacing has {sp.size} values but the masks have {ndim} dimensions")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise DataError(f"spacing must be finite and positive, got {tuple(sp.tolist())}")
    return sp


def _prob(prob: Any, ref_shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(prob, "detach"):
        prob = prob.detach().cpu().numpy()
    p = np.asarray(prob)
    if not np.issubdtype(p.dtype, np.number) and p.dtype != bool:
        raise DataError(f"prob must be numeric, got dtype {p.dtype}")
    if p.shape != ref_shape:
        raise DataError(f"prob and ref shapes differ: prob {p.shape} vs ref {ref_shape}")
    p = p.astype(np.float64, copy=False)
    if not np.all(np.isfinite(p)):
        raise DataError("prob holds non-finite values (NaN or inf)")
    return p


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """num/den, with the empty-mask rule for den == 0: 1 if both masks are empty, else 0."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


# --------------------------------------------------------------------------------------------
# overlap


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
    p, r = _pair(pred, ref)
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
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "jaccard": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "percent_match": _ratio(tp, tp + fn, both_empty),
        "corresponding_ratio": _ratio(tp - 0.5 * fp, tp + fn, both_empty),
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
    m = _as_mask(mask, "mask")
    sp = _spacing(spacing, m.ndim)
    scale = 1000.0 if m.ndim == 3 else 100.0
    return float(np.count_nonzero(m)) * float(np.prod(sp)) / scale


# --------------------------------------------------------------------------------------------
# surfaces


def _axis_any_ranges(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Per-axis [start, stop) of the non-zero region of a boolean array, None if empty.

    Reads the full array once; the OR-reductions run on 8-byte words where the layout allows
    it, which is several times faster than ``np.any(axis=...)`` on byte-sized booleans.
    """
    ranges: list[tuple[int, int]] = []
    cur = np.ascontiguousarray(mask)
    while cur.ndim > 1:
        n0 = cur.shape[0]
        rows = cur.reshape(n0, -1)
        if rows.shape[1] % 8 == 0:
            words = rows.view(np.uint64)
            row_any = words.any(axis=1)
        else:
            words = None
            row_any = rows.any(axis=1)
        idx = np.flatnonzero(row_any)
        if idx.size == 0:
            return None
        a, b = int(idx[0]), int(idx[-1]) + 1
        ranges.append((a, b))
        if words is not None:
            folded = np.bitwise_or.reduce(words[a:b], axis=0).view(bool)
        else:
            folded = rows[a:b].any(axis=0)
        cur = folded.reshape(cur.shape[1:])
    idx = np.flatnonzero(cur)
    if idx.size == 0:
        return None
    ranges.append((int(idx[0]), int(idx[-1]) + 1))
    return ranges


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: mask minus its face-connectivity erosion (outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed(src_edges: np.ndarray, dst_edges: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel of ``src_edges`` to the nearest voxel of ``dst_edges``."""
    n_src = int(np.count_nonzero(src_edges))
    n_dst = int(np.count_nonzero(dst_edges))
    # A dense EDT costs ~ the box size, a KD-tree ~ the number of surface voxels; the tree wins
    # only when the two surfaces are far apart and the joint box is mostly empty.
    if src_edges.size <= 64 * (n_src + n_dst):
        dist = ndimage.distance_transform_edt(~dst_edges, sampling=sp)
        return dist[src_edges]
    tree = cKDTree(np.argwhere(dst_edges) * sp)
    return tree.query(np.argwhere(src_edges) * sp, k=1)[0]


def _surfaces(
    p: np.ndarray, r: np.ndarray, sp: np.ndarray
) -> tuple[bool, bool, np.ndarray, np.ndarray]:
    """(pred_empty, ref_empty, d_pred_to_ref, d_ref_to_pred) for validated masks."""
    rp = _axis_any_ranges(p)
    rr = _axis_any_ranges(r)
    empty = np.empty(0, dtype=np.float64)
    if rp is None or rr is None:
        return rp is None, rr is None, empty, empty
    # Crop to the joint bounding box without a margin: every voxel outside it is background in
    # both masks, so an erosion with border_value=0 and the Euclidean distances between
    # boundary voxels are exactly those of the uncropped arrays.
    box = tuple(slice(min(a0, b0), max(a1, b1)) for (a0, a1), (b0, b1) in zip(rp, rr))
    ep = _edges(p[box])
    er = _edges(r[box])
    return False, False, _directed(ep, er, sp), _directed(er, ep, sp)


def _diagonal(shape: tuple[int, ...], sp: np.ndarray) -> float:
    return float(np.sqrt(np.sum((np.asarray(shape) * sp) ** 2)))


def surface_distances(pred: Any, ref: Any, spacing: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two masks, in mm.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
    spacing : sequence of float, optional
        Voxel size in mm, in the array's axis order; scalar = isotropic; None = 1 mm.

    Returns
    -------
    d_pred_to_ref : ndarray of float64, shape (n_pred_surface,)
        For each boundary voxel of ``pred`` (in C order), the distance to the nearest boundary
        voxel of ``ref``.
    d_ref_to_pred : ndarray of float64, shape (n_ref_surface,)
        The same from ``ref`` to ``pred``.

    Notes
    -----
    If either mask is empty there is no distance to measure: both arrays are returned empty
    (the metric functions then apply the empty-mask rule).
    """
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    return _surfaces(p, r, sp)[2:]


def _worst(worst_distance: float | None, shape: tuple[int, ...], sp: np.ndarray) -> float:
    if worst_distance is None:
        return _diagonal(shape, sp)
    w = float(worst_distance)
    if not np.isfinite(w) or w < 0:
        raise ParameterError(f"worst_distance must be finite and >= 0, got {worst_distance!r}")
    return w


def _hd_from(d_pr: np.ndarray, d_rp: np.ndarray, percentile: float) -> float:
    if percentile >= 100:
        return float(max(d_pr.max(), d_rp.max()))
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def _check_percentile(percentile: float) -> float:
    q = float(percentile)
    if not 0 <= q <= 100:
        raise ParameterError(f"percentile must be in [0, 100], got {percentile!r}")
    return q


def hausdorff(
    pred: Any,
    ref: Any,
    spacing: Any = None,
    percentile: float = 100,
    *,
    worst_distance: float | None = None,
) -> float:
    """Hausdorff distance (HD, percentile=100) or percentile Hausdorff distance (HD95), in mm.

    The ``percentile``-th percentile (linear interpolation) of the surface distances is taken
    in each direction (pred -> ref and ref -> pred) and the larger of the two is returned. This is
    the convention of MONAI ``compute_hausdorff_distance(percentile=95)``, MetricsReloaded and
    DeepMind's surface-distance package. medpy's ``hd95`` instead pools the distances of both
    directions into one array before taking the percentile, so its HD95 is in general different
    (usually smaller); at percentile 100 both conventions agree with medpy's ``hd``.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
    spacing : sequence of float, optional
        Voxel size in mm, in the array's axis order; scalar = isotropic; None = 1 mm.
    percentile : float, default 100
        In [0, 100]; 95 gives HD95.
    worst_distance : float, optional
        Value returned when exactly one mask is empty; default the image diagonal in mm,
        ``sqrt(sum((shape * spacing)**2))``.

    Returns
    -------
    float
        Distance in mm, >= 0. Both masks empty -> 0.0; exactly one empty -> ``worst_distance``.
    """
    q = _check_percentile(percentile)
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    pe, re_, d_pr, d_rp = _surfaces(p, r, sp)
    if pe and re_:
        return 0.0
    if pe or re_:
        return _worst(worst_distance, p.shape, sp)
    return _hd_from(d_pr, d_rp, q)


def assd(
    pred: Any, ref: Any, spacing: Any = None, *, worst_distance: float | None = None
) -> float:
    r"""Average symmetric surface distance in mm: the mean of the two directed mean distances.

    .. math:: ASSD = \tfrac12\Big(\tfrac{1}{|G|}\sum_{g\in G}\min_{p\in P} d(g,p)
              + \tfrac{1}{|P|}\sum_{p\in P}\min_{g\in G} d(p,g)\Big)

    with G and P the boundary voxels of ref and pred. guo2021 Eq. 9 ("ASSD") and xue2020 Eq. 3-4
    ("ASD", the mean of the two directed average distances) define the same quantity; only the
    name differs. It equals the mean of MONAI's two directed ``compute_average_surface_distance``
    values and of medpy's two ``asd`` values. MONAI's ``symmetric=True`` and medpy 0.5's ``assd``
    are different: they average the pooled distances of both directions, weighting each
    direction by its number of boundary voxels.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
    spacing : sequence of float, optional
        Voxel size in mm, in the array's axis order; scalar = isotropic; None = 1 mm.
    worst_distance : float, optional
        Value returned when exactly one mask is empty; default the image diagonal in mm.

    Returns
    -------
    float
        Distance in mm, >= 0. Both masks empty -> 0.0; exactly one empty -> ``worst_distance``.
    """
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    pe, re_, d_pr, d_rp = _surfaces(p, r, sp)
    if pe and re_:
        return 0.0
    if pe or re_:
        return _worst(worst_distance, p.shape, sp)
    return 0.5 * (float(d_pr.mean()) + float(d_rp.mean()))


def _check_tolerance(tolerance_mm: float) -> float:
    t = float(tolerance_mm)
    if not np.isfinite(t) or t < 0:
        raise ParameterError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm!r}")
    return t


def _nsd_from(d_pr: np.ndarray, d_rp: np.ndarray, tol: float) -> float:
    n = d_pr.size + d_rp.size
    ok = np.count_nonzero(d_pr <= tol) + np.count_nonzero(d_rp <= tol)
    return float(ok) / float(n)


def surface_dice(pred: Any, ref: Any, spacing: Any = None, tolerance_mm: float = 2.0) -> float:
    r"""Normalised surface distance (NSD, "surface Dice") at a tolerance in mm.

    .. math:: NSD = \frac{|\{p\in P: d(p,G)\le\tau\}| + |\{g\in G: d(g,P)\le\tau\}|}{|P| + |G|}

    P and G are the boundary voxels of pred and ref, each counted once. This equals MONAI's
    ``compute_surface_dice`` with its defaults (``use_subvoxels=False``). SegRap and DeepMind's
    ``compute_surface_dice_at_tolerance`` weight each boundary element by its surface area
    instead of counting voxels; the two agree closely for smooth shapes but not exactly.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
    spacing : sequence of float, optional
        Voxel size in mm, in the array's axis order; scalar = isotropic; None = 1 mm.
    tolerance_mm : float, default 2.0
        Acceptable boundary deviation :math:`\tau` in mm (a distance equal to it counts).

    Returns
    -------
    float
        In [0, 1]. Both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    tol = _check_tolerance(tolerance_mm)
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    pe, re_, d_pr, d_rp = _surfaces(p, r, sp)
    if pe and re_:
        return 1.0
    if pe or re_:
        return 0.0
    return _nsd_from(d_pr, d_rp, tol)


# --------------------------------------------------------------------------------------------
# probability measures


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
    s = _prob(prob, r.shape).ravel()
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
    s = _prob(prob, r.shape).ravel()
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
    p = _prob(prob, r.shape)
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


# --------------------------------------------------------------------------------------------
# per-case and per-structure tables


def evaluate_case(
    pred: Any,
    ref: Any,
    spacing: Any = None,
    prob: Any = None,
    *,
    tolerance_mm: float = 2.0,
    worst_distance: float | None = None,
) -> dict[str, Any]:
    """All metrics of one structure in one case, sharing one surface-distance pass.

    Parameters
    ----------
    pred, ref : array_like of bool or {0, 1}, shape (z, y, x) or (y, x)
    spacing : sequence of float, optional
        Voxel size in mm, in the array's axis order; scalar = isotropic; None = 1 mm.
    prob : array_like of float, optional
        Foreground probabilities, same shape; adds ``auc``, ``auc_defined``, ``ap``,
        ``ap_defined`` and ``soft_dice``.
    tolerance_mm : float, default 2.0
        NSD tolerance in mm.
    worst_distance : float, optional
        Distance reported when exactly one mask is empty; default the image diagonal in mm.

    Returns
    -------
    dict
        ``dice, jaccard, precision, recall, f1, percent_match, corresponding_ratio`` (unitless),
        ``volume_pred_cm3, volume_ref_cm3`` (3D; ``area_pred_cm2, area_ref_cm2`` for 2D),
        ``hd, hd95, assd`` (mm), ``nsd``, the flags ``pred_empty, ref_empty`` and, with ``prob``,
        ``auc, auc_defined, ap, ap_defined, soft_dice``.

    Notes
    -----
    Empty masks: both empty -> overlap scores, CR and NSD 1, distances 0; exactly one empty ->
    overlap scores, CR and NSD 0, distances ``worst_distance``. Never NaN; filter or count on
    the flags rather than relying on a NaN-dropping mean.
    """
    tol = _check_tolerance(tolerance_mm)
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    if worst_distance is not None:
        _worst(worst_distance, p.shape, sp)  # validate early
    n_p = int(np.count_nonzero(p))
    n_r = int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r)) if n_p and n_r else 0
    out: dict[str, Any] = dict(_overlap(tp, n_p - tp, n_r - tp))
    vox = float(np.prod(sp))
    if p.ndim == 3:
        out["volume_pred_cm3"] = n_p * vox / 1000.0
        out["volume_ref_cm3"] = n_r * vox / 1000.0
    else:
        out["area_pred_cm2"] = n_p * vox / 100.0
        out["area_ref_cm2"] = n_r * vox / 100.0
    pe, re_, d_pr, d_rp = _surfaces(p, r, sp)
    if pe and re_:
        out.update(hd=0.0, hd95=0.0, assd=0.0, nsd=1.0)
    elif pe or re_:
        w = _worst(worst_distance, p.shape, sp)
        out.update(hd=w, hd95=w, assd=w, nsd=0.0)
    else:
        out.update(
            hd=_hd_from(d_pr, d_rp, 100),
            hd95=_hd_from(d_pr, d_rp, 95),
            assd=0.5 * (float(d_pr.mean()) + float(d_rp.mean())),
            nsd=_nsd_from(d_pr, d_rp, tol),
        )
    if prob is not None:
        pr = _prob(prob, r.shape)
        out["auc"] = auc(pr, r)
        out["auc_defined"] = bool(0 < n_r < r.size)
        out["ap"] = average_precision(pr, r)
        out["ap_defined"] = bool(n_r > 0)
        out["soft_dice"] = soft_dice(pr, r)
    out["pred_empty"] = bool(pe)
    out["ref_empty"] = bool(re_)
    return out


def _to_dict(
    masks: Any, names: Mapping[int, str] | None, which: str
) -> tuple[dict[str, Any], list[str]]:
    """Turn a dict of masks or an integer label map into (name -> mask, declared names)."""
    if isinstance(masks, Mapping):
        return dict(masks), []
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    lab = np.asarray(masks)
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        integral = np.all(np.isfinite(lab)) and np.all(lab == np.round(lab))
        if np.issubdtype(lab.dtype, np.floating) and integral:
            lab = lab.astype(np.int64)
        else:
            raise DataError(f"{which} label map must hold integer labels, got dtype {lab.dtype}")
    present = [int(v) for v in np.unique(lab) if v != 0]
    if names is None:
        return {str(v): lab == v for v in present}, []
    undeclared = sorted(set(present) - set(int(k) for k in names))
    if undeclared:
        raise DataError(f"{which} label map holds labels not in names: {undeclared}")
    declared = [str(names[k]) for k in sorted(names) if int(k) != 0]
    return {str(names[k]): lab == int(k) for k in sorted(names) if int(k) != 0}, declared


def evaluate_labels(
    pred_masks: Mapping[str, Any] | Any,
    ref_masks: Mapping[str, Any] | Any,
    spacing: Any = None,
    names: Mapping[int, str] | None = None,
    *,
    tolerance_mm: float = 2.0,
    worst_distance: float | None = None,
):
    """Multi-structure evaluation: one :func:`evaluate_case` row per structure.

    Parameters
    ----------
    pred_masks, ref_masks : dict[str, array_like] or integer label map, shape (z, y, x) or (y, x)
        Either a mapping from structure name to a binary mask, or a label map (0 = background).
        A label map is split with ``names``; without ``names`` each non-zero label present is a
        structure named ``str(label)``.
    spacing : sequence of float, optional
        Voxel size in mm, in the array's axis order.
    names : dict[int, str], optional
        Label value -> structure name for label maps. With ``names``, every declared structure
        gets a row (absent from both -> a "both empty" row, flagged), and a label that is not
        declared is a DataError.
    tolerance_mm, worst_distance : see :func:`evaluate_case`.

    Returns
    -------
    pandas.DataFrame
        One row per structure, column ``structure`` first, then the keys of
        :func:`evaluate_case`. Rows follow the reference order, then structures only predicted.

    Notes
    -----
    A structure in the reference but not in the prediction is scored as an empty prediction
    (Dice 0, distances ``worst_distance``, ``pred_empty=True``); a structure only in the
    prediction is scored against an empty reference (``ref_empty=True``). Nothing is dropped.
    """
    import pandas as pd

    pred_d, pred_decl = _to_dict(pred_masks, names, "pred")
    ref_d, ref_decl = _to_dict(ref_masks, names, "ref")
    order: list[str] = []
    for key in list(ref_d) + ref_decl + list(pred_d) + pred_decl:
        if key not in order:
            order.append(key)
    shape = None
    for d in (ref_d, pred_d):
        for v in d.values():
            shape = np.shape(v)
            break
        if shape is not None:
            break
    rows = []
    for key in order:
        ref_m = ref_d.get(key)
        pred_m = pred_d.get(key)
        if ref_m is None and pred_m is None:  # declared in names but absent everywhere
            if shape is None:
                raise DataError("no masks given: cannot infer the image shape")
            ref_m = pred_m = np.zeros(shape, dtype=bool)
        elif ref_m is None:
            ref_m = np.zeros(np.shape(pred_m), dtype=bool)
        elif pred_m is None:
            pred_m = np.zeros(np.shape(ref_m), dtype=bool)
        row = {"structure": key}
        try:
            row.update(
                evaluate_case(
                    pred_m, ref_m, spacing, tolerance_mm=tolerance_mm, worst_distance=worst_distance
                )
            )
        except DataError as exc:
            raise DataError(f"structure {key!r}: {exc}") from None
        rows.append(row)
    return pd.DataFrame(rows)
