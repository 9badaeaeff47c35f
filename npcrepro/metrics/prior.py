"""A location prior: the reference that reads no image.

The mean of the training masks, thresholded, is the prediction for every test case. A network that
scores no higher than it on the same test cases has learnt where the target usually lies, and nothing
from the image. Used beside the networks of the real-data tracks (li2018's T2 slices, xue2020's
OpenKBP PTV70, luo2020's OpenKBP organs).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from npcrepro.errors import DataError
from npcrepro.metrics.overlap import dice

__all__ = ["PRIOR", "location_prior", "location_priors", "prior_scores"]

#: The name a location prior's rows carry beside the networks' (their ``method``).
PRIOR = "location prior"


def location_prior(train: Sequence[np.ndarray], threshold: float, *, pool_slices: bool = False) -> np.ndarray:
    """The boolean mask where the mean of the ``train`` masks is at least ``threshold``.

    ``pool_slices=False``: the masks are volumes of one shape (z, y, x), averaged voxel by voxel; the
    prior has that shape. ``pool_slices=True``: every slice of every (z, y, x) mask counts once (the
    masks may differ in z); the prior is one (y, x) slice. Raises :class:`DataError` without training
    masks or when their shapes differ."""
    if not len(train):
        raise DataError("a location prior needs at least one training mask")
    shapes = {np.shape(m)[1:] if pool_slices else np.shape(m) for m in train}
    if len(shapes) > 1:
        raise DataError(f"a location prior needs masks of one size, got {sorted(shapes)}")
    # a running count, not a stack of every mask: 64 OpenKBP volumes are 134 MB as one boolean array
    count, n = np.zeros(shapes.pop(), np.int64), 0
    for m in train:
        m = np.asarray(m, bool)
        count += m.sum(axis=0) if pool_slices else m
        n += len(m) if pool_slices else 1
    return count / n >= float(threshold)


def location_priors(train: Iterable[Mapping[str, np.ndarray]], threshold: float) -> dict[str, np.ndarray]:
    """Structure -> its :func:`location_prior` (voxel by voxel) from the training patients that have
    it: ``train`` yields one {structure: (z, y, x) mask} per patient (read once, so a generator that
    loads one patient at a time keeps one in memory); an empty or missing mask is a patient without
    the structure, and a structure no patient has gets no prior. Raises :class:`DataError` without any
    training mask or when one structure's masks differ in shape."""
    counts: dict[str, np.ndarray] = {}
    n: dict[str, int] = {}
    for masks in train:
        for s, m in masks.items():
            m = np.asarray(m, bool)
            if not m.any():
                continue
            if s in counts and counts[s].shape != m.shape:
                raise DataError(f"a location prior needs masks of one size: {s} is {m.shape} and "
                                f"{counts[s].shape}")
            counts.setdefault(s, np.zeros(m.shape, np.int64))
            counts[s] += m
            n[s] = n.get(s, 0) + 1
    if not counts:
        raise DataError("a location prior needs at least one training mask")
    return {s: c / n[s] >= float(threshold) for s, c in counts.items()}


def prior_scores(train: Sequence[np.ndarray], tests: Mapping[str, np.ndarray], threshold: float, *,
                 pool_slices: bool = False) -> dict[str, float]:
    """Test name -> the DSC of :func:`location_prior` of ``train`` against its mask in ``tests``
    (:func:`npcrepro.metrics.dice`: 1 when both are empty). With ``pool_slices`` the (y, x) prior is
    predicted on every slice of a test mask, which may have any number of slices; otherwise every
    test mask has the training masks' shape."""
    prior = location_prior(train, threshold, pool_slices=pool_slices)
    out = {}
    for name, ref in tests.items():
        ref = np.asarray(ref, bool)
        if (ref.shape[1:] if pool_slices else ref.shape) != prior.shape:
            raise DataError(f"a location prior needs masks of one size: {name} is {ref.shape}, the training "
                            f"masks {prior.shape}")
        out[name] = dice(np.broadcast_to(prior, ref.shape), ref)
    return out
