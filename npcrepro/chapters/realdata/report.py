"""Helpers of the real-data chapter (``notebooks/realdata.ipynb``): its profile sizes, where the
real sources are, and the cohort-level summaries it shows.

Its profile sizes are in :mod:`npcrepro.chapters.realdata.recipe`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


#: Where a user gets each source (shown when the data are absent).
SOURCES_TEXT = {
    "openkbp-subset": "OpenKBP: github.com/ababier/open-kbp, folder `provided-data` (MIT license; "
                      "Babier et al., Med. Phys. 48:5549, 2021). Convert with "
                      "`npcrepro convert openkbp provided-data/ data/openkbp`.",
    "npc-t2wi-slices": "NPC MRI (Li Y. et al. 2024): Zenodo record 10900202 (CC BY 4.0), the full "
                       "T1WI/T2WI/CE-T1WI DICOM set with ROI masks; convert with "
                       "`npcrepro convert li2024 <download>/ data/li2024`. The 25 JPEG slices used here "
                       "are a third-party export (github.com/sarah-antillia).",
    "tcia-hn-oar-two-raters": "Two-rater organ masks: github.com/google-deepmind/tcia-ct-scan-dataset "
                              "(CC BY 4.0; Nikolov et al. 2018), used by the metrics chapter.",
}


def locate(data: str, sub: str) -> Path | None:
    """The folder of source ``sub`` (e.g. ``"openkbp-subset"``) for a chapter's ``data`` parameter.

    ``data == "auto"``: :func:`npcrepro.paths.shared_data`. Otherwise ``data`` is a folder that holds
    ``sub`` or is that source itself. None when absent.
    """
    from npcrepro.paths import shared_data

    if data == "auto":
        return shared_data(sub)
    root = Path(data)
    if (root / sub).is_dir():
        return root / sub
    if root.is_dir() and (root.name == sub or _looks_like(root, sub)):
        return root
    return None


def _looks_like(folder: Path, sub: str) -> bool:
    if sub == "openkbp-subset":
        return any((folder / s).is_dir() for s in ("train-pats", "test-pats", "provided-data"))
    if sub == "npc-t2wi-slices":
        return (folder / "images").is_dir() and (folder / "masks").is_dir()
    return False


def tissue_table(cases: Sequence) -> "pandas.DataFrame":  # noqa: F821
    """:func:`~npcrepro.datasets.adapters.openkbp.tissue_hu` of several CT cases, one row per case
    and rule (columns ``case``, ``tissue``, ``rule``, ``hu``, ``voxels``)."""
    import pandas as pd

    from npcrepro.datasets.adapters.openkbp import tissue_hu

    frames = []
    for case in cases:
        t = tissue_hu(case)
        t.insert(0, "case", case.name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def tissue_summary(table) -> "pandas.DataFrame":  # noqa: F821
    """Per rule: cases with a value, median and range of the per-case HU (NaN rows dropped)."""
    g = table.dropna(subset=["hu"]).groupby(["tissue", "rule"], sort=False)["hu"]
    out = g.agg(cases="count", median="median", low="min", high="max")
    rank = {t: i for i, t in enumerate(("air", "fat", "soft tissue", "bone"))}
    rules = list(dict.fromkeys(table["rule"]))
    order = sorted(out.index, key=lambda k: (rank.get(k[0], 99), rules.index(k[1])))
    return out.loc[order].round(1)


def orientation_checks(case) -> "pandas.DataFrame":  # noqa: F821
    """Centroid (z, y, x) in mm of the landmark structures and the three anatomical checks.

    Returns a table with one row per check: ``check``, ``expected``, ``holds`` (bool).
    """
    import pandas as pd

    def c(name):
        alt = {"Parotid_L": "LeftParotid", "Parotid_R": "RightParotid"}
        key = name if name in case.labels else alt.get(name)
        if key not in case.labels:
            return None
        return np.argwhere(case.labels[key]).mean(0) * np.asarray(case.spacing)

    m, sc, bs, pl, pr = (c(n) for n in ("Mandible", "SpinalCord", "Brainstem", "Parotid_L",
                                         "Parotid_R"))
    rows = []
    if m is not None and sc is not None:
        rows.append(("Mandible anterior to SpinalCord", "y(Mandible) < y(SpinalCord)",
                     bool(m[1] < sc[1])))
    if m is not None and bs is not None:
        rows.append(("Brainstem superior to Mandible", "z(Brainstem) > z(Mandible)", bool(bs[0] > m[0])))
    if pl is not None and pr is not None:
        rows.append(("Left parotid on the patient's left", "x(Parotid_L) > x(Parotid_R)",
                     bool(pl[2] > pr[2])))
    return pd.DataFrame(rows, columns=["check", "expected (LPS arrays)", "holds"])
