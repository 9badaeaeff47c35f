"""xue2020's figures: how the target is built (one case), per-patient boxes, contours on the largest test
targets and the training curves. Each reads :class:`~npcrepro.engine.results.Results` and returns a matplotlib
figure."""
from __future__ import annotations

import numpy as np

from npcrepro import transforms as T
from npcrepro.chapters.xue2020.methods import METHODS, MODELS
from npcrepro.chapters.xue2020.prepare import CT_WINDOW, TARGET
from npcrepro.chapters.xue2020.report import METRICS, data_label, labelled, reference_cases, run_channel

__all__ = ["COLOURS", "fig_target", "fig_boxplots", "fig_contours", "fig_curves"]

COLOURS = {"manual": "red", "DeepLabv3+": "lime", "U-Net": "dodgerblue"}


def _window(img: np.ndarray) -> np.ndarray:
    return np.clip((img - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]), 0, 1)


def _zoom_box(mask2d: np.ndarray, spacing, margin_mm: float):
    box = T.bbox(mask2d) or ((0, mask2d.shape[0]), (0, mask2d.shape[1]))
    my, mx = int(round(margin_mm / spacing[1])), int(round(margin_mm / spacing[2]))
    return (slice(max(0, box[0][0] - my), min(mask2d.shape[0], box[0][1] + my)),
            slice(max(0, box[1][0] - mx), min(mask2d.shape[1], box[1][1] + mx)))


def fig_target(results, margin_mm: float = 45.0):
    """How the target is built on one case with a retropharyngeal node: the source GTVp (red), the
    retropharyngeal nodes added (orange) and the nodes left out (cyan, dashed)."""
    import matplotlib.pyplot as plt

    cases = reference_cases(results)
    with_rp = [n for n, c in cases.items() if c.meta.get("xue2020", {}).get("rp_nodes")]
    name = with_rp[0] if with_rp else next(iter(cases))
    c = cases[name]
    gtvp = c.labels.get("GTVp_primary", c.labels[TARGET])
    added = c.labels[TARGET] & ~gtvp
    left_out = c.labels.get("GTVnd", np.zeros(c.shape, bool)) & ~c.labels[TARGET]
    z = int((added.sum(axis=(1, 2)) * 1000 + gtvp.sum(axis=(1, 2))).argmax())
    ys, xs = _zoom_box(c.labels[TARGET][z] | left_out[z], c.spacing, margin_mm)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(_window(c.images[run_channel(results)][z][ys, xs]), cmap="gray", vmin=0, vmax=1)
    for m, col, ls in ((gtvp, "red", "solid"), (added, "orange", "solid"), (left_out, "cyan", "dashed")):
        if m[z][ys, xs].any():
            ax.contour(m[z][ys, xs], levels=[0.5], colors=col, linewidths=1.4, linestyles=ls)
    f = c.meta.get("xue2020", {})
    ax.set_title(f"{name}, slice {z}: GTVp (red), retropharyngeal nodes added (orange),\n"
                 f"other nodes left out (cyan); {f.get('rp_nodes', 0)} RP / "
                 f"{f.get('other_nodes', 0)} other node components", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return fig


def fig_boxplots(results):
    """The paper's Fig. 3: per-patient DSC, JI, ASD, HD of both models; box 25-75 %, whiskers 10-90 %,
    every patient as a dot."""
    import matplotlib.pyplot as plt

    table = labelled(results)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    models = [m for m in MODELS if m in set(table["method"])]
    rng = np.random.default_rng(0)
    for ax, (col, name) in zip(axes, METRICS.items()):
        data = [table.loc[table["method"] == m, col].to_numpy(float) for m in models]
        bp = ax.boxplot(data, whis=(10, 90), widths=0.5, patch_artist=True, showfliers=False)
        for patch, m in zip(bp["boxes"], models):
            patch.set_facecolor(COLOURS[m])
            patch.set_alpha(0.35)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=12, color="k", zorder=3)
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(models)
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"{data_label(results)}, {results.profile} profile, {len(results.test_cases())} test "
                 "patients (box 25-75 %, whiskers 10-90 %)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_contours(results, n: int = 3, margin_mm: float = 40.0):
    """The paper's Fig. 4: for up to ``n`` test patients, the slice with the largest manual area;
    manual contour red, DeepLabv3+ green, U-Net blue; zoomed to the tumour (± ``margin_mm``)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cases = reference_cases(results, results.test_cases())
    table = labelled(results)
    names = sorted(cases, key=lambda k: -cases[k].labels[TARGET].sum())[:n]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        case = cases[name]
        ref = case.labels[TARGET]
        z = int(ref.sum(axis=(1, 2)).argmax())
        ys, xs = _zoom_box(ref[z], case.spacing, margin_mm)
        ax.imshow(_window(case.images[run_channel(results)][z][ys, xs]), cmap="gray", vmin=0, vmax=1)
        ax.contour(ref[z][ys, xs], levels=[0.5], colors=COLOURS["manual"], linewidths=1.5)
        dsc = []
        for method, m in METHODS.items():
            pred = results.prediction(method, name, TARGET) if method in results.methods else None
            if pred is None:
                continue
            if pred[z][ys, xs].any():
                ax.contour(pred[z][ys, xs], levels=[0.5], colors=COLOURS[m], linewidths=1.2)
            row = table[(table["method"] == m) & (table["case"] == name)]
            if len(row):
                dsc.append(f"{m} {float(row['dice'].iloc[0]):.2f}")
        ax.set_title(f"{name}, slice {z}\n3D DSC: " + ", ".join(dsc), fontsize=9)
        ax.axis("off")
    handles = [Line2D([0], [0], color=c, lw=2) for c in COLOURS.values()]
    fig.legend(handles, ["manual (reference)", "DeepLabv3+", "U-Net"], loc="lower center", ncol=3,
               frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def fig_curves(results, fold: int = 0):
    """Training and validation loss (1 - DSC) and the learning rate of both models on ``fold``."""
    import matplotlib.pyplot as plt

    from npcrepro.plots import curve_axes

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.4))
    for method in results.methods:
        m, f = results.label(method), results.curves(method, fold)
        if f.empty:
            continue
        ax0.plot(f["iteration"], f["train_loss"], color=COLOURS.get(m), ls="--", label=f"{m} train")
        if f["val_loss"].notna().any():
            ax0.plot(f["iteration"], f["val_loss"], color=COLOURS.get(m), label=f"{m} validation")
        ax1.plot(f["iteration"], f["lr"], color=COLOURS.get(m), label=m)
    curve_axes(ax0, "1 - DSC")
    curve_axes(ax1, "learning rate", log=True)
    fig.tight_layout()
    return fig
