"""DeepLabv3+ (Chen et al., ECCV 2018) with a MobileNetV2 backbone (Sandler et al., CVPR 2018), 2D.

The network of xue2020 (planning-CT GTVp). Written from the two papers; the public reference
implementations (TensorFlow ``models/research/deeplab``, Keras ``keras-deeplab-v3-plus``, PyTorch
``pytorch-deeplab-xception`` and ``DeepLabV3Plus-Pytorch``) were read to learn their choices, which are
listed below against ours. Nothing here depends on torchvision.

Architecture (defaults, ``width=1.0``, ``output_stride=16``)::

    input (N, C, H, W)
    stem          3x3 conv s2, 32 ch, BN, ReLU6                          stride 2
    IR t1 c16  n1 s1                                                      stride 2
    IR t6 c24  n2 s2   -> low-level features (24 ch)                      stride 4
    IR t6 c32  n3 s2                                                      stride 8
    IR t6 c64  n4 s2                                                      stride 16
    IR t6 c96  n3 s1                                                      stride 16
    IR t6 c160 n3 s2 -> s1, dilation 2   (atrous: output stride 16)      stride 16
    IR t6 c320 n1 s1, dilation 2         -> high-level features (320 ch)  stride 16
    ASPP: 1x1 | 3x3 rate 6 | 3x3 rate 12 | 3x3 rate 18 | image pooling, 256 ch each,
          concat -> 1x1 256, BN, ReLU, dropout 0.1
    decoder: x4 bilinear upsampling; low-level 1x1 -> 48 ch; concat (304 ch);
             two 3x3 convs 256 ch; 1x1 -> n_classes; x4 bilinear upsampling
    output (N, n_classes, H, W) logits

``IR tT cC nN sS`` is a stage of N inverted-residual blocks (1x1 expansion by T, 3x3 depthwise, linear
1x1 projection; identity shortcut when stride 1 and channels match); only the first block of a stage
strides. The MobileNetV2 classifier tail (1x1 conv to 1280 channels, pooling, FC) is dropped, as in
every DeepLab implementation.

Choices, with the reference implementations' values
---------------------------------------------------
================================  ===========================  =========================================
item                              here (default)               references
================================  ===========================  =========================================
backbone channels                 32-16-24-32-64-96-160-320    same in all (MobileNetV2 width 1.0);
                                                               xue2020 Fig. 2: "output channels 24-320"
output stride                     16 (8 and 32 allowed)        TF and Keras: 8 or 16; PyTorch ports:
                                                               16 default, 8 optional; mmsegmentation
                                                               MobileNetV2 configs: 8
dilation of the strided stage     first block keeps the        TF slim ``mobilenet`` (the rate applies
                                  previous rate, later blocks  from the second block); mmsegmentation
                                  use the multiplied rate      dilates the whole stage
ASPP rates                        (6, 12, 18) at OS 16,        same convention everywhere; the published
                                  doubled at OS 8              TF/Keras MobileNetV2 checkpoints drop the
                                                               atrous branches (1x1 + pooling only)
ASPP / decoder channels           256 / 256                    256 everywhere
low-level reduction               1x1 to 48 channels           48 everywhere (TF: 48)
ASPP and decoder 3x3 convs        depthwise-separable          DeepLabv3+ paper: separable (Xception);
                                  (``separable=True``)         PyTorch ports: plain 3x3
decoder with MobileNetV2          yes (xue2020 describes it)   published TF/Keras MobileNetV2
                                                               checkpoints: no decoder
activations                       ReLU6 in the backbone,       MobileNetV2 paper: ReLU6; DeepLab heads
                                  ReLU in ASPP/decoder         use ReLU
initialisation                    He (fan-out); the last BN    ImageNet weights (TF, Keras); torchvision
                                  of every block with a        MobileNetV2: BN scale 1; torchvision
                                  shortcut at scale 0          ResNet: zero_init_residual, off by default
                                  (``zero_init_residual``)
================================  ===========================  =========================================

Parameter count (``in_channels=1, n_classes=1``): backbone 1.81 M; with ``separable=True`` the whole
network has about 2.71 M parameters, with ``separable=False`` (the PyTorch ports' plain 3x3 convs) about
5.81 M. :func:`deeplab_parameter_table` tabulates them; ``tests/test_xue2020.py`` pins the ranges.

Inputs of any size work: they are padded to a multiple of the output stride and the output is cropped
back (``pad_input=True``), so ``(N, C, H, W) -> (N, n_classes, H, W)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import count_parameters, register
from npcrepro.models.blocks import crop_to, init_weights, pad_to_multiple, zero_init_residuals

__all__ = ["InvertedResidual", "MobileNetV2Encoder", "SeparableConv2d", "ASPP", "DeepLabV3Plus",
           "deeplabv3plus", "MOBILENETV2_STAGES", "make_divisible",
           "deeplab_parameter_table"]

#: MobileNetV2 (Sandler et al. 2018, Table 2) stages without the classifier tail:
#: (expansion t, output channels c, repeats n, first stride s).
MOBILENETV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

#: Index (in :data:`MOBILENETV2_STAGES`) of the stage whose output is the decoder's low-level input.
LOW_LEVEL_STAGE = 1


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10 %
    (the rule of the MobileNet papers, so width multipliers give hardware-friendly widths)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class _ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm -> activation (``relu6``, ``relu`` or None)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act: str | None = "relu6"):
        pad = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size, stride, pad, dilation, groups, bias=False),
            nn.BatchNorm2d(cout)]
        if act == "relu6":
            layers.append(nn.ReLU6(inplace=True))
        elif act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act is not None:
            raise ParameterError(f"unknown activation {act!r} (valid: relu6, relu, None)")
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (x ``expansion``, BN, ReLU6; skipped when 1) -> 3x3 depthwise
    (``stride``, ``dilation``, BN, ReLU6) -> 1x1 linear projection (BN). Identity shortcut when
    ``stride == 1`` and ``cin == cout``.

    (N, cin, H, W) -> (N, cout, H / stride, W / stride).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expansion: int = 6, dilation: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ParameterError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expansion))
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_ConvBNAct(cin, hidden, 1))
        layers += [_ConvBNAct(hidden, hidden, 3, stride, dilation, groups=hidden),
                   _ConvBNAct(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout
        self.stride, self.dilation = stride, dilation

    def residual_norm(self) -> nn.Module | None:
        """The BatchNorm of the projection when the block adds its input back, else None (the block
        has no shortcut to carry the signal)."""
        return self.body[-1][1] if self.use_residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 feature extractor with atrous convolution for a chosen output stride.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for CT).
    width : float
        Width multiplier (1.0 = the paper's 32-16-24-32-64-96-160-320 channels).
    output_stride : 8, 16 or 32
        Ratio of input to high-level feature size. Stages that would stride beyond it use stride 1 and
        dilate their depthwise convolutions instead (the first block of such a stage keeps the rate of
        the previous one, the following blocks use the multiplied rate).

    ``forward(x) -> (low, high)``: ``low`` (N, ``low_channels``, H/4, W/4) from the 24-channel stage,
    ``high`` (N, ``high_channels``, H/OS, W/OS) from the 320-channel stage (for H, W multiples of OS).
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0, output_stride: int = 16,
                 stages: Sequence[tuple[int, int, int, int]] = MOBILENETV2_STAGES):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ParameterError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if width <= 0:
            raise ParameterError(f"width must be positive, got {width!r}")
        self.output_stride = output_stride
        c0 = make_divisible(32 * width)
        self.stem = _ConvBNAct(in_channels, c0, 3, stride=2)
        current, rate, cin = 2, 1, c0
        blocks = []
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        self.stage_dilations: list[int] = []
        for t, c, n, s in stages:
            cout = make_divisible(c * width)
            prev_rate = rate
            if current * s > output_stride:
                stride, rate = 1, rate * s
            else:
                stride, current = s, current * s
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(cin, cout, stride if i == 0 else 1, t,
                                              prev_rate if i == 0 else rate))
                cin = cout
            blocks.append(nn.Sequential(*stage))
            self.stage_channels.append(cout)
            self.stage_strides.append(current)
            self.stage_dilations.append(rate)
        self.stages = nn.ModuleList(blocks)
        self.low_channels = self.stage_channels[LOW_LEVEL_STAGE]
        self.high_channels = self.stage_channels[-1]
        self.low_stride = self.stage_strides[LOW_LEVEL_STAGE]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        low = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == LOW_LEVEL_STAGE:
                low = x
        return low, x


class SeparableConv2d(nn.Sequential):
    """Atrous depthwise-separable 3x3 convolution as in DeepLabv3+: depthwise 3x3 (``dilation``) ->
    BN -> ReLU -> pointwise 1x1 -> BN -> ReLU. (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(_ConvBNAct(cin, cin, 3, 1, dilation, groups=cin, act="relu"),
                         _ConvBNAct(cin, cout, 1, act="relu"))


def _conv3x3(cin: int, cout: int, dilation: int, separable: bool) -> nn.Module:
    if separable:
        return SeparableConv2d(cin, cout, dilation)
    return _ConvBNAct(cin, cout, 3, 1, dilation, act="relu")


class _ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> BN -> ReLU -> broadcast back to the input size.

    BatchNorm on a 1x1 map is undefined for a batch of one in training mode; such batches skip the
    normalisation statistics update by using the running statistics (``F.batch_norm`` in eval mode)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1))
        if self.training and y.shape[0] == 1:
            y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                             training=False, eps=self.bn.eps)
        else:
            y = self.bn(y)
        return F.relu(y).expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, an image-pooling
    branch; concatenated, projected by 1x1 conv + BN + ReLU, dropout.

    (N, cin, h, w) -> (N, channels, h, w). ``rates=()`` gives the 1x1 + pooling ASPP of the TF/Keras
    MobileNetV2 models.
    """

    def __init__(self, cin: int, channels: int = 256, rates: Sequence[int] = (6, 12, 18), *,
                 separable: bool = True, dropout: float = 0.1, image_pooling: bool = True):
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        branches: list[nn.Module] = [_ConvBNAct(cin, channels, 1, act="relu")]
        branches += [_conv3x3(cin, channels, r, separable) for r in self.rates]
        if image_pooling:
            branches.append(_ImagePooling(cin, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(_ConvBNAct(len(branches) * channels, channels, 1, act="relu"),
                                     nn.Dropout(dropout) if dropout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with a MobileNetV2 encoder, 2D.

    Parameters
    ----------
    in_channels, n_classes : int
        Image channels; output channels (logits; one per structure with sigmoid, or classes with
        softmax).
    output_stride : 8, 16 or 32
        Encoder output stride (default 16).
    width : float
        MobileNetV2 width multiplier (1.0).
    aspp_rates : sequence of int or None
        Atrous rates of the ASPP 3x3 branches; None = (6, 12, 18) scaled by 16 / output_stride.
    aspp_channels, decoder_channels, low_level_channels : int
        256, 256, 48 as in DeepLabv3+.
    separable : bool
        Depthwise-separable 3x3 convs in ASPP and decoder (True, the DeepLabv3+ paper and xue2020's
        text) or plain 3x3 convs (False, the public PyTorch ports).
    decoder : bool
        False gives DeepLabv3 (ASPP output upsampled x OS directly).
    dropout : float
        Dropout after the ASPP projection (0.1).
    pad_input : bool
        Pad the input to a multiple of the output stride and crop the output back.
    init : "kaiming" | "xavier" | "gaussian" | None
    zero_init_residual : bool
        Start every inverted residual block with an identity shortcut as its input alone (the scale of
        its projection's BatchNorm at 0; :func:`~npcrepro.models.blocks.zero_init_residuals`). Trained
        from scratch (no ImageNet weights here), the network learns faster at the start (True).

    Shapes: (N, in_channels, H, W) -> (N, n_classes, H, W).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 1, *, output_stride: int = 16,
                 width: float = 1.0, aspp_rates: Sequence[int] | None = None, aspp_channels: int = 256,
                 decoder_channels: int = 256, low_level_channels: int = 48, separable: bool = True,
                 decoder: bool = True, dropout: float = 0.1, pad_input: bool = True,
                 init: str | None = "kaiming", zero_init_residual: bool = True):
        super().__init__()
        self.in_channels, self.n_classes = in_channels, n_classes
        self.encoder = MobileNetV2Encoder(in_channels, width, output_stride)
        self.output_stride = output_stride
        if aspp_rates is None:
            aspp_rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.aspp = ASPP(self.encoder.high_channels, aspp_channels, aspp_rates, separable=separable,
                         dropout=dropout)
        self.has_decoder = decoder
        if decoder:
            self.low_project = _ConvBNAct(self.encoder.low_channels, low_level_channels, 1, act="relu")
            self.refine = nn.Sequential(
                _conv3x3(aspp_channels + low_level_channels, decoder_channels, 1, separable),
                _conv3x3(decoder_channels, decoder_channels, 1, separable))
            self.head = nn.Conv2d(decoder_channels, n_classes, 1)
        else:
            self.head = nn.Conv2d(aspp_channels, n_classes, 1)
        self.pad_input = pad_input
        self.config = dict(in_channels=in_channels, n_classes=n_classes, output_stride=output_stride,
                           width=width, aspp_rates=tuple(aspp_rates), aspp_channels=aspp_channels,
                           decoder_channels=decoder_channels, low_level_channels=low_level_channels,
                           separable=separable, decoder=decoder, dropout=dropout)
        if init:
            init_weights(self, init)
        if zero_init_residual:
            zero_init_residuals(self)

    @property
    def size_multiple(self) -> int:
        """Input sizes that need no padding are multiples of this (the output stride)."""
        return self.output_stride

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate maps for inspection: ``low``, ``high``, ``aspp`` (and ``decoder``)."""
        low, high = self.encoder(x)
        out = {"low": low, "high": high, "aspp": self.aspp(high)}
        if self.has_decoder:
            up = F.interpolate(out["aspp"], size=low.shape[2:], mode="bilinear", align_corners=False)
            out["decoder"] = self.refine(torch.cat([up, self.low_project(low)], dim=1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DeepLabV3Plus expects a 4D tensor (N, C, H, W), got shape {tuple(x.shape)}")
        size = None
        if self.pad_input:
            x, size = pad_to_multiple(x, self.output_stride)
        f = self.features(x)
        y = self.head(f["decoder"] if self.has_decoder else f["aspp"])
        y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        return crop_to(y, size) if size is not None else y


@register("deeplabv3plus")
def deeplabv3plus(in_channels: int = 1, n_classes: int = 1, **kwargs) -> DeepLabV3Plus:
    """DeepLabv3+ / MobileNetV2: (N, C, H, W) -> (N, K, H, W) logits. See :class:`DeepLabV3Plus`. At its
    defaults it is xue2020's network: DeepLabv3+ with the MobileNetV2 (width 1.0) encoder, output stride 16,
    ASPP rates 6/12/18, 256 channels, 48-channel low-level reduction, separable ASPP and decoder convs
    (about 2.71 M parameters for one input channel and one class)."""
    return DeepLabV3Plus(in_channels, n_classes, **kwargs)


def deeplab_parameter_table(model: DeepLabV3Plus):
    """Parameters per component (encoder, ASPP, decoder, head, total) as a pandas DataFrame."""
    import pandas as pd

    parts = {"MobileNetV2 encoder": model.encoder, "ASPP": model.aspp}
    if model.has_decoder:
        parts["decoder (low-level 1x1 + 3x3 convs)"] = nn.ModuleList([model.low_project, model.refine])
    parts["head (1x1)"] = model.head
    rows = [{"component": k, "parameters": count_parameters(m)} for k, m in parts.items()]
    rows.append({"component": "total", "parameters": count_parameters(model)})
    return pd.DataFrame(rows)
