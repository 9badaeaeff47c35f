"""li2018's CNN (Li et al., BioMed Res. Int. 2018, Table 1): a 2D FCN with two score-map fusions.

Layer by layer, for a 1 x 144 x 144 input (kernel / stride / pad as Table 1 prints them)::

    block               layer    kernel stride pad   output (C x H x W)
    Conv-Relu 1         Conv1    5      1      2     80 x 144 x 144   (+ Relu1)
    Pool-Conv-Relu 1    Pool1    2      2      -     80 x  72 x  72
                        Conv2    5      1      2    120 x  72 x  72   (+ Relu2)
    Pool-Conv-Relu 2    Pool2    2      2      -    120 x  36 x  36
                        Conv3    9      1      4    500 x  36 x  36   (+ Relu3)
    Conv-Relu 2         Conv4    1      1      0    300 x  36 x  36   (+ Relu4)
    Conv-Relu 3         Conv5    3      1      1    100 x  36 x  36   (+ Relu5)
    Conv-Relu 4         Conv6    3      1      1      1 x  36 x  36   (+ Relu6)  <- 36x36 score map
                        Deconv1  4      2      1      1 x  72 x  72
                        Concat1  (Deconv1, Relu2)   121 x  72 x  72
    Conv-Relu 5         Conv7    1      1      0      1 x  72 x  72   (+ Relu7)  <- 72x72 score map
                        Deconv2  4      2      1      1 x 144 x 144
                        Concat2  (Deconv2, Relu1)    81 x 144 x 144
                        Conv8    1      1      0      1 x 144 x 144             <- 144x144 score map

Choices where the table is silent (the chapter's Deviations section repeats them):

* pooling is max pooling (the table says "Pool");
* Concat1/Concat2 take the Conv2/Conv1 maps after their ReLU (Caffe's in-place ReLU);
* the *score maps* used as logits (for the loss and the prediction) are the Conv6/Conv7/Conv8
  outputs before Relu6/Relu7; the ReLU'd maps feed the deconvolutions, as in the table. A ReLU'd
  map cannot serve as a sigmoid logit (every pixel would be >= 0.5).

``width`` scales the feature channels (80, 120, 500, 300, 100); 1.0 is Table 1. The score maps stay
one channel, so the concat widths are ``1 + round(120 w)`` and ``1 + round(80 w)``.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models import register
from npcrepro.models.blocks import conv, conv_transpose, init_weights, max_pool

__all__ = ["ScoreFusionFCN", "TABLE1", "STAGE_LAYERS", "STAGE_SIZE", "score_fusion_fcn"]

#: Table 1 rows: (block, layer, kernel, stride, pad, (C, H, W) for a 1x144x144 input at width 1).
TABLE1: tuple[tuple[str, str, int | None, int | None, int | None, tuple[int, int, int]], ...] = (
    ("Input Data", "Input", None, None, None, (1, 144, 144)),
    ("Conv-Relu 1", "Conv1", 5, 1, 2, (80, 144, 144)),
    ("Conv-Relu 1", "Relu1", None, None, None, (80, 144, 144)),
    ("Pool-Conv-Relu 1", "Pool1", 2, 2, None, (80, 72, 72)),
    ("Pool-Conv-Relu 1", "Conv2", 5, 1, 2, (120, 72, 72)),
    ("Pool-Conv-Relu 1", "Relu2", None, None, None, (120, 72, 72)),
    ("Pool-Conv-Relu 2", "Pool2", 2, 2, None, (120, 36, 36)),
    ("Pool-Conv-Relu 2", "Conv3", 9, 1, 4, (500, 36, 36)),
    ("Pool-Conv-Relu 2", "Relu3", None, None, None, (500, 36, 36)),
    ("Conv-Relu 2", "Conv4", 1, 1, 0, (300, 36, 36)),
    ("Conv-Relu 2", "Relu4", None, None, None, (300, 36, 36)),
    ("Conv-Relu 3", "Conv5", 3, 1, 1, (100, 36, 36)),
    ("Conv-Relu 3", "Relu5", None, None, None, (100, 36, 36)),
    ("Conv-Relu 4", "Conv6", 3, 1, 1, (1, 36, 36)),
    ("Conv-Relu 4", "Relu6", None, None, None, (1, 36, 36)),
    ("Deconv1", "Deconv1", 4, 2, 1, (1, 72, 72)),
    ("Concatenate1", "Concat1", None, None, None, (121, 72, 72)),
    ("Conv-Relu 5", "Conv7", 1, 1, 0, (1, 72, 72)),
    ("Conv-Relu 5", "Relu7", None, None, None, (1, 72, 72)),
    ("Deconv2", "Deconv2", 4, 2, 1, (1, 144, 144)),
    ("Concatenate2", "Concat2", None, None, None, (81, 144, 144)),
    ("Conv6", "Conv8", 1, 1, 0, (1, 144, 144)),
    ("Output", "Flatten1", None, None, None, (1, 144, 144)),
)

#: Layers trained in each stage of the stepwise scheme (Sec. 2.3): (1) the feature-representation
#: part up to the 36x36 score map; (2) Deconv1 + Concat1 + Conv7 (72x72 map); (3) Deconv2 + Concat2 +
#: Conv8 (144x144 map).
STAGE_LAYERS: dict[int, tuple[str, ...]] = {
    1: ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6"),
    2: ("deconv1", "conv7"),
    3: ("deconv2", "conv8"),
}

#: Output side of each stage's score map for a 144x144 input.
STAGE_SIZE: dict[int, int] = {1: 36, 2: 72, 3: 144}


def _bilinear_kernel(k: int) -> torch.Tensor:
    """The FCN bilinear-upsampling kernel (k x k) for a stride k/2 transposed convolution."""
    f = (k + 1) // 2
    c = f - 1 if k % 2 == 1 else f - 0.5
    r = torch.arange(k, dtype=torch.float32)
    w = 1 - (r - c).abs() / f
    return w[:, None] * w[None, :]


class ScoreFusionFCN(nn.Module):
    """li2018's network (Table 1). Input (N, C, H, W) with H, W divisible by 4 (144 in the paper).

    Parameters
    ----------
    in_channels : int
        Input channels (1: the frame-35 DCE image).
    width : float
        Multiplier of the feature channels (80, 120, 500, 300, 100); 1.0 is Table 1.
    init : "gaussian" | "kaiming"
        ``"gaussian"``: every conv and deconv kernel N(0, ``init_std``), biases 0 -- the paper's
        "Gaussian distribution with mean of 0 and standard deviation of 1" (Sec. 2.3) with the default
        ``init_std=1``. ``"kaiming"``: He-normal convolutions and bilinear-upsampling deconvolutions
        (FCN practice), the "working" initialisation.
    init_std : float
        Standard deviation for ``init="gaussian"``.

    ``forward(x, stage=3)`` returns the logits of the stage's score map: (N, 1, H/4, W/4) for stage 1,
    (N, 1, H/2, W/2) for stage 2, (N, 1, H, W) for stage 3. ``maps=True`` returns a dict instead with
    every intermediate score map computed up to that stage: ``score36`` (Conv6), ``score72`` (Conv7),
    ``score144`` (Conv8, the output) and the two deconvolved maps before fusion, ``deconv72`` and
    ``deconv144`` (Fig. 4a is ``deconv144``; Fig. 4b is ``score144``).
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0, init: str = "kaiming",
                 init_std: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ParameterError(f"width must be > 0, got {width!r}")
        c1, c2, c3, c4, c5 = (max(1, int(round(c * width))) for c in (80, 120, 500, 300, 100))
        self.in_channels, self.width = int(in_channels), float(width)
        self.channels = (c1, c2, c3, c4, c5)
        self.conv1 = conv(2, in_channels, c1, 5, padding=2)
        self.pool1 = max_pool(2, 2)
        self.conv2 = conv(2, c1, c2, 5, padding=2)
        self.pool2 = max_pool(2, 2)
        self.conv3 = conv(2, c2, c3, 9, padding=4)
        self.conv4 = conv(2, c3, c4, 1, padding=0)
        self.conv5 = conv(2, c4, c5, 3, padding=1)
        self.conv6 = conv(2, c5, 1, 3, padding=1)
        self.deconv1 = conv_transpose(2, 1, 1, 4, stride=2, padding=1)
        self.conv7 = conv(2, 1 + c2, 1, 1, padding=0)
        self.deconv2 = conv_transpose(2, 1, 1, 4, stride=2, padding=1)
        self.conv8 = conv(2, 1 + c1, 1, 1, padding=0)
        self.relu = nn.ReLU()
        self.reset_parameters(init, init_std)

    # ------------------------------------------------------------------ initialisation
    def reset_parameters(self, init: str = "kaiming", std: float = 1.0) -> None:
        """Re-initialise every layer (see the class docstring for the schemes)."""
        if init == "gaussian":
            init_weights(self, "gaussian", std=std)
        elif init == "kaiming":
            with torch.no_grad():
                for c in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6):
                    nn.init.kaiming_normal_(c.weight, mode="fan_in", nonlinearity="relu")
                    c.bias.zero_()
                for d in (self.deconv1, self.deconv2):
                    d.weight.copy_(_bilinear_kernel(4).view(1, 1, 4, 4))
                    d.bias.zero_()
                # fusion convs start as the identity on the upsampled score (channel 0) and ignore the
                # concatenated features, so a new stage starts from the previous stage's map
                for c in (self.conv7, self.conv8):
                    c.weight.zero_()
                    c.weight[0, 0] = 1.0
                    c.bias.zero_()
        else:
            raise ParameterError(f"unknown init {init!r} (valid: gaussian, kaiming)")
        self.init = init

    # ------------------------------------------------------------------ stepwise training
    def stage_parameters(self, stage: int) -> Iterator[nn.Parameter]:
        """The parameters that stage ``stage`` (1, 2 or 3) adds to the network."""
        _check_stage(stage)
        for name in STAGE_LAYERS[stage]:
            yield from getattr(self, name).parameters()

    def set_stage(self, stage: int, finetune: bool = False) -> list[nn.Parameter]:
        """Make only the layers of ``stage`` trainable (``finetune=True``: also the earlier stages');
        later stages' layers are frozen too. Returns the trainable parameters."""
        _check_stage(stage)
        train = {s for s in STAGE_LAYERS if s == stage or (finetune and s < stage)}
        for s, names in STAGE_LAYERS.items():
            for name in names:
                getattr(self, name).requires_grad_(s in train)
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, stage: int = 3, maps: bool = False, trace: list | None = None):
        _check_stage(stage)
        if x.ndim != 4 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ParameterError(f"ScoreFusionFCN expects (N, C, H, W) with H and W divisible by 4, got "
                                 f"{tuple(x.shape)}")

        def rec(layer: str, t: torch.Tensor) -> torch.Tensor:
            if trace is not None:
                trace.append((layer, tuple(t.shape[1:])))
            return t

        relu = self.relu
        rec("Input", x)
        f1 = relu(rec("Conv1", self.conv1(x)))
        rec("Relu1", f1)
        h = rec("Pool1", self.pool1(f1))
        f2 = relu(rec("Conv2", self.conv2(h)))
        rec("Relu2", f2)
        h = rec("Pool2", self.pool2(f2))
        h = relu(rec("Conv3", self.conv3(h)))
        rec("Relu3", h)
        h = relu(rec("Conv4", self.conv4(h)))
        rec("Relu4", h)
        h = relu(rec("Conv5", self.conv5(h)))
        rec("Relu5", h)
        s36 = rec("Conv6", self.conv6(h))
        out = {"score36": s36}
        if stage >= 2:
            d72 = rec("Deconv1", self.deconv1(rec("Relu6", relu(s36))))
            s72 = rec("Conv7", self.conv7(rec("Concat1", torch.cat([d72, f2], 1))))
            out.update(deconv72=d72, score72=s72)
            if stage >= 3:
                d144 = rec("Deconv2", self.deconv2(rec("Relu7", relu(s72))))
                s144 = rec("Conv8", self.conv8(rec("Concat2", torch.cat([d144, f1], 1))))
                rec("Flatten1", s144)
                out.update(deconv144=d144, score144=s144)
        if maps:
            return out
        return out[f"score{STAGE_SIZE[stage]}"]

    def layer_shapes(self, size: int = 144, stage: int = 3) -> list[tuple[str, tuple[int, ...]]]:
        """(layer, (C, H, W)) of every Table 1 row for a 1 x ``in_channels`` x size x size input."""
        trace: list = []
        p = next(self.parameters())
        with torch.no_grad():
            self.forward(torch.zeros(1, self.in_channels, size, size, device=p.device, dtype=p.dtype),
                         stage=stage, trace=trace)
        return trace


def _check_stage(stage: int) -> None:
    if stage not in STAGE_LAYERS:
        raise ParameterError(f"stage must be 1, 2 or 3, got {stage!r}")


@register("score_fusion_fcn")
def score_fusion_fcn(in_channels: int = 1, width: float = 1.0, init: str = "kaiming",
               init_std: float = 1.0) -> ScoreFusionFCN:
    """:class:`ScoreFusionFCN` (Table 1 at ``width=1``)."""
    return ScoreFusionFCN(in_channels=in_channels, width=width, init=init, init_std=init_std)
