"""Claims judged with the patient as the unit: one module for every chapter and the leaderboard.

A paper's claim is a comparison of two methods on the same test patients. It is judged here, the same
way on every page:

1. :func:`per_patient`: a method's rows of one patient (structures, seeds, folds, rounds) are averaged
   first, so that a patient counts once however often it was scored. Seeds are repeated trainings on
   the same patients, not more patients: differences, intervals and tests run over patients.
2. :func:`compare`: two methods over the patients both were scored on: the mean difference with its
   BCa bootstrap interval, the paired t and Wilcoxon signed-rank p-values
   (:func:`npcrepro.evaluation.paired_test`), how many patients favour each side, the smallest
   p-value a two-sided Wilcoxon test can give with that many patients (:func:`min_wilcoxon_p`), and
   the difference a paired test at that size detects with 80 % power (:func:`detectable_difference`).
3. :func:`judge`: the claims of one page as a family, Holm-adjusted together, each with one verdict
   (:data:`VERDICTS`): "holds" or "reversed" when its Holm-adjusted Wilcoxon p is below 0.05 (the
   claimed sign or the other), "not shown" when it could have been decided and was not, and "not
   decidable at this sample size" when even the smallest p the test can give, Holm-adjusted for the
   family, is not below 0.05: with 5 patients a Wilcoxon p is never below 0.0625, so no ranking of
   five patients' means decides anything.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from npcrepro.errors import DataError
from npcrepro.evaluation import holm, paired_test

__all__ = ["ALPHA", "POWER", "VERDICTS", "per_patient", "min_wilcoxon_p", "detectable_difference",
           "compare", "judge", "patients_needed", "against_reference", "reference_sentence", "format_p"]

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("holds", "reversed", "not shown", "not decidable at this sample size")


def per_patient(table: pd.DataFrame, metric: str = "dice", *, method_col: str = "method",
                patient: str = "case") -> pd.DataFrame:
    """One row per (method, patient): the mean of ``metric`` over the patient's finite rows (its
    structures, seeds, folds), and ``rows``, how many were averaged."""
    for col in (method_col, patient, metric):
        if col not in table.columns:
            raise DataError(f"per_patient: the table has no {col!r} column (has {list(table.columns)})")
    t = table[[method_col, patient]].assign(_v=pd.to_numeric(table[metric], errors="coerce"))
    t = t[np.isfinite(t["_v"])]
    g = t.groupby([method_col, patient], sort=True)["_v"]
    return pd.DataFrame({metric: g.mean(), "rows": g.size()}).reset_index()


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value of an exact Wilcoxon signed-rank test on ``n`` pairs,
    2 / 2**n (every difference of one sign): 0.0625 for 5 patients, 0.03125 for 6; 1 for none."""
    return 1.0 if n < 1 else min(1.0, 2.0 / 2.0 ** int(n))


def patients_needed(family: int = 1, alpha: float = ALPHA) -> int:
    """The fewest patients with which a two-sided Wilcoxon test, Holm-adjusted over ``family`` claims,
    can reach ``alpha`` at all."""
    n = 1
    while family * min_wilcoxon_p(n) >= alpha:
        n += 1
    return n


