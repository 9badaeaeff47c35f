"""Figures of the data chapter: a multi-modality gallery, DCE curves, tumour volumes."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from npcrepro.datasets.case import Case
from npcrepro.phantom.scanners import HU_CHANNELS

#: Contour colours: targets warm, organs at risk cool.
CONTOURS = {
    "GTVp": ("red", "-"), "GTVnd": ("magenta", "-"),
    "GTVp_rater1": ("orange", "--"), "GTVp_rater2": ("gold", "--"), "GTVp_rater3": ("salmon", "--"),
    "Parotid_L": ("yellow", "-"), "Parotid_R": ("yellow", "-"),
    "Mandible_L": ("white", "-"), "Mandible_R": ("white", "-"),
    "Brainstem": ("cyan", "-"), "SpinalCord": ("cyan", "-"),
    "Eye_L": ("lime", "-"), "Eye_R": ("lime", "-"), "OpticNerve_L": ("lime", "-"),
    "OpticNerve_R": ("lime", "-"), "Chiasm": ("lime", "-"),
}
CT_WINDOW = (-160.0, 240.0)  # soft-tissue window: level 40, width 400 HU


def tumour_slice(case: Case) -> int:
    """Axial index (z) with the largest GTVp cross-section."""
    return int(np.argmax(case.labels["GTVp"].sum(axis=(1, 2))))


def _window(case: Case, channel: str) -> tuple[float, float]:
    if channel in HU_CHANNELS:  # both CTs in one window: what contrast adds shows as brightness
        return CT_WINDOW
    img = case.images[channel]
    body = case.labels.get("Body")
    vals = img[body] if body is not None and body.any() else img
    return float(np.percentile(vals, 1)), float(np.percentile(vals, 99.5))


def _crop(case: Case) -> tuple[slice, slice]:
    body = case.labels.get("Body")
    if body is None or not body.any():
        return slice(None), slice(None)
    yx = np.argwhere(body.any(axis=0))
    lo, hi = yx.min(0), yx.max(0) + 1
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


#: What :func:`show_slice` draws unless told: every structure of :data:`CONTOURS` but the raters'.
SHOWN = tuple(k for k in CONTOURS if "_rater" not in k)


def show_slice(ax, case: Case, channel: str, z: int, structures: Sequence[str] = SHOWN,
               title: str | None = None) -> None:
    """One axial slice of ``channel`` with structure contours (radiological view: patient's left
    on the image's right, anterior up)."""
    ys, xs = _crop(case)
    vmin, vmax = _window(case, channel)
    sy, sx = case.spacing[1], case.spacing[2]
    img = case.images[channel][z][ys, xs]
    extent = (0, img.shape[1] * sx, img.shape[0] * sy, 0)  # mm; y grows downwards (anterior up)
    ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
    cx = (np.arange(img.shape[1]) + 0.5) * sx
    cy = (np.arange(img.shape[0]) + 0.5) * sy
    for s in structures:
        m = case.labels.get(s)
        if m is None or not m[z].any():
            continue
        colour, style = CONTOURS.get(s, ("white", "-"))
        ax.contour(cx, cy, m[z][ys, xs].astype(float), [0.5], colors=colour, linestyles=style,
                   linewidths=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or channel, fontsize=9)


def gallery(cases: Sequence[Case], channels: Sequence[str], structures=tuple(CONTOURS)) -> plt.Figure:
    """Rows: patients (axial slice through the tumour's largest section); columns: channels."""
    fig, axes = plt.subplots(len(cases), len(channels), figsize=(2.4 * len(channels), 2.6 * len(cases)),
                             squeeze=False)
    for r, case in enumerate(cases):
        z = tumour_slice(case)
        for c, ch in enumerate(channels):
            title = f"{ch}" if r == 0 else ""
            if ch in case.images:
                show_slice(axes[r, c], case, ch, z, structures, title)
            else:
                axes[r, c].axis("off")
        axes[r, 0].set_ylabel(f"{case.name}\n{case.meta.get('t_stage', '')}"
                              f"{case.meta.get('n_stage', '')}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_dce_curves(curves: pd.DataFrame, ax=None, peak_frame: int | None = 34,
                    bolus_frame: int | None = None) -> plt.Axes:
    """Mean signal per frame for each structure column of :func:`npcrepro.phantom.dce_curves`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    names = {"GTVp": "tumour (GTVp)", "Muscle": "muscle", "Mucosa": "mucosa", "Vessels": "vessels (AIF)",
             "GTVnd": "nodes (GTVnd)"}
    for col in curves.columns:
        if col == "time_s":
            continue
        ax.plot(curves.index, curves[col], label=names.get(col, col))
    if peak_frame is not None:
        ax.axvline(peak_frame, color="grey", ls=":", lw=1)
        ax.text(peak_frame + 0.5, ax.get_ylim()[1] * 0.95, f"frame {peak_frame} (li2018's 35th)", fontsize=8,
                va="top", color="grey")
    if bolus_frame is not None:
        ax.axvline(bolus_frame, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("frame (from 0)")
    ax.set_ylabel("signal (a.u.)")
    ax.legend(fontsize=8)
    return ax


def plot_volumes(table: pd.DataFrame, ax=None, column: str = "GTVp_cm3") -> plt.Axes:
    """Histogram of tumour volumes, stacked by T stage."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    stages = sorted(table["T"].unique())
    data = [table.loc[table["T"] == t, column].to_numpy() for t in stages]
    hi = max(50.0, float(table[column].max()) * 1.05)
    ax.hist(data, bins=np.linspace(0, hi, 16), stacked=True, label=stages)
    ax.set_xlabel("GTVp volume (cm$^3$)")
    ax.set_ylabel("patients")
    ax.legend(title="T stage", fontsize=8)
    return ax


def plot_tissue_histograms(values, tissues: Sequence[str],
                           sources=(("phantom", "tab:blue"), ("OpenKBP CT", "tab:orange"))) -> plt.Figure:
    """One panel per tissue: the normalised histogram of each source's values (long form ``tissue``,
    ``source``, ``value``, as :func:`npcrepro.phantom.measure.tissue_values` plus a ``source`` column),
    in HU; bone (the mandible) on a wider axis than soft tissue. Returns the figure."""
    fig, axes = plt.subplots(1, len(tissues), figsize=(3 * len(tissues), 2.8), squeeze=False)
    for ax, tissue in zip(axes[0], tissues):
        for source, colour in sources:
            v = values.loc[(values["tissue"] == tissue) & (values["source"] == source), "value"]
            if len(v):
                ax.hist(v, bins=60, range=(-200, 1500) if tissue == "Mandible" else (-150, 200), density=True,
                        histtype="step", color=colour, label=source)
        ax.set_title(tissue, fontsize=9)
        ax.set_xlabel("HU", fontsize=8)
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
