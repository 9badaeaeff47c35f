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
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import pickle
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from npcrepro.engine import distributed as D
from npcrepro.engine.averaging import WeightAverage
from npcrepro.engine.batchnorm import batch_norms, population_statistics
from npcrepro.engine.data import epoch_plan, item_rng
from npcrepro.engine.device import (configure_determinism, conv_memory_format, resolve_device, rng_state,
                                    set_rng_state)
from npcrepro.engine.progress import ProgressLog, interval_from_env
from npcrepro.engine.runs import to_jsonable
from npcrepro.engine.schedules import Schedule, make_optimizer, make_schedule
from npcrepro.errors import DataError, ParameterError
from npcrepro.paths import env_count

__all__ = ["Stage", "Trainer", "History", "TrainState", "load_checkpoint", "CHECKPOINT_FORMAT"]

#: 2: RNG states as tensors and numbers (loads with ``weights_only=True``); 1: numpy arrays.
CHECKPOINT_FORMAT = 2

#: Where batches are made (see ``Trainer(batches=...)``), and the variable that overrides it.
BATCH_MODES = ("auto", "device", "loader")
BATCHES_ENV = "NPCREPRO_BATCHES"

#: Stage key of the batches that measure batch-norm statistics (``bn_batches``): no training stage has it.
_BN_STAGE = 0xB47C


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
        make_schedule(self.schedule, total=1, total_epochs=1)  # validate early

    def budget(self, iterations_per_epoch: int) -> int:
        return int(self.iterations) if self.iterations is not None else int(self.epochs) * iterations_per_epoch

    def describe(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__
               if k not in ("loss", "target_fn", "schedule")}
        out["forward_kwargs"] = dict(self.forward_kwargs)
        out["schedule"] = make_schedule(self.schedule, total=1, total_epochs=1).describe()
        out["loss"] = type(self.loss).__name__ if self.loss is not None else None
        return out


_STAGE_FIELDS = {f for f in Stage.__dataclass_fields__}


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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by the Trainer, with ``torch.load(weights_only=True)``.

    A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads without running
    code. Anything else (a file from elsewhere whose pickle names Python callables, or a checkpoint
    of an older format) is refused with one DataError; there is no fallback to unsafe loading.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: checkpoint not found")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(_refusal(p, exc)) from None
    except Exception as exc:  # noqa: BLE001 - corrupt file of any kind
        raise DataError(f"{p}: cannot read checkpoint ({exc.__class__.__name__}: "
                        f"{_first_line(exc)})") from None
    found = ck.get("format") if isinstance(ck, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise DataError(f"{p}: not an npcrepro checkpoint of format {CHECKPOINT_FORMAT} (format "
                        f"{found if found is not None else '?'}); retrain, or resume it with the "
                        "npcrepro version that wrote it")
    return ck


def _refusal(p: Path, exc: BaseException) -> str:
    """Why ``p`` does not load with ``weights_only=True``: not a checkpoint at all, an old checkpoint
    (numpy RNG state), or a file whose pickle would call Python objects."""
    try:
        names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(p)))
    except Exception:  # noqa: BLE001 - not a torch zip file
        names = None
    if not names:
        return (f"{p}: cannot read checkpoint (corrupt, or not a torch checkpoint: "
                f"{_first_line(exc)[:120]})")
    if names and all(n.startswith("numpy.") for n in names):
        return (f"{p}: checkpoint of an older npcrepro (format 1: numpy arrays in its RNG state) is "
                "not loaded, because loading it would need unsafe unpickling; retrain, or resume it "
                "with the npcrepro version that wrote it")
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"{p}: refused: the checkpoint holds Python objects other than tensors, numbers, "
            f"strings, lists and dicts{f' ({shown})' if shown else ''}; loading it could run code, so "
            "npcrepro loads checkpoints only with torch.load(weights_only=True)")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else ""


