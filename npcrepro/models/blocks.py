"""Shared building blocks for 2D and 3D networks.

Every block takes ``dims`` (2 or 3) so one definition serves both. Tensors are (N, C, H, W) in 2D and
(N, C, D, H, W) in 3D. Factories accept names so that model signatures stay plain data (JSON-able
parameters in run folders): ``norm`` in {"batch", "instance", "group", None}, ``act`` in {"relu",
"leaky", "prelu", "elu", "gelu", None}.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import DataError, ParameterError

__all__ = ["conv", "PointwiseConv3d", "conv_transpose", "max_pool", "avg_pool", "norm_layer", "act_layer",
           "dropout_layer", "ConvNormAct", "DoubleConv", "ResidualBlock", "Down", "Up", "pad_to_multiple",
           "crop_to", "padded_forward", "check_5d", "init_weights", "init_output", "zero_init_residuals",
           "WithColumnCoordinate", "scaled"]

NORMS = ("batch", "instance", "group", None)
ACTS = ("relu", "leaky", "prelu", "elu", "gelu", None)


def _check_dims(dims: int) -> None:
    if dims not in (2, 3):
        raise ParameterError(f"dims must be 2 or 3, got {dims!r}")


def conv(dims: int, cin: int, cout: int, kernel_size=3, stride=1, padding=None, dilation=1,
         groups: int = 1, bias: bool = True) -> nn.Module:
    """``nn.Conv2d``/``nn.Conv3d``; ``padding=None`` keeps the size ("same" for odd kernels, stride 1).
    A plain 1x1x1 3D convolution is a :class:`PointwiseConv3d` (the same layer, faster on the CPU)."""
    _check_dims(dims)

    def per_axis(v):
        return (v,) * dims if isinstance(v, int) else tuple(v)

    if padding is None:
        padding = tuple((k - 1) * d // 2 for k, d in zip(per_axis(kernel_size), per_axis(dilation)))
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    if (dims == 3 and groups == 1 and not isinstance(padding, str)
            and all(v == 1 for v in per_axis(kernel_size) + per_axis(stride))
            and all(v == 0 for v in per_axis(padding))):
        cls = PointwiseConv3d
    return cls(cin, cout, kernel_size, stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=bias)


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 ``nn.Conv3d`` (same parameters, same state dict, same result) that runs as a matrix
    product on channels-last CPU tensors: (N, C, D, H, W) stored as NDHWC is a (N*D*H*W, C) matrix.

    PyTorch sends 1x1x1 3D convolutions on the CPU to its slow reference kernel, which also copies
    a channels-last input to NCDHW and returns NCDHW (so the next layer copies it back): 2 to 3 times
    the time of the product (``npcrepro bench engine`` times the networks that use it). Other devices
    and layouts take the ordinary convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 5 or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        y = F.linear(x.permute(0, 2, 3, 4, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 4, 1, 2, 3)


def conv_transpose(dims: int, cin: int, cout: int, kernel_size=2, stride=2, padding=0) -> nn.Module:
    _check_dims(dims)
    cls = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
    return cls(cin, cout, kernel_size, stride=stride, padding=padding)


def max_pool(dims: int, kernel_size=2, stride=None) -> nn.Module:
    _check_dims(dims)
    return (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(kernel_size, stride)


def avg_pool(dims: int, kernel_size=2, stride=None, padding=0) -> nn.Module:
    _check_dims(dims)
    cls = nn.AvgPool2d if dims == 2 else nn.AvgPool3d
    return cls(kernel_size, stride, padding, count_include_pad=False)


def norm_layer(dims: int, kind: str | None, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer by name (``None`` gives ``nn.Identity``)."""
    _check_dims(dims)
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    raise ParameterError(f"unknown norm {kind!r} (valid: {NORMS})")


def act_layer(kind: str | None) -> nn.Module:
    if kind is None or kind == "none":
        return nn.Identity()
    table = {"relu": lambda: nn.ReLU(inplace=True), "leaky": lambda: nn.LeakyReLU(0.01, inplace=True),
             "prelu": nn.PReLU, "elu": lambda: nn.ELU(inplace=True), "gelu": nn.GELU}
    if kind not in table:
        raise ParameterError(f"unknown activation {kind!r} (valid: {ACTS})")
    return table[kind]()


