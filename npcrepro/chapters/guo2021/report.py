"""guo2021: Table 1 reported vs reproduced, the summary and inter-observer tables, the headline numbers
and the paper's figures (Figs. 5-8), read from the run's :class:`~npcrepro.engine.results.Results`."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from npcrepro import transforms as T
from npcrepro.chapters.guo2021.methods import CONVERGED, METHODS, NETWORK, model_kwargs
from npcrepro.chapters.guo2021.prepare import RATER1, RATER2, STRUCTURE

PAPER = "guo2021"
_BASELINES = ("CNN", "ACDNet", "Deeplab", "V-Net")
_COLOURS = dict(zip(("CSCN", "CNN", "ACDNet", "Deeplab", "V-Net", "BUNet"),
                    ("red", "cyan", "yellow", "magenta", "orange", "white")))


def data_label(results) -> str:
    """What the run read, with its channel (:func:`npcrepro.evaluation.data_source`)."""
    from npcrepro.evaluation import data_source

    return data_source(results, str(results.params["channel"]))


def converged(results) -> pd.DataFrame:
    """The per-patient rows of networks that trained to the end with a finite loss, scored; seeds
    averaged per patient (:func:`npcrepro.evaluation.average_seeds`)."""
    from npcrepro.evaluation import average_seeds

    m = results.metrics
    return average_seeds(m[m["status"] == CONVERGED].dropna(subset=["dice"]))


def run_cases(results) -> list[str]:
    """Every patient of the run (training, validation or test in some round)."""
    return sorted({c for f in results.splits() for c in (*f.train, *f.val, *f.test)})


def ordered_methods(results) -> list[str]:
    present = set(results.metrics["method"]) if len(results.metrics) else set()
    return [m for m in METHODS if m in present]


# ------------------------------------------------------------------------------------------ tables
def network_table(P) -> pd.DataFrame:
    """Parameter counts of every network at the profile's width."""
    from npcrepro.models import cscn

    nets = {"BUNet": "BUNet", "ACDNet (cascade, image + coarse map)": "ACDNet_cascade",
            "ACDNet (alone)": "ACDNet", "CNN": "CNN", "Deeplab": "Deeplab", "V-Net": "V-Net"}
    return cscn.parameter_table({k: (NETWORK[v], model_kwargs(v, P["width"], 1, P["acd_layers"]))
                                 for k, v in nets.items()}).set_index("network")


def training_table(results) -> pd.DataFrame:
    cols = ["fold", "method", "status", "iterations", "train_seconds", "final_train_loss", "best_val_loss",
            "parameters"]
    return results.training_table(cols).round(3)


def pooled_f1(table: pd.DataFrame) -> pd.Series:
    """F1 per method from TP, FP, FN summed over all patients' voxels."""
    ok = table.dropna(subset=["tp"])
    g = ok.groupby("method")[["tp", "fp", "fn"]].sum()
    return (2 * g["tp"] / (2 * g["tp"] + g["fp"] + g["fn"]).replace(0, np.nan)).rename("f1_pooled")


def comparison(results):
    """Reported vs reproduced Table 1 (CNN, ACDNet, Deeplab, CSCN; per-patient means)."""
    from npcrepro.evaluation import compare_run

    return compare_run(results, converged(results), table="Table 1", detail=str(results.params["channel"]),
                       digits=3)


def _mean_sd(g: pd.DataFrame, col: str, digits: int, unit: str = "") -> str:
    from npcrepro.evaluation import format_mean_sd

    if not len(g):
        return "—"
    return format_mean_sd(g[col].mean(), g[col].std(ddof=1), digits, *([unit] if unit else []))


def summary_table(results) -> pd.DataFrame:
    """Reproduced mean ± sd per method over all pooled patients, the pooled-voxel F1, how many
    patients got an empty prediction, training status and time (CSCN: both stages). Seeds are
    averaged per patient first; the pooled F1 sums every seed's voxels."""
    from npcrepro.evaluation import average_seeds

    m = results.metrics
    f1p = pooled_f1(m) if "tp" in m else pd.Series(dtype=float)
    tr = results.training
    out = []
    for method in ordered_methods(results):
        g = m[m["method"] == method]
        ok = average_seeds(g.dropna(subset=["dice"])) if "dice" in g else g.iloc[:0]
        g = average_seeds(g)
        t = tr[tr["method"].isin(["CSCN", "BUNet"] if method == "CSCN" else [method])]
        out.append({"method": method, "patients": len(g), "scored": len(ok),
                    "DSC": _mean_sd(ok, "dice", 3), "ASSD (mm)": _mean_sd(ok, "assd", 2),
                    "F1": _mean_sd(ok, "f1", 3),
                    "F1 pooled": round(float(f1p.get(method, np.nan)), 3) if len(ok) else np.nan,
                    "empty predictions": int(ok["pred_empty"].sum()) if len(ok) else 0,
                    "training": ", ".join(sorted(set(g["status"]))),
                    "train s": round(float(t["train_seconds"].sum()), 1)})
    return pd.DataFrame(out).set_index("method")


