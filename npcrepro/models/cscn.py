"""guo2021: the multi-scale cascaded network CSCN (BUNet -> ACDNet -> probability fusion) and the
paper's 3D baselines (plain CNN, a DeepLab-style 3D network, V-Net).

Guo et al. (Intelligent Automation & Soft Computing 31(3), 2022) segment the NPC primary tumour on
3D T1 MRI with a coarse-to-fine cascade (their Fig. 1):

* **BUNet** -- a 3D U-Net trained on small image blocks (24 x 24 x 8 voxels) cut by sliding windows
  along the axial, coronal and sagittal directions; it gives a coarse tumour probability map;
* **ACDNet** -- a DenseNet whose dense blocks carry an ASPP module (parallel atrous convolutions)
  before the 1 x 1 bottleneck (their Fig. 2), refining from the image and the coarse map;
* **CSCN** -- the final map is a probability fusion of the coarse and the fine map.

Every network returns **logits** with ``n_classes`` channels (default 2: the paper's softmax over
background and tumour), except :class:`CSCN`, whose ``forward`` returns the fused tumour
**probability** (N, 1, ...) in [0, 1] -- fusion happens on probabilities by definition.

Tensors are (N, C, D, H, W). Blocks are 3D; the paper's blocks are 24 x 24 x 8, which the pipeline
(:mod:`npcrepro.chapters.guo2021`) transposes so that the thin axis comes first: (N, C, 8, 24, 24).
All networks accept any spatial size (inputs are padded to a multiple of their total stride and the
output is cropped back).

Where the paper is silent, this module chooses (constructor arguments; the profiles shrink widths):

=========================  ========================================================================
open point                 choice here
=========================  ========================================================================
BUNet depth and widths     3 levels, widths ``(16, 32, 64)`` (two poolings: an 8-voxel axis -> 2);
                           the shared :class:`~npcrepro.models.unet.UNet` (conv-BN-ReLU pairs,
                           max pooling, transposed-conv upsampling, skip concatenation)
ACDNet layout              fully convolutional DenseNet (Jegou et al.'s "Tiramisu" pattern): stem
                           conv, dense blocks on a down path (transition: BN-ReLU-1x1 conv, 2x max
                           pool), a bottom block, an up path (transposed conv, skip concat, dense
                           block), 1x1 head
ACDNet dense layer         ASPP -> bottleneck: parallel 3x3x3 atrous conv-BN-ReLU branches with
                           rates ``dilations=(1, 2, 3)``, each ``growth`` channels, concatenated,
                           then the 1x1 conv-BN-ReLU bottleneck compressing to ``growth`` channels,
                           which are appended to the block's feature stack (dense connection)
ACDNet sizes               stem 16 channels, growth rate 8, ``layers=(2, 2, 2)`` (two down blocks
                           and a bottom block; the up path mirrors the down path)
ACDNet input in the        the image channel(s) concatenated with the coarse probability map
cascade                    (``in_channels = image channels + 1``)
probability fusion         weighted mean ``w * p_coarse + (1 - w) * p_fine`` with ``w = 0.5``
                           (``fusion="mean"``); ``fusion="product"`` takes the normalised
                           geometric mean, ``fusion="max"`` the voxel-wise maximum
plain CNN                  ``depth`` 3x3x3 conv-BN-ReLU layers of ``width`` channels at full
                           resolution, no pooling, no skips, 1x1 head (receptive field
                           2 * depth + 1 voxels)
DeepLab-style 3D network   DeepLabv3+ pattern in 3D: residual encoder with two stride-2 stages and
                           an atrous (dilation 2) third stage (output stride 4); 3D ASPP (1x1,
                           3x3x3 rates ``(1, 2, 3)``, image pooling) -> 1x1; decoder: trilinear x4
                           upsampling, concat with 1x1-reduced stride-1 features, two 3x3x3 convs
V-Net                      Milletari et al. 2016: 5x5x5 convolutions, PReLU, residual stages (the
                           stage input added to its output), 2x2x2 stride-2 convolutions down,
                           transposed convolutions up, skip concatenation; 3 levels
                           ``widths=(16, 32, 64)`` with ``(1, 2, 3)`` convolutions per level;
                           no normalisation (``norm=None``), as the V-Net paper describes
=========================  ========================================================================

The multi-view fusion of the paper ("the features of multiple views were fused") is done at
inference time by the pipeline: the three views' probability maps are averaged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import count_parameters, register
from npcrepro.models.blocks import (ConvNormAct, act_layer, conv, conv_transpose, crop_to,
                                    init_weights, max_pool, norm_layer, pad_to_multiple)
from npcrepro.models.unet import UNet

__all__ = ["AtrousConv3d", "BUNet", "ASPPDenseLayer", "DenseBlock", "ACDNet", "CSCN", "PlainCNN3D", "ASPP3D",
           "DeepLab3D", "VNet", "fuse_probabilities", "FUSIONS", "guo2021_bunet", "guo2021_acdnet",
           "guo2021_cscn", "guo2021_cnn", "guo2021_deeplab3d", "guo2021_vnet", "parameter_table",
           "MODEL_NAMES"]

#: Probability fusion rules of :func:`fuse_probabilities`.
FUSIONS = ("mean", "product", "max")

#: Registry names of the chapter's networks, keyed by the paper's method names.
MODEL_NAMES = {"BUNet": "guo2021_bunet", "ACDNet": "guo2021_acdnet", "CSCN": "guo2021_cscn",
               "CNN": "guo2021_cnn", "Deeplab": "guo2021_deeplab3d", "V-Net": "guo2021_vnet"}


def _padded_forward(x: torch.Tensor, multiple: int, fn) -> torch.Tensor:
    """Run ``fn`` on ``x`` padded to a multiple of ``multiple`` and crop the output back."""
    if multiple > 1:
        x, size = pad_to_multiple(x, multiple)
        return crop_to(fn(x), size)
    return fn(x)


def _check_5d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"{name} expects a 5D tensor (N, C, D, H, W), got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------
# atrous convolution


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


def _atrous_cna(cin: int, cout: int, rate: int, norm: str | None, act: str | None) -> nn.Sequential:
    """AtrousConv3d -> norm -> activation."""
    return nn.Sequential(AtrousConv3d(cin, cout, 3, rate, bias=norm is None), norm_layer(3, norm, cout),
                         act_layer(act))


# ---------------------------------------------------------------------------------------------
# BUNet


class BUNet(UNet):
    """BUNet, the coarse stage: a 3D U-Net on image blocks.

    Parameters
    ----------
    in_channels : int
        Image channels (1: T1).
    n_classes : int
        Output channels (2: background/tumour softmax, as the paper).
    widths : sequence of int
        Channels per level (default ``(16, 32, 64)``: two poolings, so a block's 8-voxel axis
        reaches 2 voxels at the bottom).
    **kwargs
        Passed to :class:`~npcrepro.models.unet.UNet` (``norm``, ``act``, ``dropout``, ``up``, ...).

    Shapes: (N, in_channels, D, H, W) -> (N, n_classes, D, H, W) logits, any D, H, W.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, widths: Sequence[int] = (16, 32, 64),
                 **kwargs):
        super().__init__(3, in_channels, n_classes, widths, **kwargs)