def dropout_layer(dims: int, p: float) -> nn.Module:
    if not p:
        return nn.Identity()
    return (nn.Dropout2d if dims == 2 else nn.Dropout3d)(p)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation (the bias is dropped when a norm follows)."""

    def __init__(self, dims: int, cin: int, cout: int, kernel_size=3, stride=1, *, padding=None,
                 dilation=1, groups: int = 1, norm: str | None = "batch", act: str | None = "relu"):
        super().__init__(
            conv(dims, cin, cout, kernel_size, stride, padding, dilation, groups, bias=norm is None),
            norm_layer(dims, norm, cout),
            act_layer(act),
        )


class DoubleConv(nn.Sequential):
    """Two ConvNormAct (the U-Net stage), optional dropout between them."""

    def __init__(self, dims: int, cin: int, cout: int, mid: int | None = None, *, kernel_size=3,
                 norm: str | None = "batch", act: str | None = "relu", dropout: float = 0.0):
        mid = cout if mid is None else mid
        super().__init__(
            ConvNormAct(dims, cin, mid, kernel_size, norm=norm, act=act),
            dropout_layer(dims, dropout),
            ConvNormAct(dims, mid, cout, kernel_size, norm=norm, act=act),
        )


class ResidualBlock(nn.Module):
    """Two convolutions with an identity (or 1x1 projection) shortcut: act(x' + skip(x))."""

    def __init__(self, dims: int, cin: int, cout: int, *, kernel_size=3, norm: str | None = "batch",
                 act: str | None = "relu"):
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(dims, cin, cout, kernel_size, norm=norm, act=act),
                                  ConvNormAct(dims, cout, cout, kernel_size, norm=norm, act=None))
        self.skip = nn.Identity() if cin == cout else conv(dims, cin, cout, 1, bias=False)
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class Down(nn.Sequential):
    """Downsample by 2 (max pool, or strided conv with ``pool="stride"``) then DoubleConv."""

    def __init__(self, dims: int, cin: int, cout: int, *, pool: str = "max", norm="batch", act="relu",
                 dropout: float = 0.0):
        if pool == "max":
            down = max_pool(dims, 2)
        elif pool == "avg":
            down = avg_pool(dims, 2)
        elif pool == "stride":
            down = ConvNormAct(dims, cin, cin, 3, 2, padding=1, norm=norm, act=act)
        else:
            raise ParameterError(f"unknown pool {pool!r} (valid: max, avg, stride)")
        super().__init__(down, DoubleConv(dims, cin, cout, norm=norm, act=act, dropout=dropout))