def inter_observer_phantom(data: str, names: Sequence[str] | None = None, limit: int = 28) -> pd.DataFrame:
    """Two of the phantom's raters, GTVp_rater1 (as the reference) vs GTVp_rater2, per patient on the
    original grid (DSC, ASSD, F1), like the paper's two physicians on 28 patients: two observers, neither
    of them the consensus the networks are scored against."""
    from npcrepro import metrics
    from npcrepro.datasets import open_dataset

    ds = open_dataset(data)
    if RATER1 not in ds.structures or RATER2 not in ds.structures:
        return pd.DataFrame(columns=["case", "dice", "assd", "f1"])
    rows = []
    for n in list(names or ds.cases)[:limit]:
        c = ds.load(n, channels=[ds.channels[0]], structures=[RATER1, RATER2])
        if RATER1 not in c.labels or RATER2 not in c.labels:
            continue
        r = metrics.evaluate_case(c.labels[RATER2], c.labels[RATER1], c.spacing)
        rows.append({"case": n, "dice": r["dice"], "assd": r["assd"], "f1": r["f1"]})
    return pd.DataFrame(rows)


def inter_observer_real(src, organs: Sequence[str], max_scans: int | None = None) -> pd.DataFrame:
    """Real inter-observer disagreement: the DeepMind TCIA head-and-neck organ masks, radiographer pass
    vs oncologist-arbitrated pass (CT organs, not NPC tumours: a reference for the size of real
    disagreement). Empty frame when ``src`` is None."""
    from npcrepro import metrics
    from npcrepro.datasets.adapters import two_raters as TR

    if src is None:
        return pd.DataFrame(columns=["scan", "organ", "dice", "assd", "f1"])
    rows = []
    for scan in TR.scans(src)[:max_scans]:
        have = set(TR.organs(src, scan))
        for organ in organs:
            if organ not in have:
                continue
            a, b = TR.load_pair(src, scan, organ)
            box = T.bbox(a.array | b.array, margin=2)
            if box is None:
                continue
            sl = tuple(slice(*x) for x in box)
            r = metrics.evaluate_case(a.array[sl], b.array[sl], a.spacing)
            rows.append({"scan": scan, "organ": organ, "dice": r["dice"], "assd": r["assd"], "f1": r["f1"]})
    return pd.DataFrame(rows)


def inter_observer_table(phantom: pd.DataFrame, real: pd.DataFrame | None = None, *,
                         data_label: str = "phantom", profile: str = "") -> pd.DataFrame:
    """The paper's two physicians (reported) next to two of the phantom's raters (reproduced) and the
    real two-pass organ masks (real data), mean ± sd of DSC, ASSD and F1, every cell labelled."""
    from npcrepro.papers import reported

    rep = reported(PAPER, method="Two physicians").set_index("metric")["value"]
    rows = [{"source": "Two physicians, 28 NPC patients (paper, Sec. 4.4)", "n": 28,
             "DSC": f"{rep['dsc']:.3f} (reported)", "ASSD (mm)": f"{rep['assd']:.2f} (reported)",
             "F1": f"{rep['f1']:.3f} (reported)"}]

    def cells(df: pd.DataFrame, tag: str) -> dict:
        return {"n": len(df), "DSC": f"{_mean_sd(df, 'dice', 3)} ({tag})",
                "ASSD (mm)": f"{_mean_sd(df, 'assd', 2)} ({tag})", "F1": f"{_mean_sd(df, 'f1', 3)} ({tag})"}

    if phantom is not None and len(phantom):
        label = f"GTVp_rater1 vs GTVp_rater2, {data_label}" + (f", {profile} profile" if profile else "")
        rows.append({"source": label, **cells(phantom, "reproduced")})
    if real is not None and len(real):
        organs = ", ".join(sorted(real["organ"].unique()))
        rows.append({"source": f"radiographer vs oncologist, real CT organ masks ({organs})",
                     **cells(real, "real data")})
    return pd.DataFrame(rows).set_index("source")