# ---------------------------------------------------------------------------------------------
# ACDNet


class ASPPDenseLayer(nn.Module):
    """One dense layer of ACDNet: ASPP, then the 1x1 bottleneck.

    ``len(dilations)`` parallel 3x3x3 atrous conv-BN-ReLU branches (``growth`` channels each) see the
    block's feature stack; their concatenation is compressed by a 1x1 conv-BN-ReLU (the bottleneck)
    to ``growth`` new channels.

    (N, cin, D, H, W) -> (N, growth, D, H, W).
    """

    def __init__(self, cin: int, growth: int, dilations: Sequence[int] = (1, 2, 3), *,
                 norm: str | None = "batch", act: str | None = "relu", dropout: float = 0.0):
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ParameterError(f"dilations must be positive integers, got {dilations}")
        self.dilations = dilations
        self.branches = nn.ModuleList(_atrous_cna(cin, growth, d, norm, act) for d in dilations)
        self.bottleneck = ConvNormAct(3, growth * len(dilations), growth, 1, norm=norm, act=act)
        self.drop = nn.Dropout3d(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], dim=1)
        return self.drop(self.bottleneck(y))


class DenseBlock(nn.Module):
    """``n_layers`` :class:`ASPPDenseLayer` with dense connections: each layer sees the block input
    and every earlier layer's output.

    ``forward`` returns ``(stack, new)``: the input with all new features concatenated
    (``cin + n_layers * growth`` channels) and the new features alone (``n_layers * growth``).
    """

    def __init__(self, cin: int, n_layers: int, growth: int, dilations: Sequence[int] = (1, 2, 3), *,
                 norm: str | None = "batch", act: str | None = "relu", dropout: float = 0.0):
        super().__init__()
        if n_layers < 1:
            raise ParameterError(f"a dense block needs at least one layer, got {n_layers}")
        self.layers = nn.ModuleList(
            ASPPDenseLayer(cin + i * growth, growth, dilations, norm=norm, act=act, dropout=dropout)
            for i in range(n_layers))
        self.out_channels = cin + n_layers * growth
        self.new_channels = n_layers * growth

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = []
        for layer in self.layers:
            y = layer(torch.cat([x, *new], dim=1) if new else x)
            new.append(y)
        return torch.cat([x, *new], dim=1), torch.cat(new, dim=1)


