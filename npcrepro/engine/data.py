"""Training samples from cases: 2D slices and 3D patches, with augmentation hooks, and the epoch
plans that make data order a pure function of (seed, stage, epoch).

A dataset here holds normalised arrays in memory and implements ``get(index, rng)`` (a sample drawn
with the given :class:`numpy.random.Generator`, used by the trainer) and ``__getitem__(index)`` (the
same without augmentation, for validation). Samples are ``(image, target)`` float32 tensors:
(C, H, W) and (K, H, W) for slices, (C, D, H, W) and (K, D, H, W) for patches, where K is the number of
structures (one binary channel each).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from npcrepro import transforms as T
from npcrepro.engine.batches import BatchMaker, batched, fits, store_bytes
from npcrepro.engine.device import item_rng
from npcrepro.errors import DataError, ParameterError

__all__ = ["prepare_case", "slice_stack", "SliceDataset", "PatchDataset", "epoch_plan", "covering_plan",
           "item_rng"]

def _normalise_channel(arr: np.ndarray, how, channel: str) -> np.ndarray:
    if isinstance(how, Mapping):
        how = how.get(channel, "zscore")
    if how is None:
        return np.asarray(arr, np.float32)
    if callable(how):
        return np.asarray(how(arr), np.float32)
    return T.normalise(arr, how)


def prepare_case(case, channels: Sequence[str], structures: Sequence[str] = (), *,
                 normalise="zscore") -> tuple[np.ndarray, np.ndarray]:
    """(image (C, z, y, x) float32 normalised per channel, target (K, z, y, x) bool).

    ``normalise``: a method name for :func:`npcrepro.transforms.normalise`, a callable, a dict channel ->
    either, or None. Structures the case lacks give an all-False target channel (a patient without
    nodes really has no nodes); use ``case.labels`` to tell them apart when that matters.
    """
    image = np.stack([_normalise_channel(case.images[c], normalise, c) for c in _check(case, channels)])
    target = np.zeros((len(structures),) + tuple(case.shape), bool)
    for k, s in enumerate(structures):
        if s in case.labels:
            target[k] = case.labels[s]
    return image, target


def _check(case, channels):
    missing = [c for c in channels if c not in case.images]
    if missing:
        raise DataError(f"case {case.name}: missing channel(s) {missing} (has {sorted(case.images)})")
    return channels


def slice_stack(volume: np.ndarray, z: int, context: int = 0, axis: int = 1) -> np.ndarray:
    """Slice ``z`` of a (C, z, y, x) array as (C * (2 * context + 1), y, x): each channel's neighbours
    z-context..z+context (edge slices repeated at the volume ends), channel-major."""
    if context == 0:
        return np.take(volume, z, axis=axis)
    n = volume.shape[axis]
    idx = np.clip(np.arange(z - context, z + context + 1), 0, n - 1)
    sl = np.take(volume, idx, axis=axis)  # (C, 2k+1, y, x)
    return sl.reshape((-1,) + sl.shape[2:])


def epoch_plan(n_items: int, batch_size: int, iterations: int, seed: int, stage: int, epoch: int,
               shuffle: bool = True, cover: np.ndarray | None = None) -> np.ndarray:
    """Item indices for one epoch, shape (iterations, batch_size): concatenated seeded permutations of
    ``range(n_items)`` (as many as needed; the remainder of the last is dropped); with ``cover``,
    batches that show every structure (:func:`covering_plan`)."""
    if n_items < 1:
        raise DataError("the training set is empty")
    need = iterations * batch_size
    rng = item_rng(seed, 7919, stage, epoch)
    if cover is not None:
        if len(cover) != n_items:
            raise DataError(f"cover has {len(cover)} rows for {n_items} items")
        return covering_plan(cover, batch_size, iterations, rng)
    parts, have = [], 0
    while have < need:
        parts.append(rng.permutation(n_items) if shuffle else np.arange(n_items))
        have += n_items
    return np.concatenate(parts)[:need].reshape(iterations, batch_size)


def covering_plan(cover: np.ndarray, batch_size: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Item indices, shape (iterations, batch_size), such that every batch holds an item showing each
    structure that any item shows, as far as ``batch_size`` allows: the structures are visited in a
    random order, each one no item of the batch shows yet gets a random item that shows it, and the
    rest of the batch is drawn uniformly (foreground oversampling for batch-level Dice losses: a
    structure absent from a batch gets no term that teaches it, only one that pushes it to zero).

    ``cover``: (n_items, K) bool, which of K structures each item shows."""
    cover = np.asarray(cover, bool)
    if cover.ndim != 2 or not len(cover):
        raise DataError(f"cover must be a non-empty (items, structures) array, got shape {cover.shape}")
    showing = [np.flatnonzero(cover[:, k]) for k in range(cover.shape[1])]
    out = np.empty((iterations, batch_size), np.int64)
    for b in range(iterations):
        chosen: list[int] = []
        shown = np.zeros(cover.shape[1], bool)
        for k in rng.permutation(cover.shape[1]):
            if len(chosen) == batch_size:
                break
            if not shown[k] and len(showing[k]):
                i = int(showing[k][rng.integers(len(showing[k]))])
                chosen.append(i)
                shown |= cover[i]
        chosen += rng.integers(len(cover), size=batch_size - len(chosen)).tolist()
        out[b] = rng.permutation(chosen)
    return out


