"""li2018: data. Case -> 144 x 144 DCE slices of the tumour, the paper's augmentation, the sampler.

Data (Sec. 2.1). The paper used the 35th of 65 DCE frames (peak enhancement), a 144 x 144 matrix
over a 22 x 22 cm field of view (1.53 mm pixels, derived) and 20 slices over 6 cm (3 mm), and kept
only slices with tumour (87 slices, 3 per patient on average). The phantom (:func:`dataset`) renders
exactly that acquisition (144 x 144 x 20 at 1.53 x 1.53 x 3 mm centred on the nasopharynx), so its
slices need no resampling; ``slices_per_patient`` tumour-bearing slices are taken evenly over the
tumour's extent (None: all). A dataset on disk is resampled to :data:`SPACING` and a 144 x 144 window
is cut around the tumour (its in-plane centroid over the chosen slices, shifted by a seeded uniform
offset of up to ``jitter_mm`` per axis); a dataset in pixel units (the real T2 slices) is resized to
144 x 144. :func:`prepare_case` keeps the record of both steps so predictions go back to the case grid.

Augmentation (Sec. 2.1), drawn on the fly, one of 11 x 33 x 2 = 726 variants per draw: rotation by
one of :data:`ROTATION_ANGLES`; one of 33 contrast adjustments (:data:`CONTRAST_VARIANTS`: MATLAB
``imadjust``-style saturation of ``s`` % at each tail times a gamma); with or without Gaussian noise
of variance 1e-8 on the [0, 1]-scaled image. Every image is then z-scored on its own.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from npcrepro import transforms as T
from npcrepro.engine.batches import rotate_batch, to_device, zscore_batch
from npcrepro.errors import DataError
from npcrepro.paths import build_once

#: The paper's matrix over its field of view: 144 x 144 over 22 x 22 cm; 20 slices over 6 cm.
SIZE = 144
FOV_MM = 220.0
SPACING = (3.0, FOV_MM / SIZE, FOV_MM / SIZE)  # (z, y, x) mm -- derived, not printed in the paper
STRUCTURE = "GTVp"
#: The 35th of the 65 DCE frames (peak enhancement); the phantom numbers frames from 0 (``DCE_034``).
DCE_FRAME = 35
DCE_CHANNEL = f"DCE_{DCE_FRAME - 1:03d}"
ACQUISITION_SHAPE = (20, SIZE, SIZE)


def lesion_extent_mm(mask: np.ndarray, spacing) -> float:
    """Largest axial extent (mm) of a (z, y, x) mask: the longer side of its in-plane bounding box
    (projected over z), the size the paper's 1 cm exclusion is read against; 0 for an empty mask."""
    m = np.asarray(mask, bool)
    if not m.any():
        return 0.0
    yy, xx = np.nonzero(m.any(axis=0))
    return float(max((yy.max() - yy.min() + 1) * spacing[1], (xx.max() - xx.min() + 1) * spacing[2]))


def phantom_params() -> dict:
    """:func:`npcrepro.phantom.make_case` parameters of the paper's DCE acquisition."""
    return {"modalities": ("DCE",), "shape": ACQUISITION_SHAPE, "spacing": SPACING,
            "center": (0.0, 0.0, 0.0), "dce_frames": DCE_FRAME}


# ------------------------------------------------------------------------------------------ datasets
def _cache_root(P: Mapping[str, Any]) -> Path:
    return Path(os.environ.get("NPCREPRO_CACHE") or str(Path(P["out_dir"]) / "_cache"))


