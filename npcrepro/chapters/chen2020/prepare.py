"""chen2020: case -> the networks' inputs (Sec. IV-A) and training samplers.

    Case (T1, T2, CET1 on the T1 grid, GTVp)
      -> XY resampled to ``spacing_xy`` (z kept, as the paper), intra-body intensity normalisation
         [40] and clipping per sequence (T1 [-2, 1], T2 [-3, 2], CET1 [-2, 3.5]), Otsu 3D bounding box
         of T1 -> its centre; only the in-plane region the crop and its augmentation reach is kept
      -> training samples: depth x H x W windows centred in-plane on the box centre, sliding along z
         (:class:`~npcrepro.chapters.chen2020.samplers.WindowDataset`), or centre-pixel patches for the patch CNNs
         (:class:`~npcrepro.chapters.chen2020.samplers.CentrePixelDataset`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from npcrepro import transforms as T
from npcrepro.chapters.chen2020.samplers import CentrePixelDataset, WindowDataset, channel_index, crop_channels
from npcrepro.errors import DataError

__all__ = ["MODALITIES", "STRUCTURE", "CLIP_RANGES", "Prepared", "prepare", "prepare_for", "keep_size",
           "training_data"]

MODALITIES = ("T1", "T2", "CET1")
STRUCTURE = "GTVp"

#: Clipping after intra-body normalisation (Sec. IV-A), in units of the body's sd.
CLIP_RANGES: dict[str, tuple[float, float]] = {"T1": (-2.0, 1.0), "T2": (-3.0, 2.0), "CET1": (-2.0, 3.5)}


@dataclass(frozen=True)
class Prepared:
    """One patient ready for the networks (never modified once made: the runner shares it).

    ``image`` (C, z, y, x) float32 on the working grid (``channels`` order), ``target`` (z, y, x) bool
    on the same grid, ``center`` the Otsu box centre (working-grid voxels), ``fills`` each channel's
    padding value, ``record`` maps working-grid arrays back to the original grid, ``case`` the
    original case (reference masks and grid, for scoring).
    """

    name: str
    image: np.ndarray
    channels: tuple[str, ...]
    target: np.ndarray
    center: tuple[float, float, float]
    record: T.Preprocessed
    fills: tuple[float, ...]
    case: Any = None

    @property
    def reference(self) -> np.ndarray:
        return np.asarray(self.case.labels[STRUCTURE], bool)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.case.spacing)

    def channel_index(self, names: Sequence[str]) -> list[int]:
        return channel_index(self, names)


def prepare(case, *, channels: Sequence[str] = MODALITIES, structure: str = STRUCTURE,
            spacing_xy: float | None = None, bbox_channel: str = "T1",
            keep: Sequence[int] | None = None) -> Prepared:
    """Resample (XY only), normalise and clip every sequence, find the Otsu box.

    ``keep`` (y, x): afterwards keep only this in-plane region around the Otsu box centre (all
    slices), enough for the network's crop plus its augmentation; a 0.5 mm grid of a whole head
    would otherwise hold ~1 GB per patient. The record maps predictions back either way.

    Raises DataError naming the case when a sequence or the structure is missing.
    """
    channels = tuple(channels)
    missing = [c for c in channels if c not in case.images]
    if missing:
        raise DataError(f"case {case.name}: missing sequence(s) {missing} (has {sorted(case.images)}); "
                        f"chen2020 needs {', '.join(channels)}")
    if structure not in case.labels:
        raise DataError(f"case {case.name}: no {structure!r} mask (has {sorted(case.labels)})")
    reference = np.asarray(case.labels[structure], bool)
    spacing = None if spacing_xy is None else (case.spacing[0], float(spacing_xy), float(spacing_xy))
    sub = type(case)(case.name, {c: case.images[c] for c in channels}, {structure: reference},
                     case.spacing, case.origin, case.direction, dict(case.meta))
    work, record = T.preprocess(sub, spacing=spacing)
    ref_ch = bbox_channel if bbox_channel in channels else channels[0]
    masks = {c: T.body_mask(work.images[c]) for c in channels}
    box = T.bbox(masks[ref_ch])
    if box is None:
        raise DataError(f"case {case.name}: Otsu found no body in {ref_ch}")
    center = tuple((a + b - 1) / 2.0 for a, b in box)
    image = np.stack([T.intra_body_normalise(work.images[c], masks[c], CLIP_RANGES.get(c)) for c in channels])
    fills = tuple(float(CLIP_RANGES[c][0]) if c in CLIP_RANGES else float(image[i].min())
                  for i, c in enumerate(channels))
    target = np.asarray(work.labels[structure], bool)
    if keep is not None:
        nz = image.shape[1]
        (y0, y1), (x0, x1) = T.center_box(image.shape[2:], keep, center[1:])
        kbox = ((0, nz), (y0, y1), (x0, x1))
        image = crop_channels(image, kbox, fills)
        target = T.crop(target, kbox, fill=False)
        center = (center[0], center[1] - y0, center[2] - x0)
        record = T.Preprocessed(record.original, record.resampled, kbox, dict(record.notes))
    return Prepared(case.name, image.astype(np.float32), channels, target, center, record, fills, case)


def keep_size(P: Mapping[str, Any]) -> tuple[int, int]:
    """In-plane region :func:`prepare` keeps for parameters ``P``: the crop, twice the maximal offset
    and a quarter of the crop for the rotation's corners."""
    _, h, w = (int(v) for v in P["crop"])
    _, oy, ox = (int(v) for v in P["offset"])
    return (h + 2 * oy + h // 4, w + 2 * ox + w // 4)


def prepare_for(case, P: Mapping[str, Any]) -> Prepared:
    """:func:`prepare` with the profile's spacing and kept region."""
    return prepare(case, spacing_xy=P.get("spacing_xy"), keep=keep_size(P))


def training_data(kind: str, modalities: Sequence[str], train: Sequence[Prepared],
                  val: Sequence[Prepared], P: Mapping[str, Any]):
    """(training set, validation set or None) of one row: 3D windows sliding along z (``kind``
    "3d"), every axial slice of the crop ("2d"), or class-balanced centre pixels ("patch")."""
    depth, h, w = (int(v) for v in P["crop"])
    if kind == "patch":
        kw = dict(patch_size=int(P["patch_size"]), size=(h, w))
        per = int(P.get("patch_samples_per_case") or 256)
        return (CentrePixelDataset(train, modalities, samples_per_case=per, flip=bool(P["flip"]), **kw),
                CentrePixelDataset(val, modalities, samples_per_case=max(16, per // 4), **kw) if val else None)
    two_d = kind == "2d"
    kw = dict(depth=1 if two_d else depth, size=(h, w), step=1 if two_d else int(P["z_step"]), two_d=two_d)
    off = tuple(P["offset"])
    off = (0,) + off[1:] if two_d else off
    tr = WindowDataset(train, modalities, offset=off, flip=bool(P["flip"]), rotate_deg=float(P["rotate_deg"]),
                       **kw)
    va = WindowDataset(val, modalities, **kw) if val else None
    return tr, va
