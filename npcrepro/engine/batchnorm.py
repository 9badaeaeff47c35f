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
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from npcrepro.engine.data import epoch_plan
from npcrepro.engine.loaders import KeyedItems

__all__ = ["batch_norms", "population_statistics", "measure_batch_norm"]

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
