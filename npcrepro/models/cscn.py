"""guo2021: the multi-scale cascaded network CSCN (BUNet -> ACDNet -> probability fusion), and the
registry names of the paper's 3D baselines (plain CNN, a DeepLab-style 3D network, V-Net), whose
architectures live in :mod:`~npcrepro.models.plain3d`, :mod:`~npcrepro.models.deeplab3d` and
:mod:`~npcrepro.models.vnet`.

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
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import count_parameters, register
from npcrepro.models.atrous import AtrousConv3d, atrous_cna
from npcrepro.models.blocks import (ConvNormAct, check_5d, conv, conv_transpose, init_weights, max_pool,
                                    padded_forward)
from npcrepro.models.deeplab3d import ASPP3D, DeepLab3D
from npcrepro.models.plain3d import PlainCNN3D
from npcrepro.models.unet import UNet
from npcrepro.models.vnet import VNet

__all__ = ["AtrousConv3d", "BUNet", "ASPPDenseLayer", "DenseBlock", "ACDNet", "CSCN", "PlainCNN3D", "ASPP3D",
           "DeepLab3D", "VNet", "fuse_probabilities", "FUSIONS", "bunet3d", "acdnet3d", "cscn3d", "parameter_table",
           "MODEL_NAMES"]

#: Probability fusion rules of :func:`fuse_probabilities`.
FUSIONS = ("mean", "product", "max")

#: Registry names of the chapter's networks, keyed by the paper's method names.
MODEL_NAMES = {"BUNet": "bunet3d", "ACDNet": "acdnet3d", "CSCN": "cscn3d",
               "CNN": "plaincnn3d", "Deeplab": "deeplab3d", "V-Net": "vnet3d"}


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
        self.branches = nn.ModuleList(atrous_cna(cin, growth, d, norm, act) for d in dilations)
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
        check_5d(x, "ACDNet")
        return padded_forward(x, self.size_multiple, self._forward)


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
        check_5d(x, "CSCN")
        coarse = self.tumour_probability(self.bunet(x))
        fine = self.tumour_probability(self.acdnet(torch.cat([x, coarse], dim=1)))
        fused = fuse_probabilities(coarse, fine, self.fusion, self.fusion_weight)
        return (fused, coarse, fine) if return_all else fused


# ---------------------------------------------------------------------------------------------
# registry


@register("bunet3d")
def bunet3d(in_channels: int = 1, n_classes: int = 2, widths: Sequence[int] = (16, 32, 64),
            **kwargs) -> BUNet:
    """guo2021's coarse stage (3D U-Net on blocks): (N, C, D, H, W) -> (N, K, D, H, W) logits."""
    return BUNet(in_channels, n_classes, widths, **kwargs)


@register("acdnet3d")
def acdnet3d(in_channels: int = 1, n_classes: int = 2, **kwargs) -> ACDNet:
    """guo2021's fine stage (DenseNet with ASPP dense layers); ``in_channels=2`` in the cascade."""
    return ACDNet(in_channels, n_classes, **kwargs)


@register("cscn3d")
def cscn3d(in_channels: int = 1, **kwargs) -> CSCN:
    """The whole cascade on one block; returns fused probabilities (N, 1, D, H, W)."""
    return CSCN(in_channels, **kwargs)


def parameter_table(configs: dict[str, tuple[str, dict]] | None = None):
    """Parameter counts of the chapter's networks: ``{label: (registry name, kwargs)}`` (default: every
    network at its default size, the cascade's ACDNet with 2 input channels). Returns a DataFrame
    (network, registry name, parameters)."""
    import pandas as pd

    configs = configs or {
        "BUNet": ("bunet3d", {}),
        "ACDNet (cascade, image + coarse map)": ("acdnet3d", {"in_channels": 2}),
        "ACDNet (alone)": ("acdnet3d", {}),
        "CNN": ("plaincnn3d", {}),
        "Deeplab (3D)": ("deeplab3d", {}),
        "V-Net": ("vnet3d", {}),
    }
    from npcrepro.models import build

    rows = [{"network": k, "model": name, "parameters": count_parameters(build(name, **kw))}
            for k, (name, kw) in configs.items()]
    return pd.DataFrame(rows)