class ACDNet(nn.Module):
    """ACDNet, the fine stage: a fully convolutional 3D DenseNet with ASPP in every dense layer.

    Parameters
    ----------
    in_channels : int
        Input channels: the image (1) alone, or image + coarse probability map (2) in the cascade.
    n_classes : int
        Output channels (2: softmax).
    stem : int
        Channels of the first 3x3x3 conv-BN-ReLU.
    growth : int
        Growth rate: new channels per dense layer.
    layers : sequence of int
        Layers per dense block along the down path; the last entry is the bottom block. The up path
        mirrors the down path. ``len(layers) - 1`` poolings.
    dilations : sequence of int
        Atrous rates of the ASPP branches.
    compression : float
        Transition-down 1x1 conv keeps ``round(compression * channels)`` channels (DenseNet-BC's
        theta; 1.0 keeps them all).
    norm, act, dropout, init : see :mod:`npcrepro.models.blocks`.

    Shapes: (N, in_channels, D, H, W) -> (N, n_classes, D, H, W) logits, any D, H, W.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, *, stem: int = 16, growth: int = 8,
                 layers: Sequence[int] = (2, 2, 2), dilations: Sequence[int] = (1, 2, 3),
                 compression: float = 1.0, norm: str | None = "batch", act: str | None = "relu",
                 dropout: float = 0.0, init: str | None = "kaiming"):
        super().__init__()
        layers = [int(n) for n in layers]
        if len(layers) < 1 or min(layers) < 1:
            raise ParameterError(f"layers needs positive entries, got {layers}")
        if not 0 < compression <= 1:
            raise ParameterError(f"compression must be in (0, 1], got {compression}")
        self.in_channels, self.n_classes = in_channels, n_classes
        self.layers_per_block, self.growth, self.dilations = layers, growth, tuple(dilations)
        kw = dict(norm=norm, act=act)
        self.stem = ConvNormAct(3, in_channels, stem, 3, **kw)
        c = stem
        self.down_blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        skip_channels = []
        for n in layers[:-1]:
            block = DenseBlock(c, n, growth, dilations, dropout=dropout, **kw)
            self.down_blocks.append(block)
            c = block.out_channels
            skip_channels.append(c)
            cout = max(1, int(round(compression * c)))
            self.transitions.append(nn.Sequential(ConvNormAct(3, c, cout, 1, **kw), max_pool(3, 2)))
            c = cout
        self.bottom = DenseBlock(c, layers[-1], growth, dilations, dropout=dropout, **kw)
        up_in = self.bottom.new_channels
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i, n in reversed(list(enumerate(layers[:-1]))):
            self.ups.append(conv_transpose(3, up_in, up_in, 2, 2))
            block = DenseBlock(up_in + skip_channels[i], n, growth, dilations, dropout=dropout, **kw)
            self.up_blocks.append(block)
            up_in = block.new_channels
        # the head sees the last up block's whole stack (its input and its new features)
        self.head_channels = (self.up_blocks[-1].out_channels if len(self.up_blocks)
                              else self.bottom.out_channels)
        self.head = conv(3, self.head_channels, n_classes, 1)
        if init:
            init_weights(self, init)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.layers_per_block) - 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for block, trans in zip(self.down_blocks, self.transitions):
            x, _ = block(x)
            skips.append(x)
            x = trans(x)
        stack, new = self.bottom(x)
        if not len(self.up_blocks):
            return self.head(stack)
        for up, block in zip(self.ups, self.up_blocks):
            y = up(new)
            stack, new = block(torch.cat([y, skips.pop()], dim=1))
        return self.head(stack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_5d(x, "ACDNet")
        return _padded_forward(x, self.size_multiple, self._forward)


# ---------------------------------------------------------------------------------------------
# CSCN: the cascade and its probability fusion


def fuse_probabilities(coarse: torch.Tensor, fine: torch.Tensor, rule: str = "mean",
                       weight: float = 0.5) -> torch.Tensor:
    """Fuse two tumour probability maps (tensors or arrays of one shape, values in [0, 1]).

    ``"mean"``: ``weight * coarse + (1 - weight) * fine``; ``"product"``: the normalised weighted
    geometric mean ``c^w f^(1-w) / (c^w f^(1-w) + (1-c)^w (1-f)^(1-w))`` (a log-odds average);
    ``"max"``: the voxel-wise maximum. The result stays in [0, 1].
    """
    if rule not in FUSIONS:
        raise ParameterError(f"unknown fusion {rule!r} (valid: {', '.join(FUSIONS)})")
    if not 0 <= weight <= 1:
        raise ParameterError(f"fusion weight must be in [0, 1], got {weight}")
    if rule == "mean":
        return weight * coarse + (1 - weight) * fine
    if torch.is_tensor(coarse):
        if rule == "max":
            return torch.maximum(coarse, fine)
        eps = torch.finfo(coarse.dtype).eps
        logit = weight * torch.logit(coarse, eps) + (1 - weight) * torch.logit(fine, eps)
        return torch.sigmoid(logit)
    import numpy as np

    if rule == "max":
        return np.maximum(coarse, fine)
    eps = 1e-6
    c, f = np.clip(coarse, eps, 1 - eps), np.clip(fine, eps, 1 - eps)
    logit = weight * np.log(c / (1 - c)) + (1 - weight) * np.log(f / (1 - f))
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.result_type(coarse, np.float32), copy=False)


class CSCN(nn.Module):
    """The cascade at block level: BUNet -> ACDNet(image, coarse probability) -> fusion.

    ``forward(x)`` returns the fused tumour **probability** (N, 1, D, H, W) in [0, 1] (not logits);
    ``forward(x, return_all=True)`` returns ``(fused, coarse, fine)`` probabilities. The tumour
    probability of a network is ``softmax(logits)[:, 1]`` (2 classes) or ``sigmoid(logits)`` (1).

    The pipeline trains the two stages one after the other (BUNet first, then ACDNet on the image and
    BUNet's volume-wise coarse map) and fuses volume-wise maps with :func:`fuse_probabilities`; this
    module is the same computation on one block (the coarse map then only sees the block).

    Parameters
    ----------
    in_channels : int
        Image channels.
    bunet, acdnet : dict, optional
        Keyword arguments of :class:`BUNet` and :class:`ACDNet` (``in_channels`` and ``n_classes`` are
        set here).
    n_classes : int
        Output channels of both stages (2: softmax, 1: sigmoid).
    fusion : "mean" | "product" | "max"
    fusion_weight : float
        Weight of the coarse map.
    """

    def __init__(self, in_channels: int = 1, *, bunet: dict | None = None, acdnet: dict | None = None,
                 n_classes: int = 2, fusion: str = "mean", fusion_weight: float = 0.5):
        super().__init__()
        if fusion not in FUSIONS:
            raise ParameterError(f"unknown fusion {fusion!r} (valid: {', '.join(FUSIONS)})")
        if n_classes not in (1, 2):
            raise ParameterError(f"CSCN segments one structure: n_classes must be 1 or 2, got {n_classes}")
        self.n_classes, self.fusion, self.fusion_weight = n_classes, fusion, float(fusion_weight)
        self.bunet = BUNet(in_channels, n_classes, **(bunet or {}))
        self.acdnet = ACDNet(in_channels + 1, n_classes, **(acdnet or {}))

    def tumour_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 1, ...) tumour probability from a stage's logits."""
        if self.n_classes == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)[:, 1:2]

    def forward(self, x: torch.Tensor, return_all: bool = False):
        _check_5d(x, "CSCN")
        coarse = self.tumour_probability(self.bunet(x))
        fine = self.tumour_probability(self.acdnet(torch.cat([x, coarse], dim=1)))
        fused = fuse_probabilities(coarse, fine, self.fusion, self.fusion_weight)
        return (fused, coarse, fine) if return_all else fused


