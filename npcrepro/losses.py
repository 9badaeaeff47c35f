"""Training losses of the five papers (PyTorch), batched, 2D and 3D, binary and multi-class.

Shapes
------
``input`` holds **logits** (never probabilities) of shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
The activation turns them into probabilities: ``"sigmoid"`` (each channel an independent
foreground: binary with C = 1, or multi-label) or ``"softmax"`` over the channels (multi-class,
channel 0 = background); ``"auto"`` picks sigmoid for C = 1 and softmax otherwise.

``target`` may be

* a mask of the same shape as ``input`` (float or integer, values in [0, 1]: binary, one-hot or
  soft labels), or
* class indices of shape ``(N, *spatial)`` or ``(N, 1, *spatial)`` (integer in [0, C)), turned
  into a one-hot mask. With C = 1 such a tensor is read as a 0/1 foreground mask.

Bad shapes or values raise :class:`~npcrepro.errors.DataError` (a ``ValueError``) naming both
shapes. ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from npcrepro.errors import DataError, ParameterError

__all__ = [
    "DiceLoss",
    "TwoSidedDiceLoss",
    "FocalLoss",
    "DiceFocalLoss",
    "DistanceWeightedFocalLoss",
    "DiceCELoss",
    "boundary_distance_weights",
]

_ACTIVATIONS = ("auto", "sigmoid", "softmax")
_REDUCTIONS = ("mean", "sum", "none")


def _check_options(activation: str, reduction: str) -> None:
    if activation not in _ACTIVATIONS:
        raise ParameterError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if reduction not in _REDUCTIONS:
        raise ParameterError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _activation(activation: str, n_channels: int) -> str:
    if activation == "auto":
        return "sigmoid" if n_channels == 1 else "softmax"
    if activation == "softmax" and n_channels < 2:
        raise DataError("softmax needs at least 2 channels; use sigmoid for a single-channel input")
    return activation


def _check_input(input: torch.Tensor) -> None:
    if not isinstance(input, torch.Tensor):
        raise DataError(f"input must be a torch.Tensor of logits, got {type(input).__name__}")
    if input.ndim not in (4, 5):
        raise DataError(
            f"input must be (N, C, H, W) or (N, C, D, H, W) logits, got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise DataError(f"input must be floating-point logits, got dtype {input.dtype}")


def _one_hot_target(input: torch.Tensor, target: Any) -> torch.Tensor:
    """Target as a float tensor of ``input``'s shape (see the module docstring)."""
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(np.asarray(target))
    target = target.to(input.device)
    n, c = input.shape[:2]
    spatial = tuple(input.shape[2:])
    shape = tuple(target.shape)
    if shape == tuple(input.shape):
        t = target.to(input.dtype)
        if t.numel() and (bool((t < 0).any()) or bool((t > 1).any()) or not bool(torch.isfinite(t).all())):
            raise DataError("a target mask of the input's shape must hold values in [0, 1]")
        return t
    if shape in ((n,) + spatial, (n, 1) + spatial):
        idx = target.reshape((n,) + spatial)
        if c == 1:
            t = idx.to(input.dtype)
            if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
                raise DataError("a single-channel target must be a 0/1 foreground mask")
            return t.unsqueeze(1)
        if idx.is_floating_point():
            if not bool((idx == idx.round()).all()):
                raise DataError("class-index targets must hold integers")
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c):
            raise DataError(f"class indices must be in [0, {c}), got [{int(idx.min())}, {int(idx.max())}]")
        oh = F.one_hot(idx, c)  # (N, *spatial, C)
        return oh.movedim(-1, 1).to(input.dtype)
    raise DataError(
        f"target shape {shape} does not fit input shape {tuple(input.shape)}: expected the same "
        f"shape (mask) or {(n,) + spatial} / {(n, 1) + spatial} (class indices)"
    )


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _probs(input: torch.Tensor, act: str) -> torch.Tensor:
    return torch.sigmoid(input) if act == "sigmoid" else torch.softmax(input, dim=1)


