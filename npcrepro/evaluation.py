"""Per-case tables, summaries, paired tests, and the paper-vs-reproduced table.

* :func:`evaluate_cases` - predictions + reference cases -> one row per (case, structure), metrics from
  :func:`npcrepro.metrics.evaluate_case` (spacing-aware, empty-mask flags).
* :func:`scored` - the rows of a per-case table that count in a mean: a structure absent from a
  patient's reference is not scored (OpenKBP patients without a larynx or a PTV63).
* :func:`summarize` - mean ± sd, median, percentile-bootstrap 95% CI of the mean, n, and how many rows
  were flagged empty (prediction or reference), per metric (and per group).
* :func:`paired_test` / :func:`paired_tests` - paired t-test and Wilcoxon signed-rank test between two
  methods on the same cases (scipy.stats), as xue2020 reports.
* :func:`compare_with_paper` - reported numbers (from ``npcrepro.papers``: a DataFrame with columns
  paper, table, method, metric, value, sd (optional), ref) next to this run's numbers; every cell says
  whether it is reported or reproduced, and the caption names the data source and profile.
* :func:`compare_run` - the same for a run: its paper's numbers beside its per-case table,
  captioned with :func:`data_source` (what the run read) and its profile.
* :func:`format_mean_sd` - "0.89 ± 0.05".
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from npcrepro import papers
from npcrepro.errors import DataError, ParameterError

__all__ = ["evaluate_cases", "scored", "average_seeds", "PATIENT_KEYS", "FLAG_COLUMNS", "summarize", "bootstrap_ci",
           "holm", "paired_test", "paired_tests", "compare_with_paper", "compare_run", "data_source", "ComparisonTable",
           "format_mean_sd", "METRIC_ALIASES", "canonical_metric", "NON_METRIC_COLUMNS", "rater_agreement",
           "ceiling_sentence", "raters_of", "RATER_COLUMNS"]

#: Columns of a per-case table that are identifiers or flags, not metrics.
NON_METRIC_COLUMNS = {"case", "structure", "method", "fold", "seed", "paper", "profile", "data",
                      "pred_empty", "ref_empty", "split", "rater"}

#: Paper spellings -> the metric keys of :func:`npcrepro.metrics.evaluate_case`.
METRIC_ALIASES = {
    "dsc": "dice", "dice": "dice", "dice_coefficient": "dice",
    "jsc": "jaccard", "ji": "jaccard", "jaccard": "jaccard", "iou": "jaccard",
    "precision": "precision", "ppv": "precision",
    "recall": "recall", "sensitivity": "recall", "tpr": "recall",
    "f1": "f1", "hd": "hd", "hd95": "hd95", "asd": "assd", "assd": "assd", "nsd": "nsd",
    "auc": "auc", "ap": "ap", "soft_dice": "soft_dice",
    "pm": "percent_match", "percent_match": "percent_match",
    "cr": "corresponding_ratio", "corresponding_ratio": "corresponding_ratio",
}


def canonical_metric(name: str) -> str:
    """``"DSC"`` -> ``"dice"`` etc. (unknown names are lower-cased and returned as they are)."""
    return METRIC_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())


# ---------------------------------------------------------------------------------- formatting
def format_mean_sd(mean: float | None, sd: float | None = None, digits: int = 2, unit: str = "",
                   *, missing: str = "—") -> str:
    """``format_mean_sd(0.8912, 0.051)`` -> ``"0.89 ± 0.05"``; with ``unit="mm"`` -> ``"3.40 ± 2.00 mm"``.
    None/NaN mean gives ``missing``; a None/NaN sd is left out."""
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return missing
    text = f"{mean:.{digits}f}"
    if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
        text += f" ± {sd:.{digits}f}"
    return f"{text} {unit}" if unit else text


# ---------------------------------------------------------------------------------- per-case table
def evaluate_cases(predictions: Mapping[str, Mapping[str, np.ndarray]], cases, *,
                   probabilities: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                   method: str | None = None, extra: Mapping | None = None) -> pd.DataFrame:
    """One row per (case, structure).

    Parameters
    ----------
    predictions : {case name: {structure: bool mask (z, y, x)}} on each case's original grid.
    cases : mapping name -> Case, or iterable of Case (the reference masks and spacing).
    probabilities : same layout, optional (adds AUC, AP, soft Dice).
    method : str, optional
        Added as a ``method`` column.
    extra : dict, optional
        Constant columns (e.g. ``{"fold": 0}``).
    """
    from npcrepro import metrics

    by_name = dict(cases) if isinstance(cases, Mapping) else {c.name: c for c in cases}
    rows = []
    for name, per_structure in predictions.items():
        if name not in by_name:
            raise DataError(f"evaluate_cases: prediction for unknown case {name!r}")
        case = by_name[name]
        for structure, pred in per_structure.items():
            pred = np.asarray(pred, bool)
            ref = case.labels.get(structure)
            ref = np.zeros(case.shape, bool) if ref is None else np.asarray(ref, bool)
            if pred.shape != ref.shape:
                raise DataError(f"case {name}, {structure}: prediction shape {pred.shape} differs from "
                                f"the reference {ref.shape} (map predictions back to the case grid)")
            prob = None
            if probabilities is not None and name in probabilities and structure in probabilities[name]:
                prob = probabilities[name][structure]
            res = metrics.evaluate_case(pred, ref, case.spacing, prob=prob)
            row = {"case": name, "structure": structure}
            if method is not None:
                row["method"] = method
            row.update(extra or {})
            row.update(res)
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- summaries
def scored(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-case ``table`` whose reference has the structure (``ref_empty`` false; every
    row when the table has no such column): the rows every mean in the book is taken over."""
    if "ref_empty" not in table:
        return table
    return table[~table["ref_empty"].astype(bool)]