class _Keyed(torch.utils.data.Dataset):
    """Wraps a dataset so that item keys (stage, epoch, batch, slot, index) select both the item and
    the generator used to draw/augment it."""

    def __init__(self, base, seed: int):
        self.base, self.seed = base, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        stage, epoch, b, j, idx = key
        rng = item_rng(self.seed, stage, epoch, b, j)
        if hasattr(self.base, "get"):
            return self.base.get(int(idx), rng)
        # A plain dataset that uses the global RNGs: seed them for this item, then restore them.
        s = int(rng.integers(2**31 - 1))
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                np.random.seed(s)
                random.seed(s)
                return self.base[int(idx)]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def loader_workers(cuda: bool) -> int:
    """DataLoader processes for ``num_workers="auto"``: none on the CPU; on CUDA one per two cores,
    at most 8, or ``$NPCREPRO_LOADER_WORKERS``."""
    env = env_count("NPCREPRO_LOADER_WORKERS", minimum=0)
    if env is not None:
        return env
    return min(8, (os.cpu_count() or 1) // 2) if cuda else 0


def _worker_init(worker_id: int) -> None:  # keep each worker single-threaded and seeded
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _split_batch(batch):
    if isinstance(batch, Mapping):
        return batch["image"], batch.get("label", batch.get("target"))
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError("a training batch must be (image, target) or a dict with 'image' and 'label'")


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _tensors(out) -> list:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, Mapping):
        return [t for o in out.values() for t in _tensors(o)]
    return [out] if torch.is_tensor(out) and out.is_floating_point() else []


