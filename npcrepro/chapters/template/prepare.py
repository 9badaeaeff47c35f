"""Template: case -> training slices. The case is used as it is (the U-Net sees one channel)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from npcrepro.transforms import Augment


def training_slices(cases: Sequence, P: Mapping[str, Any], *, train: bool = True):
    """Axial slices of ``cases`` (channel ``P.channel``, target ``P.structure``): every slice with
    tumour plus 30 % as many without, flipped, rotated within 10 degrees and jittered when ``train``;
    random ``P.image_size`` crops when set."""
    from npcrepro.engine import SliceDataset

    common = dict(channels=[P["channel"]], structures=[P["structure"]], size=P["image_size"],
                  slices="labelled")
    if not train:
        return SliceDataset(list(cases), **common)
    return SliceDataset(list(cases), background_fraction=0.3,
                        augment=Augment(flip_axes=(-1,), rotate_deg=10, jitter=0.1), seed=int(P["seed"]),
                        random_crop=P["image_size"] is not None, **common)
