"""chen2020: tables, figures and the paper's three claims, read from a run's Results."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from npcrepro import transforms as T
from npcrepro.chapters.chen2020.methods import (ROWS, SAME_AS, TABLE_I, TABLE_II, build_row,
                                                training_order)
from npcrepro.chapters.chen2020.prepare import CLIP_RANGES, MODALITIES, STRUCTURE
from npcrepro.chapters.chen2020.samplers import inplane_box
from npcrepro.errors import DataError
from npcrepro.chapters.chen2020 import paper

__all__ = ["recipe_table", "model_table", "comparison", "summary_table", "three_questions",
           "fig_case", "fig_curves", "fig_slices", "fig_tp_fp_fn", "figure_case"]

PAPER = "chen2020"


def recipe_table() -> pd.DataFrame:
    """What the paper states (``npcrepro.chapters.chen2020.paper.INFO.recipe``) and where."""
    rows = [{"item": k, "paper": "not stated" if v["value"] is None else str(v["value"]),
             "source": v["source"], "note": v["note"]} for k, v in paper.INFO.recipe.items()]
    return pd.DataFrame(rows).set_index("item")


def model_table(keys: Sequence[str], width: float = 1.0, pool_sizes=None, patch_size: int = 33) -> pd.DataFrame:
    """Parameter counts of rows at paper scale (width 1) and at ``width``."""
    from npcrepro.models import count_parameters

    out = []
    for k in keys:
        r = ROWS[k]
        out.append({"row": k, "method": r.label, "input": " + ".join(r.modalities), "kind": r.kind,
                    "parameters (paper widths)": count_parameters(build_row(k, patch_size=patch_size)),
                    f"parameters (width {width:g})": count_parameters(
                        build_row(k, width=width, pool_sizes=pool_sizes, patch_size=patch_size))})
    return pd.DataFrame(out).set_index("row")


def comparison(results, table: str = TABLE_I):
    """Reported vs reproduced for one of the paper's tables, one line per method (the table's order),
    columns (metric, reported / reproduced); rows this run did not train say "not reproduced".
    Returns a :class:`~npcrepro.evaluation.ComparisonTable` (its caption names data and profile)."""
    from npcrepro.evaluation import ComparisonTable, compare_run

    entries = paper.TABLE_I_ROWS if table == TABLE_I else paper.TABLE_II_ROWS
    method_map = {e["label"]: SAME_AS.get(e["key"], e["key"]) for e in entries}
    long = compare_run(results, results.metrics, table=table, digits=3, method_map=method_map)
    names = {"dsc": "DSC", "ap": "AP", "dice_loss": "Dice loss"}
    wide = long.frame.unstack(0).swaplevel(0, 1, axis=1)
    wide = wide[[(m, side) for m in ("dsc", "ap", "dice_loss") for side in ("reported", "reproduced")]]
    wide.columns = [f"{names[m]} {side}" for m, side in wide.columns]
    wide = wide.loc[[e["label"] for e in entries]]
    # each column says whether it is reported or reproduced: the cells keep the number alone
    wide = wide.apply(lambda col: col.str.replace(r" \((reported|reproduced)\)$", "", regex=True))
    wide = wide.rename_axis("method").reset_index()
    return ComparisonTable(wide, long.numbers, long.caption, long.notes)


def summary_table(results) -> pd.DataFrame:
    """Reproduced mean ± sd per row over the test patients (all rows run, including the pre-trainings;
    seeds averaged per patient first), with training time."""
    from npcrepro.evaluation import average_seeds, format_mean_sd

    m, tr = average_seeds(results.metrics), results.training
    out = []
    for k in [k for k in results.methods if k in set(m["method"])]:
        g = m[m["method"] == k]
        t = tr[tr["method"] == k]
        out.append({"row": k, "method": results.label(k),
                    "tables": ", ".join(ROWS[k].tables) or "(pre-training)", "n": len(g),
                    "DSC": format_mean_sd(g["dice"].mean(), g["dice"].std(ddof=1), 3),
                    "AP": format_mean_sd(g["ap"].mean(), g["ap"].std(ddof=1), 3),
                    "Dice loss": format_mean_sd(g["dice_loss"].mean(), g["dice_loss"].std(ddof=1), 3),
                    "s / patient": round(float(g["seconds"].mean()), 2),
                    "train s": round(float(t["train_seconds"].sum()), 1)})
    return pd.DataFrame(out).set_index("row")


def _reported_by_key(table: str, metric: str = "dice") -> dict[str, float]:
    """{row key: reported value} of one table (``metric``: dice, ap or dice_loss)."""
    from npcrepro.papers import reported

    rep = reported(PAPER, table=table, metric={"dice": "dsc"}.get(metric, metric))
    by_label = dict(zip(rep["method"], rep["value"]))
    return {r["key"]: float(by_label[r["label"]])
            for r in (paper.TABLE_I_ROWS if table == TABLE_I else paper.TABLE_II_ROWS)}


def three_questions(results, metric: str = "dice") -> pd.DataFrame:
    """The paper's three claims, each as a paired comparison on the same test patients.

    1. fusion vs the best single sequence: the best fused row run (``mmfnet_full`` if run) against the
       single-sequence row with the highest mean (chosen on the test patients, which favours the single
       side); reported: the full MMFNet vs the best single-sequence row of Table I.
    2. fusion block vs plain multi-encoder (both without self-transfer): ``multi_mlp_std`` vs
       ``multi_encoder_mm`` (Table II).
    3. self-transfer: ``mmfnet_full`` vs ``multi_mlp_std`` (Table II).

    Columns: the two rows, reported and reproduced mean differences (A - B) over the test patients
    (each patient's rows averaged first), paired t-test and Wilcoxon p-values, the patients favouring
    each side, the Wilcoxon p Holm-adjusted over the claims tested, the difference detectable with 80 %
    power, n patients, the seeds averaged per patient and the verdict of :func:`npcrepro.claims.judge`
    (each claim says A > B).
    Comparisons whose rows were not run say so.
    """
    from npcrepro.claims import compare, judge

    m = results.metrics
    have = set(m["method"])
    mean = lambda k: float(m.loc[m["method"] == k, metric].mean())  # noqa: E731
    rep_i, rep_ii = _reported_by_key(TABLE_I, metric), _reported_by_key(TABLE_II, metric)
    singles = [k for k in have if ROWS[k].family in ("single", "unet3d", "unet", "patch_cnn")]
    fused = [k for k in ("mmfnet_full", "multi_mlp_std", "multi_encoder_mm") if k in have]
    best_single = max(sorted(singles), key=mean) if singles else None
    paper_single = max((r["key"] for r in paper.TABLE_I_ROWS if len(r["modalities"]) == 1), key=rep_i.get)
    qs = [("1. multi-modality fusion vs the best single sequence", fused[0] if fused else None, best_single,
           rep_i["mmfnet_full"] - rep_i[paper_single], f"{paper.FULL} vs {ROWS[paper_single].label}"),
          ("2. fusion block vs plain multi-encoder", "multi_mlp_std", "multi_encoder_mm",
           rep_ii["multi_mlp_std"] - rep_ii["baseline"], "Table II"),
          ("3. self-transfer", "mmfnet_full", "multi_mlp_std",
           rep_ii["mmfnet_full"] - rep_ii["multi_mlp_std"], "Table II")]
    run = [i for i, (_, a, b, *_) in enumerate(qs) if a in have and b in have]
    judged = dict(zip(run, judge([compare(m, qs[i][1], qs[i][2], metric) for i in run])))
    out = []
    for i, (q, a, b, rep_d, where) in enumerate(qs):
        row = {"question": q, "A": ROWS[a].label if a else "—", "B": ROWS[b].label if b else "—",
               "reported A - B": round(rep_d, 4), "reported from": where}
        if i in judged:
            t = judged[i]
            row.update({"reproduced A - B": t["mean_diff"], "sd of difference": t["sd_diff"],
                        "p (paired t)": t["p_t"], "p (Wilcoxon)": t["p_wilcoxon"], "p (Holm)": t["p_holm"],
                        "patients favouring A / B": f"{t['favour_a']} / {t['favour_b']}",
                        "detectable difference": t["detectable"], "n": t["n"], "seeds": t["seeds"],
                        "verdict": t["verdict"]})
        else:
            row.update({"reproduced A - B": np.nan, "n": 0, "verdict": "not run"})
        out.append(row)
    return pd.DataFrame(out).set_index("question")


# ---------------------------------------------------------------------------------------------
# figures


def figure_case(results) -> str:
    """The test case with the largest reference tumour."""
    cases = results.test_cases()
    return max(cases, key=lambda n: int(results.load_case(n, channels=["T1"]).labels[STRUCTURE].sum()))


def fig_case(prep, crop: Sequence[int]):
    """One prepared patient: the three normalised sequences on the slice with most tumour, reference
    contour red, the in-plane crop the networks see in yellow, and a sagittal view."""
    import matplotlib.pyplot as plt

    z = int(prep.target.sum(axis=(1, 2)).argmax())
    (y0, y1), (x0, x1) = inplane_box(prep, crop[1:])
    fig, axes = plt.subplots(1, len(prep.channels) + 1, figsize=(3.2 * (len(prep.channels) + 1), 3.4))
    for i, ch in enumerate(prep.channels):
        ax = axes[i]
        lo, hi = CLIP_RANGES.get(ch, (None, None))
        ax.imshow(prep.image[i, z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.contour(prep.target[z], levels=[0.5], colors="red", linewidths=1)
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
        ax.set_title(f"{ch} (clipped to {lo}, {hi})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    x = int(round(prep.center[2]))
    ax = axes[-1]
    sp = prep.record.resampled.spacing if prep.record.resampled is not None else prep.spacing
    ax.imshow(prep.image[prep.channels.index("CET1") if "CET1" in prep.channels else 0, :, :, x],
              cmap="gray", aspect=sp[0] / sp[1], interpolation="nearest")
    ax.contour(prep.target[:, :, x], levels=[0.5], colors="red", linewidths=1)
    ax.set_title("sagittal (CET1)", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{prep.name}, axial slice {z}: reference red, network crop yellow", fontsize=10)
    fig.tight_layout()
    return fig


def fig_curves(results, fold: int = 0):
    """Training and validation loss per row (one fold), with the self-transfer warm-up shaded."""
    from npcrepro.plots import panel_grid

    curves = {k: results.curves(k, fold) for k in training_order(results.methods)}
    keys = [k for k, c in curves.items() if not c.empty]
    fig, axes = panel_grid(len(keys))
    for ax, k in zip(axes, keys):
        c = curves[k]
        epochs = np.arange(1, len(c) + 1)  # one curve row per epoch (one validation each)
        ax.plot(epochs, c["train_loss"], label="train")
        ax.plot(epochs, c["val_loss"], label="validation")
        warm = int((c["stage"] == "warmup").sum()) if "stage" in c else 0
        if warm:
            ax.axvspan(0.5, warm + 0.5, color="0.9", label="frozen encoders")
        patch = ROWS[k].kind == "patch"
        ax.set_title(results.label(k), fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, None if patch else 1.05)
        ax.set_ylabel("BCE" if patch else "Dice loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _display(case, channel: str) -> np.ndarray:
    img = case.images[channel]
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def _slice_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    s = pred.sum() + ref.sum()
    return float(2 * (pred & ref).sum() / s) if s else 1.0


def fig_slices(results, row: str = "mmfnet_full", case: str | None = None, n_slices: int = 4):
    """Fig. 7 style: ``n_slices`` axial slices (most tumour first) of one patient, T1 / T2 / CET1 from top
    to bottom, reference contour red, prediction blue, per-slice DSC in the column title."""
    import matplotlib.pyplot as plt

    case = case or figure_case(results)
    pred = results.prediction(row, case, STRUCTURE)
    if pred is None:
        raise DataError(f"no saved prediction of row {row!r} for case {case!r}")
    c = results.load_case(case)
    ref = c.labels[STRUCTURE]
    area = ref.sum(axis=(1, 2))
    zs = sorted([int(z) for z in np.argsort(-area)[:n_slices] if area[z] > 0]
                or [int(np.argmax(pred.sum((1, 2))))])
    box = T.bbox(ref | pred, margin=(0, 12, 12)) or tuple((0, s) for s in ref.shape)
    sl = (slice(*box[1]), slice(*box[2]))
    fig, axes = plt.subplots(3, len(zs), figsize=(2.3 * len(zs), 6.6), squeeze=False)
    for j, z in enumerate(zs):
        for i, ch in enumerate(MODALITIES):
            ax = axes[i, j]
            ax.imshow(_display(c, ch)[z][sl], cmap="gray", interpolation="nearest")
            if ref[z][sl].any():
                ax.contour(ref[z][sl], levels=[0.5], colors="red", linewidths=1.2)
            if pred[z][sl].any():
                ax.contour(pred[z][sl], levels=[0.5], colors="blue", linewidths=1.2)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"z={z}  DSC={_slice_dice(pred[z], ref[z]):.3f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(ch)
    fig.suptitle(f"{results.label(row)} on {case}: reference red, prediction blue", fontsize=10)
    fig.tight_layout()
    return fig


def fig_tp_fp_fn(results, rows: Sequence[str] | None = None, case: str | None = None, z: int | None = None):
    """Fig. 9 style: one slice, T1 / T2 / CET1 from top to bottom, one column per method; true positives
    green, false positives red, false negatives blue (first column: the reference)."""
    import matplotlib.pyplot as plt

    case = case or figure_case(results)
    preds = {r: results.prediction(r, case, STRUCTURE) for r in (rows or results.methods)}
    preds = {r: p for r, p in preds.items() if p is not None}
    c = results.load_case(case)
    ref = c.labels[STRUCTURE]
    if z is None:
        z = int(np.argmax(ref.sum(axis=(1, 2))))
    union = ref[z].copy()
    for p in preds.values():
        union |= p[z]
    box = T.bbox(union, margin=14) or tuple((0, s) for s in ref.shape[1:])
    sl = (slice(*box[0]), slice(*box[1]))
    cols = [("Reference", None)] + [(results.label(r), p) for r, p in preds.items()]
    fig, axes = plt.subplots(3, len(cols), figsize=(1.9 * len(cols), 6.0), squeeze=False)
    for j, (title, p) in enumerate(cols):
        g = ref[z][sl]
        for i, ch in enumerate(MODALITIES):
            ax = axes[i, j]
            base = _display(c, ch)[z][sl]
            over = np.zeros(base.shape + (4,))
            if p is None:
                over[g] = (0, 0.8, 0, 0.55)
            else:
                q = p[z][sl]
                over[q & g] = (0, 0.8, 0, 0.55)
                over[q & ~g] = (1, 0, 0, 0.6)
                over[~q & g] = (0, 0.3, 1, 0.6)
            ax.imshow(np.repeat(base[..., None], 3, axis=-1), interpolation="nearest")
            ax.imshow(over, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title("\n".join(_wrap(title, 18)), fontsize=7)
            if j == 0:
                ax.set_ylabel(ch)
    fig.suptitle(f"{case}, slice {z}: TP green, FP red, FN blue", fontsize=10)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.replace("+", "+ ").split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip() if not cur.endswith("+") else cur + w
    return lines + ([cur] if cur else [])


# ---------------------------------------------------------------------------------------------
# 3D renderings (Figs. 8 and 10) and the phantom's per-sequence tumour contrast


def surface_triangles(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The surface of a (z, y, x) mask by marching cubes at the 0.5 level (scikit-image): (n, 3, 3)
    triangle corners (x, y, z) in mm on the case's grid, voxel centres at ``index * spacing``.
    The mask is padded by one voxel so that a structure touching the grid's edge is closed."""
    from skimage.measure import marching_cubes

    m = np.pad(np.asarray(mask, bool), 1).astype(np.float32)
    if not m.any():
        return np.zeros((0, 3, 3))
    verts, faces, _, _ = marching_cubes(m, level=0.5, spacing=tuple(float(s) for s in spacing))
    verts -= np.asarray(spacing, float)  # undo the padding's one-voxel shift
    return verts[faces][..., ::-1]       # (z, y, x) -> (x, y, z)


def _draw_surface(ax, mask, spacing, color, limits, title):
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    q = surface_triangles(mask, spacing)
    if len(q):
        normal = np.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        shade = 0.45 + 0.55 * np.abs(normal @ np.array([0.4, 0.5, 0.77]))
        rgb = np.clip(np.asarray(color)[None] * shade[:, None], 0, 1)
        ax.add_collection3d(Poly3DCollection(q, facecolors=rgb, edgecolors="none"))
    else:
        ax.text2D(0.5, 0.5, "empty", transform=ax.transAxes, ha="center")
    for setter, (lo, hi) in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), limits):
        setter(lo, hi)
    ax.set_box_aspect([hi - lo for lo, hi in limits])
    ax.view_init(elev=20, azim=-60)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def _limits(masks, spacing, margin: int = 2):
    union = np.logical_or.reduce([np.asarray(m, bool) for m in masks])
    box = T.bbox(union, margin=(margin, margin, margin)) or tuple((0, s) for s in union.shape)
    return [(box[a][0] * spacing[a], box[a][1] * spacing[a]) for a in (2, 1, 0)]  # x, y, z in mm


