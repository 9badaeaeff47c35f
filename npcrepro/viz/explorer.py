"""The run explorer: ipywidgets to browse the runs' images, ground truth and predictions.

``Explorer(out_dir="runs", profile="cpu")`` lists the runs under ``<out_dir>/<profile>/`` and shows one
view at a time: pick a run, a case, a plane and slice, an image channel, the ground-truth structure,
any set of predictions, contours or filled masks and their opacity; the case's rows of the run's
metrics.csv sit below the picture.

The picture is an :class:`ipywidgets.Image` holding PNG bytes (drawn with matplotlib's Agg canvas)
and the table an :class:`ipywidgets.HTML`, both updated in ``observe`` callbacks. An executed
notebook therefore carries the initial view inside its saved widget state, and the static HTML book
shows it without a kernel; other choices need a live kernel.
"""
from __future__ import annotations

import contextlib
import html
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from npcrepro.errors import DataError, NpcreproError, ParameterError
from npcrepro.viz import render as R
from npcrepro.viz.runs import RunView, default_run, find_run, list_runs

__all__ = ["Explorer", "metrics_html", "gallery"]

def _esc(text: Any) -> str:
    """Escape text for an HTML text node (quotes stay readable)."""
    return html.escape(str(text), quote=False)


_HEADERS = {"dice": "DSC", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "nsd": "NSD", "jaccard": "Jaccard",
            "precision": "precision", "recall": "recall", "volume_pred_cm3": "V pred (cm³)",
            "volume_ref_cm3": "V ref (cm³)", "hd": "HD (mm)"}


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return "–"
        return f"{float(v):.3f}"
    if v is None:
        return "–"
    return _esc(str(v))


