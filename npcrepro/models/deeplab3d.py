"""A DeepLab-style 3D network: residual encoder, an atrous stage, 3D ASPP and a DeepLabv3+ decoder
(guo2021's "Deeplab" baseline; the 2D DeepLabv3+ of xue2020 is :mod:`npcrepro.models.deeplab`)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.atrous import atrous_cna
from npcrepro.models.blocks import ConvNormAct, check_5d, conv, init_weights, norm_layer, padded_forward

__all__ = ["ASPP3D", "DeepLab3D", "deeplab3d"]


class _ResBlock3D(nn.Module):
    """Two 3x3x3 conv-BN(-ReLU) with a shortcut (1x1 projection when channels or stride change);
    the first conv carries ``stride`` and both carry ``dilation``."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: str | None = "batch"):
        super().__init__()
        if stride != 1 and dilation != 1:
            raise ParameterError("a residual block strides or dilates, not both")
        self.a = (ConvNormAct(3, cin, cout, 3, stride, norm=norm) if dilation == 1
                  else atrous_cna(cin, cout, dilation, norm, "relu"))
        self.b = atrous_cna(cout, cout, dilation, norm, None)
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(conv(3, cin, cout, 1, stride, padding=0, bias=norm is None),
                                   norm_layer(3, norm, cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.b(self.a(x)) + self.skip(x))


class ASPP3D(nn.Module):
    """3D atrous spatial pyramid pooling (DeepLabv3): a 1x1 branch, one 3x3x3 branch per rate and an
    image-pooling branch (global average, 1x1, broadcast back), concatenated and projected by a 1x1
    conv-BN-ReLU (+ dropout).

    (N, cin, D, H, W) -> (N, cout, D, H, W).
    """

    def __init__(self, cin: int, cout: int, rates: Sequence[int] = (1, 2, 3), *,
                 image_pooling: bool = True, norm: str | None = "batch", dropout: float = 0.1):
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList([ConvNormAct(3, cin, cout, 1, norm=norm)] + [
            atrous_cna(cin, cout, r, norm, "relu") for r in self.rates])
        # no normalisation on the pooled 1-voxel map (BatchNorm there fails for a batch of one)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), conv(3, cin, cout, 1, padding=0, bias=True),
                                  nn.ReLU(inplace=True)) if image_pooling else None
        n = len(self.branches) + (1 if image_pooling else 0)
        self.project = nn.Sequential(ConvNormAct(3, n * cout, cout, 1, norm=norm),
                                     nn.Dropout3d(dropout) if dropout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        if self.pool is not None:
            feats.append(self.pool(x).expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(feats, dim=1))


class DeepLab3D(nn.Module):
    """A DeepLab-style 3D network (the DeepLabv3+ pattern on volumes).

    Encoder: stem residual block (``width`` channels, stride 1: the decoder's low-level features),
    residual stages with stride 2 (``2 * width``) and stride 2 (``4 * width``), then an atrous stage
    (``4 * width``, dilation 2, stride 1): output stride 4. ASPP on the encoder output
    (``aspp_channels``, rates ``rates``, image pooling). Decoder: trilinear upsampling to the input
    size, concat with the 1x1-reduced low-level features (``low_channels``), two 3x3x3 conv-BN-ReLU,
    1x1 head.

    Shapes: (N, in_channels, D, H, W) -> (N, n_classes, D, H, W) logits, any D, H, W.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, *, width: int = 16,
                 aspp_channels: int = 32, low_channels: int = 8, rates: Sequence[int] = (1, 2, 3),
                 image_pooling: bool = True, norm: str | None = "batch", dropout: float = 0.1,
                 init: str | None = "kaiming"):
        super().__init__()
        w = int(width)
        self.stem = nn.Sequential(ConvNormAct(3, in_channels, w, 3, norm=norm), _ResBlock3D(w, w, norm=norm))
        self.enc = nn.Sequential(_ResBlock3D(w, 2 * w, stride=2, norm=norm),
                                 _ResBlock3D(2 * w, 4 * w, stride=2, norm=norm),
                                 _ResBlock3D(4 * w, 4 * w, dilation=2, norm=norm))
        self.aspp = ASPP3D(4 * w, aspp_channels, rates, image_pooling=image_pooling, norm=norm,
                           dropout=dropout)
        self.low = ConvNormAct(3, w, low_channels, 1, norm=norm)
        self.decoder = nn.Sequential(
            ConvNormAct(3, aspp_channels + low_channels, aspp_channels, 3, norm=norm),
            ConvNormAct(3, aspp_channels, aspp_channels, 3, norm=norm))
        self.head = conv(3, aspp_channels, n_classes, 1)
        self.output_stride = 4
        if init:
            init_weights(self, init)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.stem(x)
        high = self.aspp(self.enc(low))
        up = F.interpolate(high, size=low.shape[2:], mode="trilinear", align_corners=False)
        return self.head(self.decoder(torch.cat([up, self.low(low)], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_5d(x, "DeepLab3D")
        return padded_forward(x, self.output_stride, self._forward)


@register("deeplab3d")
def deeplab3d(in_channels: int = 1, n_classes: int = 2, **kwargs) -> DeepLab3D:
    """The DeepLab-style 3D baseline of guo2021's Table 1."""
    return DeepLab3D(in_channels, n_classes, **kwargs)