def _crop_to(masks, box):
    return [m[tuple(slice(a, b) for a, b in box)] for m in masks]


def fig_3d_cases(results, row: str = "mmfnet_full", n: int = 3):
    """Fig. 8: 3D surfaces of the reference (top row) and of ``row``'s prediction (bottom row) for the
    ``n`` test patients with the largest tumours, each column on its own mm scale."""
    import matplotlib.pyplot as plt

    cases = sorted(results.test_cases(), key=lambda c: -int(results.load_case(c, channels=["T1"]).labels[STRUCTURE].sum()))[:n]
    fig = plt.figure(figsize=(3.2 * len(cases), 6.2))
    for j, name in enumerate(cases):
        case = results.load_case(name, channels=["T1"])
        ref, pred = case.labels[STRUCTURE], results.prediction(row, name, STRUCTURE)
        pred = np.zeros_like(ref) if pred is None else pred
        lim = _limits([ref, pred], case.spacing)
        for i, (m, color, what) in enumerate(((ref, (0.85, 0.2, 0.2), "reference"),
                                              (pred, (0.2, 0.35, 0.85), f"{row}, DSC {_slice_dice(pred, ref):.3f}"))):
            ax = fig.add_subplot(2, len(cases), i * len(cases) + j + 1, projection="3d")
            _draw_surface(ax, m, case.spacing, color, lim, f"{name}: {what}")
    fig.suptitle(f"3D reference (top) and {results.label(row)} (bottom); mm axes, marching-cubes surfaces", fontsize=10)
    fig.tight_layout()
    return fig


