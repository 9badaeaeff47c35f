"""The leaderboard's common inputs: normalisation, training samples and the cascade's extra channel."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from npcrepro.losses import DiceCELoss as CommonLoss
from npcrepro.phantom.scanners import HU_CHANNELS

__all__ = ["CT_WINDOW", "normaliser", "samples", "foreground", "with_channel", "CommonLoss"]

#: CT window of the common protocol (HU), scaled to [0, 1].
CT_WINDOW = (-200.0, 300.0)


def normaliser(channels: Sequence[str]) -> dict:
    """Per-channel normalisation: the CTs (CT, CECT) windowed to :data:`CT_WINDOW`, scaled to [0, 1]; every other
    channel z-scored per patient; ``coarse`` (a cascade's input) untouched."""
    lo, hi = CT_WINDOW

    def ct(a):
        return (np.clip(a, lo, hi) - lo) / (hi - lo)

    return {c: (ct if c in HU_CHANNELS else None if c == "coarse" else "zscore") for c in channels}


def samples(cases, channels: Sequence[str], P: Mapping[str, Any], dims: str, seed: int):
    """Training samples of the common protocol: 2D random ``crop_2d`` crops of tumour slices plus
    ``background_fraction`` as many others; 3D random ``patch_3d`` patches, ``fg_prob`` of them
    holding a tumour voxel at a random position of the patch, not at its centre
    (:class:`~npcrepro.engine.data.PatchDataset`). In both, ``negative_prob`` of the samples hold a
    voxel of a ``negatives`` structure (hard negatives, e.g. the nodes) where the patient has one."""
    from npcrepro.engine import PatchDataset, SliceDataset

    structure = [str(P["structure"])]
    norm = normaliser(channels)
    if dims == "2d":
        return SliceDataset(cases, list(channels), structure, slices="labelled",
                            background_fraction=float(P["background_fraction"]),
                            size=tuple(P["crop_2d"]) if P.get("crop_2d") else None, random_crop=True,
                            crop_fg_prob=float(P["fg_prob"]), normalise=norm, seed=seed,
                            negatives=list(P.get("negatives") or ()),
                            negative_prob=float(P.get("negative_prob") or 0.0))
    per_case = max(1, math.ceil(int(P["iterations_3d"]) * int(P["batch_3d"]) / max(1, len(cases))))
    return PatchDataset(cases, list(channels), structure, P["patch_3d"], samples_per_case=per_case,
                        fg_prob=float(P["fg_prob"]), normalise=norm, negatives=list(P.get("negatives") or ()),
                        negative_prob=float(P.get("negative_prob") or 0.0))


def foreground(prob: np.ndarray) -> np.ndarray:
    """Tumour probability (z, y, x) from (1, ...) sigmoid or (2, ...) softmax probabilities."""
    return prob[1] if prob.shape[0] == 2 else prob[0]


def with_channel(case, name: str, array: np.ndarray):
    """A copy of ``case`` with one more image channel (the case itself is not changed)."""
    return replace(case, images={**case.images, name: np.asarray(array, np.float32)})