def metrics_html(rows, case: str, *, source: str = "metrics.csv", structure: str | None = None) -> str:
    """A small HTML table of a case's metrics rows (a DataFrame, or None when the run has none)."""
    what = f", {_esc(structure)} rows" if structure else ""
    head = (f"<b>Metrics of {_esc(case)}</b> "
            f"<span style='color:#666'>({_esc(source)}{what})</span>")
    if rows is None:
        return head + "<div style='color:#666'>this run has no per-case metrics table</div>"
    if len(rows) == 0:
        return head + f"<div style='color:#666'>no rows for case {_esc(case)}</div>"
    th = "".join(f"<th style='padding:2px 8px;text-align:left'>{_esc(_HEADERS.get(c, c))}</th>"
                 for c in rows.columns)
    body = []
    for _, r in rows.iterrows():
        tds = "".join(f"<td style='padding:2px 8px'>{_fmt(r[c])}</td>" for c in rows.columns)
        body.append(f"<tr>{tds}</tr>")
    return (head + "<table style='border-collapse:collapse;font-size:90%'>"
            f"<thead><tr style='border-bottom:1px solid #999'>{th}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


class Explorer:
    """Widgets to browse runs (see the module docstring).

    Parameters
    ----------
    out_dir, profile : where the runs are (``<out_dir>/<profile>/<paper>/<stamp>-<name>/``).
    run : a run label (``paper/stamp-name``), folder name, path or paper name; None: the newest
        leaderboard run, else the newest run with predictions (those matching ``prefer`` first).
    case : a case of that run (default its first).
    plane, channel, structure, style ("contour"/"fill"), opacity : the initial view.
    width : PNG width in pixels (the widget state embeds the PNG: keep it small).
    prefer : parameters a default run should have, e.g. ``{"data": "phantom", "seed": 0}``.

    Attributes ``run``, ``case``, ``plane``, ``slice``, ``modality``, ``structure``, ``predictions``,
    ``style``, ``opacity`` are the control widgets; ``image`` (PNG), ``metrics`` and ``status``
    (HTML) the outputs; ``widget`` the whole box; ``view`` the current :class:`RunView`.
    Raises DataError when there is no run, ParameterError for an unknown run/case/plane/style.
    """

    def __init__(self, out_dir: str | os.PathLike = "runs", profile: str | None = "cpu",
                 run: str | os.PathLike | None = None, case: str | None = None, *,
                 plane: str = "axial", channel: str | None = None, structure: str | None = None,
                 style: str = "contour", opacity: float = 0.7, width: int = 560,
                 prefer: Mapping[str, Any] | None = None):
        import ipywidgets as W

        R.plane_axis(plane)
        if style not in ("contour", "fill"):
            raise ParameterError(f"style must be 'contour' or 'fill', got {style!r}")
        if not 0.0 <= float(opacity) <= 1.0:
            raise ParameterError(f"opacity must be in [0, 1], got {opacity!r}")
        if isinstance(width, bool) or not isinstance(width, int) or not 160 <= width <= 1400:
            raise ParameterError(f"width must be an integer in [160, 1400] pixels, got {width!r}")
        self.out_dir, self.width = out_dir, int(width)
        self.views: list[RunView] = list_runs(out_dir, profile)
        self._by_label = {v.label: v for v in self.views}
        view = find_run(self.views, run) if run else default_run(self.views, prefer)
        if case is not None and str(case) not in view.cases:
            shown = ", ".join(view.cases[:12]) + (" ..." if len(view.cases) > 12 else "")
            raise ParameterError(f"unknown case {case!r} in run {view.label} (valid: {shown or 'none'})")
        self.view: RunView = view
        self._cv = None
        self._deselected: set[str] = set()
        self._quiet = 0
        self._error = ""  # the last callback's error (cleared by the next callback)
        self._case_error = ""  # why the current case could not be loaded
        self.renders = 0

        lay = W.Layout
        self.run = W.Dropdown(options=[v.label for v in reversed(self.views)], value=view.label,
                              description="Run", layout=lay(width="430px"))
        self.case = W.Dropdown(options=[], description="Case", layout=lay(width="230px"))
        self.plane = W.ToggleButtons(options=list(R.PLANES), value=plane, description="Plane",
                                     style={"button_width": "84px"})
        # numbered from 1, as the static viewer and image viewers number slices
        self.slice = W.IntSlider(value=1, min=1, max=1, description="Slice", continuous_update=False,
                                 layout=lay(width="280px"))
        self.modality = W.Dropdown(options=[], description="Image", layout=lay(width="200px"))
        self.structure = W.Dropdown(options=[], description="GT", layout=lay(width="230px"))
        self.predictions = W.SelectMultiple(options=[], description="Predictions", rows=4,
                                            layout=lay(width="330px"))
        self.style = W.ToggleButtons(options=[("contour", "contour"), ("filled", "fill")], value=style,
                                     description="Style", style={"button_width": "84px"})
        self.opacity = W.FloatSlider(value=float(opacity), min=0.0, max=1.0, step=0.05,
                                     description="Opacity", continuous_update=False,
                                     layout=lay(width="300px"))
        self.status = W.HTML(value="")
        self.image = W.Image(value=b"", format="png", layout=lay(max_width="100%"))
        self.metrics = W.HTML(value="")
        self.widget = W.VBox([
            W.HBox([self.run, self.case]),
            W.HBox([self.plane, self.slice]),
            W.HBox([self.modality, self.structure]),
            W.HBox([self.predictions, W.VBox([self.style, self.opacity])]),
            self.status, self.image, self.metrics,
        ])

        with self._hold():
            self._load_run(view, case=case, channel=channel, structure=structure)
        self.run.observe(self._on_run, names="value")
        self.case.observe(self._on_case, names="value")
        self.plane.observe(self._on_plane, names="value")
        self.structure.observe(self._on_structure, names="value")
        self.predictions.observe(self._on_predictions, names="value")
        for w in (self.slice, self.modality, self.style, self.opacity):
            w.observe(self._on_view, names="value")
        self.refresh()

    # ------------------------------------------------------------------ display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (f"Explorer(run={self.run.value!r}, case={self.case.value!r}, plane={self.plane.value!r}, "
                f"slice={self.slice.value})")

    # ------------------------------------------------------------------ state changes
    @contextlib.contextmanager
    def _hold(self):
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _load_run(self, view: RunView, *, case: str | None = None, channel: str | None = None,
                  structure: str | None = None) -> None:
        self.view = view
        self._deselected = set()
        self._case_error = ""
        cases = list(view.cases)
        self.case.options = cases
        self.predictions.options = []
        if not cases:
            self._cv = None
            self.case.value = None
            return
        if case not in cases:  # the default case, or the next ones when it cannot be loaded
            first = view.default_case()
            case = first
            for c in [first] + [c for c in cases if c != first][:4]:
                try:
                    view.case(c)
                except NpcreproError:
                    continue
                case = c
                break
        self.case.value = case
        self._load_case(self.case.value, channel=channel, structure=structure)

    def _load_case(self, name: str, *, channel: str | None = None, structure: str | None = None) -> None:
        self._cv = None
        self._case_error = ""
        try:
            cv = self.view.case(name)
        except NpcreproError as exc:
            self._case_error = str(exc).splitlines()[0]
            self.modality.options, self.structure.options, self.predictions.options = [], [], []
            return
        self._cv = cv
        keep_ch = channel or self.modality.value
        self.modality.options = list(cv.channels)
        if channel is not None and channel not in cv.channels:
            raise ParameterError(f"case {name}: no channel {channel!r} (have: {', '.join(cv.channels)})")
        self.modality.value = keep_ch if keep_ch in cv.channels else (cv.default_channel or cv.channels[0])
        keep_st = structure or self.structure.value
        names = list(cv.labels)
        if structure is not None and structure not in names:
            raise ParameterError(f"case {name}: no structure {structure!r} (have: {', '.join(names)})")
        self.structure.options = [("(none)", "")] + [(s, s) for s in names]
        self.structure.value = (structure if structure else
                                keep_st if keep_st in names and self.structure.value else
                                cv.default_structure or "")
        labels = self.view.labels_for(name)
        self.predictions.options = labels
        self.predictions.rows = min(6, max(2, len(labels)))
        self.predictions.value = tuple(lab for lab in labels if lab not in self._deselected)
        if cv.is_2d:
            self.plane.value = "axial"
        self.plane.disabled = cv.is_2d
        self._reset_slice()

    def _gt(self):
        cv = self._cv
        s = self.structure.value
        return cv.labels.get(s) if cv is not None and s else None

    def _reset_slice(self) -> None:
        cv = self._cv
        if cv is None:
            return
        n = R.n_slices(cv.shape, self.plane.value)
        gt = self._gt()
        if self.plane.value == "axial":
            best = self.view.best_axial_slice(cv.name, self.structure.value or None,
                                              self.predictions.value or None)
        else:
            best = R.best_slice(gt, self.plane.value) if gt is not None else n // 2
        self.slice.max = max(1, n)
        self.slice.value = int(min(max(best, 0), n - 1)) + 1
        self.slice.disabled = n <= 1

    def _guard(fn):  # noqa: N805 - a decorator for the callbacks below
        def wrapped(self, change):
            if self._quiet:
                return
            self._error = ""
            try:
                with self._hold():
                    fn(self, change)
            except NpcreproError as exc:
                self._error = str(exc).splitlines()[0]
            self.refresh()
        return wrapped

    @_guard
    def _on_run(self, change):
        self._load_run(self._by_label[change["new"]])

    @_guard
    def _on_case(self, change):
        if change["new"] is not None:
            self._load_case(change["new"])

    @_guard
    def _on_plane(self, change):
        self._reset_slice()

    @_guard
    def _on_structure(self, change):
        pass

    @_guard
    def _on_predictions(self, change):
        self._deselected = set(self.predictions.options) - set(change["new"])

    @_guard
    def _on_view(self, change):
        pass

    # ------------------------------------------------------------------ drawing
    def _notes(self) -> list[str]:
        notes = list(self.view.notes())
        for err in (self._case_error, self._error):
            if err:
                notes.insert(0, f"<span style='color:#b00'>⚠ {_esc(err)}</span>")
        return notes

    def current_slices(self) -> tuple[np.ndarray, np.ndarray | None, dict, list[str]]:
        """(image slice, GT slice or None, {label: prediction slice or None}, notes) of the view."""
        cv = self._cv
        plane, idx = self.plane.value, int(self.slice.value) - 1  # the slider counts from 1
        up = cv.superior_up
        img = R.slice_of(cv.image(self.modality.value), plane, idx, superior_up=up)
        gt = self._gt()
        gt2 = R.slice_of(gt, plane, idx, superior_up=up) if gt is not None else None
        preds, notes = {}, []
        for label in self.predictions.value:
            mask, zs, note = self.view.prediction(cv.name, label)
            if note:
                notes.append(f"{_esc(label)}: {_esc(note)}")
            if mask is None or (plane == "axial" and zs is not None and idx not in zs):
                preds[label] = None
            else:
                preds[label] = R.slice_of(mask, plane, idx, superior_up=up)
        return img, gt2, preds, notes

    def refresh(self) -> None:
        """Redraw the picture, the metrics table and the status line for the current choices."""
        notes = self._notes()
        cv = self._cv
        case = self.case.value or ""
        if cv is None:
            self.image.value = b""
            if not self.view.cases:
                notes.append("this run lists no cases")
            self.status.value = "<br>".join(notes)
            self.metrics.value = self._metrics_html(case) if case else ""
            return
        try:
            img, gt2, preds, pnotes = self.current_slices()
            notes += pnotes
            colours = self.view.colours()
            legend = {}
            for lab in preds:
                d = self.view.score_for(cv.name, lab)
                legend[lab] = f"{lab} (DSC {d:.2f})" if d is not None else lab
            n = R.n_slices(cv.shape, self.plane.value)
            where = "2D" if cv.is_2d else f"{self.plane.value} {self.slice.value} / {n}"
            title = f"{self.view.label} · {cv.name} · {self.modality.value} · {where}"
            self.image.value = R.render_png(
                img, gt2, preds, style=self.style.value, opacity=float(self.opacity.value),
                spacing2d=R.plane_spacing(cv.spacing, self.plane.value), title=title, width=self.width,
                colours=colours, window=cv.window(self.modality.value),
                gt_label=f"ground truth ({self.structure.value})" if gt2 is not None else "no ground truth",
                legend_labels=legend)
            self.renders += 1
        except NpcreproError as exc:
            notes.append(f"<span style='color:#b00'>⚠ {_esc(str(exc).splitlines()[0])}</span>")
        self.status.value = "<br>".join(notes)
        self.metrics.value = self._metrics_html(cv.name)

    def _metrics_html(self, case: str) -> str:
        st = self.structure.value or None
        rows = self.view.metrics_for(case, structure=st)
        shown = st if rows is not None and "structure" in rows.columns and st and len(rows) and \
            (rows["structure"].astype(str) == st).all() and \
            len(self.view.metrics_for(case)) > len(rows) else None
        return metrics_html(rows, case, structure=shown)


