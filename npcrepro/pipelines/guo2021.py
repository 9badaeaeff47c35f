"""guo2021's pipeline: preprocessing, three-view block sampling, the cascade's training recipe,
three-view sliding-window inference, the 5-round protocol, Table 1 and the figures.

The road every patient travels (Sec. 3-4 of the paper)::

    Case (T1, GTVp [, GTVp_rater2])
      -> prepare(): resample to isotropic voxels (paper 1 mm; the profiles use coarser voxels), crop a
         fixed head box (paper 160 x 198 x 103 mm, i.e. (z, y, x) = 103 x 198 x 160 mm) centred on the
         body (the Otsu foreground: "remove the black area"), z-score over the body,
         Eq. 7 weights (d(v, boundary) + 1 in mm inside the tumour, 1 outside) on the whole crop
      -> training blocks: 24 x 24 x 8 voxels cut along the axial, coronal and sagittal directions
         (the thin axis along z, y or x; one third each), random centres (``fg_prob`` of them on
         tumour voxels), random left-right flip; every block is transposed so that its thin axis comes first,
         so one network sees all three views as (8, 24, 24)
      -> Trainer: Adam 1e-3, x0.9 every ``decay_every`` iterations, the distance-weighted focal loss
         (Eq. 6-7, 2-class softmax), weights of the best validation loss kept
      -> inference: Gaussian-blended sliding windows over the whole crop in each of the three views,
         the three views' probability maps averaged ("multi-view fusion"); CSCN = BUNet's coarse map
         -> ACDNet on (image, coarse map) -> probability fusion of coarse and fine
      -> probabilities mapped back to the patient's original grid, thresholded at 0.5
      -> per patient: DSC, ASSD (mm, Eq. 9), F1 (and TP/FP/FN for a pooled F1).

Methods (:data:`METHODS`): the paper's Table 1 rows ``CSCN``, ``CNN``, ``ACDNet``, ``Deeplab``,
``V-Net``, plus ``BUNet`` (the coarse stage alone; the cascade's own control, free once CSCN runs).
Choices where the paper is silent are listed in :data:`CHOICES` (the chapter prints them).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from npcrepro import transforms as T
from npcrepro.transforms import otsu_threshold
from npcrepro.errors import DataError, ParameterError

__all__ = [
    "PAPER", "STRUCTURE", "RATER2", "VIEWS", "BOX_MM", "METHODS", "TABLE1_METHODS", "SIZES", "CHOICES",
    "view_shape", "to_view", "from_view", "otsu_threshold", "body_mask", "head_box", "Prepared", "prepare",
    "MultiViewBlocks", "GuoLoss", "predict_views", "model_kwargs", "build_model", "train_network",
    "train_fold", "run", "Results", "comparison", "summary_table", "pooled_f1", "inter_observer_phantom",
    "inter_observer_real", "fig_2d_results", "fig_three_views", "fig_curves", "REAL_ORGANS",
]

PAPER = "guo2021"
STRUCTURE = "GTVp"
RATER2 = "GTVp_rater2"
#: Block orientations: the axis (z, y or x) the block's thin side lies along.
VIEWS = ("axial", "coronal", "sagittal")
_VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
#: The paper's final image size, 160 x 198 x 103 voxels at 1 mm, read as x (left-right) 160,
#: y (anterior-posterior) 198 and z (superior-inferior) 103 mm; here in (z, y, x) order.
BOX_MM = (103.0, 198.0, 160.0)

#: Methods in the chapter's order (labels as in the paper's Table 1, plus the coarse stage alone).
METHODS = ("CSCN", "BUNet", "CNN", "ACDNet", "Deeplab", "V-Net")
#: The rows of Table 1 (V-Net has no reported numbers).
TABLE1_METHODS = ("CNN", "ACDNet", "Deeplab", "V-Net", "CSCN")
_NETWORK = {"BUNet": "guo2021_bunet", "ACDNet_cascade": "guo2021_acdnet", "CNN": "guo2021_cnn",
            "ACDNet": "guo2021_acdnet", "Deeplab": "guo2021_deeplab3d", "V-Net": "guo2021_vnet"}

#: Organs of the real two-pass masks used as an inter-observer reference (soft-tissue organs of the
#: head and neck, the nearest in difficulty to a nasopharyngeal tumour among the 21).
REAL_ORGANS = ("Brainstem", "Parotid-Lt", "Parotid-Rt", "Submandibular-Lt", "Submandibular-Rt",
               "Spinal-Cord")

#: Profile sizes. ``gpu`` is the paper's scale (120 patients, 1 mm voxels, 5 rounds, 50000 iterations,
#: x0.9 every 500); ``cpu`` and ``smoke`` shrink the cohort, the voxel size (so the box holds fewer
#: voxels), the widths and the budget, never the code path. ``patch`` is the canonical block
#: (thin axis first), ``infer_window`` the canonical sliding window at inference (the networks are
#: fully convolutional), ``widths`` a width multiplier of every network's default channels.
SIZES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        n_cases=4, phantom_preset="smoke", channel="CET1", spacing_mm=4.0, box_mm=list(BOX_MM),
        patch=[8, 24, 24], k_folds=2, n_val=1, max_rounds=1, parallel=1, samples_per_case=48,
        val_samples_per_case=6, fg_prob=0.1, flip=True, batch_size=4, iterations=4, eval_every=2, lr=1e-3,
        decay_every=1, gamma=2.0, width=0.25, acd_layers=[1, 1, 1], infer_window=[8, 24, 24], overlap=0.25,
        infer_batch=16, fusion="mean", fusion_weight=0.5, methods="all", figure_cases=2,
        real_organs=["Brainstem"], real_scans=1, threads=1,
    ),
    "cpu": dict(
        n_cases=10, phantom_preset="cpu", channel="CET1", spacing_mm=3.0, box_mm=list(BOX_MM),
        patch=[8, 24, 24], k_folds=2, n_val=1, max_rounds=2, parallel=2, samples_per_case=600,
        val_samples_per_case=24, fg_prob=0.1, flip=True, batch_size=8, iterations=300, eval_every=50,
        lr=1e-3, decay_every=15, gamma=2.0, width=0.5, acd_layers=[1, 1, 1], infer_window=[8, 24, 24],
        overlap=0.25, infer_batch=16, fusion="mean", fusion_weight=0.5, methods="all", figure_cases=3,
        real_organs=list(REAL_ORGANS[:3]), real_scans=7, threads=1,
    ),
    "gpu": dict(
        n_cases=120, phantom_preset="gpu", channel="CET1", spacing_mm=1.0, box_mm=list(BOX_MM),
        patch=[8, 24, 24], k_folds=5, n_val=9, max_rounds=5, parallel=1, samples_per_case=5000,
        val_samples_per_case=60, fg_prob=0.1, flip=True, batch_size=32, iterations=50000, eval_every=1000,
        lr=1e-3, decay_every=500, gamma=2.0, width=1.0, acd_layers=[2, 2, 2], infer_window=[8, 24, 24],
        overlap=0.5, infer_batch=256, fusion="mean", fusion_weight=0.5, methods="all", figure_cases=3,
        real_organs=list(REAL_ORGANS), real_scans=7, threads=None,
    ),
}


def _register_profiles() -> None:
    from npcrepro.profiles import register_choices, register_profile

    for name, sizes in SIZES.items():
        register_profile(PAPER, name, **sizes)
    register_choices(PAPER, channel=["T1", "CET1", "T2", "CT"], fusion=["mean", "product", "max"])


_register_profiles()

#: Where the paper is silent: what this chapter chose.
CHOICES: dict[str, str] = {
    "box axes": "160 x 198 x 103 read as left-right x anterior-posterior x superior-inferior mm, "
                "centred on the body's bounding box (the Otsu foreground of the image); the paper's "
                "'up-down jitter' of the z crop is immaterial once block centres are random, so the "
                "crop is made once, deterministically",
    "intensity normalisation": "z-score over the body (not stated in the paper)",
    "block orientation": "24 x 24 x 8 blocks with the 8-voxel side along z (axial), y (coronal) or x "
                         "(sagittal), one third each, transposed so the thin axis comes first: one "
                         "network per method sees all three views",
    "block centres": "10 % (fg_prob) on a random tumour voxel, the rest uniform in the crop (the paper: "
                     "random centres; short budgets need to see some tumour), blocks kept inside the crop",
    "horizontal flip": "left-right (x) flip with probability 1/2, before the transposition",
    "loss": "distance-weighted focal loss (Eq. 6-7) on a 2-class softmax, gamma = 2 (Lin et al.'s "
            "default; the paper only says gamma > 0), distances in mm on the whole crop",
    "batch size": "not stated; profile value",
    "model selection": "the weights of the lowest validation loss are kept (the paper's 9 validation "
                       "patients must serve some purpose; it does not say which)",
    "multi-view fusion": "the three views' sliding-window probability maps are averaged",
    "cascade input": "ACDNet sees the image and BUNet's coarse map of the whole crop (BUNet's "
                     "predictions on its own training patients when ACDNet trains)",
    "probability fusion": "mean of the coarse and fine tumour probabilities (weight 0.5)",
    "evaluation grid": "probabilities are mapped back to the original grid (linear interpolation) and "
                       "thresholded at 0.5; metrics in mm on that grid",
    "F1": "per patient, F1 of the same binary masks equals DSC exactly; the paper's F1 differs from its "
          "DSC, so it was computed some other way (not stated). We also report F1 pooled over all "
          "patients' voxels (TP, FP, FN summed), one candidate",
    "learning-rate decay": "x0.9 every 500 iterations at paper scale; the CPU profiles decay x0.9 every "
                           "iterations/20 so that a few hundred iterations see a comparable decay",
}


# ---------------------------------------------------------------------------------------------
# views


def view_shape(patch: Sequence[int], view: str) -> tuple[int, int, int]:
    """The (z, y, x) shape of a canonical block ``patch`` = (thin, a, b) cut in ``view``."""
    if view not in _VIEW_AXIS:
        raise ParameterError(f"unknown view {view!r} (valid: {', '.join(VIEWS)})")
    thin, a, b = (int(p) for p in patch)
    return {"axial": (thin, a, b), "coronal": (a, thin, b), "sagittal": (a, b, thin)}[view]


# spatial permutation taking (z, y, x) to the view's canonical (thin, a, b) order
_PERM = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def to_view(arr: np.ndarray, view: str) -> np.ndarray:
    """Transpose the last three (z, y, x) axes so the view's thin axis comes first."""
    lead = arr.ndim - 3
    p = _PERM[view]
    return np.transpose(arr, tuple(range(lead)) + tuple(lead + i for i in p))


