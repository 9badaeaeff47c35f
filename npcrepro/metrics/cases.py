"""Per-case and per-structure tables of every metric."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from npcrepro.errors import DataError
from npcrepro.metrics.inputs import as_prob, as_spacing, mask_pair
from npcrepro.metrics.overlap import _overlap
from npcrepro.metrics.probability import auc, average_precision, soft_dice
from npcrepro.metrics.surface import _check_tolerance, _hd_from, _nsd_from, _surfaces, _worst

__all__ = ["evaluate_case", "evaluate_labels"]


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
    p, r = mask_pair(pred, ref)
    sp = as_spacing(spacing, p.ndim)
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
        pr = as_prob(prob, r.shape)
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
