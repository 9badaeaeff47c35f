"""li2018: Tables 1-3, the stage and optimiser comparisons, Figs. 2-4 and the curves, from Results."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from npcrepro.chapters.li2018 import prepare as prep
from npcrepro.chapters.li2018.prepare import location_prior, prepared_case  # noqa: F401 - the notebook reads them here

PAPER = "li2018"
#: Table 2 columns: (header, per-case column). The paper's "Recall" column is TP/(TP+FP).
TABLE2_COLUMNS = (
    ("Volume of DL method (cm3)", "volume_pred_cm3"),
    ("Volume by readers (cm3)", "volume_ref_cm3"),
    ("Percent match", "percent_match"),
    ("Corresponding ratio", "corresponding_ratio"),
    ("Dice similarity coefficient", "dice"),
    ("'Recall' = TP/(TP+FP)", "precision"),
    ("Jaccard similarity coefficient", "jaccard"),
)
_REPORTED_METRIC = {"volume_pred_cm3": ("CNN", "volume_cm3"), "volume_ref_cm3": ("Two readers", "volume_cm3"),
                    "percent_match": ("CNN", "percent_match"),
                    "corresponding_ratio": ("CNN", "corresponding_ratio"), "dice": ("CNN", "dsc"),
                    "precision": ("CNN", "precision"), "jaccard": ("CNN", "jaccard")}


# ------------------------------------------------------------------------------------------ reading
def main_method(results) -> str:
    """The method the tables report: working when it ran, else faithful."""
    return "working" if "working" in results.methods else results.methods[0]


def per_case(results, method: str | None = None):
    """One row per patient of ``method``: the chapter's per-patient table, seeds averaged per patient
    (:func:`npcrepro.evaluation.average_seeds`; ``seed`` is the first seed, whose network the figures
    show)."""
    from npcrepro.evaluation import average_seeds

    m = results.metrics
    return average_seeds(m[m["method"] == (method or main_method(results))])


def scheme(results) -> str:
    """The cross-validation scheme in words."""
    P = results.params
    if P["cv"] == "loocv":
        return f"leave-one-patient-out ({results.folds} folds)"
    return f"{P['k']}-fold by patient" + (f", first {P['max_folds']} fold(s)" if P["max_folds"] else "")


def stage_rates(P: Mapping) -> str:
    """The working method's Adam learning rates, stage by stage, in words (from the run's parameters)."""
    if P["finetune"]:
        return (f"lr {P['lr']:g} in stage 1; in stages 2-3 {P['lr_fusion']:g} for the layers they add and "
                f"{P['lr_finetune']:g} for the layers trained before")
    return f"lr {P['lr']:g} in stage 1, {P['lr_fusion']:g} for the few weights stages 2-3 add"


def finetune_reading(P: Mapping) -> str:
    """How this run read the stepwise scheme (``finetune``), in words."""
    if P["finetune"]:
        return ("this run also fine-tunes them in stages 2-3 (finetune=True), as FCN's stepwise training "
                f"does, the working method at lr {P['lr_finetune']:g}, below the new layers' {P['lr_fusion']:g}")
    return "this run keeps them fixed (finetune=False, the literal reading)"


def load_model(results, method: str, fold: int, seed: int | None = None):
    """The trained network of one job (its ``model.pt``)."""
    import torch

    from npcrepro.chapters.li2018.methods import build_model

    net = build_model(method, float(results.params["width"]))
    path = results.job_dir(method, fold, seed) / "model.pt"
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


# ------------------------------------------------------------------------------------------ tables
def _mean_sd(v) -> str:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "—"
    return f"{v.mean():.2f}±{v.std(ddof=1):.2f}" if v.size > 1 else f"{v.mean():.2f}"


def _range(v) -> str:
    v = np.asarray(v, float)
    return f"{v.min():.2f}-{v.max():.2f}" if v.size else "—"


def table1(width: float):
    """Table 1 traced from the network for a 1 x 144 x 144 input, at width 1 and at ``width``."""
    import pandas as pd

    from npcrepro.chapters.li2018.methods import build_model
    from npcrepro.models.score_fusion_fcn import TABLE1

    full = dict(build_model("working", 1.0).layer_shapes(prep.SIZE))
    mine = dict(build_model("working", width).layer_shapes(prep.SIZE))
    fmt = lambda s: "x".join(map(str, s[1:] + s[:1]))  # noqa: E731
    rows = [{"block": block, "layer": layer, "kernel": kern or "-", "stride": stride or "-",
             "pad": "-" if pad is None else pad, "Table 1 output": fmt(shape), "built (width 1)": fmt(full[layer]),
             f"built (width {width:g})": fmt(mine[layer])} for block, layer, kern, stride, pad, shape in TABLE1]
    return pd.DataFrame(rows).set_index("layer")


def table2(per_case, *, volumes: bool = True, digits: int = 2):
    """Table 2's layout for this run: one row per patient (numbered 1..n in case order, with the case
    name), then the Mean±Std row (sample SD)."""
    import pandas as pd

    cols = [c for c in TABLE2_COLUMNS if volumes or not c[1].startswith("volume")]
    df = per_case.sort_values("case").reset_index(drop=True)
    out = pd.DataFrame({"Patient": [str(i) for i in range(1, len(df) + 1)], "case": df["case"]})
    for head, col in cols:
        d = 1 if col.startswith("volume") else digits
        out[head] = [f"{v:.{d}f}" for v in df[col]]
    mean = {"Patient": "Mean±Std", "case": ""}
    mean.update({head: _mean_sd(df[col]) for head, col in cols})
    return pd.concat([out, pd.DataFrame([mean])], ignore_index=True).set_index("Patient")


def table2_reported():
    """The paper's Table 2 in the same layout (from :mod:`npcrepro.chapters.li2018.paper`)."""
    import pandas as pd

    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 2")
    rows = []
    for i in range(1, 30):
        r = rep[rep["case"] == str(i)]
        row = {"Patient": str(i)}
        for head, col in TABLE2_COLUMNS:
            method, metric = _REPORTED_METRIC[col]
            v = r[(r["method"] == method) & (r["metric"] == metric)]["value"]
            row[head] = f"{float(v.iloc[0]):.{1 if col.startswith('volume') else 2}f}"
        rows.append(row)
    summ = rep[rep["case"].isna()]
    mean = {"Patient": "Mean±Std"}
    for head, col in TABLE2_COLUMNS:
        method, metric = _REPORTED_METRIC[col]
        v = summ[(summ["method"] == method) & (summ["metric"] == metric)]
        mean[head] = (f"{float(v['value'].iloc[0]):.2f}±{float(v['sd'].iloc[0]):.2f}" if len(v) else "-")
    rows.append(mean)
    return pd.DataFrame(rows).set_index("Patient")


