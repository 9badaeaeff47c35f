"""A plain 3D CNN: full-resolution conv-BN-ReLU layers, no pooling, no skips (guo2021's CNN baseline)."""
from __future__ import annotations

import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import ConvNormAct, check_5d, conv, init_weights

__all__ = ["PlainCNN3D", "plaincnn3d"]


class PlainCNN3D(nn.Module):
    """The plain CNN baseline: ``depth`` 3x3x3 conv-BN-ReLU layers of ``width`` channels at full
    resolution (no pooling, no skips), then a 1x1 conv to ``n_classes`` logits.

    Shapes: (N, in_channels, D, H, W) -> (N, n_classes, D, H, W).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, *, width: int = 16, depth: int = 6,
                 norm: str | None = "batch", act: str | None = "relu", init: str | None = "kaiming"):
        super().__init__()
        if depth < 1 or width < 1:
            raise ParameterError(f"depth and width must be positive, got {depth}, {width}")
        chans = [in_channels] + [width] * depth
        self.body = nn.Sequential(*(ConvNormAct(3, a, b, 3, norm=norm, act=act)
                                    for a, b in zip(chans[:-1], chans[1:])))
        self.head = conv(3, width, n_classes, 1)
        self.receptive_field = 2 * depth + 1
        if init:
            init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_5d(x, "PlainCNN3D")
        return self.head(self.body(x))


@register("plaincnn3d")
def plaincnn3d(in_channels: int = 1, n_classes: int = 2, **kwargs) -> PlainCNN3D:
    """The plain 3D CNN baseline of guo2021's Table 1."""
    return PlainCNN3D(in_channels, n_classes, **kwargs)