def from_view(arr: np.ndarray, view: str) -> np.ndarray:
    """Inverse of :func:`to_view`."""
    lead = arr.ndim - 3
    inv = tuple(int(i) for i in np.argsort(_PERM[view]))
    return np.transpose(arr, tuple(range(lead)) + tuple(lead + i for i in inv))


# ---------------------------------------------------------------------------------------------
# preprocessing


def body_mask(image: np.ndarray) -> np.ndarray:
    """The head: Otsu foreground, opened once, largest connected component, holes filled per slice."""
    img = np.asarray(image, np.float32)
    mask = ndimage.binary_opening(img > otsu_threshold(img))
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


def head_box(image: np.ndarray, spacing: Sequence[float], box_mm: Sequence[float] = BOX_MM):
    """The fixed crop: ``box_mm`` (z, y, x) converted to voxels, centred on the body's bounding box.
    Returns ``(box, body)``; the box may reach outside the image (it is then padded)."""
    body = body_mask(image)
    bb = T.bbox(body) or tuple((0, n) for n in image.shape)
    size = [max(1, int(round(m / s))) for m, s in zip(box_mm, spacing)]
    centre = [(a + b - 1) / 2.0 for a, b in bb]
    return T.center_box(image.shape, size, centre), body


@dataclass
class Prepared:
    """One patient ready for the networks.

    ``image`` (1, z, y, x) float32 on the working grid (isotropic, cropped, z-scored), ``target`` (z, y, x)
    bool, ``weight`` (z, y, x) float32 Eq. 7 weights, ``record`` maps working-grid arrays back to the
    original grid, ``reference`` / ``rater2`` the original-grid masks and ``spacing`` the original
    spacing (for scoring).
    """

    name: str
    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    record: T.Preprocessed
    reference: np.ndarray
    rater2: np.ndarray | None
    spacing: tuple[float, float, float]
    work_spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def prepare(case, *, channel: str = "T1", spacing_mm: float | None = 1.0,
            box_mm: Sequence[float] = BOX_MM, structure: str = STRUCTURE) -> Prepared:
    """Resample to ``spacing_mm`` isotropic (None: keep the grid), crop the head box, z-score over the
    body, compute the Eq. 7 weights. DataError names the case when the channel or the mask is missing."""
    from npcrepro.losses import boundary_distance_weights

    if channel not in case.images:
        raise DataError(f"case {case.name}: no channel {channel!r} (has {sorted(case.images)})")
    if structure not in case.labels:
        raise DataError(f"case {case.name}: no {structure!r} mask (has {sorted(case.labels)})")
    reference = np.asarray(case.labels[structure], bool)
    rater2 = np.asarray(case.labels[RATER2], bool) if RATER2 in case.labels else None
    sub = type(case)(case.name, {channel: case.images[channel]}, {structure: reference}, case.spacing,
                     case.origin, case.direction, dict(case.meta))
    spacing = None if spacing_mm is None else (float(spacing_mm),) * 3
    work, rec = T.preprocess(sub, spacing=spacing)
    img = work.images[channel]
    box, body = head_box(img, work.spacing, box_mm)
    fill = float(img.min())
    image = T.crop(img, box, fill=fill)
    body_c = T.crop(body, box, fill=False)
    image = T.zscore(image, body_c if body_c.any() else None)
    target = T.crop(work.labels[structure], box, fill=False).astype(bool)
    weight = boundary_distance_weights(target, work.spacing).astype(np.float32)
    record = T.Preprocessed(rec.original, rec.resampled, tuple(box))
    return Prepared(case.name, image[None].astype(np.float32), target, weight, record, reference, rater2,
                    tuple(case.spacing), tuple(work.spacing))


