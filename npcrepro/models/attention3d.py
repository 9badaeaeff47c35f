"""3D channel and spatial attention over global statistics (average, maximum, standard deviation).

CBAM's two attentions in 3D, with the population-sd pooling that chen2020's MMFNet adds (its Eqs. 7-11);
their fusion block (:class:`npcrepro.models.mmfnet.FusionBlock`) is built from them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from npcrepro.errors import ParameterError
from npcrepro.models.blocks import conv

__all__ = ["POOLS", "STD_EPS", "check_pools", "pool_statistic", "ChannelAttention3d", "SpatialAttention3d"]

#: Global statistics the attention blocks can pool: average, maximum, standard deviation.
POOLS = ("avg", "max", "std")
STD_EPS = 1e-6


def check_pools(pools: Sequence[str], what: str) -> tuple[str, ...]:
    pools = tuple(pools)
    bad = [p for p in pools if p not in POOLS]
    if bad or not pools or len(set(pools)) != len(pools):
        raise ParameterError(f"{what} must be distinct entries of {POOLS}, got {list(pools)}")
    return pools


class _PopulationStd(torch.autograd.Function):
    """``sqrt(mean((x - mean(x))^2) + eps)`` over ``dims`` (kept as size-1 axes), in float32 at least.

    Forward is two passes (the mean, then the mean squared deviation from it), as accurate as
    ``torch.var(unbiased=False)`` and 4 to 8 times faster on the CPU than its one-pass kernel. The
    backward is the closed form ``(x - mean) * g / (n * sd)`` in one fused multiply-add over ``x``;
    autograd's chain through sub, square and two means took 3 to 5 times as long (forward and
    backward over the cpu profile's finest fusion input, 4 x 12 x 16 x 48 x 48, on one core: 14-15 ms
    against 3-6 ms).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64
        mean = x32.mean(dims, keepdim=True)
        sd = torch.sqrt((x32 - mean).square_().mean(dims, keepdim=True) + eps)
        ctx.save_for_backward(x, mean, sd)
        ctx.n = x.numel() // max(1, mean.numel())
        return sd.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, mean, sd = ctx.saved_tensors
        scale = grad.to(sd.dtype) / (ctx.n * sd)
        return torch.addcmul(-(mean * scale), x.to(sd.dtype), scale).to(x.dtype), None, None


def _max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Maximum over ``dims`` (kept), through ``max`` with indices: its backward scatters the gradient to
    one element, where ``amax``'s compares every element with the maximum (3 times slower on the CPU).
    At ties (a dead channel of zeros) the gradient goes to one of them; either is a valid subgradient."""
    if len(dims) == 1:
        return x.max(dims[0], keepdim=True).values
    if dims == tuple(range(dims[0], x.ndim)):  # trailing axes: one flattened axis (a view in NCDHW
        keep = x.shape[:dims[0]] + (1,) * len(dims)  # and in channels-last alike)
        return x.flatten(dims[0]).max(-1).values.reshape(keep)
    return x.amax(dims, keepdim=True)


def pool_statistic(x: torch.Tensor, kind: str, dims: tuple[int, ...]) -> torch.Tensor:
    """Statistic ``kind`` of ``x`` over ``dims`` (kept as size-1 axes)."""
    if kind == "avg":
        return x.mean(dims, keepdim=True)
    if kind == "max":
        return _max(x, dims)
    # Eq. 10: the population sd, in float32 (under autocast half precision loses the small variances
    # of deep features and the epsilon)
    return _PopulationStd.apply(x, tuple(dims), STD_EPS)



class ChannelAttention3d(nn.Module):
    """Channel attention of Eq. 7: ``sigmoid(sum_k MLP_k(Pool_k(F)))``, weights (N, C, 1, 1, 1).

    Parameters
    ----------
    channels : int
        C (3C in the paper's notation: the concatenated encoders' features).
    reduction : int
        r; the MLPs have one hidden layer of ``max(1, round(C / r))`` units (ReLU).
    pools : subset of ("avg", "max", "std")
        Global statistics over (D, H, W); "std" is the population sd (Eq. 10).
    shared_mlp : bool
        One MLP for every statistic (CBAM, "Base MMFNet") or one per statistic ("multi-MLP").

    ``forward(x)`` returns ``x * weights(x)`` (Eq. 4); ``weights(x)`` the attention itself.
    """

    def __init__(self, channels: int, reduction: int = 12, pools: Sequence[str] = POOLS,
                 shared_mlp: bool = False):
        super().__init__()
        if reduction < 1:
            raise ParameterError(f"reduction ratio must be >= 1, got {reduction}")
        self.pools = check_pools(pools, "channel_pools")
        self.shared_mlp = bool(shared_mlp)
        self.hidden = max(1, int(round(channels / reduction)))

        def mlp() -> nn.Module:
            return nn.Sequential(nn.Linear(channels, self.hidden), nn.ReLU(inplace=True),
                                 nn.Linear(self.hidden, channels))

        n = 1 if self.shared_mlp else len(self.pools)
        self.mlps = nn.ModuleList(mlp() for _ in range(n))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        total = 0
        for i, kind in enumerate(self.pools):
            stat = pool_statistic(x, kind, dims).flatten(1)  # (N, C)
            total = total + self.mlps[0 if self.shared_mlp else i](stat)
        return torch.sigmoid(total).reshape(x.shape[:2] + (1,) * len(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class SpatialAttention3d(nn.Module):
    """Spatial attention of Eq. 11: ``sigmoid(conv_kxkxk([Pool_k over channels]))``, (N, 1, D, H, W).

    ``pools`` are statistics along the channel axis (avg, max, std); ``kernel_size`` 3 as the paper.
    ``forward(x)`` returns ``x * weights(x)`` (Eq. 5).
    """

    def __init__(self, pools: Sequence[str] = POOLS, kernel_size: int = 3):
        super().__init__()
        self.pools = check_pools(pools, "spatial_pools")
        self.conv = conv(3, len(self.pools), 1, kernel_size)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([pool_statistic(x, kind, (1,)) for kind in self.pools], dim=1)
        return torch.sigmoid(self.conv(maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)
