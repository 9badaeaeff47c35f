"""luo2020's losses: Eq. (3) (Dice + focal) on one sigmoid output per structure with a batch Dice, applied
to every stage's output of the cascade ("the loss function of each step")."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from npcrepro.errors import DataError, ParameterError
from npcrepro.losses import DiceFocalLoss

__all__ = ["BatchDiceFocalLoss", "StagewiseLoss"]


class BatchDiceFocalLoss(DiceFocalLoss):
    """luo2020's Eq. (3) on sigmoid outputs, one per structure, with an optional batch Dice.

    :class:`DiceFocalLoss` (``activation="sigmoid"``) whose Dice sums run, with ``batch_dice=True``
    (default), over every pixel of the batch per structure -- how a Keras Dice over the batch tensor
    reads "n = 1..N" -- instead of per slice: a structure absent from one slice then does not
    contribute a term that can only push its probabilities to zero. ``literal``: Eq. (1) as printed
    (:class:`TwoSidedDiceLoss`).

    Shapes: ``input`` and ``target`` (N, K, H, W); returns a scalar.
    """

    def __init__(self, beta: float = 0.5, alpha: float = 0.25, gamma: float = 2.0, eps: float = 0.5,
                 batch_dice: bool = True, literal: bool = False) -> None:
        super().__init__(beta=beta, alpha=alpha, gamma=gamma, eps=eps, activation="sigmoid", literal=literal)
        self.batch_dice = bool(batch_dice)

    def forward(self, input: torch.Tensor, target: Any, weight: Any = None) -> torch.Tensor:
        if input.dim() != 4:
            raise DataError(f"BatchDiceFocalLoss expects (N, K, H, W) logits, got shape {tuple(input.shape)}")
        if self.batch_dice:  # (N, K, H, W) -> (1, K, N, H, W): one Dice per structure over the batch
            d = self.dice(input.transpose(0, 1).unsqueeze(0), target.transpose(0, 1).unsqueeze(0))
        else:
            d = self.dice(input, target)
        return self.beta * d + (1.0 - self.beta) * self.focal(input, target, weight)


class StagewiseLoss(nn.Module):
    """Apply ``base`` to every stage's output and average (luo2020: "the loss function of each step").

    ``forward(output, target)``: ``output`` is a logit tensor or a tuple/list of them (a cascade with
    deep supervision returns ``(final, rough)`` in training mode); ``weights`` (default equal) are
    normalised to sum to 1.
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.base = base
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, output, target) -> torch.Tensor:
        outs = list(output) if isinstance(output, (list, tuple)) else [output]
        w = self.weights[: len(outs)] if self.weights is not None else [1.0] * len(outs)
        if len(w) != len(outs) or sum(w) <= 0:
            raise ParameterError(f"StagewiseLoss: {len(outs)} outputs but weights {self.weights}")
        total = sum(wi * self.base(o, target) for wi, o in zip(w, outs))
        return total / sum(w)