# ---------------------------------------------------------------------------------------------
# baselines


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
        _check_5d(x, "PlainCNN3D")
        return self.head(self.body(x))


class _ResBlock3D(nn.Module):
    """Two 3x3x3 conv-BN(-ReLU) with a shortcut (1x1 projection when channels or stride change);
    the first conv carries ``stride`` and both carry ``dilation``."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: str | None = "batch"):
        super().__init__()
        if stride != 1 and dilation != 1:
            raise ParameterError("a residual block strides or dilates, not both")
        self.a = (ConvNormAct(3, cin, cout, 3, stride, norm=norm) if dilation == 1
                  else _atrous_cna(cin, cout, dilation, norm, "relu"))
        self.b = _atrous_cna(cout, cout, dilation, norm, None)
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
            _atrous_cna(cin, cout, r, norm, "relu") for r in self.rates])
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
        _check_5d(x, "DeepLab3D")
        return _padded_forward(x, self.output_stride, self._forward)


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
        _check_5d(x, "VNet")
        return _padded_forward(x, self.size_multiple, self._forward)


# ---------------------------------------------------------------------------------------------
# registry


@register("guo2021_bunet")
def guo2021_bunet(in_channels: int = 1, n_classes: int = 2, widths: Sequence[int] = (16, 32, 64),
                  **kwargs) -> BUNet:
    """guo2021's coarse stage (3D U-Net on blocks): (N, C, D, H, W) -> (N, K, D, H, W) logits."""
    return BUNet(in_channels, n_classes, widths, **kwargs)


