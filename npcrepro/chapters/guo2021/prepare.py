"""guo2021: case -> the networks' working grid, and the three-view training blocks.

The road every patient travels (Sec. 3-4 of the paper)::

    Case (channel, GTVp [, GTVp_rater2])
      -> prepare_case(): resample to isotropic voxels (paper 1 mm; the profiles use coarser voxels),
         crop a fixed head box (paper 160 x 198 x 103 mm, i.e. (z, y, x) = 103 x 198 x 160 mm)
         centred on the body (the Otsu foreground: "remove the black area"), z-score over the body,
         Eq. 7 weights (d(v, boundary) + 1 in mm inside the tumour, 1 outside) on the whole crop
      -> blocks(): 24 x 24 x 8 voxels cut along the axial, coronal and sagittal directions (one third
         each, thin axis first), random centres (``fg_prob`` of them on tumour voxels,
         ``negative_prob`` on the hard negatives ``negatives``, e.g. the nodes), random left-right
         flip (:class:`~npcrepro.chapters.guo2021.samplers.MultiViewBlocks`)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from npcrepro import transforms as T
from npcrepro.errors import DataError

STRUCTURE = "GTVp"
RATER1, RATER2 = "GTVp_rater1", "GTVp_rater2"
#: The paper's final image size in (z, y, x) mm (see ``npcrepro.chapters.guo2021.recipe.BOX_MM``).
BOX_MM = (103.0, 198.0, 160.0)


def head_box(image: np.ndarray, spacing: Sequence[float], box_mm: Sequence[float] = BOX_MM):
    """The fixed crop: ``box_mm`` (z, y, x) converted to voxels, centred on the body's bounding box.
    Returns ``(box, body)``; the box may reach outside the image (it is then padded)."""
    body = T.body_mask(image, opening=True)
    bb = T.bbox(body) or tuple((0, n) for n in image.shape)
    size = [max(1, int(round(m / s))) for m, s in zip(box_mm, spacing)]
    centre = [(a + b - 1) / 2.0 for a, b in bb]
    return T.center_box(image.shape, size, centre), body


@dataclass(frozen=True)
class Prepared:
    """One patient ready for the networks (never changed once made: the runner caches it).

    ``image`` (1, z, y, x) float32 on the working grid (isotropic, cropped, z-scored), ``target``
    (z, y, x) bool, ``weight`` (z, y, x) float32 Eq. 7 weights, ``record`` maps working-grid arrays
    back to the original grid, ``case`` the original case (reference masks, grid, spacing),
    ``negative`` (z, y, x) bool the hard negatives on the working grid (None: none asked for or none
    in this patient).
    """

    name: str
    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    record: T.Preprocessed
    case: Any
    work_spacing: tuple[float, float, float]
    negative: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])

    @property
    def reference(self) -> np.ndarray:
        return np.asarray(self.case.labels[STRUCTURE], bool)

    @property
    def rater2(self) -> np.ndarray | None:
        return np.asarray(self.case.labels[RATER2], bool) if RATER2 in self.case.labels else None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.case.spacing)

    def to_original(self, prob: np.ndarray) -> np.ndarray:
        """A working-grid probability (z, y, x) on the case's original grid (linear interpolation)."""
        return T.invert(np.asarray(prob, np.float32), self.record, order="linear")


def prepare_case(case, *, channel: str = "T1", spacing_mm: float | None = 1.0,
                 box_mm: Sequence[float] = BOX_MM, structure: str = STRUCTURE,
                 negatives: Sequence[str] = ()) -> Prepared:
    """Resample to ``spacing_mm`` isotropic (None: keep the grid), crop the head box, z-score over the
    body, compute the Eq. 7 weights; the ``negatives`` structures the case has (hard negatives, e.g.
    the nodes) are resampled and cropped with the target into one mask. DataError names the case when
    the channel or the mask is missing."""
    from npcrepro.losses import boundary_distance_weights

    if channel not in case.images:
        raise DataError(f"case {case.name}: no channel {channel!r} (has {sorted(case.images)})")
    if structure not in case.labels:
        raise DataError(f"case {case.name}: no {structure!r} mask (has {sorted(case.labels)})")
    reference = np.asarray(case.labels[structure], bool)
    present = [s for s in negatives if s in case.labels and np.any(case.labels[s])]
    labels = {structure: reference, **{s: np.asarray(case.labels[s], bool) for s in present}}
    sub = type(case)(case.name, {channel: case.images[channel]}, labels, case.spacing,
                     case.origin, case.direction, dict(case.meta))
    spacing = None if spacing_mm is None else (float(spacing_mm),) * 3
    work, rec = T.preprocess(sub, spacing=spacing)
    img = work.images[channel]
    box, body = head_box(img, work.spacing, box_mm)
    image = T.crop(img, box, fill=float(img.min()))
    body_c = T.crop(body, box, fill=False)
    image = T.zscore(image, body_c if body_c.any() else None)
    target = T.crop(work.labels[structure], box, fill=False).astype(bool)
    weight = boundary_distance_weights(target, work.spacing).astype(np.float32)
    record = T.Preprocessed(rec.original, rec.resampled, tuple(box))
    negative = (np.logical_or.reduce([T.crop(work.labels[s], box, fill=False).astype(bool) for s in present])
                if present else None)
    return Prepared(case.name, image[None].astype(np.float32), target, weight, record, case,
                    tuple(work.spacing), negative)


def with_coarse(prep: Prepared, coarse: np.ndarray) -> np.ndarray:
    """A new (2, z, y, x) input: the image and a coarse probability map (the cascade's second stage)."""
    return np.concatenate([prep.image, np.asarray(coarse, np.float32)[None]])


def blocks(prepared: Sequence[Prepared], P: Mapping[str, Any], *, coarse: Mapping[str, np.ndarray] | None = None,
           val: bool = False):
    """Three-view blocks of ``prepared`` (with each patient's ``coarse`` map as a second channel when
    given): ``samples_per_case`` random blocks for training, ``val_samples_per_case`` fixed ones
    without flips for validation."""
    from npcrepro.chapters.guo2021.samplers import MultiViewBlocks

    vols = [p.image if coarse is None else with_coarse(p, coarse[p.name]) for p in prepared]
    return MultiViewBlocks(vols, [p.target for p in prepared], [p.weight for p in prepared], P["patch"],
                           samples_per_case=int(P["val_samples_per_case" if val else "samples_per_case"]),
                           fg_prob=float(P["fg_prob"]), flip=bool(P["flip"]) and not val,
                           negatives=[p.negative for p in prepared],
                           negative_prob=float(P.get("negative_prob") or 0.0))
