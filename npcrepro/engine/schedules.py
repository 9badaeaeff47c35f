"""Optimisers and learning-rate schedules of the five papers, as plain named specs.

A schedule is a multiplier of the stage's base learning rate, a pure function of the iteration and
epoch counters (so resuming is exact), except ``plateau`` which keeps a small state (saved in
checkpoints):

==============  ==========================================================  ===========================
kind            rule                                                         paper
==============  ==========================================================  ===========================
constant        1                                                            chen2020 (Adam 1e-3/1e-4)
step            gamma ** (t // step_size)                                    li2018 (SGD, 1e5 it, 0.1)
exponential     gamma ** (t // every)  (``staircase=False``: t / every)       luo2020 (0.9/10 it),
                                                                             guo2021 (0.9/500 it)
multistep       gamma ** (number of milestones <= t)
poly            (1 - t / total) ** power
cosine          0.5 * (1 + cos(pi * t / total))
plateau         x factor after ``patience`` evaluations without improvement  xue2020 (x0.8 after 5)
==============  ==========================================================  ===========================

``t`` counts iterations (``unit="iteration"``, default) or epochs (``unit="epoch"``) from the start of
the training stage. ``warmup`` (in the same unit) ramps linearly from 0 to the rule's value.

``cycles`` (poly and cosine only) restarts the rule, warm-up included, ``cycles`` times over ``total``
(warm restarts, SGDR: Loshchilov & Hutter, ICLR 2017). With 2 cycles the network at half its budget
has been annealed to the end of a whole schedule, so the runner's half-budget score is that of a
finished shorter training, not of a network caught at half its learning rate.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from npcrepro.errors import ParameterError

__all__ = ["Schedule", "make_schedule", "make_optimizer", "cosine_cycles", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "exponential", "multistep", "poly", "cosine", "plateau")


def make_optimizer(params: Iterable, name: str = "adam", lr: float = 1e-3, *, momentum: float = 0.9,
                   weight_decay: float = 0.0, nesterov: bool = False,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """An optimiser by name: ``sgd`` (with ``momentum``, ``nesterov``), ``adam``, ``adamw``, ``rmsprop``.

    Adam and AdamW run PyTorch's fused implementation (one kernel over all parameters) where every
    parameter is a floating-point tensor on the CPU or a CUDA device: the same update to float rounding,
    without a Python loop of about ten small operations per parameter tensor (a 2D U-Net's training step
    on one CPU thread: 53 -> 46 ms, see ``npcrepro bench engine``)."""
    name = name.lower()
    params = list(params)
    if not params:
        raise ParameterError("no trainable parameters for the optimiser (is everything frozen?)")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                   fused=_fusable(params))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps)
    raise ParameterError(f"unknown optimiser {name!r} (valid: {', '.join(OPTIMIZERS)})")


def _fusable(params: list) -> bool:
    """Whether every tensor of ``params`` (tensors or param-group dicts) can take a fused optimiser:
    floating point, on the CPU or a CUDA device."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return all(isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type in ("cpu", "cuda")
               for t in tensors)