def phantom_dataset(P: Mapping[str, Any], *, progress: bool = False):
    """``P.n_cases`` phantom patients on the paper's DCE grid, frame 35, GTVp and its raters' contours
    (``GTVp_rater1``..., for the run's inter-rater ceiling; never a target), written once
    into the cache (``<out_dir>/_cache/li2018-dce-<cohort>-n<n>-s<seed>-<record hash>``). Patient ``i``
    renders phantom seed ``seed + first + i`` (``first`` 0 for the development cohort, 1000 for the
    evaluation one: :data:`npcrepro.profiles.COHORTS`); seeds whose tumour misses the 6 cm slab are skipped (listed in
    the description). The cache is keyed, and checked on reuse, on the generator's record
    (:func:`npcrepro.phantom.make.cohort_record`: version, source fingerprint, parameters), so a
    change of the generator makes it again."""
    import hashlib
    import json

    from npcrepro.datasets import open_cached
    from npcrepro.phantom.make import RATERS, cohort_record

    from npcrepro.profiles import cohort_of, first_patient

    n, min_mm = int(P["n_cases"]), float(P.get("min_lesion_mm", 0) or 0)
    seed = int(P["seed"]) + first_patient(P)  # the evaluation cohort starts 1000 phantom seeds on
    record = {"li2018_dce": cohort_record(n, seed, preset="cpu", **phantom_params()), "min_lesion_mm": min_mm,
              "structures": [*RATERS, STRUCTURE]}
    tag = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return build_once(_cache_root(P) / f"li2018-dce-{cohort_of(P)}-n{n}-s{seed}-{tag}",
                      lambda folder: open_cached(folder, record),
                      lambda folder: _write_phantom(folder, n, seed, min_mm, record, progress))


def _write_phantom(folder: Path, n: int, seed: int, min_mm: float, record: dict, progress: bool):
    from npcrepro import phantom
    from npcrepro.datasets import Case, write_dataset
    from npcrepro.phantom.make import RATERS

    cases, skipped, small, i = [], [], [], 0
    while len(cases) < n and i < 3 * n + 10:
        case = phantom.make_case(seed + i, **phantom_params())
        i += 1
        gtv = case.labels.get(STRUCTURE)
        if gtv is None or not gtv.any():
            skipped.append(seed + i - 1)
            continue
        if lesion_extent_mm(gtv, case.spacing) < min_mm:
            small.append(seed + i - 1)
            continue
        labels = {STRUCTURE: gtv, **{r: case.labels[r] for r in RATERS if r in case.labels}}
        cases.append(Case(f"npc_{len(cases):03d}", {DCE_CHANNEL: case.images[DCE_CHANNEL]}, labels,
                          case.spacing, case.origin, case.direction, {"phantom_seed": seed + i - 1}))
    desc = (f"digital phantom, DCE frame {DCE_FRAME} of 65 ({DCE_CHANNEL}), {len(cases)} patients on the "
            f"paper's 144x144x20 grid" + (f"; phantom seeds {skipped} skipped (no GTVp in the 6 cm slab)"
                                          if skipped else "")
            + (f"; phantom seeds {small} excluded (tumour under {min_mm:g} mm, the paper's 1 cm rule)"
               if small else ""))
    return write_dataset(folder, cases, channels=[DCE_CHANNEL], structures=[*RATERS, STRUCTURE],
                         name="li2018-dce-phantom",
                         description=desc, source="phantom", progress=progress, overwrite=True, extra=record)


def real_t2_source(P: Mapping[str, Any]) -> tuple[str | None, str]:
    """The real T2 track's data (:class:`~npcrepro.engine.chapter.Track`): the 25 real NPC T2 slices
    (``npc-t2wi-slices``, or the folder ``P.real_data``) converted once with the project's adapter into
    the cache. Returns (the dataset folder, or None when ``P.real_data`` is "off" or the data are not
    here; what was read or why the track is skipped)."""
    from npcrepro.datasets.adapters.cached import cached_npc_t2

    if P["real_data"] == "off":
        return None, "the real-data track is off in this run (real_data='off')"
    ds = cached_npc_t2(_cache_root(P), None if P["real_data"] == "auto" else P["real_data"])
    if ds is None:
        return None, ("the real T2 slices were not found (set $NPCREPRO_SHARED_DATA or pass real_data=PATH "
                      "to the npc-t2wi-slices folder)")
    return str(ds.root), f"real NPC T2 slices ({Path(ds.root).name})"


def real_t2_params(P, data: str):
    """The real T2 track's parameters: the working mode on every slice of ``data``, ``real_k``-fold
    cross-validation over slices (the first ``real_max_folds``), ``real_iterations``, a fresh run."""
    from npcrepro.datasets import open_dataset

    return P.replace(data=data, resume="", methods="working", cv="kfold", k=P["real_k"],
                     max_folds=P["real_max_folds"], iterations=P["real_iterations"],
                     n_cases=len(open_dataset(data).cases))


