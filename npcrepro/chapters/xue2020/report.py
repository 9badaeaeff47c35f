"""xue2020: the chapter's tables (figures: ``figures``) and the paper's numbers beside this run's, read from
:class:`~npcrepro.engine.results.Results` (and, for the recipe tables, the resolved parameters)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from npcrepro.chapters.xue2020.methods import MODELS, build_model
from npcrepro.chapters.xue2020.prepare import (CT_WINDOW, PRIOR, location_prior, reference_cases,
                                               run_channel)
from npcrepro.claims import format_p

__all__ = ["PAPER", "METRICS", "NOT_LEARNED_LOSS", "labelled", "data_label", "target_label", "reference_cases",
           "run_channel", "channel_text", "recipe_table", "architecture_table",
           "parameter_table", "comparison", "p_value_table", "location_prior", "prior_table", "prior_sentence",
           "timing_table", "training_table", "case_table", "training_note", "headline"]

PAPER = "xue2020"

#: Per-patient metrics of the paper (per-case table columns) and their paper names.
METRICS: dict[str, str] = {"dice": "DSC", "jaccard": "JI", "assd": "ASD (mm)", "hd": "HD (mm)"}
_REPORTED_METRIC = {"dice": "dsc", "jaccard": "jaccard", "assd": "assd", "hd": "hd"}

#: Best validation loss (1 - soft DSC) at or above which a model is reported as not having learned:
#: its validation DSC never rose above 0.2.
NOT_LEARNED_LOSS = 0.8


# ----------------------------------------------------------------------------------- reading a run

def schedule_text(P) -> str:
    """The run's learning-rate schedule in words, e.g. "Adam at 0.002, warm-up over 10 % of the
    budget, cosine decay to 0, gradient norm clipped at 1"."""
    parts = [f"Adam at {P['lr']:g}"]
    plateau = P.get("schedule", "plateau") == "plateau"
    cycles = 1 if plateau else int(P.get("cycles") or 1)
    rule = []
    if float(P.get("warmup") or 0) > 0:
        rule.append(f"warm-up over {100 * float(P['warmup']):.0f} % of the " + ("cycle" if cycles > 1 else "budget"))
    rule.append(f"cuts x{P['lr_factor']:g} after {P['lr_patience']} evaluations without improvement"
                if plateau else f"{P['schedule']} decay to 0")
    if cycles > 1:
        parts.append(f"{cycles} cycles over the budget (warm restarts), each a " + " and a ".join(rule))
    else:
        parts += rule
    if float(P.get("grad_clip") or 0) > 0:
        parts.append(f"gradient norm clipped at {P['grad_clip']:g}")
    return ", ".join(parts)

def labelled(results) -> pd.DataFrame:
    """The run's per-patient metrics (seeds averaged per patient:
    :func:`npcrepro.evaluation.average_seeds`) with ``method`` holding the paper's model names."""
    from npcrepro.evaluation import average_seeds

    m = average_seeds(results.metrics)
    return m.assign(method=m["method"].map(lambda n: results.label(n))) if len(m) else m


def channel_text(params) -> str:
    """The run's CT in words (:data:`npcrepro.chapters.CT_CHANNELS`), e.g. "contrast-enhanced CT (CECT,
    venous phase)"."""
    from npcrepro.chapters import CT_CHANNELS

    ch = run_channel(params)
    return CT_CHANNELS.get(ch, ch)


def target_label(results) -> str:
    """The run's target where it is not the paper's GTVp + retropharyngeal nodes ("" where it is)."""
    return "PTV70 stand-in" if results.params.get("target") == "ptv70" else ""


def data_label(results) -> str:
    """What the run was trained on, for titles and tables (:func:`npcrepro.evaluation.data_source`)."""
    from npcrepro.evaluation import data_source

    return data_source(results, target_label(results))


def _training(results) -> pd.DataFrame:
    """The run's training rows indexed by model (the paper's names), one per model: its first seed's."""
    t = results.training
    if not len(t):
        return pd.DataFrame()
    t = (t.sort_values("seed", kind="stable") if "seed" in t else t).assign(model=t["method"].map(results.label))
    t = t.set_index("model")
    return t[~t.index.duplicated()]