@register("guo2021_acdnet")
def guo2021_acdnet(in_channels: int = 1, n_classes: int = 2, **kwargs) -> ACDNet:
    """guo2021's fine stage (DenseNet with ASPP dense layers); ``in_channels=2`` in the cascade."""
    return ACDNet(in_channels, n_classes, **kwargs)


@register("guo2021_cscn")
def guo2021_cscn(in_channels: int = 1, **kwargs) -> CSCN:
    """The whole cascade on one block; returns fused probabilities (N, 1, D, H, W)."""
    return CSCN(in_channels, **kwargs)


@register("guo2021_cnn")
def guo2021_cnn(in_channels: int = 1, n_classes: int = 2, **kwargs) -> PlainCNN3D:
    """The plain 3D CNN baseline of guo2021's Table 1."""
    return PlainCNN3D(in_channels, n_classes, **kwargs)


@register("guo2021_deeplab3d")
def guo2021_deeplab3d(in_channels: int = 1, n_classes: int = 2, **kwargs) -> DeepLab3D:
    """The DeepLab-style 3D baseline of guo2021's Table 1."""
    return DeepLab3D(in_channels, n_classes, **kwargs)


@register("guo2021_vnet")
def guo2021_vnet(in_channels: int = 1, n_classes: int = 2, **kwargs) -> VNet:
    """The V-Net baseline of guo2021's Table 1 (the paper's did not converge)."""
    return VNet(in_channels, n_classes, **kwargs)


def parameter_table(configs: dict[str, tuple[str, dict]] | None = None):
    """Parameter counts of the chapter's networks: ``{label: (registry name, kwargs)}`` (default: every
    network at its default size, the cascade's ACDNet with 2 input channels). Returns a DataFrame
    (network, registry name, parameters)."""
    import pandas as pd

    configs = configs or {
        "BUNet": ("guo2021_bunet", {}),
        "ACDNet (cascade, image + coarse map)": ("guo2021_acdnet", {"in_channels": 2}),
        "ACDNet (alone)": ("guo2021_acdnet", {}),
        "CNN": ("guo2021_cnn", {}),
        "Deeplab (3D)": ("guo2021_deeplab3d", {}),
        "V-Net": ("guo2021_vnet", {}),
    }
    from npcrepro.models import build

    rows = [{"network": k, "model": name, "parameters": count_parameters(build(name, **kw))}
            for k, (name, kw) in configs.items()]
    return pd.DataFrame(rows)