#: Keys :func:`headline` always returns ("—" when a method needed for them was not run).
_HEADLINE_TEXT = ("best_baseline", "cscn_minus_best", "cscn_vs_best_p", "cscn_rank", "n_methods", "verdict",
                  "cascade_gain", "vnet_outcome", "mean_precision", "mean_recall", "seg_bias")


def _vnet_outcome(v: pd.DataFrame) -> str:
    status = sorted(set(v["status"]))
    vo = v.dropna(subset=["dice"]) if "dice" in v else v.iloc[:0]
    if status != [CONVERGED]:
        return f"training stopped with a non-finite loss ({', '.join(status)})"
    if len(vo) and vo["pred_empty"].astype(bool).all():
        return "trained with a finite loss but predicted no tumour voxel on any patient"
    n_empty = int(vo["pred_empty"].astype(bool).sum())
    return (f"trained with a finite loss and reached DSC {_mean_sd(vo, 'dice', 3)}"
            + (f" ({n_empty} empty predictions)" if n_empty else ""))


def _seg_bias(prec: float, rec: float) -> str:
    if rec > prec + 0.1:
        return ("the networks over-segment, the direction Eq. 7 pushes them (a missed tumour voxel costs "
                "d + 1 times a false alarm)")
    if prec > rec + 0.1:
        return ("the networks under-segment, although Eq. 7 weighs missed tumour voxels d + 1 times a "
                "false alarm")
    return "over- and under-segmentation are about balanced"


def _trainings_text(seeds: int) -> str:
    return "one training" if seeds == 1 else f"the mean of {seeds} trainings (seeds)"


def headline(results) -> dict[str, Any]:
    """Numbers the chapter's prose quotes (for myst-nb ``glue``): per method mean DSC, ASSD as text, the
    CSCN - best baseline DSC difference with a paired test over patients and its verdict on "CSCN is
    better" (:mod:`npcrepro.claims`: a rank of means is not a verdict), V-Net's outcome, and run facts."""
    from npcrepro.claims import compare, judge

    m = results.metrics
    ok = converged(results)
    out: dict[str, Any] = {k: "—" for k in _HEADLINE_TEXT}
    out.update(n_patients=int(m["case"].nunique()), n_rounds=int(m["fold"].nunique()))
    means = ok.groupby("method")["dice"].mean()
    for meth in METHODS:
        g = ok[ok["method"] == meth]
        key = meth.lower().replace("-", "")
        out[f"{key}_dsc"], out[f"{key}_assd"] = _mean_sd(g, "dice", 3), _mean_sd(g, "assd", 2, "mm")
    baselines = [b for b in _BASELINES if b in means]
    if "CSCN" in means and baselines:
        best = max(baselines, key=lambda b: means[b])
        t = judge([compare(ok, "CSCN", best, "dice")])[0]
        rank = int((means > means["CSCN"]).sum()) + 1
        out.update(best_baseline=best, cscn_minus_best=f"{t['mean_diff']:+.3f}",
                   cscn_vs_best_p=f"{t['p_wilcoxon']:.3f}" if math.isfinite(t["p_wilcoxon"]) else "n/a",
                   cscn_rank=rank, n_methods=len(means))
        out["verdict"] = (f"CSCN ranks {rank} of {len(means)} by mean DSC (the paper: first); the claim that it "
                          f"beats the best baseline, {best}: {t['verdict']} ({t['favour_a']} of {t['n']} "
                          f"patients favour CSCN, Wilcoxon p = {out['cscn_vs_best_p']}, paired by patient, "
                          f"{_trainings_text(t['seeds'])} per patient)")
    if "BUNet" in means and "CSCN" in means:
        out["cascade_gain"] = f"{means['CSCN'] - means['BUNet']:+.3f}"
    v = m[m["method"] == "V-Net"]
    if len(v):
        out["vnet_outcome"] = _vnet_outcome(v)
    for meth in (x for x in METHODS if x not in set(m["method"])):
        key = meth.lower().replace("-", "")
        out[f"{key}_dsc"] = "— (not trained at this profile)"
        if meth == "V-Net":
            out["vnet_outcome"] = (f"was not trained at the {results.profile} profile "
                                   "(`methods` leaves it out: it trains at the gpu profile)")
    if "precision" in ok and "recall" in ok and len(ok):
        pr = ok.groupby("method")[["precision", "recall"]].mean()
        prec, rec = float(pr["precision"].mean()), float(pr["recall"].mean())
        out["mean_precision"], out["mean_recall"] = f"{prec:.2f}", f"{rec:.2f}"
        out["seg_bias"] = _seg_bias(prec, rec)
    out["train_minutes"] = f"{results.training['train_seconds'].sum() / 60:.1f}"
    return out


