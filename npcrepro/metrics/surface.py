"""Surface distances between binary masks: Hausdorff (and percentiles), ASSD, surface Dice (NSD)."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from npcrepro.errors import ParameterError
from npcrepro.metrics.inputs import as_spacing, mask_pair

__all__ = ["surface_distances", "hausdorff", "assd", "surface_dice"]


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
    p, r = mask_pair(pred, ref)
    sp = as_spacing(spacing, p.ndim)
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
    p, r = mask_pair(pred, ref)
    sp = as_spacing(spacing, p.ndim)
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
    p, r = mask_pair(pred, ref)
    sp = as_spacing(spacing, p.ndim)
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
    p, r = mask_pair(pred, ref)
    sp = as_spacing(spacing, p.ndim)
    pe, re_, d_pr, d_rp = _surfaces(p, r, sp)
    if pe and re_:
        return 1.0
    if pe or re_:
        return 0.0
    return _nsd_from(d_pr, d_rp, tol)
