"""The book's quality bars, read off its run folders: does every network find the tumour, reach the DSC
bar of its input, and converge within its budget?

The bars hold on the phantom's GTVp, and on the real-data tracks (the T2 slices, OpenKBP's CT) over
the structures each track scores: a network that does not learn on real scans is a defect like any other.

* every network predicts some tumour on at least one test patient;
* a network that reads MRI reaches a mean DSC of at least :data:`CEILING_SHARE` ``["MRI"]`` (0.85) of
  the inter-rater ceiling, one that reads CT at least ``["CT"]`` (0.65) of it: the ceiling is the
  raters' mean pairwise DSC on the run's own test patients (``raters.csv``,
  :meth:`npcrepro.engine.results.Results.ceiling`), so the bars move with the data's difficulty. Where a
  run's data has no raters (a real-data track, a dataset of one contour per patient) the fixed
  :data:`BARS` hold (MRI 0.65, CT 0.50);
* on a real-data track whose chapter defines a reference that reads no image (a location prior:
  :meth:`npcrepro.engine.chapter.Chapter.reference`; li2018's T2 slices, xue2020's PTV70, luo2020's
  organs), a network also scores higher than that reference on the same test cases: one that does not
  has learnt where the target usually lies and nothing from the image;
* at least :data:`CONVERGED_SHARE` of the trained networks are flagged converged at their budget
  (:meth:`npcrepro.engine.results.Results.convergence`);
* no seed of a network collapses (:meth:`npcrepro.engine.results.Results.flags`): its full-budget DSC
  does not fall more than 0.03 below its half-budget DSC, and its predicted volume is not off by more
  than 3x on most test cases. A mean over seeds would hide such a seed, so it is checked per seed.

A chapter may name methods that are expected to miss a bar, with the reason, in its recipe's
``EXCEPTIONS`` (li2018's faithful and printed recipes, which do not learn). They are listed with
their reason instead of failing; the converged share is given with and without them.

``npcrepro quality --runs runs --profile cpu`` prints the table and the summary and exits with 1 when
a network that is not an exception misses a bar or collapses. A row's ``data`` says whether its number
comes from the phantom or from real scans (the dataset's name).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Mean DSC bars, by the network's input, where the data has no raters to set a ceiling.
BARS = {"MRI": 0.65, "CT": 0.50}
#: Mean DSC bars as a share of the inter-rater ceiling, by the network's input. MRI: 0.85, the share
#: the fixed MRI bar was of the phantom's earlier inter-rater agreement (0.65 of about 0.74, the second
#: rater against the first); CT 0.65, the CT bar's share of the MRI bar kept (0.50 / 0.65 of 0.85).
CEILING_SHARE = {"MRI": 0.85, "CT": 0.65}
#: Share of the trained networks that should be flagged converged.
CONVERGED_SHARE = 0.80
#: Image channels that are CT; every other channel is MRI.
CT_CHANNELS = frozenset({"CT", "CECT"})

QUALITY_COLUMNS = ["chapter", "run", "data", "method", "input", "structures", "test cases",
                   "cases predicted empty", "dice", "ceiling", "no-image reference", "bar", "meets bar",
                   "exception"]


def bar_for(family: str, ceiling: float | None) -> float:
    """The DSC bar of a network reading ``family`` ("MRI"/"CT"): :data:`CEILING_SHARE` of the
    inter-rater ``ceiling``, or the fixed :data:`BARS` where there is none."""
    return BARS[family] if ceiling is None else CEILING_SHARE[family] * float(ceiling)


def input_of(res, method: str) -> str:
    """"CT" or "MRI": what ``method`` of the run ``res`` reads. Its own channels where the run records
    them per method (the leaderboard), else the run's channels, else the paper's modality."""
    channels = res.method_info(method).get("channels") or res.channels
    if channels:
        return "CT" if any(c in CT_CHANNELS for c in channels) else "MRI"
    from npcrepro import papers

    return "CT" if papers.info(res.chapter).modality.startswith("CT") else "MRI"


def exceptions(chapter: str) -> dict[str, str]:
    """The methods ``chapter`` names as expected to miss a bar: method -> reason ({} for none)."""
    from npcrepro import recipes
    from npcrepro.errors import ParameterError

    try:
        return dict(recipes.load(chapter).EXCEPTIONS)
    except ParameterError:  # a run folder of a chapter this version does not know
        return {}


def quality_table(out_dir: str | Path, profile: str, structure: str = "GTVp") -> pd.DataFrame:
    """One row per network of the newest run of each chapter and run name under
    ``<out_dir>/<profile>/``: chapter, run name, data ("phantom" or the real dataset's name), method
    label, input (MRI/CT), the structures scored (``structure`` on the phantom; every structure a
    real-data track scores, e.g. OpenKBP's organs or its PTV70), test cases, cases predicted empty,
    mean DSC (per case first, over the structures its reference has, folds and seeds, then over
    cases), the inter-rater ceiling (None without raters), the mean DSC of the chapter's reference that
    reads no image on a real-data track (:func:`no_image_reference`; None elsewhere), the bar
    (:func:`bar_for`), whether it meets it (predicts something, and scores higher than the reference
    where there is one) and the chapter's reason where it names the method an exception."""
    from npcrepro.evaluation import scored
    from npcrepro.summary import headline_of, newest_results

    rows = []
    for (chapter, name), res in newest_results(out_dir, profile).items():
        m = res.metrics
        if not len(m) or "structure" not in m:
            continue
        m = scored(m)  # a structure absent from a patient's reference is not scored (the chapters' rule)
        data = data_name(res.data_label)
        if data == "phantom":
            m = m[m["structure"] == structure]
            if not len(m):
                continue
        known = chapter_of(chapter)
        names = ", ".join(sorted({known.structure_label(res, s) if known else s for s in set(m["structure"])}))
        named = exceptions(chapter)
        ceiling = res.ceiling(structure) if data == "phantom" else None
        floor = None if data == "phantom" else no_image_reference(chapter, res)
        for method in [k for k in res.methods if k in set(m["method"])]:
            mine = m[m["method"] == method]
            h = headline_of(mine, method)  # per case first, then over cases
            empty = (mine.groupby("case")["pred_empty"].all() if "pred_empty" in mine
                     else mine.groupby("case")["dice"].mean() == 0)
            family = input_of(res, method)
            dice = h["mean"]
            rows.append({"chapter": chapter, "run": name, "data": data, "method": res.label(method),
                         "input": family, "structures": names, "test cases": h["n"],
                         "cases predicted empty": int(empty.sum()),
                         "dice": dice, "ceiling": ceiling, "no-image reference": floor,
                         "bar": bar_for(family, ceiling),
                         "meets bar": bool(dice >= bar_for(family, ceiling) and not empty.all()
                                           and (floor is None or dice > floor)),
                         "exception": named.get(method, "")})
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    # the phantom's rows first, then the real-data tracks (each group in the runs' order)
    return table.sort_values("data", key=lambda d: d != "phantom", kind="stable").reset_index(drop=True)


def no_image_reference(chapter: str, res) -> float | None:
    """The mean DSC of ``chapter``'s reference that reads no image on the run ``res``
    (:meth:`npcrepro.engine.chapter.Chapter.reference`) over its test cases; None where the chapter
    defines none, this version does not know the chapter, or the run's dataset is no longer readable."""
    from npcrepro.errors import DataError, ParameterError

    known = chapter_of(chapter)
    try:
        table = known.reference(res) if known else None
    except (ParameterError, DataError):  # the run's data moved or gone, or parameters this version reads otherwise
        return None
    if table is None or not len(table):
        return None
    return float(table.groupby("case")["dice"].mean().mean())  # per case first (its structures), as the networks


def chapter_of(chapter: str):
    """The :class:`~npcrepro.engine.chapter.Chapter` named ``chapter``; None where this version does not
    know it (a run folder left by another version)."""
    from npcrepro import chapters
    from npcrepro.engine.chapter import load_chapter
    from npcrepro.errors import ParameterError

    try:
        return load_chapter(chapters.module(chapter))
    except ParameterError:
        return None


def data_name(label: str) -> str:
    """A run's data label as a row names it: "phantom", a dataset's own label, or a folder's name."""
    label = str(label or "")
    return Path(label).name if ("/" in label or "\\" in label) else (label or "unknown data")


def quality_summary(table: pd.DataFrame, convergence: pd.DataFrame, flags: pd.DataFrame | None = None) -> dict:
    """What ``table`` (:func:`quality_table`), ``convergence``
    (:func:`npcrepro.summary.convergence_table`, every run) and ``flags``
    (:func:`npcrepro.summary.flags_table`, every run) say against the bars: ``misses`` (labels of
    networks that are not exceptions and miss their bar or predict nothing), ``collapses`` (those
    that are not exceptions and one of whose seeds is flagged: "chapter / method, seed s: reason"),
    ``excused`` (those that are exceptions), ``checked`` (rows of ``table``), ``converged`` /
    ``networks`` over every trained network and the same without the named exceptions, and
    ``passed`` (no misses, no collapses)."""
    def tag(df):
        return [f"{c} / {m}" for c, m in zip(df["chapter"], df["method"])]

    def where(df):  # a real-data row names its data: the same network may pass on the phantom
        return [t if d == "phantom" else f"{t} on {d}" for t, d in zip(tag(df), df["data"])]

    missed = table[~table["meets bar"].astype(bool)]
    named = set(tag(table[table["exception"] != ""]))
    flags = flags if flags is not None and len(flags) else pd.DataFrame(columns=["chapter", "method", "seed", "flag"])
    flagged_seeds = flags[(flags["flag"] != "") & ~pd.Series(tag(flags), index=flags.index, dtype=object).isin(named)]
    conv = convergence.assign(tag=tag(convergence)) if len(convergence) else convergence.assign(tag=[])
    flagged = conv["converged"].fillna(False).astype(bool) if len(conv) else pd.Series(dtype=bool)
    kept = ~conv["tag"].isin(named) if len(conv) else pd.Series(dtype=bool)
    out = {"checked": int(len(table)), "misses": where(missed[missed["exception"] == ""]),
           "excused": where(missed[missed["exception"] != ""]),
           "collapses": [f"{t}, seed {s}: {why}" for t, s, why in
                         zip(tag(flagged_seeds), flagged_seeds["seed"], flagged_seeds["flag"])],
           "networks": int(len(conv)), "converged": int(flagged.sum()),
           "networks without exceptions": int(kept.sum()),
           "converged without exceptions": int(flagged[kept].sum())}
    out["passed"] = not out["misses"] and not out["collapses"]
    return out


def summary_lines(s: dict) -> list[str]:
    """:func:`quality_summary` as sentences."""
    def share(k, n):
        return f"{k} of {n} ({k / n:.0%})" if n else "0 of 0"

    if not s["checked"]:
        return ["bars: no finished run to check"]
    target = f"target {CONVERGED_SHARE:.0%}"
    lines = ["bars: " + ("every network that is not a named exception meets its bar" if not s["misses"]
                         else "missed by " + "; ".join(s["misses"]))]
    lines.append("collapses: " + ("; ".join(s["collapses"]) if s.get("collapses") else
                                  "no seed of a network fell from its half-budget DSC or missed the volume"))
    if s["excused"]:
        lines.append("named exceptions below the bar: " + "; ".join(s["excused"]))
    lines.append(f"converged at this budget: {share(s['converged'], s['networks'])} of the trained networks, "
                 f"{share(s['converged without exceptions'], s['networks without exceptions'])} without "
                 f"the named exceptions ({target})")
    return lines
