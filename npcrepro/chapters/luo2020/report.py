"""luo2020: the paper's audit and schedule arithmetic, and the run's tables (from Results; figures: ``figures``).

Every table of a run reads :class:`~npcrepro.engine.results.Results` only: ``metrics`` (one row per
method, fold, seed, test patient and structure, with ``ref_empty``), ``training`` and the predictions.
Means leave out the structures absent from a patient's reference (:func:`scored`).
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from npcrepro.chapters.luo2020.methods import METHODS, build_method, method_label
from npcrepro.chapters.luo2020.prepare import STRUCTURES, location_prior
from npcrepro.errors import DataError, ParameterError
from npcrepro.metrics.prior import PRIOR

#: The paper's two claims as pairs of methods (better, baseline) that differ in one component only.
CLAIMS: dict[str, list[tuple[str, str]]] = {
    "a second stage helps": [("ours", "one_stage_msp"), ("two_stage_no_msp", "unet")],
    "the MSP block helps": [("ours", "two_stage_no_msp"), ("one_stage_msp", "unet")],
}


# ----------------------------------------------------------------------------------- the paper
def audit_table(reported: pd.DataFrame, tol: float = 5e-5) -> pd.DataFrame:
    """Internal-consistency check of a table of DSC, F1 and JSC per method (long format, columns
    method/metric/value, metrics ``dsc``, ``f1``, ``jaccard``).

    For one set of hard masks F1 = DSC exactly and JSC = DSC / (2 - DSC) <= DSC. The same holds
    for means over cases of F1 and DSC, and mean JSC <= mean DSC (JSC <= DSC per case). Returns one
    row per method: the three numbers, the JSC implied by the DSC, and whether each identity holds
    (within ``tol``, half the last printed digit).
    """
    need = {"method", "metric", "value"}
    if not need <= set(reported.columns):
        raise DataError(f"audit_table needs columns {sorted(need)}, got {list(reported.columns)}")
    wide = reported.pivot_table(index="method", columns="metric", values="value", aggfunc="first", sort=False)
    missing = {"dsc", "f1", "jaccard"} - set(wide.columns)
    if missing:
        raise DataError(f"audit_table: no {sorted(missing)} values in the table")
    out = pd.DataFrame({"DSC": wide["dsc"], "F1": wide["f1"], "JSC": wide["jaccard"]})
    out["JSC implied by DSC"] = out["DSC"] / (2 - out["DSC"])
    out["F1 = DSC"] = (out["F1"] - out["DSC"]).abs() <= 2 * tol
    out["JSC <= DSC"] = out["JSC"] <= out["DSC"] + 2 * tol
    out["consistent"] = out["F1 = DSC"] & out["JSC <= DSC"]
    out.index.name = "method"
    return out


def lr_underflow(lr: float = 1e-3, gamma: float = 0.9, every: int = 10, below: float = 1e-8) -> int:
    """First iteration at which ``lr * gamma ** (t // every)`` is below ``below``."""
    if not 0 < gamma < 1:
        raise ParameterError(f"gamma must be in (0, 1), got {gamma}")
    k = math.ceil(math.log(below / lr) / math.log(gamma))
    while lr * gamma ** k >= below:
        k += 1
    return int(k * every)


def lr_schedule_table(lr: float = 1e-3, gamma: float = 0.9, every: int = 10, *, slices: int = 7112,
                      batch_sizes: Sequence[int] = (1, 8, 32), epochs: int = 100,
                      at_epochs: Sequence[int] = (0, 1, 2, 5, 10, 50, 100)) -> pd.DataFrame:
    """The paper's schedule taken literally (x``gamma`` every ``every`` iterations) on its training
    set of ``slices`` slices: the learning rate at the start of given epochs, for a few batch sizes
    (the paper gives none). Float32 (what the GPU computes in) stops at about 1.4e-45."""
    rows = []
    for b in batch_sizes:
        ipe = math.ceil(slices / b)
        for e in at_epochs:
            t = e * ipe if e < epochs else epochs * ipe
            exp = t // every
            log10 = math.log10(lr) + exp * math.log10(gamma)
            rows.append({"batch size": b, "iterations per epoch": ipe, "epoch": e, "iteration": t,
                         "lr (literal)": lr * gamma ** exp if log10 > -300 else 0.0,
                         "log10 lr": log10,
                         "float32 value": float(np.float32(lr * gamma ** exp)) if log10 > -300 else 0.0})
    return pd.DataFrame(rows)


def maskrcnn_note() -> tuple[bool, str]:
    """(torchvision importable, a sentence for the chapter) about the Mask R-CNN row of Table 1."""
    from npcrepro.chapters.luo2020 import maskrcnn_row

    if importlib.util.find_spec("torchvision") is None:
        return False, maskrcnn_row.enable_message() + " Its Table 1 row is shown as reported only."
    return True, ("Mask R-CNN is trained from scratch on the same folds by torchvision (see the Mask "
                  "R-CNN section under Results).")


def method_table(P: Mapping[str, Any], n_classes: int, methods: Sequence[str] | None = None,
                 reference: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per method: label, registered model, what it is, parameters at ``P``'s widths (and at
    ``reference``'s, e.g. the gpu profile's paper-scale widths), and whether ``P`` trains it."""
    from npcrepro.models import count_parameters

    what = {"unet": "5-level U-Net = stage 1 alone, no MSP", "fcn8": "VGG16-style encoder, FCN-8s decoder",
            "ours": "stage 1 (5 levels) + stage 2 (3 levels), MSP at both bottlenecks",
            "two_stage_no_msp": "both stages, no MSP (ablation)",
            "one_stage_msp": "stage 1 alone with MSP (ablation)"}
    rows = []
    for key in methods or list(METHODS):
        label, name, fixed = METHODS[key]
        row = {"method": label, "key": key, "model": name, "arguments": fixed or "", "what": what.get(key, ""),
               "parameters": count_parameters(build_method(key, P, n_classes)),
               "trained at this profile": key in (P.get("methods") or METHODS)}
        if reference is not None:
            row["parameters (gpu profile widths)"] = count_parameters(build_method(key, reference, n_classes))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ----------------------------------------------------------------------------------- tables of a run
def scored(results) -> pd.DataFrame:
    """The rows the means use (:func:`npcrepro.evaluation.scored`: structures present in the patient's
    reference), seeds averaged per patient (:func:`npcrepro.evaluation.average_seeds`), with ``key``
    (the method's name) and ``method`` (its label, as the paper names it)."""
    from npcrepro import evaluation

    m = evaluation.average_seeds(evaluation.scored(results.metrics)).copy()
    m.insert(1, "key", m["method"])
    m["method"] = m["key"].map(results.label)
    return m


def labels(results) -> list[str]:
    return [results.label(k) for k in results.methods]


def fold_means(results, metric: str = "dice") -> pd.DataFrame:
    """Mean ``metric`` per (fold, method) over test patients x structures present (Fig. 4's points)."""
    return scored(results).groupby(["fold", "method"])[metric].mean().unstack("method")


def means(results, columns: Sequence[str] = ("dice", "soft_dice", "auc", "f1", "jaccard"),
          per_patient: bool = False) -> pd.DataFrame:
    """Mean of ``columns`` per method (label) over test patients x structures present (the paper's
    unit), or with ``per_patient`` over test patients, each patient's structures and seeds averaged
    first (the unit :func:`prior_table` judges on)."""
    rows = scored(results)
    if per_patient:
        rows = rows.groupby(["method", "case"])[list(columns)].mean().reset_index()
    return rows.groupby("method")[list(columns)].mean().reindex([m for m in labels(results)])


def training_table(results) -> pd.DataFrame:
    """Mean training facts per method (label): parameters, seconds, final loss, training slices."""
    cols = ["method", "parameters", "train_seconds", "final_train_loss", "train_slices"]
    return results.training_table(cols, labels=True).groupby("method").mean().reindex(labels(results))


#: Sums of Eq. (4) and voxel counts a run's metrics hold per (patient, structure); they add up over
#: patients, so a fold's pooled DSC needs no probability kept.
_SUMS = ["soft_pg2", "soft_pg", "soft_p2", "soft_g2", "tp", "pred_voxels", "ref_voxels"]


def pooled_dsc(results) -> pd.DataFrame:
    r"""DSC with the paper's unit (Eq. 4 "for bit vectors", one vector per structure over a fold's test
    set): one row per (method key, fold, seed, structure), the sums of every test patient's test
    slices added up -- also those of patients without the structure, whose slices are in the test
    set too -- then ``soft_dsc`` (Eq. 4 as printed, :math:`2\sum (pg)^2 / (\sum p^2 + \sum g^2)`),
    ``soft_dsc_dot`` (:math:`2\sum pg / (\ldots)`) and ``hard_dsc`` (2 TP / (|P| + |G|) of the
    0.5-thresholded masks). Structures with no reference voxel in a fold's test slices are left out."""
    from npcrepro import metrics as M

    m = results.metrics
    missing = [c for c in _SUMS if c not in m.columns]
    if missing:
        raise DataError(f"run {results.path} has no {missing} columns (made before Eq. 4 was pooled; run it again)")
    g = m.groupby(["method", "fold", "seed", "structure"], sort=False)[_SUMS].sum().reset_index()
    g = g[g["soft_g2"] > 0].copy()
    sums = {k: g[f"soft_{k}"].to_numpy(float) for k in ("pg2", "pg", "p2", "g2")}
    g["soft_dsc"] = M.soft_dice_from_sums(sums, "printed")
    g["soft_dsc_dot"] = M.soft_dice_from_sums(sums, "dot")
    g["hard_dsc"] = 2 * g["tp"] / (g["pred_voxels"] + g["ref_voxels"])
    g.insert(1, "label", g["method"].map(results.label))
    return g.drop(columns=_SUMS)


def dsc_table(results, reported: pd.DataFrame) -> pd.DataFrame:
    """Table 1's DSC column three ways, per method (its label): the reported DSC (Eq. 4), this run's
    soft DSC of Eq. 4 computed the paper's way (:func:`pooled_dsc`: per fold and structure over the
    fold's test slices, then the mean over structures and folds), the same with the dot-product
    numerator, the hard DSC with the same pooling, and the hard DSC per patient (this chapter's
    other tables). Methods the paper reports but this run lacks keep their reported value only."""
    rep = reported[(reported["metric"] == "dsc")].set_index("method")["value"]
    pooled = pooled_dsc(results).groupby("label")[["soft_dsc", "soft_dsc_dot", "hard_dsc"]].mean()
    per_patient = scored(results).groupby("method")["dice"].mean()
    order = labels(results) + [m for m in rep.index if m not in labels(results)]
    out = pd.DataFrame({"DSC (reported)": rep.reindex(order),
                        "soft DSC, Eq. 4 as printed": pooled["soft_dsc"].reindex(order),
                        "soft DSC, Eq. 4 dot reading": pooled["soft_dsc_dot"].reindex(order),
                        "hard DSC, same pooling": pooled["hard_dsc"].reindex(order),
                        "hard DSC per patient": per_patient.reindex(order)}, index=order)
    out.index.name = "method"
    return out


def comparison(results):
    """Table 1, reported vs reproduced: DSC as the paper computes it (the soft DSC of Eq. 4 over each
    fold's test slices per structure, :func:`pooled_dsc`), AUC, F1, JSC per (test patient,
    structure); Mask R-CNN 'not reproduced'."""
    from npcrepro.evaluation import compare_run

    pooled = pooled_dsc(results)
    rows = pd.concat([scored(results), pd.DataFrame({"method": pooled["label"], "soft_dsc_eq4": pooled["soft_dsc"]})],
                     ignore_index=True)
    table = compare_run(results, rows, table="Table 1", digits=3,
                        metric_map={"dsc": "soft_dsc_eq4", "auc": "auc", "f1": "f1", "jaccard": "jaccard"})
    table.notes.append("Reproduced DSC: the soft DSC of Eq. (4) as printed, on the probabilities, one value per "
                       "(fold, structure) over the fold's test slices; mean ± sd over those values. AUC, F1, "
                       "JSC: mean ± sd over (test patient, structure) pairs of the folds run, structures absent "
                       "from a patient's reference left out; F1/JSC of the 0.5-thresholded masks, AUC by the "
                       "rank formula on the probabilities.")
    return table


def _patient(name: str) -> str:
    """The patient a runner case name stands for (a slice-level part's, or the name itself)."""
    from npcrepro.chapters.luo2020.prepare import parse_part

    part = parse_part(name)
    return part.case if part else name


def split_audit_table(patient, sliced, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """The split audit: the same network(s), data and budget under a patient-level (``patient``) and a
    slice-level (``sliced``, ``split_unit="slice"``) cross-validation. One row per split unit, method
    and fold run, then one mean row per split unit and method: training and test slices, test
    patients, patients with slices on both sides, mean hard DSC per (test patient, structure) and
    the pooled soft DSC of Eq. 4 (mean over fold x structure)."""
    keys = list(methods) if methods is not None else [k for k in sliced.methods if k in patient.methods]
    rows = []
    for unit, res in (("patient", patient), ("slice", sliced)):
        sc, pooled, splits = scored(res), pooled_dsc(res), res.splits()
        tr = res.training
        for key in keys:
            if key not in res.methods:
                continue
            for f in sorted(res.metrics.loc[res.metrics["method"] == key, "fold"].unique()):
                m = res.metrics[(res.metrics["method"] == key) & (res.metrics["fold"] == f)]
                train_patients = {_patient(n) for n in splits[int(f)].train}
                test_patients = set(m["case"])
                slices = tr.loc[(tr["method"] == key) & (tr["fold"] == f), "train_slices"]
                rows.append({"split": f"{unit}-level", "method": res.label(key), "fold": str(int(f) + 1),
                             "training slices": int(slices.iloc[0]) if len(slices) else np.nan,
                             "test slices": int(m.groupby("case")["n_slices"].first().sum()),
                             "test patients": len(test_patients),
                             "patients on both sides": len(train_patients & test_patients),
                             "hard DSC": sc.loc[(sc["key"] == key) & (sc["fold"] == f), "dice"].mean(),
                             "soft DSC (Eq. 4)": pooled.loc[(pooled["method"] == key) & (pooled["fold"] == f),
                                                            "soft_dsc"].mean()})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    means = (out.groupby(["split", "method"], sort=False)
             .agg({"training slices": "mean", "test slices": "mean", "test patients": "mean",
                   "patients on both sides": "mean", "hard DSC": "mean", "soft DSC (Eq. 4)": "mean"})
             .reset_index())
    means["fold"] = "mean"
    return pd.concat([out, means[out.columns]], ignore_index=True)


def split_leak(audit: pd.DataFrame, metric: str = "hard DSC") -> dict[str, float]:
    """{method label: mean ``metric`` slice-level minus patient-level} from :func:`split_audit_table`."""
    mean = audit[audit["fold"] == "mean"].pivot_table(index="method", columns="split", values=metric)
    if not {"patient-level", "slice-level"} <= set(mean.columns):
        return {}
    return (mean["slice-level"] - mean["patient-level"]).to_dict()


def ablation_table(results, metric: str = "dice") -> pd.DataFrame:
    """The 2 x 2 ablation (stages x MSP) of mean ``metric``; missing corners are NaN."""
    m = scored(results).groupby("key")[metric].mean()
    corners = {("one stage", "no MSP"): "unet", ("one stage", "MSP"): "one_stage_msp",
               ("two stages", "no MSP"): "two_stage_no_msp", ("two stages", "MSP"): "ours"}
    out = pd.DataFrame(index=["one stage", "two stages"], columns=["no MSP", "MSP"], dtype=float)
    for (r, c), key in corners.items():
        out.loc[r, c] = m.get(key, np.nan)
    out["MSP effect"] = out["MSP"] - out["no MSP"]
    out.loc["two-stage effect"] = out.loc["two stages"] - out.loc["one stage"]
    return out


def claims_table(results, metric: str = "dice") -> pd.DataFrame:
    """The paper's two claims as paired comparisons over patients (structures averaged first;
    :mod:`npcrepro.claims`), Holm over every comparison run, each with its verdict on "A is better";
    pairs whose methods were not both run are left out."""
    from npcrepro.claims import compare, judge

    sc, have = scored(results), set(results.methods)
    pairs = [(claim, a, b) for claim, ab in CLAIMS.items() for a, b in ab if a in have and b in have]
    judged = judge([compare(sc, a, b, metric, method_col="key") for _, a, b in pairs])
    return pd.DataFrame([{"claim": claim, "comparison": f"{method_label(a)} vs {method_label(b)}",
                          "patients": r["n"], "seeds": r["seeds"],
                          f"mean {metric} A": r["mean_a"], f"mean {metric} B": r["mean_b"],
                          "difference A - B": r["mean_diff"], "p (paired t)": r["p_t"],
                          "p (Wilcoxon)": r["p_wilcoxon"], "p (Holm)": r["p_holm"],
                          "patients favouring A / B": f"{r['favour_a']} / {r['favour_b']}", "verdict": r["verdict"]}
                         for (claim, a, b), r in zip(pairs, judged)])


def claims_text(claims: pd.DataFrame, converged: str, profile: str) -> dict[str, str]:
    """Sentences on the ablation for the chapter, from :func:`claims_table`: ``"reading"`` (how to read
    the comparisons, or why there are none at ``profile``), ``"stage"`` and ``"msp"`` (each claim's
    differences with their Wilcoxon p) and ``"summary"`` (one clause for the chapter's summary).
    ``converged``: the run's convergence count in words (e.g. "0 of 2")."""
    if not len(claims):
        why = (f"The {profile} profile does not train the ablation networks (two stages without MSP, one "
               "stage with MSP): at its budget every network of the 2 x 2 design was unconverged, so their "
               "differences measured how fast each design learns (the recipe's CHOICES, *methods at cpu*). "
               "The gpu and gpu-lite profiles train all four; `-p methods \"['unet', 'ours', "
               "'two_stage_no_msp', 'one_stage_msp']\"` trains them at any profile.")
        none = f"not tested at the {profile} profile"
        return {"reading": why, "stage": none, "msp": none,
                "summary": f"the paper's two claims (a second stage, the MSP block) were {none}"}

    def diffs(claim: str) -> str:
        c = claims[claims["claim"] == claim]
        return ", ".join(f"{r['difference A - B']:+.3f} ({r['comparison']}, Wilcoxon p = {r['p (Wilcoxon)']:.2g}: "
                         f"{r['verdict']})" for _, r in c.iterrows()) if len(c) else "(not run)"

    held = int((claims["verdict"] == "holds").sum())
    sig = f"{held} of {len(claims)}"
    undecidable = int((claims["verdict"] == "not decidable at this sample size").sum())
    reading = (f"Over {int(claims['patients'].max())} test patients, {sig} of these comparisons hold (Wilcoxon, "
               f"Holm-adjusted over the {len(claims)}); "
               + (f"{undecidable} cannot be decided with so few patients. " if undecidable else "")
               + "Read them with the profile in mind: "
               f"{converged} networks of this run are flagged converged (see *Convergence*); where a network "
               "is not, a difference measures how fast a design learns at this budget at least as much as "
               "how good it is. The gpu profile (the paper's 124 patients, paper-scale widths, every fold, the "
               "paper's learning rate) is the one that can test the claims.")
    stage, msp = diffs("a second stage helps"), diffs("the MSP block helps")
    summary = (f"adding a second stage changed DSC by {stage}; adding the MSP block by {msp} ({sig} "
               f"comparisons hold; {converged} networks converged at this budget)")
    return {"reading": reading, "stage": stage, "msp": msp, "summary": summary}


def per_structure_table(results, metric: str = "dice", reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean ``metric`` per structure (rows, the paper's names where known) and method (columns), over
    test patients that have the structure; with ``reference`` (:func:`location_prior`'s rows), its
    column beside the networks'. The last row is the mean over structures."""
    rows = scored(results)
    if reference is not None and len(reference):
        rows = pd.concat([rows, reference], ignore_index=True)
    t = rows.pivot_table(index="structure", columns="method", values=metric, aggfunc="mean")
    order = labels(results) + ([PRIOR] if reference is not None else [])
    t = t.reindex(index=[s for s in results.structures if s in t.index], columns=[m for m in order if m in t.columns])
    paper_name = {v: k for k, v in STRUCTURES.items()}
    t.index = [f"{paper_name[s]} ({s})" if s in paper_name else s for s in t.index]
    t.loc["mean over structures"] = t.mean(axis=0)
    t.index.name = "structure"
    return t


def prior_table(results, threshold: float, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each network against the :func:`location_prior` (or its rows, ``reference``) on the same test
    patients: per patient the mean over the structures its reference has, seeds averaged, the Wilcoxon
    p Holm-adjusted over the networks (:func:`npcrepro.claims.against_reference`), and the verdict on
    "the network scores higher than a reference that reads no image"."""
    from npcrepro.claims import against_reference

    prior = location_prior(results, threshold) if reference is None else reference
    return against_reference(scored(results), prior, labels(results), PRIOR)


def prior_sentence(table: pd.DataFrame, threshold: float) -> str:
    """:func:`prior_table` in words: the prior's DSC and, per network, the difference, the patients on
    which it is higher, the Holm-adjusted p and the verdict."""
    from npcrepro.claims import reference_sentence

    return reference_sentence(table, PRIOR, "A location prior that reads no image (per structure, the voxel-wise "
                              "mean of the masks of the training and validation patients that have it, thresholded "
                              f"at {threshold:g})", "held-out patients")


#: A network "marks both sides" for one side of a left/right pair when it predicts at least this many
#: times that side's reference volume ...
BOTH_SIDES_VOLUME = 1.5
#: ... at a precision of at most this.
BOTH_SIDES_PRECISION = 0.6


def laterality_table(results) -> pd.DataFrame:
    """For each side of a left/right pair of structures (``X_L`` and ``X_R`` both in the run) and each
    method: the predicted over the reference volume (summed over the test patients that have it), the
    mean precision and the mean DSC; ``both sides`` flags a network that marks the left and the right
    structure for that side (about twice the volume at about half the precision). One row per
    (structure, method), in the run's order."""
    m = scored(results)
    sides = [s for s in results.structures
             if (s.endswith("_L") and f"{s[:-2]}_R" in results.structures)
             or (s.endswith("_R") and f"{s[:-2]}_L" in results.structures)]
    rows = []
    for structure in sides:
        part = m[m["structure"] == structure]
        for method in [x for x in labels(results) if x in set(part["method"])]:
            g = part[part["method"] == method]
            ref = float(g["ref_voxels"].sum())
            ratio = float(g["pred_voxels"].sum()) / ref if ref else float("nan")
            precision = float(g["precision"].mean())
            rows.append({"structure": structure, "method": method, "predicted / reference volume": ratio,
                         "precision": precision, "DSC": float(g["dice"].mean()),
                         "both sides": bool(ratio >= BOTH_SIDES_VOLUME and precision <= BOTH_SIDES_PRECISION)})
    return pd.DataFrame(rows, columns=["structure", "method", "predicted / reference volume", "precision", "DSC",
                                       "both sides"])



def laterality_grid(lat: pd.DataFrame) -> pd.DataFrame:
    """:func:`laterality_table` as the chapter shows it: sides (rows) x methods (columns), each cell the
    predicted over the reference volume to two decimals, with " (both sides)" where flagged."""
    order = dict(index=list(dict.fromkeys(lat["structure"])), columns=list(dict.fromkeys(lat["method"])))
    volume = lat.pivot(index="structure", columns="method", values="predicted / reference volume").reindex(**order)
    flag = lat.pivot(index="structure", columns="method", values="both sides").reindex(**order)
    return volume.map(lambda v: f"{v:.2f}") + flag.map(lambda f: " (both sides)" if f is True else "")

