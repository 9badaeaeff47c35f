"""luo2020: case -> labelled axial CT slices (windowed CT, one mask per structure) and back.

The paper cuts every CT volume into axial slices and removes "the image without the label"; so
does this chapter, for training and for testing. The CT is clipped to :data:`CT_WINDOW` (a
soft-tissue window) and scaled to [0, 1] (the paper states no normalisation); the smoke and cpu
profiles use a centred in-plane crop of ``image_size`` pixels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from npcrepro import transforms as T
from npcrepro.errors import DataError

__all__ = ["STRUCTURES", "OPENKBP_STRUCTURES", "CT_WINDOW", "Prepared", "structures_for",
           "labelled_slices", "centre_box", "prepare", "slice_dataset", "slice_image", "to_grid",
           "SlicePart", "part_name", "parse_part", "location_prior"]

#: The paper's 14 structures (Sec. 3.1) -> the phantom's structure names. "locref" is read as the
#: primary-tumour localisation reference (GTVp) and "CTV2" as the primary clinical target (CTVp).
STRUCTURES: dict[str, str] = {
    "locref": "GTVp",
    "CTV2": "CTVp",
    "CTVnd": "CTVnd",
    "Mandible L": "Mandible_L",
    "Mandible R": "Mandible_R",
    "Parotid L": "Parotid_L",
    "Parotid R": "Parotid_R",
    "Brain Stem": "Brainstem",
    "Spinal Cord": "SpinalCord",
    "Eyes L": "Eye_L",
    "Eyes R": "Eye_R",
    "Optic Nerves L": "OpticNerve_L",
    "Optic Nerves R": "OpticNerve_R",
    "Optic Chiasm": "Chiasm",
}

#: OpenKBP's structures (project names) used on the real-data track, in this order when present:
#: its seven organs, then the planning target volumes.
OPENKBP_STRUCTURES = ("Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Mandible", "Esophagus",
                      "Larynx", "PTV70", "PTV63", "PTV56")

#: CT intensity window (HU) mapped to [0, 1]; the paper states no normalisation. The book's
#: soft-tissue window (xue2020's and the leaderboard's): over -1000..1000 HU the 5 HU between tumour
#: and muscle would be 0.25 % of the input's span (see the recipe's CHOICES).
CT_WINDOW = (-200.0, 300.0)


def structures_for(dataset_structures: Sequence[str], skip: Sequence[str] = ()) -> list[str]:
    """The structures a dataset offers this chapter: those of the paper's 14 (phantom names) it has, in
    the paper's order, then OpenKBP's other organs and PTVs it has; every structure of the dataset when
    it has none of them. ``skip``: names left out (the ``skip_structures`` parameter)."""
    left_out = set(skip)
    have = [s for s in dataset_structures if s not in left_out]
    out = [s for s in STRUCTURES.values() if s in have]
    out += [s for s in OPENKBP_STRUCTURES if s in have and s not in out]
    if out:
        return out
    if not have:
        raise DataError("the dataset declares no structures" + (f" besides {', '.join(skip)}" if skip else ""))
    return have


def normaliser():
    """CT clipped to :data:`CT_WINDOW` and scaled to [0, 1]."""
    return functools.partial(T.normalise, method="window", window=CT_WINDOW)


def labelled_slices(case, structures: Sequence[str]) -> np.ndarray:
    """Axial indices of the slices that contain any of ``structures`` (the paper's slice selection)."""
    any_ = np.zeros(case.shape, bool)
    for s in structures:
        if s in case.labels:
            any_ |= case.labels[s]
    return T.slices_with(any_, axis=0)


def centre_box(shape: Sequence[int], size: Sequence[int]) -> tuple:
    """The centred crop/pad box :class:`~npcrepro.engine.SliceDataset` uses (same rounding)."""
    return tuple(((n - int(s)) // 2, (n - int(s)) // 2 + int(s)) for n, s in zip(shape, size))


@dataclass(frozen=True)
class Prepared:
    """One case as this chapter uses it: the case (CT and the masks of ``structures`` it has), the
    structures every method predicts (the dataset's, in the chapter's order), its labelled slices and
    the in-plane box the models see (None: whole slices)."""

    case: Any
    structures: tuple[str, ...]
    idx: np.ndarray
    box: tuple | None


def prepare(case, structures: Sequence[str], image_size=None, part: "SlicePart | None" = None,
            seed: int = 0) -> Prepared:
    """``case`` -> :class:`Prepared` (the case itself is not changed). With ``part``, only the
    labelled slices of that side of a slice-level fold (:func:`npcrepro.datasets.splits.slice_part`,
    seeded by ``seed``)."""
    from npcrepro.datasets.splits import slice_part

    box = centre_box(case.shape[1:], image_size) if image_size else None
    idx = labelled_slices(case, structures)
    if part is not None:
        test = slice_part(case.name, idx, part.fold, part.k, seed=seed)
        idx = np.asarray(test if part.side == "test" else np.setdiff1d(idx, test), int)
    return Prepared(case, tuple(structures), idx, box)


# ----------------------------------------------------------------------------------- slice-level folds
@dataclass(frozen=True)
class SlicePart:
    """One side of one fold of a slice-level split, for one case: its runner name is
    ``<case>@slices<fold>of<k>-<side>`` (:func:`part_name`, :func:`parse_part`)."""

    case: str
    fold: int
    k: int
    side: str  # "train" or "test"


def part_name(case: str, fold: int, k: int, side: str) -> str:
    """The runner's name of ``case``'s ``side`` ("train" or "test") in fold ``fold`` of ``k``."""
    if side not in ("train", "test"):
        raise DataError(f"side must be 'train' or 'test', got {side!r}")
    return f"{case}@slices{int(fold)}of{int(k)}-{side}"


def parse_part(name: str) -> SlicePart | None:
    """The :class:`SlicePart` a runner name stands for, or None for a plain case name."""
    import re

    m = re.fullmatch(r"(.+)@slices(\d+)of(\d+)-(train|test)", name)
    return None if m is None else SlicePart(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))


def slice_dataset(cases: Sequence, structures: Sequence[str], image_size, channel: str = "CT", seed: int = 0,
                  slices: Mapping[str, Sequence[int]] | None = None, sampling: str = "uniform"):
    """Labelled axial CT slices of ``cases`` (centre crop/pad to ``image_size`` when given); with
    ``slices`` ({case name: indices}), those slices instead (a slice-level split's training part).
    ``sampling``: how the Trainer draws batches (:class:`~npcrepro.engine.SliceDataset`).

    Only the chosen slices are copied into the dataset (a sub-case per patient), not whole volumes:
    the same items in the same order as ``SliceDataset(cases, slices="labelled")``, in the memory
    of the labelled slices only (a paper-size patient is about 0.45 GB in memory with 14 masks)."""
    from npcrepro.datasets import Case
    from npcrepro.engine import SliceDataset

    subs = []
    for case in cases:
        idx = labelled_slices(case, structures) if slices is None else np.asarray(slices[case.name], int)
        subs.append(Case(case.name, {channel: case.images[channel][idx]},
                         {s: case.labels[s][idx] for s in structures if s in case.labels}, case.spacing))
    return SliceDataset(subs, [channel], list(structures), slices="all",
                        size=tuple(image_size) if image_size else None, normalise=normaliser(), seed=seed,
                        sampling=sampling)


def slice_image(prepared: Prepared, channel: str = "CT") -> np.ndarray:
    """The model input of a prepared case: (1, z', y, x) windowed CT of its labelled slices, cropped to
    its box."""
    from npcrepro.engine import prepare_case

    image, _ = prepare_case(prepared.case, [channel], (), normalise=normaliser())
    image = image[:, prepared.idx]
    if prepared.box is not None:
        image = T.crop(image, ((0, image.shape[0]), (0, image.shape[1])) + tuple(prepared.box))
    return image


def to_grid(prob: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
    """Probabilities (K, z', y', x') of the labelled slices inside the box -> {structure: (z, y, x)
    float32 on the case's grid}; voxels the model never saw (other slices, outside the box) are 0."""
    shape = prepared.case.shape
    out = {}
    for k, s in enumerate(prepared.structures):
        full = np.zeros(shape, np.float32)
        if prepared.box is None:
            full[prepared.idx] = prob[k]
        else:
            (y0, y1), (x0, x1) = prepared.box
            # the crop box may reach outside the slice (padding): keep the part inside
            sy0, sx0 = max(y0, 0), max(x0, 0)
            sy1, sx1 = min(y1, shape[1]), min(x1, shape[2])
            full[prepared.idx, sy0:sy1, sx0:sx1] = prob[k][:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        out[s] = full
    return out


# ----------------------------------------------------------------------------------- a finished run's reference
def location_prior(results, threshold: float):
    """The reference that reads no image for a finished run on cases of one grid (OpenKBP's 128 x 128 x
    128): per fold and structure, the voxel-wise mean of the masks of its training and validation
    patients that have the structure (:func:`npcrepro.metrics.prior.location_priors`), thresholded at
    ``threshold``, scored as the networks are (:func:`~npcrepro.chapters.luo2020.methods.score_rows`):
    on each test patient's labelled slices, for the structures its reference has. One row per (test
    patient, structure): method (:data:`npcrepro.metrics.prior.PRIOR`), fold, case, structure, dice (a
    DataFrame). Raises :class:`DataError` for a run split by slice (no patient is held out) or on cases
    of different grids."""
    import pandas as pd

    from npcrepro.metrics import dice
    from npcrepro.metrics.prior import PRIOR, location_priors

    ds, structures = results.dataset(), list(results.structures)
    have = [s for s in structures if s in ds.structures]

    def load(name):
        return ds.load(name, channels=["CT"], structures=have)

    rows = []
    for i, f in enumerate(results.splits()):
        if any(parse_part(n) for n in (*f.train, *f.test)):
            raise DataError("a location prior needs a split by patient; this run split its folds by slice")
        priors = location_priors((load(n).labels for n in (*f.train, *f.val)), threshold)
        for name in f.test:
            case = load(name)
            idx = labelled_slices(case, structures)
            for s in structures:
                ref = case.labels.get(s)
                if ref is None or not ref.any():
                    continue  # not scored: a structure absent from the patient's reference
                prior = priors.get(s, np.zeros(ref.shape, bool))
                if prior.shape != ref.shape:
                    raise DataError(f"a location prior needs cases of one grid: {name} is {ref.shape}, the "
                                    f"training masks {prior.shape}")
                rows.append({"method": PRIOR, "fold": i, "case": name, "structure": s,
                             "dice": dice(prior[idx], ref[idx])})
    return pd.DataFrame(rows, columns=["method", "fold", "case", "structure", "dice"])
