"""li2018's pipeline: 144x144 DCE slices, the paper's augmentation, stepwise training, per-patient
evaluation, Tables 2-3 and Figs. 2-4 (Li et al., BioMed Res. Int. 2018).

The chapter ``notebooks/li2018.ipynb`` calls, in order::

    P = profiles.notebook_params("li2018", globals(), _before)   # sizes registered below
    S = from_params(P)                                   # typed Settings
    slices = phantom_slices(S, P.seed)                   # or dataset_slices(P.data, S)
    run = RunFolder.from_params(P, "li2018")
    table = cross_validate(slices, S, run.sub("working"), mode="working")      # per-patient rows
    faithful = cross_validate(slices, S, run.sub("faithful"), mode="faithful", max_folds=1)
    table2(table), table3(table), comparison(...), stage_gain(table)
    figure_cases(...), figure_fusion(...), figure_curves(...)
    real = real_t2_slices(run.path)                      # None when ../shared/data is absent

Data (Sec. 2.1). The paper used the 35th of 65 DCE frames (peak enhancement), a 144 x 144 matrix
over a 22 x 22 cm field of view (1.53 mm pixels, derived) and 20 slices over 6 cm (3 mm), and kept
only slices with tumour (87 slices, 3 per patient on average). The phantom renders exactly that
acquisition (:func:`phantom_params`: 144 x 144 x 20 at 1.53 x 1.53 x 3 mm centred on the nasopharynx),
so its slices need no resampling; ``slices_per_patient`` tumour-bearing slices are taken evenly over
the tumour's extent (None: all). A dataset on disk (:func:`dataset_slices`) is resampled to
:data:`SPACING` and a 144 x 144 window is cut around the tumour: centred on the in-plane centroid of
the tumour over the chosen slices, shifted by a seeded uniform offset of up to ``jitter_mm`` per axis
so that the tumour is not always at the image centre; outside the volume the window is filled with the
slice minimum.

Augmentation (Sec. 2.1), drawn on the fly, one of 11 x 33 x 2 = 726 variants per draw:
rotation by one of :data:`ROTATION_ANGLES` (-10..10 deg, step 2); one of 33 contrast adjustments
(:data:`CONTRAST_VARIANTS`: MATLAB ``imadjust``-style saturation of ``s`` % at each tail, s in
:data:`SATURATIONS`, times gamma in :data:`GAMMAS`; s = 0, gamma = 1 is the unadjusted image); with or
without Gaussian noise of variance 1e-8 on the [0, 1]-scaled image (the paper's "power of 1e-8"). Every
image is then z-scored on its own (Sec. 2.1: "normalized by ... this image").

Training (Sec. 2.3): three stages, each training only the layers it adds (the literal reading of
"we next trained the deconvolution layer, the concatenate layer, and the convolution layer";
``finetune=True`` trains the earlier ones too): stage 1 the feature part against the 36 x 36 score map,
stage 2 Deconv1 + Conv7 against the 72 x 72 map, stage 3 Deconv2 + Conv8 against 144 x 144. Targets of
stages 1-2 are the 144 x 144 mask average-pooled by 4 and 2 (soft targets: the tumour fraction of each
coarse pixel). Two optimiser modes (:data:`MODES`):

* ``faithful`` -- the printed settings: SGD, lr 1e-7, momentum 0.9, weight decay 5e-4, step decay x0.1
  every 1e5 iterations, Gaussian N(0, 1) initialisation of every kernel; the loss is not stated, so
  Caffe's ``SigmoidCrossEntropyLoss`` (summed over pixels, divided by the batch size) stands in.
* ``working`` -- Adam, lr 1e-3, He (Kaiming) initialisation with bilinear deconvolutions, loss = mean
  binary cross-entropy + soft Dice; same stages, same data, same budget.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from npcrepro import transforms as T
from npcrepro.errors import DataError, ParameterError

__all__ = [
    "PAPER", "SPACING", "FOV_MM", "SIZE", "MODES", "PROFILES", "CHOICES", "Settings", "settings",
    "from_params", "phantom_params", "DCE_CHANNEL",
    "ROTATION_ANGLES", "SATURATIONS", "GAMMAS", "CONTRAST_VARIANTS", "NOISE_VARIANTS", "N_VARIANTS",
    "imadjust", "Li2018Augment",
    "SliceSet", "slices_from_case", "phantom_slices", "dataset_slices", "real_t2_slices",
    "Li2018Slices", "make_stages", "build_model", "WorkingLoss", "CaffeSigmoidLoss",
    "make_folds", "cross_validate", "train_fold", "load_fold_model", "predict_maps",
    "evaluate_patients", "table2", "table2_reported", "table3", "comparison", "stage_gain",
    "figure_cases", "figure_fusion", "figure_curves", "patient_extremes",
]

PAPER = "li2018"
#: The paper's matrix over its field of view: 144 x 144 over 22 x 22 cm; 20 slices over 6 cm.
SIZE = 144
FOV_MM = 220.0
SPACING = (3.0, FOV_MM / SIZE, FOV_MM / SIZE)  # (z, y, x) mm -- derived, not printed in the paper
MODES = ("working", "faithful")
STRUCTURE = "GTVp"


# ------------------------------------------------------------------------------------------ profiles
@dataclass(frozen=True)
class Settings:
    """Sizes of one profile (all overridable from the notebook).

    n_patients, slices_per_patient : phantom cohort size and tumour slices kept per patient.
    cv, k, max_folds : "loocv" or "kfold" (k folds); ``max_folds`` keeps the first few.
    width : channel multiplier of the network (1.0 = Table 1).
    batch_size, iterations : per-stage iteration budgets (stage 1, 2, 3).
    faithful_folds : folds trained in the faithful mode (0: skip it).
    real_k, real_max_folds, real_iterations : the real T2 track's k-fold and budget.
    jitter_mm : random shift of the 144x144 window around the tumour.
    finetune : stages 2-3 also train the earlier layers.
    lr, lr_fusion : working-mode Adam learning rate of stage 1 and of stages 2-3 (which train only the
    few weights of Deconv1/Conv7 and Deconv2/Conv8 unless ``finetune``).
    modes : "both", "working" or "faithful" (optimiser modes the chapter trains).
    real_data : "auto" (../shared/data when present), "off", or the npc-t2wi-slices folder.
    """

    profile: str
    n_patients: int
    slices_per_patient: int | None
    cv: str
    k: int
    max_folds: int | None
    width: float
    batch_size: int
    iterations: tuple[int, int, int]
    faithful_folds: int
    real_k: int
    real_max_folds: int | None
    real_iterations: tuple[int, int, int]
    jitter_mm: float = 15.0
    finetune: bool = False
    lr: float = 1e-3
    lr_fusion: float = 1e-2
    modes: str = "both"
    real_data: str = "auto"

    def describe(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: Sizes per profile, registered with :func:`npcrepro.profiles.register_profile` (the notebook's
#: per-paper parameters). cpu: 12 patients, 4-fold CV, width 0.25; gpu: the paper's 29 patients, LOOCV,
#: width 1 (Table 1).
PROFILES: dict[str, dict] = {
    "smoke": dict(n_patients=4, slices_per_patient=2, cv="kfold", k=2, max_folds=1, width=0.125,
                  batch_size=4, iterations=[3, 2, 2], faithful_folds=1, real_k=2, real_max_folds=1,
                  real_iterations=[2, 1, 1]),
    "cpu": dict(n_patients=12, slices_per_patient=3, cv="kfold", k=4, max_folds=None, width=0.25,
                batch_size=8, iterations=[120, 40, 40], faithful_folds=1, real_k=5, real_max_folds=None,
                real_iterations=[80, 25, 25]),
    "gpu": dict(n_patients=29, slices_per_patient=3, cv="loocv", k=29, max_folds=None, width=1.0,
                batch_size=16, iterations=[3000, 1000, 1000], faithful_folds=1, real_k=5,
                real_max_folds=None, real_iterations=[2000, 600, 600]),
}
_COMMON_SIZES = dict(jitter_mm=15.0, finetune=False, lr=1e-3, lr_fusion=1e-2, modes="both", real_data="auto")
#: Allowed values of the choice parameters.
CHOICES = {"cv": ["loocv", "kfold"], "modes": ["both", "working", "faithful"]}


def _register() -> None:
    from npcrepro.profiles import papers, register_choices, register_profile

    papers()  # load the recipe modules first (npcrepro.recipes.li2018 holds the full parameter set)
    for prof, sizes in PROFILES.items():
        register_profile(PAPER, prof, **sizes, **_COMMON_SIZES)
    register_choices(PAPER, **CHOICES)


_register()


def settings(profile: str = "cpu", **overrides) -> Settings:
    """The :class:`Settings` of ``profile`` with ``overrides`` (``None`` = the profile's value), checked
    by :func:`npcrepro.profiles.resolve` (unknown names, wrong types and values outside the choices
    raise :class:`ParameterError` listing the valid ones)."""
    from npcrepro.profiles import resolve

    return from_params(resolve(PAPER, profile, **overrides))


def from_params(P) -> Settings:
    """:class:`Settings` from resolved notebook parameters (:func:`npcrepro.profiles.notebook_params`)."""
    names = [k for k in Settings.__dataclass_fields__ if k != "profile"]
    kw = {k: P[k] for k in names}
    for key in ("iterations", "real_iterations"):
        it = kw[key]
        if len(it) != 3 or min(int(i) for i in it) < 0:
            raise ParameterError(f"li2018: {key} must be three non-negative stage budgets, got {it!r}")
        kw[key] = tuple(int(i) for i in it)
    s = Settings(P["profile"], **kw)
    if s.n_patients < 2 or s.k < 2 or s.batch_size < 1 or not s.width > 0:
        raise ParameterError(f"li2018: need n_patients >= 2, k >= 2, batch_size >= 1, width > 0 (got "
                             f"{s.n_patients}, {s.k}, {s.batch_size}, {s.width})")
    if s.cv == "kfold" and s.k > s.n_patients:
        raise ParameterError(f"li2018: k={s.k} folds need at least {s.k} patients (n_patients={s.n_patients})")
    return s


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


# ------------------------------------------------------------------------------------------ data
@dataclass
class SliceSet:
    """2D slices of several patients on one in-plane grid.

    images (N, H, W) float32 raw intensities; masks (N, H, W) bool; patients (N,) names; z (N,) slice
    index in the patient's resampled volume; spacing (z, y, x) mm (pixels when not ``spacing_known``).
    """

    images: np.ndarray
    masks: np.ndarray
    patients: np.ndarray
    z: np.ndarray
    spacing: tuple[float, float, float]
    spacing_known: bool = True
    source: str = "phantom"
    channel: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def patient_names(self) -> list[str]:
        return list(dict.fromkeys(self.patients.tolist()))

    def subset(self, names: Iterable[str]) -> "SliceSet":
        names = list(names)
        missing = sorted(set(names) - set(self.patient_names))
        if missing:
            raise DataError(f"no slices for patient(s) {missing}")
        keep = np.isin(self.patients, names)
        return replace(self, images=self.images[keep], masks=self.masks[keep],
                       patients=self.patients[keep], z=self.z[keep])

    def patient(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, masks) of one patient, (n, H, W) each."""
        keep = self.patients == name
        if not keep.any():
            raise DataError(f"no slices for patient {name!r}")
        return self.images[keep], self.masks[keep]

    def summary(self) -> dict:
        per = [int((self.patients == p).sum()) for p in self.patient_names]
        area = self.masks.reshape(len(self), -1).sum(1) * float(np.prod(self.spacing[1:])) / 100.0
        return {"source": self.source, "channel": self.channel, "patients": len(per),
                "slices": len(self), "slices_per_patient": (min(per), max(per)) if per else (0, 0),
                "size": tuple(self.images.shape[1:]), "spacing": self.spacing,
                "spacing_known": self.spacing_known,
                "tumour_area_cm2": (float(area.min()), float(np.median(area)), float(area.max()))}


def _choose_slices(zs: np.ndarray, n: int | None) -> np.ndarray:
    if n is None or len(zs) <= n:
        return zs
    idx = np.unique(np.round(np.linspace(0, len(zs) - 1, n + 2)[1:-1]).astype(int))
    return zs[idx]


def slices_from_case(case, channel: str, *, structure: str = STRUCTURE, n_slices: int | None = 3,
                     size: int = SIZE, spacing: Sequence[float] | None = SPACING, jitter_mm: float = 15.0,
                     centre: str = "tumour", rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tumour-bearing ``size`` x ``size`` slices of one case (see the module docstring for how).

    Returns (images (n, size, size) float32, masks (n, size, size) bool, z indices). ``spacing=None``
    keeps the case's grid (pixel-unit data, or data already on the paper's grid). ``centre="image"``
    cuts the window at the image centre instead of around the tumour.
    """
    if channel not in case.images:
        raise DataError(f"case {case.name}: no channel {channel!r} (has {sorted(case.images)})")
    if structure not in case.labels or not np.any(case.labels[structure]):
        raise DataError(f"case {case.name}: no {structure} voxels to select slices from")
    sub = type(case)(case.name, {channel: case.images[channel]}, {structure: case.labels[structure]},
                     case.spacing, case.origin, case.direction, dict(case.meta))
    if spacing is not None:
        sub, _ = T.preprocess(sub, spacing=tuple(spacing))
    image, mask = sub.images[channel], np.asarray(sub.labels[structure], bool)
    zs = _choose_slices(T.slices_with(mask, axis=0), n_slices)
    if len(zs) == 0:
        raise DataError(f"case {case.name}: {structure} vanished after resampling to {spacing}")
    if centre == "image":
        box = T.center_box(image.shape[1:], (size, size))
    elif centre == "tumour":
        yy, xx = np.nonzero(mask[zs].any(axis=0))
        c = np.array([yy.mean(), xx.mean()])
        if rng is not None and jitter_mm > 0:
            c = c + rng.uniform(-jitter_mm, jitter_mm, 2) / np.asarray(sub.spacing[1:])
        box = T.center_box(image.shape[1:], (size, size), c)
    else:
        raise ParameterError(f"centre must be 'tumour' or 'image', got {centre!r}")
    imgs = np.stack([T.crop(image[z], box, fill=float(image[z].min())) for z in zs]).astype(np.float32)
    msks = np.stack([T.crop(mask[z], box, fill=0) for z in zs]).astype(bool)
    return imgs, msks, zs


def _collect(cases: Iterable, channel: str, n_slices, spacing, jitter_mm, seed, source, spacing_known,
             notes=(), centre: str = "tumour") -> SliceSet:
    ims, mks, pats, zz = [], [], [], []
    sp = None
    for i, case in enumerate(cases):
        rng = np.random.default_rng([int(seed), 4051, i])
        im, mk, z = slices_from_case(case, channel, n_slices=n_slices, spacing=spacing,
                                     jitter_mm=jitter_mm, centre=centre, rng=rng)
        ims.append(im)
        mks.append(mk)
        pats += [case.name] * len(z)
        zz.append(z)
        sp = tuple(spacing) if spacing is not None else tuple(case.spacing)
    if not ims:
        raise DataError("no cases to take slices from")
    return SliceSet(np.concatenate(ims), np.concatenate(mks), np.asarray(pats), np.concatenate(zz),
                    sp, spacing_known, source, channel, list(notes))


#: The 35th of the 65 DCE frames (peak enhancement); the phantom numbers frames from 0 (``DCE_034``).
DCE_FRAME = 35
DCE_CHANNEL = f"DCE_{DCE_FRAME - 1:03d}"
#: The paper's acquisition grid: 20 slices x 144 x 144 over 6 x 22 x 22 cm (FH x AP x RL).
ACQUISITION_SHAPE = (20, SIZE, SIZE)


def phantom_params() -> dict:
    """:func:`npcrepro.phantom.make_case` parameters that render the paper's DCE acquisition: the
    144 x 144 x 20 matrix at 1.53 x 1.53 x 3 mm centred on the nasopharynx, DCE only, frames up to the
    35th (the later ones are not used and not rendered)."""
    return {"modalities": ("DCE",), "shape": ACQUISITION_SHAPE, "spacing": SPACING,
            "center": (0.0, 0.0, 0.0), "dce_frames": DCE_FRAME}


def phantom_cases(n_patients: int, seed: int = 0) -> list:
    """``n_patients`` phantom patients rendered on the paper's DCE grid (:func:`phantom_params`)."""
    from npcrepro import phantom

    return [phantom.make_case(seed + i, **phantom_params()) for i in range(n_patients)]


def phantom_slices(S: Settings, seed: int = 0) -> SliceSet:
    """The phantom cohort of the profile as a :class:`SliceSet`: frame-35 DCE slices with tumour.

    The phantom is rendered directly on the paper's 144 x 144 x 20 grid (22 x 22 x 6 cm field of view
    centred on the nasopharynx, where the primary tumour arises), so no resampling or cropping is
    needed: the slices are the acquired ones, and the tumour sits wherever the patient's anatomy puts it.
    Patients whose tumour misses the 6 cm slab are skipped (listed in ``notes``)."""
    cases, notes, i = [], [], 0
    from npcrepro import phantom

    while len(cases) < S.n_patients and i < 3 * S.n_patients + 10:
        case = phantom.make_case(seed + i, **phantom_params())
        i += 1
        if STRUCTURE in case.labels and case.labels[STRUCTURE].any():
            cases.append(case)
        else:
            notes.append(f"phantom seed {seed + i - 1}: no GTVp inside the 6 cm DCE slab, skipped")
    notes.insert(0, f"digital phantom, DCE frame {DCE_FRAME} of 65 ({DCE_CHANNEL}), {len(cases)} patients "
                    f"on the paper's 144x144x20 grid")
    return _collect(cases, DCE_CHANNEL, S.slices_per_patient, None, 0.0, seed, "phantom", True, notes,
                    centre="image")


def dataset_slices(path, S: Settings, channel: str | None = None, seed: int = 0) -> SliceSet:
    """Slices from a dataset on disk (the project's format): ``channel`` (default the first one) and
    GTVp; resampled to :data:`SPACING` when the dataset's spacing is known."""
    from npcrepro.datasets import open_dataset

    ds = open_dataset(path)
    names = ds.cases[: S.n_patients] if S.n_patients else ds.cases
    cases = [ds.load(n) for n in names]
    channel = channel or next(iter(cases[0].images))
    known = ds.spacing_known
    return _collect(cases, channel, S.slices_per_patient, SPACING if known else None, S.jitter_mm, seed,
                    str(path), known)


def _resize_slice(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    f = (size / image.shape[0], size / image.shape[1])
    img = ndimage.zoom(image.astype(np.float32), f, order=1)
    msk = ndimage.zoom(mask.astype(np.float32), f, order=1) > 0.5
    return img[:size, :size], msk[:size, :size]


def real_t2_slices(out_dir, src=None, size: int = SIZE) -> SliceSet | None:
    """The 25 real NPC T2 slices (``npc-t2wi-slices``), converted into ``out_dir`` with the project's
    adapter and resized from 512 x 512 to ``size`` x ``size``; None when the data are not here.

    Each slice is its own "patient" (the export has no patient identifiers). Spacing is unknown:
    pixel units."""
    from npcrepro.datasets.adapters import convert
    from npcrepro.paths import shared_data

    src = Path(src) if src else shared_data("npc-t2wi-slices")
    if src is None or not Path(src).exists():
        return None
    dst = Path(out_dir) / "data" / "npc-t2-slices"
    summary = convert("npc-t2-slices", src, dst, overwrite=True, progress=False)
    ds = summary.dataset
    ims, mks, names = [], [], []
    for name in ds.cases:
        case = ds.load(name)
        if STRUCTURE not in case.labels:
            continue
        im, mk = _resize_slice(case.images["T2"][0], case.labels[STRUCTURE][0], size)
        ims.append(im)
        mks.append(mk)
        names.append(name)
    f = 512 / size
    return SliceSet(np.stack(ims), np.stack(mks), np.asarray(names), np.zeros(len(names), int),
                    (1.0, f, f), False, "npc-t2wi-slices (real, T2)", "T2",
                    [f"{len(names)} real T2 slices, 512x512 JPEG resized to {size}x{size}; pixel units"])


class Li2018Slices(torch.utils.data.Dataset):
    """Training/validation items ``(image (1, H, W), mask (1, H, W))`` float32 tensors.

    ``get(i, rng)`` augments (when ``augment``) then z-scores the image; ``dataset[i]`` only z-scores.
    """

    def __init__(self, data: SliceSet, augment: Callable | None = None):
        self.data, self.augment = data, augment

    def __len__(self) -> int:
        return len(self.data)

    def get(self, index: int, rng: np.random.Generator | None):
        img, msk = self.data.images[index], self.data.masks[index]
        if rng is not None and self.augment is not None:
            img, msk = self.augment(img, msk, rng)
        img = T.zscore(img)
        return (torch.from_numpy(np.ascontiguousarray(img, np.float32)[None]),
                torch.from_numpy(np.ascontiguousarray(msk, np.float32)[None]))

    def __getitem__(self, index: int):
        return self.get(int(index), None)


# ------------------------------------------------------------------------------------------ model, losses, stages
class WorkingLoss(torch.nn.Module):
    """Mean binary cross-entropy + soft Dice (targets may be soft)."""

    def __init__(self):
        super().__init__()
        from npcrepro.losses import DiceLoss

        self.dice = DiceLoss(activation="sigmoid")

    def forward(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target) + self.dice(logits, target)


class CaffeSigmoidLoss(torch.nn.Module):
    """Caffe's ``SigmoidCrossEntropyLoss``: cross-entropy summed over pixels, divided by the batch."""

    def forward(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]


class _Pool:
    """Stage target: the mask average-pooled by ``factor`` (picklable)."""

    def __init__(self, factor: int):
        self.factor = int(factor)

    def __call__(self, y):
        return F.avg_pool2d(y, self.factor) if self.factor > 1 else y


def build_model(mode: str, width: float = 1.0, in_channels: int = 1):
    """``build("li2018_cnn")`` with the mode's initialisation (faithful: N(0, 1); working: He)."""
    from npcrepro.models import build

    _check_mode(mode)
    return build("li2018_cnn", in_channels=in_channels, width=width,
                 init="gaussian" if mode == "faithful" else "kaiming", init_std=1.0)


def make_stages(mode: str, iterations: Sequence[int], *, finetune: bool = False, lr: float = 1e-3,
                lr_fusion: float = 1e-2):
    """The three :class:`~npcrepro.engine.Stage` objects of the stepwise scheme for ``mode``."""
    from npcrepro.engine import Stage
    from npcrepro.models.li2018 import STAGE_LAYERS, STAGE_SIZE

    _check_mode(mode)
    if mode == "faithful":
        opt = dict(optimizer="sgd", lr=1e-7, momentum=0.9, weight_decay=5e-4,
                   schedule={"kind": "step", "step_size": 100000, "gamma": 0.1})
        loss = CaffeSigmoidLoss()
    else:
        opt = dict(optimizer="adam", lr=float(lr), schedule=None)
        loss = WorkingLoss()
    stages = []
    for s, n in zip((1, 2, 3), iterations):
        if mode == "working" and s > 1:
            opt["lr"] = float(lr_fusion)
        layers = [name for t in STAGE_LAYERS if t == s or (finetune and t < s) for name in STAGE_LAYERS[t]]
        stages.append(Stage(name=f"stage{s}_{STAGE_SIZE[s]}x{STAGE_SIZE[s]}", iterations=int(n),
                            trainable=layers, loss=loss, target_fn=_Pool(SIZE // STAGE_SIZE[s]),
                            forward_kwargs={"stage": s}, eval_every=max(1, int(n) // (30 if mode == "faithful" else 3)),
                            **opt))
    return stages


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ParameterError(f"unknown li2018 mode {mode!r} (valid: {', '.join(MODES)})")


# ------------------------------------------------------------------------------------------ train / evaluate
def make_folds(data: SliceSet, S: Settings, seed: int = 0, *, scheme: str | None = None,
               k: int | None = None, max_folds: int | None = None, run=None):
    """Folds by patient: LOOCV or k-fold as the settings say (``max_folds`` keeps the first few)."""
    from npcrepro.engine import make_folds as _mk

    scheme = scheme or S.cv
    return _mk(data.patient_names, scheme, seed=seed, k=k or S.k,
               max_folds=max_folds if max_folds is not None else S.max_folds, run=run)


@torch.no_grad()
def predict_maps(model, images: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Sigmoid probability maps of every stage for raw slices (n, H, W) (z-scored here): ``p36``,
    ``p72``, ``p144`` at their own sizes, ``deconv144`` (the map before the last fusion, raw values)
    and ``up36``/``up72`` (p36/p72 upsampled bilinearly to H x W)."""
    model.eval()
    dev = next(model.parameters()).device
    out: dict[str, list] = {k: [] for k in ("p36", "p72", "p144", "deconv144", "up36", "up72")}
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([T.zscore(im) for im in images[i:i + batch_size]])[:, None]).to(dev)
        m = model(x, stage=3, maps=True)
        size = x.shape[-2:]
        for key, src in (("p36", "score36"), ("p72", "score72"), ("p144", "score144")):
            out[key].append(torch.sigmoid(m[src].float())[:, 0].cpu().numpy())
        out["deconv144"].append(m["deconv144"].float()[:, 0].cpu().numpy())
        for key, src in (("up36", "score36"), ("up72", "score72")):
            up = F.interpolate(m[src].float(), size=size, mode="bilinear", align_corners=False)
            out[key].append(torch.sigmoid(up)[:, 0].cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate_patients(model, data: SliceSet, *, threshold: float = 0.5, run=None, method: str = "CNN"):
    """Per-patient metrics (one row per patient; the patient's slices form one volume): DSC, JSC,
    precision (the paper's "recall" column), recall (= PM), PM, CR, volumes (cm3 over the evaluated
    slices), plus ``dice_36``/``dice_72`` of the stage-1/2 score maps upsampled to full size."""
    import pandas as pd

    from npcrepro import metrics
    from npcrepro.datasets import Case
    from npcrepro.evaluation import evaluate_cases

    rows = []
    for name in data.patient_names:
        imgs, ref = data.patient(name)
        p = predict_maps(model, imgs)
        pred = p["p144"] > threshold
        case = Case(name, {data.channel or "image": imgs}, {STRUCTURE: ref}, data.spacing)
        df = evaluate_cases({name: {STRUCTURE: pred}}, [case], method=method)
        row = df.iloc[0].to_dict()
        row["n_slices"] = int(len(imgs))
        row["dice_36"] = metrics.dice(p["up36"] > threshold, ref)
        row["dice_72"] = metrics.dice(p["up72"] > threshold, ref)
        rows.append(row)
        if run is not None:
            run.write_prediction(name, STRUCTURE, pred, case.geometry)
    return pd.DataFrame(rows)


def train_fold(fold, index: int, run, *, data: SliceSet, S: Settings, mode: str = "working",
               iterations: Sequence[int] | None = None, seed: int = 0, device: str = "auto",
               progress: bool = False):
    """Train one fold from scratch (three stages) and evaluate its test patients; returns the
    per-patient table (plus ``train_seconds`` and the last training loss of each stage)."""
    from npcrepro.engine import Trainer

    torch.manual_seed(seed + 7919 * index)
    model = build_model(mode, S.width)
    iterations = tuple(iterations or S.iterations)
    stages = make_stages(mode, iterations, finetune=S.finetune, lr=S.lr, lr_fusion=S.lr_fusion)
    train = Li2018Slices(data.subset(fold.train), Li2018Augment())
    trainer = Trainer(model, stages[0].loss, train, stages=stages, batch_size=S.batch_size,
                      seed=seed + index, device=device, run=run, progress=progress,
                      desc=f"{mode} fold {index}")
    t0 = time.perf_counter()
    diverged = ""
    try:
        trainer.fit()
    except FloatingPointError as exc:  # the engine stops on a non-finite loss (faithful mode can)
        diverged = str(exc)
        if run is not None:
            run.write_curves(trainer.rows)
    seconds = time.perf_counter() - t0
    table = evaluate_patients(trainer.model, data.subset(fold.test), run=run)
    table["mode"] = mode
    table["train_seconds"] = seconds
    table["diverged"] = diverged
    rows = trainer.rows
    finite = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    table["loss_first"] = float(finite[0]) if finite else math.nan
    for st in stages:
        vals = [r["train_loss"] for r in rows if r["stage"] == st.name and r.get("train_loss") is not None]
        table[f"loss_{st.name.split('_')[0]}"] = float(vals[-1]) if vals else math.nan
    return table


def cross_validate(data: SliceSet, S: Settings, run=None, *, mode: str = "working", seed: int = 0,
                   device: str = "auto", scheme: str | None = None, k: int | None = None,
                   max_folds: int | None = None, iterations: Sequence[int] | None = None,
                   progress: bool = False):
    """Every fold of ``data`` (by patient) through :func:`train_fold`; the pooled per-patient table."""
    from npcrepro.engine import run_folds

    folds = make_folds(data, S, seed, scheme=scheme, k=k, max_folds=max_folds, run=run)
    table = run_folds(train_fold, folds, run=run, data=data, S=S, mode=mode, iterations=iterations,
                      seed=seed, device=device, progress=progress)
    return table


def load_fold_model(run, fold: int, S: Settings, mode: str = "working", device: str = "cpu"):
    """The trained model of ``fold`` from its run folder (``fold_<i>/checkpoint_last.pt``)."""
    from npcrepro.engine import load_checkpoint

    model = build_model(mode, S.width)
    ck = load_checkpoint(Path(run.path) / f"fold_{fold}" / "checkpoint_last.pt", map_location=device)
    model.load_state_dict(ck["model"])
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ tables
#: Table 2 columns: (header, per-case column). The paper's "Recall" column is TP/(TP+FP).
TABLE2_COLUMNS = (
    ("Volume of DL method (cm3)", "volume_pred_cm3"),
    ("Volume by readers (cm3)", "volume_ref_cm3"),
    ("Percent match", "percent_match"),
    ("Corresponding ratio", "corresponding_ratio"),
    ("Dice similarity coefficient", "dice"),
    ("'Recall' = TP/(TP+FP)", "precision"),
    ("Jaccard similarity coefficient", "jaccard"),
)
_REPORTED_METRIC = {"volume_pred_cm3": ("CNN", "volume_cm3"), "volume_ref_cm3": ("Two readers", "volume_cm3"),
                    "percent_match": ("CNN", "percent_match"),
                    "corresponding_ratio": ("CNN", "corresponding_ratio"), "dice": ("CNN", "dsc"),
                    "precision": ("CNN", "precision"), "jaccard": ("CNN", "jaccard")}


def _mean_sd(v) -> str:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "—"
    return f"{v.mean():.2f}±{v.std(ddof=1):.2f}" if v.size > 1 else f"{v.mean():.2f}"


def table2(per_case, *, volumes: bool = True, digits: int = 2):
    """Table 2's layout for this run: one row per patient (numbered 1..n in case order, with the case
    name), then the Mean±Std row (sample SD)."""
    import pandas as pd

    cols = [c for c in TABLE2_COLUMNS if volumes or not c[1].startswith("volume")]
    df = per_case.sort_values("case").reset_index(drop=True)
    out = pd.DataFrame({"Patient": [str(i) for i in range(1, len(df) + 1)], "case": df["case"]})
    for head, col in cols:
        d = 1 if col.startswith("volume") else digits
        out[head] = [f"{v:.{d}f}" for v in df[col]]
    mean = {"Patient": "Mean±Std", "case": ""}
    mean.update({head: _mean_sd(df[col]) for head, col in cols})
    return pd.concat([out, pd.DataFrame([mean])], ignore_index=True).set_index("Patient")


def table2_reported():
    """The paper's Table 2 in the same layout (from :mod:`npcrepro.papers.li2018`)."""
    import pandas as pd

    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 2")
    rows = []
    for i in range(1, 30):
        r = rep[rep["case"] == str(i)]
        row = {"Patient": str(i)}
        for head, col in TABLE2_COLUMNS:
            method, metric = _REPORTED_METRIC[col]
            v = r[(r["method"] == method) & (r["metric"] == metric)]["value"]
            row[head] = f"{float(v.iloc[0]):.{1 if col.startswith('volume') else 2}f}"
        rows.append(row)
    summ = rep[rep["case"].isna()]
    mean = {"Patient": "Mean±Std"}
    for head, col in TABLE2_COLUMNS:
        method, metric = _REPORTED_METRIC[col]
        v = summ[(summ["method"] == method) & (summ["metric"] == metric)]
        mean[head] = (f"{float(v['value'].iloc[0]):.2f}±{float(v['sd'].iloc[0]):.2f}" if len(v) else "-")
    rows.append(mean)
    return pd.DataFrame(rows).set_index("Patient")


def _range(v) -> str:
    v = np.asarray(v, float)
    return f"{v.min():.2f}-{v.max():.2f}" if v.size else "—"


def table3(per_case, *, label: str = "This reproduction (CNN)"):
    """Table 3: DSC, CR, PM (mean ± SD and range) of the paper's CNN and the compared methods as
    reported, and this run's CNN as reproduced."""
    import pandas as pd

    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 3")
    cur = reported(PAPER, table="Table 2")
    cur = cur[cur["case"].isna() & (cur["method"] == "CNN")]
    metrics = (("Dice similarity coefficient", "dsc", "dice"), ("Corresponding ratio", "corresponding_ratio",
               "corresponding_ratio"), ("Percent match", "percent_match", "percent_match"))

    def fmt_rep(df, metric):
        r = df[df["metric"] == metric]
        if r.empty:
            return "N.A", "N.A"
        r = r.iloc[0]
        ms = f"{r['value']:.2f}" + (f"±{r['sd']:.2f}" if pd.notna(r["sd"]) else "")
        rng = (f"{r['low']:.2f}-{r['high']:.2f}" if pd.notna(r["low"]) and pd.notna(r["high"]) else "N.A")
        if pd.isna(r["sd"]) and pd.isna(r["low"]) and "Range column" in str(r["note"]):
            ms, rng = "N.A", f"~{r['value']:.2f}"
        return ms, rng

    rows = []
    studies = [("Current study (Li et al. 2018)", "Convolutional neural network", cur, "reported")]
    for method, study in (("Support vector machine", "Zhou et al. [7]"),
                          ("Hidden Markov random field", "Huang et al. [14]"),
                          ("Deep Convolutional Neural Networks", "Wang et al. [15]")):
        studies.append((study, method, rep[rep["method"] == method], "reported"))
    for study, algo, df, src in studies:
        row = {"Study": study, "Algorithm": algo, "Source": src}
        for head, metric, _ in metrics:
            row[f"{head}: Mean ± SD"], row[f"{head}: Range"] = fmt_rep(df, metric)
        rows.append(row)
    row = {"Study": label, "Algorithm": "Convolutional neural network (Table 1)", "Source": "reproduced"}
    for head, _, col in metrics:
        row[f"{head}: Mean ± SD"], row[f"{head}: Range"] = _mean_sd(per_case[col]), _range(per_case[col])
    rows.insert(1, row)
    return pd.DataFrame(rows).set_index("Study")


def comparison(per_case, *, data_source: str, profile: str):
    """Summary row of Table 2, reported vs reproduced (:func:`npcrepro.evaluation.compare_with_paper`)."""
    from npcrepro.evaluation import compare_with_paper
    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 2")
    rep = rep[rep["case"].isna() & (rep["method"] == "CNN")]
    tab = compare_with_paper(rep, per_case.assign(method="CNN"), paper=PAPER, data_source=data_source,
                             profile=profile, table="Table 2",
                             metric_map={"precision": "precision", "dsc": "dice"})
    tab.notes.append("The paper's 'Recall' column is TP/(TP+FP) (its Eqs. 1-2 swap the names): it is "
                     "compared with this run's precision. Its percent match PM = TP/(TP+FN) is the usual "
                     "recall.")
    return tab


def stage_gain(per_case):
    """Mean DSC of the 36x36, 72x72 and 144x144 score maps (each upsampled to 144x144)."""
    import pandas as pd

    return pd.DataFrame({"score map": ["36x36 (stage 1)", "72x72 (stage 2)", "144x144 (stage 3)"],
                         "DSC (mean ± SD)": [_mean_sd(per_case[c]) for c in ("dice_36", "dice_72", "dice")]
                         }).set_index("score map")


def patient_extremes(per_case, metric: str = "dice") -> tuple[dict, dict]:
    """(best, worst) rows of the per-patient table by ``metric``."""
    df = per_case.sort_values([metric, "case"], ascending=[False, True])
    return df.iloc[0].to_dict(), df.iloc[-1].to_dict()


# ------------------------------------------------------------------------------------------ figures
def _contour(ax, mask, color, lw=1.2, ls="-"):
    if np.any(mask) and not np.all(mask):
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=lw, linestyles=ls)


def _show(ax, img, title):
    ax.imshow(img, cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def figure_cases(rows: Sequence[dict], images: Sequence[np.ndarray], refs: Sequence[np.ndarray],
                 preds: Sequence[np.ndarray], labels: Sequence[str]):
    """Figs. 2-3: per row (a) the image, (b) ground truth (white), (c) prediction (white), titled with
    the patient's DSC, CR and PM."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False)
    for r, (row, img, ref, pred, lab) in enumerate(zip(rows, images, refs, preds, labels)):
        _show(axes[r, 0], img, f"(a) {lab}: patient {row['case']}")
        _show(axes[r, 1], img, "(b) ground truth")
        _contour(axes[r, 1], ref, "white")
        _show(axes[r, 2], img, f"(c) CNN: DSC {row['dice']:.3f}, CR {row['corresponding_ratio']:.3f}, "
                               f"PM {row['percent_match']:.3f}")
        _contour(axes[r, 2], pred, "white")
    fig.tight_layout()
    return fig


def figure_fusion(image: np.ndarray, maps: Mapping[str, np.ndarray], ref: np.ndarray, i: int = 0):
    """Fig. 4: (a) the score map of the reconstruction phase before the last fusion (Deconv2 output),
    (b) the map reconstructed from the fused maps (Conv8, as probability), and the 36x36 / 72x72 maps;
    ground truth as a dashed contour."""
    import matplotlib.pyplot as plt

    panels = [("image", image, "gray"), ("36x36 score map (stage 1)", maps["p36"][i], "magma"),
              ("72x72 score map (stage 2)", maps["p72"][i], "magma"),
              ("(a) before fusion: Deconv2 output", maps["deconv144"][i], "magma"),
              ("(b) after fusion: Conv8 (sigmoid)", maps["p144"][i], "magma")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    for ax, (title, arr, cmap) in zip(axes, panels):
        ax.imshow(arr, cmap=cmap, interpolation="nearest",
                  extent=(0, ref.shape[1], ref.shape[0], 0))
        _contour(ax, ref, "cyan", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def figure_curves(curves: Mapping[str, "object"]):
    """Training loss per iteration for each labelled curves frame (stages shaded by colour); log y."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 3.2), squeeze=False)
    for ax, (label, df) in zip(axes[0], curves.items()):
        if df.empty or df["train_loss"].isna().all():
            ax.text(0.5, 0.5, "no finite training loss recorded", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_title(label, fontsize=9)
            continue
        for s, g in df.groupby("stage"):
            y = np.abs(g["train_loss"].to_numpy(float))
            ax.plot(g["iteration"], y, marker="o", ms=3, label=str(s))
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
