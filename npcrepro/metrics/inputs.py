"""Input checks shared by the metrics: binary masks, spacings in mm, probability maps, the empty-mask ratio."""
from __future__ import annotations

from typing import Any

import numpy as np

from npcrepro.errors import DataError

__all__ = ["as_mask", "mask_pair", "as_spacing", "as_prob", "safe_ratio"]


def as_mask(x: Any, name: str) -> np.ndarray:
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


def mask_pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p = as_mask(pred, "pred")
    r = as_mask(ref, "ref")
    if p.shape != r.shape:
        raise DataError(f"pred and ref shapes differ: pred {p.shape} vs ref {r.shape}")
    return p, r


def as_spacing(spacing: Any, ndim: int) -> np.ndarray:
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


def as_prob(prob: Any, ref_shape: tuple[int, ...]) -> np.ndarray:
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


def safe_ratio(num: float, den: float, both_empty: bool) -> float:
    """num/den, with the empty-mask rule for den == 0: 1 if both masks are empty, else 0."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)
