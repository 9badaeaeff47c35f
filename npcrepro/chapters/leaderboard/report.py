"""The leaderboard's tables, claims and figures, read from a run's :class:`Results`.

The patient is the unit (:mod:`npcrepro.claims`): a method's rows of one patient (its seeds) are
averaged first, and means, BCa bootstrap intervals and paired tests run over patients. p-values of a
family of tests (every method against its baseline; the papers' claims) are Holm-adjusted over the
family, and a claim that the test patients cannot decide says so.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from npcrepro.chapters.leaderboard.external import entry, is_external
from npcrepro.chapters.leaderboard.methods import BY_KEY, PROPOSED, built_as, channels_of, network, select
from npcrepro.claims import patients_needed

METRICS = ("dice", "hd95", "assd", "nsd")
METRIC_LABELS = {"dice": "DSC", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "nsd": "NSD"}

#: The papers' comparisons the common protocol can test: (paper, where, better key, worse key).
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("xue2020", "Sec. 2", "deeplab_ct", "unet_ct"),
    ("luo2020", "Table 1", "luo_ours_ct", "unet_ct"),
    ("luo2020", "Table 1", "luo_ours_ct", "fcn8_ct"),
    ("guo2021", "Table 1", "cscn", "guo_cnn"),
    ("chen2020", "Table I/II", "mmfnet", "unet3d_cet1"),
)
#: The reported row of each baseline key that a claim compares against (paper's own U-Net etc.).
CLAIM_REPORTED = {
    ("xue2020", "unet_ct"): ("Sec. 2", "U-Net"),
    ("luo2020", "unet_ct"): ("Table 1", "U-Net"),
}


def _patients(res) -> pd.DataFrame:
    """One row per (method, patient): each metric averaged over the patient's rows (its seeds), and
    the empty-mask flags of any of them (a patient failed when its prediction was empty in a seed)."""
    from npcrepro.evaluation import FLAG_COLUMNS, average_seeds

    t = average_seeds(res.metrics)
    return t[["method", "case"] + [c for c in (*METRICS, *FLAG_COLUMNS) if c in t]]


def _present(res) -> list[str]:
    have = set(res.metrics["method"]) if len(res.metrics) else set()
    return [m for m in res.methods if m in have]


def method_table(P: Mapping[str, Any]) -> pd.DataFrame:
    """The selected methods: source chapter, input, 2D/3D, the paper's row it stands for, the baseline
    it is tested against, its number of parameters at this profile's width and how it is sized
    against its own chapter (:func:`~.methods.built_as`: the rows that depart from the one policy
    say so)."""
    from npcrepro.models import count_parameters

    rows = []
    for m in select(P["methods"]):
        rows.append({"key": m.key, "method": m.label, "chapter": m.paper, "input": "+".join(channels_of(m, P))
                     + (" + coarse" if m.after else ""), "dims": m.dims.upper(),
                     "paper row": f"{m.reported[1]} ({m.reported[0]})" if m.reported else "—",
                     "baseline": BY_KEY[m.baseline].label if m.baseline != m.key else "(is the baseline)",
                     "parameters": f"{count_parameters(network(m, float(P['width']), str(P['profile']))):,}",
                     "built as (against its chapter)": built_as(m, P)})
    return pd.DataFrame(rows)


def _fmt_ci(mean: float, lo: float, hi: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{lo:.{digits}f},\u00a0{hi:.{digits}f}]"  # no break inside the interval


def summary(res, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Long summary: one row per (method, metric) with mean, 95% bootstrap CI and counts."""
    from npcrepro.evaluation import summarize

    return summarize(_patients(res), list(METRICS), by="method", n_boot=n_boot, seed=seed)


def paired_vs_baseline(res, key: str, metric: str = "dice") -> dict | None:
    """Paired test of ``key`` against its baseline over patients (None for a baseline or a missing one)."""
    from npcrepro.claims import compare

    base = entry(res, key).baseline
    if key == base or base not in _present(res):
        return None
    return compare(res.metrics, key, base, metric)