# ---------------------------------------------------------------------------------------------
# training blocks


class MultiViewBlocks(torch.utils.data.Dataset):
    """Training blocks cut in the three views.

    Parameters
    ----------
    volumes : sequence of (C, z, y, x) float arrays
        Network inputs per patient (the image, or image + coarse map).
    targets, weights : sequences of (z, y, x) arrays
        Tumour masks and Eq. 7 weights on the same grids.
    patch : (thin, a, b)
        Canonical block (paper: (8, 24, 24)).
    samples_per_case : int
        Blocks per patient per pass; block ``i`` of a patient is cut in view ``VIEWS[i % 3]``.
    fg_prob : float
        Probability that a block is centred on a random tumour voxel (else uniform).
    flip : bool
        Random left-right flip (training only).

    Items are ``(image, target)`` float32 tensors (C, thin, a, b) and (2, thin, a, b): channel 0 the
    tumour mask, channel 1 the Eq. 7 weight (:class:`GuoLoss` splits them). ``get(index, rng)`` draws a
    training block; ``dataset[index]`` a fixed one (validation). Blocks always lie inside the volume
    (volumes smaller than the block along an axis are padded first).
    """

    def __init__(self, volumes: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 weights: Sequence[np.ndarray], patch: Sequence[int] = (8, 24, 24), *,
                 samples_per_case: int = 30, fg_prob: float = 0.5, flip: bool = True,
                 views: Sequence[str] = VIEWS):
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
        self.volumes, self.targets, self.weights, self.fg = [], [], [], []
        for vol, tgt, w in zip(volumes, targets, weights):
            vol = np.asarray(vol, np.float32)
            if vol.ndim != 4 or vol.shape[1:] != np.shape(tgt) or np.shape(w) != np.shape(tgt):
                raise DataError(f"MultiViewBlocks: shapes differ: volume {vol.shape}, target "
                                f"{np.shape(tgt)}, weight {np.shape(w)}")
            pads = [(0, 0)] + [(max(0, need - n) // 2, max(0, need - n) - max(0, need - n) // 2)
                               for n in vol.shape[1:]]
            if any(a or b for a, b in pads[1:]):
                vol = np.pad(vol, pads, constant_values=float(vol.min()))
                tgt = np.pad(np.asarray(tgt, bool), pads[1:])
                w = np.pad(np.asarray(w, np.float32), pads[1:], constant_values=1.0)
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
        """``(case index, view, box)`` of block ``index``; ``box`` is ((z0, z1), (y0, y1), (x0, x1)) in the
        (padded) volume."""
        from npcrepro.engine.data import item_rng

        ci = index // self.samples_per_case
        view = self.views[index % len(self.views)]
        draw = rng if rng is not None else item_rng(0, 7717, index)
        shape = self.volumes[ci].shape[1:]
        size = view_shape(self.patch, view)
        fg = self.fg[ci]
        if fg.size and draw.random() < self.fg_prob:
            centre = np.unravel_index(fg[draw.integers(fg.size)], shape)
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


class GuoLoss(torch.nn.Module):
    """The distance-weighted focal loss (Eq. 6-7) on 2-class softmax logits, with targets that carry
    their weights: ``target`` (N, 2, ...) = (tumour mask, Eq. 7 weight) as :class:`MultiViewBlocks`
    makes them."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        from npcrepro.losses import DistanceWeightedFocalLoss

        self.focal = DistanceWeightedFocalLoss(gamma=gamma, activation="softmax")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != 2:
            raise DataError(f"GuoLoss expects targets (N, 2, ...) = (mask, weight), "
                            f"got {tuple(target.shape)}")
        return self.focal(logits, target[:, :1].round(), weight=target[:, 1])


# ---------------------------------------------------------------------------------------------
# inference


def predict_views(model: torch.nn.Module, image: np.ndarray, window: Sequence[int], *,
                  views: Sequence[str] = VIEWS, overlap: float = 0.25, batch_size: int = 2,
                  device=None) -> np.ndarray:
    """Tumour probability (z, y, x) of ``model`` over a whole volume ``image`` (C, z, y, x): a Gaussian-
    blended sliding window (``window`` in canonical (thin, a, b) order) in each view, the views'
    probabilities averaged. The model's logits are read with a softmax (channel 1 = tumour) when it has
    2 or more output channels, else a sigmoid."""
    from npcrepro.engine.inference import predict_sliding_window

    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise DataError(f"predict_views expects (C, z, y, x), got shape {image.shape}")
    acc = np.zeros(image.shape[1:], np.float32)
    for view in views:
        prob = predict_sliding_window(model, np.ascontiguousarray(to_view(image, view)), window,
                                      overlap=overlap, batch_size=batch_size, device=device,
                                      activation="softmax" if _n_out(model) > 1 else "sigmoid")
        acc += from_view(prob[-1], view)
    return acc / len(views)


def _n_out(model: torch.nn.Module) -> int:
    head = getattr(model, "head", None)
    return int(getattr(head, "out_channels", 2))


# ---------------------------------------------------------------------------------------------
# networks and training


def model_kwargs(method: str, width: float = 1.0, in_channels: int = 1,
                 acd_layers: Sequence[int] = (2, 2, 2)) -> dict:
    """Constructor arguments of ``method``'s network at width multiplier ``width`` (1.0: the defaults
    of :mod:`npcrepro.models.cscn`; ``acd_layers``: ACDNet's layers per dense block). ``method`` is a
    :data:`METHODS` label or ``"ACDNet_cascade"``."""
    def w(c: int) -> int:
        return max(2, int(round(c * width)))

    if method == "BUNet":
        return dict(in_channels=in_channels, widths=[w(16), w(32), w(64)])
    if method in ("ACDNet", "ACDNet_cascade"):
        return dict(in_channels=in_channels + (1 if method == "ACDNet_cascade" else 0), stem=w(16),
                    growth=w(8), layers=[int(n) for n in acd_layers])
    if method == "CNN":
        return dict(in_channels=in_channels, width=w(16), depth=6)
    if method == "Deeplab":
        return dict(in_channels=in_channels, width=w(16), aspp_channels=w(32), low_channels=w(8))
    if method == "V-Net":
        return dict(in_channels=in_channels, widths=[w(16), w(32), w(64)], n_convs=[1, 2, 3])
    raise ParameterError(f"unknown method {method!r} (valid: {', '.join(METHODS)}, ACDNet_cascade)")


def build_model(method: str, width: float = 1.0, in_channels: int = 1,
                acd_layers: Sequence[int] = (2, 2, 2)) -> torch.nn.Module:
    """The registered network of ``method`` (see :func:`model_kwargs`)."""
    from npcrepro.models import build
    from npcrepro.models import cscn as _cscn  # noqa: F401 - registers the networks

    return build(_NETWORK[method], **model_kwargs(method, width, in_channels, acd_layers))


def _stage_settings(S: Mapping[str, Any]) -> dict:
    return dict(iterations=int(S["iterations"]), optimizer="adam", lr=float(S["lr"]),
                schedule={"kind": "exponential", "every": int(S["decay_every"]), "gamma": 0.9},
                eval_every=int(S["eval_every"]))


def train_network(method: str, train_ds, val_ds, S: Mapping[str, Any], *, run=None, device="auto",
                  seed: int = 0, progress: bool = False):
    """Build and train one network; returns ``(model, facts)``. A training loss that turns non-finite
    ends the training and is recorded (``facts["status"] = "diverged"``) instead of raising: the paper
    reports exactly that outcome for V-Net."""
    from npcrepro.engine import Trainer, seed_everything
    from npcrepro.models import count_parameters

    seed_everything(seed)
    model = build_model(method, float(S["width"]), 1, S.get("acd_layers", (2, 2, 2)))
    trainer = Trainer(model, GuoLoss(float(S["gamma"])), train_ds, val_data=val_ds,
                      batch_size=int(S["batch_size"]), seed=seed, device=device, run=run,
                      progress=progress, desc=method, restore_best=True, **_stage_settings(S))
    t0, c0 = time.perf_counter(), time.process_time()
    status = "converged"
    try:
        hist = trainer.fit()
        rows, iters = hist.rows, hist.iterations
    except FloatingPointError:
        status = "diverged"
        rows, iters = list(trainer.rows), trainer.state.iteration
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    if status == "converged" and not _finite_rows(rows):
        status = "diverged"
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
    train = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    facts = {"method": method, "status": status, "iterations": iters, "train_seconds": secs,
             "cpu_seconds": cpu,
             "final_train_loss": train[-1] if train else None, "best_val_loss": min(val) if val else None,
             "parameters": count_parameters(model)}
    model.eval()
    return model, facts, rows


def _finite_rows(rows) -> bool:
    return all(r.get("train_loss") is None or math.isfinite(r["train_loss"]) for r in rows)


def _blocks(prepared: Sequence[Prepared], S: Mapping[str, Any], coarse: Mapping[str, np.ndarray] | None,
            val: bool = False) -> MultiViewBlocks:
    vols = [p.image if coarse is None else np.concatenate([p.image, coarse[p.name][None]]) for p in prepared]
    return MultiViewBlocks(vols, [p.target for p in prepared], [p.weight for p in prepared], S["patch"],
                           samples_per_case=int(S["val_samples_per_case" if val else "samples_per_case"]),
                           fg_prob=float(S["fg_prob"]), flip=bool(S["flip"]) and not val)


def _methods(S: Mapping[str, Any]) -> list[str]:
    m = S.get("methods", "all")
    if m in (None, "all"):
        return list(METHODS)
    names = [x.strip() for x in (m.split(",") if isinstance(m, str) else m) if x.strip()]
    bad = [x for x in names if x not in METHODS]
    if bad:
        raise ParameterError(f"unknown method(s) {bad} (valid: {', '.join(METHODS)}, or 'all')")
    return names


def _score(prob_work: np.ndarray, prep: Prepared) -> tuple[dict, np.ndarray]:
    from npcrepro import metrics

    prob = T.invert(prob_work.astype(np.float32), prep.record, order="linear")
    pred = prob >= 0.5
    res = metrics.evaluate_case(pred, prep.reference, prep.spacing)
    tp, fp, fn, _ = metrics.confusion(pred, prep.reference)
    keep = ("dice", "assd", "f1", "precision", "recall", "hd95", "volume_pred_cm3", "volume_ref_cm3",
            "pred_empty", "ref_empty")
    return {**{k: res[k] for k in keep}, "tp": tp, "fp": fp, "fn": fn}, pred


def train_fold(fold, index: int, run, *, data: str, sizes: Mapping[str, Any], device="auto",
               seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One round (module level so that :func:`npcrepro.engine.run_folds` can run it in a worker):
    train every method on ``fold.train`` (validation loss on ``fold.val``), predict ``fold.test``;
    returns the per-patient table. Writes each network's curves/checkpoints to ``<run>/<method>/``,
    ``training.csv`` and the predicted masks ``predictions/<case>/<method>.nii.gz``."""
    from npcrepro import io
    from npcrepro.datasets import open_dataset

    S = dict(sizes)
    methods = _methods(S)
    ds = open_dataset(data)
    if S["channel"] not in ds.channels or STRUCTURE not in ds.structures:
        raise DataError(f"{data}: guo2021 needs channel {S['channel']!r} and structure {STRUCTURE!r}; the "
                        f"dataset has channels {ds.channels} and structures {ds.structures}")
    want = [STRUCTURE] + ([RATER2] if RATER2 in ds.structures else [])
    names = list(fold.train) + list(fold.val) + list(fold.test)
    prepared = {n: prepare(ds.load(n, channels=[S["channel"]], structures=want), channel=S["channel"],
                           spacing_mm=S["spacing_mm"], box_mm=S["box_mm"]) for n in names}
    train = [prepared[n] for n in fold.train]
    val = [prepared[n] for n in fold.val] or train[:1]
    test = [prepared[n] for n in fold.test]
    infer = dict(window=S["infer_window"], overlap=float(S["overlap"]), batch_size=int(S["infer_batch"]),
                 device=device)
    seed_f = seed + 1000 * index
    records, training, probs = [], [], {}

    def fit(method, coarse=None, offset=0):
        sub = run.sub(method) if run is not None else None
        tr, va = _blocks(train, S, coarse), _blocks(val, S, coarse, val=True)
        model, facts, _ = train_network(method, tr, va, S, run=sub, device=device, seed=seed_f + offset,
                                        progress=progress)
        training.append(facts)
        return model, facts

    def evaluate(method, model, facts, extra=None):
        for prep in test:
            t1 = time.perf_counter()
            if facts["status"] != "converged":
                prob = None
            else:
                vol = prep.image if extra is None else np.concatenate([prep.image, extra[prep.name][None]])
                prob = predict_views(model, vol, **infer)
            probs[(method, prep.name)] = prob
            record(method, prep, prob, time.perf_counter() - t1, facts["status"])

    def record(method, prep, prob, secs, status):
        rec = {"case": prep.name, "method": method, "status": status, "seconds": secs}
        if prob is not None:
            scores, pred = _score(prob, prep)
            rec.update(scores)
            if run is not None:
                geom = io.Geometry(prep.reference.shape, prep.spacing, prep.record.original.origin,
                                   prep.record.original.direction)
                run.write_prediction(prep.name, method, pred, geom)
        records.append(rec)

    if "CSCN" in methods or "BUNet" in methods:
        bunet, bfacts = fit("BUNet", offset=1)
        coarse = {}
        if bfacts["status"] == "converged":
            t0 = time.perf_counter()
            coarse = {n: predict_views(bunet, p.image, **infer) for n, p in prepared.items()}
            bfacts["coarse_seconds"] = time.perf_counter() - t0
        if "BUNet" in methods:
            for prep in test:
                record("BUNet", prep, coarse.get(prep.name), 0.0, bfacts["status"])
        if "CSCN" in methods:
            if coarse:
                acd, afacts = fit("ACDNet_cascade", coarse=coarse, offset=2)
            else:
                afacts = {"status": "not run (BUNet diverged)"}
            for prep in test:
                t1 = time.perf_counter()
                prob = None
                if afacts["status"] == "converged":
                    vol = np.concatenate([prep.image, coarse[prep.name][None]])
                    fine = predict_views(acd, vol, **infer)
                    from npcrepro.models.cscn import fuse_probabilities

                    prob = fuse_probabilities(coarse[prep.name], fine, S["fusion"], float(S["fusion_weight"]))
                record("CSCN", prep, prob, time.perf_counter() - t1, afacts["status"])
    for k, method in enumerate(m for m in ("CNN", "ACDNet", "Deeplab", "V-Net") if m in methods):
        model, facts = fit(method, offset=3 + k)
        evaluate(method, model, facts)
    if run is not None and run.writer:
        pd.DataFrame(training).assign(fold=index).to_csv(run.path / "training.csv", index=False)
    return pd.DataFrame(records)


# ---------------------------------------------------------------------------------------------
# the whole run


@dataclass
class Results:
    """What :func:`run` returns: the per-patient table (``metrics``: fold, case, method, status, dice,
    assd, f1, tp, fp, fn, ...), per-network training facts (``training``), the run folder, sizes and
    the data source."""

    metrics: pd.DataFrame
    training: pd.DataFrame
    run: Any
    sizes: dict
    data: str
    data_label: str
    profile: str

    @property
    def methods(self) -> list[str]:
        present = set(self.metrics["method"])
        return [m for m in METHODS if m in present]

    def prediction(self, case: str, method: str) -> np.ndarray | None:
        """A saved predicted mask (original grid), or None (method not run or diverged)."""
        from npcrepro import io

        for fold in sorted(self.run.path.glob("fold_*")):
            p = fold / "predictions" / case / f"{method}.nii.gz"
            if p.exists():
                return io.read(p).array.astype(bool)
        return None

    def curves(self, method: str, fold: int = 0) -> pd.DataFrame | None:
        p = self.run.path / f"fold_{fold}" / method / "curves.csv"
        return pd.read_csv(p) if p.exists() else None


def run(data: str, *, sizes: Mapping[str, Any], profile: str = "cpu", out_dir: str = "runs",
        device="auto", seed: int = 0, progress: bool = True, data_label: str | None = None,
        resume: str = "", parallel: int | None = None) -> Results:
    """The chapter's experiment: ``k_folds`` rounds (the first ``max_rounds`` run), each with a test part
    of about 1/k of the patients and ``n_val`` validation patients (paper: 5 rounds of 87/9/24), every
    method trained and tested in every round, predictions pooled over rounds.

    ``resume``: an earlier run folder of the same experiment; its rounds (``splits.json``) are kept and
    rounds already marked done are not trained again. ``parallel``: rounds trained at the same time in
    worker processes (default the profile's ``parallel``; always 1 on CUDA). The profile's ``threads``
    sets torch's CPU threads per round (the small 3D convolutions of the CPU profiles run faster on one
    thread per core than on several threads sharing a core)."""
    from npcrepro.datasets import open_dataset
    from npcrepro.engine import RunFolder, make_folds, run_folds

    S = dict(sizes)
    _methods(S)
    ds = open_dataset(data)
    cases = list(ds.cases)
    if S.get("n_cases"):
        cases = cases[: int(S["n_cases"])]
    params = {"paper": PAPER, "profile": profile, "data": str(data), "seed": seed, "device": str(device),
              "sizes": S}
    rf = (RunFolder.open(resume) if resume else
          RunFolder.create(out_dir, profile, PAPER, "cv", params=params, device=str(device)))
    folds = make_folds(cases, "kfold", k=int(S["k_folds"]), seed=seed, n_val=int(S["n_val"]),
                       max_folds=S.get("max_rounds"), run=rf)
    parallel = parallel if parallel is not None else int(S.get("parallel") or 1)
    if str(device).startswith("cuda"):
        parallel = 1  # one GPU: rounds one after the other
    threads = S.get("threads")
    before = torch.get_num_threads()
    if threads and parallel <= 1 and not str(device).startswith("cuda"):
        torch.set_num_threads(int(threads))
    try:
        table = run_folds(train_fold, folds, run=rf, parallel=parallel if parallel > 1 else False,
                          threads_per_worker=int(threads) if threads else None, resume=True, data=str(data),
                          sizes=S, device=device, seed=seed, progress=progress and parallel <= 1)
    finally:
        torch.set_num_threads(before)
    training = pd.concat([pd.read_csv(p) for p in sorted(rf.path.glob("fold_*/training.csv"))],
                         ignore_index=True)
    ok = table[table["status"] == "converged"] if "status" in table else table
    rf.write_summary({"n_cases": len(cases), "n_rounds": len(folds),
                      "mean": ok.groupby("method")[["dice", "assd", "f1"]].mean().to_dict()})
    rf.mark_done()
    return Results(table, training, rf, S, str(data), data_label or str(data), profile)


# ---------------------------------------------------------------------------------------------
# tables


def pooled_f1(table: pd.DataFrame) -> pd.Series:
    """F1 per method from TP, FP, FN summed over all patients' voxels."""
    ok = table.dropna(subset=["tp"])
    g = ok.groupby("method")[["tp", "fp", "fn"]].sum()
    return (2 * g["tp"] / (2 * g["tp"] + g["fp"] + g["fn"]).replace(0, np.nan)).rename("f1_pooled")


def comparison(results: Results):
    """Reported vs reproduced Table 1 (CNN, ACDNet, Deeplab, CSCN; per-patient means)."""
    from npcrepro.evaluation import compare_with_paper
    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 1")
    ok = results.metrics[results.metrics["status"] == "converged"].dropna(subset=["dice"])
    return compare_with_paper(rep, ok, paper=PAPER, data_source=results.data_label, profile=results.profile,
                              table="Table 1", digits=3)


def summary_table(results: Results) -> pd.DataFrame:
    """Reproduced mean ± sd per method over all pooled patients, the pooled-voxel F1, how many
    patients got an empty prediction, training status and time."""
    from npcrepro.evaluation import format_mean_sd

    m = results.metrics
    f1p = pooled_f1(m) if "tp" in m else pd.Series(dtype=float)
    tr = results.training
    out = []
    for method in results.methods:
        g = m[m["method"] == method]
        ok = g.dropna(subset=["dice"]) if "dice" in g else g.iloc[:0]
        net = "ACDNet_cascade" if method == "CSCN" else method
        t = tr[tr["method"].isin([net, "BUNet"] if method == "CSCN" else [net])]
        statuses = sorted(set(g["status"]))
        row = {"method": method, "patients": len(g), "scored": len(ok),
               "DSC": format_mean_sd(ok["dice"].mean(), ok["dice"].std(ddof=1), 3) if len(ok) else "—",
               "ASSD (mm)": (format_mean_sd(ok["assd"].mean(), ok["assd"].std(ddof=1), 2)
                             if len(ok) else "—"),
               "F1": format_mean_sd(ok["f1"].mean(), ok["f1"].std(ddof=1), 3) if len(ok) else "—",
               "F1 pooled": round(float(f1p.get(method, np.nan)), 3) if len(ok) else np.nan,
               "empty predictions": int(ok["pred_empty"].sum()) if len(ok) else 0,
               "training": ", ".join(statuses),
               "train s": round(float(t["train_seconds"].sum()), 1)}
        out.append(row)
    return pd.DataFrame(out).set_index("method")


def inter_observer_phantom(data: str, names: Sequence[str] | None = None, limit: int = 28) -> pd.DataFrame:
    """The phantom's two raters: GTVp (rater 1, the ground truth) vs GTVp_rater2 (the "prediction"), per
    patient on the original grid (DSC, ASSD, F1), like the paper's two physicians on 28 patients."""
    from npcrepro import metrics
    from npcrepro.datasets import open_dataset

    ds = open_dataset(data)
    if RATER2 not in ds.structures:
        return pd.DataFrame(columns=["case", "dice", "assd", "f1"])
    rows = []
    for n in list(names or ds.cases)[:limit]:
        c = ds.load(n, channels=[ds.channels[0]], structures=[STRUCTURE, RATER2])
        if STRUCTURE not in c.labels or RATER2 not in c.labels:
            continue
        r = metrics.evaluate_case(c.labels[RATER2], c.labels[STRUCTURE], c.spacing)
        rows.append({"case": n, "dice": r["dice"], "assd": r["assd"], "f1": r["f1"]})
    return pd.DataFrame(rows)


def inter_observer_real(src, organs: Sequence[str] = REAL_ORGANS,
                        max_scans: int | None = None) -> pd.DataFrame:
    """Real inter-observer disagreement: the DeepMind TCIA head-and-neck organ masks, radiographer pass
    vs oncologist-arbitrated pass (CT organs, not NPC tumours: a reference for the size of real
    disagreement). Empty frame when ``src`` is None."""
    from npcrepro import metrics
    from npcrepro.datasets.adapters import two_raters as TR

    if src is None:
        return pd.DataFrame(columns=["scan", "organ", "dice", "assd", "f1"])
    rows = []
    for scan in TR.scans(src)[:max_scans]:
        have = set(TR.organs(src, scan))
        for organ in organs:
            if organ not in have:
                continue
            a, b = TR.load_pair(src, scan, organ)
            box = T.bbox(a.array | b.array, margin=2)
            if box is None:
                continue
            sl = tuple(slice(*x) for x in box)
            r = metrics.evaluate_case(a.array[sl], b.array[sl], a.spacing)
            rows.append({"scan": scan, "organ": organ, "dice": r["dice"], "assd": r["assd"], "f1": r["f1"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# figures


def _load_case(results: Results, name: str):
    from npcrepro.datasets import open_dataset

    return open_dataset(results.data).load(name, channels=[results.sizes["channel"]], structures=[STRUCTURE])


def _display(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def _figure_cases(results: Results, n: int) -> list[str]:
    """The ``n`` patients with the largest reference tumours among those with a CSCN prediction."""
    m = results.metrics
    have = m[(m["method"] == "CSCN") & m["dice"].notna()] if "CSCN" in set(m["method"]) else m
    order = have.sort_values("volume_ref_cm3", ascending=False)["case"].drop_duplicates().tolist()
    return order[:n]


def fig_2d_results(results: Results, cases: Sequence[str] | None = None, n: int = 3):
    """Fig. 7 of the paper: one row per patient (the axial slice with the largest tumour area), columns
    raw, ground truth, CSCN, CNN, ACDNet, Deeplab, V-Net (prediction in red, reference contour green)."""
    import matplotlib.pyplot as plt

    cases = list(cases or _figure_cases(results, n))
    cols = ["Raw", "Ground truth"] + [m for m in ("CSCN", "CNN", "ACDNet", "Deeplab", "V-Net")
                                      if m in results.methods]
    fig, axes = plt.subplots(len(cases), len(cols), figsize=(1.9 * len(cols), 2.1 * len(cases)),
                             squeeze=False)
    for i, name in enumerate(cases):
        c = _load_case(results, name)
        ref = c.labels[STRUCTURE]
        z = int(ref.sum(axis=(1, 2)).argmax())
        box = T.bbox(ref[z], margin=int(round(30 / c.spacing[1]))) or tuple((0, s) for s in ref.shape[1:])
        sl = tuple(slice(*b) for b in box)
        img = _display(c.images[results.sizes["channel"]])[z][sl]
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", interpolation="nearest")
            if col == "Ground truth":
                ax.imshow(np.ma.masked_where(~ref[z][sl], ref[z][sl]), cmap="autumn_r", alpha=0.5,
                          interpolation="nearest")
            elif col != "Raw":
                pred = results.prediction(name, col)
                if pred is None:
                    ax.text(0.5, 0.5, "no prediction", color="yellow", ha="center", va="center",
                            transform=ax.transAxes, fontsize=8)
                else:
                    p = pred[z][sl]
                    if p.any():
                        ax.imshow(np.ma.masked_where(~p, p), cmap="autumn", alpha=0.5,
                                  interpolation="nearest")
                    if ref[z][sl].any():
                        ax.contour(ref[z][sl], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name}\nz={z}", fontsize=8)
    fig.suptitle("Axial slice with the largest tumour area: prediction red, reference contour green",
                 fontsize=10)
    fig.tight_layout()
    return fig


def fig_three_views(results: Results, case: str | None = None,
                    methods: Sequence[str] = ("CSCN", "CNN", "ACDNet", "Deeplab", "V-Net")):
    """Fig. 8 of the paper: axial, coronal and sagittal planes through the tumour's centre of one
    patient; reference filled, each method's contour in its own colour."""
    import matplotlib.pyplot as plt

    case = case or _figure_cases(results, 1)[0]
    c = _load_case(results, case)
    ref = c.labels[STRUCTURE]
    img = _display(c.images[results.sizes["channel"]])
    zc, yc, xc = (int(round(v)) for v in ndimage.center_of_mass(ref))
    sp = c.spacing
    planes = {"axial": (img[zc], ref[zc], sp[1] / sp[2], lambda a: a[zc]),
              "coronal": (img[:, yc], ref[:, yc], sp[0] / sp[2], lambda a: a[:, yc]),
              "sagittal": (img[:, :, xc], ref[:, :, xc], sp[0] / sp[1], lambda a: a[:, :, xc])}
    colours = dict(zip(("CSCN", "CNN", "ACDNet", "Deeplab", "V-Net", "BUNet"),
                       ("red", "cyan", "yellow", "magenta", "orange", "white")))
    preds = {m: results.prediction(case, m) for m in methods if m in results.methods}
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (title, (im, r, aspect, cut)) in zip(axes, planes.items()):
        ax.imshow(im, cmap="gray", aspect=aspect, origin="lower" if title != "axial" else "upper",
                  interpolation="nearest")
        ax.imshow(np.ma.masked_where(~r, r), cmap="summer", alpha=0.45, aspect=aspect,
                  origin="lower" if title != "axial" else "upper", interpolation="nearest")
        for m, p in preds.items():
            if p is not None and cut(p).any():
                ax.contour(cut(p), levels=[0.5], colors=colours[m], linewidths=1.0,
                           origin="lower" if title != "axial" else "upper")
        ax.set_title(title)
        ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Line2D([], [], color=colours[m], label=m) for m, p in preds.items() if p is not None]
    handles.insert(0, plt.Rectangle((0, 0), 1, 1, color="green", alpha=0.45, label="reference"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{case}: three orthogonal planes through the tumour centre", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def fig_curves(results: Results, fold: int = 0):
    """Figs. 5-6 of the paper: training and validation loss (distance-weighted focal) of every network
    of one round, and the learning rate."""
    import matplotlib.pyplot as plt

    nets = ["BUNet", "ACDNet_cascade", "CNN", "ACDNet", "Deeplab", "V-Net"]
    fig, (a0, a1, a2) = plt.subplots(1, 3, figsize=(14, 3.8))
    lr = None
    for net in nets:
        cur = results.curves(net, fold)
        if cur is None or cur.empty:
            continue
        label = "ACDNet (cascade)" if net == "ACDNet_cascade" else net
        a0.plot(cur["iteration"], cur["train_loss"], label=label)
        a1.plot(cur["iteration"], cur["val_loss"], label=label)
        lr = cur if lr is None else lr
    for ax, t in ((a0, "training loss"), (a1, "validation loss")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(t)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if lr is not None:
        it = np.arange(int(lr["iteration"].max()) + 1)
        S = results.sizes
        a2.plot(it, float(S["lr"]) * 0.9 ** (it // int(S["decay_every"])), label="schedule")
        a2.plot(lr["iteration"], lr["lr"], "o", ms=4, label="logged (last update of each row)")
        a2.legend(fontsize=7)
        a2.set_xlabel("iteration")
        a2.set_ylabel("learning rate")
    fig.suptitle(f"Round {fold}: losses and learning-rate schedule", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# the chapter's numbers


def inter_observer_table(phantom: pd.DataFrame, real: pd.DataFrame | None = None, *,
                         data_label: str = "phantom", profile: str = "") -> pd.DataFrame:
    """The paper's two physicians (reported) next to the phantom's second rater (reproduced) and the
    real two-pass organ masks (real data), mean ± sd of DSC, ASSD and F1, every cell labelled."""
    from npcrepro.evaluation import format_mean_sd
    from npcrepro.papers import reported

    rep = reported(PAPER, method="Two physicians").set_index("metric")["value"]
    rows = [{"source": "Two physicians, 28 NPC patients (paper, Sec. 4.4)", "n": 28,
             "DSC": f"{rep['dsc']:.3f} (reported)", "ASSD (mm)": f"{rep['assd']:.2f} (reported)",
             "F1": f"{rep['f1']:.3f} (reported)"}]

    def cells(df: pd.DataFrame, tag: str) -> dict:
        return {"n": len(df),
                "DSC": f"{format_mean_sd(df['dice'].mean(), df['dice'].std(ddof=1), 3)} ({tag})",
                "ASSD (mm)": f"{format_mean_sd(df['assd'].mean(), df['assd'].std(ddof=1), 2)} ({tag})",
                "F1": f"{format_mean_sd(df['f1'].mean(), df['f1'].std(ddof=1), 3)} ({tag})"}

    if phantom is not None and len(phantom):
        label = f"GTVp vs GTVp_rater2, {data_label}" + (f", {profile} profile" if profile else "")
        rows.append({"source": label, **cells(phantom, "reproduced")})
    if real is not None and len(real):
        organs = ", ".join(sorted(real["organ"].unique()))
        rows.append({"source": f"radiographer vs oncologist, real CT organ masks ({organs})",
                     **cells(real, "real data")})
    return pd.DataFrame(rows).set_index("source")


#: Keys :func:`headline` always returns ("—" when a method needed for them was not run).
_HEADLINE_TEXT = ("best_baseline", "cscn_minus_best", "cscn_vs_best_p", "cscn_rank", "n_methods", "verdict",
                  "cascade_gain", "vnet_outcome", "mean_precision", "mean_recall", "seg_bias")


def headline(results: Results) -> dict[str, Any]:
    """Numbers the chapter's prose quotes (for myst-nb ``glue``): per method mean DSC, ASSD, F1 as text,
    the CSCN - best baseline DSC difference with a paired test, V-Net's outcome, and run facts."""
    from npcrepro.evaluation import format_mean_sd, paired_test

    m = results.metrics
    ok = m[m["status"] == "converged"].dropna(subset=["dice"])
    out: dict[str, Any] = {k: "—" for k in _HEADLINE_TEXT}
    out.update(n_patients=int(m["case"].nunique()), n_rounds=int(m["fold"].nunique()))
    means = ok.groupby("method")["dice"].mean()
    for meth in METHODS:
        g = ok[ok["method"] == meth]
        key = meth.lower().replace("-", "")
        out[f"{key}_dsc"] = format_mean_sd(g["dice"].mean(), g["dice"].std(ddof=1), 3) if len(g) else "—"
        out[f"{key}_assd"] = (format_mean_sd(g["assd"].mean(), g["assd"].std(ddof=1), 2, "mm")
                              if len(g) else "—")
    baselines = [b for b in ("CNN", "ACDNet", "Deeplab", "V-Net") if b in means]
    if "CSCN" in means and baselines:
        best = max(baselines, key=lambda b: means[b])
        t = paired_test(ok[ok["method"] == "CSCN"], ok[ok["method"] == best], "dice", on=("case",))
        out.update(best_baseline=best, cscn_minus_best=f"{means['CSCN'] - means[best]:+.3f}",
                   cscn_vs_best_p=f"{t['p_wilcoxon']:.3f}" if math.isfinite(t["p_wilcoxon"]) else "n/a",
                   cscn_rank=int((means > means["CSCN"]).sum()) + 1, n_methods=len(means))
    if "CSCN" in means and baselines:
        if out["cscn_rank"] == 1:
            out["verdict"] = "CSCN ranks first by mean DSC, as in the paper"
        else:
            out["verdict"] = (f"CSCN ranks {out['cscn_rank']} of {len(means)} by mean DSC and "
                              f"{out['best_baseline']} is best, unlike the paper (CSCN first)")
    if "BUNet" in means and "CSCN" in means:
        out["cascade_gain"] = f"{means['CSCN'] - means['BUNet']:+.3f}"
    v = m[m["method"] == "V-Net"]
    if len(v):
        status = sorted(set(v["status"]))
        vo = v.dropna(subset=["dice"]) if "dice" in v else v.iloc[:0]
        if status != ["converged"]:
            out["vnet_outcome"] = f"training stopped with a non-finite loss ({', '.join(status)})"
        elif len(vo) and vo["pred_empty"].all():
            out["vnet_outcome"] = "trained with a finite loss but predicted no tumour voxel on any patient"
        else:
            dsc = format_mean_sd(vo["dice"].mean(), vo["dice"].std(ddof=1), 3)
            n_empty = int(vo["pred_empty"].sum())
            out["vnet_outcome"] = (f"trained with a finite loss and reached DSC {dsc}"
                                   + (f" ({n_empty} empty predictions)" if n_empty else ""))
    if "precision" in ok and "recall" in ok:
        pr = ok.groupby("method")[["precision", "recall"]].mean()
        prec, rec = float(pr["precision"].mean()), float(pr["recall"].mean())
        out["mean_precision"], out["mean_recall"] = f"{prec:.2f}", f"{rec:.2f}"
        if rec > prec + 0.1:
            out["seg_bias"] = ("the networks over-segment, the direction Eq. 7 pushes them (a missed tumour "
                               "voxel costs d + 1 times a false alarm)")
        elif prec > rec + 0.1:
            out["seg_bias"] = ("the networks under-segment, although Eq. 7 weighs missed tumour voxels "
                               "d + 1 times a false alarm")
        else:
            out["seg_bias"] = "over- and under-segmentation are about balanced"
    out["train_minutes"] = f"{results.training['train_seconds'].sum() / 60:.1f}"
    return out