class _Base(torch.utils.data.Dataset):
    augment: Callable | None = None

    def __getitem__(self, index: int):
        return self.get(int(index), None)

    def _finish(self, image: np.ndarray, target: np.ndarray, rng):
        if rng is not None and self.augment is not None:
            image, target = self.augment(image, target, rng)
        return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)))


def _check_negatives(negatives: Sequence[str], negative_prob: float, structures: Sequence[str]) -> float:
    """``negative_prob`` as a float, after checking that the hard-negative structures are not targets."""
    both = sorted(set(negatives) & set(structures))
    if both:
        raise ParameterError(f"structure(s) {both} cannot be both a target and a hard negative")
    return negative_share(negative_prob) if negatives else 0.0


def negative_share(negative_prob: float) -> float:
    """``negative_prob`` as a float, checked to lie in [0, 1] (the share of draws centred on negatives)."""
    if not 0.0 <= float(negative_prob) <= 1.0:
        raise ParameterError(f"negative_prob must lie in [0, 1], got {negative_prob}")
    return float(negative_prob)


def _negative_mask(case, negatives: Sequence[str]) -> np.ndarray | None:
    """(z, y, x) bool union of the case's ``negatives`` structures; None when it has none of them (or
    none are asked for): a patient without nodes has no hard negatives to place a sample on."""
    masks = [np.asarray(case.labels[s], bool) for s in negatives if s in case.labels]
    masks = [m for m in masks if m.any()]
    if not masks:
        return None
    return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]


def _negative_draw(shape, size, rng: np.random.Generator, flat: np.ndarray) -> T.Box:
    """A box of ``size`` holding a random voxel of ``flat`` (flat indices of a hard-negative mask)
    at a random position of the box, or a uniformly placed box when ``flat`` is empty."""
    return T.random_box(shape, size, rng, center_flat=flat if len(flat) else None, centred=False)