class Schedule:
    """A learning-rate multiplier; see the module docstring for the kinds.

    Parameters
    ----------
    kind : str
        One of :data:`SCHEDULES`.
    unit : "iteration" | "epoch"
    step_size, every : int
        Period for ``step`` / ``exponential`` (``every`` and ``step_size`` are synonyms).
    gamma : float
        Decay factor for step/exponential/multistep.
    milestones : sequence of int
    total : int
        Length for poly/cosine (in ``unit``); the trainer fills it from the stage budget when None.
    power : float
    factor, patience, threshold, cooldown, min_scale : plateau settings (``threshold`` relative).
    warmup : int
    cycles : int
        Warm restarts of poly/cosine: the rule and its warm-up run ``cycles`` times over ``total``.
    """

    def __init__(self, kind: str = "constant", *, unit: str = "iteration", step_size: int | None = None,
                 every: int | None = None, gamma: float = 0.1, staircase: bool = True,
                 milestones: Iterable[int] = (), total: int | None = None, power: float = 0.9,
                 factor: float = 0.1, patience: int = 10, threshold: float = 1e-4, cooldown: int = 0,
                 min_scale: float = 0.0, warmup: int = 0, cycles: int = 1):
        if kind not in SCHEDULES:
            raise ParameterError(f"unknown schedule {kind!r} (valid: {', '.join(SCHEDULES)})")
        if unit not in ("iteration", "epoch"):
            raise ParameterError(f"schedule unit must be 'iteration' or 'epoch', got {unit!r}")
        self.kind, self.unit = kind, unit
        self.period = int(every or step_size or 0)
        if kind in ("step", "exponential") and self.period < 1:
            raise ParameterError(f"schedule {kind!r} needs step_size/every >= 1")
        self.gamma, self.staircase = float(gamma), bool(staircase)
        self.milestones = sorted(int(m) for m in milestones)
        self.total, self.power = total, float(power)
        self.factor, self.patience, self.threshold = float(factor), int(patience), float(threshold)
        self.cooldown, self.min_scale, self.warmup = int(cooldown), float(min_scale), int(warmup)
        self.cycles = int(cycles)
        if self.cycles < 1 or (self.cycles > 1 and kind not in ("poly", "cosine")):
            raise ParameterError(f"schedule {kind!r}: cycles must be 1 (or more for poly and cosine), got {cycles}")
        # plateau state
        self.scale = 1.0
        self.best = math.inf
        self.bad = 0
        self.cooling = 0

    # -------------------------------------------------------------------- the rule
    def factor_at(self, iteration: int, epoch: int) -> float:
        """Multiplier of the base lr at stage ``iteration``/``epoch`` (both counted from 0)."""
        t = iteration if self.unit == "iteration" else epoch
        if self.cycles > 1 and self.total:  # warm restarts: the rule (and its warm-up) again each cycle
            length = self.total / self.cycles
            t = t - length * min(int(t // length), self.cycles - 1)
            return self._factor(t, length)
        return self._factor(t, self.total)

    def _factor(self, t: float, total) -> float:
        k = self.kind
        if k == "constant" or k == "plateau":
            f = self.scale if k == "plateau" else 1.0
        elif k == "step":
            f = self.gamma ** (t // self.period)
        elif k == "exponential":
            f = self.gamma ** ((t // self.period) if self.staircase else t / self.period)
        elif k == "multistep":
            f = self.gamma ** sum(1 for m in self.milestones if m <= t)
        elif k in ("poly", "cosine"):
            if not total:
                raise ParameterError(f"schedule {k!r} needs total")
            x = min(t / total, 1.0)
            f = (1 - x) ** self.power if k == "poly" else 0.5 * (1 + math.cos(math.pi * x))
        else:  # pragma: no cover
            raise AssertionError(k)
        if self.warmup and t < self.warmup:
            f *= (t + 1) / self.warmup
        return f

    def on_evaluation(self, value: float) -> bool:
        """Feed a validation value (lower is better); returns True when the plateau rule cut the lr."""
        if self.kind != "plateau" or value is None or not math.isfinite(value):
            return False
        margin = abs(self.best) * self.threshold if math.isfinite(self.best) else 0.0
        if value < self.best - margin:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooling > 0:
            self.cooling -= 1
            self.bad = 0
        if self.bad >= self.patience:
            new = max(self.scale * self.factor, self.min_scale)
            reduced = new < self.scale
            self.scale, self.bad, self.cooling = new, 0, self.cooldown
            return reduced
        return False

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "cooling": self.cooling}

    def load_state_dict(self, state: Mapping) -> None:
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.bad, self.cooling = int(state["bad"]), int(state["cooling"])

    def describe(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind, "unit": self.unit}
        if self.kind in ("step", "exponential"):
            d.update(every=self.period, gamma=self.gamma)
        if self.kind == "multistep":
            d.update(milestones=self.milestones, gamma=self.gamma)
        if self.kind in ("poly", "cosine"):
            d.update(total=self.total, power=self.power)
            if self.cycles > 1:
                d["cycles"] = self.cycles
        if self.kind == "plateau":
            d.update(factor=self.factor, patience=self.patience, threshold=self.threshold)
        if self.warmup:
            d["warmup"] = self.warmup
        return d

    def __repr__(self) -> str:
        return "Schedule(" + ", ".join(f"{k}={v!r}" for k, v in self.describe().items()) + ")"


def make_schedule(spec: None | str | Mapping | Schedule, *, total: int | None = None,
                  total_epochs: int | None = None) -> Schedule:
    """A :class:`Schedule` from ``None`` (constant), a kind name, a dict of keyword arguments (with
    ``kind``), or a Schedule (returned as a fresh copy). ``total``/``total_epochs`` fill poly/cosine."""
    if spec is None:
        sched = Schedule("constant")
    elif isinstance(spec, Schedule):
        sched = Schedule(spec.kind, **_kwargs_of(spec))
    elif isinstance(spec, str):
        sched = Schedule(spec)
    elif isinstance(spec, Mapping):
        kw = dict(spec)
        kind = kw.pop("kind", "constant")
        try:
            sched = Schedule(kind, **kw)
        except TypeError as exc:
            raise ParameterError(f"schedule {kind!r}: {exc}") from None
    else:
        raise ParameterError(f"schedule must be None, a name, a dict or a Schedule, got {type(spec).__name__}")
    if sched.kind in ("poly", "cosine") and sched.total is None:
        sched.total = total if sched.unit == "iteration" else total_epochs
    return sched


def cosine_cycles(total: int, warmup: float = 0.0, cycles: int = 1, *, kind: str = "cosine",
                  unit: str = "iteration") -> dict:
    """The spec of a decay to 0 (``kind`` cosine or poly) over ``total`` (in ``unit``), run ``cycles``
    times (warm restarts), each cycle after a linear warm-up over the share ``warmup`` of the cycle."""
    cycles = int(cycles or 1)
    spec = {"kind": kind, "unit": unit, "total": int(total),
            "warmup": int(round(float(warmup) * int(total) / cycles))}
    return {**spec, "cycles": cycles} if cycles > 1 else spec


def _kwargs_of(s: Schedule) -> dict:
    return dict(unit=s.unit, every=s.period or None, gamma=s.gamma, staircase=s.staircase,
                milestones=s.milestones, total=s.total, power=s.power, factor=s.factor,
                patience=s.patience, threshold=s.threshold, cooldown=s.cooldown,
                min_scale=s.min_scale, warmup=s.warmup, cycles=s.cycles)