def _to_float(out):
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


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
        Events: "stage_start", "iteration", "evaluation", "end". A callback may raise to stop training
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
    probe : bool
        At the start of every stage (the dry run), measure one training step at the first batch
        (:meth:`_probe`): FLOPs of forward and backward (``torch.utils.flop_counter``), bytes of the
        tensors saved for backward, of parameters, gradients and optimiser state, the batch shape and
        the stage's full budget; appended to ``plan.json`` in the run folder (``npcrepro plan``).
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
                 probe: bool = False, ema: float = 0.0, bn_batches: int = 0, **stage_kwargs):
        unknown = set(stage_kwargs) - _STAGE_FIELDS
        if unknown:
            raise ParameterError(f"Trainer: unknown argument(s) {sorted(unknown)} (Stage takes: "
                                 f"{', '.join(sorted(_STAGE_FIELDS))})")
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
        self.checkpoint_every = checkpoint_every
        self.callbacks = list(callbacks)
        if not progress and interval_from_env():  # an unattended run: plain progress lines on stderr
            self.callbacks.append(ProgressLog(interval_from_env()))
        self.max_iterations_this_session = max_iterations_this_session
        self.restore_best = restore_best
        self.find_unused_parameters = find_unused_parameters
        self.stage_iteration_cap = None if stage_iteration_cap is None else int(stage_iteration_cap)
        self.val_item_cap = int(val_item_cap) if val_item_cap else None
        self.probe = bool(probe)
        if not 0.0 <= float(ema) < 1.0:
            raise ParameterError(f"Trainer: ema must be in [0, 1) (0: off), got {ema}")
        self.ema = float(ema)
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
            raise ParameterError(f"Trainer: bn_batches must be an integer >= 0 (0: off), got {bn_batches!r}")
        self.bn_batches = bn_batches
        self.average: WeightAverage | None = None
        self._iterations_per_epoch_given = bool(iterations_per_epoch)
        self.state = TrainState()
        self.rows: list[dict] = []
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

    def scored_state(self) -> dict:
        """The weights that would be scored now: the moving average when ``ema`` is on, else the
        model's own (a state dict; its tensors are live, so copy before changing the model)."""
        return self.average.weights if self.average is not None else self.raw_model.state_dict()

    @property
    def checkpoint_dir(self) -> Path | None:
        return Path(self.run.path) if self.run is not None else None

    def _main(self) -> bool:
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
        # CUDA: autocast (bf16 where supported, else fp16 with a gradient scaler). CPU: only when
        # amp_dtype="bfloat16" is asked for explicitly: the same autocast path in bf16, so the
        # mixed-precision code is exercised (and tested) without a GPU.
        cpu_bf16 = not self.cuda and str(self.amp_dtype or "").removeprefix("torch.") == "bfloat16"
        self.use_amp = bool(self.amp) and (self.cuda or cpu_bf16)
        if self.use_amp:
            want = self.amp_dtype or ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
            self._amp_dtype = getattr(torch, str(want).removeprefix("torch."))
        else:
            self._amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self._amp_dtype == torch.float16)
        self._make_batch_makers()
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
        mode = os.environ.get(BATCHES_ENV) or self.requested_batches
        if mode not in BATCH_MODES:
            raise ParameterError(f"${BATCHES_ENV} must be one of {', '.join(BATCH_MODES)}, got {mode!r}")
        return ("device" if self.cuda else "loader") if mode == "auto" else mode

    def _make_batch_makers(self) -> None:
        """Device batch makers of the training and validation sets, when :meth:`batch_mode` says so
        and the datasets offer them; a warning when "device" was asked for and cannot be had."""
        self.batch_maker = self.val_maker = None
        if self.batch_mode() != "device":
            return
        make = getattr(self.train_data, "device_batches", None)
        self.batch_maker = make(self.device, self.seed) if callable(make) else None
        if self.batch_maker is None:
            if os.environ.get(BATCHES_ENV) == "device" or self.requested_batches == "device":
                warnings.warn(f"{self.desc}: {type(self.train_data).__name__} cannot make batches on "
                              f"{self.device} (no batched augmentation, or too big); using the loader")
            return
        make = getattr(self.val_data, "device_batches", None)
        self.val_maker = make(self.device, self.seed) if callable(make) else None

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)
        return contextlib.nullcontext()

    def _enter_stage(self, si: int) -> None:
        stage = self.stages[si]
        names = [n for n, _ in self.model.named_parameters()]
        for n, p in self.model.named_parameters():
            on = stage.trainable is None or any(n.startswith(pfx) for pfx in stage.trainable)
            if any(n.startswith(pfx) for pfx in stage.frozen):
                on = False
            p.requires_grad_(on)
        for pfx in list(stage.trainable or []) + list(stage.frozen):
            if not any(n.startswith(pfx) for n in names):
                raise ParameterError(f"stage {stage.name!r}: no parameter name starts with {pfx!r}")
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.trainable, stage.optimizer, stage.lr, momentum=stage.momentum,
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
        self._emit("stage_start", {"stage": si, "name": stage.name})

    # ------------------------------------------------------------------ steps
    def _prepare(self, batch):
        x, y = _split_batch(batch)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if torch.is_tensor(y) else y
        if self._memory_format is not None and x.dim() == (4 if self._memory_format is torch.channels_last else 5):
            x = x.contiguous(memory_format=self._memory_format)
        return x, y

    def _loss_fn(self, stage: Stage) -> Callable:
        return stage.loss if stage.loss is not None else self.loss

    def _train_step(self, batch, stage: Stage) -> tuple[torch.Tensor, int]:
        self.model.train()
        x, y = self._prepare(batch)
        if stage.target_fn is not None:
            y = stage.target_fn(y)
        loss_fn = self._loss_fn(stage)
        with self._autocast():
            try:
                out = self.train_forward(x, **stage.forward_kwargs)
            except Exception as exc:  # noqa: BLE001
                if not self._compiled:
                    raise
                warnings.warn(f"torch.compile failed ({exc.__class__.__name__}); falling back to eager")
                self.train_forward, self.eval_forward, self._compiled = self.ddp_module, self.model, False
                out = self.train_forward(x, **stage.forward_kwargs)
        loss = loss_fn(_to_float(out), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if stage.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, stage.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)
        return loss.detach(), int(x.shape[0])

    def _probe(self, batch, stage: Stage, si: int) -> dict:
        """Measure one training step of ``stage`` at this batch (see ``probe``) without computing
        it: a copy of the model and the batch on the ``meta`` device (shapes only) go through
        forward, loss and backward under :class:`~torch.utils.flop_counter.FlopCounterMode` and a
        saved-tensor hook. Falls back to the real step's accounting when an operation has no meta
        kernel. Appends one row to ``plan.json`` in the run folder and returns it."""
        from torch.utils.flop_counter import FlopCounterMode

        x, y = _split_batch(batch)
        saved: dict[int, int] = {}

        def measure(model, xx, yy) -> int:
            params = {p.untyped_storage()._cdata for p in model.parameters()}
            trainable = [p for n, p in model.named_parameters()
                         if dict(self.model.named_parameters())[n].requires_grad]
            for p in model.parameters():
                p.requires_grad_(False)
            for p in trainable:
                p.requires_grad_(True)

            def pack(t):
                try:
                    st = t.untyped_storage()
                    if st._cdata not in params:
                        saved[st._cdata] = max(saved.get(st._cdata, 0), st.nbytes())
                except (RuntimeError, NotImplementedError, AttributeError):
                    pass
                return t

            if stage.target_fn is not None:
                yy = stage.target_fn(yy)
            model.train()
            with FlopCounterMode(display=False) as counter:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    with self._autocast():
                        out = model(xx, **stage.forward_kwargs)
                    try:
                        loss = self._loss_fn(stage)(_to_float(out), yy)
                    except (RuntimeError, NotImplementedError):
                        if xx.device.type != "meta":
                            raise
                        # a loss that reads values (a target check): on meta, the outputs' mean
                        # stands in (the loss's own FLOPs and saved tensors are a small share)
                        loss = sum(o.float().mean() for o in _tensors(out))
                loss.backward()
            return int(counter.get_total_flops())

        def to_meta(t):
            return t.to("meta") if torch.is_tensor(t) else t

        device = "meta"
        try:
            meta_model = copy.deepcopy(self.model).to("meta")
            xm = to_meta(x)
            if self._memory_format is not None and xm.dim() == (4 if self._memory_format is torch.channels_last else 5):
                xm = xm.contiguous(memory_format=self._memory_format)
            flops = measure(meta_model, xm, to_meta(y))
        except Exception:  # noqa: BLE001 - an op without a meta kernel (or a loss reading values)
            saved.clear()
            device = str(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            xx, yy = self._prepare(batch)
            flops = measure(self.model, xx, yy)
            self.optimizer.zero_grad(set_to_none=True)

        def nbytes(ts):
            return int(sum(t.numel() * t.element_size() for t in ts if torch.is_tensor(t)))

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        per_param = {"adam": 2, "adamw": 2, "rmsprop": 1, "sgd": 1}.get(stage.optimizer, 2)
        row = {"network": self.desc, "stage": stage.name, "stage_index": si, "measured_on": device,
               "flops": flops, "batch": list(x.shape), "batch_size": self.batch_size,
               "input_bytes": nbytes([x]),
               "activation_bytes": int(sum(saved.values())),
               "parameter_bytes": nbytes(self.model.parameters()), "gradient_bytes": nbytes(trainable),
               "optimizer_bytes": nbytes(trainable) * per_param, "optimizer": stage.optimizer,
               "amp": str(self._amp_dtype).removeprefix("torch.") if self.use_amp else None,
               "epochs": stage.epochs, "iterations": stage.iterations,
               "iterations_per_epoch": self.iterations_per_epoch,
               "iterations_per_epoch_given": self._iterations_per_epoch_given,
               "train_items": len(self.train_data), "early_stopping": stage.early_stopping}
        need = sum(row[k] for k in ("activation_bytes", "parameter_bytes", "gradient_bytes",
                                    "optimizer_bytes", "input_bytes"))
        free = _available_memory()
        if (self.device.type == "cpu" and free is not None and need > 0.8 * free
                and (self.stage_iteration_cap is None or self.stage_iteration_cap > 0)):
            raise ParameterError(f"{self.desc}: one training step at batch {list(x.shape)} needs about "
                                 f"{need / 1e9:.1f} GB, and this machine has {free / 1e9:.1f} GB "
                                 f"available: lower the batch size (e.g. -p batch_size 2) for a "
                                 f"dry run on the CPU")
        if self.run is not None and self._main():
            import json

            path = Path(self.run.path) / "plan.json"
            rows = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
            rows = [r for r in rows if r.get("stage_index") != si] + [row]
            path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return row

    @torch.no_grad()
    def evaluate_loss(self, dataset=None, stage: Stage | None = None) -> float | None:
        """Mean loss over ``dataset`` (default the validation set), items weighted equally, pooled
        over ranks; of the averaged weights when ``ema`` is on (the network that is kept)."""
        dataset = self.val_data if dataset is None else dataset
        if dataset is None:
            return None
        if not self._ready:
            self._setup()
        if self.average is None:
            return self._evaluate_loss(dataset, stage)
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average.weights)
        try:
            return self._evaluate_loss(dataset, stage)
        finally:
            self.model.load_state_dict(own)

    @torch.no_grad()
    def _evaluate_loss(self, dataset, stage: Stage | None) -> float | None:
        stage = stage or self.stages[min(self.state.stage, len(self.stages) - 1)]
        loss_fn = self._loss_fn(stage)
        was_training = self.model.training
        self.model.eval()
        n_items = min(len(dataset), self.val_item_cap) if self.val_item_cap else len(dataset)
        idx = list(range(self.info.rank, n_items, self.info.world_size))
        if self.val_maker is not None and dataset is self.val_data:
            loader = (self.val_maker.eval_batch(idx[i:i + self.val_batch_size])
                      for i in range(0, len(idx), self.val_batch_size))
        else:
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx),
                                                 batch_size=self.val_batch_size, shuffle=False,
                                                 num_workers=self.num_workers,
                                                 worker_init_fn=_worker_init if self.num_workers else None)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for batch in loader:
            x, y = self._prepare(batch)
            if stage.target_fn is not None:
                y = stage.target_fn(y)
            with self._autocast():
                out = self.eval_forward(x, **stage.forward_kwargs)
            total += loss_fn(_to_float(out), y).double() * x.shape[0]
            count += int(x.shape[0])
        s, n = D.all_reduce_sum([float(total), float(count)], self.device)
        self.model.train(was_training)
        return s / n if n else None

    # ------------------------------------------------------------------ checkpoints
    def _gather_rng(self) -> list:
        st = rng_state()
        if not self.info.distributed:
            return [st]
        out: list = [None] * self.info.world_size
        torch.distributed.all_gather_object(out, st)
        return out

    def _checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "rng": self._gather_rng(),
            "state": asdict(self.state),
            "history": to_jsonable(self.rows),  # plain types: the checkpoint loads weights_only
            "stages": to_jsonable([s.describe() for s in self.stages]),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "iterations_per_epoch": self.iterations_per_epoch,
            "world_size": self.info.world_size,
        }

    def save_checkpoint(self, which: str = "last") -> Path | None:
        """Write ``checkpoint_<which>.pt`` into the run folder (rank 0; every rank must call it)."""
        d = self.checkpoint_dir
        if d is None:
            return None
        ck = self._checkpoint()  # collective under DDP (every rank gets here)
        if not self._main():
            return None
        p = d / f"checkpoint_{which}.pt"
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        torch.save(ck, tmp)
        os.replace(tmp, p)
        return p

    def _load(self, ck: dict) -> None:
        if ck.get("seed") != self.seed or ck.get("batch_size") != self.batch_size:
            raise ParameterError(f"checkpoint was written with seed={ck.get('seed')}, batch_size="
                                 f"{ck.get('batch_size')}; this trainer has seed={self.seed}, "
                                 f"batch_size={self.batch_size}")
        self.model.load_state_dict(ck["model"])
        self.state = TrainState(**ck["state"])
        self.rows = list(ck["history"])

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
            if self.run is not None and self._main():
                self.run.mark_failed(f"training failed: {exc.__class__.__name__}: {exc}")
            raise

    def _fit(self, resume) -> History:
        t_start = time.perf_counter()
        if self.run is not None and self._main():
            self.run.forget_failure()
        self._setup()
        ck = None
        if resume:
            path = (self.checkpoint_dir / "checkpoint_last.pt" if resume is True and self.checkpoint_dir
                    else Path(resume) if resume is not True else None)
            if path is None:
                raise ParameterError("resume=True needs a run folder (or pass a checkpoint path)")
            ck = load_checkpoint(path, map_location=self.device)
            self._load(ck)
        else:
            self.state, self.rows, self._best_state = TrainState(), [], None
            torch.manual_seed(self.seed + 1000003 * self.info.rank)
            np.random.seed((self.seed + self.info.rank) % 2**32)
            random.seed(self.seed + self.info.rank)

        total_all = sum(self.stage_budget(s) for s in self.stages)
        done_before = sum(self.stage_budget(s) for s in self.stages[:self.state.stage])
        bar = None
        if self.progress and self._main() and not self.state.done:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_all, initial=min(total_all, done_before + self.state.stage_iteration),
                       desc=self.desc, unit="it", mininterval=0.5, dynamic_ncols=True)
        session = 0
        interrupted = False
        try:
            while self.state.stage < len(self.stages) and not self.state.done:
                si = self.state.stage
                stage = self.stages[si]
                self._enter_stage(si)
                self.average = WeightAverage(self.model, self.ema) if self.ema else None
                if ck is not None and ck["state"]["stage"] == si:
                    self.optimizer.load_state_dict(ck["optimizer"])
                    self.schedule.load_state_dict(ck["schedule"])
                    self.scaler.load_state_dict(ck["scaler"])
                    if self.average is not None and ck.get("average"):
                        self.average.load_state_dict(ck["average"])
                    rngs = ck["rng"]
                    set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
                    ck = None
                session, interrupted = self._run_stage(si, stage, bar, session)
                if interrupted:
                    break
                # next stage
                if self.state.stage_stopped:
                    self.state.stopped_early.append(stage.name)
                self.state.stage += 1
                self.state.stage_iteration = 0
                self.state.best, self.state.best_iteration, self.state.bad_evals = math.inf, -1, 0
                self.state.stage_stopped = False
                if self.state.stage >= len(self.stages):
                    self.state.done = True
                    self._finish()
        finally:
            if bar is not None:
                bar.close()
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
        if not self.bn_batches or not self._ready or not batch_norms(self.raw_model):
            return state
        net = copy.deepcopy(self.raw_model)
        net.load_state_dict(state)
        self._measure_batch_norm(net)
        return net.state_dict()

    def _measure_batch_norm(self, model: nn.Module) -> None:
        """Set ``model``'s batch-norm statistics to those of ``bn_batches`` training batches (whole
        batches on every rank, so that no rank waits for another)."""
        keyed = _Keyed(self.train_data, self.seed)
        plan = epoch_plan(len(self.train_data), self.batch_size, self.bn_batches, self.seed, _BN_STAGE, 0,
                          cover=getattr(self.train_data, "cover", None))
        kwargs = self.stages[-1].forward_kwargs

        def inputs():
            for b, row in enumerate(plan):
                keys = [(_BN_STAGE, 0, b, j, int(i)) for j, i in enumerate(row)]
                batch = (self.batch_maker.train_batch(keys) if self.batch_maker is not None
                         else torch.utils.data.default_collate([keyed[k] for k in keys]))
                yield self._prepare(batch)[0]

        with self._autocast():
            population_statistics(model, inputs(), forward=lambda x: model(x, **kwargs), seed=self.seed)

    def _finish(self) -> None:
        best = self._best_to_restore()
        if best is not None:
            self.model.load_state_dict(best)
        if best is None and self.average is not None:
            self.model.load_state_dict(self.average.weights)
        if self.bn_batches:
            self._measure_batch_norm(self.model)
        self.save_checkpoint("last")
        d = self.checkpoint_dir
        if d is not None:
            need_best = D.broadcast_object(
                self._main() and (self.val_data is None or not (d / "checkpoint_best.pt").exists()))
            if need_best:
                self.save_checkpoint("best")
            if self._main():
                self.run.write_curves(self.rows)
        D.barrier()

    def _run_stage(self, si: int, stage: Stage, bar, session: int) -> tuple[int, bool]:
        st = self.state
        ipe = self.iterations_per_epoch
        total = self.stage_budget(stage)
        eval_every = stage.eval_every or ipe
        world, rank = self.info.world_size, self.info.rank
        keyed = _Keyed(self.train_data, self.seed)
        n_items = len(self.train_data)
        cover = getattr(self.train_data, "cover", None)
        if self.probe and st.stage_iteration == 0:
            plan = epoch_plan(n_items, self.batch_size, ipe, self.seed, si, 0, cover=cover)
            first = [keyed[(si, 0, 0, j, int(plan[0, j]))] for j in range(rank, self.batch_size, world)]
            self._probe(torch.utils.data.default_collate(first), stage, si)
        t_row = time.perf_counter()
        last_post = 0.0
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
                    worker_init_fn=_worker_init if self.num_workers else None)
            for batch in loader:
                epoch = st.stage_iteration // ipe
                lr = stage.lr * self.schedule.factor_at(st.stage_iteration, epoch)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
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
                if bar is not None:
                    bar.update(1)
                    now = time.perf_counter()
                    if now - last_post > 0.5:
                        last_post = now
                        el = now - t_row
                        bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}",
                                        sps=f"{st.acc_samples / el:.1f}" if el > 0 else "-",
                                        refresh=False)
                at_eval = st.stage_iteration % eval_every == 0 or st.stage_iteration == total
                if at_eval:
                    self._flush_dev_acc()
                    seconds = time.perf_counter() - t_row
                    val = self.evaluate_loss(stage=stage)
                    row = self._row(stage, lr, val, seconds)
                    self.rows.append(row)
                    if val is not None:
                        if val < st.best - stage.min_delta:
                            st.best, st.best_iteration, st.bad_evals = val, st.iteration, 0
                            self._best_state = {k: v.detach().clone().cpu()
                                                for k, v in self.scored_state().items()}
                            self.save_checkpoint("best")
                        else:
                            st.bad_evals += 1
                            if stage.early_stopping is not None and st.bad_evals >= stage.early_stopping:
                                st.stage_stopped = True
                        self.schedule.on_evaluation(val)
                    self.save_checkpoint("last")
                    if self.run is not None and self._main():
                        self.run.write_curves(self.rows)
                    self._emit("evaluation", row)
                    t_row = time.perf_counter()
                elif self.checkpoint_every and st.iteration % self.checkpoint_every == 0:
                    self._flush_dev_acc()
                    self.save_checkpoint("last")
                self._emit("iteration", {"iteration": st.iteration, "stage": si, "loss": loss, "lr": lr})
                if self.max_iterations_this_session and session >= self.max_iterations_this_session:
                    if not at_eval:
                        self._flush_dev_acc()
                        self.save_checkpoint("last")
                    return session, True
                if st.stage_stopped or st.stage_iteration >= total:
                    break
        return session, False

    def _flush_dev_acc(self) -> None:
        acc = getattr(self, "_acc_dev", None)
        if acc is not None:
            self.state.acc_loss += float(acc)
            self._acc_dev = None