class DiceLoss(nn.Module):
    r"""Soft Dice loss, :math:`1 - \frac{2\sum p g + \epsilon}{\sum p^{k} + \sum g^{k} + \epsilon}`.

    One class covers the Dice losses of the papers:

    * chen2020: ``DiceLoss(eps=1.0, literal=True)`` (sigmoid output, linear denominator,
      :math:`\epsilon = 1`): the paper's Eq. 1 as printed,
      :math:`1 - 2(\sum pg + \epsilon)/(\sum p + \sum g + \epsilon)`, whose value on an empty
      patch predicted empty is -1. The default (``literal=False``) applies the smoothing the usual
      way (:math:`2\sum pg + \epsilon` on top), which gives 0 there and differs from the print by
      :math:`\epsilon/(\sum p + \sum g + \epsilon)`.
    * xue2020: "1 - DSC", i.e. a vanishing ``eps`` (e.g. ``1e-6``).
    * luo2020's L2 form of the soft Dice (its Eq. 4): ``squared=True``
      (:math:`k = 2`: :math:`\sum p^2 + \sum g^2` in the denominator).

    Parameters
    ----------
    eps : float, default 1.0
        Smoothing added to numerator and denominator, > 0 recommended.
    activation : {"auto", "sigmoid", "softmax"}
        Logits -> probabilities (see the module docstring).
    include_background : bool, default True
        With softmax, whether channel 0 (background) is scored. Ignored for sigmoid, where every
        channel is a foreground.
    squared : bool, default False
        L2 denominator (:math:`k = 2`) instead of the linear one (:math:`k = 1`).
    batch : bool, default False
        Sum over the whole batch before the ratio (one Dice per channel) instead of one Dice per
        sample and channel.
    reduction : {"mean", "sum", "none"}
        Over the ``(N, C)`` (or ``(C,)`` with ``batch``) Dice losses.
    literal : bool, default False
        chen2020's printed form: :math:`\epsilon` inside the factor 2 on top,
        :math:`1 - 2(\sum pg + \epsilon)/(\sum p^k + \sum g^k + \epsilon)` (range [-1, 1]).

    Shape
    -----
    input : (N, C, H, W) or (N, C, D, H, W) logits; target: see the module docstring.
    Output: scalar, or ``(N, C')`` / ``(C',)`` with ``reduction="none"``.
    """

    def __init__(
        self,
        eps: float = 1.0,
        activation: str = "auto",
        include_background: bool = True,
        squared: bool = False,
        batch: bool = False,
        reduction: str = "mean",
        literal: bool = False,
    ) -> None:
        super().__init__()
        _check_options(activation, reduction)
        if eps < 0:
            raise ParameterError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.activation = activation
        self.include_background = include_background
        self.squared = squared
        self.batch = batch
        self.reduction = reduction
        self.literal = bool(literal)

    def forward(self, input: torch.Tensor, target: Any) -> torch.Tensor:
        _check_input(input)
        act = _activation(self.activation, input.shape[1])
        g = _one_hot_target(input, target)
        p = _probs(input, act)
        if act == "softmax" and not self.include_background:
            p, g = p[:, 1:], g[:, 1:]
        dims = tuple(range(2, input.ndim))
        if self.batch:
            dims = (0,) + dims
        inter = (p * g).sum(dims)
        if self.squared:
            den = (p * p).sum(dims) + (g * g).sum(dims)
        else:
            den = p.sum(dims) + g.sum(dims)
        num = 2.0 * (inter + self.eps) if self.literal else 2.0 * inter + self.eps
        dsc = num / (den + self.eps).clamp_min(1e-12)
        return _reduce(1.0 - dsc, self.reduction)


