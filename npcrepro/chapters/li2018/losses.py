"""li2018's losses: Caffe's summed sigmoid cross-entropy (the faithful recipe; the paper names none) and
the working recipe's cross-entropy + soft Dice."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.losses import DiceLoss

__all__ = ["BCEDiceLoss", "CaffeSigmoidLoss"]


class BCEDiceLoss(nn.Module):
    """Mean binary cross-entropy + soft Dice (sigmoid; targets may be soft): li2018's working loss."""

    def __init__(self, eps: float = 1.0):
        super().__init__()
        self.dice = DiceLoss(eps=eps, activation="sigmoid")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(input, target) + self.dice(input, target)


class CaffeSigmoidLoss(nn.Module):
    """Caffe's ``SigmoidCrossEntropyLoss``: cross-entropy summed over pixels, divided by the batch
    (li2018's faithful loss; the paper names none)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(input, target, reduction="sum") / input.shape[0]