# ----------------------------------------------------------------------------------- tables
def recipe_table(P: Mapping) -> pd.DataFrame:
    """The paper's recipe items (value and source, from :mod:`npcrepro.papers`) next to this run's."""
    import torch

    from npcrepro import papers

    recipe = papers.info(PAPER).recipe
    budget = f"{P['epochs']} epochs" if not P.get("iterations") else f"{P['iterations']} iterations"
    ours = {
        "optimizer": "Adam (torch defaults: betas 0.9/0.999, eps 1e-8)",
        "lr": f"{P['lr']}",
        "schedule": f"x{P['lr_factor']} after {P['lr_patience']} validations without improvement",
        "batch_size": f"{P['batch_size']}",
        "epochs": budget,
        "loss": "1 - soft DSC (batch)",
        "augmentation": f"flip, rotation ±{P['rotate_deg']:g}°, zoom {P['zoom'][0]}-{P['zoom'][1]}, "
                        f"translation ±{100 * P['shift']:g}%",
        "input_size": "whole slices of the grid" if not P.get("image_size") else f"{P['image_size']}",
        "preprocessing": f"CT window {CT_WINDOW[0]:.0f}..{CT_WINDOW[1]:.0f} HU -> [0, 1]",
        "image": f"{run_channel(P)}: {channel_text(P)}",
        "framework": f"PyTorch {torch.__version__}",
    }
    rows = []
    for item, e in recipe.items():
        v = e.get("value")
        rows.append({"item": item, "paper": "not stated" if v is None else str(v),
                     "source": e.get("source") or "", "this run": ours.get(item, "—")})
    return pd.DataFrame(rows)


def architecture_table() -> pd.DataFrame:
    """The DeepLabv3+ design choices: the paper, this project, the reference implementations."""
    from npcrepro.chapters.xue2020.recipe import REFERENCE_CHOICES

    return pd.DataFrame(REFERENCE_CHOICES, columns=["item", "paper", "here", "reference implementations"])


def parameter_table(P: Mapping, pixel_mm: float | None = None) -> pd.DataFrame:
    """Parameters, output stride and ASPP rates of both models at the profile's sizes (for data of
    ``pixel_mm`` pixels) and, below paper scale, the paper-scale DeepLabv3+ variants."""
    import npcrepro.models.deeplab as D
    from npcrepro.models import count_parameters

    rows = []
    for label in MODELS:
        m = build_model(label, P, pixel_mm=pixel_mm)
        rows.append({"model": label, "sizes": P["profile"], "parameters": count_parameters(m),
                     "output stride": getattr(m, "output_stride", None) or 2 ** (len(P["unet_widths"]) - 1),
                     "config": (f"MobileNetV2 width {P['deeplab_width']}, OS {P['output_stride']}, "
                                f"ASPP rates {'/'.join(map(str, m.aspp.rates))}"
                                if label == "DeepLabv3+" else f"widths {list(P['unet_widths'])}")})
    if P["profile"] != "gpu":
        for label, kw in (("DeepLabv3+", {}), ("DeepLabv3+", {"separable": False})):
            m = D.DeepLabV3Plus(1, 1, **kw)
            rows.append({"model": label + (" (plain 3x3 heads)" if kw else ""), "sizes": "paper scale",
                         "parameters": count_parameters(m), "output stride": m.output_stride,
                         "config": "MobileNetV2 width 1.0, OS 16, ASPP rates 6/12/18"
                                   + (", plain 3x3 convs as the PyTorch ports" if kw else "")})
    return pd.DataFrame(rows)


def comparison(results):
    """DSC, JI, ASD, HD of both models: reported (Sec. 2) vs reproduced (this run)."""
    from npcrepro.evaluation import compare_run

    table = labelled(results)
    out = compare_run(results, table, table="Sec. 2", detail=target_label(results),
                      metrics=["dsc", "jaccard", "assd", "hd"], digits=2)
    out.notes.append("Reproduced: mean ± sd over the test patients, each scored in 3D from its stacked "
                     "slice predictions (0.5 threshold); ASD is the symmetric average surface distance "
                     "(the paper's Eq. 3), HD the maximum Hausdorff distance, both in mm.")
    n_empty = int(table["pred_empty"].sum())
    if n_empty:
        out.notes.append(f"{n_empty} prediction(s) were empty; their distances are the image diagonal.")
    return out


