"""A training run's phases (:class:`Stage`), its counters (:class:`TrainState`) and what
:meth:`~npcrepro.engine.loop.Trainer.fit` returns (:class:`History`)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from npcrepro.engine.schedules import make_schedule
from npcrepro.errors import ParameterError

__all__ = ["Stage", "TrainState", "History", "STAGE_FIELDS"]


@dataclass
class Stage:
    """One phase of training.

    Parameters
    ----------
    name : str
    epochs, iterations : int
        The budget (exactly one). An epoch is ``iterations_per_epoch`` updates (the Trainer's; by
        default one pass over the training set).
    optimizer : "sgd" | "adam" | "adamw" | "rmsprop"
    lr, momentum, weight_decay, nesterov, betas
    schedule : None | str | dict | Schedule
        See :mod:`npcrepro.engine.schedules`, e.g. ``{"kind": "step", "step_size": 100000,
        "gamma": 0.1}`` or ``{"kind": "plateau", "factor": 0.8, "patience": 5}``.
    trainable : sequence of str, optional
        Parameter-name prefixes to train (None: all); ``frozen`` prefixes are then removed.
    lr_scale : mapping of str to float, optional
        Learning-rate multipliers by parameter-name prefix (the longest matching prefix wins; the
        other trainable parameters take 1), e.g. ``{"encoder": 0.01}`` to fine-tune layers an earlier
        stage trained at a hundredth of the rate of the layers this stage adds. The schedule scales
        every group alike.
    loss : callable(output, target) -> scalar tensor, optional
        Overrides the Trainer's loss for this stage.
    target_fn : callable(target) -> target, optional
        Maps the batch's target to what this stage's output is compared with (e.g. downsampling).
    forward_kwargs : dict
        Extra keyword arguments for ``model(x, **forward_kwargs)`` (e.g. ``{"stage": 1}``).
    eval_every : int, optional
        Iterations between validations / curve rows (default: one epoch).
    early_stopping : int, optional
        Stop the stage after this many evaluations without a validation-loss improvement of more
        than ``min_delta``.
    grad_clip : float, optional
        Clip the gradient norm.
    """

    name: str = "train"
    epochs: int | None = None
    iterations: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Any = None
    trainable: Sequence[str] | None = None
    frozen: Sequence[str] = ()
    lr_scale: Mapping[str, float] = field(default_factory=dict)
    loss: Callable | None = None
    target_fn: Callable | None = None
    forward_kwargs: dict = field(default_factory=dict)
    eval_every: int | None = None
    early_stopping: int | None = None
    min_delta: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.iterations is None):
            raise ParameterError(f"stage {self.name!r}: give exactly one of epochs / iterations "
                                 f"(got epochs={self.epochs}, iterations={self.iterations})")
        n = self.epochs if self.epochs is not None else self.iterations
        if int(n) < 0:
            raise ParameterError(f"stage {self.name!r}: budget must be >= 0, got {n}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ParameterError(f"stage {self.name!r}: lr must be positive, got {self.lr}")
        for pfx, k in dict(self.lr_scale).items():
            if isinstance(k, bool) or not (isinstance(k, numbers.Real) and k > 0 and math.isfinite(k)):
                raise ParameterError(f"stage {self.name!r}: lr_scale of {pfx!r} must be a positive number, "
                                     f"got {k!r}")
        make_schedule(self.schedule, total=1, total_epochs=1)  # validate early

    def budget(self, iterations_per_epoch: int) -> int:
        return int(self.iterations) if self.iterations is not None else int(self.epochs) * iterations_per_epoch

    def set_trainable(self, model) -> list:
        """Switch ``requires_grad`` of ``model``'s parameters to this stage's ``trainable`` and
        ``frozen`` prefixes and return the trainable ones; a prefix that names no parameter is a
        ParameterError."""
        names = [n for n, _ in model.named_parameters()]
        for n, p in model.named_parameters():
            on = self.trainable is None or any(n.startswith(pfx) for pfx in self.trainable)
            if any(n.startswith(pfx) for pfx in self.frozen):
                on = False
            p.requires_grad_(on)
        for pfx in list(self.trainable or []) + list(self.frozen):
            if not any(n.startswith(pfx) for n in names):
                raise ParameterError(f"stage {self.name!r}: no parameter name starts with {pfx!r}")
        return [p for p in model.parameters() if p.requires_grad]

    def param_groups(self, model) -> list[dict]:
        """The optimiser's parameter groups for this stage: the trainable parameters of ``model``
        (after :meth:`set_trainable`) grouped by their :attr:`lr_scale` multiplier, each group a dict
        with ``params`` and ``lr_scale``. A prefix of ``lr_scale`` that names no trainable parameter
        is a ParameterError."""
        scales = dict(self.lr_scale)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for pfx in scales:
            if not any(n.startswith(pfx) for n, _ in named):
                raise ParameterError(f"stage {self.name!r}: lr_scale names {pfx!r}, which no trainable "
                                     "parameter's name starts with")
        groups: dict[float, list] = {}
        for n, p in named:
            match = max((pfx for pfx in scales if n.startswith(pfx)), key=len, default=None)
            groups.setdefault(1.0 if match is None else float(scales[match]), []).append(p)
        return [{"params": ps, "lr_scale": k} for k, ps in groups.items()]

    def describe(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__
               if k not in ("loss", "target_fn", "schedule")}
        out["forward_kwargs"] = dict(self.forward_kwargs)
        out["lr_scale"] = dict(self.lr_scale)
        out["schedule"] = make_schedule(self.schedule, total=1, total_epochs=1).describe()
        out["loss"] = type(self.loss).__name__ if self.loss is not None else None
        return out


STAGE_FIELDS = {f for f in Stage.__dataclass_fields__}


@dataclass
class TrainState:
    """Counters saved in checkpoints."""

    stage: int = 0
    stage_iteration: int = 0
    iteration: int = 0
    best: float = math.inf
    best_iteration: int = -1
    bad_evals: int = 0
    stage_stopped: bool = False
    stopped_early: list = field(default_factory=list)
    acc_loss: float = 0.0
    acc_count: float = 0.0
    acc_samples: int = 0
    done: bool = False

    def next_stage(self, finished: str) -> None:
        """Move on from stage ``finished`` (recorded when it stopped early): the next stage's
        counters, best loss and patience start afresh."""
        if self.stage_stopped:
            self.stopped_early.append(finished)
        self.stage += 1
        self.stage_iteration = 0
        self.best, self.best_iteration, self.bad_evals = math.inf, -1, 0
        self.stage_stopped = False


@dataclass
class History:
    """What :meth:`Trainer.fit` returns. ``rows`` are the curve rows (also in curves.csv)."""

    rows: list[dict]
    iterations: int
    completed: bool
    best_val_loss: float | None
    best_iteration: int | None
    stopped_early: list[str]
    seconds: float

    @property
    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def final_train_loss(self) -> float | None:
        vals = [r["train_loss"] for r in self.rows if r.get("train_loss") is not None]
        return vals[-1] if vals else None
