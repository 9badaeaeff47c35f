"""FCN-8s (Long, Shelhamer and Darrell, CVPR 2015), written for this project, 2D.

The baseline "FCN-8" of luo2020's Table 1. A VGG-style encoder (five blocks of 3x3 convolutions,
each followed by 2x2 max pooling, so the deepest map is 1/32 of the input), the classifier turned
into convolutions ("fc6", "fc7"), a 1x1 score layer, and the FCN-8s decoder:

    score(fc7) at 1/32 --x2--> + score(pool4) at 1/16 --x2--> + score(pool3) at 1/8 --x8--> logits

The upsamplings are transposed convolutions initialised to bilinear interpolation and learnt; the
pool3/pool4 score layers start at zero (both as in the original). It is not torchvision's
``fcn_resnet50`` (a ResNet backbone with a different head).

Deviations from the 2015 network, each a constructor argument:

* no ImageNet weights (none are available offline, and luo2020 does not say it used them); so
  ``norm="batch"`` by default, which makes a 16-layer VGG trainable from scratch (``norm=None``
  gives the original plain convolutions);
* "same" padding plus padding the input to a multiple of 32 and cropping the output back,
  instead of the original 100-pixel input padding and offset crops;
* configurable widths and fc size; the defaults are VGG16's ``(64, 128, 256, 512, 512)``,
  ``(2, 2, 3, 3, 3)`` convolutions per block and a 7x7, 4096-channel fc6.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import ConvNormAct, conv, conv_transpose, crop_to, init_weights, pad_to_multiple

__all__ = ["FCN8s", "fcn8s", "bilinear_kernel"]


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights (channels, channels, k, k) of a transposed conv that interpolates bilinearly per channel."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    w = np.zeros((channels, channels, kernel_size, kernel_size), np.float32)
    w[range(channels), range(channels)] = filt
    return torch.from_numpy(w)


def _upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = conv_transpose(2, channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
        up.bias.zero_()
    return up


class FCN8s(nn.Module):
    """FCN-8s with a VGG-style encoder.

    Parameters
    ----------
    in_channels, n_classes : int
    widths : sequence of 5 int
        Channels of the five VGG blocks.
    convs_per_block : sequence of 5 int
    fc_channels : int
        Width of fc6/fc7 (4096 in VGG16).
    fc_kernel : int
        Kernel of fc6 (7 in VGG16; "same" padding here).
    dropout : float
        Dropout after fc6 and fc7 (0.5 in the original).
    norm, act : see :mod:`npcrepro.models.blocks`
    pad_input : bool
        Pad inputs to a multiple of 32 and crop the output back.
    init : weight init of the convolutions (the upsamplings stay bilinear, the skip scores zero).

    Shapes: (N, in_channels, H, W) -> (N, n_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 21,
                 widths: Sequence[int] = (64, 128, 256, 512, 512),
                 convs_per_block: Sequence[int] = (2, 2, 3, 3, 3), *, fc_channels: int = 4096,
                 fc_kernel: int = 7, dropout: float = 0.5, norm: str | None = "batch",
                 act: str | None = "relu", pad_input: bool = True, init: str | None = "kaiming"):
        super().__init__()
        widths = [int(w) for w in widths]
        convs_per_block = [int(c) for c in convs_per_block]
        if len(widths) != 5 or len(convs_per_block) != 5 or min(widths + convs_per_block) < 1:
            raise ParameterError(f"FCN-8s needs 5 positive widths and 5 positive conv counts, got "
                                 f"{widths} and {convs_per_block}")
        if fc_kernel < 1 or fc_kernel % 2 == 0:
            raise ParameterError(f"fc_kernel must be odd, got {fc_kernel}")
        self.in_channels, self.n_classes, self.pad_input = in_channels, n_classes, pad_input
        blocks, cin = [], in_channels
        for w, n in zip(widths, convs_per_block):
            layers = []
            for _ in range(n):
                layers.append(ConvNormAct(2, cin, w, 3, norm=norm, act=act))
                cin = w
            layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        drop = (lambda: nn.Dropout2d(dropout)) if dropout else nn.Identity
        self.fc = nn.Sequential(ConvNormAct(2, widths[-1], fc_channels, fc_kernel, norm=norm, act=act), drop(),
                                ConvNormAct(2, fc_channels, fc_channels, 1, norm=norm, act=act), drop())
        self.score_fr = conv(2, fc_channels, n_classes, 1)
        self.score_pool4 = conv(2, widths[3], n_classes, 1)
        self.score_pool3 = conv(2, widths[2], n_classes, 1)
        if init:
            init_weights(self, init)
        for s in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(s.weight)
            nn.init.zeros_(s.bias)
        self.up2 = _upsample(n_classes, 2)
        self.up2_pool4 = _upsample(n_classes, 2)
        self.up8 = _upsample(n_classes, 8)

    size_multiple = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"FCN-8s expects a 4D tensor (N, C, H, W), got shape {tuple(x.shape)}")
        size = None
        if self.pad_input:
            x, size = pad_to_multiple(x, self.size_multiple)
        elif x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"FCN-8s without pad_input needs H, W divisible by 32, got {tuple(x.shape[2:])}")
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        pool3, pool4, pool5 = feats[2], feats[3], feats[4]
        y = self.up2(self.score_fr(self.fc(pool5))) + self.score_pool4(pool4)
        y = self.up2_pool4(y) + self.score_pool3(pool3)
        y = self.up8(y)
        return crop_to(y, size) if size is not None else y


@register("fcn8s")
def fcn8s(in_channels: int = 1, n_classes: int = 1, widths: Sequence[int] = (64, 128, 256, 512, 512),
          **kwargs) -> FCN8s:
    """FCN-8s (VGG16-style encoder): (N, C, H, W) -> (N, n_classes, H, W) logits."""
    return FCN8s(in_channels, n_classes, widths, **kwargs)