# ---------------------------------------------------------------------------------- static gallery
def gallery(view: RunView, cases: Sequence[str] | None = None, *, n_cases: int | None = None,
            channel: str | None = None, structure: str | None = None, max_cols: int = 6,
            panel_in: float = 1.8):
    """A static matplotlib figure of ``view``: per case the axial slice with the largest ground-truth
    area (among the predicted slices when predictions cover only some), the ground truth alone, then
    each prediction in its own panel (DSC in the title when the run's metrics name it), wrapped at
    ``max_cols`` panels per row. ``cases`` default: the ``n_cases`` cases with the most predictions
    (3, or 2 when the run has more than 6 labels). Returns a :class:`matplotlib.figure.Figure` (no
    pyplot state); DataError when no case can be loaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = view.labels
    if cases is None:
        n = n_cases if n_cases is not None else (3 if len(labels) <= 6 else 2)
        cases = sorted(view.cases, key=lambda c: -len(view.predictions.get(c, {})))[:n]
    names = list(cases)
    loaded = []
    for name in names:
        try:
            loaded.append(view.case(name))
        except NpcreproError:
            continue
    if not loaded:
        raise DataError(f"{view.label}: none of the cases {names} could be loaded")
    colours = view.colours()
    panels = 1 + len(labels)
    ncols = min(max_cols, panels)
    per_case = math.ceil(panels / ncols)
    aspect = max((cv.shape[1] * cv.spacing[1]) / (cv.shape[2] * cv.spacing[2]) for cv in loaded)
    row_in = panel_in * min(max(aspect, 0.4), 1.5) + 0.42
    fig = Figure(figsize=(panel_in * ncols, row_in * per_case * len(loaded) + 0.45), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(per_case * len(loaded), ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, cv in enumerate(loaded):
        ch = channel if channel in cv.channels else cv.default_channel or cv.channels[0]
        st = structure if structure in cv.labels else cv.default_structure
        gt = cv.labels.get(st) if st else None
        z = view.best_axial_slice(cv.name, st)
        img, g2 = cv.image(ch)[z], (gt[z] if gt is not None else None)
        sp, win = R.plane_spacing(cv.spacing, "axial"), cv.window(ch)
        cells = [axes[r * per_case + k // ncols, k % ncols] for k in range(panels)]
        R.draw_view(cells[0], img, g2, {}, spacing2d=sp, window=win)
        cells[0].set_title(f"{cv.name}, {ch}, z {z}\n{st or 'no ground truth'}", fontsize=7.5)
        have = view.predictions.get(cv.name, {})
        for ax, lab in zip(cells[1:], labels):
            if lab not in have:
                pred, extra = None, "not predicted"
            else:
                mask, zs, _ = view.prediction(cv.name, lab)
                ok = mask is not None and (zs is None or z in zs)
                pred = mask[z] if ok else None
                d = view.score_for(cv.name, lab)
                extra = ("not on the case grid" if mask is None else "n/a on this slice" if not ok else
                         f"DSC {d:.2f}" if d is not None else "")
            R.draw_view(ax, img, g2, {lab: pred}, spacing2d=sp, window=win, colours=colours, opacity=0.95)
            ax.set_title(f"{lab}\n{extra}", fontsize=7.5)
    fig.suptitle(f"{view.label}: ground truth dashed yellow" + (", predictions in colour" if labels else ""),
                 fontsize=8.5)
    return fig