def _baseline_tests(res) -> dict[str, dict]:
    """Paired DSC test of every method against its baseline, with Holm-adjusted Wilcoxon p-values
    over that family (the book's methods; an external row is adjusted as one more member of it)."""
    from npcrepro.evaluation import holm

    tests = {k: p for k in _present(res) if (p := paired_vs_baseline(res, k)) is not None}
    book = [k for k in tests if not is_external(k)]
    for k, adj in zip(book, holm([tests[k]["p_wilcoxon"] for k in book])):
        tests[k]["p_holm"] = float(adj)
    for k in [k for k in tests if is_external(k)]:
        tests[k]["p_holm"] = float(holm([tests[j]["p_wilcoxon"] for j in book] + [tests[k]["p_wilcoxon"]])[-1])
    return tests


def leaderboard_table(res, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per method (sorted by mean DSC): each metric as ``mean [95% BCa CI]`` with the median
    beside the distances (one failed patient's image-diagonal distance cannot hide in a mean), the
    number of failed patients (empty prediction, tumour present), the paired DSC difference against
    the method's U-Net baseline with its CI, and the Wilcoxon p-value, raw and Holm-adjusted over
    every method tested against a baseline. Where the data has raters, a row :data:`CEILING_LABEL` gives
    their mean pairwise DSC on the same test patients, sorted among the networks. Columns: the method,
    its test against its U-Net and its DSC first, then the other metrics, the paper and the input."""
    s = summary(res, n_boot, seed)
    tests = _baseline_tests(res)
    rows = []
    for key in _present(res):
        m = entry(res, key)
        sm = s[s["method"] == key].set_index("metric")
        row = {"method": m.label, "paper": m.paper, "input": "+".join(channels_of(m, res.params)),
               "dims": m.dims.upper()}
        for k in METRICS:
            r = sm.loc[k]
            digits = 3 if k in ("dice", "nsd") else 1
            row[METRIC_LABELS[k]] = _fmt_ci(r["mean"], r["ci_low"], r["ci_high"], digits)
            if k in ("hd95", "assd"):
                row[f"{METRIC_LABELS[k]} median"] = "n/a" if not math.isfinite(r["median"]) else f"{r['median']:.1f}"
        row["failed patients"] = int(sm.loc["dice", "n_failed"])
        p = tests.get(key)
        row["Δ DSC vs U-Net [95% CI]"] = "—" if p is None else _fmt_ci(p["mean_diff"], p["diff_ci_low"],
                                                                       p["diff_ci_high"], 3)
        row["p (Wilcoxon)"] = "—" if p is None else f"{p['p_wilcoxon']:.3g}"
        row["p (Holm)"] = "—" if p is None else f"{p['p_holm']:.3g}"
        row["_dsc"] = float(sm.loc["dice", "mean"])
        rows.append(row)
    ceiling = _ceiling_row(res, n_boot, seed)
    table = pd.DataFrame(rows + ([ceiling] if ceiling else []))
    table = table.sort_values("_dsc", ascending=False).drop(columns="_dsc").fillna("—").reset_index(drop=True)
    # what a reader compares first (the method, its test against its U-Net, its DSC) on the left, so
    # that it stays on screen; the other metrics and the inputs follow
    first = ["method", "Δ DSC vs U-Net [95% CI]", "p (Holm)", METRIC_LABELS["dice"], "failed patients"]
    return table[[c for c in first if c in table] + [c for c in table if c not in first]]


#: How the leaderboard names the inter-rater ceiling in its table and figure.
CEILING_LABEL = "Raters (inter-rater ceiling)"


def _ceiling_row(res, n_boot: int, seed: int) -> dict | None:
    """The raters' mean pairwise DSC over the run's test patients as a row of :func:`leaderboard_table`
    (mean [95% BCa CI]; every other cell "—"), or None where the data has no raters."""
    from npcrepro.evaluation import bootstrap_ci

    r = res.raters
    v = r.loc[r["structure"] == res.structures[0], "pairwise_dice"].to_numpy(float)
    if not v.size:
        return None
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {"method": CEILING_LABEL, "paper": "—", "input": "—", "dims": "—",
            METRIC_LABELS["dice"]: _fmt_ci(float(v.mean()), lo, hi, 3), "_dsc": float(v.mean())}


def paired_table(res) -> pd.DataFrame:
    """Every method against its U-Net baseline, every metric, over patients: mean difference, paired t
    and Wilcoxon."""
    from npcrepro.claims import compare

    rows = []
    present = _present(res)
    for key in present:
        base = entry(res, key).baseline
        if key == base or base not in present:
            continue
        for metric in METRICS:
            rows.append({"method": entry(res, key).label, "baseline": BY_KEY[base].label,
                         **compare(res.metrics, key, base, metric)})
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    out["metric"] = out["metric"].map(METRIC_LABELS)
    return out[["method", "baseline", "metric", "n", "mean_a", "mean_b", "mean_diff", "p_t", "p_wilcoxon"]]


def _reported_dsc(paper: str, table_method: tuple[str, str] | None) -> float:
    from npcrepro import papers

    if table_method is None:
        return math.nan
    table, method = table_method
    r = papers.reported(paper, metric="dsc", method=method)
    r = r[r["case"].isna()] if "case" in r else r
    if table and not table.startswith("Table I/"):
        exact = r[r["table"] == table]
        r = exact if len(exact) else r
    return float(r["value"].iloc[0]) if len(r) else math.nan


def silent_methods(res) -> set[str]:
    """Keys of the methods that predicted an empty mask on every test patient (untrained)."""
    t = res.metrics
    if "pred_empty" not in t:
        return set()
    empty = t["pred_empty"].astype("boolean").fillna(False).astype(bool)
    return {k for k, g in empty.groupby(t["method"]) if g.all()}


def claims_table(res) -> pd.DataFrame:
    """Each paper's comparison that the common protocol can test: the reported DSC of both methods
    and their difference (from :mod:`npcrepro.papers`), next to the common protocol's paired result
    over the test patients (seeds averaged per patient) and a verdict from :func:`npcrepro.claims.judge`
    over the claims tested: "holds" / "reversed" (Holm-adjusted Wilcoxon p < 0.05, the claimed sign or
    the other), "not shown", or "not decidable at this sample size" (even the smallest p that many
    patients allow, Holm-adjusted, is not below 0.05). A method that predicted no tumour on any test
    patient was not trained, so a claim involving it is "not tested" whatever the p-value. ``detectable
    Δ``: the difference a paired test on these patients would find with 80 % power. ``trained out?``:
    "both converged", or each side that is not with the reading of its half-to-full interval
    (:meth:`~npcrepro.engine.results.Results.convergence`): a verdict on a network still learning
    describes this budget, not the trained architecture."""
    from npcrepro.claims import compare, judge

    present = set(_present(res))
    silent = silent_methods(res)
    readings = _readings(res)
    tested = [(paper, where, b, w) for paper, where, b, w in CLAIMS if b in present and w in present]
    judged = judge([compare(res.metrics, b, w, "dice") for *_, b, w in tested])
    rows = []
    for (paper, where, better, worse), t in zip(tested, judged):
        b, w = BY_KEY[better], BY_KEY[worse]
        rep_b = _reported_dsc(paper, b.reported)
        rep_w = _reported_dsc(paper, CLAIM_REPORTED.get((paper, worse), w.reported))
        untrained = [BY_KEY[k].label for k in (better, worse) if k in silent]
        verdict = f"not tested: {' and '.join(untrained)} predicted no tumour" if untrained else t["verdict"]
        rows.append({"paper": paper, "claim": f"{b.label} > {w.label}", "where": where,
                     "reported DSC": f"{rep_b:.3f} vs {rep_w:.3f}" if math.isfinite(rep_w) else f"{rep_b:.3f}",
                     "reported Δ": f"{rep_b - rep_w:+.3f}" if math.isfinite(rep_b - rep_w) else "n/a",
                     "common protocol DSC": f"{t['mean_a']:.3f} vs {t['mean_b']:.3f}",
                     "common Δ [95% CI]": _fmt_ci(t["mean_diff"], t["diff_ci_low"], t["diff_ci_high"], 3),
                     "patients favouring": f"{t['favour_a']} vs {t['favour_b']} of {t['n']}",
                     "p (Wilcoxon)": f"{t['p_wilcoxon']:.3g}", "p (Holm)": f"{t['p_holm']:.3g}",
                     "detectable Δ": "n/a" if not math.isfinite(t["detectable"]) else f"{t['detectable']:.3f}",
                     "patients": int(t["n"]), "seeds": int(t["seeds"]), "verdict": verdict,
                     "trained out?": _trained_out(readings, better, worse)})
    return pd.DataFrame(rows)


def _readings(res) -> dict[str, str | None]:
    """Method key -> the reading of its half-to-full interval (None where no half-budget score), or
    its collapsed seeds where one is flagged."""
    conv = res.convergence()
    return ({m: f"collapsed ({c})" if c else r for m, r, c in zip(conv["method"], conv["reading"],
                                                                   conv["collapsed seeds"])}
            if len(conv) else {})


def _trained_out(readings: Mapping[str, str | None], *keys: str) -> str:
    if all(readings.get(k) is None for k in keys):
        return "not checked (no half-budget scores)"
    if all(readings.get(k) == "converged" for k in keys):
        return "both converged"
    return "; ".join(f"{BY_KEY[k].label}: {readings.get(k) or 'not checked'}" for k in keys
                     if readings.get(k) != "converged")


# ------------------------------------------------------------------------------- nnU-Net beside each paper
#: Verdicts of :func:`nnunet_table`, in the words of :data:`npcrepro.claims.VERDICTS`' order.
NNUNET_VERDICTS = {"holds": "beats nnU-Net", "reversed": "below nnU-Net", "not shown": "no difference shown"}
#: :func:`beats_nnunet`'s cell in a run without nnU-Net rows (the intro reads it as "no verdict").
NO_NNUNET_ROW = "no nnU-Net row in this run"


def nnunet_rows(res) -> list[str]:
    """Keys of the run's nnU-Net rows (:func:`.nnunet.add_to_run`)."""
    return [k for k in _present(res) if is_external(k) and entry(res, k).paper == "nnU-Net"]


def _nnunet_for(res, key: str, rows: Sequence[str]) -> str | None:
    """The nnU-Net row a book method is set beside: the one reading the same images, of the same
    dims where there is one (2D beside 2D, 3D beside 3D), else the 2D one; None when none reads them."""
    from npcrepro.chapters.leaderboard.nnunet import inputs_of

    want = inputs_of(channels_of(BY_KEY[key], res.params))
    same = [r for r in rows if res.method_info(r).get("inputs") == want]
    return next((r for r in same if entry(res, r).dims == BY_KEY[key].dims), same[0] if same else None)


def nnunet_table(res) -> pd.DataFrame:
    """Every book method beside the nnU-Net row that reads its images (:func:`_nnunet_for`): both mean
    DSCs over the test patients (seeds averaged per patient), the paired difference with its 95 % BCa
    interval, the patients favouring each, the Wilcoxon p Holm-adjusted over this family (every method
    against nnU-Net), the difference detectable at this sample size and the verdict: "beats nnU-Net" /
    "below nnU-Net" (Holm p < 0.05, either sign), "no difference shown", or "not decidable at this
    sample size". Empty when the run has no nnU-Net row."""
    from npcrepro.claims import compare, judge

    rows = nnunet_rows(res)
    pairs = [(k, n) for k in _present(res) if not is_external(k) and (n := _nnunet_for(res, k, rows))]
    if not pairs:
        return pd.DataFrame()
    judged = judge([compare(res.metrics, k, n, "dice") for k, n in pairs])
    out = []
    for (k, n), t in zip(pairs, judged):
        out.append({"method": BY_KEY[k].label, "paper": BY_KEY[k].paper, "nnU-Net row": entry(res, n).label,
                    "DSC (method vs nnU-Net)": f"{t['mean_a']:.3f} vs {t['mean_b']:.3f}",
                    "Δ DSC vs nnU-Net [95% CI]": _fmt_ci(t["mean_diff"], t["diff_ci_low"], t["diff_ci_high"], 3),
                    "patients favouring": f"{t['favour_a']} vs {t['favour_b']} of {t['n']}",
                    "p (Holm)": f"{t['p_holm']:.3g}",
                    "detectable Δ": "n/a" if not math.isfinite(t["detectable"]) else f"{t['detectable']:.3f}",
                    "beats nnU-Net?": NNUNET_VERDICTS.get(t["verdict"], t["verdict"])})
    return pd.DataFrame(out)


def beats_nnunet(res, key: str, table: pd.DataFrame | None = None) -> str:
    """One cell for ``key``: "beats nnU-Net: 0.012 [0.004, 0.030]" (the verdict and the paired DSC
    difference with its interval), or why there is no answer."""
    t = nnunet_table(res) if table is None else table
    if not len(t):
        return NO_NNUNET_ROW
    row = t[t["method"] == BY_KEY[key].label]
    if not len(row):
        return "no nnU-Net row reads its images"
    return f"{row.iloc[0]['beats nnU-Net?']}: {row.iloc[0]['Δ DSC vs nnU-Net [95% CI]']}"


def headline_table(res) -> pd.DataFrame:
    """Each paper's proposed method: reported DSC (its own data) and the common protocol's mean DSC
    with 95% CI, side by side, and whether it beats nnU-Net on the same patients (:func:`beats_nnunet`)."""
    s = summary(res).set_index(["method", "metric"])
    versus = nnunet_table(res)
    rows = []
    for paper, key in PROPOSED.items():
        m = BY_KEY[key]
        if (key, "dice") not in s.index:
            continue
        r = s.loc[(key, "dice")]
        rows.append({"paper": paper, "method": m.label, "reported DSC": _reported_dsc(paper, m.reported),
                     "reported where": m.reported[0] if m.reported else "",
                     "common protocol DSC [95% CI]": _fmt_ci(r["mean"], r["ci_low"], r["ci_high"], 3),
                     "beats nnU-Net? Δ DSC [95% CI]": beats_nnunet(res, key, versus)})
    return pd.DataFrame(rows)


def reading(res) -> str:
    """A few sentences on the run, computed from it: the best and worst method, how each paper's
    method fared against its baseline and how many claims held."""
    s = summary(res)
    d = s[s["metric"] == "dice"].set_index("method")["mean"].sort_values(ascending=False)
    best, worst = d.index[0], d.index[-1]
    lines = [f"On {len(res.test_cases())} test patients ({res.source}), {entry(res, best).label} had the "
             f"highest mean DSC ({d.iloc[0]:.3f}) and {entry(res, worst).label} the lowest ({d.iloc[-1]:.3f})."]
    better = worse = same = 0
    tests = [p for k, p in _baseline_tests(res).items() if not is_external(k)]
    for p in tests:
        if math.isfinite(p["p_holm"]) and p["p_holm"] < 0.05:
            better += p["mean_diff"] > 0
            worse += p["mean_diff"] < 0
        else:
            same += 1
    lines.append(f"Against the U-Net that sees the same images, {better} method(s) were better, {worse} worse "
                 f"and {same} not distinguishable (Wilcoxon p < 0.05 after Holm's correction over "
                 f"{better + worse + same} tests).")
    if tests and len(tests) * min(p["min_p"] for p in tests) >= 0.05:
        n, k = max(p["n"] for p in tests), len(tests)
        word = "test" if k == 1 else "tests"
        lines.append(f"With {n} test patients and {k} {word} no method could have been told from its "
                     f"baseline: the smallest Wilcoxon p over {n} patients, Holm-adjusted for {k} {word}, "
                     f"is {k * min(p['min_p'] for p in tests):.3f} (not decidable at this sample size; "
                     f"{patients_needed(k)} patients would be needed).")
    versus = nnunet_table(res)
    if len(versus):
        mine = versus[versus["method"].isin([BY_KEY[k].label for k in PROPOSED.values()])]["beats nnU-Net?"]
        counts = ", ".join(f"{int((mine == v).sum())} {v}" for v in dict.fromkeys(mine))
        lines.append(f"Beside nnU-Net trained by its own pipeline on the same patients and images ({len(versus)} "
                     f"methods set beside it, Holm-adjusted together), of the papers' {len(mine)} proposed "
                     f"method(s): {counts}.")
    empty = silent_methods(res)
    silent = [entry(res, k).label for k in _present(res) if k in empty]
    if silent:
        lines.append(f"{', '.join(silent)} predicted no tumour on any test patient: "
                     "not trained enough at this budget, which says nothing about the architecture.")
    c = claims_table(res)
    if len(c):
        held, rev = int((c["verdict"] == "holds").sum()), int((c["verdict"] == "reversed").sum())
        untested = int(c["verdict"].str.startswith("not tested").sum())
        undecidable = int((c["verdict"] == "not decidable at this sample size").sum())
        lines.append(f"Testable claims of the papers: {len(c)}, judged over {int(c['patients'].max())} test "
                     f"patients; held: {held}, reversed: {rev}, "
                     f"not shown: {len(c) - held - rev - untested - undecidable}, "
                     f"not decidable at this sample size: {undecidable}, "
                     f"not tested (a method predicted nothing): {untested}.")
        sides = [part for cell in c["trained out?"] for part in cell.split("; ")]
        learning = list(dict.fromkeys(p.rsplit(": ", 1)[0] for p in sides if p.endswith(": still learning")))
        k = int(c["trained out?"].str.contains(": still learning", regex=False).sum())
        if k:
            lines.append(f"{k} of these verdicts involve{'s' if k == 1 else ''} a network still learning at "
                         f"this budget ({', '.join(learning)}: {'its' if len(learning) == 1 else 'their'} DSC "
                         "rose by more than 0.03 over the second half of the budget, the whole 95 % interval "
                         "above 0.03), so "
                         f"{'it says' if k == 1 else 'they say'} how the networks compare after this budget, "
                         "not fully trained.")
    return " ".join(lines)


def timing_table(res) -> pd.DataFrame:
    """Per method and seed: parameters, iterations, status, final loss, training seconds and the whole
    job's seconds (training, inference and scoring)."""
    f = res.training.copy()
    f["method"] = f["method"].map(lambda k: BY_KEY[k].label)
    for c in ("train_seconds", "job_seconds"):
        f[c] = f[c].round(1)
    cols = ["method", "seed", "parameters", "iterations", "status", "final_loss", "train_seconds", "job_seconds"]
    return f[[c for c in cols if c in f]]


# ----------------------------------------------------------------------------------- figures
_PALETTE = {"baseline": "#7f7f7f", "li2018": "#1f77b4", "xue2020": "#ff7f0e", "luo2020": "#2ca02c",
            "guo2021": "#d62728", "chen2020": "#9467bd"}


def fig_leaderboard(res, metrics: Sequence[str] = ("dice", "hd95")):
    """Per-patient dots and mean with 95% bootstrap CI per method, one panel per metric."""
    import matplotlib.pyplot as plt

    s = summary(res)
    order = s[s["metric"] == "dice"].sort_values("mean")["method"].tolist()
    t = res.metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 0.42 * len(order) + 1.4),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, key in enumerate(order):
            m = entry(res, key)
            v = pd.to_numeric(t.loc[t["method"] == key, metric], errors="coerce")
            v = v[np.isfinite(v)]
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(v))
            color = _PALETTE.get(m.paper, "k")
            ax.scatter(v, i + jitter, s=10, color=color, alpha=0.45, lw=0)
            r = s[(s["method"] == key) & (s["metric"] == metric)].iloc[0]
            if math.isfinite(r["mean"]):
                ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]],
                            fmt="o", color=color, capsize=3, ms=5)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([entry(res, k).label for k in order], fontsize=8)
        ax.set_xlabel(METRIC_LABELS[metric])
        ax.grid(axis="x", alpha=0.3)
        if metric == "dice":
            ax.set_xlim(-0.02, 1.0)
            ceiling = res.ceiling(res.structures[0])
            if ceiling is not None:
                ax.axvline(ceiling, color="k", ls=":", lw=1)
                ax.text(ceiling, len(order) - 0.4, " raters", fontsize=7, va="bottom")
    axes[0][0].set_title(f"{res.source}: {len(res.test_cases())} test patients, {res.structures[0]}",
                         fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def fig_cases(res, n: int = 3, keys: Sequence[str] | None = None):
    """The tumour's largest axial slice of ``n`` test patients (lowest, median, highest mean DSC) with
    the reference (white) and each method's contour."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    structure = res.structures[0]
    book = [k for k in _present(res) if not is_external(k)]
    keys = list(keys or [k for k in book if BY_KEY[k].paper != "baseline"][:6] or book)  # or: baselines only
    per_case = res.metrics.groupby("case")["dice"].mean().sort_values()
    picks = list(dict.fromkeys([per_case.index[0], per_case.index[len(per_case) // 2], per_case.index[-1]]))[:n]
    channel = channels_of(BY_KEY[keys[0]], res.params)[-1]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 3.7), squeeze=False)
    for ax, name in zip(axes[0], picks):
        case = res.load_case(name, channels=[channel], structures=[structure])
        ref = case.labels.get(structure, np.zeros(case.shape, bool))
        z = int(np.argmax(ref.sum(axis=(1, 2))))
        img = case.images[channel][z]
        ys, xs = np.nonzero(ref[z]) if ref[z].any() else (np.array([0, img.shape[0] - 1]), np.array([0, img.shape[1] - 1]))
        pad = 18
        box = (slice(max(0, ys.min() - pad), ys.max() + pad), slice(max(0, xs.min() - pad), xs.max() + pad))
        lo, hi = np.percentile(img[box], [1, 99])
        ax.imshow(img[box], cmap="gray", vmin=lo, vmax=hi)
        ax.contour(ref[z][box], levels=[0.5], colors="white", linewidths=1.6)
        for k, key in enumerate(keys):
            pred = res.prediction(key, name, structure)
            if pred is not None and pred[z][box].any():
                ax.contour(pred[z][box], levels=[0.5], colors=[cmap(k)], linewidths=1.0)
        ax.set_title(f"{name}: mean DSC {per_case[name]:.2f} (slice {z})", fontsize=9)
        ax.axis("off")
    handles = [Line2D([], [], color="white", lw=1.6, label="reference")] + [
        Line2D([], [], color=cmap(k), lw=1.0, label=BY_KEY[key].label) for k, key in enumerate(keys)]
    leg = fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8,
                     facecolor="0.2", labelcolor="white")
    leg.get_frame().set_alpha(0.9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
