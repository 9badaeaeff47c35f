"""The shared engine: training loop, schedules, data sampling, inference, run folders, the chapter
contract and its runner, and job dispatch. Every chapter trains through :class:`Trainer`.

Modules: :mod:`~npcrepro.engine.loop` (Trainer), :mod:`~npcrepro.engine.stages` (Stage, History),
:mod:`~npcrepro.engine.loaders`, :mod:`~npcrepro.engine.validation`; the Trainer's handlers
:mod:`~npcrepro.engine.checkpoints`, :mod:`~npcrepro.engine.averaging`, :mod:`~npcrepro.engine.progress`,
:mod:`~npcrepro.engine.probe`, :mod:`~npcrepro.engine.half_budget`; :mod:`~npcrepro.engine.schedules`,
:mod:`~npcrepro.engine.batchnorm` (batch-norm statistics measured after training),
:mod:`~npcrepro.engine.data` (SliceDataset, PatchDataset), :mod:`~npcrepro.engine.inference`,
:mod:`~npcrepro.engine.runs` (RunFolder), :mod:`~npcrepro.engine.chapter` (the chapter contract),
:mod:`~npcrepro.engine.experiment` (the runner), :mod:`~npcrepro.engine.folds` (a run's recorded folds),
:mod:`~npcrepro.engine.distributed` (torchrun/DDP), :mod:`~npcrepro.engine.dispatch` (papermill jobs),
:mod:`~npcrepro.engine.device`.
"""
from npcrepro.engine.data import PatchDataset, SliceDataset, epoch_plan, prepare_case, slice_stack
from npcrepro.engine.device import configure_determinism, resolve_device, seed_everything
from npcrepro.engine.inference import (Preprocessed, binarise, gaussian_weights, invert, predict_case,
                                       predict_slice_tiles, predict_slices, predict_sliding_window)
from npcrepro.engine.loop import History, Stage, Trainer, load_checkpoint
from npcrepro.engine.runs import RunFolder, environment, find_runs, latest_run
from npcrepro.engine.schedules import Schedule, make_optimizer, make_schedule

__all__ = [
    "Trainer", "Stage", "History", "load_checkpoint",
    "Schedule", "make_schedule", "make_optimizer",
    "SliceDataset", "PatchDataset", "prepare_case", "slice_stack", "epoch_plan",
    "predict_slices", "predict_slice_tiles", "predict_sliding_window", "predict_case", "gaussian_weights",
    "binarise",
    "Preprocessed", "invert",
    "RunFolder", "environment", "find_runs", "latest_run",
    "resolve_device", "seed_everything", "configure_determinism",
]
