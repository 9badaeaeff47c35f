"""luo2020's figures: a case's structures, the qualitative comparison (Fig. 3), DSC per fold (Fig. 4) and
per-patient boxes (Fig. 5). Each reads :class:`~npcrepro.engine.results.Results` and returns a matplotlib figure."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from npcrepro import transforms as T
from npcrepro.chapters.luo2020.prepare import centre_box, labelled_slices
from npcrepro.chapters.luo2020.report import fold_means, labels, scored
from npcrepro.errors import DataError

#: Grey levels (HU) of the overlay figures, wide enough to show bone and air beside soft tissue.
_DISPLAY_WINDOW = (-500.0, 500.0)
_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000"]


def _overlay(ax, image, masks, structures, title):
    ax.imshow(image, cmap="gray", vmin=_DISPLAY_WINDOW[0], vmax=_DISPLAY_WINDOW[1])
    for k, _ in enumerate(structures):
        if masks[k].any():
            ax.contour(masks[k], levels=[0.5], colors=[_COLOURS[k % len(_COLOURS)]], linewidths=1.0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _legend(fig, structures, present, bottom: float):
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=_COLOURS[k % len(_COLOURS)], lw=2) for k in present]
    fig.legend(handles, [structures[k] for k in present], loc="lower center", ncol=min(7, len(present)),
               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))


def fig_case(case, structures: Sequence[str], n: int = 4):
    """``n`` labelled axial slices of one case (evenly over its labelled range) with every structure."""
    import matplotlib.pyplot as plt

    idx = labelled_slices(case, structures)
    zs = idx[np.linspace(0, len(idx) - 1, n).round().astype(int)] if len(idx) else []
    fig, axes = plt.subplots(1, max(1, len(zs)), figsize=(3.0 * max(1, len(zs)), 3.3), squeeze=False)
    ref = np.stack([case.labels[s] if s in case.labels else np.zeros(case.shape, bool) for s in structures])
    for ax, z in zip(axes[0], zs):
        _overlay(ax, case.images["CT"][z], ref[:, z], structures, f"{case.name}, z = {int(z)}")
    _legend(fig, list(structures), [k for k, s in enumerate(structures) if s in case.labels], 0.12)
    return fig


def fig_qualitative(results, fold: int = 0):
    """Fig. 3: the labelled slice with the most structures of the fold's first test patient, with the
    reference and every method's 0.5-thresholded contours (inside the in-plane box the models saw)."""
    import matplotlib.pyplot as plt

    name = results.splits()[fold].test[0]
    structures = results.structures
    case = results.load_case(name)
    ref = np.stack([case.labels[s] if s in case.labels else np.zeros(case.shape, bool) for s in structures])
    idx = labelled_slices(case, structures)
    if not len(idx):
        raise DataError(f"{name} has no labelled slice")
    z = int(idx[ref[:, idx].any(axis=(2, 3)).sum(axis=0).argmax()])
    size = results.params.get("image_size")
    box = ((0, case.shape[1]), (0, case.shape[2])) if not size else centre_box(case.shape[1:], size)

    def cut(a, fill=0):
        return T.crop(a[None], ((0, 1),) + tuple(box), fill=fill)[0]

    panels = [("reference", np.stack([cut(r[z]) for r in ref]))]
    for key in results.methods:
        pred = [results.prediction(key, name, s) for s in structures]
        if all(p is not None for p in pred):
            panels.append((results.label(key), np.stack([cut(p[z]) for p in pred])))
    image = cut(case.images["CT"][z], fill=-1000.0)  # air around a crop
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), squeeze=False)
    for ax, (title, masks) in zip(axes[0], panels):
        _overlay(ax, image, masks, structures, f"{title}\n{name} z={z}" if title == "reference" else title)
    _legend(fig, structures, [k for k in range(len(structures)) if panels[0][1][k].any()], 0.1)
    return fig


def fig_dsc_per_fold(results, data_label: str = ""):
    """Fig. 4: mean DSC of every method in every fold."""
    import matplotlib.pyplot as plt

    fm = fold_means(results)
    fm = fm[[m for m in labels(results) if m in fm.columns]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method in fm.columns:
        ax.plot(fm.index + 1, fm[method], marker="o", label=method)
    ax.set_xlabel("fold")
    ax.set_ylabel("mean DSC (test patients x structures)")
    ax.set_xticks(list(fm.index + 1))
    ax.legend(fontsize=8)
    ax.set_title(f"DSC per fold ({data_label or results.source}, {results.profile} profile)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_boxplots(results):
    """Fig. 5: per-patient mean DSC per method (boxes), fold means as dots."""
    import matplotlib.pyplot as plt

    per_case = scored(results).groupby(["method", "fold", "case"])["dice"].mean().reset_index()
    order = labels(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot([per_case.loc[per_case["method"] == m, "dice"].to_numpy() for m in order], showmeans=False)
    ax.set_xticks(range(1, len(order) + 1))
    ax.set_xticklabels(order, rotation=20, fontsize=8)
    fm = fold_means(results)
    for i, m in enumerate(order, start=1):
        if m in fm.columns:
            ax.scatter(np.full(len(fm), i) + 0.2, fm[m], s=14, color="k", zorder=3,
                       label="fold mean" if i == 1 else None)
    ax.set_ylabel("DSC per test patient")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
