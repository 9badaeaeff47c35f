"""Devices, memory formats, seeding and determinism."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from npcrepro.errors import ParameterError

__all__ = ["autocast_dtype", "resolve_device", "seed_everything", "item_rng", "configure_determinism", "rng_state",
           "set_rng_state", "conv_memory_format", "channels_last_model"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"`` are checked (ParameterError when unavailable or unknown)."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ParameterError(f"unknown device {device!r} (valid: auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParameterError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError(f"device {device!r} requested but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"unsupported device {device!r} (valid: auto, cpu, cuda, cuda:N, mps)")
    return dev


def conv_memory_format(model: torch.nn.Module) -> torch.memory_format | None:
    """The channels-last format for ``model``'s convolutions: ``channels_last`` (NHWC) when its first
    convolution is 2D, ``channels_last_3d`` (NDHWC) when 3D, None when it has neither.

    Channels-last is faster on CUDA and, with oneDNN, on CPU too: measured on one CPU thread with this
    book's networks, 1.1-1.5x per training step and 1.3-1.8x at inference."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            return torch.channels_last
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            return torch.channels_last_3d
    return None


@contextlib.contextmanager
def channels_last_model(model: torch.nn.Module, enabled: bool = True):
    """Within the block, ``model`` is in its channels-last format (see :func:`conv_memory_format`);
    yields that format (None: unchanged). A model that was not already in it is converted back on
    exit, so callers never see their model's memory layout change."""
    fmt = conv_memory_format(model) if enabled else None
    if fmt is None:
        yield None
        return
    weights = [p for p in model.parameters() if p.dim() == (4 if fmt is torch.channels_last else 5)]
    converted = any(not p.is_contiguous(memory_format=fmt) for p in weights)
    if converted:
        model.to(memory_format=fmt)
    try:
        yield fmt
    finally:
        if converted:
            model.to(memory_format=torch.contiguous_format)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call before building a model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator for one sample: a pure function of the seed and the key."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in key]])


def configure_determinism(deterministic: bool = True) -> None:
    """Deterministic kernels where torch has them (warn, not fail, where it has none); cuDNN autotuning
    only when not deterministic. The setting is process-wide."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every fresh tensor with NaN (the default under deterministic mode) costs up to a
        # third of a CPU step and is only a debugging aid: results do not depend on it.
        if hasattr(torch.utils, "deterministic"):
            torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states, in types that ``torch.load(...,
    weights_only=True)`` accepts: ints, floats, lists and uint8 tensors (no numpy arrays, no
    tuples of Python objects), so that a checkpoint holding them loads without running code."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                     "gauss": gauss},
          "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                    "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` returned (on any device: tensors are moved to the CPU)."""
    py, npy = st["python"], st["numpy"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])
        except (RuntimeError, IndexError):  # different number of GPUs: keep the current states
            pass


def autocast_dtype(amp: bool, amp_dtype: str | None, cuda: bool) -> torch.dtype | None:
    """The autocast dtype of mixed precision, or None (off). CUDA: bf16 where supported, else fp16
    (with a gradient scaler), or ``amp_dtype``. CPU: only when ``amp_dtype="bfloat16"`` is asked for
    explicitly: the same autocast path in bf16, so the mixed-precision code is exercised (and tested)
    without a GPU."""
    cpu_bf16 = not cuda and str(amp_dtype or "").removeprefix("torch.") == "bfloat16"
    if not (bool(amp) and (cuda or cpu_bf16)):
        return None
    want = amp_dtype or ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    return getattr(torch, str(want).removeprefix("torch."))
