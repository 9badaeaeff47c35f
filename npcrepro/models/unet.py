"""The plain U-Net (Ronneberger 2015; 3D: Cicek 2016), 2D and 3D, configurable depth and widths.

It is the baseline of several papers (xue2020's comparison, chen2020's 2D/3D U-Net rows, luo2020's
stage-1 backbone) and the template chapter's model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import DoubleConv, Down, Up, conv, crop_to, init_weights, pad_to_multiple

__all__ = ["UNet", "unet2d", "unet3d"]


class UNet(nn.Module):
    """U-Net encoder-decoder.

    Parameters
    ----------
    dims : 2 or 3
    in_channels, n_classes : int
        Input channels; output channels (logits, one per class or structure).
    widths : sequence of int
        Channels per resolution level, top to bottom; ``len(widths)`` levels, i.e.
        ``len(widths) - 1`` poolings. Default (32, 64, 128, 256).
    norm, act : str or None
        See :mod:`npcrepro.models.blocks`.
    dropout : float
        Dropout inside the two deepest stages.
    up : "transpose" | "nearest" | "linear"
    pool : "max" | "avg" | "stride"
    pad_input : bool
        Pad inputs to a multiple of ``2**(levels-1)`` and crop the output back, so any size works.
    init : "kaiming" | "xavier" | "gaussian" | None

    Shapes: (N, in_channels, *S) -> (N, n_classes, *S) for any spatial size S.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, n_classes: int = 1,
                 widths: Sequence[int] = (32, 64, 128, 256), *, norm: str | None = "batch",
                 act: str | None = "relu", dropout: float = 0.0, up: str = "transpose",
                 pool: str = "max", pad_input: bool = True, init: str | None = "kaiming"):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ParameterError(f"widths needs at least two positive entries, got {widths}")
        self.dims, self.in_channels, self.n_classes = dims, in_channels, n_classes
        self.widths = widths
        self.pad_input = pad_input
        n = len(widths)
        deep = lambda i: dropout if i >= n - 2 else 0.0  # noqa: E731
        self.stem = DoubleConv(dims, in_channels, widths[0], norm=norm, act=act)
        self.down = nn.ModuleList(Down(dims, widths[i - 1], widths[i], pool=pool, norm=norm, act=act,
                                       dropout=deep(i)) for i in range(1, n))
        self.up = nn.ModuleList(Up(dims, widths[i], widths[i - 1], widths[i - 1], mode=up, norm=norm,
                                   act=act) for i in range(n - 1, 0, -1))
        self.head = conv(dims, widths[0], n_classes, 1)
        if init:
            init_weights(self, init)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"{self.dims}D U-Net expects a {self.dims + 2}D tensor (N, C, ...), "
                             f"got shape {tuple(x.shape)}")
        size = None
        if self.pad_input:
            x, size = pad_to_multiple(x, self.size_multiple)
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for u in self.up:
            y = u(y, skips.pop())
        y = self.head(y)
        return crop_to(y, size) if size is not None else y


@register("unet2d")
def unet2d(in_channels: int = 1, n_classes: int = 1, widths: Sequence[int] = (32, 64, 128, 256),
           **kwargs) -> UNet:
    """2D U-Net: (N, C, H, W) -> (N, K, H, W) logits."""
    return UNet(2, in_channels, n_classes, widths, **kwargs)


@register("unet3d")
def unet3d(in_channels: int = 1, n_classes: int = 1, widths: Sequence[int] = (16, 32, 64, 128),
           **kwargs) -> UNet:
    """3D U-Net: (N, C, D, H, W) -> (N, K, D, H, W) logits."""
    return UNet(3, in_channels, n_classes, widths, **kwargs)
