"""guo2021's loss: the distance-weighted focal loss (Eq. 6-7) with targets that carry their weights."""
from __future__ import annotations

import torch
from torch import nn

from npcrepro.errors import DataError
from npcrepro.losses import DistanceWeightedFocalLoss

__all__ = ["GuoLoss"]


class GuoLoss(nn.Module):
    """guo2021's loss: :class:`DistanceWeightedFocalLoss` (Eq. 6-7) on 2-class softmax logits, with
    targets that carry their weights: ``target`` (N, 2, ...) = (tumour mask, Eq. 7 weight), as
    :class:`~npcrepro.chapters.guo2021.samplers.MultiViewBlocks` makes them."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.focal = DistanceWeightedFocalLoss(gamma=gamma, activation="softmax")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim < 2 or target.shape[1] != 2:
            raise DataError(f"GuoLoss expects targets (N, 2, ...) = (mask, weight), "
                            f"got {tuple(target.shape)}")
        return self.focal(logits, target[:, :1].round(), weight=target[:, 1])
