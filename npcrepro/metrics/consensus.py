"""Several raters' masks of one structure: their agreement and a consensus reference.

* :func:`pairwise_dice` - the raters' mean pairwise Dice (the inter-rater ceiling a network is held
  against) and every pair's.
* :func:`majority_vote` - the voxels more than half of the raters mark.
* :func:`staple` - STAPLE (Warfield, Zou and Wells, IEEE TMI 23(7), 2004): the expectation-maximisation
  estimate of the true segmentation and of each rater's sensitivity and specificity, for binary masks.
  It agrees with SimpleITK's ``STAPLE`` filter (``tests/test_metrics.py``).

Masks follow :mod:`npcrepro.metrics` (boolean or 0/1, 2D or 3D, one shape for all raters).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

from npcrepro.errors import DataError, ParameterError
from npcrepro.metrics.inputs import as_mask
from npcrepro.metrics.overlap import dice

__all__ = ["pairwise_dice", "agreement", "majority_vote", "staple", "Staple"]


def _raters(masks: Sequence, least: int) -> np.ndarray:
    """The raters' masks stacked: (raters, voxels...) bool; DataError unless at least ``least``
    masks of one shape."""
    arrs = [as_mask(m, f"rater {k}") for k, m in enumerate(masks)]
    if len(arrs) < least:
        raise DataError(f"need the masks of at least {least} raters, got {len(arrs)}")
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise DataError(f"the raters' masks differ in shape: {sorted(shapes)}")
    return np.stack(arrs)


def pairwise_dice(masks: Sequence) -> tuple[float, list[float]]:
    """(mean, every pair's Dice in the order (0, 1), (0, 2) ... (1, 2) ...) of two or more raters'
    masks; two empty masks agree perfectly (:func:`npcrepro.metrics.dice`)."""
    d = _raters(masks, 2)
    pairs = [dice(d[a], d[b]) for a, b in combinations(range(len(d)), 2)]
    return float(np.mean(pairs)), pairs


def agreement(masks: Sequence, reference) -> dict[str, float]:
    """How two or more raters' masks agree: ``pairwise_dice``, their mean pairwise Dice, and
    ``rater_vs_reference``, their mean Dice against ``reference`` (e.g. their consensus)."""
    d = _raters(masks, 2)
    ref = as_mask(reference, "reference")
    return {"pairwise_dice": pairwise_dice(d)[0], "rater_vs_reference": float(np.mean([dice(m, ref) for m in d]))}


def majority_vote(masks: Sequence) -> np.ndarray:
    """The voxels that more than half of the raters mark (a tie, with an even number of raters, is
    background): a bool mask of the raters' shape."""
    d = _raters(masks, 1)
    return 2 * d.sum(axis=0, dtype=np.int64) > len(d)


@dataclass(frozen=True)
class Staple:
    """What :func:`staple` estimates: ``probability`` (the voxels' probability of being in the true
    segmentation, float64, the raters' shape), each rater's ``sensitivity`` and ``specificity``,
    the EM ``iterations`` run and the foreground ``prior`` used."""

    probability: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    iterations: int
    prior: float

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        """The consensus segmentation: probability above ``threshold``."""
        return self.probability > threshold


def staple(masks: Sequence, *, prior: float | None = None, max_iterations: int = 100,
           tolerance: float = 1e-7, initial: float = 0.99999) -> Staple:
    """STAPLE for binary masks (Warfield et al. 2004, Sec. II-A).

    E-step: for voxel ``i`` and raters ``j`` with decisions ``D_ij``, the probability of the true
    label being foreground, ``W_i = f a_i / (f a_i + (1 - f) b_i)`` with ``a_i = prod_j p_j^D_ij
    (1 - p_j)^(1 - D_ij)`` and ``b_i = prod_j q_j^(1 - D_ij) (1 - q_j)^D_ij``; M-step: each rater's
    sensitivity ``p_j = sum_i W_i D_ij / sum_i W_i`` and specificity ``q_j = sum_i (1 - W_i)(1 -
    D_ij) / sum_i (1 - W_i)``. Starts from ``p = q = initial`` and stops when no sensitivity or
    specificity moves by more than ``tolerance`` (or after ``max_iterations``).

    ``prior`` is the foreground probability ``f`` of every voxel (default: the raters' mean
    foreground fraction over the whole array, as SimpleITK's filter takes it), so the estimate
    depends on how much background the array holds: crop alike when comparing.
    """
    d = _raters(masks, 2)
    if not 0 < initial < 1:
        raise ParameterError(f"staple: initial sensitivity/specificity must be in (0, 1), got {initial}")
    flat = d.reshape(len(d), -1)
    f = float(flat.mean()) if prior is None else float(prior)
    if not 0 < f < 1:
        if prior is not None:
            raise ParameterError(f"staple: prior must be in (0, 1), got {prior}")
        # every rater marks nothing (or everything): that is the consensus, and nothing is estimated
        prob = np.full(d.shape[1:], f, dtype=np.float64)
        ones = np.ones(len(d))
        return Staple(prob, ones, ones, 0, f)
    # voxels with the same decisions share W: EM over the distinct decision patterns, weighted
    patterns, counts = np.unique(flat.T, axis=0, return_counts=True)
    inverse = np.unique(flat.T, axis=0, return_inverse=True)[1].reshape(-1)
    D = patterns.T.astype(np.float64)  # (raters, patterns)
    n = counts.astype(np.float64)
    p = np.full(len(d), float(initial))
    q = np.full(len(d), float(initial))
    it = 0
    for it in range(1, max_iterations + 1):
        log_a = np.log(f) + (D * np.log(p)[:, None] + (1 - D) * np.log1p(-p)[:, None]).sum(0)
        log_b = np.log1p(-f) + ((1 - D) * np.log(q)[:, None] + D * np.log1p(-q)[:, None]).sum(0)
        w = 1.0 / (1.0 + np.exp(np.clip(log_b - log_a, -700, 700)))
        wn, vn = w * n, (1 - w) * n
        p_new = (D * wn).sum(1) / max(wn.sum(), 1e-300)
        q_new = ((1 - D) * vn).sum(1) / max(vn.sum(), 1e-300)
        # keep the logarithms finite: a rater who is never (or always) right stays at the bound
        p_new, q_new = np.clip(p_new, 1e-12, 1 - 1e-12), np.clip(q_new, 1e-12, 1 - 1e-12)
        moved = max(np.abs(p_new - p).max(), np.abs(q_new - q).max())
        p, q = p_new, q_new
        if moved <= tolerance:
            break
    log_a = np.log(f) + (D * np.log(p)[:, None] + (1 - D) * np.log1p(-p)[:, None]).sum(0)
    log_b = np.log1p(-f) + ((1 - D) * np.log(q)[:, None] + D * np.log1p(-q)[:, None]).sum(0)
    w = 1.0 / (1.0 + np.exp(np.clip(log_b - log_a, -700, 700)))
    return Staple(w[inverse].reshape(d.shape[1:]), p, q, it, f)
