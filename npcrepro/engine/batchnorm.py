"""Batch-norm statistics of a trained network, measured over its training distribution.

A batch-norm layer normalises with its batch's statistics in training and with running averages in
evaluation. The running averages (momentum 0.1) weigh the last ten or so batches most: with small,
unlike batches (two 3D patches, one on the tumour and one anywhere in the head) they are a noisy
estimate that depends on which batches came last, and a network scored with them can mark far more
or far less than the same weights with statistics from many batches (the leaderboard's development
record: guo2021's 3D CNN, one seed of which fell from half to full budget with the running averages
and did not with measured statistics).

:func:`population_statistics` sets every batch-norm layer's running mean and variance to the exact
mean and (unbiased) variance of its inputs over all voxels of ``batches`` ("precise BN": Wu & Johnson,
Rethinking "Batch" in BatchNorm, 2021), the network in training mode so that each layer sees the
inputs it saw in training. The trainer does this at the end of training and for the half-budget copy
when ``bn_batches`` is set (:class:`npcrepro.engine.loop.Trainer`).

Measured statistics still differ from what training normalised with: each batch's own statistics.
With batches of two 3D patches the network learns to depend on them, and a window the statistics of
which are far from the population's (one filled by a large tumour) is then normalised otherwise in
evaluation than any batch was in training: the leaderboard's 3D U-Net (batches of two patches) found
large tumours with batch statistics and lost them with measured ones, and which way a training fell
depended on the floating-point path. :class:`FixedStatistics` (Trainer ``bn_fixed``) trains the end of
each learning-rate cycle with the measured statistics held fixed, as evaluation normalises, so that
the network scored is the network trained (the "freeze BN" fine-tuning of detection networks).
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn

from npcrepro.engine.data import epoch_plan
from npcrepro.engine.loaders import KeyedItems
from npcrepro.errors import ParameterError

__all__ = ["batch_norms", "population_statistics", "measure_batch_norm", "FixedStatistics", "scored_with"]

#: Stage key of the batches that measure batch-norm statistics (``bn_batches``): no training stage has it.
_BN_STAGE = 0xB47C


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def population_statistics(model: nn.Module, batches: Iterable[torch.Tensor], *,
                          forward: Callable[[torch.Tensor], object] | None = None, seed: int = 0) -> int:
    """Set the running mean and variance of every batch-norm layer of ``model`` to the mean and
    unbiased variance of its inputs over every sample and voxel of ``batches`` (input tensors
    (N, C, ...) on the model's device), summed in float64. Nothing is exchanged between torchrun
    ranks: each rank that calls it with the same batches gets the same statistics.

    The model is run in training mode and left in the mode it was in; its weights are not changed,
    nor is each layer's count of batches (``num_batches_tracked``). A dropout layer draws from
    generators seeded with ``seed`` (the same statistics every time); the caller's generators are
    left as they were. ``forward`` (default ``model``) runs one batch. Returns the number of batches
    seen (0: the model has no batch norm, nothing is run)."""
    layers = batch_norms(model)
    if not layers:
        return 0
    sums: dict[nn.Module, list] = {}

    def hook(layer, args):
        x = args[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.double()
        s = sums.setdefault(layer, [0.0, 0.0, 0])
        s[0] = s[0] + x64.sum(dim=dims)
        s[1] = s[1] + (x64 * x64).sum(dim=dims)
        s[2] += x.numel() // x.shape[1]

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    counts = [None if layer.num_batches_tracked is None else layer.num_batches_tracked.clone()
              for layer in layers]
    was_training = model.training
    run = forward or model
    n = 0
    param = next(model.parameters(), None)
    cuda = [param.device] if param is not None and param.device.type == "cuda" else []
    try:
        model.train()
        with torch.random.fork_rng(devices=cuda):  # dropout draws must not move training's generators
            torch.manual_seed(seed)
            for x in batches:
                run(x)
                n += 1
    finally:
        for h in handles:
            h.remove()
        for layer, count in zip(layers, counts):
            if count is not None:
                layer.num_batches_tracked.copy_(count)
        model.train(was_training)
    for layer in layers:
        if layer not in sums:  # a layer no batch reached (an unused branch) keeps its statistics
            continue
        total, squares, count = sums[layer]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0) * (count / max(1, count - 1))
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(var.to(layer.running_var.dtype))
    return n


def measure_batch_norm(trainer, model: nn.Module) -> None:
    """Set ``model``'s batch-norm statistics to those of ``trainer.bn_batches`` training batches (whole
    batches on every rank, so that no rank waits for another)."""
    keyed = KeyedItems(trainer.train_data, trainer.seed)
    plan = epoch_plan(len(trainer.train_data), trainer.batch_size, trainer.bn_batches, trainer.seed, _BN_STAGE, 0,
                      cover=getattr(trainer.train_data, "cover", None))
    kwargs = trainer.stages[-1].forward_kwargs

    def inputs():
        for b, row in enumerate(plan):
            keys = [(_BN_STAGE, 0, b, j, int(i)) for j, i in enumerate(row)]
            batch = (trainer.batch_maker.train_batch(keys) if trainer.batch_maker is not None
                     else torch.utils.data.default_collate([keyed[k] for k in keys]))
            yield trainer.prepare(batch)[0]

    with trainer.autocast():
        population_statistics(model, inputs(), forward=lambda x: model(x, **kwargs), seed=trainer.seed)


class FixedStatistics:
    """Trainer ``bn_fixed``: the last ``share`` of each learning-rate cycle of a stage trained with fixed
    batch-norm statistics. Where the share starts (:meth:`before_step`) the statistics are measured over
    the trainer's ``bn_batches`` batches (:func:`measure_batch_norm`); until the cycle ends every
    batch-norm layer normalises with them in training as in evaluation (:meth:`train_mode`; weight and
    bias still train, the statistics do not move), and the network scored meanwhile keeps them
    (:func:`scored_with`). A run resumed inside a share keeps the statistics its checkpoint holds."""

    def __init__(self, share: float, bn_batches: int, ema: float = 0.0, *, where: str = "Trainer",
                 name: str = "bn_fixed"):
        """Checks the settings (``where``/``name``: whose parameter the errors name, e.g. a chapter's)."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
            raise ParameterError(f"{where}: {name} must be a share in [0, 1) (0: off), got {share!r}")
        if share and not bn_batches:
            raise ParameterError(f"{where}: {name} needs bn_batches (the batches its statistics are measured on)")
        if share and ema:
            raise ParameterError(f"{where}: ema and {name} cannot both be on (the averaged weights were not "
                                 f"trained with the fixed statistics); set one of them to 0")
        self.share = float(share)
        #: whether the statistics are fixed now (the step about to run is inside a share)
        self.now = False

    def spans(self, total: int, cycles: int = 1) -> list[tuple[int, int]]:
        """(first, end) stage iterations of each cycle's fixed share, for a stage of ``total`` iterations
        whose schedule runs ``cycles`` times (a share rounding to no iteration is left out)."""
        if not self.share or total < 1:
            return []
        length = total / max(1, int(cycles))
        spans = []
        for k in range(max(1, int(cycles))):
            end = int(round(length * (k + 1)))
            first = end - int(round(self.share * length))
            if first < end:
                spans.append((first, end))
        return spans

    def before_step(self, trainer, total: int) -> None:
        """Fix the statistics (measuring them) where a share starts, release them where it ends; call
        before each training step of a stage of ``total`` iterations."""
        it = trainer.state.stage_iteration
        cycles = int(getattr(trainer.schedule, "cycles", 1) or 1)
        span = next(((a, b) for a, b in self.spans(total, cycles) if a <= it < b), None)
        if span is not None and not self.now and it == span[0]:
            measure_batch_norm(trainer, trainer.model)
        self.now = span is not None

    def keeps(self, best) -> bool:
        """Whether the network scored now keeps the statistics it trains with: they are fixed and the
        scored weights are the model's own (``best`` None: no best-validation weights restored)."""
        return best is None and self.now

    def train_mode(self, model: nn.Module) -> None:
        """``model.train()``, with its batch-norm layers in evaluation mode while the statistics are fixed."""
        model.train()
        if self.now:
            for layer in batch_norms(model):
                layer.eval()


def scored_with(trainer, state: dict, measure: bool = True) -> dict:
    """``state`` (the weights of ``trainer``'s network) with the batch-norm statistics it is scored with:
    measured over the trainer's ``bn_batches`` batches, or those ``state`` holds where it has no batch
    norm, measuring is off (``bn_batches`` 0) or ``measure`` is False (statistics held fixed)."""
    if not measure or not trainer.bn_batches or not batch_norms(trainer.raw_model):
        return state
    net = copy.deepcopy(trainer.raw_model)
    net.load_state_dict(state)
    measure_batch_norm(trainer, net)
    return net.state_dict()