def detectable_difference(sd_diff: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true mean paired difference that a two-sided paired test at ``alpha`` detects with
    probability ``power`` on ``n`` patients whose differences have standard deviation ``sd_diff``:
    (z_{1-alpha/2} + z_power) sd / sqrt(n) (normal approximation; NaN below 2 patients)."""
    from scipy.stats import norm

    if n < 2 or not math.isfinite(sd_diff):
        return math.nan
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd_diff / math.sqrt(n))


def compare(table: pd.DataFrame, a: str, b: str, metric: str = "dice", *, method_col: str = "method",
            patient: str = "case", n_boot: int = 2000, seed: int = 0) -> dict:
    """Methods ``a`` and ``b`` of one long per-case table compared over the patients both were scored
    on (each patient's rows averaged first, :func:`per_patient`).

    Returns :func:`~npcrepro.evaluation.paired_test`'s keys (n patients, mean_a, mean_b, mean_diff =
    a - b, diff_ci_low/high, sd_diff, p_t, p_wilcoxon) and ``favour_a`` / ``favour_b`` (patients on
    which each is higher), ``min_p`` (:func:`min_wilcoxon_p` of n), ``detectable``
    (:func:`detectable_difference`) and ``seeds``: the fewest trainings behind a patient's mean of
    either method (:func:`_trainings`)."""
    pp = per_patient(table, metric, method_col=method_col, patient=patient)
    for name in (a, b):
        if not (pp[method_col] == name).any():
            raise DataError(f"compare: no finite {metric} for {name!r} (methods: "
                            f"{sorted(map(str, table[method_col].unique()))})")
    both = pp[pp[method_col] == a].merge(pp[pp[method_col] == b], on=patient, suffixes=("_a", "_b"))
    x, y = both[f"{metric}_a"].to_numpy(float), both[f"{metric}_b"].to_numpy(float)
    out = paired_test(x, y, metric, n_boot=n_boot, seed=seed)
    seeds = min(_trainings(table[table[method_col] == k]) for k in (a, b))
    out.update(method_a=a, method_b=b, favour_a=int((x > y).sum()), favour_b=int((x < y).sum()),
               min_p=min_wilcoxon_p(len(x)), detectable=detectable_difference(out["sd_diff"], len(x)),
               seeds=seeds)
    return out


def _trainings(rows: pd.DataFrame) -> int:
    """How many trainings (seeds) stand behind each patient of ``rows``: the fewest ``seeds`` of a
    table whose seeds were averaged (:func:`npcrepro.evaluation.average_seeds`), else the distinct
    ``seed`` values (1 without either column)."""
    if "seeds" in rows.columns and len(rows):
        return int(rows["seeds"].min())
    return max(1, int(rows["seed"].nunique())) if "seed" in rows.columns else 1


def judge(tests: Sequence[Mapping], claimed: Sequence[int] | int = 1, *, alpha: float = ALPHA,
          p: str = "p_wilcoxon") -> list[dict]:
    """The verdicts of one page's family of claims.

    ``tests``: results of :func:`compare` (a - b for each claim); ``claimed``: the sign each claim
    states (+1: a is better, -1: b is better; one for all, or one per claim). The family is the tests
    with a finite p-value; each test comes back with ``p_holm`` (Holm over that family),
    ``decidable`` (family size x its ``min_p`` < ``alpha``) and ``verdict``."""
    tests = [dict(t) for t in tests]
    signs = [claimed] * len(tests) if isinstance(claimed, int) else list(claimed)
    if len(signs) != len(tests):
        raise DataError(f"judge: {len(signs)} claimed signs for {len(tests)} tests")
    pvals = [float(t.get(p, math.nan)) for t in tests]
    family = int(np.isfinite(pvals).sum())
    for t, sign, p_holm in zip(tests, signs, holm(pvals)):
        t["p_holm"] = float(p_holm)
        t["family"] = family
        t["decidable"] = bool(family and family * t.get("min_p", min_wilcoxon_p(int(t.get("n", 0)))) < alpha)
        diff = float(t.get("mean_diff", math.nan))
        if not t["decidable"]:
            t["verdict"] = VERDICTS[3]
        elif math.isfinite(p_holm) and p_holm < alpha and diff != 0:
            t["verdict"] = VERDICTS[0] if np.sign(diff) == np.sign(sign) else VERDICTS[1]
        else:
            t["verdict"] = VERDICTS[2]
    return tests


def against_reference(nets: pd.DataFrame, rows: pd.DataFrame, networks: Sequence[str], reference: str,
                      metric: str = "dice") -> pd.DataFrame:
    """Each of ``networks`` (methods of the long per-case table ``nets``) against the reference that
    reads no image whose rows are ``rows`` (method ``reference``, e.g. a location prior,
    :mod:`npcrepro.metrics.prior`) over the patients both were scored on: :func:`compare` for each,
    :func:`judge` over the networks as one family on the claim "the network scores higher". The
    reference needs no training, so it stands beside every seed: its rows take the networks' seed count.
    One row per network: network, n, seeds, the two means, the difference with its 95 % interval, the
    patients on which the network is higher, the Holm-adjusted Wilcoxon p and the verdict."""
    rows = rows.assign(seeds=int(nets["seeds"].max()) if "seeds" in nets and len(nets) else 1)
    table = pd.concat([nets, rows], ignore_index=True)
    tests = judge([compare(table, name, reference, metric) for name in networks], 1)
    return pd.DataFrame([{"network": r["method_a"], "n": int(r["n"]), "seeds": r["seeds"],
                          "network DSC": r["mean_a"], f"{reference} DSC": r["mean_b"],
                          "difference": r["mean_diff"], "95 % CI": f"{r['diff_ci_low']:.3f} to {r['diff_ci_high']:.3f}",
                          "patients network higher": f"{r['favour_a']} of {int(r['n'])}",
                          f"p, Wilcoxon, Holm over the {len(tests)} networks": r["p_holm"],
                          "verdict (network higher)": r["verdict"]} for r in tests])


def reference_sentence(table: pd.DataFrame, reference: str, described: str, patients: str = "patients") -> str:
    """:func:`against_reference`'s ``table`` in words: "``described`` scores DSC x on the same n
    ``patients``. Against it: " and, per network, the difference, the patients on which it is higher,
    the Holm-adjusted p and the verdict ("" for an empty table)."""
    if not len(table):
        return ""
    p_col = next(c for c in table.columns if c.startswith("p, Wilcoxon"))
    first = table.iloc[0]
    parts = [f"{r['network']} {r['difference']:+.3f} (higher on {r['patients network higher']} patients, "
             f"Holm p {format_p(r[p_col])}: {r['verdict (network higher)']})" for _, r in table.iterrows()]
    return (f"{described} scores DSC {first[f'{reference} DSC']:.3f} on the same {int(first['n'])} {patients}. "
            "Against it: " + "; ".join(parts) + ".")


def format_p(p: float | None) -> str:
    """A p-value for prose: three decimals, "< 0.001" below that, "n/a" when missing."""
    return "n/a" if p is None or not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"
