"""What turns a dataset into training batches in the loop: keyed items (each drawn from its own seeded
generator), DataLoader workers, and the batch and output conventions the Trainer accepts."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from npcrepro.engine.data import item_rng
from npcrepro.errors import DataError, ParameterError
from npcrepro.paths import env_count

#: Where batches are made (see ``Trainer(batches=...)``), and the variable that overrides it.
BATCH_MODES = ("auto", "device", "loader")
BATCHES_ENV = "NPCREPRO_BATCHES"

__all__ = ["BATCH_MODES", "BATCHES_ENV", "batch_mode", "device_batch_makers", "KeyedItems", "loader_workers",
           "worker_init", "split_batch", "float_tensors", "to_float", "available_memory"]


class KeyedItems(torch.utils.data.Dataset):
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


def worker_init(worker_id: int) -> None:  # keep each worker single-threaded and seeded
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def split_batch(batch):
    if isinstance(batch, Mapping):
        return batch["image"], batch.get("label", batch.get("target"))
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError("a training batch must be (image, target) or a dict with 'image' and 'label'")



def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def float_tensors(out) -> list:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in float_tensors(o)]
    if isinstance(out, Mapping):
        return [t for o in out.values() for t in float_tensors(o)]
    return [out] if torch.is_tensor(out) and out.is_floating_point() else []


def to_float(out):
    if isinstance(out, (list, tuple)):
        return type(out)(to_float(o) for o in out)
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


def batch_mode(requested: str, cuda: bool) -> str:
    """"device" or "loader": what ``requested`` ("auto", "device", "loader"; ``$NPCREPRO_BATCHES``
    overrides it) asks for on a CUDA device (``cuda``) or elsewhere; "auto" is "device" on CUDA."""
    mode = os.environ.get(BATCHES_ENV) or requested
    if mode not in BATCH_MODES:
        raise ParameterError(f"${BATCHES_ENV} must be one of {', '.join(BATCH_MODES)}, got {mode!r}")
    return ("device" if cuda else "loader") if mode == "auto" else mode


def device_batch_makers(trainer) -> tuple:
    """``(train, validation)`` device batch makers of ``trainer``'s datasets when its batch mode is
    "device" and the datasets offer them (``device_batches``), else None; a warning when "device" was
    asked for and cannot be had."""
    if trainer.batch_mode() != "device":
        return None, None
    make = getattr(trainer.train_data, "device_batches", None)
    train = make(trainer.device, trainer.seed) if callable(make) else None
    if train is None:
        if os.environ.get(BATCHES_ENV) == "device" or trainer.requested_batches == "device":
            warnings.warn(f"{trainer.desc}: {type(trainer.train_data).__name__} cannot make batches on "
                          f"{trainer.device} (no batched augmentation, or too big); using the loader")
        return None, None
    make = getattr(trainer.val_data, "device_batches", None)
    return train, (make(trainer.device, trainer.seed) if callable(make) else None)