class TwoSidedDiceLoss(nn.Module):
    r"""luo2020's Dice loss with a foreground and a background term (its Eq. 1).

    As printed (``literal=True``):

    .. math:: L = 1 - \frac{\sum p_n r_n + \epsilon}{\sum (p_n + r_n) + \epsilon}
                    - \frac{\sum (1-p_n)(1-r_n) + \epsilon}{\sum ((1-p_n) + (1-r_n)) + \epsilon}

    Without the factor 2 each fraction tends to 1/2 for a perfect prediction, so for
    :math:`\epsilon \to 0` this is :math:`1 - (D_{fg} + D_{bg})/2`. With :math:`\epsilon > 0` the
    printed form is no longer 0 at a perfect prediction and reaches -1/2 on an empty patch
    predicted empty, so the default (``literal=False``) is the normalised form

    .. math:: L = 1 - \tfrac12\Big(\frac{2\sum p r + \epsilon}{\sum (p + r) + \epsilon}
                    + \frac{2\sum (1-p)(1-r) + \epsilon}{\sum ((1-p) + (1-r)) + \epsilon}\Big),

    which equals the print at :math:`\epsilon = 0` and is 0 for every perfect prediction.

    Parameters
    ----------
    eps : float, default 0.5
        Smoothing; the paper only says :math:`\epsilon \in (0, 1)` (0.5 is this project's pick).
    activation : {"auto", "sigmoid", "softmax"}
    include_background : bool, default False
        With softmax, whether channel 0 gets its own two-sided term (the background term of
        every foreground channel already scores it; for C = 2 channel 0's term equals
        channel 1's). Ignored for sigmoid.
    literal : bool, default False
        Use the equation exactly as printed.
    reduction : {"mean", "sum", "none"}
        Over the per-sample, per-channel losses ``(N, C')``.
    """

    def __init__(
        self,
        eps: float = 0.5,
        activation: str = "auto",
        include_background: bool = False,
        literal: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(activation, reduction)
        if eps < 0:
            raise ParameterError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.activation = activation
        self.include_background = include_background
        self.literal = literal
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: Any) -> torch.Tensor:
        _check_input(input)
        act = _activation(self.activation, input.shape[1])
        g = _one_hot_target(input, target)
        p = _probs(input, act)
        if act == "softmax" and not self.include_background:
            p, g = p[:, 1:], g[:, 1:]
        dims = tuple(range(2, input.ndim))
        q, h = 1.0 - p, 1.0 - g
        k = 1.0 if self.literal else 2.0
        fg = (k * (p * g).sum(dims) + self.eps) / (p.sum(dims) + g.sum(dims) + self.eps).clamp_min(1e-12)
        bg = (k * (q * h).sum(dims) + self.eps) / (q.sum(dims) + h.sum(dims) + self.eps).clamp_min(1e-12)
        loss = 1.0 - fg - bg if self.literal else 1.0 - 0.5 * (fg + bg)
        return _reduce(loss, self.reduction)


def _alpha_vector(alpha: float | Sequence[float] | None, c: int, act: str) -> torch.Tensor | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        a = float(alpha)
        if not 0 <= a <= 1:
            raise ParameterError(f"a scalar alpha must be in [0, 1], got {alpha}")
        if act == "sigmoid":
            return torch.tensor([a])
        return torch.tensor([1.0 - a] + [a] * (c - 1))
    vec = torch.as_tensor([float(v) for v in alpha])
    if act == "sigmoid":
        raise ParameterError("with sigmoid, alpha is a scalar foreground weight (background 1 - alpha)")
    if vec.numel() != c:
        raise ParameterError(f"alpha has {vec.numel()} class weights but the input has {c} channels")
    return vec