# ------------------------------------------------------------------------------------------ figures
def _load_case(results, name: str):
    return results.load_case(name, channels=[results.params["channel"]], structures=[STRUCTURE])


def _display(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def figure_cases(results, n: int) -> list[str]:
    """The ``n`` patients with the largest reference tumours among those with a CSCN prediction."""
    m = results.metrics
    have = m[(m["method"] == "CSCN") & m["dice"].notna()] if "CSCN" in set(m["method"]) else m
    return have.sort_values("volume_ref_cm3", ascending=False)["case"].drop_duplicates().tolist()[:n]


def fig_2d_results(results, cases: Sequence[str] | None = None, n: int = 3):
    """Fig. 7 of the paper: one row per patient (the axial slice with the largest tumour area), columns
    raw, ground truth, CSCN, CNN, ACDNet, Deeplab, V-Net (prediction in red, reference contour green)."""
    import matplotlib.pyplot as plt

    cases = list(cases or figure_cases(results, n))
    channel = results.params["channel"]
    cols = ["Raw", "Ground truth"] + [m for m in ("CSCN", *_BASELINES) if m in results.methods]
    fig, axes = plt.subplots(len(cases), len(cols), figsize=(1.9 * len(cols), 2.1 * len(cases)), squeeze=False)
    for i, name in enumerate(cases):
        c = _load_case(results, name)
        ref = c.labels[STRUCTURE]
        z = int(ref.sum(axis=(1, 2)).argmax())
        box = T.bbox(ref[z], margin=int(round(30 / c.spacing[1]))) or tuple((0, s) for s in ref.shape[1:])
        sl = tuple(slice(*b) for b in box)
        img = _display(c.images[channel])[z][sl]
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", interpolation="nearest")
            if col == "Ground truth":
                ax.imshow(np.ma.masked_where(~ref[z][sl], ref[z][sl]), cmap="autumn_r", alpha=0.5,
                          interpolation="nearest")
            elif col != "Raw":
                pred = results.prediction(col, name, STRUCTURE)
                if pred is None:
                    ax.text(0.5, 0.5, "no prediction", color="yellow", ha="center", va="center",
                            transform=ax.transAxes, fontsize=8)
                else:
                    p = pred[z][sl]
                    if p.any():
                        ax.imshow(np.ma.masked_where(~p, p), cmap="autumn", alpha=0.5, interpolation="nearest")
                    if ref[z][sl].any():
                        ax.contour(ref[z][sl], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name}\nz={z}", fontsize=8)
    fig.suptitle("Axial slice with the largest tumour area: prediction red, reference contour green", fontsize=10)
    fig.tight_layout()
    return fig


def fig_three_views(results, case: str | None = None, methods: Sequence[str] = ("CSCN", *_BASELINES)):
    """Fig. 8 of the paper: axial, coronal and sagittal planes through the tumour's centre of one
    patient; reference filled, each method's contour in its own colour."""
    import matplotlib.pyplot as plt
    from scipy import ndimage

    case = case or figure_cases(results, 1)[0]
    c = _load_case(results, case)
    ref = c.labels[STRUCTURE]
    img = _display(c.images[results.params["channel"]])
    zc, yc, xc = (int(round(v)) for v in ndimage.center_of_mass(ref))
    sp = c.spacing
    planes = {"axial": (img[zc], ref[zc], sp[1] / sp[2], lambda a: a[zc]),
              "coronal": (img[:, yc], ref[:, yc], sp[0] / sp[2], lambda a: a[:, yc]),
              "sagittal": (img[:, :, xc], ref[:, :, xc], sp[0] / sp[1], lambda a: a[:, :, xc])}
    preds = {m: results.prediction(m, case, STRUCTURE) for m in methods if m in results.methods}
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (title, (im, r, aspect, cut)) in zip(axes, planes.items()):
        origin = "upper" if title == "axial" else "lower"
        ax.imshow(im, cmap="gray", aspect=aspect, origin=origin, interpolation="nearest")
        ax.imshow(np.ma.masked_where(~r, r), cmap="summer", alpha=0.45, aspect=aspect, origin=origin,
                  interpolation="nearest")
        for m, p in preds.items():
            if p is not None and cut(p).any():
                ax.contour(cut(p), levels=[0.5], colors=_COLOURS[m], linewidths=1.0, origin=origin)
        ax.set_title(title)
        ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Line2D([], [], color=_COLOURS[m], label=m) for m, p in preds.items() if p is not None]
    handles.insert(0, plt.Rectangle((0, 0), 1, 1, color="green", alpha=0.45, label="reference"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{case}: three orthogonal planes through the tumour centre", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def view_table(results) -> pd.DataFrame:
    """What fusing the three views adds (this chapter's probability averaging): per method, the mean
    DSC on the working grid of each single view's map, of the views' mean, and the mean's gain over
    the best single view (patients of all rounds)."""
    cols = ["dice_axial", "dice_coronal", "dice_sagittal", "dice_views_mean"]
    m = converged(results)
    if not set(cols) <= set(m.columns):
        return pd.DataFrame()
    rows = []
    for method in ordered_methods(results):
        g = m[m["method"] == method][cols].dropna()
        if g.empty:
            continue
        mean = g.mean()
        best = max(mean[c] for c in cols[:3])
        rows.append({"method": method, "patients": len(g), "axial": mean["dice_axial"],
                     "coronal": mean["dice_coronal"], "sagittal": mean["dice_sagittal"],
                     "views averaged": mean["dice_views_mean"], "gain over best view": mean["dice_views_mean"] - best})
    return pd.DataFrame(rows).round(3)


def accuracy_curve(results, method: str, fold: int = 0) -> pd.DataFrame:
    """A network's accuracy curve of one round (CSCN: its ACDNet fine stage), first seed."""
    from npcrepro.chapters.guo2021.methods import ACCURACY_CSV, read_accuracy

    return read_accuracy(results.job_dir(method, fold, results.seeds[0] if results.seeds else 0) / ACCURACY_CSV)


def fig_accuracy(results, fold: int = 0):
    """Fig. 4 of the paper: training accuracy (voxel accuracy on a fixed subset of training blocks,
    solid) and validation accuracy (all validation blocks, dashed) of every network of one round,
    against the iteration."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, method in enumerate(m for m in ("BUNet", "CSCN", *_BASELINES) if m in results.methods):
        acc = accuracy_curve(results, method, fold)
        if acc.empty:
            continue
        label = "ACDNet (cascade)" if method == "CSCN" else method
        color = f"C{i}"
        ax.plot(acc["iteration"], acc["train_accuracy"], color=color, marker="o", ms=3, label=f"{label}, training")
        ax.plot(acc["iteration"], acc["val_accuracy"], color=color, ls="--", label=f"{label}, validation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("voxel accuracy")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Round {fold}: training accuracy (the paper's Fig. 4)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_curves(results, fold: int = 0):
    """Figs. 5-6 of the paper: training and validation loss (distance-weighted focal) of every network
    of one round (CSCN: its ACDNet fine stage), and the learning rate."""
    import matplotlib.pyplot as plt

    fig, (a0, a1, a2) = plt.subplots(1, 3, figsize=(14, 3.8))
    lr = None
    for method in ("BUNet", "CSCN", *_BASELINES):
        if method not in results.methods:
            continue
        cur = results.curves(method, fold)
        if cur.empty:
            continue
        label = "ACDNet (cascade)" if method == "CSCN" else method
        a0.plot(cur["iteration"], cur["train_loss"], label=label)
        a1.plot(cur["iteration"], cur["val_loss"], label=label)
        lr = cur if lr is None else lr
    for ax, t in ((a0, "training loss"), (a1, "validation loss")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(t)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if lr is not None:
        it = np.arange(int(lr["iteration"].max()) + 1)
        P = results.params
        a2.plot(it, float(P["lr"]) * 0.9 ** (it // int(P["decay_every"])), label="schedule")
        a2.plot(lr["iteration"], lr["lr"], "o", ms=4, label="logged (last update of each row)")
        a2.legend(fontsize=7)
        a2.set_xlabel("iteration")
        a2.set_ylabel("learning rate")
    fig.suptitle(f"Round {fold}: losses and learning-rate schedule", fontsize=10)
    fig.tight_layout()
    return fig
