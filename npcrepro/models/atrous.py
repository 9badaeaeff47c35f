"""Atrous (dilated) 3D convolution, computed on the CPU in its space-to-batch form.

Used by guo2021's ACDNet (ASPP dense layers) and the DeepLab-style 3D network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models.blocks import act_layer, norm_layer

__all__ = ["AtrousConv3d", "atrous_cna"]


def _space_to_batch(x: torch.Tensor, r: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(N, C, D, H, W) -> (N * r**3, C, D', H', W'): the r**3 interleaved sub-grids of ``x`` (zero-padded
    at the end to multiples of ``r``) stacked along the batch axis."""
    n, c, d, h, w = x.shape
    pads = ((-d) % r, (-h) % r, (-w) % r)
    if any(pads):
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
    d2, h2, w2 = (d + pads[0]) // r, (h + pads[1]) // r, (w + pads[2]) // r
    x = x.reshape(n, c, d2, r, h2, r, w2, r).permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(n * r ** 3, c, d2, h2, w2), (d, h, w)


def _batch_to_space(y: torch.Tensor, r: int, size: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`_space_to_batch` (crops the padding)."""
    nb, c, d2, h2, w2 = y.shape
    n = nb // r ** 3
    y = y.reshape(n, r, r, r, c, d2, h2, w2).permute(0, 4, 5, 1, 6, 2, 7, 3)
    y = y.reshape(n, c, d2 * r, h2 * r, w2 * r)
    return y[:, :, :size[0], :size[1], :size[2]]


class AtrousConv3d(nn.Conv3d):
    """A 3x3x3 (odd-kernel) convolution with dilation ``rate`` and "same" zero padding.

    Same parameters and result as ``nn.Conv3d(cin, cout, k, padding=rate * (k // 2), dilation=rate)``.
    On the CPU the dilated convolution is computed as an ordinary convolution on the ``rate**3``
    interleaved sub-grids of the input (the "space-to-batch" form of atrous convolution, as in the
    original DeepLab code): PyTorch's CPU backward pass of dilated 3D convolutions is 5-20x slower than
    the undilated one (measured with torch 2.x, oneDNN), and this form gives identical outputs and
    gradients. On CUDA the native dilated convolution is used.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, rate: int = 1, bias: bool = True):
        if kernel_size % 2 != 1:
            raise ParameterError(f"AtrousConv3d needs an odd kernel, got {kernel_size}")
        if rate < 1:
            raise ParameterError(f"rate must be >= 1, got {rate}")
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias)
        self.rate = int(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.rate
        if r == 1:
            return super().forward(x)
        if x.device.type != "cpu":
            return F.conv3d(x, self.weight, self.bias, padding=r * (self.kernel_size[0] // 2), dilation=r)
        xs, size = _space_to_batch(x, r)
        return _batch_to_space(super().forward(xs), r, size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rate={self.rate}"


def atrous_cna(cin: int, cout: int, rate: int, norm: str | None, act: str | None) -> nn.Sequential:
    """AtrousConv3d -> norm -> activation."""
    return nn.Sequential(AtrousConv3d(cin, cout, 3, rate, bias=norm is None), norm_layer(3, norm, cout),
                         act_layer(act))
