"""An exponential moving average of a network's weights (Polyak averaging), for the Trainer's ``ema``.

The average of the last ~``1 / (1 - decay)`` updates is what the learning rate's noise would otherwise
leave in the weights: scoring it shows where training *is*, not where the last few steps happened to
throw the weights. The runner scores the averaged weights at half the budget and at its end, so the
convergence flag compares like with like (:func:`npcrepro.engine.half_budget.save_half_budget`).

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the rule of TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so that a short budget is not dominated by the
initial weights. Floating-point entries of the state dict (parameters and BatchNorm running
statistics) are averaged; integer ones (BatchNorm's batch counter) are copied.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from npcrepro.errors import ParameterError

__all__ = ["WeightAverage", "WeightAveraging"]


class WeightAverage:
    """Moving average of ``model``'s state dict, started at its current weights.

    Parameters
    ----------
    model : nn.Module
    decay : float
        In (0, 1): the weight of the old average at each update once warmed up (0.99 averages over
        about the last 100 updates).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ParameterError(f"weight-average decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next update uses (warmed up over the first updates)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each optimiser step)."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            avg = self.weights[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach().to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: Mapping) -> None:
        if set(state["weights"]) != set(self.weights):
            raise ParameterError("weight-average state does not match the network's parameters")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for k, v in state["weights"].items():
            self.weights[k].copy_(v)


class WeightAveraging:
    """The Trainer's ``ema`` as a handler on its events: a fresh :class:`WeightAverage` of the
    network at every "stage_start" (before a resumed stage restores it), folded in after every
    optimiser "step". The Trainer scores, validates and checkpoints :attr:`average`."""

    def __init__(self, decay: float):
        self.decay = float(decay)  # checked by WeightAverage (and first by the Trainer's ``ema``)
        self.average: WeightAverage | None = None

    def __call__(self, trainer, event: str, info: dict) -> None:
        if event == "step":
            self.average.update(trainer.model)
        elif event == "stage_start":
            self.average = WeightAverage(trainer.model, self.decay)
