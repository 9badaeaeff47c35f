"""A patch-based CNN that classifies the centre pixel of a 2D patch (chen2020's Table I baseline, after
Ma et al.), built from unpadded convolutions so that a whole slice is one convolutional pass."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import ConvNormAct, conv, init_output, init_weights, scaled

__all__ = ["PatchCNN", "patchcnn2d"]


class PatchCNN(nn.Module):
    """Patch-based CNN (Ma et al. [14, 15]; multi-modality: [13]): classifies the centre pixel of a
    ``patch_size`` x ``patch_size`` 2D patch.

    Each branch (one per input channel when ``branches="per_channel"``, the "Siamese-like"
    multi-modality network; one for all channels otherwise) is a stack of unpadded ``kernel_size``
    conv-BN-ReLU layers whose receptive field is exactly the patch; branch features are concatenated
    and classified by two 1x1 convolutions (the fully connected layers). Because nothing is padded or
    pooled, the network applied to a whole (padded) slice gives the centre-pixel logit of every patch
    at once: input (N, C, H, W) -> output (N, n_classes, H - P + 1, W - P + 1); a patch (N, C, P, P)
    gives (N, n_classes, 1, 1).

    Parameters
    ----------
    in_channels : int
    patch_size : int
        P, odd; ``(P - 1)`` must be a multiple of ``kernel_size - 1``.
    widths : sequence of int
        Channels of the conv layers, cycled/truncated to the number of layers ``(P - 1) / (k - 1)``
        (the last entry repeats).
    fc : int
        Hidden units of the classifier.
    branches : "shared" | "per_channel"
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 1, *, patch_size: int = 17,
                 kernel_size: int = 5, widths: Sequence[int] = (16, 32, 64), fc: int = 64,
                 branches: str = "shared", width: float = 1.0, norm: str | None = "batch",
                 init: str | None = None, output_prior: float | None = 0.01):
        super().__init__()
        p, k = int(patch_size), int(kernel_size)
        if p < 3 or p % 2 == 0 or k < 3 or k % 2 == 0 or (p - 1) % (k - 1):
            raise ParameterError(f"patch_size must be odd with (patch_size - 1) divisible by "
                                 f"kernel_size - 1; got patch_size={patch_size}, kernel_size={kernel_size}")
        if branches not in ("shared", "per_channel"):
            raise ParameterError(f"branches must be 'shared' or 'per_channel', got {branches!r}")
        n_layers = (p - 1) // (k - 1)
        ws = list(scaled(widths, width))
        ws = [ws[min(i, len(ws) - 1)] for i in range(n_layers)]
        (fc,) = scaled((fc,), width)
        self.patch_size, self.in_channels, self.branch_mode = p, int(in_channels), branches
        groups = [1] * in_channels if branches == "per_channel" else [in_channels]

        def branch(cin: int) -> nn.Module:
            layers = []
            for w in ws:
                layers.append(ConvNormAct(2, cin, w, k, padding=0, norm=norm))
                cin = w
            return nn.Sequential(*layers)

        self.groups = groups
        self.branches = nn.ModuleList(branch(g) for g in groups)
        self.classifier = nn.Sequential(ConvNormAct(2, ws[-1] * len(groups), fc, 1, norm=None),
                                        conv(2, fc, n_classes, 1))
        if init:
            init_weights(self, init)
        init_output(self.classifier[-1], output_prior)

    @property
    def margin(self) -> int:
        """Pixels lost on each side: pad a slice by this much to get a same-size output."""
        return self.patch_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PatchCNN expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[2:]) < self.patch_size:
            raise ValueError(f"PatchCNN input {tuple(x.shape[2:])} is smaller than the patch "
                             f"({self.patch_size})")
        parts = torch.split(x, self.groups, dim=1)
        feats = [b(p) for b, p in zip(self.branches, parts)]
        return self.classifier(torch.cat(feats, dim=1))


@register("patchcnn2d")
def patchcnn2d(in_channels: int = 1, n_classes: int = 1, **kwargs) -> PatchCNN:
    """Patch-based CNN (single- or multi-modality): (N, C, H, W) -> (N, n_classes, H-P+1, W-P+1)."""
    return PatchCNN(in_channels, n_classes, **kwargs)
