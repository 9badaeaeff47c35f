"""Pure drawing helpers of the run explorer: slices of a (z, y, x) volume in three planes and one PNG
per view (image, ground-truth contour, prediction contours or filled masks, legend).

Everything here draws on a :class:`matplotlib.figure.Figure` with the Agg canvas and returns bytes
or a figure: nothing touches pyplot's global state, so the functions are safe in a kernel that also
shows ``%matplotlib inline`` figures and in worker threads.

Orientation: axial slices are shown as stored (row 0 = the first ``y`` row: anterior at the top for
the phantom's LPS-like frame, the patient's right on the image's left, i.e. radiological view);
coronal and sagittal slices put the superior end at the top (``superior_up``, for data whose ``z``
index grows towards the head, as in the phantom).
"""
from __future__ import annotations

import io as _io
import math
from typing import Mapping, Sequence

import numpy as np

from npcrepro.errors import ParameterError

__all__ = ["PLANES", "PALETTE", "GT_COLOUR", "slice_of", "plane_axis", "plane_spacing", "n_slices",
           "best_slice", "colours_for", "intensity_window", "render_png", "figure_png", "draw_view"]

#: Viewing planes and the array axis each one cuts.
PLANES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
#: Colours for predictions, in order of the run's labels (bright on a grey image; no yellow, which
#: is the ground truth's).
PALETTE: tuple[str, ...] = ("#00d5ff", "#ff3b30", "#4cd964", "#ff9500", "#c86bff", "#ff2d9b",
                            "#3d7bff", "#00b894", "#ff7f50", "#a0a0ff", "#8bc34a", "#e0e0e0")
#: The ground truth: a dashed yellow contour.
GT_COLOUR = "#ffe000"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plane_axis(plane: str) -> int:
    """The array axis (of z, y, x) a plane cuts; ParameterError for an unknown plane."""
    try:
        return PLANES[plane]
    except KeyError:
        raise ParameterError(f"unknown plane {plane!r} (valid: {', '.join(PLANES)})") from None


def n_slices(shape: Sequence[int], plane: str) -> int:
    """How many slices a volume of ``shape`` (z, y, x) has in ``plane``."""
    return int(shape[plane_axis(plane)])


def slice_of(volume: np.ndarray, plane: str, index: int, *, superior_up: bool = True) -> np.ndarray:
    """The 2D slice ``index`` of a (z, y, x) volume in ``plane``, rows top to bottom as displayed.

    axial: ``volume[index]`` (y, x); coronal: ``volume[:, index, :]`` (z, x); sagittal:
    ``volume[:, :, index]`` (z, y). Coronal and sagittal rows are flipped when ``superior_up`` so
    that the highest ``z`` is at the top. ParameterError for a bad plane or an index out of range.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ParameterError(f"slice_of needs a (z, y, x) volume, got shape {vol.shape}")
    axis = plane_axis(plane)
    n = vol.shape[axis]
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ParameterError(f"{plane} slice index must be an integer in [0, {n - 1}], got {index!r}")
    out = np.take(vol, int(index), axis=axis)
    if axis != 0 and superior_up:
        out = out[::-1]
    return out


def plane_spacing(spacing: Sequence[float], plane: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of a ``plane`` slice of a volume with (z, y, x) ``spacing``."""
    sz, sy, sx = (float(s) for s in spacing)
    return {0: (sy, sx), 1: (sz, sx), 2: (sz, sy)}[plane_axis(plane)]