#: The sign of DeepLabv3+ - U-Net that the paper's claim (DeepLabv3+ is better) states, per metric.
CLAIMED_SIGN = {"dice": 1, "jaccard": 1, "assd": -1, "hd": -1}


def p_value_table(results) -> pd.DataFrame:
    """DeepLabv3+ vs U-Net per metric over the test patients (:mod:`npcrepro.claims`): the paper's paired
    t-test p beside this run's, the Wilcoxon p Holm-adjusted over the four metrics, the patients on which
    DeepLabv3+ is better and the verdict on "DeepLabv3+ is better" (lower is better for distances)."""
    from npcrepro.claims import compare, judge
    from npcrepro.papers import get

    tests = judge([compare(labelled(results), *MODELS, m) for m in METRICS], [CLAIMED_SIGN[m] for m in METRICS])
    rows = []
    for metric, r in zip(METRICS, tests):
        rec = get(PAPER).P_VALUES[_REPORTED_METRIC[metric]]
        rows.append({"metric": METRICS[metric], "n": int(r["n"]), "seeds": r["seeds"],
                     "mean difference (DeepLabv3+ - U-Net)": r["mean_diff"],
                     "p, paired t-test (reported)": f"< {rec.high:g}" if rec.high is not None else f"{rec.value:g}",
                     "p, paired t-test (reproduced)": r["p_t"], "p, Wilcoxon (reproduced)": r["p_wilcoxon"],
                     "p, Wilcoxon, Holm over the 4 metrics": r["p_holm"],
                     "patients DeepLabv3+ better": f"{r['favour_a' if CLAIMED_SIGN[metric] > 0 else 'favour_b']} "
                                                   f"of {int(r['n'])}",
                     "verdict (DeepLabv3+ better)": r["verdict"]})
    return pd.DataFrame(rows)


def prior_table(results, threshold: float) -> pd.DataFrame:
    """Each network against the :func:`location_prior` on the same test patients
    (:func:`npcrepro.claims.against_reference`: seeds averaged per patient, the Wilcoxon p Holm-adjusted
    over the networks) and the verdict on "the network scores higher than a reference that reads no image"."""
    from npcrepro.claims import against_reference

    return against_reference(labelled(results), location_prior(results, threshold), MODELS, PRIOR)


def prior_sentence(table: pd.DataFrame, threshold: float) -> str:
    """:func:`prior_table` in words: the prior's DSC and, per network, the difference, the patients on
    which it is higher, the Holm-adjusted p and the verdict."""
    from npcrepro.claims import reference_sentence

    return reference_sentence(table, PRIOR, "A location prior that reads no image (the voxel-wise mean of the "
                              f"training and validation patients' masks, thresholded at {threshold:g})",
                              "held-out patients")


def timing_table(results) -> pd.DataFrame:
    """Inference ms per slice and training time: reported (the paper's GPU, full-size slices, full
    training) vs reproduced (this machine, this profile)."""
    from npcrepro import papers

    rep = papers.reported(PAPER, table="Sec. 2")
    recipe = papers.info(PAPER).recipe
    setting = (f"{recipe['hardware']['value']}; {'x'.join(map(str, recipe['input_size']['value']))} slices; "
               f"{recipe['epochs']['value']} epochs")
    tr = _training(results)
    rows = []
    for m in MODELS:
        ms = rep[(rep["method"] == m) & (rep["metric"] == "ms_per_slice")]["value"]
        hours = rep[(rep["method"] == m) & (rep["metric"] == "train_hours")]["value"]
        t = tr.loc[m] if m in tr.index else {}
        rows.append({"model": m,
                     "ms per slice (reported)": float(ms.iloc[0]) if len(ms) else None,
                     "training hours (reported)": float(hours.iloc[0]) if len(hours) else None,
                     "setting (reported)": setting,
                     "ms per slice (reproduced)": t.get("ms_median"),
                     "training seconds (reproduced)": t.get("fit_seconds"),
                     "iterations (reproduced)": t.get("iterations"),
                     "slice size (reproduced)": t.get("timing_shape"),
                     "device (reproduced)": t.get("timing_device")})
    return pd.DataFrame(rows)


