"""chen2020: MMFNet, the multi-modality MRI fusion network, and the comparison models of its Table I.

Chen et al. (Neurocomputing 394, 2020) segment the NPC tumour from three co-registered MRI sequences
(T1, T2, contrast-enhanced T1) with

* one **VGG-like 3D encoder per modality** (Sec. III-A, Fig. 3): four blocks of two 3x3x3
  conv-BN-ReLU, each followed by 2x2x2 max pooling, 8, 16, 32, 64 channels; the block output before
  pooling is the skip, and one more 64-channel conv refines the deepest features;
* **one decoder**: four blocks of (transposed conv up, concatenate the skip, conv), 64, 32, 16, 8
  channels, then a conv to one output map read with a sigmoid;
* a **fusion block** per skip level (Sec. III-B, Eqs. 4-13) that turns the three encoders'
  features F_1, F_2, F_3 (C channels each) into C channels:

  .. math::

     F_{ori} = [F_1; F_2; F_3],\\quad F_c = W_c(F_{ori}) \\otimes F_{ori},\\quad
     F_s = W_s(F_c) \\otimes F_c,\\quad F_{fused} = Res(F_s + F_{ori})

  with channel attention :math:`W_c = \\sigma(\\sum_k MLP_k(Pool_k(F_{ori})))` over global average,
  max and standard-deviation pooling (one MLP per statistic, hidden size 3C/r, r = 12; Eq. 7-10),
  spatial attention :math:`W_s = \\sigma(f^{3\\times3\\times3}([Avg; Max; Std]_{channels}(F_c)))`
  (Eq. 11), and the residual fusion :math:`F_r = f^{1\\times1\\times1}(F_{ori}+F_s)`,
  :math:`F_{fused} = F_r + f^{1\\times3\\times3}(f^{1\\times3\\times3*}(F_r))` where * marks BN-ReLU
  (Eqs. 12-13);
* **self-transfer** (Sec. III-C): the encoders start from three single-modality encoder-decoders
  trained first (:func:`transfer_encoders`); they are frozen for the first epochs
  (``forward(x, freeze_encoders=True)`` plus the trainer's parameter freezing).

Every ablation of Table II is a constructor switch of :class:`MMFNet`:

==============================================  ======================================================
Table II row                                    arguments
==============================================  ======================================================
Multi-encoder multi-modality network            ``fusion="concat"`` (skips concatenated, 3C channels)
Base MMFNet (3D CBAM + residual fusion)         ``shared_mlp=True, channel_pools=("avg", "max"),
                                                spatial_pools=("avg", "max")``
+multi-MLP                                      ``shared_mlp=False``
+stdPool (channel / spatial / both)             add ``"std"`` to ``channel_pools`` / ``spatial_pools``
two-modality variants                           ``modalities=("T1", "T2")`` etc.
==============================================  ======================================================

What the paper leaves open, and what this module chooses (each is an argument):

========================  ==========================================================================
open point                choice here
========================  ==========================================================================
deepest features of the   concatenated (M x 64 channels) and given to the first decoder block; the
several encoders          fusion block sits on the skip connections only, as Sec. III-B describes
decoder block             transposed conv (kernel = stride = the pooling factor) to the block's width,
                          concatenation, one 3x3x3 conv-BN-ReLU (Fig. 3: "a convolutional layer")
output conv               1x1x1, one logit map per class (``n_classes``, 1 for the tumour)
initialisation            PyTorch's default for every layer (``init=None``; the paper used PyTorch
                          0.4.1, whose default conv initialisation U(+-1/sqrt(fan_in)) is today's),
                          except the output conv: small, with a 1 % foreground prior
                          (:func:`init_output`). He initialisation (``init="kaiming"``) makes the
                          un-normalised fusion convs amplify their input about fivefold and slows
                          the start of training markedly
MLP hidden size           ``max(1, round(3C / r))`` (2 at the first level: 24 / 12)
std pooling               population sd (Eq. 10) with ``sqrt(var + 1e-6)``: a dead-ReLU channel has
                          sd 0, where the plain square root has an infinite gradient
1x1x1 conv of Eq. 12      with bias, no normalisation (the paper puts BN-ReLU only in
                          :math:`f^{1\\times3\\times3*}`); no activation after the residual sum
frozen encoders           weights *and* batch-norm statistics stay as loaded (encoders run in eval
                          mode without gradients while ``freeze_encoders=True``)
z pooling                 ``pool_sizes`` per level (default 2x2x2 four times, as the paper's
                          16-slice input); smaller profiles may pool (1, 2, 2) at deep levels
========================  ==========================================================================

Comparison models of Table I that are specific to this paper (the patch CNN in
:mod:`npcrepro.models.patchcnn`; the attentions in :mod:`npcrepro.models.attention3d`):

* :class:`SingleEncoderNet` -- the three sequences stacked as channels of one encoder whose widths are
  three times the MMFNet encoder's ("to keep the number of low-level features the same"), same decoder;
* :class:`PatchCNN` -- the patch-based classifier of Ma et al. [14, 15] (label of a patch's centre
  pixel), single- or multi-modality (one branch per sequence, "Siamese-like" [13]); it is built only
  from unpadded convolutions whose receptive field is exactly the patch, so a sliding window over
  every pixel of a slice is one convolutional pass (``forward`` on a whole slice), identical to
  classifying each patch on its own;
* the single-modality encoder-decoder that self-transfer pre-trains is ``MMFNet(modalities=(m,),
  fusion="concat")`` (its ``encoders[m]`` is what :func:`transfer_encoders` copies).

The 2D and 3D U-Net rows use :mod:`npcrepro.models.unet`.

All models return logits; apply the sigmoid in the loss or at inference.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.attention3d import POOLS, ChannelAttention3d, SpatialAttention3d
from npcrepro.models.blocks import ConvNormAct, conv, init_output, init_weights, scaled
from npcrepro.models.patchcnn import PatchCNN

__all__ = [
    "POOLS", "FUSIONS", "ChannelAttention3d", "SpatialAttention3d", "ResidualFusion", "FusionBlock",
    "VGGEncoder3d", "Decoder3d", "MMFNet", "SingleEncoderNet", "PatchCNN", "transfer_encoders",
    "encoder_prefixes", "init_output", "mmfnet", "single_encoder3d", "scaled",
]

#: How the skip features of several encoders reach the decoder.
FUSIONS = ("block", "concat")

#: Paper widths (Sec. III-A).
ENCODER_WIDTHS = (8, 16, 32, 64)
BOTTLENECK = 64
DECODER_WIDTHS = (64, 32, 16, 8)

# ---------------------------------------------------------------------------------------------
# fusion block (Sec. III-B)



class ResidualFusion(nn.Module):
    """Eqs. 12-13: ``F_r = conv1x1x1(x)`` to ``cout``; ``F_r + conv1x3x3(BN-ReLU(conv1x3x3(F_r)))``."""

    def __init__(self, cin: int, cout: int, norm: str | None = "batch"):
        super().__init__()
        self.reduce = conv(3, cin, cout, 1)
        self.body = nn.Sequential(
            ConvNormAct(3, cout, cout, (1, 3, 3), norm=norm, act="relu"),
            conv(3, cout, cout, (1, 3, 3)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        return r + self.body(r)


class FusionBlock(nn.Module):
    """The fusion block (Fig. 4, Eqs. 4-6): M feature maps of C channels -> one of ``out_channels``.

    Parameters
    ----------
    channels : int
        C, channels of each modality's feature map.
    n_modalities : int
        M (the concatenation has M*C channels).
    out_channels : int, optional
        Default C (the decoder's width at this level).
    reduction, shared_mlp, channel_pools : see :class:`ChannelAttention3d`
    spatial_pools : see :class:`SpatialAttention3d`
    channel_attention, spatial_attention : bool
        Switch either attention off (identity); not a row of the paper, useful for exploration.

    ``forward(features)`` takes a sequence of M tensors (N, C, D, H, W) or one (N, M*C, D, H, W).
    """

    def __init__(self, channels: int, n_modalities: int = 3, out_channels: int | None = None, *,
                 reduction: int = 12, shared_mlp: bool = False, channel_pools: Sequence[str] = POOLS,
                 spatial_pools: Sequence[str] = POOLS, channel_attention: bool = True,
                 spatial_attention: bool = True, norm: str | None = "batch"):
        super().__init__()
        total = channels * n_modalities
        self.channel = (ChannelAttention3d(total, reduction, channel_pools, shared_mlp)
                        if channel_attention else None)
        self.spatial = SpatialAttention3d(spatial_pools) if spatial_attention else None
        self.fuse = ResidualFusion(total, channels if out_channels is None else out_channels, norm)

    def forward(self, features) -> torch.Tensor:
        f_ori = torch.cat(list(features), dim=1) if isinstance(features, (list, tuple)) else features
        f_c = self.channel(f_ori) if self.channel is not None else f_ori
        f_s = self.spatial(f_c) if self.spatial is not None else f_c
        return self.fuse(f_s + f_ori)


# ---------------------------------------------------------------------------------------------
# encoder / decoder (Sec. III-A)


def _pools(pool_sizes, n: int) -> tuple[tuple[int, int, int], ...]:
    if pool_sizes is None:
        return ((2, 2, 2),) * n
    out = []
    for p in pool_sizes:
        p = (int(p),) * 3 if isinstance(p, int) else tuple(int(v) for v in p)
        if len(p) != 3 or min(p) < 1:
            raise ParameterError(f"pool sizes must be (z, y, x) positive integers, got {list(pool_sizes)}")
        out.append(p)
    if len(out) != n:
        raise ParameterError(f"need one pool size per encoder block ({n}), got {len(out)}")
    return tuple(out)


class VGGEncoder3d(nn.Module):
    """The base encoder (Fig. 3, left): blocks of two 3x3x3 conv-BN-ReLU, then max pooling.

    ``forward(x)`` returns ``(skips, bottom)``: the block outputs before pooling (one per block, widths
    ``widths``) and the deepest features after the last pooling and the extra conv (``bottleneck``
    channels).
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = ENCODER_WIDTHS,
                 bottleneck: int = BOTTLENECK, *, pool_sizes=None, norm: str | None = "batch"):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ParameterError(f"encoder widths must be positive, got {widths}")
        self.widths, self.pool_sizes = tuple(widths), _pools(pool_sizes, len(widths))
        self.in_channels, self.out_channels = int(in_channels), int(bottleneck)
        blocks, cin = [], in_channels
        for w in widths:
            blocks.append(nn.Sequential(ConvNormAct(3, cin, w, 3, norm=norm), ConvNormAct(3, w, w, 3, norm=norm)))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleList(nn.MaxPool3d(p, p) for p in self.pool_sizes)
        self.refine = ConvNormAct(3, cin, bottleneck, 3, norm=norm)

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        return tuple(math.prod(p[i] for p in self.pool_sizes) for i in range(3))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for block, pool in zip(self.blocks, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        return skips, self.refine(x)


class Decoder3d(nn.Module):
    """The base decoder (Fig. 3, right): per block, transposed conv up to the block's width,
    concatenation with the skip, one 3x3x3 conv-BN-ReLU; then a 1x1x1 conv to ``n_classes`` logits.

    ``skip_channels`` and ``pool_sizes`` are listed top (finest) to bottom, like the encoder's;
    ``widths`` are the decoder blocks' widths from the bottom up (64, 32, 16, 8).
    """

    def __init__(self, in_channels: int, skip_channels: Sequence[int], widths: Sequence[int] = DECODER_WIDTHS,
                 n_classes: int = 1, *, pool_sizes=None, norm: str | None = "batch"):
        super().__init__()
        skip_channels, widths = [int(c) for c in skip_channels], [int(w) for w in widths]
        if len(widths) != len(skip_channels):
            raise ParameterError(f"decoder needs one width per skip level ({len(skip_channels)}), "
                                 f"got {widths}")
        pools = _pools(pool_sizes, len(skip_channels))
        self.ups, self.convs = nn.ModuleList(), nn.ModuleList()
        cin = in_channels
        for w, cs, p in zip(widths, reversed(skip_channels), reversed(pools)):
            self.ups.append(nn.ConvTranspose3d(cin, w, p, stride=p))
            self.convs.append(ConvNormAct(3, w + cs, w, 3, norm=norm))
            cin = w
        self.head = conv(3, cin, n_classes, 1)

    def forward(self, bottom: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        y = bottom
        for up, cv, s in zip(self.ups, self.convs, reversed(list(skips))):
            y = cv(torch.cat([up(y), s], dim=1))
        return self.head(y)


def _pad(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    size = tuple(x.shape[2:])
    pads = []
    for s, m in zip(reversed(size), reversed(tuple(multiple))):
        pads += [0, (-s) % m]
    return (F.pad(x, pads) if any(pads) else x), size


def _crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return x[(..., *[slice(0, s) for s in size])]


# ---------------------------------------------------------------------------------------------
# MMFNet


class MMFNet(nn.Module):
    """Multi-encoder single-decoder network with fusion blocks (chen2020, Fig. 2).

    Parameters
    ----------
    modalities : sequence of str
        One encoder per modality, in input-channel order: the input is (N, M, D, H, W) with channel i
        the modality ``modalities[i]``. One modality gives the single-modality encoder-decoder that
        self-transfer pre-trains.
    n_classes : int
        Output logit maps (1: the tumour).
    fusion : "block" | "concat"
        Fusion block per skip level (MMFNet) or plain concatenation of the encoders' skips
        ("Multi-encoder multi-modality network", the baseline of Table II). With one modality both
        reduce to the skip itself unless ``fusion="block"`` is asked for explicitly.
    shared_mlp : bool
        Channel attention with one shared MLP (Base MMFNet / CBAM) or one per statistic (multi-MLP).
    channel_pools, spatial_pools : subsets of ("avg", "max", "std")
        Statistics of the channel and spatial attention (Base MMFNet: avg+max in both; the full
        MMFNet: all three in both).
    reduction : int
        r of the channel-attention MLPs (12).
    encoder_widths, bottleneck, decoder_widths : channels (paper: (8, 16, 32, 64), 64,
        (64, 32, 16, 8)).
    width : float
        Multiplier applied to all three (profiles use it for speed; 1.0 is the paper).
    pool_sizes : sequence of 3-tuples, optional
        Pooling factors per encoder level (default 2x2x2 each).
    pad_input : bool
        Zero-pad inputs to a multiple of the total pooling factor and crop the output back.
    init : "kaiming" | "xavier" | None
        None keeps PyTorch's default initialisation (see the module docstring).
    output_prior : float or None
        Initial foreground probability of the output layer (see :func:`init_output`).

    Shapes: (N, M, D, H, W) -> (N, n_classes, D, H, W) logits.
    """

    def __init__(self, modalities: Sequence[str] = ("T1", "T2", "CET1"), n_classes: int = 1, *,
                 fusion: str = "block", shared_mlp: bool = False, channel_pools: Sequence[str] = POOLS,
                 spatial_pools: Sequence[str] = POOLS, reduction: int = 12,
                 encoder_widths: Sequence[int] = ENCODER_WIDTHS, bottleneck: int = BOTTLENECK,
                 decoder_widths: Sequence[int] = DECODER_WIDTHS, width: float = 1.0, pool_sizes=None,
                 norm: str | None = "batch", pad_input: bool = True, init: str | None = None,
                 output_prior: float | None = 0.01):
        super().__init__()
        modalities = tuple(str(m) for m in modalities)
        if not modalities or len(set(modalities)) != len(modalities):
            raise ParameterError(f"modalities must be distinct names, got {list(modalities)}")
        if fusion not in FUSIONS:
            raise ParameterError(f"unknown fusion {fusion!r} (valid: {', '.join(FUSIONS)})")
        enc = scaled(encoder_widths, width)
        dec = scaled(decoder_widths, width)
        (bott,) = scaled((bottleneck,), width)
        self.modalities, self.fusion, self.pad_input = modalities, fusion, pad_input
        self.config = {
            "modalities": list(modalities), "fusion": fusion, "shared_mlp": bool(shared_mlp),
            "channel_pools": list(channel_pools), "spatial_pools": list(spatial_pools),
            "reduction": reduction, "encoder_widths": list(enc), "bottleneck": bott,
            "decoder_widths": list(dec),
        }
        self.encoders = nn.ModuleDict(
            {m: VGGEncoder3d(1, enc, bott, pool_sizes=pool_sizes, norm=norm) for m in modalities})
        first = self.encoders[modalities[0]]
        m = len(modalities)
        if fusion == "block":
            if len(dec) != len(enc):
                raise ParameterError("decoder_widths needs one entry per encoder level")
            # the fused skip has the decoder block's width at that level (C, Sec. III-B)
            self.fusions = nn.ModuleList(
                FusionBlock(c, m, out, reduction=reduction, shared_mlp=shared_mlp,
                            channel_pools=channel_pools, spatial_pools=spatial_pools, norm=norm)
                for c, out in zip(enc, reversed(dec)))
            skip_ch = list(reversed(dec))
        else:
            self.fusions = None
            skip_ch = [c * m for c in enc]
        self.decoder = Decoder3d(bott * m, skip_ch, dec, n_classes, pool_sizes=first.pool_sizes, norm=norm)
        self.size_multiple = first.size_multiple
        if init:
            init_weights(self, init)
        init_output(self.decoder.head, output_prior)

    @property
    def in_channels(self) -> int:
        return len(self.modalities)

    def encode(self, x: torch.Tensor, freeze: bool = False):
        """Per-modality (skips, bottom); with ``freeze`` the encoders run in eval mode without grads."""
        if x.shape[1] != len(self.modalities):
            raise ValueError(f"MMFNet({', '.join(self.modalities)}) expects {len(self.modalities)} input "
                             f"channels, got shape {tuple(x.shape)}")
        outs = []
        for i, m in enumerate(self.modalities):
            enc = self.encoders[m]
            if freeze:
                was = enc.training
                enc.train(False)
                with torch.no_grad():
                    outs.append(enc(x[:, i:i + 1]))
                enc.train(was)
            else:
                outs.append(enc(x[:, i:i + 1]))
        return outs

    def forward(self, x: torch.Tensor, freeze_encoders: bool = False) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"MMFNet expects (N, M, D, H, W), got shape {tuple(x.shape)}")
        size = None
        if self.pad_input:
            x, size = _pad(x, self.size_multiple)
        outs = self.encode(x, freeze_encoders)
        bottom = torch.cat([o[1] for o in outs], dim=1)
        levels = list(zip(*[o[0] for o in outs]))  # per level: M tensors
        if self.fusions is not None:
            skips = [f(list(feats)) for f, feats in zip(self.fusions, levels)]
        else:
            skips = [torch.cat(feats, dim=1) for feats in levels]
        y = self.decoder(bottom, skips)
        return _crop(y, size) if size is not None else y


def encoder_prefixes(model: MMFNet) -> list[str]:
    """Parameter-name prefixes of the encoders (for a trainer stage's ``frozen`` list)."""
    return [f"encoders.{m}." for m in model.modalities]


def transfer_encoders(target: MMFNet, sources: Mapping[str, nn.Module | Mapping[str, torch.Tensor]]
                      ) -> list[str]:
    """Self-transfer (Sec. III-C): copy pre-trained single-modality encoders into ``target``.

    ``sources`` maps a modality to a single-modality :class:`MMFNet` (its ``encoders[modality]`` is
    copied), a :class:`VGGEncoder3d`, or an encoder state dict. Weights and batch-norm statistics are
    copied. Returns the modalities transferred. Raises ParameterError when a modality is unknown to
    ``target`` or the encoder shapes differ.
    """
    done = []
    for m, src in sources.items():
        if m not in target.encoders:
            raise ParameterError(f"self-transfer: the target has no {m!r} encoder "
                                 f"(has {', '.join(target.modalities)})")
        if isinstance(src, MMFNet):
            if m not in src.encoders:
                raise ParameterError(f"self-transfer: the source network has no {m!r} encoder")
            state = src.encoders[m].state_dict()
        elif isinstance(src, nn.Module):
            state = src.state_dict()
        else:
            state = dict(src)
        dst = target.encoders[m]
        own = dst.state_dict()
        bad = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
        if bad or set(state) - set(own):
            raise ParameterError(f"self-transfer: the {m!r} encoders differ (first mismatch: "
                                 f"{(bad or sorted(set(state) - set(own)))[0]}); build both with the "
                                 f"same widths, width multiplier and pool sizes")
        dst.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        done.append(m)
    return done


# ---------------------------------------------------------------------------------------------
# comparison models


class SingleEncoderNet(nn.Module):
    """"Single-encoder multi-modality network" (Table I): the sequences stacked as input channels of
    one VGG encoder with ``encoder_multiplier`` (3) times the MMFNet encoder's widths, and the same
    decoder. Shapes: (N, M, D, H, W) -> (N, n_classes, D, H, W)."""

    def __init__(self, in_channels: int = 3, n_classes: int = 1, *, encoder_multiplier: float = 3.0,
                 encoder_widths: Sequence[int] = ENCODER_WIDTHS, bottleneck: int = BOTTLENECK,
                 decoder_widths: Sequence[int] = DECODER_WIDTHS, width: float = 1.0, pool_sizes=None,
                 norm: str | None = "batch", pad_input: bool = True, init: str | None = None,
                 output_prior: float | None = 0.01):
        super().__init__()
        enc = scaled(encoder_widths, width * encoder_multiplier)
        (bott,) = scaled((bottleneck,), width * encoder_multiplier)
        dec = scaled(decoder_widths, width)
        self.in_channels, self.pad_input = int(in_channels), pad_input
        self.encoder = VGGEncoder3d(in_channels, enc, bott, pool_sizes=pool_sizes, norm=norm)
        self.decoder = Decoder3d(bott, enc, dec, n_classes, pool_sizes=self.encoder.pool_sizes, norm=norm)
        self.size_multiple = self.encoder.size_multiple
        if init:
            init_weights(self, init)
        init_output(self.decoder.head, output_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SingleEncoderNet expects (N, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        size = None
        if self.pad_input:
            x, size = _pad(x, self.size_multiple)
        skips, bottom = self.encoder(x)
        y = self.decoder(bottom, skips)
        return _crop(y, size) if size is not None else y




# ---------------------------------------------------------------------------------------------
# registry


@register("mmfnet")
def mmfnet(modalities: Sequence[str] = ("T1", "T2", "CET1"), n_classes: int = 1, **kwargs) -> MMFNet:
    """MMFNet (and its Table II ablations / the multi-encoder baseline / single-modality networks):
    (N, M, D, H, W) -> (N, n_classes, D, H, W) logits. See :class:`MMFNet`."""
    return MMFNet(modalities, n_classes, **kwargs)


@register("single_encoder3d")
def single_encoder3d(in_channels: int = 3, n_classes: int = 1, **kwargs) -> SingleEncoderNet:
    """Single-encoder multi-modality network: (N, M, D, H, W) -> (N, n_classes, D, H, W) logits."""
    return SingleEncoderNet(in_channels, n_classes, **kwargs)
