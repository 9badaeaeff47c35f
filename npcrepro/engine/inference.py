"""Inference: 2D slice-wise over a volume (whole slices, or tiles of a training crop), 3D sliding
window with Gaussian blending, and mapping predictions back to the case's original grid.

All functions take a (C, z, y, x) numpy array (already normalised like the training data, see
:func:`npcrepro.engine.data.prepare_case`) and return probabilities (K, z, y, x) float32.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Sequence

import numpy as np
import torch

from npcrepro.engine.data import prepare_case, slice_stack, window_starts
from npcrepro.engine.device import channels_last_model, conv_memory_format, resolve_device
from npcrepro.errors import DataError, ParameterError
from npcrepro.transforms import Preprocessed, invert

__all__ = ["activate", "predict_slices", "predict_slice_tiles", "predict_sliding_window", "gaussian_weights",
           "window_starts", "predict_case", "binarise", "Preprocessed", "invert"]


def activate(logits: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``"sigmoid"`` (independent structures), ``"softmax"`` (exclusive classes over dim 1) or None."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation in (None, "none"):
        return logits
    raise ParameterError(f"unknown activation {activation!r} (valid: sigmoid, softmax, none)")


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def _out(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _model_device(model: torch.nn.Module, device) -> torch.device:
    if device is not None:
        return resolve_device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def predict_slices(model: torch.nn.Module, image: np.ndarray, *, batch_size: int = 16,
                   device=None, amp: bool = True, activation: str | None = "sigmoid",
                   context: int = 0, forward_kwargs: dict | None = None,
                   channels_last: bool = True) -> np.ndarray:
    """Run a 2D model over every axial slice of ``image`` (C, z, y, x), ``batch_size`` slices at a time.

    The model maps (N, C * (2 * context + 1), y, x) -> (N, K, y, x); returns (K, z, y, x) float32
    probabilities (after ``activation``).
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise DataError(f"predict_slices expects (C, z, y, x), got shape {image.shape}")
    dev = _model_device(model, device)
    was_training = model.training
    model.eval()
    out = None
    nz = image.shape[1]
    kw = forward_kwargs or {}
    with channels_last_model(model, channels_last) as fmt:
        for start in range(0, nz, batch_size):
            zs = range(start, min(nz, start + batch_size))
            x = torch.from_numpy(np.stack([slice_stack(image, z, context) for z in zs])).to(dev)
            if fmt is torch.channels_last:
                x = x.contiguous(memory_format=fmt)
            with _autocast(dev, amp):
                y = _out(model(x, **kw))
            p = activate(y.float(), activation).cpu().numpy()
            if out is None:
                out = np.zeros((p.shape[1], nz) + p.shape[2:], np.float32)
            out[:, start:start + len(zs)] = p.transpose(1, 0, 2, 3)
    model.train(was_training)
    return out


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 0.125,
                     min_weight: float = 1e-4) -> np.ndarray:
    """Separable Gaussian importance map over a patch (peak 1 at the centre, sigma =
    ``sigma_scale * size`` per axis), floored at ``min_weight`` so borders still count."""
    w = np.ones((), np.float64)
    for n in patch_size:
        c = (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        g = np.exp(-0.5 * ((np.arange(n) - c) / sigma) ** 2)
        w = np.multiply.outer(w, g)
    w = w / w.max()
    return np.maximum(w, min_weight).astype(np.float32)


@torch.no_grad()
def predict_sliding_window(model: torch.nn.Module, image: np.ndarray, patch_size: Sequence[int], *,
                           overlap: float = 0.5, blend: str = "gaussian", sigma_scale: float = 0.125,
                           batch_size: int = 2, device=None, amp: bool = True,
                           activation: str | None = "sigmoid", pad_value: float = 0.0,
                           forward_kwargs: dict | None = None, channels_last: bool = True) -> np.ndarray:
    """3D sliding-window inference over ``image`` (C, z, y, x) with windows of ``patch_size``
    overlapping by ``overlap`` (fraction), probabilities blended with Gaussian (or constant) weights.

    Volumes smaller than the patch are padded with ``pad_value`` and cropped back. Accumulation is on
    the CPU in float32 (memory: two (K, z, y, x) arrays). Returns (K, z, y, x) float32.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise DataError(f"predict_sliding_window expects (C, z, y, x), got shape {image.shape}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ParameterError(f"patch_size must be 3 positive ints, got {patch_size}")
    if not 0 <= overlap < 1:
        raise ParameterError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in ("gaussian", "constant"):
        raise ParameterError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    shape = image.shape[1:]
    pads = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for s, p in zip(shape, patch)]
    if any(a or b for a, b in pads):
        image = np.pad(image, [(0, 0)] + pads, constant_values=pad_value)
    full = image.shape[1:]
    steps = [max(1, int(p * (1 - overlap))) for p in patch]
    starts = [window_starts(s, p, st) for s, p, st in zip(full, patch, steps)]
    weights = (gaussian_weights(patch, sigma_scale) if blend == "gaussian"
               else np.ones(patch, np.float32))
    dev = _model_device(model, device)
    w_t = torch.from_numpy(weights).to(dev)
    was_training = model.training
    model.eval()
    acc = None
    norm = np.zeros(full, np.float32)
    kw = forward_kwargs or {}
    corners = list(itertools.product(*starts))
    with channels_last_model(model, channels_last) as fmt:
        for b in range(0, len(corners), batch_size):
            chunk = corners[b:b + batch_size]
            x = torch.from_numpy(np.stack([image[:, z:z + patch[0], y:y + patch[1], q:q + patch[2]]
                                           for z, y, q in chunk])).to(dev)
            if fmt is torch.channels_last_3d:
                x = x.contiguous(memory_format=fmt)
            with _autocast(dev, amp):
                out = _out(model(x, **kw))
            p = (activate(out.float(), activation) * w_t).cpu().numpy()
            if acc is None:
                acc = np.zeros((p.shape[1],) + full, np.float32)
            for (z, y, q), pi in zip(chunk, p):
                acc[:, z:z + patch[0], y:y + patch[1], q:q + patch[2]] += pi
                norm[z:z + patch[0], y:y + patch[1], q:q + patch[2]] += weights
    model.train(was_training)
    acc /= norm[None]
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, shape))
    return np.ascontiguousarray(acc[(slice(None),) + crop])


class _SliceModel(torch.nn.Module):
    """A 2D model seen as a 3D one over single slices: (N, C, 1, y, x) -> (N, K, 1, y, x); each slice
    goes in ``memory_format`` (the 2D model's channels-last weights want channels-last input)."""

    def __init__(self, model: torch.nn.Module, memory_format: torch.memory_format | None = None):
        super().__init__()
        self.model, self.memory_format = model, memory_format

    def forward(self, x, **kwargs):
        x = x[:, :, 0]
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return _out(self.model(x, **kwargs))[:, :, None]


def predict_slice_tiles(model: torch.nn.Module, image: np.ndarray, tile: Sequence[int], *,
                        overlap: float = 0.5, **kwargs) -> np.ndarray:
    """A 2D model over every axial slice of ``image`` (C, z, y, x) in Gaussian-blended ``tile`` (y, x)
    windows overlapping by ``overlap``: the inference of a network trained on random crops of that
    size, which then sees at test time what it saw in training. A network whose features depend on
    the input's extent (image pooling; atrous rates wider than a crop's feature map, whose outer taps
    never saw anything but padding in training) predicts whole slices it was never trained on.
    Other keyword arguments go to :func:`predict_sliding_window`. Returns (K, z, y, x) float32.
    """
    tile = tuple(int(t) for t in tile)
    if len(tile) != 2 or min(tile) < 1:
        raise ParameterError(f"tile must be 2 positive ints (y, x), got {tile}")
    fmt = conv_memory_format(model) if kwargs.get("channels_last", True) else None
    return predict_sliding_window(_SliceModel(model, fmt), image, (1, *tile), overlap=overlap, **kwargs)


def binarise(prob: np.ndarray, threshold: float = 0.5, activation: str | None = "sigmoid") -> np.ndarray:
    """Masks from probabilities: ``prob >= threshold`` per channel (sigmoid), or one-hot argmax
    (softmax; channel 0 is background)."""
    if activation == "softmax":
        lab = prob.argmax(axis=0)
        return np.stack([lab == k for k in range(prob.shape[0])])
    return prob >= threshold


def predict_case(model: torch.nn.Module, case, channels: Sequence[str], *, mode: str = "2d",
                 normalise="zscore", preprocessed: Preprocessed | None = None,
                 patch_size: Sequence[int] | None = None, **kwargs) -> np.ndarray:
    """Probabilities (K, z, y, x) for a case on its ORIGINAL grid.

    ``case`` is the case the model sees (after :func:`npcrepro.transforms.preprocess`, if any);
    ``preprocessed`` is the record that maps the result back (linear interpolation of probabilities).
    ``mode`` "2d" uses :func:`predict_slices`, or :func:`predict_slice_tiles` when ``patch_size``
    (y, x) is given; "3d" :func:`predict_sliding_window` (needs ``patch_size``); other keyword
    arguments go to them.
    """
    image, _ = prepare_case(case, channels, (), normalise=normalise)
    if mode == "2d" and patch_size is not None:
        prob = predict_slice_tiles(model, image, patch_size, **kwargs)
    elif mode == "2d":
        prob = predict_slices(model, image, **kwargs)
    elif mode == "3d":
        if patch_size is None:
            raise ParameterError("predict_case(mode='3d') needs patch_size")
        prob = predict_sliding_window(model, image, patch_size, **kwargs)
    else:
        raise ParameterError(f"mode must be '2d' or '3d', got {mode!r}")
    if preprocessed is not None:
        prob = invert(prob, preprocessed, order="linear")
    return prob
