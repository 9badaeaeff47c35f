"""The one training loop: 2D and 3D models, single process or torchrun DDP, multi-stage, resumable.

>>> trainer = Trainer(model, loss, train_ds, val_data=val_ds, batch_size=8, iterations=2000,
...                   optimizer="adam", lr=1e-3, schedule={"kind": "exponential", "every": 500,
...                   "gamma": 0.9}, eval_every=100, run=run)
>>> history = trainer.fit()            # or trainer.fit(resume=True) after a kill

Design points
-------------
* A run is a list of :class:`Stage` (one by default). Each stage has its own budget (epochs or
  iterations), optimiser, learning rate, schedule, trainable parameters (freezing), loss and model
  forward arguments: that covers chen2020's self-transfer (frozen encoders at 1e-3, then all at 1e-4)
  and li2018's stepwise training (36x36, then 72x72, then full-resolution score maps).
* Data order is a pure function of (seed, stage, epoch) and every sample's augmentation of (seed,
  stage, epoch, position): a resumed run sees exactly the batches the uninterrupted run saw, and the
  checkpoint restores optimiser, schedule, scaler and RNG states, so it ends on the same numbers.
* Under torchrun each rank takes its share (``rank::world_size``) of every global batch, so a
  distributed run follows the single-process run with the same global batch.
* Mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler), and on the CPU
  with ``amp_dtype="bfloat16"`` (to test that path without a GPU); channels-last memory format.
  ``compile=True`` asks for ``torch.compile`` (falls back to eager with a warning when compilation
  fails). CPU runs are deterministic.
* What is not the loop attaches to its events (``callbacks``), as MONAI's handlers do: checkpoints and
  resuming, the weights' moving average, progress bar or lines, plan probe and half-budget copy
  (:mod:`~npcrepro.engine.checkpoints`, ``.averaging``, ``.progress``, ``.probe``, ``.half_budget``).
  Events: "stage_start", "step" (after each optimiser step), "improved" (a better validation loss),
  "evaluation", "iteration", "pause" (a session stops before its budget), "finish", "end".
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from npcrepro.engine import distributed as D
from npcrepro.engine.averaging import WeightAverage, WeightAveraging
from npcrepro.engine.batchnorm import FixedStatistics, measure_batch_norm, scored_with
from npcrepro.engine.checkpoints import CHECKPOINT_FORMAT, Checkpointer, load_checkpoint, save_checkpoint
from npcrepro.engine.data import epoch_plan
from npcrepro.engine.device import autocast_dtype, configure_determinism, conv_memory_format, resolve_device
from npcrepro.engine.loaders import (BATCH_MODES, KeyedItems, batch_mode, device_batch_makers, loader_workers,
                                     split_batch, to_float, worker_init)
from npcrepro.engine.probe import PlanProbe
from npcrepro.engine.progress import ProgressBar, ProgressLog, interval_from_env
from npcrepro.engine.schedules import Schedule, make_optimizer, make_schedule
from npcrepro.engine.stages import STAGE_FIELDS, History, Stage, TrainState
from npcrepro.engine.validation import validation_loss
from npcrepro.errors import DataError, ParameterError

__all__ = ["Stage", "Trainer", "History", "TrainState", "load_checkpoint", "CHECKPOINT_FORMAT"]


class Trainer:
    """Train ``model`` on ``train_data`` with ``loss``; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        Returns logits (a tensor, or a tuple whose items the loss understands).
    loss : callable(output, target) -> scalar tensor
    train_data : Dataset
        Items ``(image, target)`` tensors; datasets with ``get(index, rng)`` (see
        :mod:`npcrepro.engine.data`) get per-sample generators, others get seeded global RNGs. A
        dataset whose ``cover`` is an (items, structures) bool array gets batches that show every
        structure (:func:`npcrepro.engine.data.covering_plan`); otherwise epochs of permutations.
    val_data : Dataset, optional
        Validation items (``dataset[i]``, no augmentation); its mean loss drives early stopping,
        the plateau schedule and ``checkpoint_best.pt``.
    stages : list of Stage, optional
        Default: one Stage from the keyword arguments that Stage takes (``epochs``/``iterations``,
        ``optimizer``, ``lr``, ``schedule``, ``early_stopping``, ...).
    batch_size : int
        Global batch size (split over ranks under torchrun).
    iterations_per_epoch : int, optional
        Updates per epoch (chen2020: 75); default ``len(train_data) // batch_size`` (at least 1).
    seed : int
    device : "auto" | "cpu" | "cuda" | ...
    amp, amp_dtype : mixed precision on CUDA (bf16 where supported, else fp16 with a scaler). On the
        CPU only with ``amp_dtype="bfloat16"`` given: bf16 autocast through the same code path.
    channels_last : bool
        Keep the model and its inputs in channels-last memory (NHWC / NDHWC) on every device: faster
        convolutions on CUDA and on CPU alike (``npcrepro bench engine`` prints the ratio).
    compile : bool | "auto"
        ``torch.compile`` the model: off by default; "auto" compiles on CUDA only (where it pays off;
        on CPU compilation takes longer than the short runs of the cpu profile save).
    deterministic : bool
        Deterministic algorithms (default True).
    num_workers : int | "auto"
        DataLoader worker processes (0: load in the main process). "auto" (the default): 0 on the
        CPU, where the cores train; on CUDA :func:`loader_workers`, because sampling and augmenting
        a batch of 512 x 512 slices in the main process takes longer than the GPU's step (measured:
        the gpu-lite template U-Net trained at 1.5 it/s with the GPU 19 % busy). Batches do not
        depend on it: every item is drawn from its own seeded generator.
    batches : "auto" | "device" | "loader"
        Where training (and validation) batches are made. "device": on the training device, a whole
        batch at a time (:mod:`npcrepro.engine.batches`; the dataset's arrays are moved there once),
        when the dataset offers ``device_batches`` and its augmentation has a batched form, else the
        loader. "loader": item by item (``get(index, rng)``) in the main process or DataLoader workers.
        "auto" (the default): "device" on CUDA, "loader" elsewhere. ``$NPCREPRO_BATCHES`` overrides
        it. Both draw each sample's random values from the same generator; see the batches module.
    run : RunFolder, optional
        Where curves and checkpoints go (rank 0 only). Without it nothing is written (and ``resume``
        needs an explicit checkpoint path).
    progress : bool
        tqdm progress bar with loss, samples/s and lr (rank 0 only). Without it, when
        ``$NPCREPRO_PROGRESS_SECONDS`` is set, a plain line on stderr that often
        (:class:`npcrepro.engine.progress.ProgressLog`; ``npcrepro run``/``book`` set it).
    checkpoint_every : int, optional
        Also write ``checkpoint_last.pt`` every this many iterations (it is always written at each
        evaluation and at the end).
    callbacks : iterable of callable(trainer, event, info)
        Handlers of what is not the loop (progress, the plan probe, the half-budget copy, test hooks);
        one with a ``close()`` method has it called when ``fit`` returns or raises.
        Events: "stage_start" (the stage set up; a resumed run's states restored), "iteration",
        "evaluation", "end". A callback may raise to stop training
        (as a kill would); ``fit(resume=True)`` continues from the last checkpoint.
    max_iterations_this_session : int, optional
        Stop cleanly (after writing a checkpoint) after this many iterations in this call.
    restore_best : bool | "auto"
        Load the best-validation weights at the end ("auto": when the final stage early-stops).
    find_unused_parameters : bool
        Passed to DDP (needed when a stage's forward skips trainable parameters).
    stage_iteration_cap : int, optional
        Run at most this many iterations per stage (the dry run: 2), whatever the stage's budget.
    val_item_cap : int, optional
        Validate on at most this many items (the first ones; the dry run: one batch).
    ema : float
        Decay of a moving average of the weights within each stage
        (:class:`npcrepro.engine.averaging.WeightAverage`; 0: off). The averaged weights are the
        trained network at the end (unless best-validation weights are restored) and what
        :meth:`scored_state` returns during training.
    bn_batches : int
        Batch-norm statistics from this many training batches (0: off, the running averages): at the
        end of training, and in the half-budget copy (:meth:`final_state`), every batch-norm layer's
        running mean and variance are set to the population statistics of its inputs over
        ``bn_batches`` batches drawn as training batches are, from keys of their own (the same
        batches every time; :mod:`npcrepro.engine.batchnorm` says why).
    bn_fixed : float
        Share of each learning-rate cycle, at its end, trained with the measured batch-norm statistics
        held fixed, as evaluation normalises (0: off; needs ``bn_batches``; not with ``ema``): the
        network scored is the network trained (:class:`~npcrepro.engine.batchnorm.FixedStatistics`).
    probe : bool
        Attach :class:`~npcrepro.engine.probe.PlanProbe` (the dry run): one training step measured at the
        first batch of every stage (FLOPs, memory, batch, budget) into ``plan.json`` (``npcrepro plan``).
    """

    def __init__(self, model: nn.Module, loss: Callable, train_data, *, val_data=None,
                 stages: Sequence[Stage] | None = None, batch_size: int = 8,
                 val_batch_size: int | None = None, iterations_per_epoch: int | None = None,
                 seed: int = 0, device: str | torch.device = "auto", amp: bool = True,
                 amp_dtype: str | None = None, channels_last: bool = True, compile: bool | str = False,
                 deterministic: bool = True, num_workers: int | str = "auto", batches: str = "auto", run=None,
                 progress: bool = True,
                 desc: str = "train", checkpoint_every: int | None = None,
                 callbacks: Iterable[Callable] = (), max_iterations_this_session: int | None = None,
                 restore_best: bool | str = "auto", find_unused_parameters: bool = False,
                 stage_iteration_cap: int | None = None, val_item_cap: int | None = None,
                 probe: bool = False, ema: float = 0.0, bn_batches: int = 0, bn_fixed: float = 0.0,
                 **stage_kwargs):
        unknown = set(stage_kwargs) - STAGE_FIELDS
        if unknown:
            raise ParameterError(f"Trainer: unknown argument(s) {sorted(unknown)} (Stage takes: "
                                 f"{', '.join(sorted(STAGE_FIELDS))})")
        if stages is None:
            stages = [Stage(**stage_kwargs)]
        elif stage_kwargs:
            raise ParameterError(f"Trainer: pass stage settings inside stages, not as {sorted(stage_kwargs)}")
        if not stages:
            raise ParameterError("Trainer: no stages")
        if batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.loss = loss
        self.train_data = train_data
        self.val_data = val_data
        self.stages = list(stages)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.iterations_per_epoch = (int(iterations_per_epoch) if iterations_per_epoch
                                     else max(1, len(train_data) // self.batch_size))
        self.seed = int(seed)
        self.requested_device = device
        self.amp, self.amp_dtype, self.channels_last = amp, amp_dtype, channels_last
        self.compile = compile
        self.deterministic = deterministic
        if num_workers != "auto" and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                      or num_workers < 0):
            raise ParameterError(f"num_workers must be 'auto' or an integer >= 0, got {num_workers!r}")
        self.requested_workers = num_workers
        if batches not in BATCH_MODES:
            raise ParameterError(f"batches must be one of {', '.join(BATCH_MODES)}, got {batches!r}")
        self.requested_batches = batches
        self.batch_maker = self.val_maker = None
        self.run = run
        self.progress, self.desc = progress, desc
        if not 0.0 <= float(ema) < 1.0:
            raise ParameterError(f"Trainer: ema must be in [0, 1) (0: off), got {ema}")
        self.ema = float(ema)
        self.averaging = WeightAveraging(self.ema) if self.ema else None
        self.checkpointer = Checkpointer(checkpoint_every)
        # the loop's own handlers first: a resumed stage is restored before anyone sees "stage_start"
        self.callbacks = [h for h in (self.averaging, self.checkpointer) if h is not None] + list(callbacks)
        if progress:
            self.callbacks.append(ProgressBar())
        elif interval_from_env():  # an unattended run: plain progress lines on stderr
            self.callbacks.append(ProgressLog(interval_from_env()))
        if probe:
            self.callbacks.append(PlanProbe())
        self.max_iterations_this_session = max_iterations_this_session
        self.restore_best = restore_best
        self.find_unused_parameters = find_unused_parameters
        self.stage_iteration_cap = None if stage_iteration_cap is None else int(stage_iteration_cap)
        self.val_item_cap = int(val_item_cap) if val_item_cap else None
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
            raise ParameterError(f"Trainer: bn_batches must be an integer >= 0 (0: off), got {bn_batches!r}")
        self.bn_batches = bn_batches
        self.bn_fixing = FixedStatistics(bn_fixed, bn_batches, self.ema)
        self.iterations_per_epoch_given = bool(iterations_per_epoch)
        self.state = TrainState()
        self.rows: list[dict] = []
        #: ``time.perf_counter()`` when the first training batch was in hand (None: no step yet)
        self.first_step_at: float | None = None
        self._best_state: dict | None = None
        self._acc_dev: torch.Tensor | None = None
        self.info = D.env_info()
        self._ready = False
        if len(train_data) < 1:
            raise DataError("Trainer: the training set is empty")

    # ------------------------------------------------------------------ properties
    @property
    def raw_model(self) -> nn.Module:
        return self.model

    @property
    def average(self) -> WeightAverage | None:
        """The moving average of the weights in this stage (``ema``), else None."""
        return self.averaging.average if self.averaging is not None else None

    def scored_state(self) -> dict:
        """The weights that would be scored now: the moving average when ``ema`` is on, else the
        model's own (a state dict; its tensors are live, so copy before changing the model)."""
        return self.average.weights if self.average is not None else self.raw_model.state_dict()

    @property
    def checkpoint_dir(self) -> Path | None:
        return Path(self.run.path) if self.run is not None else None

    def is_main(self) -> bool:
        """Whether this process writes (rank 0, or not distributed)."""
        return self.info.rank == 0

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        env = D.env_info()
        dev = resolve_device(self.requested_device)
        if env.distributed and dev.type == "cuda":
            dev = torch.device("cuda", env.local_rank)
        self.info = D.setup(dev) if env.distributed else env
        if self.batch_size % self.info.world_size:
            raise ParameterError(f"batch_size {self.batch_size} is not divisible by the world size "
                                 f"{self.info.world_size}")
        self.device = dev
        self.cuda = dev.type == "cuda"
        self.num_workers = (loader_workers(self.cuda) if self.requested_workers == "auto"
                            else int(self.requested_workers))
        configure_determinism(self.deterministic)
        #: the dtype autocast computes in (None: full precision)
        self.mixed_dtype = autocast_dtype(self.amp, self.amp_dtype, self.cuda)
        self.use_amp = self.mixed_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.mixed_dtype == torch.float16)
        self.batch_maker, self.val_maker = device_batch_makers(self)
        self.model.to(dev)
        self._memory_format = None
        if self.channels_last:
            self._memory_format = conv_memory_format(self.model)
            if self._memory_format is not None:
                self.model.to(memory_format=self._memory_format)
        self._ready = True

    def batch_mode(self) -> str:
        """"device" or "loader": what :attr:`requested_batches` (or ``$NPCREPRO_BATCHES``) asks for on
        this trainer's device."""
        return batch_mode(self.requested_batches, self.cuda)

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=self.mixed_dtype)
        return contextlib.nullcontext()

    def _enter_stage(self, si: int) -> None:
        stage = self.stages[si]
        self.trainable = stage.set_trainable(self.model)
        self.optimizer = make_optimizer(stage.param_groups(self.model), stage.optimizer, stage.lr,
                                        momentum=stage.momentum,
                                        weight_decay=stage.weight_decay, nesterov=stage.nesterov,
                                        betas=stage.betas)
        total = stage.budget(self.iterations_per_epoch)
        self.schedule: Schedule = make_schedule(
            stage.schedule, total=total, total_epochs=max(1, math.ceil(total / self.iterations_per_epoch)))
        module: nn.Module = self.model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(self.model, device_ids=[self.device.index] if self.cuda else None,
                         find_unused_parameters=self.find_unused_parameters)
        self.ddp_module = module
        self.train_forward = module
        self.eval_forward = self.model
        self._compiled = False
        if self.compile is True or (self.compile == "auto" and self.cuda):
            try:
                self.train_forward = torch.compile(module)
                self.eval_forward = torch.compile(self.model)
                self._compiled = True
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"torch.compile unavailable ({exc.__class__.__name__}: {exc}); running eager")

    # ------------------------------------------------------------------ steps
    def prepare(self, batch):
        x, y = split_batch(batch)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if torch.is_tensor(y) else y
        return self.in_memory_format(x), y

    def in_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the model's memory format (channels-last) where it has the model's dimensions."""
        fmt = self._memory_format
        wanted = fmt is not None and x.dim() == (4 if fmt is torch.channels_last else 5)
        return x.contiguous(memory_format=fmt) if wanted else x

    def loss_for(self, stage: Stage) -> Callable:
        return stage.loss if stage.loss is not None else self.loss

    def _train_step(self, batch, stage: Stage) -> tuple[torch.Tensor, int]:
        self.bn_fixing.train_mode(self.model)
        x, y = self.prepare(batch)
        if stage.target_fn is not None:
            y = stage.target_fn(y)
        loss_fn = self.loss_for(stage)
        with self.autocast():
            try:
                out = self.train_forward(x, **stage.forward_kwargs)
            except Exception as exc:  # noqa: BLE001
                if not self._compiled:
                    raise
                warnings.warn(f"torch.compile failed ({exc.__class__.__name__}); falling back to eager")
                self.train_forward, self.eval_forward, self._compiled = self.ddp_module, self.model, False
                out = self.train_forward(x, **stage.forward_kwargs)
        loss = loss_fn(to_float(out), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if stage.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, stage.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._emit("step", {})
        return loss.detach(), int(x.shape[0])

    @torch.no_grad()
    def evaluate_loss(self, dataset=None, stage: Stage | None = None) -> float | None:
        """Mean loss over ``dataset`` (default the validation set), items weighted equally, pooled
        over ranks; of the averaged weights when ``ema`` is on (the network that is kept)."""
        dataset = self.val_data if dataset is None else dataset
        if dataset is None:
            return None
        if not self._ready:
            self._setup()
        return validation_loss(self, dataset, stage, averaged=True)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, which: str = "last") -> Path | None:
        """Write ``checkpoint_<which>.pt`` into the run folder (rank 0; every rank must call it)."""
        return save_checkpoint(self, which)

    # ------------------------------------------------------------------ logging
    def _emit(self, event: str, info: dict) -> None:
        for cb in self.callbacks:
            cb(self, event, info)

    def _row(self, stage: Stage, lr: float, val: float | None, seconds: float) -> dict:
        st = self.state
        s, n = D.all_reduce_sum([st.acc_loss, st.acc_count], self.device)
        train = s / n if n else None
        if train is not None and not math.isfinite(train):
            raise FloatingPointError(f"training loss is {train} at iteration {st.iteration} "
                                     f"(stage {stage.name!r}); lower the learning rate?")
        row = {"iteration": st.iteration, "epoch": round(st.stage_iteration / self.iterations_per_epoch, 4),
               "stage": stage.name, "lr": lr, "train_loss": train, "val_loss": val,
               "throughput": st.acc_samples / seconds if seconds > 0 else None}
        st.acc_loss = st.acc_count = 0.0
        st.acc_samples = 0
        return row

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool | str | os.PathLike = False) -> History:
        """Train all stages (or continue: ``resume=True`` reads ``checkpoint_last.pt`` of the run folder,
        or pass a checkpoint path). Returns the :class:`History`."""
        try:
            return self._fit(resume)
        except BaseException as exc:
            if self.run is not None and self.is_main():
                self.run.mark_failed(f"training failed: {exc.__class__.__name__}: {exc}")
            raise

    def _fit(self, resume) -> History:
        t_start = time.perf_counter()
        if self.run is not None and self.is_main():
            self.run.forget_failure()
        self._setup()
        self.checkpointer.pending = None
        if resume:
            path = (self.checkpoint_dir / "checkpoint_last.pt" if resume is True and self.checkpoint_dir
                    else Path(resume) if resume is not True else None)
            if path is None:
                raise ParameterError("resume=True needs a run folder (or pass a checkpoint path)")
            self.checkpointer.resume(self, path)
        else:
            self.state, self.rows, self._best_state = TrainState(), [], None
            torch.manual_seed(self.seed + 1000003 * self.info.rank)
            np.random.seed((self.seed + self.info.rank) % 2**32)
            random.seed(self.seed + self.info.rank)

        session = 0
        interrupted = False
        try:
            while self.state.stage < len(self.stages) and not self.state.done:
                si = self.state.stage
                stage = self.stages[si]
                self._enter_stage(si)
                self._emit("stage_start", {"stage": si, "name": stage.name})
                session, interrupted = self._run_stage(si, stage, session)
                if interrupted:
                    break
                self.state.next_stage(stage.name)
                if self.state.stage >= len(self.stages):
                    self.state.done = True
                    self._finish()
        finally:
            for cb in self.callbacks:
                if callable(getattr(cb, "close", None)):
                    cb.close()
        history = History(
            rows=list(self.rows), iterations=self.state.iteration, completed=self.state.done,
            best_val_loss=min((r["val_loss"] for r in self.rows if r.get("val_loss") is not None),
                              default=None),
            best_iteration=self._best_iteration(), stopped_early=list(self.state.stopped_early),
            seconds=time.perf_counter() - t_start)
        self._emit("end", {"history": history, "interrupted": interrupted})
        return history

    def stage_budget(self, stage: Stage) -> int:
        """Iterations ``stage`` runs: its budget, at most :attr:`stage_iteration_cap`."""
        n = stage.budget(self.iterations_per_epoch)
        return n if self.stage_iteration_cap is None else min(n, self.stage_iteration_cap)

    def _best_iteration(self) -> int | None:
        vals = [(r["val_loss"], r["iteration"]) for r in self.rows if r.get("val_loss") is not None]
        return min(vals)[1] if vals else None

    def _best_to_restore(self) -> dict | None:
        """The best-validation weights so far (in memory, else ``checkpoint_best.pt``) when the
        trainer restores them at the end (``restore_best``), else None."""
        want_best = (self.restore_best is True or (self.restore_best == "auto"
                                                  and self.stages[-1].early_stopping is not None))
        if not want_best or self.val_data is None:
            return None
        best = self._best_state
        if best is None and self.checkpoint_dir is not None and (self.checkpoint_dir / "checkpoint_best.pt").exists():
            ck = load_checkpoint(self.checkpoint_dir / "checkpoint_best.pt", self.device)
            best = (ck.get("average") or {}).get("weights") or ck["model"]  # averaged, if it was
        return best

    def final_state(self) -> dict:
        """The weights training would hand over if it ended now: the best-validation weights where
        the trainer restores them (``restore_best``), else :meth:`scored_state`. The runner's
        half-budget copy is these, so that half and full budget are picked by the same rule."""
        best = self._best_to_restore()
        state = best if best is not None else self.scored_state()
        return scored_with(self, state, self._ready and not self.bn_fixing.keeps(best))

    def _finish(self) -> None:
        best = self._best_to_restore()
        if best is not None:
            self.model.load_state_dict(best)
        if best is None and self.average is not None:
            self.model.load_state_dict(self.average.weights)
        if self.bn_batches and not self.bn_fixing.keeps(best):
            measure_batch_norm(self, self.model)
        self._emit("finish", {})
        if self.run is not None and self.is_main():
            self.run.write_curves(self.rows)
        D.barrier()

    def first_batch(self, si: int):
        """This rank's share of stage ``si``'s first training batch, collated from the loader's items
        (what the plan probe measures)."""
        plan = epoch_plan(len(self.train_data), self.batch_size, self.iterations_per_epoch, self.seed, si, 0,
                          cover=getattr(self.train_data, "cover", None))
        keyed = KeyedItems(self.train_data, self.seed)
        rank, world = self.info.rank, self.info.world_size
        return torch.utils.data.default_collate(
            [keyed[(si, 0, 0, j, int(plan[0, j]))] for j in range(rank, self.batch_size, world)])

    def _run_stage(self, si: int, stage: Stage, session: int) -> tuple[int, bool]:
        st = self.state
        ipe = self.iterations_per_epoch
        total = self.stage_budget(stage)
        eval_every = stage.eval_every or ipe
        world, rank = self.info.world_size, self.info.rank
        keyed = KeyedItems(self.train_data, self.seed)
        n_items = len(self.train_data)
        cover = getattr(self.train_data, "cover", None)
        t_row = time.perf_counter()
        lr = stage.lr

        def batches(start: int):
            """Item keys of every remaining batch of the stage, epoch by epoch (one plan each)."""
            for epoch in range(start // ipe, math.ceil(total / ipe)):
                plan = epoch_plan(n_items, self.batch_size, ipe, self.seed, si, epoch, cover=cover)
                for b in range(start % ipe if epoch == start // ipe else 0, min(ipe, total - epoch * ipe)):
                    yield [(si, epoch, b, j, int(plan[b, j])) for j in range(rank, self.batch_size, world)]

        if st.stage_iteration < total and not st.stage_stopped:
            # One loader for the rest of the stage: worker processes start once, not every epoch.
            if self.batch_maker is not None:  # whole batches on the device, from the same keys
                loader = (self.batch_maker.train_batch(keys) for keys in batches(st.stage_iteration))
            else:
                gen = torch.Generator().manual_seed(self.seed * 7 + si * 131 + st.stage_iteration // ipe)
                loader = torch.utils.data.DataLoader(
                    keyed, batch_sampler=batches(st.stage_iteration), num_workers=self.num_workers,
                    generator=gen, pin_memory=self.cuda,
                    worker_init_fn=worker_init if self.num_workers else None)
            for batch in loader:
                if self.first_step_at is None:
                    self.first_step_at = time.perf_counter()
                self.bn_fixing.before_step(self, total)
                epoch = st.stage_iteration // ipe
                lr = stage.lr * self.schedule.factor_at(st.stage_iteration, epoch)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                loss, n = self._train_step(batch, stage)
                st.stage_iteration += 1
                st.iteration += 1
                session += 1
                if self.cuda:  # keep the GPU queue going: accumulate on device, read at row time
                    d = loss.double() * n
                    self._acc_dev = d if self._acc_dev is None else self._acc_dev + d
                else:
                    st.acc_loss += float(loss) * n
                st.acc_count += n
                st.acc_samples += self.batch_size
                at_eval = st.stage_iteration % eval_every == 0 or st.stage_iteration == total
                if at_eval:
                    self.flush_loss()
                    seconds = time.perf_counter() - t_row
                    val = self.evaluate_loss(stage=stage)
                    row = self._row(stage, lr, val, seconds)
                    self.rows.append(row)
                    if val is not None:
                        if val < st.best - stage.min_delta:
                            st.best, st.best_iteration, st.bad_evals = val, st.iteration, 0
                            self._best_state = {k: v.detach().clone().cpu()
                                                for k, v in self.scored_state().items()}
                            self._emit("improved", row)
                        else:
                            st.bad_evals += 1
                            if stage.early_stopping is not None and st.bad_evals >= stage.early_stopping:
                                st.stage_stopped = True
                        self.schedule.on_evaluation(val)
                    if self.run is not None and self.is_main():
                        self.run.write_curves(self.rows)
                    self._emit("evaluation", row)
                    t_row = time.perf_counter()
                self._emit("iteration", {"iteration": st.iteration, "stage": si, "loss": loss, "lr": lr,
                                         "evaluated": at_eval})
                if self.max_iterations_this_session and session >= self.max_iterations_this_session:
                    self._emit("pause", {"iteration": st.iteration, "evaluated": at_eval})
                    return session, True
                if st.stage_stopped or st.stage_iteration >= total:
                    break
        return session, False

    def flush_loss(self) -> None:
        """Add the training loss summed on the device since the last row into the state's sum (a
        checkpoint written between rows holds it)."""
        acc = getattr(self, "_acc_dev", None)
        if acc is not None:
            self.state.acc_loss += float(acc)
            self._acc_dev = None
