"""Array transforms: normalisation, crop/pad, slicing, patches, augmentation, and invertible
preprocessing of a case (resample + crop) with the record needed to map predictions back.

Arrays are numpy, (z, y, x) for volumes, (C, z, y, x) for multi-channel volumes, (C, y, x) for slices.
Random functions take an explicit ``rng`` (:class:`numpy.random.Generator`) so that the engine can make
every sample a pure function of (seed, epoch, index) -- which is what makes runs repeatable and
resumable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from npcrepro.errors import DataError, ParameterError

__all__ = [
    "zscore", "clip", "clip_percentile", "minmax", "normalise",
    "bbox", "crop", "uncrop", "pad_crop", "center_box", "random_box", "extract_patch",
    "slices_with", "stack_channels",
    "random_flip", "random_rotate2d", "random_rotate", "intensity_jitter", "gaussian_noise",
    "random_gamma", "Compose", "Augment", "draw_flip", "draw_rotate2d", "draw_jitter", "draw_noise",
    "draw_gamma", "DRAWS",
    "Preprocessed", "preprocess", "invert",
]

Box = tuple[tuple[int, int], ...]  # per axis (start, stop); may extend beyond the array (padding)


# ---------------------------------------------------------------------------------- normalisation
def zscore(arr: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """(x - mean) / sd, statistics over ``mask`` (e.g. the body) or over everything."""
    arr = np.asarray(arr, dtype=np.float32)
    vals = arr[mask] if mask is not None else arr
    if vals.size == 0:
        return arr - 0.0
    mu, sd = float(vals.mean()), float(vals.std())
    return ((arr - mu) / max(sd, eps)).astype(np.float32)


def clip(arr: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """Clip intensities (e.g. a CT window in HU, or chen2020's z-score ranges)."""
    return np.clip(np.asarray(arr, dtype=np.float32), lo, hi)


def clip_percentile(arr: np.ndarray, lo: float = 0.5, hi: float = 99.5,
                    mask: np.ndarray | None = None) -> np.ndarray:
    vals = arr[mask] if mask is not None else arr
    a, b = np.percentile(vals, [lo, hi])
    return clip(arr, a, b)


def minmax(arr: np.ndarray, lo: float | None = None, hi: float | None = None, eps: float = 1e-8
           ) -> np.ndarray:
    """Scale to [0, 1] using ``lo``/``hi`` (default: the array's min/max), clipping outside."""
    arr = np.asarray(arr, dtype=np.float32)
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    return np.clip((arr - lo) / max(hi - lo, eps), 0, 1).astype(np.float32)


def normalise(arr: np.ndarray, method: str = "zscore", *, window: tuple[float, float] | None = None,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Named normalisation: ``"zscore"``, ``"minmax"``, ``"window"`` (clip to ``window`` then [0, 1]),
    ``"clip_zscore"`` (clip to ``window``, then z-score), ``"none"``."""
    if method == "zscore":
        return zscore(arr, mask)
    if method == "minmax":
        return minmax(arr)
    if method == "window":
        if window is None:
            raise ParameterError("normalise(method='window') needs window=(lo, hi)")
        return minmax(arr, *window)
    if method == "clip_zscore":
        if window is None:
            raise ParameterError("normalise(method='clip_zscore') needs window=(lo, hi)")
        return zscore(clip(arr, *window), mask)
    if method == "none":
        return np.asarray(arr, dtype=np.float32)
    raise ParameterError(f"unknown normalisation {method!r} (valid: zscore, minmax, window, clip_zscore, none)")


# ---------------------------------------------------------------------------------- crop / pad
def bbox(mask: np.ndarray, margin: int | Sequence[int] = 0) -> Box | None:
    """Bounding box of the True voxels as ((start, stop), ...) clipped to the array, or None if empty."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    margin = (margin,) * mask.ndim if isinstance(margin, int) else tuple(margin)
    box = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((max(0, int(idx[0]) - margin[ax]), min(mask.shape[ax], int(idx[-1]) + 1 + margin[ax])))
    return tuple(box)


def crop(arr: np.ndarray, box: Box, fill: float = 0) -> np.ndarray:
    """Cut ``box`` out of the last ``len(box)`` axes; parts outside the array are filled with ``fill``."""
    arr = np.asarray(arr)
    lead = arr.ndim - len(box)
    if lead < 0:
        raise DataError(f"crop: box has {len(box)} axes, array only {arr.ndim}")
    out_shape = arr.shape[:lead] + tuple(b - a for a, b in box)
    if any(s <= 0 for s in out_shape[lead:]):
        raise DataError(f"crop: empty box {box}")
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    inside = True
    for (a, b), n in zip(box, arr.shape[lead:]):
        s0, s1 = max(a, 0), min(b, n)
        if s1 <= s0:
            inside = False
            break
        src.append(slice(s0, s1))
        dst.append(slice(s0 - a, s1 - a))
    if all(a >= 0 and b <= n for (a, b), n in zip(box, arr.shape[lead:])):
        return arr[tuple(src)].copy()
    out = np.full(out_shape, fill, dtype=arr.dtype)
    if inside:
        out[tuple(dst)] = arr[tuple(src)]
    return out


def uncrop(arr: np.ndarray, box: Box, shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Inverse of :func:`crop`: place ``arr`` (the crop) into an array of ``shape`` (trailing axes)."""
    arr = np.asarray(arr)
    lead = arr.ndim - len(box)
    out = np.full(arr.shape[:lead] + tuple(shape), fill, dtype=arr.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for (a, b), n in zip(box, shape):
        s0, s1 = max(a, 0), min(b, n)
        if s1 <= s0:
            return out
        dst.append(slice(s0, s1))
        src.append(slice(s0 - a, s1 - a))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def center_box(shape: Sequence[int], size: Sequence[int], center: Sequence[float] | None = None) -> Box:
    """A box of ``size`` centred on ``center`` (default: the array centre); may exceed the array."""
    shape, size = tuple(shape), tuple(int(s) for s in size)
    if center is None:
        center = [(n - 1) / 2 for n in shape]
    starts = [int(np.floor(c - (s - 1) / 2 + 0.5)) for c, s in zip(center, size)]
    return tuple((a, a + s) for a, s in zip(starts, size))


def pad_crop(arr: np.ndarray, size: Sequence[int], center: Sequence[float] | None = None,
             fill: float = 0) -> tuple[np.ndarray, Box]:
    """Crop and/or pad the trailing axes to ``size`` around ``center``; returns (array, box)."""
    arr = np.asarray(arr)
    shape = arr.shape[arr.ndim - len(size):]
    if center is None:
        starts = [(n - s) // 2 for n, s in zip(shape, size)]
        box = tuple((a, a + int(s)) for a, s in zip(starts, size))
    else:
        box = center_box(shape, size, center)
    return crop(arr, box, fill), box


def random_box(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator,
               center_in: np.ndarray | None = None, *, center_flat: np.ndarray | None = None,
               centred: bool = True) -> Box:
    """A box of ``size`` around a random True voxel of ``center_in`` when given and non-empty, else
    uniformly placed inside the array (or centred on the array when the array is smaller).

    ``centred``: the chosen voxel is the box's centre; with ``centred=False`` it lies at a position of
    the box drawn uniformly per axis, so a network trained on such boxes cannot learn that the target
    sits at the centre of its input. The box is moved inside the array where the array is big enough.
    ``center_flat``: ``np.flatnonzero(center_in)`` when the caller keeps it (the same draws)."""
    shape, size = tuple(shape), tuple(int(s) for s in size)
    idx = center_flat if center_flat is not None else (
        np.flatnonzero(center_in) if center_in is not None else None)
    if idx is not None and len(idx):
        c = np.unravel_index(idx[rng.integers(len(idx))], shape)
        starts = [int(ci) - (s // 2 if centred else int(rng.integers(0, s))) for ci, s in zip(c, size)]
        # keep the box inside the array where the array is big enough
        starts = [min(max(a, 0), n - s) if n >= s else (n - s) // 2 for a, n, s in zip(starts, shape, size)]
    else:
        starts = [int(rng.integers(0, n - s + 1)) if n >= s else (n - s) // 2 for n, s in zip(shape, size)]
    return tuple((a, a + s) for a, s in zip(starts, size))


def extract_patch(arr: np.ndarray, center: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """The patch of ``size`` centred on voxel ``center`` (zero-filled outside)."""
    return crop(arr, tuple((int(c) - s // 2, int(c) - s // 2 + s) for c, s in zip(center, size)), fill)


# ---------------------------------------------------------------------------------- slicing
def slices_with(mask: np.ndarray, axis: int = 0) -> np.ndarray:
    """Indices of the slices along ``axis`` that contain any True voxel."""
    mask = np.asarray(mask, bool)
    other = tuple(a for a in range(mask.ndim) if a != axis)
    return np.flatnonzero(mask.any(axis=other))


def stack_channels(images: dict[str, np.ndarray], channels: Sequence[str]) -> np.ndarray:
    """(C, z, y, x) float32 from a case's ``images`` dict in ``channels`` order."""
    missing = [c for c in channels if c not in images]
    if missing:
        raise DataError(f"missing channel(s) {missing} (available: {sorted(images)})")
    return np.stack([np.asarray(images[c], np.float32) for c in channels])


# ---------------------------------------------------------------------------------- augmentation
# Augmentations take (image, label, rng) with image (C, *S) float and label (K, *S) (float/bool) and
# return (image, label). Geometric ones transform both; intensity ones only the image.
#
# Each one draws its random values with a ``draw_*`` function first (the same calls on ``rng``, in the
# same order, as it always made), then applies them. The engine's device batches
# (:mod:`npcrepro.engine.batches`) call the same ``draw_*`` per sample and apply a whole batch at once
# with tensor operations, so both paths see the same flips, angles and factors.

def draw_flip(rng, n_channels: int = 1, axes: Sequence[int] = (-1,), p: float = 0.5) -> tuple[bool, ...]:
    """Which of ``axes`` :func:`random_flip` flips (one draw per axis)."""
    return tuple(bool(rng.random() < p) for _ in axes)


def random_flip(image, label, rng, axes: Sequence[int] = (-1,), p: float = 0.5):
    """Flip each of ``axes`` (spatial, negative from the end) with probability ``p``."""
    for ax, on in zip(axes, draw_flip(rng, axes=axes, p=p)):
        if on:
            image = np.flip(image, axis=ax)
            label = np.flip(label, axis=ax) if label is not None else None
    return np.ascontiguousarray(image), (np.ascontiguousarray(label) if label is not None else None)


def draw_rotate2d(rng, n_channels: int = 1, max_deg: float = 10.0, step: float | None = None,
                  p: float = 1.0, order: int = 1) -> float:
    """The angle (degrees) :func:`random_rotate2d` rotates by; 0 when it does not rotate."""
    if rng.random() >= p or max_deg == 0:
        return 0.0
    if step:
        choices = np.arange(-max_deg, max_deg + 1e-9, step)
        return float(choices[rng.integers(len(choices))])
    return float(rng.uniform(-max_deg, max_deg))


def random_rotate2d(image, label, rng, max_deg: float = 10.0, step: float | None = None,
                    p: float = 1.0, order: int = 1):
    """In-plane rotation by an angle in [-max_deg, max_deg] (on a grid of ``step`` degrees if given) over
    the last two axes; bilinear for the image, nearest for the label."""
    angle = draw_rotate2d(rng, max_deg=max_deg, step=step, p=p)
    return rotate(image, label, angle, axes=(-2, -1), order=order)


def rotate(image, label, angle: float, axes=(-2, -1), order: int = 1):
    """Rotate by ``angle`` degrees in the plane of ``axes`` (image order ``order``, label nearest)."""
    if angle == 0:
        return image, label
    ax = tuple(a % image.ndim for a in axes)
    img = ndimage.rotate(image, angle, axes=ax, reshape=False, order=order, mode="nearest")
    lab = None
    if label is not None:
        lax = tuple(a % label.ndim for a in axes)
        lab = ndimage.rotate(np.asarray(label, np.float32), angle, axes=lax, reshape=False, order=0,
                             mode="constant", cval=0)
        lab = lab.astype(label.dtype) if label.dtype != bool else lab > 0.5
    return img.astype(image.dtype, copy=False), lab


def random_rotate(image, label, rng, max_deg: float = 10.0, p: float = 1.0):
    """Alias of :func:`random_rotate2d` (in-plane rotation; for 3D arrays the plane is (y, x))."""
    return random_rotate2d(image, label, rng, max_deg, p=p)


def draw_jitter(rng, n_channels: int = 1, scale: float = 0.1, shift: float = 0.1, p: float = 1.0):
    """(factor, offset) per channel, each shape (n_channels,), of :func:`intensity_jitter`; None when
    it does not jitter."""
    if rng.random() >= p:
        return None
    return 1 + rng.uniform(-scale, scale, size=n_channels), rng.uniform(-shift, shift, size=n_channels)


def intensity_jitter(image, label, rng, scale: float = 0.1, shift: float = 0.1, p: float = 1.0):
    """x * (1 + U(-scale, scale)) + U(-shift, shift), per channel."""
    drawn = draw_jitter(rng, image.shape[0], scale=scale, shift=shift, p=p)
    if drawn is None:
        return image, label
    shape = (image.shape[0],) + (1,) * (image.ndim - 1)
    a, b = drawn[0].reshape(shape), drawn[1].reshape(shape)
    return (image * a + b).astype(image.dtype, copy=False), label


def draw_noise(rng, n_channels: int = 1, sd: float = 0.05, p: float = 1.0) -> bool:
    """Whether :func:`gaussian_noise` adds noise (the noise itself is drawn after this)."""
    return bool(rng.random() < p)


def gaussian_noise(image, label, rng, sd: float = 0.05, p: float = 1.0):
    """Add N(0, sd) noise (li2018 used noise power 1e-8, i.e. sd 1e-4)."""
    if not draw_noise(rng, sd=sd, p=p):
        return image, label
    return (image + rng.normal(0, sd, size=image.shape)).astype(image.dtype, copy=False), label


def draw_gamma(rng, n_channels: int = 1, gamma_range=(0.7, 1.5), p: float = 0.5) -> float | None:
    """The exponent of :func:`random_gamma`; None when it does not change the contrast."""
    if rng.random() >= p:
        return None
    return float(rng.uniform(*gamma_range))


def random_gamma(image, label, rng, gamma_range=(0.7, 1.5), p: float = 0.5):
    """Contrast change like MATLAB imadjust's gamma: min-max scale, power, scale back."""
    g = draw_gamma(rng, gamma_range=gamma_range, p=p)
    if g is None:
        return image, label
    lo = image.min(axis=tuple(range(1, image.ndim)), keepdims=True)
    hi = image.max(axis=tuple(range(1, image.ndim)), keepdims=True)
    span = np.maximum(hi - lo, 1e-8)
    return (((image - lo) / span) ** g * span + lo).astype(image.dtype, copy=False), label


#: The draw of each augmentation step above: ``draw(rng, n_channels, **step kwargs)``.
DRAWS: dict[Callable, Callable] = {random_flip: draw_flip, random_rotate2d: draw_rotate2d,
                                   random_rotate: draw_rotate2d, intensity_jitter: draw_jitter,
                                   gaussian_noise: draw_noise, random_gamma: draw_gamma}


class Compose:
    """Apply augmentations in order: ``Compose([f1, (f2, {"max_deg": 5})])(image, label, rng)``.

    Entries are callables ``f(image, label, rng)`` or (callable, kwargs) pairs.
    """

    def __init__(self, steps: Sequence[Callable | tuple[Callable, dict]]):
        self.steps = [(s, {}) if callable(s) else (s[0], dict(s[1])) for s in steps]

    def __call__(self, image, label, rng):
        for fn, kw in self.steps:
            image, label = fn(image, label, rng, **kw)
        return image, label

    def drawable(self) -> bool:
        """Whether every step has a draw in :data:`DRAWS` (so :meth:`draw` works)."""
        return all(fn in DRAWS for fn, _ in self.steps)

    def draw(self, rng, n_channels: int = 1) -> list:
        """Each step's random values for one sample of ``n_channels`` channels, drawn as ``__call__``
        draws them (a noise step's noise itself is not drawn here)."""
        if not self.drawable():
            raise ParameterError(f"{self!r}: no draw for step(s) "
                                 f"{[fn.__name__ for fn, _ in self.steps if fn not in DRAWS]}")
        return [DRAWS[fn](rng, n_channels, **kw) for fn, kw in self.steps]

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(f"{f.__name__}{kw or ''}" for f, kw in self.steps) + ")"


def Augment(flip_axes: Sequence[int] = (-1,), rotate_deg: float = 0.0, jitter: float = 0.0,
            noise_sd: float = 0.0) -> Compose:
    """A common preset: flips, in-plane rotation, intensity jitter, noise (zeros switch a step off)."""
    steps: list = []
    if flip_axes:
        steps.append((random_flip, {"axes": tuple(flip_axes)}))
    if rotate_deg:
        steps.append((random_rotate2d, {"max_deg": rotate_deg}))
    if jitter:
        steps.append((intensity_jitter, {"scale": jitter, "shift": jitter}))
    if noise_sd:
        steps.append((gaussian_noise, {"sd": noise_sd}))
    return Compose(steps)


# ---------------------------------------------------------------------------------- invertible preprocessing
@dataclass(frozen=True)
class Preprocessed:
    """What :func:`preprocess` did to a case, so that predictions can go back to its original grid.

    ``original`` is the case's grid; ``resampled`` the grid after resampling (None when not
    resampled); ``box`` the crop in the resampled (or original) grid's index space, possibly reaching
    outside it (padding); None when not cropped.
    """

    original: "object"              # npcrepro.io.Geometry
    resampled: "object | None" = None
    box: Box | None = None
    notes: dict = field(default_factory=dict)

    @property
    def working_shape(self) -> tuple[int, ...]:
        """Shape of the arrays the model sees."""
        if self.box is not None:
            return tuple(b - a for a, b in self.box)
        g = self.resampled if self.resampled is not None else self.original
        return tuple(g.shape)

    def to_dict(self) -> dict:
        return {"original": self.original.to_dict(),
                "resampled": None if self.resampled is None else self.resampled.to_dict(),
                "box": None if self.box is None else [list(b) for b in self.box], "notes": self.notes}


def preprocess(case, *, spacing: Sequence[float] | None = None, box: Box | None = None,
               crop_to_structure: str | None = None, margin: int | Sequence[int] = 0,
               size: Sequence[int] | None = None):
    """Resample a :class:`~npcrepro.datasets.Case` to ``spacing`` (mm; images linear, masks nearest),
    then crop: to ``box``, or to the bounding box of ``crop_to_structure`` (+ ``margin``), or to
    ``size`` around the centre (pads when larger). Returns (new Case, :class:`Preprocessed`).
    """
    from npcrepro import io
    from npcrepro.datasets import Case

    original = case.geometry
    images, labels = dict(case.images), dict(case.labels)
    resampled = None
    geom = original
    if spacing is not None and not np.allclose(spacing, case.spacing):
        vols = {k: io.resample_spacing(case.volume(k), spacing, order="linear") for k in images}
        labs = {k: io.resample_spacing(case.volume(k), spacing, order="nearest") for k in labels}
        any_vol = next(iter({**vols, **labs}.values()))
        resampled = any_vol.geometry
        geom = resampled
        images = {k: v.array.astype(np.float32) for k, v in vols.items()}
        labels = {k: v.array.astype(bool) for k, v in labs.items()}
    shape = tuple(geom.shape)
    if box is None and crop_to_structure is not None:
        if crop_to_structure not in labels:
            raise DataError(f"case {case.name}: no structure {crop_to_structure!r} to crop to")
        box = bbox(labels[crop_to_structure], margin)
    if box is None and size is not None:
        starts = [(n - s) // 2 for n, s in zip(shape, size)]
        box = tuple((a, a + int(s)) for a, s in zip(starts, size))
    if box is not None:
        box = tuple((int(a), int(b)) for a, b in box)
        images = {k: crop(v, box) for k, v in images.items()}
        labels = {k: crop(v, box).astype(bool) for k, v in labels.items()}
    # origin of the working grid: index box start mapped through the working grid
    start = np.array([a for a, _ in box]) if box is not None else np.zeros(3)
    origin = tuple(geom.index_to_physical(start))
    new = Case(case.name, images, labels, geom.spacing, origin, geom.direction, dict(case.meta))
    return new, Preprocessed(original, resampled, box)


def invert(array: np.ndarray, record: Preprocessed, *, order: str | None = None) -> np.ndarray:
    """Map a prediction on the working grid back to the case's original grid.

    ``array`` is (z, y, x) or (K, z, y, x). ``order``: "linear" for probabilities, "nearest" for masks
    (default: nearest for bool/integer arrays, linear otherwise). Outside the crop the result is 0.
    """
    from npcrepro import io

    arr = np.asarray(array)
    if arr.ndim == 4:
        return np.stack([invert(a, record, order=order) for a in arr])
    if tuple(arr.shape) != record.working_shape:
        raise DataError(f"invert: prediction shape {arr.shape} is not the working shape "
                        f"{record.working_shape}")
    is_mask = arr.dtype == bool or arr.dtype.kind in "iu"
    order = order or ("nearest" if is_mask else "linear")
    grid = record.resampled if record.resampled is not None else record.original
    if record.box is not None:
        arr = uncrop(arr, record.box, grid.shape)
    if record.resampled is None:
        return arr
    src = arr.astype(np.float32) if (order != "nearest" or arr.dtype == bool) else arr
    vol = io.Volume.on_grid(src, record.resampled)
    out = io.resample_to(vol, record.original, order=order).array
    if arr.dtype == bool:
        return out > 0.5
    return out.astype(arr.dtype, copy=False)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance of a ``bins`` histogram)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise DataError("otsu_threshold: no finite values")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


# ---------------------------------------------------------------------------------------------
# chen2020 (also what guo2021's head mask needs, with ``opening=True``): body masks and the
# intra-body normalisation of ref. [40]


def body_mask(image: np.ndarray, *, opening: bool = False) -> np.ndarray:
    """The body (head) of an MR or CT volume (z, y, x): Otsu foreground (opened once when
    ``opening``), its largest 3D connected component, holes filled slice by slice."""
    img = np.asarray(image, np.float32)
    mask = img > otsu_threshold(img)
    if opening:
        mask = ndimage.binary_opening(mask)
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


def intra_body_normalise(image: np.ndarray, mask: np.ndarray | None = None,
                         clip_range: tuple[float, float] | None = None) -> np.ndarray:
    """(image - mean of the body) / sd of the body, then clipped to ``clip_range``; the body is
    :func:`body_mask` unless given (the whole image when the mask is empty)."""
    img = np.asarray(image, np.float32)
    mask = body_mask(img) if mask is None else np.asarray(mask, bool)
    out = zscore(img, mask if mask.any() else None)
    return clip(out, *clip_range) if clip_range is not None else out


__all__ += ["otsu_threshold", "body_mask", "intra_body_normalise"]