def _weight_tensor(weight: Any, input: torch.Tensor, loss_shape: tuple[int, ...]) -> torch.Tensor:
    w = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(np.asarray(weight))
    w = w.to(device=input.device, dtype=input.dtype)
    n = input.shape[0]
    spatial = tuple(input.shape[2:])
    # accept (N, *S), (N, 1, *S) and, for sigmoid, (N, C, *S)
    if tuple(w.shape) == (n,) + spatial and len(loss_shape) == input.ndim:
        w = w.unsqueeze(1)
    elif tuple(w.shape) == (n, 1) + spatial and len(loss_shape) == input.ndim - 1:
        w = w[:, 0]
    try:
        torch.broadcast_shapes(tuple(w.shape), loss_shape)
        ok = len(w.shape) == len(loss_shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise DataError(
            f"weight shape {tuple(w.shape)} does not fit input shape {tuple(input.shape)}: "
            f"expected {(n,) + spatial} or {(n, 1) + spatial}"
        )
    if not bool(torch.isfinite(w).all()):
        raise DataError("weight holds non-finite values")
    return w


def _focal_terms(
    input: torch.Tensor,
    target: Any,
    act: str,
    alpha: float | Sequence[float] | None,
    gamma: float,
    weight: Any = None,
) -> torch.Tensor:
    """Unreduced focal loss: (N, C, *S) for sigmoid, (N, *S) for softmax."""
    g = _one_hot_target(input, target)
    c = input.shape[1]
    a = _alpha_vector(alpha, c, act)
    if act == "sigmoid":
        logp = F.logsigmoid(input)
        log1mp = F.logsigmoid(-input)
        # (1 - p)^gamma as exp(gamma * log(1 - p)) keeps the gradient finite at p = 1
        pos = torch.exp(gamma * log1mp) * logp
        neg = torch.exp(gamma * logp) * log1mp
        if a is not None:
            a1 = a.to(input)
            loss = -(a1 * g * pos + (1.0 - a1) * (1.0 - g) * neg)
        else:
            loss = -(g * pos + (1.0 - g) * neg)
    else:
        logp = F.log_softmax(input, dim=1)
        per_class = logp * g
        if gamma != 0:
            # log(1 - p) via expm1 stays accurate near p = 1; the clamp keeps log finite at p == 1
            log1mp = torch.log((-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny))
            per_class = torch.exp(gamma * log1mp) * per_class
        if a is not None:
            shape = (1, c) + (1,) * (input.ndim - 2)
            per_class = per_class * a.to(input).reshape(shape)
        loss = -per_class.sum(1)
    if weight is not None:
        loss = loss * _weight_tensor(weight, input, tuple(loss.shape))
    return loss


class FocalLoss(nn.Module):
    r"""Focal loss (Lin et al. 2017; luo2020 Eq. 2, guo2021 Eq. 6).

    Binary / multi-label (sigmoid), per voxel and channel:

    .. math:: FL = -\alpha\, y (1-p)^\gamma \log p - (1-\alpha)(1-y)\, p^\gamma \log(1-p)

    Multi-class (softmax), per voxel: :math:`FL = -\alpha_t (1-p_t)^\gamma \log p_t`. With
    ``alpha=None`` no class weight is applied (both sides weight 1), so at ``gamma=0`` the loss
    is exactly ``F.binary_cross_entropy_with_logits`` (sigmoid) or ``F.cross_entropy``
    (softmax, one-hot or index targets).

    Parameters
    ----------
    alpha : float or sequence of float, optional
        Sigmoid: foreground weight in [0, 1] (background gets 1 - alpha). Softmax: one weight
        per class, or a scalar meaning 1 - alpha for class 0 and alpha for the others.
    gamma : float, default 2.0
        Focusing exponent, >= 0.
    activation : {"auto", "sigmoid", "softmax"}
    reduction : {"mean", "sum", "none"}
        The mean is over all voxels (and channels for sigmoid) of the weighted terms; "none"
        returns ``(N, C, *S)`` (sigmoid) or ``(N, *S)`` (softmax).

    Notes
    -----
    ``forward(input, target, weight=None)``: ``weight`` is an optional per-voxel factor of shape
    ``(N, *S)`` or ``(N, 1, *S)`` (or ``input``'s shape for sigmoid) multiplying each term before
    the reduction.
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | None = None,
        gamma: float = 2.0,
        activation: str = "auto",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(activation, reduction)
        if gamma < 0:
            raise ParameterError(f"gamma must be >= 0, got {gamma}")
        self.alpha = alpha
        self.gamma = float(gamma)
        self.activation = activation
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: Any, weight: Any = None) -> torch.Tensor:
        _check_input(input)
        act = _activation(self.activation, input.shape[1])
        loss = _focal_terms(input, target, act, self.alpha, self.gamma, weight)
        return _reduce(loss, self.reduction)


class DiceFocalLoss(nn.Module):
    r"""luo2020's combined loss (its Eq. 3): :math:`\beta\,L_{Dice} + (1-\beta)\,L_{Focal}`.

    :math:`L_{Dice}` is :class:`TwoSidedDiceLoss` (Eq. 1) and :math:`L_{Focal}` is
    :class:`FocalLoss` (Eq. 2). The paper gives no values for :math:`\alpha, \beta, \gamma`; the
    defaults are Lin et al.'s focal settings (0.25, 2) and an even mix (0.5).

    Parameters
    ----------
    beta : float, default 0.5
        Weight of the Dice term, in [0, 1].
    alpha, gamma : see :class:`FocalLoss` (defaults 0.25, 2.0).
    eps, literal : see :class:`TwoSidedDiceLoss` (defaults 0.5, False).
    activation : {"auto", "sigmoid", "softmax"}
    reduction : {"mean", "sum"}
    """

    def __init__(
        self,
        beta: float = 0.5,
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        eps: float = 0.5,
        activation: str = "auto",
        literal: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not 0 <= beta <= 1:
            raise ParameterError(f"beta must be in [0, 1], got {beta}")
        if reduction == "none":
            raise ParameterError("DiceFocalLoss supports reduction 'mean' or 'sum'")
        self.beta = float(beta)
        self.dice = TwoSidedDiceLoss(eps=eps, activation=activation, literal=literal, reduction=reduction)
        self.focal = FocalLoss(alpha=alpha, gamma=gamma, activation=activation, reduction=reduction)

    def forward(self, input: torch.Tensor, target: Any, weight: Any = None) -> torch.Tensor:
        return self.beta * self.dice(input, target) + (1.0 - self.beta) * self.focal(input, target, weight)


def boundary_distance_weights(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    r"""guo2021's per-voxel focal weights (its Eq. 7): :math:`d(v, \text{edge}) + 1` inside, 1 outside.

    :math:`d` is the Euclidean distance from a tumour voxel to the nearest non-tumour voxel
    (``scipy.ndimage.distance_transform_edt``), so tumour voxels on the boundary get
    :math:`d = 1` voxel (weight 2), matching the paper's "inside the tumour the minimum distance
    to the boundary is not less than 1". Space beyond the array edge counts as non-tumour.

    Parameters
    ----------
    mask : ndarray of bool or {0, 1}, shape (z, y, x) or (y, x)
        Reference tumour mask of one sample (the whole image for fidelity: guo2021 computes the
        map on the image, then samples patches).
    spacing : sequence of float, optional
        Voxel size in mm in the array's axis order; then :math:`d` is in mm (and the "+1" is
        1 mm). Default: voxel units.

    Returns
    -------
    ndarray of float64, same shape as ``mask``
        1.0 outside the mask, d + 1 inside; all ones for an empty mask.
    """
    from npcrepro.metrics.inputs import as_mask, as_spacing

    m = as_mask(mask, "mask")
    sp = as_spacing(spacing, m.ndim)
    out = np.ones(m.shape, dtype=np.float64)
    if not m.any():
        return out
    padded = np.pad(m, 1, mode="constant", constant_values=False)
    d = ndimage.distance_transform_edt(padded, sampling=sp)[(slice(1, -1),) * m.ndim]
    out[m] = d[m] + 1.0
    return out


class DistanceWeightedFocalLoss(nn.Module):
    r"""guo2021's focal loss weighted by the distance to the tumour boundary (Eq. 6 with Eq. 7).

    .. math:: FL = -\alpha_v (1-p_t)^\gamma \log p_t, \qquad
              \alpha_v = \begin{cases} d(v, \text{edge}) + 1 & v \in \text{tumour} \\
              1 & \text{otherwise} \end{cases}

    The per-voxel :math:`\alpha_v` replaces the class weight. Pass it precomputed as
    ``weight=`` (e.g. from :func:`boundary_distance_weights` on the whole image, cropped like the
    patch); without ``weight`` it is computed from ``target`` once per sample (on CPU with
    SciPy, the patch edge counting as non-tumour). The tumour is the foreground channel for
    sigmoid, and the union of the classes >= 1 for softmax (guo2021 uses a 2-class softmax).

    Parameters
    ----------
    gamma : float, default 2.0
        Focusing exponent (guo2021: :math:`\gamma > 0`, value not given).
    spacing : sequence of float, optional
        Voxel size in mm used when the weights are computed here; default voxel units.
    activation : {"auto", "sigmoid", "softmax"}
    reduction : {"mean", "sum", "none"}
    """

    def __init__(
        self,
        gamma: float = 2.0,
        spacing: Sequence[float] | None = None,
        activation: str = "auto",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(activation, reduction)
        if gamma < 0:
            raise ParameterError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.spacing = spacing
        self.activation = activation
        self.reduction = reduction

    def weights_from_target(self, input: torch.Tensor, target: Any) -> torch.Tensor:
        """Per-voxel weights ``(N, *spatial)`` from the target's tumour mask."""
        _check_input(input)
        act = _activation(self.activation, input.shape[1])
        g = _one_hot_target(input, target)
        tumour = g[:, 0] > 0.5 if act == "sigmoid" else g[:, 1:].sum(1) > 0.5
        masks = tumour.detach().cpu().numpy()
        w = np.stack([boundary_distance_weights(m, self.spacing) for m in masks])
        return torch.as_tensor(w, dtype=input.dtype, device=input.device)

    def forward(self, input: torch.Tensor, target: Any, weight: Any = None) -> torch.Tensor:
        _check_input(input)
        act = _activation(self.activation, input.shape[1])
        if act == "sigmoid" and input.shape[1] != 1:
            raise DataError("DistanceWeightedFocalLoss with sigmoid needs a single foreground channel")
        if weight is None:
            weight = self.weights_from_target(input, target)
        loss = _focal_terms(input, target, act, None, self.gamma, weight)
        return _reduce(loss, self.reduction)


