"""Two annotation passes of the same head-and-neck organs (DeepMind TCIA H&N set, CC BY 4.0).

Nikolov et al., arXiv:1809.04430. Layout::

    <src>/validation/{radiographer,oncologist}/<scan>/segmentations/<Organ>.nrrd

``src`` may also be the ``validation`` folder. The CT images are not part of the extract: these are
masks only, for metric tests and the inter-observer comparison (radiographer pass vs the
oncologist-arbitrated pass). Masks are returned as :class:`~npcrepro.io.Volume` (bool, (z, y, x),
spacing in mm).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from npcrepro import io
from npcrepro.errors import DataError

RATERS = ("radiographer", "oncologist")


def find_root(src: str | Path) -> Path:
    """The folder holding ``radiographer/`` and ``oncologist/``."""
    src = Path(src)
    for cand in (src, src / "validation", src / "tcia-hn-oar-two-raters" / "validation"):
        if all((cand / r).is_dir() for r in RATERS):
            return cand
    raise DataError(f"{src}: expected radiographer/ and oncologist/ folders (or validation/ "
                    "holding them)")


def scans(src: str | Path) -> list[str]:
    """Scan names present for both raters, sorted."""
    root = find_root(src)
    sets = [{p.name for p in (root / r).iterdir() if p.is_dir()} for r in RATERS]
    return sorted(sets[0] & sets[1])


def organs(src: str | Path, scan: str) -> list[str]:
    """Organ names (file stems) segmented by both raters in ``scan``, sorted."""
    root = find_root(src)
    sets = [{p.name[: -len(".nrrd")] for p in (root / r / scan / "segmentations").glob("*.nrrd")}
            for r in RATERS]
    return sorted(sets[0] & sets[1])


def load(src: str | Path, scan: str, organ: str, rater: str) -> io.Volume:
    """One rater's mask of ``organ`` in ``scan`` as a bool Volume."""
    if rater not in RATERS:
        raise DataError(f"unknown rater {rater!r} (valid: {', '.join(RATERS)})")
    path = find_root(src) / rater / scan / "segmentations" / f"{organ}.nrrd"
    vol = io.read(path)
    return vol.with_array(np.asarray(vol.array) > 0)


def load_pair(src: str | Path, scan: str, organ: str) -> tuple[io.Volume, io.Volume]:
    """(radiographer, oncologist) masks of one organ, checked to share one grid."""
    a, b = (load(src, scan, organ, r) for r in RATERS)
    io.check_same_geometry(a, b, f"{scan}/{organ}: radiographer vs oncologist")
    return a, b