# ------------------------------------------------------------------------------------------ case -> slices
def _choose_slices(zs: np.ndarray, n: int | None) -> np.ndarray:
    if n is None or len(zs) <= n:
        return zs
    idx = np.unique(np.round(np.linspace(0, len(zs) - 1, n + 2)[1:-1]).astype(int))
    return zs[idx]


def _resampled(case, P: Mapping[str, Any], spacing_known: bool):
    """``case`` resampled to :data:`SPACING` (pixel units: resized in-plane to 144 x 144), with its
    resampling record and the evaluated slices (``slices_per_patient`` of those with GTVp)."""
    if STRUCTURE not in case.labels or not np.any(case.labels[STRUCTURE]):
        raise DataError(f"case {case.name}: no {STRUCTURE} voxels to select slices from")
    if spacing_known:
        spacing = SPACING
    else:  # pixel units: resize the slice to 144 x 144
        spacing = (case.spacing[0], case.spacing[1] * case.shape[1] / SIZE, case.spacing[2] * case.shape[2] / SIZE)
    res, rec = T.preprocess(case, spacing=spacing)
    zs = _choose_slices(T.slices_with(np.asarray(res.labels[STRUCTURE], bool), axis=0), P["slices_per_patient"])
    if len(zs) == 0:
        raise DataError(f"case {case.name}: {STRUCTURE} vanished after resampling to {spacing}")
    return res, rec, zs


def scored_part(case, P: Mapping[str, Any], *, spacing_known: bool = True):
    """The part of ``case`` a network is scored on (:meth:`Li2018.score`): every image and mask
    resampled as :func:`prepare_case` resamples, on the evaluated slices only (z = len(zs))."""
    res, _, zs = _resampled(case, P, spacing_known)
    return type(case)(case.name, {k: v[zs] for k, v in res.images.items()},
                      {k: np.asarray(v, bool)[zs] for k, v in res.labels.items()},
                      res.spacing, res.origin, res.direction, dict(case.meta))


@dataclass(frozen=True)
class Prepared:
    """One case on the network's grid: ``work`` (z, 144, 144) image and GTVp, ``zs`` the evaluated
    (tumour-bearing) slices, ``record`` the resample/crop back to ``case`` (the original)."""

    case: Any
    work: Any
    record: T.Preprocessed
    zs: np.ndarray
    channel: str

    @property
    def images(self) -> np.ndarray:
        return self.work.images[self.channel]

    @property
    def masks(self) -> np.ndarray:
        return np.asarray(self.work.labels[STRUCTURE], bool)


def prepare_case(case, P: Mapping[str, Any], *, spacing_known: bool = True) -> Prepared:
    """Resample to :data:`SPACING` (pixel units: resize in-plane to 144 x 144), cut the 144 x 144
    window (phantom on the paper's grid: the whole slice; dataset: around the tumour), choose the
    evaluated slices."""
    channel = DCE_CHANNEL if DCE_CHANNEL in case.images else next(iter(case.images))
    sub = type(case)(case.name, {channel: case.images[channel]},
                     {k: v for k, v in case.labels.items() if k == STRUCTURE},
                     case.spacing, case.origin, case.direction, dict(case.meta))
    res, rec, zs = _resampled(sub, P, spacing_known)
    mask = np.asarray(res.labels[STRUCTURE], bool)
    if P.get("data_label", P["data"]) == "phantom" or not spacing_known:
        box2 = T.center_box(res.shape[1:], (SIZE, SIZE))
    else:
        yy, xx = np.nonzero(mask[zs].any(axis=0))
        c = np.array([yy.mean(), xx.mean()])
        if P["jitter_mm"] > 0:
            rng = np.random.default_rng([int(P["seed"]), 4051, zlib.crc32(case.name.encode())])
            c = c + rng.uniform(-P["jitter_mm"], P["jitter_mm"], 2) / np.asarray(res.spacing[1:])
        box2 = T.center_box(res.shape[1:], (SIZE, SIZE), c)
    box = ((0, res.shape[0]), *box2)
    fill = float(np.min(res.images[channel]))
    image = T.crop(res.images[channel], box, fill=fill).astype(np.float32)
    work = type(case)(case.name, {channel: image}, {STRUCTURE: T.crop(mask, box).astype(bool)},
                      res.spacing, res.origin, res.direction, dict(case.meta))
    record = T.Preprocessed(rec.original, rec.resampled, box)
    return Prepared(case, work, record, np.asarray(zs, int), channel)


