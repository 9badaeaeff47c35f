"""chen2020's samplers: windows centred on a fixed in-plane point (the Otsu box centre) sliding along z, and
centre-pixel patches for patch classifiers. Both read "centred volumes": objects with ``name``, ``image``
(C, z, y, x) float32, ``channels`` (names of C), ``target`` (z, y, x) bool, ``center`` (z, y, x) voxels and
``fills`` (one padding value per channel)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from npcrepro import transforms as T
from npcrepro.engine.data import window_starts
from npcrepro.engine.device import item_rng
from npcrepro.errors import DataError, ParameterError

__all__ = ["crop_channels", "inplane_box", "z_window_starts", "channel_index", "WindowDataset",
           "CentrePixelDataset"]


def crop_channels(image: np.ndarray, box, fills: Sequence[float]) -> np.ndarray:
    """:func:`npcrepro.transforms.crop` of every channel of (C, ...) ``image``, each padded with its
    own fill value."""
    return np.stack([T.crop(image[c], box, fill=fills[c]) for c in range(image.shape[0])])


def inplane_box(vol, size: Sequence[int], shift: Sequence[int] = (0, 0)):
    """(y, x) box of ``size`` centred on ``vol.center`` (+ ``shift`` voxels)."""
    return T.center_box(vol.image.shape[2:], size, (vol.center[1] + shift[0], vol.center[2] + shift[1]))


def z_window_starts(nz: int, depth: int, step: int) -> list[int]:
    """Window starts along z every ``step`` slices; one centred (negative) start when ``nz < depth``."""
    if nz < depth:
        return [-((depth - nz) // 2)]
    return window_starts(nz, depth, step)


def channel_index(vol, names: Sequence[str]) -> list[int]:
    """Indices of channels ``names`` in ``vol.channels`` (DataError naming the case when missing)."""
    missing = [n for n in names if n not in vol.channels]
    if missing:
        raise DataError(f"case {vol.name}: missing sequence(s) {missing} (has {list(vol.channels)})")
    return [list(vol.channels).index(n) for n in names]


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``depth`` slices x ``size`` (H, W), in-plane centred on each volume's ``center``,
    starting every ``step`` slices along z (every slice with ``depth=1``).

    ``get(index, rng)`` augments (random centre offset within +-``offset`` voxels per axis, vertical
    flip with probability 1/2 when ``flip``, in-plane rotation within +-``rotate_deg``);
    ``dataset[index]`` is the plain window. Items are ``(image, target)`` float32 tensors
    (C, depth, H, W) and (1, depth, H, W), or (C, H, W) and (1, H, W) with ``two_d``.
    """

    def __init__(self, volumes: Sequence, channels: Sequence[str], depth: int, size: Sequence[int],
                 step: int, *, offset: Sequence[int] = (0, 0, 0), flip: bool = False,
                 rotate_deg: float = 0.0, two_d: bool = False):
        if not volumes:
            raise DataError("WindowDataset: no cases")
        self.volumes = list(volumes)
        self.channels = tuple(channels)
        self.index = [channel_index(v, self.channels) for v in self.volumes]
        self.depth, self.size, self.step = int(depth), tuple(int(s) for s in size), int(step)
        self.offset = tuple(int(o) for o in offset)
        self.flip, self.rotate_deg, self.two_d = bool(flip), float(rotate_deg), bool(two_d)
        if self.two_d and self.depth != 1:
            raise ParameterError("two_d windows need depth=1")
        self.items = [(ci, z) for ci, v in enumerate(self.volumes)
                      for z in z_window_starts(v.image.shape[1], self.depth, self.step)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.get(int(index), None)

    def get(self, index: int, rng: np.random.Generator | None):
        ci, z0 = self.items[index]
        v = self.volumes[ci]
        dz = dy = dx = 0
        if rng is not None:
            dz, dy, dx = (int(rng.integers(-o, o + 1)) if o else 0 for o in self.offset)
        nz = v.image.shape[1]
        if nz >= self.depth:
            z0 = min(max(z0 + dz, 0), nz - self.depth)
        (y0, y1), (x0, x1) = inplane_box(v, self.size, (dy, dx))
        box = ((z0, z0 + self.depth), (y0, y1), (x0, x1))
        idx = self.index[ci]
        image = crop_channels(v.image[idx], box, [v.fills[i] for i in idx])
        target = T.crop(v.target, box)[None].astype(np.float32)
        if rng is not None:
            if self.flip and rng.random() < 0.5:
                image, target = image[..., ::-1, :], target[..., ::-1, :]
            if self.rotate_deg:
                angle = float(rng.uniform(-self.rotate_deg, self.rotate_deg))
                image, target = T.rotate(np.ascontiguousarray(image), np.ascontiguousarray(target) > 0.5,
                                         angle)
                target = target.astype(np.float32)
        if self.two_d:
            image, target = image[:, 0], target[:, 0]
        return (torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                torch.from_numpy(np.ascontiguousarray(target, np.float32)))


class CentrePixelDataset(torch.utils.data.Dataset):
    """Training patches of patch classifiers: (C, P, P) around a centre pixel, target (1, 1, 1) its
    label. A fraction ``fg_fraction`` of the draws is centred on a tumour pixel (class balance), the
    rest anywhere in the in-plane crop (``size``) of any slice. ``samples_per_case`` draws per case
    make one pass; ``dataset[i]`` is a fixed draw (validation)."""

    def __init__(self, volumes: Sequence, channels: Sequence[str], patch_size: int, size: Sequence[int],
                 *, samples_per_case: int = 256, fg_fraction: float = 0.5, flip: bool = False):
        if not volumes:
            raise DataError("CentrePixelDataset: no cases")
        self.volumes, self.channels = list(volumes), tuple(channels)
        self.index = [channel_index(v, self.channels) for v in self.volumes]
        self.patch, self.size = int(patch_size), tuple(int(s) for s in size)
        self.samples_per_case, self.fg_fraction, self.flip = int(samples_per_case), float(fg_fraction), flip
        self.fg = [np.argwhere(v.target) for v in self.volumes]

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_case

    def __getitem__(self, index: int):
        return self.get(int(index), None)

    def get(self, index: int, rng: np.random.Generator | None):
        ci = index // self.samples_per_case
        v = self.volumes[ci]
        draw = rng if rng is not None else item_rng(0, 7727, index)
        if len(self.fg[ci]) and draw.random() < self.fg_fraction:
            z, y, x = (int(a) for a in self.fg[ci][draw.integers(len(self.fg[ci]))])
        else:
            (y0, y1), (x0, x1) = inplane_box(v, self.size)
            z = int(draw.integers(v.image.shape[1]))
            y, x = int(draw.integers(y0, y1)), int(draw.integers(x0, x1))
        r = self.patch // 2
        box = ((z, z + 1), (y - r, y + r + 1), (x - r, x + r + 1))
        idx = self.index[ci]
        image = crop_channels(v.image[idx], box, [v.fills[i] for i in idx])[:, 0]
        inside = 0 <= y < v.target.shape[1] and 0 <= x < v.target.shape[2]
        label = float(v.target[z, y, x]) if inside else 0.0
        if rng is not None and self.flip and rng.random() < 0.5:
            image = image[:, ::-1, :]
        return (torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                torch.full((1, 1, 1), label, dtype=torch.float32))