#: The columns that name one score of one patient apart from its seed (those a table has).
PATIENT_KEYS = ("method", "fold", "case", "structure")
#: Per-case flags: a patient's flag holds when it held for any of its seeds.
FLAG_COLUMNS = ("pred_empty", "ref_empty")


def average_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """A per-case ``table`` with one row per method, fold, patient (``case``) and structure: the rows
    of the seeds averaged (numbers: the mean; flags such as ``pred_empty``: true when true for any seed;
    other columns and ``seed``: the first seed's) and ``seeds``, how many were averaged. Seeds are
    repeated trainings on the same patients, not more patients, so a mean ± sd or a count of patients
    is taken over these rows. A table with one seed (or none) comes back as it is."""
    if "seed" not in table or table["seed"].nunique() <= 1:
        return table.reset_index(drop=True)
    keys = [c for c in PATIENT_KEYS if c in table]
    flags = [c for c in table.columns if c not in keys and (c in FLAG_COLUMNS or pd.api.types.is_bool_dtype(table[c]))]
    t = table.assign(**{c: table[c].astype("boolean").fillna(False).astype(bool) for c in flags})
    how = {c: ("any" if c in flags else "mean" if pd.api.types.is_numeric_dtype(t[c]) and c != "seed" else "first")
           for c in t.columns if c not in keys}
    g = t.sort_values("seed", kind="stable").groupby(keys, sort=False, dropna=False)
    out = g.agg(how).join(g["seed"].nunique().rename("seeds")).reset_index()
    return out[[*table.columns, "seeds"]]