# ------------------------------------------------------------------------------------------ augmentation
#: Rotation angles, degrees: -10..10 step 2 (x11).
ROTATION_ANGLES: tuple[int, ...] = tuple(range(-10, 11, 2))
#: imadjust saturation, percent at each tail (x11), and gammas (x3): 33 contrast variants.
SATURATIONS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
GAMMAS: tuple[float, ...] = (0.8, 1.0, 1.25)
CONTRAST_VARIANTS: tuple[tuple[float, float, float], ...] = tuple(
    (s, 100.0 - s, g) for s in SATURATIONS for g in GAMMAS)
#: Gaussian noise variance on the [0, 1]-scaled image: none, or the paper's "power of 1e-8" (x2).
NOISE_VARIANTS: tuple[float, ...] = (0.0, 1e-8)
N_VARIANTS = len(ROTATION_ANGLES) * len(CONTRAST_VARIANTS) * len(NOISE_VARIANTS)  # 726


def imadjust(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0, gamma: float = 1.0
             ) -> np.ndarray:
    """MATLAB ``imadjust(I, stretchlim(I, [low high]), [], gamma)`` for a float image: map the
    ``low_pct``/``high_pct`` percentiles to 0/1, clip (saturating the tails), raise to ``gamma``.
    A constant image maps to zeros."""
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [low_pct, high_pct])
    if not hi > lo:
        lo, hi = float(img.min()), float(img.max())
    if not hi > lo:
        return np.zeros_like(img)
    out = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return (out ** gamma).astype(np.float32) if gamma != 1.0 else out.astype(np.float32)