def training_table(results) -> pd.DataFrame:
    """Per model: iterations, wall seconds, best validation loss and where, final learning rate."""
    return results.training_table({"method": "model", "train_slices": "training slices", "iterations": "iterations",
                                   "fit_seconds": "seconds", "best_val_loss": "best validation loss",
                                   "best_iteration": "at iteration", "final_train_loss": "final train loss",
                                   "final_lr": "final lr", "lr_cuts": "lr cuts"}, labels=True)


def case_table(results) -> pd.DataFrame:
    """One row per patient: split, stage, target volume, retropharyngeal nodes kept / left out."""
    fold = results.splits()[0]
    rows = []
    for n, c in reference_cases(results).items():
        f = c.meta.get("xue2020", {})
        rows.append({"case": n, "split": "train" if n in fold.train else "val" if n in fold.val else "test",
                     "T": c.meta.get("t_stage", "—"), "N": c.meta.get("n_stage", "—"),
                     "shape (z, y, x)": c.shape, "spacing (mm)": tuple(round(s, 2) for s in c.spacing),
                     "target (cm³)": round(float(f.get("target_cm3", 0.0)), 2),
                     "RP nodes in target": f.get("rp_nodes", "—"),
                     "other nodes left out": f.get("other_nodes", "—")})
    return pd.DataFrame(rows)


def stage_table(results) -> pd.DataFrame:
    """The paper's Table 1 (reported: sex, age, T and N stage, treatment of its 150 patients, from
    ``npcrepro.chapters.xue2020.paper.DEMOGRAPHICS``) beside this run's cohort: the T and N stage mix of the
    patients the run used (count and percent; the phantom models neither sex, age nor treatment)."""
    from npcrepro.chapters.xue2020 import paper

    d = paper.DEMOGRAPHICS
    meta = [c.meta for c in reference_cases(results).values()]
    n = len(meta)

    def mine(key: str, label: str) -> str:
        vals = [str(m.get(key, "")) for m in meta]
        if not any(vals):
            return "not modelled"
        k = sum(v in (label, label[1:]) for v in vals)
        return f"{k} ({100.0 * k / n:.1f} %)" if n else "—"

    def rep(count, pct) -> str:
        return f"{count} ({pct:.1f} %)"

    rows = [{"characteristic": "patients", "reported (Table 1)": str(d["n_patients"]), "this run": str(n)},
            {"characteristic": "age, median (range), years",
             "reported (Table 1)": f"{d['age_years']['median']} ({d['age_years']['range'][0]:g}-{d['age_years']['range'][1]:g})",
             "this run": "not modelled"}]
    rows += [{"characteristic": f"sex: {k}", "reported (Table 1)": rep(*v), "this run": "not modelled"}
             for k, v in d["sex"].items()]
    rows += [{"characteristic": f"T stage: {k}", "reported (Table 1)": rep(*v), "this run": mine("t_stage", k)}
             for k, v in d["t_stage"].items()]
    rows += [{"characteristic": f"N stage: {k}", "reported (Table 1)": rep(*v), "this run": mine("n_stage", k)}
             for k, v in d["n_stage"].items()]
    rows += [{"characteristic": f"treatment: {k}", "reported (Table 1)": rep(*v), "this run": "not modelled"}
             for k, v in d["treatment"].items()]
    return pd.DataFrame(rows)


def training_note(best: Mapping[str, float | None]) -> str:
    """One sentence on whether each model learned, from its best validation loss (1 - soft DSC):
    ``best`` = {model: best validation loss (its worse seed's, with several) or None}. A model that did
    not learn makes the comparison
    one of a failed training with a working one, which the chapter says next to the numbers."""
    best = {m: float(v) for m, v in best.items() if v is not None and np.isfinite(v)}
    if not best:
        return "No validation loss was recorded, so whether the models learned is not known."
    failed = [m for m, v in best.items() if v >= NOT_LEARNED_LOSS]
    losses = ", ".join(f"{m} {v:.2f}" for m, v in best.items())
    if not failed:
        return f"Both networks learned (best validation loss, 1 − soft DSC: {losses})."
    return (f"{' and '.join(failed)} did not learn in this run (best validation loss, 1 − soft DSC: "
            f"{losses}; at or above {NOT_LEARNED_LOSS} the validation DSC never exceeded "
            f"{1 - NOT_LEARNED_LOSS:.1f}), so the comparison below measures a failed training, not the "
            "architecture. At this budget the paper's recipe is fragile: another seed, or the same seed "
            "with a different floating-point summation order, can decide whether a network trains at all.")


