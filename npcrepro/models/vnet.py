"""V-Net (Milletari et al., 3DV 2016): 5x5x5 convolutions, PReLU, residual stages, strided
convolutions down and transposed convolutions up (guo2021's V-Net baseline)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import (ConvNormAct, act_layer, check_5d, conv, conv_transpose, init_weights,
                                    norm_layer, padded_forward)

__all__ = ["VNet", "vnet3d"]


class _VStage(nn.Module):
    """A V-Net stage: ``n_convs`` 5x5x5 conv(-norm)-PReLU; the stage input (channel-projected when
    needed) is added to the output (residual learning)."""

    def __init__(self, cin: int, cout: int, n_convs: int, kernel_size: int = 5, norm: str | None = None,
                 act: str = "prelu"):
        super().__init__()
        convs = []
        for i in range(n_convs):
            convs.append(ConvNormAct(3, cin if i == 0 else cout, cout, kernel_size, norm=norm,
                                     act=act if i < n_convs - 1 else None))
        self.convs = nn.Sequential(*convs)
        self.skip = nn.Identity() if cin == cout else conv(3, cin, cout, 1, padding=0)
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.skip(x))


class VNet(nn.Module):
    """V-Net (Milletari et al., 3DV 2016), with configurable depth.

    Parameters
    ----------
    widths : sequence of int
        Channels per level (paper: 16, 32, 64, 128, 256; default ``(16, 32, 64)`` for 8-voxel blocks).
    n_convs : sequence of int
        5x5x5 convolutions per down stage (paper: 1, 2, 3, 3, 3); the up stage of a level uses the same
        count.
    kernel_size : int
        5 (paper).
    norm : None (paper) | "batch" | ...
    act : "prelu" (paper)

    Down: 2x2x2 stride-2 convolution doubling the channels; up: 2x2x2 stride-2 transposed convolution,
    concatenation with the skip, a residual stage; 1x1 head.

    Shapes: (N, in_channels, D, H, W) -> (N, n_classes, D, H, W) logits, any D, H, W.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, *, widths: Sequence[int] = (16, 32, 64),
                 n_convs: Sequence[int] = (1, 2, 3), kernel_size: int = 5, norm: str | None = None,
                 act: str = "prelu", init: str | None = "kaiming"):
        super().__init__()
        widths, n_convs = [int(w) for w in widths], [int(n) for n in n_convs]
        if len(widths) < 2 or len(n_convs) != len(widths):
            raise ParameterError(f"V-Net needs >= 2 levels and one n_convs entry per width, got "
                                 f"widths={widths}, n_convs={n_convs}")
        self.widths = widths
        self.inp = _VStage(in_channels, widths[0], n_convs[0], kernel_size, norm, act)
        self.downs = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i in range(1, len(widths)):
            self.downs.append(nn.Sequential(conv(3, widths[i - 1], widths[i], 2, 2, padding=0,
                                                 bias=norm is None),
                                            norm_layer(3, norm, widths[i]), act_layer(act)))
            self.stages.append(_VStage(widths[i], widths[i], n_convs[i], kernel_size, norm, act))
        self.ups = nn.ModuleList()
        self.up_stages = nn.ModuleList()
        c = widths[-1]
        for i in range(len(widths) - 1, 0, -1):
            self.ups.append(nn.Sequential(conv_transpose(3, c, widths[i - 1], 2, 2),
                                          norm_layer(3, norm, widths[i - 1]), act_layer(act)))
            c = 2 * widths[i - 1]
            self.up_stages.append(_VStage(c, c, n_convs[i - 1], kernel_size, norm, act))
        self.head = conv(3, c, n_classes, 1)
        if init:
            init_weights(self, init)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inp(x)]
        for down, stage in zip(self.downs, self.stages):
            skips.append(stage(down(skips[-1])))
        y = skips.pop()
        for up, stage in zip(self.ups, self.up_stages):
            y = stage(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_5d(x, "VNet")
        return padded_forward(x, self.size_multiple, self._forward)


@register("vnet3d")
def vnet3d(in_channels: int = 1, n_classes: int = 2, **kwargs) -> VNet:
    """The V-Net baseline of guo2021's Table 1 (the paper's did not converge)."""
    return VNet(in_channels, n_classes, **kwargs)