class Li2018Augment:
    """The paper's augmentation as an on-the-fly draw among its 726 variants.

    ``augment(image, mask, rng)`` with 2D arrays returns the augmented (image, mask); the image comes
    back in [0, 1] (imadjust output, plus noise), not yet z-scored. :meth:`draw` gives the variant
    ``(angle, contrast_index, noise_index)``; :meth:`apply` applies a given one.
    """

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        return (ROTATION_ANGLES[int(rng.integers(len(ROTATION_ANGLES)))],
                int(rng.integers(len(CONTRAST_VARIANTS))), int(rng.integers(len(NOISE_VARIANTS))))

    def apply(self, image: np.ndarray, mask: np.ndarray, angle: float, contrast: int, noise: int,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        img, msk = T.rotate(np.asarray(image, np.float32)[None], np.asarray(mask, bool)[None], float(angle))
        img = imadjust(img[0], *CONTRAST_VARIANTS[contrast])
        var = NOISE_VARIANTS[noise]
        if var > 0:
            rng = rng if rng is not None else np.random.default_rng(0)
            img = (img + rng.normal(0.0, math.sqrt(var), img.shape)).astype(np.float32)
        return img, msk[0]

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        return self.apply(image, mask, *self.draw(rng), rng=rng)


class _EvaluatedSlices:
    """Sampler hook: a working case's evaluated slices (picklable)."""

    def __init__(self, zs: Mapping[str, np.ndarray]):
        self.zs = dict(zs)

    def __call__(self, case) -> np.ndarray:
        return self.zs[case.name]


class _AugmentThenZscore:
    """Sampler hook: the paper's augmentation of a (1, H, W) slice, then a per-image z-score."""

    def __init__(self, augment: Li2018Augment | None):
        self.augment = augment

    def __call__(self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator):
        img, msk = image[0], target[0]
        if self.augment is not None:
            img, msk = self.augment(img, msk, rng)
        return T.zscore(img)[None], np.asarray(msk, np.float32)[None]

    def draw(self, rng: np.random.Generator, n_channels: int = 1):
        """The variant ``(angle, contrast, noise)`` of one sample (None without augmentation)."""
        return self.augment.draw(rng) if self.augment is not None else None

    def apply_batch(self, image: torch.Tensor, target: torch.Tensor, draws, generator=None):
        """``__call__`` on a batch (B, 1, H, W) of tensors, one variant per sample: rotation,
        imadjust with each sample's percentiles and gamma, noise (from ``generator``), z-score."""
        if self.augment is not None:
            image, target = rotate_batch(image, target, [float(d[0]) for d in draws])
            lo_pct, hi_pct, gamma = to_device([CONTRAST_VARIANTS[d[1]] for d in draws], image.device,
                                              torch.float32).T
            image = imadjust_batch(image, lo_pct, hi_pct, gamma)
            var = [NOISE_VARIANTS[d[2]] for d in draws]
            if any(v > 0 for v in var):
                noise = torch.randn(image.shape, generator=generator, device=image.device)
                image = image + noise * to_device(var, image.device, torch.float32).sqrt().view(-1, 1, 1, 1)
        return zscore_batch(image), target


def imadjust_batch(image: torch.Tensor, low_pct: torch.Tensor, high_pct: torch.Tensor,
                   gamma: torch.Tensor) -> torch.Tensor:
    """:func:`imadjust` of each sample of ``image`` (B, ...) with its own percentiles and gamma (B,):
    the percentiles interpolated linearly between order statistics, as :func:`numpy.percentile`."""
    flat = image.reshape(image.shape[0], -1).float()

    def percentile(pct):  # quantile q_i of every row; row i's is on the diagonal
        return torch.quantile(flat, (pct.float() / 100.0).clamp(0, 1), dim=1).diagonal()

    lo, hi = percentile(low_pct), percentile(high_pct)
    flat_range = ~(hi > lo)
    lo = torch.where(flat_range, flat.amin(dim=1), lo)
    hi = torch.where(flat_range, flat.amax(dim=1), hi)
    span = hi - lo
    out = ((flat - lo[:, None]) / span.clamp_min(1e-30)[:, None]).clamp(0.0, 1.0) ** gamma.float()[:, None]
    out = torch.where((span > 0)[:, None], out, torch.zeros_like(out))
    return out.view(image.shape)


def training_slices(prepared, *, augment: bool = True, seed: int = 0):
    """The evaluated slices of ``prepared`` cases as the engine's :class:`~npcrepro.engine.SliceDataset`
    (raw intensities; each training draw augmented, then z-scored on its own)."""
    from npcrepro.engine import SliceDataset

    prepared = list(prepared)
    return SliceDataset([p.work for p in prepared], [prepared[0].channel], [STRUCTURE],
                        slices=_EvaluatedSlices({p.case.name: p.zs for p in prepared}), normalise=None,
                        augment=_AugmentThenZscore(Li2018Augment() if augment else None), seed=seed)


# ------------------------------------------------------------------------------------------ a finished run's cases
def prepared_case(results, name: str) -> "Prepared":
    """Case ``name`` of the run on the network's grid (as its jobs saw it)."""
    ds = results.dataset()
    case = results.load_case(name, structures=[STRUCTURE])
    return prepare_case(case, results.params, spacing_known=bool(getattr(ds, "spacing_known", True)))


def location_prior(results, threshold: float):
    """The no-image reference of a run: per fold, the location prior of its training cases' evaluated
    slices on the network's 144 x 144 grid (:func:`npcrepro.metrics.prior.prior_scores`, the slices
    pooled), scored on its test cases' evaluated slices as the network is (``Li2018.score``'s ``dice``).
    A network below it has not learnt even where the tumour usually lies. One row per test case: fold,
    case, dice (a DataFrame)."""
    import pandas as pd

    from npcrepro.metrics.prior import prior_scores

    folds = results.splits()
    names = sorted({n for f in folds for n in (*f.train, *f.test)})
    masks = {}
    for n in names:
        p = prepared_case(results, n)
        masks[n] = p.masks[p.zs]
    rows = []
    for i, f in enumerate(folds):
        scores = prior_scores([masks[n] for n in f.train], {n: masks[n] for n in f.test}, threshold,
                              pool_slices=True)
        rows += [{"fold": i, "case": n, "dice": d} for n, d in scores.items()]
    return pd.DataFrame(rows, columns=["fold", "case", "dice"])
