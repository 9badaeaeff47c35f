"""Figures and small tables for looking at converted real data (used by the real-data chapter).

Display conventions: axial slices are drawn with row 0 at the top, so in the project's LPS arrays
anterior is up and the patient's left is on the viewer's right (radiological convention); sagittal
and coronal slices are drawn with superior up. Pixel aspect follows the voxel spacing.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from npcrepro.datasets.case import Case

#: Contour colours, cycled in structure order.
COLORS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
          "#bcf60c", "#fabebe", "#008080", "#e6beff")


def color_map(structures: Sequence[str]) -> dict[str, str]:
    """A stable structure -> colour mapping."""
    return {s: COLORS[i % len(COLORS)] for i, s in enumerate(structures)}


def show_slice(ax, image: np.ndarray, masks: Mapping[str, np.ndarray] | None = None, *,
               window: tuple[float, float] | None = None, colors: Mapping[str, str] | None = None,
               aspect: float = 1.0, origin: str = "upper", title: str | None = None,
               linewidth: float = 1.2) -> None:
    """Draw a 2D grey image with mask contours.

    Parameters
    ----------
    ax : matplotlib Axes
    image : np.ndarray
        (rows, cols) intensities.
    masks : mapping of str to bool array (rows, cols), optional
        Structures to outline (empty masks are skipped).
    window : (low, high), optional
        Display window; default the 1st-99th percentile.
    aspect : float
        Height / width of one pixel (row spacing / column spacing).
    origin : {"upper", "lower"}
        Where row 0 goes ("lower" for sagittal/coronal views of (z, ...) arrays: superior up).
    """
    image = np.asarray(image, dtype=float)
    if window is None:
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        window = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin=origin,
              interpolation="nearest")
    colors = dict(colors or color_map(list(masks or {})))
    for name, mask in (masks or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if mask.any() and min(mask.shape) > 1:
            # Explicit pixel-centre coordinates: imshow puts row i at y = i for either origin.
            ax.contour(np.arange(mask.shape[1]), np.arange(mask.shape[0]), mask.astype(float),
                       levels=[0.5], colors=[colors.get(name, "r")], linewidths=linewidth)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def best_axial_slice(case: Case, structures: Iterable[str] | None = None) -> int:
    """Axial index with the largest area of the union of ``structures`` (default: all); the middle
    slice when the case has none of them."""
    names = [s for s in (structures if structures is not None else case.labels) if s in case.labels]
    if not names:
        return case.shape[0] // 2
    union = np.zeros(case.shape, bool)
    for s in names:
        union |= case.labels[s]
    return int(union.reshape(union.shape[0], -1).sum(1).argmax())


def case_gallery(cases: Sequence[Case], *, channel: str, structures: Sequence[str] | None = None,
                 n_cols: int = 4, window: tuple[float, float] | None = None,
                 slice_of: str | Sequence[str] | None = None, panel_size: float = 2.6,
                 legend: bool = True, crop: bool = True):
    """One axial slice per case with contours.

    Parameters
    ----------
    cases : sequence of Case
    channel : str
        Image channel to show.
    structures : sequence of str, optional
        Structures to outline (default: every structure of any case, in first-seen order).
    slice_of : str or sequence of str, optional
        Choose each case's slice where these structures cover the largest area (default: the
        outlined structures).
    window : (low, high), optional
        Display window (e.g. (-160, 240) HU for CT soft tissue); default per-image percentiles.
    crop : bool
        Crop each panel to the bounding box of the visible anatomy (pixels brighter than a tenth of
        the window) and the contours, plus a margin.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if structures is None:
        structures = list(dict.fromkeys(s for c in cases for s in c.labels))
    colors = color_map(structures)
    chooser = [slice_of] if isinstance(slice_of, str) else (slice_of or structures)
    n = max(1, len(cases))
    n_cols = max(1, min(n_cols, n))
    n_rows = int(np.ceil(n / n_cols))
    width = max(panel_size * n_cols, 7.0 if legend and structures else 0.0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, panel_size * n_rows + 0.6),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), cases):
        k = best_axial_slice(case, chooser)
        image = np.asarray(case.images[channel][k], dtype=float)
        masks = {s: case.labels[s][k] for s in structures if s in case.labels}
        if crop:
            rows, cols = _crop_box(image, masks, window)
            image = image[rows, cols]
            masks = {s: m[rows, cols] for s, m in masks.items()}
        sy, sx = case.spacing[1], case.spacing[2]
        show_slice(ax, image, masks, window=window, colors=colors, aspect=sy / sx,
                   title=case.name + (f" (z={k})" if case.shape[0] > 1 else ""))
        ax.axis("on")
    if legend and structures:
        handles = [Line2D([0], [0], color=colors[s], lw=2) for s in structures]
        fig.legend(handles, structures, loc="lower center", ncol=min(len(structures), 5),
                   fontsize=8, frameon=False)
        n_leg = int(np.ceil(len(structures) / 5))
        fig.tight_layout(rect=(0, min(0.4, 0.35 * n_leg / fig.get_figheight()), 1, 1))
    else:
        fig.tight_layout()
    return fig