def bootstrap_ci(values: Sequence[float], *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0,
                 statistic=np.mean, method: str = "BCa") -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic`` (default the mean) with
    :func:`scipy.stats.bootstrap`: ``method`` "BCa" (bias-corrected and accelerated, the default),
    "percentile" or "basic". NaNs are dropped; one value, or values that are all equal, give
    (v, v); none gives (nan, nan)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1 or np.all(v == v[0]):
        s = float(statistic(v))
        return (s, s)
    res = stats.bootstrap((v,), lambda x, axis=-1: statistic(x, axis=axis), confidence_level=ci,
                          n_resamples=n_boot, method=method, random_state=np.random.default_rng(seed),
                          vectorized=True)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa undefined (degenerate resamples)
        return bootstrap_ci(v, ci=ci, n_boot=n_boot, seed=seed, statistic=statistic, method="percentile")
    return lo, hi


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given; NaNs stay NaN and do not count).

    The k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def _metric_columns(df: pd.DataFrame, metrics: Iterable[str] | None, by: Sequence[str]) -> list[str]:
    if metrics is not None:
        metrics = list(metrics)
        missing = [m for m in metrics if m not in df.columns]
        if missing:
            raise ParameterError(f"metrics {missing} not in the table (columns: {list(df.columns)})")
        return metrics
    return [c for c in df.columns if c not in NON_METRIC_COLUMNS and c not in by
            and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def summarize(table: pd.DataFrame, metrics: Iterable[str] | None = None, by: str | Sequence[str] | None = None,
              *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Summary per metric (and per ``by`` group): n, mean, sd (ddof 1), median, q1, q3, ci_low,
    ci_high (BCa bootstrap of the mean, :func:`bootstrap_ci`), n_nonfinite (values left out: NaN/inf,
    e.g. distances to an empty mask), n_empty (rows flagged ``pred_empty`` or ``ref_empty``) and
    n_failed (an empty prediction where the reference is not empty: a failed patient)."""
    if table is None or len(table) == 0:
        raise DataError("summarize: empty table")
    by = [by] if isinstance(by, str) else list(by or [])
    cols = _metric_columns(table, metrics, by)
    flags = {f: (table[f].fillna(False).astype(bool).to_numpy() if f in table.columns
                 else np.zeros(len(table), bool)) for f in ("pred_empty", "ref_empty")}
    t = table.assign(_empty=flags["pred_empty"] | flags["ref_empty"],
                     _failed=flags["pred_empty"] & ~flags["ref_empty"])
    groups = t.groupby(by, sort=True, dropna=False) if by else [((), t)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in cols:
            raw = pd.to_numeric(g[m], errors="coerce").to_numpy(float)
            v = raw[np.isfinite(raw)]
            lo, hi = bootstrap_ci(v, ci=ci, n_boot=n_boot, seed=seed)
            rows.append({**dict(zip(by, key)), "metric": m, "n": int(v.size),
                         "mean": float(v.mean()) if v.size else math.nan,
                         "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
                         "median": float(np.median(v)) if v.size else math.nan,
                         "q1": float(np.percentile(v, 25)) if v.size else math.nan,
                         "q3": float(np.percentile(v, 75)) if v.size else math.nan,
                         "ci_low": lo, "ci_high": hi,
                         "n_nonfinite": int(raw.size - v.size), "n_empty": int(g["_empty"].sum()),
                         "n_failed": int(g["_failed"].sum())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- paired tests
def paired_test(a, b, metric: str | None = None, *, on: str | Sequence[str] = ("case", "structure"),
                alternative: str = "two-sided", n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` vs ``b`` on the same cases.

    ``a``, ``b``: per-case tables (joined on the ``on`` columns that both have; ``metric`` names the
    column), or equal-length sequences of paired values. Pairs with a non-finite value are dropped.
    Returns n, mean_a, mean_b, mean_diff (a - b), diff_ci_low and diff_ci_high (BCa bootstrap 95%
    CI of the mean difference), sd_diff, t, p_t, w, p_wilcoxon.
    """
    from scipy import stats

    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        if metric is None:
            raise ParameterError("paired_test on tables needs metric=")
        keys = [k for k in ([on] if isinstance(on, str) else list(on)) if k in a.columns and k in b.columns]
        if not keys:
            raise ParameterError(f"paired_test: no common key column among {on}")
        m = a[keys + [metric]].merge(b[keys + [metric]], on=keys, suffixes=("_a", "_b"), validate="1:1")
        if len(m) < len(a) or len(m) < len(b):
            missing = len(a) + len(b) - 2 * len(m)
            raise DataError(f"paired_test: {missing} row(s) have no partner (the methods must be "
                            "evaluated on the same cases)")
        x, y = m[f"{metric}_a"].to_numpy(float), m[f"{metric}_b"].to_numpy(float)
    else:
        x, y = np.asarray(a, float), np.asarray(b, float)
        if x.shape != y.shape:
            raise DataError(f"paired_test: {x.size} vs {y.size} values")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = x - y
    out = {"metric": metric, "n": int(x.size), "mean_a": float(x.mean()) if x.size else math.nan,
           "mean_b": float(y.mean()) if y.size else math.nan,
           "mean_diff": float(d.mean()) if d.size else math.nan,
           "diff_ci_low": math.nan, "diff_ci_high": math.nan,
           "sd_diff": float(d.std(ddof=1)) if d.size > 1 else math.nan,
           "t": math.nan, "p_t": math.nan, "w": math.nan, "p_wilcoxon": math.nan}
    if x.size >= 2:
        out["diff_ci_low"], out["diff_ci_high"] = bootstrap_ci(d, n_boot=n_boot, seed=seed)
        if np.all(d == d[0]):  # zero variance of differences: t undefined
            out["p_t"] = 1.0 if d[0] == 0 else 0.0
        else:
            r = stats.ttest_rel(x, y, alternative=alternative)
            out["t"], out["p_t"] = float(r.statistic), float(r.pvalue)
        if np.any(d != 0):
            r = stats.wilcoxon(x, y, alternative=alternative)
            out["w"], out["p_wilcoxon"] = float(r.statistic), float(r.pvalue)
        else:
            out["w"], out["p_wilcoxon"] = 0.0, 1.0
    return out


def paired_tests(table: pd.DataFrame, method_a: str, method_b: str, metrics: Iterable[str] | None = None,
                 *, method_col: str = "method", on: Sequence[str] = ("case", "structure")) -> pd.DataFrame:
    """:func:`paired_test` for every metric between two methods of one long table."""
    if method_col not in table.columns:
        raise ParameterError(f"paired_tests: no {method_col!r} column")
    a, b = table[table[method_col] == method_a], table[table[method_col] == method_b]
    for name, part in ((method_a, a), (method_b, b)):
        if part.empty:
            raise ParameterError(f"paired_tests: no rows for method {name!r} "
                                 f"(methods: {sorted(table[method_col].unique())})")
    cols = _metric_columns(table, metrics, [method_col, *on])
    rows = [paired_test(a, b, m, on=on) for m in cols]
    df = pd.DataFrame(rows)
    df.insert(0, "method_b", method_b)
    df.insert(0, "method_a", method_a)
    return df


# ---------------------------------------------------------------------------------- paper vs reproduced
@dataclass
class ComparisonTable:
    """Reported vs reproduced numbers. ``frame``: display strings, index (metric, method), columns
    ``reported`` and ``reproduced``, each cell ending in "(reported)" or "(reproduced)"; ``numbers``:
    the numeric values and sources; ``caption``: data source, profile, and where the reported
    numbers come from."""

    frame: pd.DataFrame
    numbers: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)

    def _repr_html_(self) -> str:
        body = self.frame.to_html(escape=True, index=not isinstance(self.frame.index, pd.RangeIndex))
        return (f"<div><p style='font-style:italic'>{html.escape(self.caption)}</p>{body}"
                + "".join(f"<p><small>{html.escape(n)}</small></p>" for n in self.notes) + "</div>")

    def to_markdown(self) -> str:
        positional = isinstance(self.frame.index, pd.RangeIndex)
        idx_names = [] if positional else list(self.frame.index.names)
        head = idx_names + list(self.frame.columns)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, row in self.frame.iterrows():
            key = () if positional else key if isinstance(key, tuple) else (key,)
            lines.append("| " + " | ".join([str(k) for k in key] + [str(v) for v in row]) + " |")
        return f"*{self.caption}*\n\n" + "\n".join(lines) + "".join(f"\n\n{n}" for n in self.notes)

    def __str__(self) -> str:
        return f"{self.caption}\n{self.frame.to_string()}"

    __repr__ = __str__


def compare_with_paper(reported: pd.DataFrame, reproduced: pd.DataFrame, *, paper: str,
                       data_source: str, profile: str, table: str | None = None,
                       method_map: Mapping[str, str] | None = None,
                       metric_map: Mapping[str, str] | None = None, metrics: Sequence[str] | None = None,
                       digits: int = 2, units: Mapping[str, str] | None = None,
                       method_col: str = "method", default_method: str | None = None) -> ComparisonTable:
    """Build the paper-vs-reproduced table.

    Parameters
    ----------
    reported : DataFrame with columns paper, table, method, metric, value, sd (optional), ref
        The transcribed numbers (rows of other papers/tables are ignored).
    reproduced : DataFrame
        This run's per-case table: one column per metric (``dice``, ``hd`` ...) and a ``method`` column
        (or pass ``default_method`` to name the single method it holds).
    method_map : {reported method name: reproduced method name}
        Which reproduced method stands for which reported one (default: same name).
    metric_map : {reported metric name: per-case column}
        Overrides :data:`METRIC_ALIASES` (e.g. li2018's "recall" column is TP/(TP+FP), i.e.
        ``precision``).
    metrics : reported metric names to keep (default all of the paper/table).
    units : {reported metric name: unit} for display (e.g. ``{"HD": "mm"}``).
    """
    need = {"paper", "method", "metric", "value"}
    if not need <= set(reported.columns):
        raise DataError(f"reported numbers need columns {sorted(need)} (+ table, sd, ref); got "
                        f"{list(reported.columns)}")
    rep = reported[reported["paper"] == paper]
    if "case" in rep.columns:  # per-patient rows (li2018 Table 2) are not summary numbers
        rep = rep[rep["case"].isna()]
    if table is not None and "table" in rep.columns:
        rep = rep[rep["table"].astype(str) == str(table)]
    if metrics is not None:
        keep = {str(m).lower() for m in metrics}
        rep = rep[rep["metric"].astype(str).str.lower().isin(keep)]
    if rep.empty:
        raise DataError(f"no reported numbers for paper {paper!r}" + (f", table {table!r}" if table else ""))
    repro = reproduced.copy()
    if method_col not in repro.columns:
        if default_method is None:
            raise ParameterError("reproduced table has no 'method' column; pass default_method=")
        repro[method_col] = default_method
    method_map = dict(method_map or {})
    metric_map = {str(k).lower(): v for k, v in (metric_map or {}).items()}
    units = {str(k).lower(): v for k, v in (units or {}).items()}
    rows, nums, refs = [], [], set()
    for _, r in rep.iterrows():
        metric, method = str(r["metric"]), str(r["method"])
        col = metric_map.get(metric.lower(), canonical_metric(metric))
        target = method_map.get(method, method)
        sd = r.get("sd") if "sd" in rep.columns else None
        sd = None if sd is None or (isinstance(sd, float) and math.isnan(sd)) else float(sd)
        unit = units.get(metric.lower(), "")
        if not unit and "unit" in rep.columns and isinstance(r.get("unit"), str):
            unit = r["unit"]
        ref = str(r["ref"]) if "ref" in rep.columns and pd.notna(r.get("ref")) else (
            str(r["table"]) if "table" in rep.columns else "")
        if ref:
            refs.add(ref)
        mean_r = sd_r = None
        n = 0
        sel = repro[repro[method_col] == target] if target in set(repro[method_col]) else None
        if sel is not None and col in sel.columns:
            v = pd.to_numeric(sel[col], errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            n = int(v.size)
            if n:
                mean_r = float(v.mean())
                sd_r = float(v.std(ddof=1)) if n > 1 else None
        rows.append({"metric": metric, "method": method,
                     "reported": f"{format_mean_sd(float(r['value']), sd, digits, unit)} (reported)",
                     "reproduced": (f"{format_mean_sd(mean_r, sd_r, digits, unit)} (reproduced)"
                                    if mean_r is not None else "— (not reproduced)")})
        nums.append({"metric": metric, "method": method, "reported_mean": float(r["value"]),
                     "reported_sd": sd, "reproduced_mean": mean_r, "reproduced_sd": sd_r,
                     "reproduced_n": n, "reproduced_method": target if mean_r is not None else None,
                     "column": col, "ref": ref})
    frame = pd.DataFrame(rows).set_index(["metric", "method"])
    numbers = pd.DataFrame(nums)
    n_cases = int(repro["case"].nunique()) if "case" in repro.columns else int(numbers["reproduced_n"].max())
    where = "; ".join(sorted(refs)) if refs else "the paper"
    caption = (f"{paper}: values reported in the paper ({where}) next to values reproduced by this run "
               f"on {data_source} data, {profile} profile, n = {n_cases} case(s). Cells marked "
               f"'reported' are transcribed from the paper; cells marked 'reproduced' are computed here.")
    return ComparisonTable(frame, numbers, caption)


#: Columns of :func:`rater_agreement` (a run's ``raters.csv``).
RATER_COLUMNS = ["case", "structure", "raters", "pairwise_dice", "rater_vs_reference"]


def raters_of(structure: str, structures: Iterable[str]) -> list[str]:
    """The raters' versions of ``structure`` a dataset holds (``GTVp_rater1``, ``GTVp_rater2``...)."""
    prefix = f"{structure}_rater"
    return sorted((s for s in structures if s.startswith(prefix) and s[len(prefix):].isdigit()),
                  key=lambda s: int(s[len(prefix):]))


def rater_agreement(dataset, cases: Iterable[str], structures: Iterable[str],
                    part: Callable[[Any], Any] | None = None) -> pd.DataFrame:
    """The inter-rater ceiling beside a run's networks: for each case and each of ``structures`` that
    the dataset also holds as two or more raters' contours (:func:`raters_of`), the raters' mean
    pairwise DSC and their mean DSC against the reference (``structure`` itself, their consensus on
    the phantom), over ``part(case)`` (the part of the loaded case the networks are scored on: some
    slices, say; default the whole case). Columns :data:`RATER_COLUMNS`; no row for a case or
    structure without raters."""
    from npcrepro.metrics.consensus import agreement

    rows = []
    for structure in structures:
        names = raters_of(structure, dataset.structures)
        if len(names) < 2:
            continue
        for case in cases:
            c = dataset.load(case, channels=dataset.channels[:1], structures=[structure, *names])
            c = part(c) if part is not None else c
            drawn = [c.labels[n] for n in names if n in c.labels]
            if len(drawn) < 2 or structure not in c.labels:
                continue
            rows.append({"case": case, "structure": structure, "raters": len(drawn),
                         **agreement(drawn, c.labels[structure])})
    return pd.DataFrame(rows, columns=RATER_COLUMNS)


def data_source(results, detail: str = "") -> str:
    """What a run (:class:`~npcrepro.engine.results.Results`) read, for captions: "digital phantom
    (cpu preset, 40 cases, evaluation cohort)" or "dataset openkbp-subset (4 held-out test
    patients)" (the folder's name, not the path on the machine that ran it), with ``detail`` (a
    channel, a frame ...) added in the brackets."""
    P = results.params
    if results.data_label == "phantom":
        head = "digital phantom"
        parts = [f"{P.get('phantom_preset')} preset", *([f"{P['n_cases']} cases"] if P.get("n_cases") else []),
                 f"{results.cohort} cohort"]
    else:
        head = f"dataset {Path(str(results.data)).name or results.data}"
        parts = [f"{results.held_out} held-out test patients"] if results.held_out else []
    parts += [detail] if detail else []
    return head + (f" ({', '.join(parts)})" if parts else "")


def compare_run(results, rows: pd.DataFrame, *, table: str, reported: pd.DataFrame | None = None,
                detail: str = "", **kwargs) -> ComparisonTable:
    """:func:`compare_with_paper` for a run: the numbers its paper (``results.chapter``) reports in
    ``table`` (or the rows ``reported`` of them) beside the run's per-case ``rows``, captioned with
    :func:`data_source` (``detail``) and the run's profile; seeds averaged per patient first
    (:func:`average_seeds`). ``kwargs``: ``method_map``,
    ``metric_map``, ``metrics``, ``digits`` ... of :func:`compare_with_paper`."""
    rep = papers.reported(results.chapter, table=table) if reported is None else reported
    out = compare_with_paper(rep, average_seeds(rows), paper=results.chapter, data_source=data_source(results, detail),
                             profile=results.profile, table=table, **kwargs)
    ceiling = ceiling_sentence(results)
    return ComparisonTable(out.frame, out.numbers, f"{out.caption} {ceiling}" if ceiling else out.caption,
                           out.notes)


def ceiling_sentence(results, structure: str = "GTVp") -> str:
    """The inter-rater ceiling beside a run's networks, as a sentence from its ``raters.csv``
    (:func:`rater_agreement`): how many test patients, how many raters, their mean pairwise DSC and
    their mean DSC against the consensus the networks are scored against. "" where the run's data
    has no raters of ``structure``."""
    r = getattr(results, "raters", None)
    if r is None or not len(r) or not len(r := r[r["structure"] == structure]):
        return ""
    return (f"Inter-rater ceiling on these {len(r)} test patients: the data's {int(r['raters'].max())} raters "
            f"of {structure} agree at a mean pairwise DSC of {r['pairwise_dice'].mean():.2f}, and each "
            f"with their consensus (the reference) at {r['rater_vs_reference'].mean():.2f}.")
