"""guo2021's three-view training blocks: 24 x 24 x 8 blocks cut along z, y or x (thin axis first), with
targets that carry their Eq. 7 weights."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from npcrepro.engine.data import negative_share
from npcrepro.engine.device import item_rng
from npcrepro.errors import DataError, ParameterError

__all__ = ["VIEWS", "view_shape", "to_view", "from_view", "MultiViewBlocks"]

#: Block orientations: the axis (z, y or x) the block's thin side lies along.
VIEWS = ("axial", "coronal", "sagittal")
VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
# spatial permutation taking (z, y, x) to the view's canonical (thin, a, b) order
_VIEW_PERM = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def view_shape(patch: Sequence[int], view: str) -> tuple[int, int, int]:
    """The (z, y, x) shape of a canonical block ``patch`` = (thin, a, b) cut in ``view``."""
    if view not in VIEW_AXIS:
        raise ParameterError(f"unknown view {view!r} (valid: {', '.join(VIEWS)})")
    thin, a, b = (int(p) for p in patch)
    return {"axial": (thin, a, b), "coronal": (a, thin, b), "sagittal": (a, b, thin)}[view]


def to_view(arr: np.ndarray, view: str) -> np.ndarray:
    """Transpose the last three (z, y, x) axes so the view's thin axis comes first."""
    lead = arr.ndim - 3
    return np.transpose(arr, tuple(range(lead)) + tuple(lead + i for i in _VIEW_PERM[view]))


def from_view(arr: np.ndarray, view: str) -> np.ndarray:
    """Inverse of :func:`to_view`."""
    lead = arr.ndim - 3
    inv = tuple(int(i) for i in np.argsort(_VIEW_PERM[view]))
    return np.transpose(arr, tuple(range(lead)) + tuple(lead + i for i in inv))


class MultiViewBlocks(torch.utils.data.Dataset):
    """Training blocks cut in the three views (guo2021).

    ``volumes`` (C, z, y, x) network inputs per patient (the image, or image + coarse map), ``targets``
    and ``weights`` (z, y, x) tumour masks and per-voxel loss weights on the same grids; ``patch`` the
    canonical block (thin, a, b); block ``i`` of a patient is cut in view ``views[i % 3]``, centred on a
    random tumour voxel with probability ``fg_prob``, else on a random voxel of the patient's hard
    negatives (``negatives``: (z, y, x) bool masks or None per patient, e.g. the nodes) with
    probability ``negative_prob``, else uniform; flipped left-right at random when ``flip``
    (training only).

    Items are ``(image, target)`` float32 tensors (C, thin, a, b) and (2, thin, a, b): channel 0 the
    tumour mask, channel 1 the weight (:class:`~.losses.GuoLoss` splits them). ``get(index, rng)``
    draws a training block; ``dataset[index]`` a fixed one (validation). Blocks always lie inside the
    volume (volumes smaller than the block along an axis are padded first). The inputs are not changed.
    """

    def __init__(self, volumes: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 weights: Sequence[np.ndarray], patch: Sequence[int] = (8, 24, 24), *,
                 samples_per_case: int = 30, fg_prob: float = 0.5, flip: bool = True,
                 views: Sequence[str] = VIEWS, negatives: Sequence[np.ndarray | None] | None = None,
                 negative_prob: float = 0.0):
        if not volumes:
            raise DataError("MultiViewBlocks: no volumes")
        if not (len(volumes) == len(targets) == len(weights)):
            raise DataError("MultiViewBlocks: volumes, targets and weights differ in number")
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ParameterError(f"patch must be 3 positive ints (thin, a, b), got {patch}")
        self.views = tuple(views)
        for v in self.views:
            view_shape(self.patch, v)
        need = max(self.patch)
        negatives = list(negatives) if negatives is not None else [None] * len(volumes)
        if len(negatives) != len(volumes):
            raise DataError("MultiViewBlocks: volumes and negatives differ in number")
        self.negative_prob = negative_share(negative_prob)
        self.volumes, self.targets, self.weights, self.fg, self.negatives = [], [], [], [], []
        for vol, tgt, w, neg in zip(volumes, targets, weights, negatives):
            vol = np.asarray(vol, np.float32)
            if vol.ndim != 4 or vol.shape[1:] != np.shape(tgt) or np.shape(w) != np.shape(tgt):
                raise DataError(f"MultiViewBlocks: shapes differ: volume {vol.shape}, target "
                                f"{np.shape(tgt)}, weight {np.shape(w)}")
            pads = [(0, 0)] + [(max(0, need - n) // 2, max(0, need - n) - max(0, need - n) // 2)
                               for n in vol.shape[1:]]
            if neg is not None and np.shape(neg) != np.shape(tgt):
                raise DataError(f"MultiViewBlocks: negatives {np.shape(neg)} differ from target {np.shape(tgt)}")
            if any(a or b for a, b in pads[1:]):
                vol = np.pad(vol, pads, constant_values=float(vol.min()))
                tgt = np.pad(np.asarray(tgt, bool), pads[1:])
                w = np.pad(np.asarray(w, np.float32), pads[1:], constant_values=1.0)
                neg = None if neg is None else np.pad(np.asarray(neg, bool), pads[1:])
            flat = None if neg is None else np.flatnonzero(neg)
            self.negatives.append(flat if flat is not None and flat.size else None)
            self.volumes.append(vol)
            self.targets.append(np.asarray(tgt, bool))
            self.weights.append(np.asarray(w, np.float32))
            self.fg.append(np.flatnonzero(self.targets[-1]))
        self.samples_per_case = int(samples_per_case)
        self.fg_prob, self.flip = float(fg_prob), bool(flip)

    @property
    def in_channels(self) -> int:
        return int(self.volumes[0].shape[0])

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_case

    def locate(self, index: int, rng: np.random.Generator | None = None):
        """``(case index, view, box)`` of block ``index``; ``box`` is ((z0, z1), (y0, y1), (x0, x1)) in
        the (padded) volume."""
        ci = index // self.samples_per_case
        view = self.views[index % len(self.views)]
        draw = rng if rng is not None else item_rng(0, 7717, index)
        shape = self.volumes[ci].shape[1:]
        size = view_shape(self.patch, view)
        fg, neg = self.fg[ci], self.negatives[ci]
        u = draw.random() if fg.size or neg is not None else 1.0
        if fg.size and u < self.fg_prob:
            centre = np.unravel_index(fg[draw.integers(fg.size)], shape)
        elif neg is not None and self.fg_prob <= u < self.fg_prob + self.negative_prob:
            centre = np.unravel_index(neg[draw.integers(neg.size)], shape)
        else:
            centre = [draw.integers(n) for n in shape]
        starts = [min(max(int(c) - s // 2, 0), n - s) for c, s, n in zip(centre, size, shape)]
        return ci, view, tuple((a, a + s) for a, s in zip(starts, size))

    def __getitem__(self, index: int):
        return self.get(int(index), None)

    def get(self, index: int, rng: np.random.Generator | None):
        ci, view, box = self.locate(index, rng)
        sl = tuple(slice(a, b) for a, b in box)
        image = self.volumes[ci][(slice(None),) + sl]
        target = np.stack([self.targets[ci][sl].astype(np.float32), self.weights[ci][sl]])
        if rng is not None and self.flip and rng.random() < 0.5:
            image, target = image[..., ::-1], target[..., ::-1]
        image, target = to_view(image, view), to_view(target, view)
        return (torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                torch.from_numpy(np.ascontiguousarray(target, np.float32)))