def _crop_box(image: np.ndarray, masks: Mapping[str, np.ndarray],
              window: tuple[float, float] | None, margin: int = 6) -> tuple[slice, slice]:
    lo, hi = window if window is not None else np.percentile(image, [1, 99])
    keep = image > lo + 0.1 * (hi - lo)
    if keep.any():  # the largest bright region (the patient), not the couch or stray pixels
        from scipy import ndimage as ndi

        lab, n = ndi.label(keep)
        keep = lab == (np.bincount(lab.ravel())[1:].argmax() + 1)
    for m in masks.values():
        keep |= m
    if not keep.any():
        return slice(None), slice(None)
    idx = np.argwhere(keep)
    (r0, c0), (r1, c1) = idx.min(0), idx.max(0)
    return (slice(max(0, r0 - margin), r1 + margin + 1), slice(max(0, c0 - margin), c1 + margin + 1))


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(0)


def orientation_figure(case: Case, *, channel: str, anterior: str | None, posterior: str | None,
                       superior: str | None, left: str | None, right: str | None,
                       window: tuple[float, float] | None = None):
    """Sagittal, axial and coronal views that show where anatomy sits in the stored arrays.

    ``anterior``, ``posterior``, ``superior``, ``left`` and ``right`` name structures expected on
    that side (e.g. Mandible, SpinalCord, Brainstem, Parotid_L, Parotid_R); their centroids are
    marked, their contours drawn, and the panel borders carry the anatomical direction letters that
    the project's LPS convention implies. Centroids are marked with ``+``, projected onto every
    view. If the data were flipped, the structures would sit against the wrong letters.
    """
    import matplotlib.pyplot as plt

    image = np.asarray(case.images[channel], dtype=float)
    sz, sy, sx = case.spacing
    named = {k: v for k, v in {"anterior": anterior, "posterior": posterior, "superior": superior,
                               "left": left, "right": right}.items() if v and v in case.labels}
    structures = list(dict.fromkeys(named.values()))
    colors = color_map(structures)
    cents = {s: _centroid(case.labels[s]) for s in structures}
    nz, ny, nx = case.shape
    # Mid-sagittal plane through the posterior (spinal) structure; axial through the anterior one;
    # coronal through the lateral pair.
    x_sag = int(round(cents[named["posterior"]][2])) if "posterior" in named else nx // 2
    z_ax = int(round(cents[named["anterior"]][0])) if "anterior" in named else nz // 2
    lat = [cents[named[k]] for k in ("left", "right") if k in named]
    y_cor = int(round(np.mean([c[1] for c in lat]))) if lat else ny // 2

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    views = [
        ("sagittal", image[:, :, x_sag], {s: case.labels[s][:, :, x_sag] for s in structures},
         sz / sy, "lower", f"mid-sagittal (x={x_sag})", ("A", "P", "S", "I")),
        ("axial", image[z_ax], {s: case.labels[s][z_ax] for s in structures},
         sy / sx, "upper", f"axial (z={z_ax})", ("R", "L", "A", "P")),
        ("coronal", image[:, y_cor, :], {s: case.labels[s][:, y_cor, :] for s in structures},
         sz / sx, "lower", f"coronal (y={y_cor})", ("R", "L", "S", "I")),
    ]
    for ax, (kind, img, masks, aspect, origin, title, letters) in zip(axes, views):
        show_slice(ax, img, masks, window=window, colors=colors, aspect=aspect, origin=origin,
                   title=title)
        lft, rgt, top, bottom = letters
        kw = dict(transform=ax.transAxes, color="yellow", fontsize=12, fontweight="bold",
                  ha="center", va="center")
        ax.text(0.04, 0.5, lft, **kw)
        ax.text(0.96, 0.5, rgt, **kw)
        ax.text(0.5, 0.96, top, **kw)
        ax.text(0.5, 0.04, bottom, **kw)
        for s in structures:
            c = cents[s]
            if kind == "sagittal":
                px, py = c[1], c[0]
            elif kind == "axial":
                px, py = c[2], c[1]
            else:
                px, py = c[2], c[0]
            ax.plot(px, py, marker="+", ms=9, mew=2, color=colors[s])
    from matplotlib.lines import Line2D

    roles = {s: [k for k, v in named.items() if v == s] for s in structures}
    handles = [Line2D([0], [0], color=colors[s], lw=2) for s in structures]
    labels = [f"{s} ({', '.join(roles[s])})" for s in structures]
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(structures)) or 1, fontsize=9,
               frameon=False)
    fig.suptitle(f"{case.name}: stored orientation (axial in radiological convention: patient's "
                 "left on the viewer's right)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


# ------------------------------------------------------------------------------------- tables
def presence_table(dataset) -> "pandas.DataFrame":  # noqa: F821
    """Cases x structures table of voxel counts (0 = structure absent) for an opened dataset.

    Reads only the structure files' presence and sizes. Columns are the declared structures, plus
    ``split``; the last row ``cases having it`` counts non-absent entries.
    """
    import pandas as pd

    from npcrepro import io

    rows = {}
    for split, names in (("Tr", dataset.cases), ("Ts", dataset.test_cases)):
        for name in names:
            row = {"split": "training" if split == "Tr" else "test"}
            folder = dataset.root / f"structures{split}" / name
            for s in dataset.structures:
                path = folder / f"{s}{dataset.file_ending}"
                row[s] = int(np.count_nonzero(io.read(path).array)) if path.exists() else 0
            rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if len(table):
        counts = {s: int((table[s] > 0).sum()) for s in dataset.structures}
        table.loc["cases having it"] = {"split": "", **counts}
    return table


def spacing_table(cases_or_dataset) -> "pandas.DataFrame":  # noqa: F821
    """Per-case shape and voxel size (z, y, x) for cases or an opened dataset (header-only reads)."""
    import pandas as pd

    from npcrepro import io

    rows = []
    if hasattr(cases_or_dataset, "root"):
        ds = cases_or_dataset
        for split, names in (("Tr", ds.cases), ("Ts", ds.test_cases)):
            for name in names:
                vol = io.read(ds.root / f"images{split}" / f"{name}_0000{ds.file_ending}")
                rows.append((name, vol.shape, vol.spacing))
    else:
        rows = [(c.name, c.shape, c.spacing) for c in cases_or_dataset]
    return pd.DataFrame([{"case": n, "shape": "x".join(map(str, sh)), "z": sp[0], "y": sp[1],
                          "x": sp[2]} for n, sh, sp in rows]).set_index("case")