def table3(per_case, *, label: str = "This reproduction (CNN)"):
    """Table 3: DSC, CR, PM (mean ± SD and range) of the paper's CNN and the compared methods as
    reported, and this run's CNN as reproduced."""
    import pandas as pd

    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 3")
    cur = reported(PAPER, table="Table 2")
    cur = cur[cur["case"].isna() & (cur["method"] == "CNN")]
    metrics = (("Dice similarity coefficient", "dsc", "dice"), ("Corresponding ratio", "corresponding_ratio",
               "corresponding_ratio"), ("Percent match", "percent_match", "percent_match"))

    def fmt_rep(df, metric):
        r = df[df["metric"] == metric]
        if r.empty:
            return "N.A", "N.A"
        r = r.iloc[0]
        ms = f"{r['value']:.2f}" + (f"±{r['sd']:.2f}" if pd.notna(r["sd"]) else "")
        rng = (f"{r['low']:.2f}-{r['high']:.2f}" if pd.notna(r["low"]) and pd.notna(r["high"]) else "N.A")
        if pd.isna(r["sd"]) and pd.isna(r["low"]) and "Range column" in str(r["note"]):
            ms, rng = "N.A", f"~{r['value']:.2f}"
        return ms, rng

    rows = []
    studies = [("Current study (Li et al. 2018)", "Convolutional neural network", cur)]
    for method, study in (("Support vector machine", "Zhou et al. [7]"),
                          ("Hidden Markov random field", "Huang et al. [14]"),
                          ("Deep Convolutional Neural Networks", "Wang et al. [15]")):
        studies.append((study, method, rep[rep["method"] == method]))
    for study, algo, df in studies:
        row = {"Study": study, "Algorithm": algo, "Source": "reported"}
        for head, metric, _ in metrics:
            row[f"{head}: Mean ± SD"], row[f"{head}: Range"] = fmt_rep(df, metric)
        rows.append(row)
    row = {"Study": label, "Algorithm": "Convolutional neural network (Table 1)", "Source": "reproduced"}
    for head, _, col in metrics:
        row[f"{head}: Mean ± SD"], row[f"{head}: Range"] = _mean_sd(per_case[col]), _range(per_case[col])
    rows.insert(1, row)
    return pd.DataFrame(rows).set_index("Study")