class Up(nn.Module):
    """Upsample by 2 (transposed conv, or interpolation + 1x1 conv), concatenate the skip, DoubleConv.

    ``forward(x, skip)``: ``x`` (N, cin, ...) coarse, ``skip`` (N, cskip, ...) fine -> (N, cout, ...).
    Odd sizes are handled by cropping/padding ``x`` to the skip's size.
    """

    def __init__(self, dims: int, cin: int, cskip: int, cout: int, *, mode: str = "transpose",
                 norm="batch", act="relu", dropout: float = 0.0):
        super().__init__()
        self.dims = dims
        if mode == "transpose":
            self.up = conv_transpose(dims, cin, cout, 2, 2)
        elif mode in ("nearest", "linear"):
            interp = mode if mode == "nearest" else ("bilinear" if dims == 2 else "trilinear")
            kw = {} if mode == "nearest" else {"align_corners": False}
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode=interp, **kw), conv(dims, cin, cout, 1))
        else:
            raise ParameterError(f"unknown upsampling mode {mode!r} (valid: transpose, nearest, linear)")
        self.conv = DoubleConv(dims, cout + cskip, cout, norm=norm, act=act, dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:
            x = _match(x, skip.shape[2:])
        return self.conv(torch.cat([x, skip], dim=1))


def _match(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pad (zeros) or crop trailing spatial axes of ``x`` to ``size``."""
    pads = []
    for have, want in zip(reversed(x.shape[2:]), reversed(tuple(size))):
        pads += [0, max(0, want - have)]
    if any(pads):
        x = F.pad(x, pads)
    return x[(..., *[slice(0, s) for s in size])]


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int], mode: str = "constant"
                    ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes (at the end) to a multiple of ``multiple``; returns (padded, original size)."""
    size = tuple(x.shape[2:])
    mult = (multiple,) * len(size) if isinstance(multiple, int) else tuple(multiple)
    pads = []
    for s, m in zip(reversed(size), reversed(mult)):
        pads += [0, (-s) % m]
    if any(pads):
        x = F.pad(x, pads, mode=mode) if mode == "constant" else F.pad(x, pads, mode=mode)
    return x, size


class WithColumnCoordinate(nn.Module):
    """Run ``inner`` on the input with one channel appended: each pixel's column, from -1 at the first
    column to 1 at the last (a CoordConv-style position input). A fully convolutional network sees a
    left and a right eye as the same pattern; the column tells them apart.

    ``inner`` must take ``C + 1`` input channels. Shapes: (N, C, H, W) -> ``inner``'s output for
    (N, C + 1, H, W) (a tensor or a tuple, e.g. deep supervision's).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        if x.dim() != 4:
            raise DataError(f"WithColumnCoordinate expects (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        column = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).expand(n, 1, h, w)
        return self.inner(torch.cat([x, column], dim=1))


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Keep the first ``size`` voxels of each spatial axis."""
    return x[(..., *[slice(0, s) for s in size])]


def padded_forward(x: torch.Tensor, multiple: int, fn) -> torch.Tensor:
    """Run ``fn`` on ``x`` padded to a multiple of ``multiple`` and crop the output back."""
    if multiple > 1:
        x, size = pad_to_multiple(x, multiple)
        return crop_to(fn(x), size)
    return fn(x)


def check_5d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"{name} expects a 5D tensor (N, C, D, H, W), got shape {tuple(x.shape)}")


def scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
    """Channel counts multiplied by ``width`` (rounded, at least 1): the profiles' width multiplier."""
    if not (width > 0 and math.isfinite(width)):
        raise ParameterError(f"width multiplier must be positive, got {width!r}")
    return tuple(max(1, int(round(w * width))) for w in widths)


def init_weights(module: nn.Module, scheme: str = "kaiming", std: float = 0.01) -> nn.Module:
    """Initialise conv/linear weights: ``"kaiming"`` (He normal, fan-out), ``"xavier"`` or ``"gaussian"``
    (N(0, std), the Caffe default of li2018); biases to zero. Returns the module."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "gaussian":
                nn.init.normal_(m.weight, 0.0, std)
            else:
                raise ParameterError(f"unknown init scheme {scheme!r} (valid: kaiming, xavier, gaussian)")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def zero_init_residuals(module: nn.Module) -> int:
    """Set to 0 the scale of the last normalisation of every residual branch in ``module`` (blocks
    that name it with a ``residual_norm()`` method), so that each block starts as its shortcut alone
    ("zero-gamma", Goyal et al. 2017, torchvision's ``zero_init_residual``): the signal's variance then
    does not grow block by block at initialisation, and a deep residual network trained from scratch
    learns faster at the start. Returns the number of blocks set."""
    n = 0
    for m in module.modules():
        get = getattr(m, "residual_norm", None)
        layer = get() if callable(get) else None
        if layer is not None and getattr(layer, "weight", None) is not None:
            nn.init.zeros_(layer.weight)
            n += 1
    return n


def init_output(layer: nn.Module, prior: float | None = 0.01, std: float = 0.01) -> nn.Module:
    """Initialise an output convolution for a sigmoid: weights N(0, ``std``), bias ``logit(prior)``.

    Starting every voxel at a small foreground probability (RetinaNet's prior) lets a Dice loss leave
    its initial plateau sooner than a default-initialised layer that starts near 0.5, or a
    He-initialised one whose logits of several units saturate the sigmoid (chen2020's networks, and
    xue2020's at cpu). ``prior=None`` leaves the layer as it is.
    """
    if prior is None:
        return layer
    if not 0 < prior < 1:
        raise ParameterError(f"output prior must be in (0, 1), got {prior}")
    nn.init.normal_(layer.weight, 0.0, std)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, math.log(prior / (1 - prior)))
    return layer