def fig_3d_methods(results, rows: Sequence[str], case: str | None = None):
    """Fig. 10: 3D surfaces of one patient's reference (a) and of every row's prediction, DSC in the
    titles, all on the same mm scale."""
    import matplotlib.pyplot as plt

    case = case or figure_case(results)
    c = results.load_case(case, channels=["T1"])
    ref = c.labels[STRUCTURE]
    preds = {r: results.prediction(r, case, STRUCTURE) for r in rows}
    preds = {r: p for r, p in preds.items() if p is not None}
    lim = _limits([ref, *preds.values()], c.spacing)
    panels = [("(a) reference", ref, (0.85, 0.2, 0.2))] + [
        (f"({chr(98 + i)}) {r}, DSC {_slice_dice(p, ref):.3f}", p, (0.2, 0.35, 0.85)) for i, (r, p) in enumerate(preds.items())]
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(3.2 * cols, 3.0 * nrows))
    for k, (title, m, color) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, k + 1, projection="3d")
        _draw_surface(ax, m, c.spacing, color, lim, title)
    fig.suptitle(f"{case}: reference and every row's prediction in 3D (mm axes)", fontsize=10)
    fig.tight_layout()
    return fig


def sequence_contrast(results, ring_mm: float = 5.0) -> pd.DataFrame:
    """How visible the tumour is on each sequence of the run's patients: per case and sequence, the
    contrast-to-noise ratio (mean tumour - mean ring) / sd ring and the AUC of a single voxel's
    intensity separating tumour from the ring (0.5: invisible; 0 or 1: perfectly separated), the ring
    being the voxels within ``ring_mm`` mm of the tumour (on the case's grid). Returns one row per
    sequence: mean and sd over patients of CNR and AUC, and of |AUC - 0.5|."""
    from scipy import ndimage
    from scipy.stats import mannwhitneyu

    rows = []
    names = results.metrics[["case"]].drop_duplicates()["case"].tolist()
    for name in names:
        case = results.load_case(name, channels=list(MODALITIES))
        tum = np.asarray(case.labels[STRUCTURE], bool)
        if not tum.any():
            continue
        dist = ndimage.distance_transform_edt(~tum, sampling=case.spacing)
        ring = (dist > 0) & (dist <= ring_mm)
        for ch in MODALITIES:
            img = np.asarray(case.images[ch], float)
            a, b = img[tum], img[ring]
            auc = float(mannwhitneyu(a, b).statistic) / (a.size * b.size)
            rows.append({"case": name, "sequence": ch, "cnr": (a.mean() - b.mean()) / max(b.std(), 1e-9),
                         "auc": auc, "separation": abs(auc - 0.5)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    g = df.groupby("sequence", sort=False)
    out = pd.DataFrame({"patients": g.size(), "CNR mean": g["cnr"].mean(), "CNR sd": g["cnr"].std(),
                        "AUC mean": g["auc"].mean(), "|AUC - 0.5| mean": g["separation"].mean()})
    return out.reset_index().round(3)