class SliceDataset(_Base):
    """Axial 2D slices of cases.

    Parameters
    ----------
    cases : sequence of Case
    channels, structures : sequence of str
        Input channels (stacked) and target structures (one output channel each).
    slices : "labelled" | "all" | callable(case) -> indices
        Which axial slices: those containing any of ``structures`` (li2018, luo2020), or all.
    background_fraction : float
        With ``slices="labelled"``, add this many unlabelled slices per labelled one (seeded choice).
    size : (H, W), optional
        Crop/pad every slice to this size (centred; with ``random_crop`` a random window during
        training, centred on a random target pixel with probability ``crop_fg_prob``). Needed when
        cases differ in size; smaller crops make training cheaper (inference still sees whole slices).
    negatives, negative_prob : sequence of str, float
        Hard negatives: with probability ``negative_prob`` a training crop that is not placed on the
        target is placed on a random pixel of one of the ``negatives`` structures (e.g. the nodes,
        GTVnd, for a primary-tumour target), where the slice shows one; the crop is then placed at
        random around it (see :func:`_negative_draw`).
    context : int
        Neighbouring slices on each side stacked as extra channels (2.5D).
    normalise : see :func:`prepare_case`
    augment : callable(image, target, rng) -> (image, target), optional
        Applied to training samples only (see :mod:`npcrepro.transforms`).
    sampling : "uniform" | "cover"
        How the Trainer draws batches: epochs of permutations, or batches that show every structure
        (``cover``: (items, structures) bool, what each slice shows inside its centred crop;
        :func:`covering_plan`).
    """

    def __init__(self, cases: Sequence, channels: Sequence[str], structures: Sequence[str], *,
                 slices="labelled", background_fraction: float = 0.0, size: Sequence[int] | None = None,
                 random_crop: bool = False, crop_fg_prob: float = 0.5, context: int = 0,
                 normalise="zscore", augment: Callable | None = None, seed: int = 0,
                 sampling: str = "uniform", negatives: Sequence[str] = (), negative_prob: float = 0.0):
        if sampling not in ("uniform", "cover"):
            raise ParameterError(f"sampling must be 'uniform' or 'cover', got {sampling!r}")
        self.channels, self.structures = list(channels), list(structures)
        self.negative_prob = _check_negatives(negatives, negative_prob, self.structures)
        self.negatives: list[np.ndarray | None] = []
        self.size = tuple(size) if size is not None else None
        self.random_crop, self.crop_fg_prob = random_crop, float(crop_fg_prob)
        self.context, self.augment = int(context), augment
        self.names: list[str] = []
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.items: list[tuple[int, int]] = []
        rng = np.random.default_rng(seed)
        for ci, case in enumerate(cases):
            image, target = prepare_case(case, self.channels, self.structures, normalise=normalise)
            self.names.append(case.name)
            self.images.append(image)
            self.targets.append(target)
            neg = _negative_mask(case, negatives)
            self.negatives.append(None if neg is None else np.flatnonzero(neg))
            nz = image.shape[1]
            if callable(slices):
                idx = np.asarray(slices(case), int)
            elif slices == "all":
                idx = np.arange(nz)
            elif slices == "labelled":
                idx = T.slices_with(target.any(axis=0), axis=0) if target.size else np.arange(0)
                if background_fraction > 0:
                    rest = np.setdiff1d(np.arange(nz), idx)
                    k = min(len(rest), int(round(background_fraction * max(len(idx), 1))))
                    idx = np.sort(np.concatenate([idx, rng.choice(rest, k, replace=False)])) if k else idx
            else:
                raise ParameterError(f"slices must be 'labelled', 'all' or a callable, got {slices!r}")
            self.items += [(ci, int(z)) for z in idx]
        if not self.items:
            raise DataError(f"no slices selected from {len(self.names)} case(s) "
                            f"(slices={slices!r}, structures={self.structures})")
        if self.size is None and len({im.shape[2:] for im in self.images}) > 1:
            raise DataError("cases have different in-plane sizes; pass size=(H, W) to crop/pad slices")
        self.cover = self._cover() if sampling == "cover" else None

    def _cover(self) -> np.ndarray:
        """(items, structures) bool: the structures each item's slice shows (inside its centred crop)."""
        out = np.zeros((len(self.items), len(self.structures)), bool)
        for n, (ci, z) in enumerate(self.items):
            target = self.targets[ci][:, z]
            if self.size is not None and not self.random_crop:
                target = T.crop(target, self._centre_box(target.shape[1:]))
            out[n] = target.reshape(len(target), -1).any(axis=1)
        return out

    def _centre_box(self, shape):
        return tuple(((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, self.size))

    @property
    def in_channels(self) -> int:
        return len(self.channels) * (2 * self.context + 1)

    def __len__(self) -> int:
        return len(self.items)

    def _box(self, index: int, rng: np.random.Generator | None):
        """The crop box of item ``index`` (None: the whole slice), drawn from ``rng`` (training) or
        centred (``rng`` None): the one place both the item path and device batches take it from."""
        if self.size is None:
            return None
        ci, z = self.items[index]
        shape = self.images[ci].shape[2:]
        if self.random_crop and rng is not None:
            u = rng.random()
            if u < self.crop_fg_prob:
                return T.random_box(shape, self.size, rng, center_flat=self._fg_flat(index))
            if self.negatives[ci] is not None and u < self.crop_fg_prob + self.negative_prob:
                return _negative_draw(shape, self.size, rng, self._negative_flat(index))
            return T.random_box(shape, self.size, rng)
        return self._centre_box(shape)

    def _negative_flat(self, index: int) -> np.ndarray:
        """Flat indices, within its slice, of item ``index``'s hard-negative pixels (kept: drawn from
        on every training crop of the item, not recomputed from the case's indices each time)."""
        cache = self.__dict__.setdefault("_negative_cache", {})
        if index not in cache:
            ci, z = self.items[index]
            neg, plane = self.negatives[ci], int(np.prod(self.images[ci].shape[2:]))
            cache[index] = neg[(neg >= z * plane) & (neg < (z + 1) * plane)] - z * plane
        return cache[index]

    def _fg_flat(self, index: int) -> np.ndarray:
        """Flat indices of the pixels of item ``index`` inside any target structure (kept)."""
        cache = self.__dict__.setdefault("_fg_cache", {})
        if index not in cache:
            ci, z = self.items[index]
            cache[index] = np.flatnonzero(self.targets[ci][:, z].any(axis=0))
        return cache[index]

    def get(self, index: int, rng: np.random.Generator | None):
        ci, z = self.items[index]
        image = slice_stack(self.images[ci], z, self.context)
        target = self.targets[ci][:, z]
        box = self._box(index, rng)
        if box is not None:
            image, target = T.crop(image, box), T.crop(target, box)
        return self._finish(image, target, rng)

    def device_batches(self, device, seed: int = 0) -> BatchMaker | None:
        """A :class:`~npcrepro.engine.batches.BatchMaker` of this dataset on ``device`` (each item's
        slice stored once), or None when the augmentation has no batched form or the slices do not
        fit in the device's memory."""
        if batched(self.augment) is None:
            return None
        images = [slice_stack(self.images[ci], z, self.context) for ci, z in self.items]
        targets = [self.targets[ci][:, z] for ci, z in self.items]
        if not fits(store_bytes(images, targets), device):
            return None
        return BatchMaker(images, targets, lambda i, rng: (i, self._box(i, rng)), self.augment, device, seed)


class PatchDataset(_Base):
    """Random 3D patches of cases (``samples_per_case`` per case per pass).

    With probability ``fg_prob`` a patch holds a random voxel of the target (any structure), else it
    is placed uniformly inside the volume. The target voxel lies anywhere in its patch
    (``centred=False``, the default), or at its centre (``centred=True``): a network trained on
    centred patches learns that tumour lies at the centre of its input, and where a sliding window
    shows it nothing to go by (the air around the head) it may find tumour at the centre of every
    window (see :func:`npcrepro.transforms.random_box`). With probability ``negative_prob`` a patch
    not placed on the target holds a random voxel of one of the ``negatives`` structures instead
    (hard negatives, see :class:`SliceDataset`). Without an rng (``dataset[i]``), patch ``i`` is drawn
    with ``item_rng(i)`` so validation patches are fixed.
    """

    def __init__(self, cases: Sequence, channels: Sequence[str], structures: Sequence[str],
                 patch_size: Sequence[int], *, samples_per_case: int = 4, fg_prob: float = 0.5,
                 normalise="zscore", augment: Callable | None = None, centred: bool = False,
                 negatives: Sequence[str] = (), negative_prob: float = 0.0):
        self.channels, self.structures = list(channels), list(structures)
        self.negative_prob = _check_negatives(negatives, negative_prob, self.structures)
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3:
            raise ParameterError(f"patch_size must have 3 entries (z, y, x), got {patch_size}")
        self.samples_per_case, self.fg_prob, self.augment = int(samples_per_case), float(fg_prob), augment
        self.centred = bool(centred)
        self.names, self.images, self.targets, self.fg = [], [], [], []
        self.negatives: list[np.ndarray | None] = []
        for case in cases:
            image, target = prepare_case(case, self.channels, self.structures, normalise=normalise)
            self.names.append(case.name)
            self.images.append(image)
            self.targets.append(target)
            self.fg.append(target.any(axis=0))
            neg = _negative_mask(case, negatives)
            self.negatives.append(None if neg is None else np.flatnonzero(neg))
        if not self.images:
            raise DataError("PatchDataset: no cases")

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def __len__(self) -> int:
        return len(self.images) * self.samples_per_case

    def _plan(self, index: int, rng: np.random.Generator | None):
        """(case, box) of patch ``index``: drawn from ``rng`` (training) or from the item's own fixed
        generator (validation); the one place both the item path and device batches take it from."""
        ci = index // self.samples_per_case
        draw = rng if rng is not None else item_rng(0, 104729, index)
        shape, u, neg = self.images[ci].shape[1:], draw.random(), self.negatives[ci]
        if neg is not None and self.fg_prob <= u < self.fg_prob + self.negative_prob:
            return ci, _negative_draw(shape, self.patch_size, draw, neg)
        fg = self._fg_flat(ci) if u < self.fg_prob else None
        return ci, T.random_box(shape, self.patch_size, draw, center_flat=fg, centred=self.centred)

    def _fg_flat(self, ci: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_fg_cache", {})
        if ci not in cache:
            cache[ci] = np.flatnonzero(self.fg[ci])
        return cache[ci]

    def get(self, index: int, rng: np.random.Generator | None):
        ci, box = self._plan(index, rng)
        image, target = T.crop(self.images[ci], box), T.crop(self.targets[ci], box)
        return self._finish(image, target, rng)

    def device_batches(self, device, seed: int = 0) -> BatchMaker | None:
        """A :class:`~npcrepro.engine.batches.BatchMaker` of this dataset on ``device`` (each case
        stored once), or None when the augmentation has no batched form or the cases do not fit."""
        if batched(self.augment) is None or not fits(store_bytes(self.images, self.targets), device):
            return None
        return BatchMaker(self.images, self.targets, self._plan, self.augment, device, seed)


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Start indices of windows of ``patch`` covering ``range(size)`` with at most ``step`` between
    starts, the last window ending exactly at ``size`` (``size >= patch``)."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / step) + 1
    return sorted({int(round(s)) for s in np.linspace(0, size - patch, n)})


__all__ += ["window_starts", "negative_share"]