def best_slice(mask: np.ndarray | None, plane: str = "axial") -> int:
    """The slice of ``plane`` with the largest ``mask`` area (the middle slice when empty/None)."""
    axis = plane_axis(plane)
    if mask is None:
        raise ParameterError("best_slice needs a mask")
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ParameterError(f"best_slice needs a (z, y, x) mask, got shape {m.shape}")
    other = tuple(a for a in range(3) if a != axis)
    area = m.sum(axis=other)
    if not area.any():
        return int(m.shape[axis] // 2)
    return int(np.argmax(area))


def colours_for(labels: Sequence[str]) -> dict[str, str]:
    """A fixed colour per label, by position (cycling through :data:`PALETTE`)."""
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def intensity_window(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """(vmin, vmax): percentiles of the finite values (a unit range when constant or empty)."""
    a = np.asarray(image, float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0
    if a.size > 400_000:  # a strided subsample is plenty for two percentiles
        a = a[:: a.size // 200_000]
    lo, hi = (float(v) for v in np.percentile(a, [low, high]))
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            hi = lo + 1.0
    return lo, hi


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def _contour(ax, mask: np.ndarray, colour: str, *, alpha: float, lw: float, ls: str = "solid") -> None:
    m = np.asarray(mask, bool)
    if not m.any() or m.all():
        if m.all():  # a full slice: outline the frame
            h, w = m.shape
            ax.plot([-0.5, w - 0.5, w - 0.5, -0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5, -0.5],
                    color=colour, alpha=alpha, lw=lw, ls=ls)
        return
    # pad so that masks touching the border still close their contour
    h, w = m.shape
    ax.contour(np.arange(-1, w + 1), np.arange(-1, h + 1), np.pad(m.astype(np.float32), 1),
               levels=[0.5], colors=[colour], linewidths=lw, linestyles=ls, alpha=alpha)


def draw_view(ax, image2d: np.ndarray, gt2d: np.ndarray | None,
              preds: Mapping[str, np.ndarray | None] | None = None, *, style: str = "contour",
              opacity: float = 0.7, spacing2d: Sequence[float] = (1.0, 1.0),
              colours: Mapping[str, str] | None = None, window: Sequence[float] | None = None,
              gt_colour: str = GT_COLOUR) -> None:
    """Draw one view on an existing matplotlib axes (see :func:`render_png` for the arguments)."""
    if style not in ("contour", "fill"):
        raise ParameterError(f"style must be 'contour' or 'fill', got {style!r}")
    img = np.asarray(image2d, np.float32)
    if img.ndim != 2:
        raise ParameterError(f"image2d must be 2D, got shape {img.shape}")
    preds = dict(preds or {})
    colours = dict(colours or colours_for(list(preds)))
    for k in preds:
        colours.setdefault(k, PALETTE[len(colours) % len(PALETTE)])
    sy, sx = (float(s) for s in spacing2d)
    aspect = sy / sx if sx > 0 and sy > 0 else 1.0
    vmin, vmax = window if window is not None else intensity_window(img)
    ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
    alpha = float(min(max(opacity, 0.0), 1.0))
    for label, m in preds.items():
        if m is None:
            continue
        m = np.asarray(m, bool)
        if m.shape != img.shape:
            raise ParameterError(f"prediction {label!r} has shape {m.shape}, the image {img.shape}")
        if style == "fill":
            if m.any():
                rgba = np.zeros(m.shape + (4,), np.float32)
                rgba[m] = (*_rgb(colours[label]), alpha)
                ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        else:
            _contour(ax, m, colours[label], alpha=alpha, lw=1.6)
    if gt2d is not None:
        g = np.asarray(gt2d, bool)
        if g.shape != img.shape:
            raise ParameterError(f"ground truth has shape {g.shape}, the image {img.shape}")
        _contour(ax, g, gt_colour, alpha=1.0, lw=1.4, ls="dashed")
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.set_axis_off()


def render_png(image2d: np.ndarray, gt2d: np.ndarray | None,
               preds: Mapping[str, np.ndarray | None] | None = None, *, style: str = "contour",
               opacity: float = 0.7, spacing2d: Sequence[float] = (1.0, 1.0), title: str = "",
               width: int = 560, colours: Mapping[str, str] | None = None,
               window: Sequence[float] | None = None, gt_label: str = "ground truth",
               legend_labels: Mapping[str, str] | None = None, dpi: int = 100,
               compact: bool = True) -> bytes:
    """PNG bytes (``width`` pixels wide) of one slice with its overlays.

    Parameters
    ----------
    image2d : (rows, cols) array
        The grey-scale image (windowed to ``window`` = (vmin, vmax), default its 0.5/99.5 percentiles).
    gt2d : (rows, cols) bool array or None
        Ground truth, drawn as a dashed :data:`GT_COLOUR` contour on top of everything.
    preds : {label: (rows, cols) bool array or None}
        Predictions, in legend order; None = not available on this slice (listed as "n/a").
    style : "contour" or "fill"
        Prediction outlines or filled masks.
    opacity : float in [0, 1]
        Alpha of the predictions.
    spacing2d : (row, column) pixel size in mm
        Sets the displayed aspect ratio, so coronal/sagittal views keep physical proportions.
    title : str
        One line above the image.
    colours : {label: colour}
        Fixed colours per label (default :func:`colours_for` of the labels in order).
    legend_labels : {label: text}
        Legend text per label (default the label).
    compact : bool
        Store a 256-colour palette PNG (about 4x smaller; overlay colours stay exact, grey levels are
        slightly posterised) -- the explorer embeds its PNGs in the notebook's widget state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 64 <= width <= 4000:
        raise ParameterError(f"width must be an integer number of pixels in [64, 4000], got {width!r}")
    img = np.asarray(image2d)
    if img.ndim != 2:
        raise ParameterError(f"image2d must be 2D, got shape {img.shape}")
    preds = dict(preds or {})
    colours = dict(colours or {})
    auto = colours_for(list(preds))
    colours = {k: colours.get(k, auto[k]) for k in preds}
    legend_labels = dict(legend_labels or {})
    rows, cols = img.shape
    sy, sx = (float(s) for s in spacing2d)
    ratio = (rows * sy) / (cols * sx) if rows and cols and sx > 0 and sy > 0 else 1.0
    W = int(width)
    img_h = int(round(min(max(W * ratio, 0.3 * W), 1.25 * W)))
    title_h = 26 if title else 0
    texts = [gt_label] + [legend_labels.get(k, k) + (" (n/a here)" if v is None else "")
                          for k, v in preds.items()]
    items = len(texts)
    item_px = 44 + 6.3 * max(len(t) for t in texts)  # handle + gap + text at 8.5 pt
    ncol = int(max(1, min(items, (W - 16) // item_px)))
    legend_h = 8 + 20 * math.ceil(items / ncol)
    H = img_h + title_h + legend_h
    fig = Figure(figsize=(W / dpi, H / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, legend_h / H, 1.0, img_h / H))
    draw_view(ax, img, gt2d, preds, style=style, opacity=opacity, spacing2d=(sy, sx),
              colours=colours, window=window)
    if title:
        fig.text(0.5, 1.0 - (title_h / 2) / H, title, ha="center", va="center", fontsize=9.5)
    alpha = float(min(max(opacity, 0.0), 1.0))
    handles = [Line2D([], [], color=GT_COLOUR, ls="--", lw=1.6, label=gt_label)]
    for label, m in preds.items():
        text = legend_labels.get(label, label) + (" (n/a here)" if m is None else "")
        if style == "fill":
            handles.append(Patch(facecolor=colours[label], alpha=max(alpha, 0.25), label=text))
        else:
            handles.append(Line2D([], [], color=colours[label], lw=2.0, alpha=max(alpha, 0.25), label=text))
    leg = fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=8.5,
                     bbox_to_anchor=(0.5, 0.0), handlelength=2.0, columnspacing=1.2,
                     borderaxespad=0.3)
    for t in leg.get_texts():  # the GT line is yellow: give it a dark edge in the legend's text only
        t.set_color("#202020")
    return figure_png(fig, dpi=dpi, compact=compact)


def figure_png(fig, *, dpi: int | None = None, compact: bool = True) -> bytes:
    """PNG bytes of a matplotlib figure (its own size and dpi unless ``dpi``); ``compact`` stores a
    256-colour palette image (see :func:`render_png`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    if not compact:
        return buf.getvalue()
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as im:
        pal = im.convert("RGB").quantize(colors=256, method=getattr(Image, "Quantize", Image).FASTOCTREE,
                                          dither=getattr(Image, "Dither", Image).NONE)  # Pillow < 9.1: no enums
    out = _io.BytesIO()
    pal.save(out, format="PNG", optimize=True)
    return out.getvalue()