def comparison(results, table=None):
    """Summary row of Table 2, reported vs reproduced (:func:`npcrepro.evaluation.compare_run`): the
    run's per-patient ``table`` (default :func:`per_case` of its :func:`main_method`)."""
    from npcrepro.evaluation import compare_run
    from npcrepro.papers import reported

    rep = reported(PAPER, table="Table 2")
    rep = rep[rep["case"].isna() & (rep["method"] == "CNN")]
    table = per_case(results) if table is None else table
    detail = f"DCE frame {prep.DCE_FRAME}" if results.data_label == "phantom" else "pixel units"
    tab = compare_run(results, table.assign(method="CNN"), table="Table 2", reported=rep, detail=detail,
                      metric_map={"precision": "precision", "dsc": "dice"})
    tab.notes.append("The paper's 'Recall' column is TP/(TP+FP) (its Eqs. 1-2 swap the names): it is "
                     "compared with this run's precision. Its percent match PM = TP/(TP+FN) is the usual "
                     "recall.")
    return tab


def stage_gain(per_case):
    """Mean DSC of the 36x36, 72x72 and 144x144 score maps (each upsampled to 144x144)."""
    import pandas as pd

    return pd.DataFrame({"score map": ["36x36 (stage 1)", "72x72 (stage 2)", "144x144 (stage 3)"],
                         "DSC (mean ± SD)": [_mean_sd(per_case[c]) for c in ("dice_36", "dice_72", "dice")]
                         }).set_index("score map")


def modes_table(results):
    """Faithful vs working: folds, patients, DSC, losses, divergence, training seconds per fold."""
    import pandas as pd

    from npcrepro.evaluation import format_mean_sd

    rows = []
    for method in results.methods:
        t = per_case(results, method)
        tr = results.training[results.training["method"] == method]
        rows.append({"mode": method, "folds": t["fold"].nunique(), "patients": len(t),
                     "DSC (mean ± SD)": format_mean_sd(t["dice"].mean(), t["dice"].std()),
                     "first logged loss": tr["loss_first"].iloc[0], "last loss stage 1": tr["loss_stage1"].iloc[0],
                     "last loss stage 3": tr["loss_stage3"].iloc[0],
                     "diverged": bool((tr["diverged"].fillna("").astype(str) != "").any()),
                     "train s / fold": tr["train_seconds"].mean()})
    return pd.DataFrame(rows).set_index("mode")


def faithful_table(results):
    """The faithful-recipe test, one row per SGD mode (faithful, printed), fold and seed: patients,
    iterations run, whether the loss stayed finite, first and last logged losses (summed over pixels),
    the stage-1 loss change (%), the fold's DSC (mean over its patients) and the working mode's DSC on
    the same patients. Empty when no SGD mode ran."""
    import pandas as pd

    from npcrepro.chapters.li2018.methods import SGD_MODES

    m, tr = results.metrics, results.training
    m = m if "seed" in m else m.assign(seed=0)
    tr = tr if "seed" in tr else tr.assign(seed=0)
    rows = []
    for mode in [x for x in SGD_MODES if x in results.methods]:
        for _, t in tr[tr["method"] == mode].sort_values(["fold", "seed"]).iterrows():
            fold, seed = int(t["fold"]), int(t["seed"])
            mine = m[(m["method"] == mode) & (m["fold"] == fold) & (m["seed"] == seed)]
            work = m[(m["method"] == "working") & (m["fold"] == fold) & (m["seed"] == seed)]
            first, last1 = float(t["loss_first"]), float(t["loss_stage1"])
            change = 100.0 * (last1 - first) / abs(first) if np.isfinite(first) and np.isfinite(last1) and first else np.nan
            rows.append({"mode": mode, "fold": fold, "seed": seed, "patients": len(mine),
                         "iterations": int(t["iterations"]),
                         "loss finite": not str(t["diverged"] if isinstance(t["diverged"], str) else ""),
                         "first loss": first, "last loss stage 1": last1,
                         "last loss stage 3": float(t["loss_stage3"]),
                         "stage-1 loss change (%)": change,
                         "DSC": float(mine["dice"].mean()) if len(mine) else np.nan,
                         "DSC 36x36": float(mine["dice_36"].mean()) if len(mine) else np.nan,
                         "working DSC (same patients)": float(work["dice"].mean()) if len(work) else np.nan})
    return pd.DataFrame(rows)


