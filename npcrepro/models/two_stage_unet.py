"""luo2020: the two-stage U-Net with a multi-scale average-pooling (MSP) block.

Luo et al. (CMC 65(2), 2020) segment 14 structures on 2D nasopharyngeal CT slices with two
cascaded encoder-decoders (their Fig. 1):

* **stage 1**, the "denoising" or rough module: a U-Net with five resolution levels ("5
  convolutional layers and deconvolutional layers"), conv-BN-ReLU units, transposed-convolution
  upsampling and skip connections; it gives a rough map of every structure;
* **stage 2**, the precise module: a shallow three-level U-Net that refines stage 1's map;
* the **MSP block** (their Fig. 2): average pooling with kernels 1x1, 3x3, 5x5 and 7x7, fused.

What the paper leaves open, and what this module chooses (each is a constructor argument):

========================  ==================================================================
open point                choice here
========================  ==================================================================
channel widths            stage 1 ``(32, 64, 128, 256, 512)``, stage 2 ``(32, 64, 128)``
                          (U-Net's doubling rule from 32; the profiles shrink them)
"5 layers" / "3 layers"   resolution levels (4 and 2 poolings), each a pair of 3x3 conv-BN-ReLU
what stage 2 sees         the image concatenated with stage 1's probabilities
                          (``stage2_input="image+probs"``; ``"probs"`` drops the image)
MSP placement             the bottleneck (deepest level) of each stage (``msp="both"``), where
                          a 7x7 window covers the widest context; ``"stage1"``, ``"stage2"``
                          and ``"none"`` give the ablations
MSP fusion                stride-1 "same" pooling of the same feature map with each kernel,
                          concatenated, then a 1x1 conv-BN-ReLU back to the input width
                          (``fusion="concat"``); ``fusion="mean"`` is a parameter-free average
output                    one logit map per structure; read with a sigmoid (multi-label,
                          ``multilabel=True``) because the paper's targets overlap (CTV2
                          contains the primary GTV), or a softmax (``multilabel=False``)
loss "of each step"       ``deep_supervision=True`` makes the training forward return
                          ``(final, rough)`` so a loss can score both stages (Sec. 2.2:
                          "the loss function of each step")
========================  ==================================================================

``two_stage=False`` keeps stage 1 alone (the one-stage ablation), so the paper's two claims -- the
second stage helps, the MSP block helps -- are tested by switching two arguments of one class.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import (ConvNormAct, DoubleConv, Down, Up, conv, crop_to, init_weights,
                                    pad_to_multiple)

__all__ = ["MultiScalePooling", "EncoderDecoder", "TwoStageUNet", "two_stage_unet", "MSP_PLACES"]

#: Valid values of ``msp``: where the MSP block sits.
MSP_PLACES = ("none", "stage1", "stage2", "both")


class MultiScalePooling(nn.Module):
    """The MSP block: parallel average pooling with several kernels, fused.

    Every branch pools the same input with stride 1 and "same" padding, which keeps the spatial
    size; at the borders (and on maps smaller than the kernel) a branch is the mean of the voxels
    inside the image (zero padding is not counted). A 1x1 kernel is the identity. The branches are
    concatenated and a 1x1 conv-norm-act maps them back to ``out_channels`` (``fusion="concat"``), or
    simply averaged (``fusion="mean"``, no parameters).

    Parameters
    ----------
    dims : 2 or 3
    channels : int
        Input channels C.
    kernel_sizes : sequence of odd int, default (1, 3, 5, 7)
    out_channels : int, optional
        Output channels (default C; ``fusion="mean"`` requires C).
    fusion : "concat" | "mean"
    norm, act : see :mod:`npcrepro.models.blocks`

    Shapes: (N, C, *S) -> (N, out_channels, *S).
    """

    def __init__(self, dims: int, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5, 7), *,
                 out_channels: int | None = None, fusion: str = "concat", norm: str | None = "batch",
                 act: str | None = "relu"):
        super().__init__()
        ks = [int(k) for k in kernel_sizes]
        if dims not in (2, 3):
            raise ParameterError(f"dims must be 2 or 3, got {dims!r}")
        if not ks or any(k < 1 or k % 2 == 0 for k in ks):
            raise ParameterError(f"MSP kernel sizes must be odd positive integers, got {list(kernel_sizes)}")
        out_channels = channels if out_channels is None else int(out_channels)
        self.kernel_sizes = tuple(ks)
        self.fusion = fusion
        self.dims = dims
        if fusion == "concat":
            self.fuse: nn.Module = ConvNormAct(dims, channels * len(ks), out_channels, 1, norm=norm, act=act)
        elif fusion == "mean":
            if out_channels != channels:
                raise ParameterError("MSP fusion='mean' keeps the channel count; drop out_channels")
            self.fuse = nn.Identity()
        else:
            raise ParameterError(f"unknown MSP fusion {fusion!r} (valid: concat, mean)")

    def _pool(self, x: torch.Tensor, k: int) -> torch.Tensor:
        # explicit zero padding and a pooled count of the voxels inside: a "same" mean that works
        # for maps smaller than the kernel (the deepest level of a small input)
        if k == 1:
            return x
        pad = [k // 2] * (2 * self.dims)
        pool = F.avg_pool2d if self.dims == 2 else F.avg_pool3d
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        return pool(F.pad(x, pad), k, 1) / pool(F.pad(ones, pad), k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self._pool(x, k) for k in self.kernel_sizes]
        if self.fusion == "mean":
            return torch.stack(branches, 0).mean(0)
        return self.fuse(torch.cat(branches, dim=1))


class EncoderDecoder(nn.Module):
    """A U-Net body with an optional module at the bottleneck, returning the top-level features.

    ``len(widths)`` resolution levels; each level is a pair of 3x3 conv-norm-act, max pooling on the
    way down, transposed convolutions and skip concatenation on the way up (the blocks of
    :mod:`npcrepro.models.blocks`). ``bottleneck`` (e.g. :class:`MultiScalePooling`) maps the deepest
    features to the same width.

    Shapes: (N, in_channels, *S) -> (N, widths[0], *S), S divisible by ``2 ** (len(widths) - 1)``.
    """

    def __init__(self, dims: int, in_channels: int, widths: Sequence[int], *,
                 bottleneck: nn.Module | None = None, norm: str | None = "batch", act: str | None = "relu",
                 dropout: float = 0.0):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ParameterError(f"widths needs at least two positive entries, got {widths}")
        n = len(widths)
        self.widths = widths
        self.stem = DoubleConv(dims, in_channels, widths[0], norm=norm, act=act)
        self.down = nn.ModuleList(
            Down(dims, widths[i - 1], widths[i], norm=norm, act=act, dropout=dropout if i == n - 1 else 0.0)
            for i in range(1, n))
        self.bottleneck = bottleneck if bottleneck is not None else nn.Identity()
        self.up = nn.ModuleList(Up(dims, widths[i], widths[i - 1], widths[i - 1], norm=norm, act=act)
                                for i in range(n - 1, 0, -1))

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = self.bottleneck(skips.pop())
        for u in self.up:
            y = u(y, skips.pop())
        return y


class TwoStageUNet(nn.Module):
    """luo2020's two-stage network (see the module docstring for every choice).

    Parameters
    ----------
    in_channels : int
        Image channels (1 for CT).
    n_classes : int
        Output logit maps, one per structure (multi-label) or per class incl. background (softmax).
    stage1_widths : sequence of int
        Channels per level of stage 1 (five levels in the paper).
    stage2_widths : sequence of int
        Channels per level of stage 2 (three levels in the paper).
    two_stage : bool
        False keeps stage 1 only (ablation "one stage").
    msp : "none" | "stage1" | "stage2" | "both"
        Which stages carry an MSP block at their bottleneck. With ``two_stage=False``, "stage2" is
        rejected and "both" means "stage1".
    msp_kernels : sequence of odd int, default (1, 3, 5, 7)
    msp_fusion : "concat" | "mean"
    stage2_input : "image+probs" | "probs"
        What stage 2 reads: the image concatenated with stage 1's probabilities, or the
        probabilities alone.
    detach_stage1 : bool
        Stop stage 2's gradient from reaching stage 1 (default False: trained end to end).
    multilabel : bool
        How stage 1's logits become the probabilities stage 2 reads: sigmoid per channel (True) or
        softmax over channels (False). Also the reading the loss and inference should use.
    deep_supervision : bool
        In training mode return ``(final, rough)`` logits (both (N, n_classes, *S)); in eval mode,
        and always when False, return the final logits only.
    norm, act, dropout : see :mod:`npcrepro.models.blocks` (dropout at the deepest level of stage 1).
    pad_input : bool
        Zero-pad inputs to a multiple of ``2 ** (len(stage1_widths) - 1)`` and crop outputs back.
    init : "kaiming" | "xavier" | "gaussian" | None

    Shapes: (N, in_channels, H, W) -> (N, n_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 14,
                 stage1_widths: Sequence[int] = (32, 64, 128, 256, 512),
                 stage2_widths: Sequence[int] = (32, 64, 128), *, two_stage: bool = True,
                 msp: str = "both", msp_kernels: Sequence[int] = (1, 3, 5, 7), msp_fusion: str = "concat",
                 stage2_input: str = "image+probs", detach_stage1: bool = False, multilabel: bool = True,
                 deep_supervision: bool = False, norm: str | None = "batch", act: str | None = "relu",
                 dropout: float = 0.0, pad_input: bool = True, init: str | None = "kaiming"):
        super().__init__()
        if msp not in MSP_PLACES:
            raise ParameterError(f"unknown msp placement {msp!r} (valid: {', '.join(MSP_PLACES)})")
        if not two_stage and msp == "stage2":
            raise ParameterError("msp='stage2' needs two_stage=True")
        if stage2_input not in ("image+probs", "probs"):
            raise ParameterError(f"unknown stage2_input {stage2_input!r} (valid: image+probs, probs)")
        if n_classes < 1 or in_channels < 1:
            raise ParameterError(f"in_channels and n_classes must be >= 1, got {in_channels}, {n_classes}")
        if not multilabel and n_classes < 2:
            raise ParameterError("multilabel=False (softmax) needs n_classes >= 2")
        dims = 2
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.two_stage, self.multilabel = bool(two_stage), bool(multilabel)
        self.msp = msp if two_stage or msp == "none" else "stage1"
        self.stage2_input, self.detach_stage1 = stage2_input, bool(detach_stage1)
        self.deep_supervision, self.pad_input = bool(deep_supervision), bool(pad_input)

        def msp_block(width: int) -> nn.Module:
            return MultiScalePooling(dims, width, msp_kernels, fusion=msp_fusion, norm=norm, act=act)

        w1 = [int(w) for w in stage1_widths]
        self.stage1 = EncoderDecoder(dims, in_channels, w1, norm=norm, act=act, dropout=dropout,
                                     bottleneck=msp_block(w1[-1]) if self.msp in ("stage1", "both") else None)
        self.head1 = conv(dims, w1[0], n_classes, 1)
        if self.two_stage:
            w2 = [int(w) for w in stage2_widths]
            cin2 = n_classes + (in_channels if stage2_input == "image+probs" else 0)
            self.stage2: EncoderDecoder | None = EncoderDecoder(
                dims, cin2, w2, norm=norm, act=act,
                bottleneck=msp_block(w2[-1]) if self.msp in ("stage2", "both") else None)
            self.head2: nn.Module | None = conv(dims, w2[0], n_classes, 1)
        else:
            self.stage2 = self.head2 = None
        if init:
            init_weights(self, init)

    @property
    def size_multiple(self) -> int:
        m = self.stage1.size_multiple
        return max(m, self.stage2.size_multiple) if self.stage2 is not None else m

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities the way this model reads them (sigmoid or softmax)."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every stage, rough first: ``[rough]`` or ``[rough, final]``, each (N, K, H, W)."""
        if x.dim() != 4:
            raise ValueError(f"TwoStageUNet expects a 4D tensor (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"TwoStageUNet built for {self.in_channels} input channel(s), got {x.shape[1]}")
        size = None
        if self.pad_input:
            x, size = pad_to_multiple(x, self.size_multiple)
        rough = self.head1(self.stage1(x))
        outs = [rough]
        if self.stage2 is not None:
            p = self.probabilities(rough.detach() if self.detach_stage1 else rough)
            z = torch.cat([x, p], dim=1) if self.stage2_input == "image+probs" else p
            outs.append(self.head2(self.stage2(z)))
        return [crop_to(o, size) for o in outs] if size is not None else outs

    def forward(self, x: torch.Tensor):
        outs = self.forward_stages(x)
        if self.deep_supervision and self.training and len(outs) > 1:
            return outs[-1], outs[0]
        return outs[-1]


@register("two_stage_unet")
def two_stage_unet(in_channels: int = 1, n_classes: int = 14,
                      stage1_widths: Sequence[int] = (32, 64, 128, 256, 512),
                      stage2_widths: Sequence[int] = (32, 64, 128), **kwargs) -> TwoStageUNet:
    """luo2020's two-stage U-Net with MSP blocks: (N, C, H, W) -> (N, n_classes, H, W) logits.

    Keyword arguments as :class:`TwoStageUNet` (``two_stage``, ``msp``, ``multilabel``, ...).
    """
    return TwoStageUNet(in_channels, n_classes, stage1_widths, stage2_widths, **kwargs)

