"""The metrics chapter: agreement between two raters' real organ contours, measured with every
surface and overlap metric of the book (radiographer pass vs oncologist-arbitrated pass of the
DeepMind TCIA head-and-neck set, Nikolov et al. 2018)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from npcrepro import metrics
from npcrepro.datasets.adapters import two_raters


def inter_rater_table(src, *, scans: Sequence[str] | None = None,
                      organs: Sequence[str] | None = None, tolerance_mm: float = 2.0,
                      progress: bool = True) -> pd.DataFrame:
    """One row per (scan, organ): the radiographer's mask scored against the oncologist's.

    Columns: ``scan``, ``organ`` and every key of :func:`npcrepro.metrics.evaluate_case` (distances
    in mm, volumes in cm3, ``pred_empty``/``ref_empty`` flags). Organs missing for either rater in a
    scan are skipped (not scored as empty).
    """
    from npcrepro.paths import progress_bar as tqdm

    scans = list(scans or two_raters.scans(src))
    jobs = [(s, o) for s in scans for o in two_raters.organs(src, s)
            if not organs or o in organs]
    rows = []
    for scan, organ in tqdm(jobs, desc="scoring rater pairs", unit="organ", disable=not progress):
        a, b = two_raters.load_pair(src, scan, organ)
        res = metrics.evaluate_case(a.array, b.array, a.spacing, tolerance_mm=tolerance_mm)
        rows.append({"scan": scan, "organ": organ, **res})
    return pd.DataFrame(rows)


def organ_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median (and, for DSC, the range) per organ, in the chapter's column order."""
    g = table.groupby("organ", sort=False)
    out = pd.DataFrame({
        "scans": g.size(),
        "DSC median": g["dice"].median(),
        "DSC min": g["dice"].min(),
        "HD95 median (mm)": g["hd95"].median(),
        "ASSD median (mm)": g["assd"].median(),
        "NSD median": g["nsd"].median(),
        "volume median (cm3)": g["volume_ref_cm3"].median(),
    })
    return out.sort_values("DSC median")