def faithful_verdict(ft, mode: str = "faithful") -> str:
    """One sentence on whether ``mode`` trained, from :func:`faithful_table`: on how many folds its
    loss stayed finite, the mean stage-1 loss change, its DSC and the working DSC on the same
    patients. A fold counts as trained when the loss stayed finite and the DSC reached 0.1 and at least
    half the working mode's on the same patients (the chapter's criterion; the paper gives none)."""
    t = ft[ft["mode"] == mode] if len(ft) else ft
    if t.empty:
        return "was not run"
    finite = int(t["loss finite"].sum())
    work = t["working DSC (same patients)"]
    trained = int((t["loss finite"] & (t["DSC"] >= 0.1) & (t["DSC"] >= 0.5 * work.fillna(np.inf))).sum())
    change = t["stage-1 loss change (%)"].dropna()
    unit = "fold(s)" if "seed" not in t or t["seed"].nunique() <= 1 else "training(s) (folds x seeds)"
    parts = [f"kept a finite loss on {finite} of {len(t)} {unit}"]
    if len(change):
        parts.append(f"its stage-1 loss changed by {change.mean():+.1f} % over the stage")
    parts.append(f"it reached DSC {t['DSC'].mean():.2f}" + (f" (working mode on the same patients: "
                                                              f"{work.mean():.2f})" if work.notna().any() else ""))
    parts.append(f"it trained (finite loss, DSC at least 0.1 and half the working DSC) on {trained} of "
                 f"{len(t)}")
    return "; ".join(parts)


def patient_extremes(per_case, metric: str = "dice") -> tuple[dict, dict]:
    """(best, worst) rows of the per-patient table by ``metric``."""
    df = per_case.sort_values([metric, "case"], ascending=[False, True])
    return df.iloc[0].to_dict(), df.iloc[-1].to_dict()


# ------------------------------------------------------------------------------------------ figures
def _contour(ax, mask, color, lw=1.2, ls="-"):
    if np.any(mask) and not np.all(mask):
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=lw, linestyles=ls)