# ----------------------------------------------------------------------------- the leaderboard's loss
class DiceCELoss(nn.Module):
    """Soft Dice (eps 1, per sample) + cross-entropy on the foreground: the leaderboard's common loss.

    ``input``: logits (N, 1, ...) (sigmoid) or (N, 2, ...) (softmax, channel 1 = foreground), or a
    list/tuple of such (deep supervision: the mean over outputs). An output on a coarser grid than
    ``target`` is compared with the target area-averaged to its grid (a soft target: the share of
    tumour in each coarse voxel). ``target``: (N, 1, ...) {0, 1}. Returns a scalar."""

    def forward(self, input, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, (list, tuple)):
            return torch.stack([self.forward(o, target) for o in input]).mean()
        t = target.float()
        if input.shape[2:] != t.shape[2:]:
            pool = F.adaptive_avg_pool2d if t.ndim == 4 else F.adaptive_avg_pool3d
            t = pool(t, input.shape[2:])
        if input.shape[1] == 1:
            p = torch.sigmoid(input)
            ce = F.binary_cross_entropy_with_logits(input, t)
        elif input.shape[1] == 2:
            p = torch.softmax(input, 1)[:, 1:2]
            ce = F.cross_entropy(input, torch.cat([1 - t, t], 1))
        else:
            raise DataError(f"DiceCELoss: expected 1 or 2 output channels, got {input.shape[1]}")
        dims = tuple(range(1, p.ndim))
        dice = 1 - (2 * (p * t).sum(dims) + 1) / (p.sum(dims) + t.sum(dims) + 1)
        return ce + dice.mean()