def headline(results) -> dict[str, str]:
    """Formatted numbers of a finished run for the chapter's prose (glued as ``xue2020_<key>``):
    split sizes, grid, per-model mean ± sd of each metric, paired-test p-values, timings, and the
    paper's reported values beside them (from :mod:`npcrepro.papers`)."""
    from npcrepro import papers
    from npcrepro.evaluation import format_mean_sd

    short = {"DeepLabv3+": "deeplab", "U-Net": "unet"}
    key = {"dice": "dsc", "jaccard": "ji", "assd": "asd", "hd": "hd"}
    fold = results.splits()[0]
    cases = reference_cases(results)
    c0 = next(iter(cases.values()))
    tr, t = _training(results), results.training
    note = training_note({results.label(k): v for k, v in t.groupby("method")["best_val_loss"].max().items()}
                         if len(t) else {})
    out = {"n_cases": str(len(cases)), "n_train": str(len(fold.train)), "n_val": str(len(fold.val)),
           "n_test": str(len(fold.test)), "profile": results.profile, "data": data_label(results),
           "grid": " × ".join(map(str, c0.shape)),
           "spacing": " × ".join(f"{s:.2f}".rstrip("0").rstrip(".") for s in c0.spacing) + " mm",
           "n_rp": str(sum(1 for c in cases.values() if c.meta.get("xue2020", {}).get("rp_nodes"))),
           "training_note": note,
           "schedule": schedule_text(results.params)}
    if len(tr):
        out.update(train_slices=str(int(tr["train_slices"].iloc[0])), threads=str(int(tr["threads"].iloc[0])),
                   iterations=str(int(tr["iterations"].iloc[0])))
    table = labelled(results)
    rep = papers.reported(PAPER, table="Sec. 2")
    means = {}
    for m, sm in short.items():
        t = table[table["method"] == m]
        for col, k in key.items():
            unit = " mm" if col in ("assd", "hd") else ""
            if len(t):
                v = t[col].to_numpy(float)
                sd = float(v.std(ddof=1)) if len(v) > 1 else None
                out[f"{k}_{sm}"] = format_mean_sd(float(v.mean()), sd, 2) + unit
                means[(m, col)] = float(v.mean())
            r = rep[(rep["method"] == m) & (rep["metric"] == _REPORTED_METRIC[col])]
            if len(r):
                out[f"rep_{k}_{sm}"] = format_mean_sd(float(r["value"].iloc[0]), r["sd"].iloc[0], 2) + unit
        if m in tr.index:
            out[f"ms_{sm}"] = f"{tr.loc[m, 'ms_median']:.0f}"
            out["timing_device"] = str(tr.loc[m, "timing_device"])
            out["timing_shape"] = str(tr.loc[m, "timing_shape"])
            out[f"train_s_{sm}"] = f"{tr.loc[m, 'fit_seconds']:.0f}"
        r = rep[(rep["method"] == m) & (rep["metric"] == "ms_per_slice")]
        if len(r):
            out[f"rep_ms_{sm}"] = f"{float(r['value'].iloc[0]):g}"
    if set(short) <= set(table["method"]):
        pt = p_value_table(results).set_index("metric")
        for col, k in key.items():
            out[f"p_{k}"] = format_p(pt.loc[METRICS[col], "p, paired t-test (reproduced)"])
            out[f"rep_p_{k}"] = str(pt.loc[METRICS[col], "p, paired t-test (reported)"])
            out[f"verdict_{k}"] = str(pt.loc[METRICS[col], "verdict (DeepLabv3+ better)"])
        out["better_dsc"] = max(short, key=lambda m: means.get((m, "dice"), -1))
        out["dsc_diff"] = f"{means[('DeepLabv3+', 'dice')] - means[('U-Net', 'dice')]:+.2f}"
    return out

