"""The validation loss of a Trainer's network (early stopping, the plateau schedule, the best weights)."""
from __future__ import annotations

import torch

from npcrepro.engine import distributed as D
from npcrepro.engine.loaders import to_float, worker_init
from npcrepro.engine.stages import Stage

__all__ = ["validation_loss"]


@torch.no_grad()
def validation_loss(trainer, dataset, stage: Stage | None = None, *, averaged: bool = False) -> float | None:
    """Mean loss of ``trainer``'s network over ``dataset``, items weighted equally, pooled over ranks
    (at most ``val_item_cap`` items; device batches when the trainer makes them for its validation
    set); ``stage`` defaults to the current one. ``averaged``: of the moving average of the weights
    where the trainer keeps one (``ema``; the network that is kept), else of the network's own."""
    if averaged and trainer.average is not None:
        own = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.model.load_state_dict(trainer.average.weights)
        try:
            return validation_loss(trainer, dataset, stage)
        finally:
            trainer.model.load_state_dict(own)
    stage = stage or trainer.stages[min(trainer.state.stage, len(trainer.stages) - 1)]
    loss_fn = trainer.loss_for(stage)
    was_training = trainer.model.training
    trainer.model.eval()
    n_items = min(len(dataset), trainer.val_item_cap) if trainer.val_item_cap else len(dataset)
    idx = list(range(trainer.info.rank, n_items, trainer.info.world_size))
    if trainer.val_maker is not None and dataset is trainer.val_data:
        loader = (trainer.val_maker.eval_batch(idx[i:i + trainer.val_batch_size])
                  for i in range(0, len(idx), trainer.val_batch_size))
    else:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx),
                                             batch_size=trainer.val_batch_size, shuffle=False,
                                             num_workers=trainer.num_workers,
                                             worker_init_fn=worker_init if trainer.num_workers else None)
    total = torch.zeros((), dtype=torch.float64, device=trainer.device)
    count = 0
    for batch in loader:
        x, y = trainer.prepare(batch)
        if stage.target_fn is not None:
            y = stage.target_fn(y)
        with trainer.autocast():
            out = trainer.eval_forward(x, **stage.forward_kwargs)
        total += loss_fn(to_float(out), y).double() * x.shape[0]
        count += int(x.shape[0])
    s, n = D.all_reduce_sum([float(total), float(count)], trainer.device)
    trainer.model.train(was_training)
    return s / n if n else None