def _show(ax, img, title):
    ax.imshow(img, cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def figure_slices(results, n: int = 4):
    """One evaluated slice per patient (the middle one) with the tumour in white."""
    import matplotlib.pyplot as plt

    names = sorted(results.metrics["case"].unique())[:n]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        p = prepared_case(results, name)
        z = int(p.zs[len(p.zs) // 2])
        _show(ax, p.images[z], f"{name}, slice {z}")
        _contour(ax, p.masks[z], "white", lw=1)
    fig.tight_layout()
    return fig


def figure_augmentation(results):
    """The 11 rotations and 11 of the 33 contrast variants of one evaluated slice."""
    import matplotlib.pyplot as plt

    p = prepared_case(results, sorted(results.metrics["case"].unique())[0])
    img, ref = p.images[p.zs[0]], p.masks[p.zs[0]]
    aug = prep.Li2018Augment()
    # two rows of six panels each for the rotations and for the contrasts: the page's width holds it
    # without shrinking its labels (a row of 11 was shown at 0.42 of its size)
    fig, grid = plt.subplots(4, 6, figsize=(9.0, 6.6))
    for ax in grid.ravel():
        ax.set_axis_off()
    rotations, contrasts = grid[:2].ravel()[:11], grid[2:].ravel()[:11]
    for ax, angle in zip(rotations, prep.ROTATION_ANGLES):
        out, m = aug.apply(img, ref, angle, contrast=1, noise=0)
        _show(ax, out, f"{angle:+d}°")
        _contour(ax, m, "white", lw=0.6)
    for ax, ci in zip(contrasts, np.linspace(0, len(prep.CONTRAST_VARIANTS) - 1, 11).astype(int)):
        out, _ = aug.apply(img, ref, 0, contrast=int(ci), noise=1, rng=np.random.default_rng(0))
        lo, _, g = prep.CONTRAST_VARIANTS[ci]
        ax.imshow(out, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"sat {lo:g}%, γ {g:g}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def case_maps(results, row: Mapping, method: str | None = None) -> dict:
    """For one per-patient row: the prepared case, the stage maps of its fold's model on the evaluated
    slices, and the index of the slice with the largest tumour."""
    from npcrepro.chapters.li2018.methods import predict_maps

    p = prepared_case(results, row["case"])
    maps = predict_maps(load_model(results, method or main_method(results), int(row["fold"])), p.images[p.zs])
    refs = p.masks[p.zs]
    return {"images": p.images[p.zs], "refs": refs, "maps": maps,
            "i": int(np.argmax(refs.reshape(len(refs), -1).sum(1)))}


def figure_cases(rows: Sequence[dict], shown: Sequence[dict], labels: Sequence[str], threshold: float = 0.5):
    """Figs. 2-3: per row (a) the image, (b) ground truth (white), (c) prediction (white), titled with
    the patient's DSC, CR and PM."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False)
    for r, (row, s, lab) in enumerate(zip(rows, shown, labels)):
        i = s["i"]
        img = s["images"][i]
        _show(axes[r, 0], img, f"(a) {lab}: patient {row['case']}")
        _show(axes[r, 1], img, "(b) ground truth")
        _contour(axes[r, 1], s["refs"][i], "white")
        _show(axes[r, 2], img, f"(c) CNN: DSC {row['dice']:.3f}, CR {row['corresponding_ratio']:.3f}, "
                               f"PM {row['percent_match']:.3f}")
        _contour(axes[r, 2], s["maps"]["p144"][i] >= threshold, "white")
    fig.tight_layout()
    return fig


def figure_fusion(shown: Mapping):
    """Fig. 4: the 36x36 / 72x72 maps, (a) the Deconv2 output before the last fusion, (b) the fused
    map (Conv8, as probability); ground truth dashed."""
    import matplotlib.pyplot as plt

    maps, ref, i = shown["maps"], shown["refs"][shown["i"]], shown["i"]
    panels = [("image", shown["images"][i], "gray"), ("36x36 score map (stage 1)", maps["p36"][i], "magma"),
              ("72x72 score map (stage 2)", maps["p72"][i], "magma"),
              ("(a) before fusion: Deconv2 output", maps["deconv144"][i], "magma"),
              ("(b) after fusion: Conv8 (sigmoid)", maps["p144"][i], "magma")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    for ax, (title, arr, cmap) in zip(axes, panels):
        ax.imshow(arr, cmap=cmap, interpolation="nearest", extent=(0, ref.shape[1], ref.shape[0], 0))
        _contour(ax, ref, "cyan", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def fig_curves(results, fold: int = 0):
    """Training loss per iteration of every method on ``fold`` (stages by colour); log y."""
    from npcrepro.plots import curve_axes, panel_grid

    curves = {f"{m}, fold {fold}": results.curves(m, fold) for m in results.methods}
    fig, axes = panel_grid(len(curves), cols=len(curves), width=5.0, height=3.2)
    for ax, (label, df) in zip(axes, curves.items()):
        ax.set_title(label, fontsize=9)
        if df.empty or df["train_loss"].isna().all():
            ax.text(0.5, 0.5, "no finite training loss recorded", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        for s, g in df.groupby("stage"):
            ax.plot(g["iteration"], np.abs(g["train_loss"].to_numpy(float)), marker="o", ms=3, label=str(s))
        curve_axes(ax, "training loss", log=True)
    fig.tight_layout()
    return fig
